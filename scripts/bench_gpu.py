"""Batched decoding on a CUDA GPU: how much of the GPU each batch size uses.

The file is cut as `whisperfarm transcribe` cuts it, then its chunks are decoded by the
worker's own transcriber (worker.transcriber, worker.batched) on the GPU, in batches of
each size asked for, in rounds (every size once per round); and by one faster-whisper
pass over the whole file on the same GPU. It prints, per batch size, the median time of
the decoding alone (the model loaded once beforehand), × realtime, the ratio to the first
size, and whether every chunk's text equals that size's (the batched decode reads as each
chunk decoded alone; the farm's WER is `scripts/bench local`'s to measure, stitched).

    python scripts/bench_gpu.py [--audio samples/episode.mp3] [--sizes 1,4,8,16,32]
                                [--model tiny.en] [--compute-type float16] [--repeat 3]
                                [--device cuda]

It needs a CUDA device that CTranslate2 can use, and says so and stops (exit 2) without
one. ``--device cpu`` runs the same steps on the CPU (``--compute-type int8``), so the
script is tested where there is no GPU (tests/test_worker_device.py). The README's GPU
section says how the default batch size was chosen.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from whisperfarm.chunking import CutterConfig, cut  # noqa: E402
from whisperfarm.errors import InputError  # noqa: E402
from whisperfarm.media import Decoder  # noqa: E402
from worker.device import Device, DeviceError, resolve  # noqa: E402
from worker.transcriber import Transcriber  # noqa: E402
from worker.wire import DecodeOptions  # noqa: E402

ENGLISH = DecodeOptions(language="en")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audio", type=Path, default=REPO / "samples" / "episode.mp3")
    parser.add_argument("--sizes", default="1,4,8,16,32")
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--compute-type", default="float16")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", choices=[Device.CUDA.value, Device.CPU.value], default="cuda")
    args = parser.parse_args()
    try:
        device = resolve(args.device)
    except DeviceError as error:
        print(f"bench_gpu: {error}", file=sys.stderr)
        return 2
    sizes = [int(size) for size in args.sizes.split(",")]
    decoder = Decoder(args.audio)
    blocks = list(decoder.blocks())
    try:
        decoder.close()  # ffmpeg's verdict first: a missing file gives no blocks at all
    except InputError as error:
        print(f"bench_gpu: {error}", file=sys.stderr)
        return 2
    samples = np.concatenate(blocks)
    chunks = [audio.astype(np.float32) / 32768.0 for _, audio in cut([samples], CutterConfig())]
    seconds = len(samples) / 16_000
    transcriber = Transcriber(threads=4, compute_type=args.compute_type, device=device.value)
    whisper = transcriber.model(args.model)
    transcriber.transcribe_batch(chunks[:2], model=args.model)  # warm the GPU up

    walls: dict[int, list[float]] = {size: [] for size in sizes}
    texts: dict[int, list[str]] = {}
    single: list[float] = []
    for _ in range(args.repeat):
        for size in sizes:
            started = time.perf_counter()
            out: list[str] = []
            for first in range(0, len(chunks), size):
                results = transcriber.transcribe_batch(
                    chunks[first : first + size], model=args.model, options=ENGLISH
                )
                out += ["".join(s.text for s in r.segments) for r in results]
            walls[size].append(time.perf_counter() - started)
            texts[size] = out
        started = time.perf_counter()
        segments, _ = whisper.transcribe(
            samples.astype(np.float32) / 32768.0, language="en", beam_size=5
        )
        list(segments)  # a generator: decoding happens as it is read
        single.append(time.perf_counter() - started)

    print(
        f"{args.audio.name}: {seconds:.0f} s of audio in {len(chunks)} chunks, {args.model} "
        f"{args.compute_type} on {device.value}, beam 5, median of {args.repeat}"
    )
    base = statistics.median(walls[sizes[0]])
    print(f"{'batch':>6} {'decode s':>9} {'× realtime':>11} {'vs first':>9}  same text")
    for size in sizes:
        wall = statistics.median(walls[size])
        same = texts[size] == texts[sizes[0]]
        print(f"{size:>6} {wall:>9.2f} {seconds / wall:>11.1f} {wall / base:>8.2f}×  {same}")
    wall = statistics.median(single)
    print(f"one faster-whisper pass over the file: {wall:.2f} s, {seconds / wall:.1f}× realtime")
    return 0


if __name__ == "__main__":
    sys.exit(main())
