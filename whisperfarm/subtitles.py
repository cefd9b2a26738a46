"""Subtitle cues people can read: each segment split into cues, each cue wrapped into lines.

Whisper's segments are up to 30 s of speech in one line; shown as they are, a subtitle
runs past the screen and stays up for as long as the speaker talks. Here a segment
becomes one or more cues (``cues``), and each cue one or more lines:

- **Where a cue ends.** At a word boundary, chosen over the whole segment (a shortest
  path over the word gaps, ``_split``) to prefer the end of a sentence, then a clause
  (comma, semicolon, colon, dash), then a pause between words; to make few cues; and to
  leave no short scrap of a cue behind, nor a cue too fast to read in the time before
  the next one (with word timings). A cue must fit ``max_line_count`` lines of
  ``max_line_width`` characters and last at most ``max_duration`` seconds; a single word
  longer than a line, or spoken for longer than that, makes a cue of its own. Without
  word timings a segment is cut for its lines only: times shared out by characters are a
  guess, and cutting "lecture part 3 ends." over 16 s into three one-word cues on that
  guess reads worse than one cue held for ``max_duration``.
- **When a cue is on screen.** From word timings where the result has them (``--words``):
  from its first word's start to its last word's end. Without them, a segment's time is
  shared out in proportion to characters: each word owns the slice of the segment that
  its characters (and the space after it) take of the segment's text, on the assumption
  that speech runs at an even pace within one segment, which is as much as the text says.
- **Lines.** A cue that fits on one line stays on one line (both guidelines below); else
  it takes the fewest lines it fits in, with the break placed for lines of even length,
  after punctuation where there is some, and the bottom line the longer (the BBC's
  "pyramid").
- **The timeline.** Cue starts never go backwards and no cue overlaps the next. A cue is
  held past its last word, into the silence before the next cue (stopping ``min_gap``
  short of it), up to ``min_duration`` and to the time its text needs at ``max_cps``;
  never past ``max_duration``, the next cue, or the end of the audio.

The numbers, and where they come from (Netflix's Timed Text Style Guide: General
Requirements and English Template; the BBC's Subtitle Guidelines):

- 42 characters a line, 2 lines at most, one line when the text fits on one: Netflix's.
  The BBC measures lines by the picture (68 % of a 16:9 frame's width) and also
  recommends two lines; both ask for breaks after punctuation.
- 7 s a cue at most, 5/6 s at least (20 frames at 24 fps), 2 frames (at 25 fps, 0.08 s)
  between cues: Netflix's maximum and minimum duration and frame gap.
- 17 characters a second: Netflix's reading speed for adult programmes in its English
  template (200 words a minute; 13 for children's), and about the top of the BBC's 160-180
  words a minute. Netflix lets a cue's out-time run past the end of speech for reading
  speed; a cue is never made to start before its words are said, so this is a target,
  not a promise: speech faster than this with no pause after it stays faster on screen
  (``scripts/bench_subtitles.py`` measures what is left).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


class TimedWord(Protocol):
    @property
    def start(self) -> float: ...
    @property
    def end(self) -> float: ...
    @property
    def word(self) -> str: ...


class TimedSegment(Protocol):
    @property
    def start(self) -> float: ...
    @property
    def end(self) -> float: ...
    @property
    def text(self) -> str: ...
    @property
    def words(self) -> Sequence[TimedWord] | None: ...


@dataclass(frozen=True)
class CueStyle:
    """How cues are cut, wrapped and timed; the defaults are the guidelines' (see above)."""

    max_line_width: int = 42
    max_line_count: int = 2
    max_duration: float = 7.0
    max_cps: float = 17.0
    min_duration: float = 5 / 6
    min_gap: float = 0.08
    highlight_words: bool = False


@dataclass(frozen=True)
class Token:
    """A word as shown, with the time it is spoken (measured or shared out)."""

    text: str
    start: float
    end: float


@dataclass
class Cue:
    start: float
    end: float
    lines: list[list[Token]]
    timed: bool  # the tokens' times are the model's word timings, not shared out
    segment: int = field(default=0, compare=False)  # the index of its segment, as given

    @property
    def tokens(self) -> list[Token]:
        return [token for line in self.lines for token in line]

    @property
    def text(self) -> str:
        return "\n".join(" ".join(token.text for token in line) for line in self.lines)


