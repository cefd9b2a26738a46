"""How long a chunk is: the defaults the cutter (``chunking.CutterConfig``), the settings
(``chunk_min_seconds``, ``chunk_max_seconds``, ``overlap_seconds``) and the Fly plan's
estimates (``fly.policy``) share. Plain numbers, so the settings and the Fly layer read
them without importing the cutter's numpy."""

MIN_SECONDS = 12.0
"""A chunk runs at least this long before the cutter looks for a pause to cut in."""

MAX_SECONDS = 27.0
"""A chunk's audio, overlap included, stays within this: under Whisper's 30-s window, with
room for the silence after it that lets the model finish the last sentence in the first
window (``worker.batched.SILENCE_AFTER``); at 29 s tiny.en still left more sentences to a
second window (README, "Silence after a chunk", has the windows, CPU and WER of both)."""

OVERLAP_SECONDS = 3.0
"""Audio shared by two chunks cut where there is no pause. 3 s, not less: with 1.5 s the
seams bench lost words where a model skipped a phrase near the cut (9 over 12 overlapped
seams); with 3 s it lost none."""
