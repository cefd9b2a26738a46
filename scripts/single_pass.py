"""The baseline whisperfarm is measured against: one faster-whisper pass over the whole
file in one process, same model, compute type and options as a whisperfarm worker.

    python scripts/single_pass.py AUDIO --threads 2 --out text.txt [--batched]
    python scripts/single_pass.py AUDIO --out text.txt --words words.json  # + word times
    python scripts/single_pass.py AUDIO --out text.txt --vad   # faster-whisper's vad_filter=True
    python scripts/single_pass.py A B C --out text.txt  # each file in turn, model loaded once;
                                                        # their texts one after another
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from faster_whisper import BatchedInferencePipeline, WhisperModel

from worker.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio", type=Path, nargs="+")
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compute-type", default="int8")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--batched", action="store_true", help="BatchedInferencePipeline")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--vad", action="store_true", help="vad_filter=True (the single pass)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--words", type=Path, help="also write segments with word timestamps to this json file"
    )
    args = parser.parse_args()
    if args.words is not None and len(args.audio) > 1:
        parser.error("--words takes one audio file")
    model = load_model(args.model, threads=args.threads, compute_type=args.compute_type)
    texts = [transcribe(model, audio, args) for audio in args.audio]
    args.out.write_text("".join(texts), encoding="utf-8")


def transcribe(model: WhisperModel, audio: Path, args: argparse.Namespace) -> str:
    """One file's text, a line per segment (and its words to ``args.words`` if asked)."""
    language = "en" if args.model.endswith(".en") else None
    if args.batched:
        pipeline = BatchedInferencePipeline(model)
        segments, _ = pipeline.transcribe(
            str(audio),
            language=language,
            beam_size=args.beam_size,
            batch_size=args.batch_size,
            word_timestamps=args.words is not None,
        )
    else:
        segments, _ = model.transcribe(
            str(audio),
            language=language,
            beam_size=args.beam_size,
            word_timestamps=args.words is not None,
            vad_filter=args.vad,
        )
    decoded = list(segments)
    if args.words is not None:
        document = {
            "segments": [
                {
                    "start": s.start,
                    "end": s.end,
                    "text": s.text.strip(),
                    "words": [
                        {"start": w.start, "end": w.end, "word": w.word} for w in s.words or []
                    ],
                }
                for s in decoded
            ]
        }
        args.words.write_text(json.dumps(document), encoding="utf-8")
    return "".join(f"{s.text.strip()}\n" for s in decoded)


if __name__ == "__main__":
    main()