SENTENCE_END = (".", "?", "!", "…", "。", "？", "！")
CLAUSE_END = (",", ";", ":", "—", "–", "-", "，", "、")
CLOSERS = "\"'”’)]»"


def cues(
    segments: Sequence[TimedSegment], style: CueStyle, *, horizon: float | None = None
) -> list[Cue]:
    """The cues of ``segments`` (in timeline order, as the stitcher gives them).
    ``horizon``: the end of the audio, if known; the last cue is held no later than it
    (without it, the last cue ends with its last word)."""
    made: list[Cue] = []
    for number, segment in enumerate(segments):
        tokens, timed = _tokens(segment)
        for group in _split(tokens, style, timed=timed):
            made.append(Cue(group[0].start, group[-1].end, _wrap(group, style), timed, number))
    return _settle(made, style, horizon)


def _tokens(segment: TimedSegment) -> tuple[list[Token], bool]:
    """The segment's words with their times, and whether the times are the model's.
    Word timings are used only where their words spell the segment's text."""
    low, high = segment.start, max(segment.start, segment.end)
    words = [w for w in segment.words or [] if w.word.strip()]
    if words and " ".join(w.word for w in words).split() == segment.text.split():
        tokens = []
        for w in words:
            start = min(max(w.start, low), high)
            tokens.append(Token(w.word.strip(), start, min(max(w.end, start), high)))
        return tokens, True
    texts = segment.text.split()
    # Shared out by characters: each word owns its characters and the space after it.
    total = sum(len(text) + 1 for text in texts)
    tokens, offset = [], 0
    for text in texts:
        start = low + (high - low) * offset / total
        offset += len(text) + 1
        end = high if offset == total else low + (high - low) * offset / total
        tokens.append(Token(text, start, end))
    return tokens, False


def _lines_needed(widths: Sequence[int], width: int) -> int:
    """The fewest lines these words fit in (greedy filling is optimal for that); a word
    longer than a line takes a line of its own."""
    lines, used = 0, 0
    for w in widths:
        if lines and used + 1 + w <= width:
            used += 1 + w
        else:
            lines, used = lines + 1, w
    return lines


def _break_cost(tokens: Sequence[Token], after: int, timed: bool) -> float:
    """What ending a cue after ``tokens[after]`` costs: nothing after a sentence, a little
    after a clause, most inside one; a pause between the words takes off up to one."""
    text = tokens[after].text.rstrip(CLOSERS)
    if text.endswith(SENTENCE_END):
        cost = 0.0
    elif text.endswith(CLAUSE_END):
        cost = 0.5
    else:
        cost = 2.0
    if timed and after + 1 < len(tokens):
        pause = tokens[after + 1].start - tokens[after].end
        cost -= min(max(pause, 0.0), 1.0)
    return cost


# A cue costs 1 (fewer, fuller cues read better than many flashes); one shorter than
# SCRAP characters costs up to 1 more, so a sentence's last word does not stand alone.
CUE_COST = 1.0
SCRAP = 20


def _split(tokens: list[Token], style: CueStyle, *, timed: bool) -> list[list[Token]]:
    """The segment's words cut into cues: the cheapest way over the word gaps."""
    n = len(tokens)
    if not n:
        return []
    widths = [len(token.text) for token in tokens]
    best = [0.0] + [math.inf] * n
    came_from = [0] * (n + 1)
    for i in range(n):
        if best[i] == math.inf:
            continue
        chars = -1
        for j in range(i + 1, n + 1):
            chars += widths[j - 1] + 1
            if j - i > 1 and (
                _lines_needed(widths[i:j], style.max_line_width) > style.max_line_count
                or (timed and tokens[j - 1].end - tokens[i].start > style.max_duration)
            ):
                break
            cost = CUE_COST
            if j < n:
                cost += _break_cost(tokens, j - 1, timed)
            if (i, j) != (0, n) and chars < SCRAP:
                cost += (SCRAP - chars) / SCRAP
            if timed:
                cost += _too_fast(tokens, i, j, chars, style)
            if best[i] + cost < best[j]:
                best[j], came_from[j] = best[i] + cost, i
    groups = []
    j = n
    while j:
        i = came_from[j]
        groups.append(tokens[i:j])
        j = i
    return groups[::-1]


