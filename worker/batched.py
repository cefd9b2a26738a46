"""Decoding several chunks in one batched model call.

faster-whisper's ``WhisperModel.transcribe`` decodes one chunk window by window: encode
30 s of audio, generate (beam search, with its temperature fallback), split the tokens
at their timestamps, seek to the last complete segment and go on, each window prompted
with the chunk's text so far. ``decode_batch`` does the same for several chunks in
lockstep: each round encodes the next window of every chunk still going in one batch
and generates for all of them in one CTranslate2 ``generate`` call, as faster-whisper's
``BatchedInferencePipeline`` does. Its pipeline loses words by how it cuts (VAD pieces,
decoded once, no fallback); here the chunks are whisperfarm's, cut at pauses under
Whisper's 30-s window, and each is decoded as the sequential decode would:

- a window whose text fails the thresholds (too repetitive, too unlikely) is decoded
  again on its own with faster-whisper's temperature fallback, as the sequential decode
  would have;
- a silent window (no-speech probability over the threshold, low log probability) is
  skipped;
- a chunk whose first window ends in an unfinished segment goes on from that segment's
  start in the next round, prompted with its whole text so far. CTranslate2 wants the
  start-of-transcript token at one position across a batch, so a round generates for
  the chunks whose prompts are as long as each other's together, the others in their own
  calls: every chunk reads as it reads decoded alone, whatever else is in its batch.
  (First windows have no previous text, so they all go together; second windows are few.)

One thing differs from faster-whisper on purpose: what fills a window after a long chunk's
audio. faster-whisper (like OpenAI's ``transcribe``) pads the window's log-Mel features
with zeros, which is not silence but a steady hum to the model (faster-whisper#1084). With
speech running to within a second or two of that padding, the model often leaves the
chunk's last sentence unfinished, and it costs a second window: a whole 30-s encoder pass
for 2-4 s of audio. After a chunk of ``SILENCE_AFTER`` seconds or more, the window is
filled with the features of true silence instead (the audio padded with zeros), as Whisper
heard the end of a recording in training: the model then finishes the sentence in the
first window. Shorter
chunks keep faster-whisper's padding: under 16 s of silence tiny.en was seen to end a 14-s
chunk after its first sentence. Measured in the README ("Silence after a chunk").

Word timestamps are not batched (the transcriber decodes such chunks one by one, with
faster-whisper's padding).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SILENCE_AFTER = 20.0
"""Seconds: the window of a chunk this long or longer is filled with silence after its
audio, not with faster-whisper's zero features (the module's docstring). The cutter's
longest chunk (``whisperfarm.chunk_limits.MAX_SECONDS``) leaves room for at least 3 s of it."""


class Stopped(Exception):
    """The transcription was abandoned (worker stopping, or the lease was lost)."""


@dataclass
class Segment:
    start: float
    end: float
    text: str
    avg_logprob: float
    no_speech_prob: float


@dataclass
class _Chunk:
    features: np.ndarray  # the frames a window may take: the audio's, and any silence after
    content_frames: int  # the audio's frames
    seek: int = 0
    tokens: list[int] = field(default_factory=list)
    prompt_reset_since: int = 0
    segments: list[Segment] = field(default_factory=list)

    @property
    def previous(self) -> list[int]:
        return self.tokens[self.prompt_reset_since :]


def decode_batch(
    whisper: Any,
    audios: list[np.ndarray],
    *,
    language: str | None,
    beam_size: int,
    should_stop: Callable[[], bool] = lambda: False,
    silence_after: float | None = SILENCE_AFTER,
) -> tuple[list[list[Segment]], str]:
    """Each chunk's segments (times in seconds into the chunk) and the language, decoding
    the chunks' windows in batches of all of them. ``should_stop`` is asked between
    rounds; True raises Stopped. ``silence_after``: the chunk length from which a window
    is filled with silence after the audio (None: never, as faster-whisper does)."""
    from faster_whisper.tokenizer import Tokenizer
    from faster_whisper.transcribe import TranscriptionOptions, get_suppressed_tokens

    language = _language(whisper, audios, language)
    tokenizer = Tokenizer(whisper.hf_tokenizer, whisper.model.is_multilingual, language=language)
    # faster-whisper's transcribe defaults, as the sequential decode runs them.
    options = TranscriptionOptions(
        beam_size=beam_size,
        best_of=5,
        patience=1,
        length_penalty=1,
        repetition_penalty=1,
        no_repeat_ngram_size=0,
        log_prob_threshold=-1.0,
        no_speech_threshold=0.6,
        compression_ratio_threshold=2.4,
        condition_on_previous_text=True,
        prompt_reset_on_temperature=0.5,
        temperatures=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
        initial_prompt=None,
        prefix=None,
        suppress_blank=True,
        suppress_tokens=get_suppressed_tokens(tokenizer, [-1]),
        without_timestamps=False,
        max_initial_timestamp=1.0,
        word_timestamps=False,
        prepend_punctuations="\"'“¿([{-",
        append_punctuations="\"'.。,，!！?？:：”)]}、",
        multilingual=False,
        max_new_tokens=None,
        clip_timestamps="0",
        hallucination_silence_threshold=None,
        hotwords=None,
    )
    chunks = [_chunk(whisper.feature_extractor, audio, silence_after) for audio in audios]
    while going := [chunk for chunk in chunks if chunk.seek < chunk.content_frames]:
        if should_stop():
            raise Stopped()
        _round(whisper, tokenizer, options, going)
    return [chunk.segments for chunk in chunks], language


def _chunk(extractor: Any, audio: np.ndarray, silence_after: float | None) -> _Chunk:
    """A chunk's features, followed by silence's up to the end of its first window when
    the chunk is ``silence_after`` seconds long or longer."""
    samples = len(audio)
    if silence_after is not None and samples >= silence_after * extractor.sampling_rate:
        audio = np.pad(audio, (0, max(0, extractor.n_samples - samples)))
    features = extractor(audio)
    # The extractor pads a hop's worth of zeros and makes one frame more than the audio's;
    # that frame is left out, as faster-whisper leaves it out.
    return _Chunk(features[:, :-1], samples // extractor.hop_length)


def _language(whisper: Any, audios: list[np.ndarray], language: str | None) -> str:
    if not whisper.model.is_multilingual:
        return "en"
    if language is not None:
        return language
    # A multilingual model without a language: the first chunk's, as detect_language
    # would find it for a sequential decode of that chunk.
    detected, _, _ = whisper.detect_language(audios[0])
    return str(detected)


def _round(whisper: Any, tokenizer: Any, options: Any, going: list[_Chunk]) -> None:
    from faster_whisper.audio import pad_or_trim
    from faster_whisper.transcribe import get_compression_ratio

    nb_max_frames = whisper.feature_extractor.nb_max_frames
    time_per_frame = whisper.feature_extractor.time_per_frame
    sizes = [min(nb_max_frames, chunk.content_frames - chunk.seek) for chunk in going]
    # A window takes the frames from its seek: the audio's, then any silence after it,
    # then pad_or_trim's zero features up to 30 s. The seek moves by the audio's alone.
    windows = [
        pad_or_trim(chunk.features[:, chunk.seek : chunk.seek + nb_max_frames]) for chunk in going
    ]
    prompts = [whisper.get_prompt(tokenizer, chunk.previous) for chunk in going]
    # CTranslate2 decodes a batch only with <|startoftranscript|> at one position in every
    # prompt: chunks whose previous text differs in length (second windows) go in separate
    # calls, each with its whole prompt, so a chunk reads the same in any batch as alone.
    together: dict[int, list[int]] = {}
    for index, prompt in enumerate(prompts):
        together.setdefault(len(prompt), []).append(index)
    results: list[Any] = [None] * len(going)
    for indexes in together.values():
        encoder_output = whisper.encode(np.stack([windows[i] for i in indexes]))
        generated = whisper.model.generate(
            encoder_output,
            [prompts[i] for i in indexes],
            beam_size=options.beam_size,
            patience=options.patience,
            length_penalty=options.length_penalty,
            repetition_penalty=options.repetition_penalty,
            no_repeat_ngram_size=options.no_repeat_ngram_size,
            max_length=whisper.max_length,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=options.suppress_blank,
            suppress_tokens=options.suppress_tokens,
            max_initial_timestamp_index=round(
                options.max_initial_timestamp / whisper.time_precision
            ),
        )
        for i, result in zip(indexes, generated, strict=True):
            results[i] = result
    for chunk, size, window, prompt, result in zip(
        going, sizes, windows, prompts, results, strict=True
    ):
        tokens = result.sequences_ids[0]
        compression_ratio = get_compression_ratio(tokenizer.decode(tokens).strip())
        temperature = 0.0
        if _needs_fallback(
            options, result.no_speech_prob, _avg_logprob(result, tokens), compression_ratio
        ):
            # the sequential decode's own fallback, for this window alone
            result, _, temperature, _ = whisper.generate_with_fallback(
                whisper.encode(window), prompt, tokenizer, options
            )
            tokens = result.sequences_ids[0]
        _advance(whisper, tokenizer, options, chunk, size, time_per_frame, result, tokens)
        if temperature > options.prompt_reset_on_temperature:
            chunk.prompt_reset_since = len(chunk.tokens)


def _needs_fallback(
    options: Any, no_speech_prob: float, avg_logprob: float, compression_ratio: float
) -> bool:
    """generate_with_fallback's test of a temperature-0 decode."""
    if no_speech_prob > options.no_speech_threshold and avg_logprob < options.log_prob_threshold:
        return False  # silence
    return bool(
        compression_ratio > options.compression_ratio_threshold
        or avg_logprob < options.log_prob_threshold
    )


