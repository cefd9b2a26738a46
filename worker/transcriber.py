"""Transcribing chunks with faster-whisper, the model loaded once per worker: one chunk
(``transcribe``) or several (``transcribe_batch``), decoded by worker.batched; chunks
whose options it doesn't run (word timestamps above all) by faster-whisper's own
``transcribe``, one at a time."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from worker.audio import SAMPLE_RATE
from worker.batched import Stopped, decode_batch
from worker.models import ModelLoadError, load_model
from worker.wire import DecodeOptions, ResultModel, SegmentModel, WordModel

DEFAULTS = DecodeOptions()

TEMPERATURE_STEP = 0.2
"""How much hotter each retry of a failed window decodes (the whisper CLI's
``--temperature_increment_on_fallback`` default)."""


def fallback_temperatures(first: float) -> tuple[float, ...]:
    """``first``, then ``TEMPERATURE_STEP`` hotter up to 1.0, as the whisper CLI makes them
    from ``--temperature``: 0.4 → (0.4, 0.6, 0.8, 1.0)."""
    steps = math.floor((1.0 - first) / TEMPERATURE_STEP + 1e-9)
    return tuple(round(first + TEMPERATURE_STEP * i, 6) for i in range(max(steps, 0) + 1))


__all__ = ["Stopped", "Transcriber"]


class Transcriber:
    """Holds one model at a time: the one the current job names.

    A job's model is loaded by its name (a baked-in copy under ``model_dir``, the bundled
    tiny.en, a directory, or a faster-whisper download) and kept until a job names
    another. A model that can't be had raises ModelLoadError, now and for every later
    job that names it: the worker reports each such job as failed with that reason.
    """

    def __init__(
        self,
        *,
        threads: int,
        compute_type: str = "int8",
        device: str = "cpu",
        model_dir: str | None = None,
        loader: Callable[..., Any] = load_model,
    ):
        self.threads = threads
        self.compute_type = compute_type
        self.device = device
        self.model_dir = model_dir
        self.loader = loader
        self._model: Any = None
        self._loaded: tuple[str, str] | None = None  # (model name, compute type)
        # A failed load is not retried for the worker's life: a download that timed out
        # once would cost its time-out again on every chunk of the episode.
        self._unavailable: dict[str, str] = {}

    @property
    def loaded(self) -> str | None:
        """The name of the model held, if any."""
        return self._loaded[0] if self._model is not None and self._loaded else None

    def holds(self, name: str) -> bool:
        """Whether the model ``name`` is loaded, as this worker's compute type."""
        return self._model is not None and self._loaded == (name, self.compute_type)

    def model(self, name: str, compute_type: str | None = None) -> Any:
        """The model ``name`` loaded as ``compute_type`` (a job's; None: this worker's own,
        WHISPERFARM_COMPUTE_TYPE), loading it unless it is the one held."""
        compute_type = compute_type or self.compute_type
        wanted = (name, compute_type)
        if self._model is not None and self._loaded == wanted:
            return self._model
        if name in self._unavailable:
            raise ModelLoadError(self._unavailable[name])
        self._model, self._loaded = None, None  # let the old one go before the new loads
        try:
            self._model = self.loader(
                name,
                threads=self.threads,
                compute_type=compute_type,
                device=self.device,
                model_dir=self.model_dir,
            )
        except ModelLoadError as error:
            self._unavailable[name] = str(error)
            raise
        self._loaded = wanted
        return self._model

    def transcribe(
        self,
        audio: np.ndarray,
        *,
        model: str,
        options: DecodeOptions = DEFAULTS,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> ResultModel:
        """Decode one chunk with ``options`` (a job's: language, beam size, task, prompt
        …): as a batch of one where the batched decode runs those options, so a chunk
        reads the same whether it was claimed alone or with others."""
        if _batchable(options):
            (result,) = self.transcribe_batch(
                [audio], model=model, options=options, should_stop=should_stop
            )
            return result
        return self._sequential(audio, model=model, options=options, should_stop=should_stop)

    def _sequential(
        self,
        audio: np.ndarray,
        *,
        model: str,
        options: DecodeOptions,
        should_stop: Callable[[], bool],
    ) -> ResultModel:
        """faster-whisper's own ``transcribe``, for the options the batched decode doesn't
        run (word timestamps above all)."""
        whisper = self.model(model, options.compute_type)
        started = time.monotonic()
        job = options
        word_timestamps = job.word_timestamps
        extra: dict[str, Any] = {}
        if job.temperature is not None:
            extra["temperature"] = fallback_temperatures(job.temperature)
        segments, info = whisper.transcribe(
            audio,
            language=job.language,
            beam_size=job.beam_size,
            word_timestamps=word_timestamps,
            task=job.task,
            initial_prompt=job.initial_prompt,
            hotwords=job.hotwords,
            vad_filter=job.vad_filter,
            **extra,
        )
        # model_construct: the coordinator validates a result (422), as it did when this
        # was a dict; only the fields set here go on the wire (exclude_unset).
        out: list[SegmentModel] = []
        for segment in segments:  # a generator: decoding happens as we iterate
            if should_stop():
                raise Stopped()
            item: dict[str, Any] = {
                "start": round(segment.start, 3),
                "end": round(segment.end, 3),
                "text": segment.text,
                "avg_logprob": segment.avg_logprob,
                "no_speech_prob": segment.no_speech_prob,
            }
            if word_timestamps:
                item["words"] = [
                    WordModel.model_construct(
                        start=round(w.start, 3),
                        end=round(w.end, 3),
                        word=w.word,
                        probability=round(w.probability, 4),
                    )
                    for w in segment.words or []
                ]
            out.append(SegmentModel.model_construct(**item))
        return ResultModel.model_construct(
            segments=out,
            language=info.language,
            duration=info.duration,
            model=model,  # the name just loaded (self.model(model))
            elapsed=round(time.monotonic() - started, 3),
        )

    def transcribe_batch(
        self,
        audios: list[np.ndarray],
        *,
        model: str,
        options: DecodeOptions = DEFAULTS,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> list[ResultModel]:
        """One result per chunk, the chunks decoded together (worker.batched). Chunks
        whose options the batched decode doesn't run (word timestamps, a task, prompt,
        hotwords, temperature or VAD filter of their own) are decoded one by one with
        faster-whisper's ``transcribe``."""
        if not _batchable(options):
            return [
                self._sequential(audio, model=model, options=options, should_stop=should_stop)
                for audio in audios
            ]
        whisper = self.model(model, options.compute_type)
        started = time.monotonic()
        decoded, detected = decode_batch(
            whisper,
            audios,
            language=options.language,
            beam_size=options.beam_size,
            should_stop=should_stop,
        )
        elapsed = round(time.monotonic() - started, 3)
        return [
            ResultModel.model_construct(
                segments=[
                    SegmentModel.model_construct(
                        start=round(segment.start, 3),
                        end=round(segment.end, 3),
                        text=segment.text,
                        avg_logprob=segment.avg_logprob,
                        no_speech_prob=segment.no_speech_prob,
                    )
                    for segment in segments
                ],
                language=detected,
                duration=len(audio) / SAMPLE_RATE,
                model=model,
                elapsed=elapsed,  # the batch's: its chunks were decoded together
            )
            for audio, segments in zip(audios, decoded, strict=True)
        ]


def _batchable(options: DecodeOptions) -> bool:
    """Whether worker.batched decodes with ``options``: it runs faster-whisper's defaults
    but for the language and the beam size."""
    return (
        not options.word_timestamps
        and options.task == "transcribe"
        and options.initial_prompt is None
        and options.hotwords is None
        and options.temperature is None
        and not options.vad_filter
    )