def _too_fast(tokens: list[Token], i: int, j: int, chars: int, style: CueStyle) -> float:
    """Up to 2 for a cue that cannot be read at ``max_cps`` in the time it has: from its
    first word to the next cue's (the segment's last cue may have silence after it, which
    is not known here, so it is judged to its last word's end)."""
    room = (tokens[j].start if j < len(tokens) else tokens[-1].end) - tokens[i].start
    needed = chars / style.max_cps
    return 2 * max(0.0, needed - room) / needed


def _wrap(tokens: list[Token], style: CueStyle) -> list[list[Token]]:
    """The cue's words in the fewest lines they fit in, the breaks placed for even lines,
    after punctuation where there is some, and the longer line at the bottom."""
    widths = [len(token.text) for token in tokens]
    count = _lines_needed(widths, style.max_line_width)
    if count <= 1:
        return [tokens]
    n = len(tokens)
    target = (sum(widths) + n - count) / count
    before = [0]  # before[j]: the characters of tokens[:j], a space after each
    for w in widths:
        before.append(before[-1] + w + 1)

    def length(i: int, j: int) -> int:
        return before[j] - before[i] - 1

    def line_cost(i: int, j: int, last: bool) -> float:
        chars = length(i, j)
        if chars > style.max_line_width and j - i > 1:
            return math.inf
        cost = ((chars - target) / style.max_line_width) ** 2
        if not last:
            text = tokens[j - 1].text.rstrip(CLOSERS)
            # the guidelines break lines after punctuation before they balance them
            if text.endswith(SENTENCE_END) or text.endswith(CLAUSE_END):
                cost -= 0.15
        return cost

    # best[k][j]: the cheapest k lines holding tokens[:j]
    best = [[math.inf] * (n + 1) for _ in range(count + 1)]
    came_from = [[0] * (n + 1) for _ in range(count + 1)]
    best[0][0] = 0.0
    for k in range(1, count + 1):
        for j in range(1, n + 1):
            for i in range(k - 1, j):
                if best[k - 1][i] == math.inf:
                    continue
                cost = best[k - 1][i] + line_cost(i, j, last=j == n)
                # the pyramid: a line longer than the one above is a little better
                if k > 1 and length(i, j) < length(came_from[k - 1][i], i):
                    cost += 0.01
                if cost < best[k][j]:
                    best[k][j], came_from[k][j] = cost, i
    lines = []
    j = n
    for k in range(count, 0, -1):
        i = came_from[k][j]
        lines.append(tokens[i:j])
        j = i
    return lines[::-1]


def _settle(made: list[Cue], style: CueStyle, horizon: float | None) -> list[Cue]:
    """Put the cues on a valid timeline, then hold each long enough to read where the
    silence after it allows."""
    floor = 0.0
    for cue in made:
        cue.start = max(cue.start, floor, 0.0)
        cue.end = min(max(cue.end, cue.start), cue.start + style.max_duration)
        floor = cue.start
    for n, cue in enumerate(made):
        if n + 1 < len(made):
            cue.end = max(min(cue.end, made[n + 1].start), cue.start)
            limit = made[n + 1].start - style.min_gap
        else:
            limit = cue.end if horizon is None else horizon
        chars = sum(len(token.text) for token in cue.tokens) + len(cue.tokens) - 1
        wanted = cue.start + min(max(style.min_duration, chars / style.max_cps), style.max_duration)
        if wanted > cue.end:
            cue.end = max(cue.end, min(wanted, limit))
    return made


def karaoke(cue: Cue) -> list[tuple[float, float, list[list[str]]]]:
    """The cue as a run of cues that underline each word while it is spoken (as
    openai-whisper's ``--highlight_words``), with the plain cue between words. Without
    word timings, the plain cue alone."""
    plain = [[token.text for token in line] for line in cue.lines]
    if not cue.timed:
        return [(cue.start, cue.end, plain)]
    shown: list[tuple[float, float, list[list[str]]]] = []
    last = cue.start
    for row, line in enumerate(cue.lines):
        for column, token in enumerate(line):
            start = min(max(token.start, last), cue.end)
            end = min(max(token.end, start), cue.end)
            if end <= start:
                continue
            if start > last:
                shown.append((last, start, plain))
            lines = [list(words) for words in plain]
            lines[row][column] = f"<u>{lines[row][column]}</u>"
            shown.append((start, end, lines))
            last = end
    if cue.end > last or not shown:
        shown.append((last, cue.end, plain))
    return shown