def _advance(
    whisper: Any,
    tokenizer: Any,
    options: Any,
    chunk: _Chunk,
    size: int,
    time_per_frame: float,
    result: Any,
    tokens: list[int],
) -> None:
    """Take one decoded window into the chunk, as generate_segments does."""
    avg_logprob = _avg_logprob(result, tokens)
    if result.no_speech_prob > options.no_speech_threshold and not (
        avg_logprob > options.log_prob_threshold
    ):
        chunk.seek += size  # silence: on to the next window
        return
    segments, chunk.seek, _ = whisper._split_segments_by_timestamps(
        tokenizer=tokenizer,
        tokens=tokens,
        time_offset=chunk.seek * time_per_frame,
        segment_size=size,
        segment_duration=size * time_per_frame,
        seek=chunk.seek,
    )
    for segment in segments:
        text = tokenizer.decode(segment["tokens"])
        if segment["start"] == segment["end"] or not text.strip():
            continue
        chunk.tokens.extend(segment["tokens"])
        chunk.segments.append(
            Segment(
                start=segment["start"],
                end=segment["end"],
                text=text,
                avg_logprob=avg_logprob,
                no_speech_prob=result.no_speech_prob,
            )
        )


def _avg_logprob(result: Any, tokens: list[int]) -> float:
    return float(result.scores[0] * len(tokens) / (len(tokens) + 1))
