"""Chunking of the context: plain token windows (the paper's) and boundary-safe windows.

Every chunk is exactly ``chunk_size`` tokens (the last one is the final ``chunk_size`` tokens of the context and may
overlap its neighbour), so the b prompts [P, C_i, S] all have the same length and no row is ever padded: padding is
not honoured exactly by several recurrent models (RWKV, xLSTM, RecurrentGemma).

Boundary-safe chunking (``chunking="sentences"`` or ``"lines"``) keeps that property and adds one guarantee: every
sentence (or line) of at most ``chunk_size`` tokens lies whole inside at least one chunk, so no fact is lost because
a chunk edge cut it. Each chunk is an exact token window whose *end* (``snap="end"``, the default) or *start*
(``snap="start"``) sits on a unit boundary; the partial sentence that an equal-length window cannot avoid then sits at
the other end, and the next window keeps the cut sentence whole. Windows are placed greedily from the start, which
gives the fewest windows that keep every short unit whole and keeps them when text is appended; the price is a few
more chunks than ``ceil(N / L)`` (:func:`extra_tokens`). A unit longer than the chunk is split at its line breaks
(sentences mode), and a piece still longer than the chunk is stepped through in plain token windows.

Sentence segmentation (:func:`sentence_spans`) is a documented rule set, chosen over a library segmenter because it
runs in milliseconds per megabyte (pysbd 0.3.4 takes tens of seconds; see benchmarks/selection_study.md) and
agrees with pysbd on most boundaries of real prose. A boundary is placed

* after a run of terminal punctuation (``. ! ? …`` and the CJK ``。！？``), optionally followed by closing quotes or
  brackets, when whitespace follows and the next visible character is not a lower-case letter (and, for ``.``, the
  word before it is not a known abbreviation or a single-letter initial); CJK terminals need no whitespace;
* at every blank line (a paragraph break), whatever precedes it.

Known failure cases (the price of rules without a model):

* an abbreviation that ends a sentence does not split (``... in the U.S. Then ...``);
* a sentence that starts with a lower-case letter or is introduced by ``?``/``!`` inside quoted speech followed by
  a capitalised word is handled by the next-character rule: ``"Who?" Ahab asked`` splits after the quote (false
  split), ``"Who?" he asked`` does not;
* numbered list items (``1. The first``) split after the number; unknown abbreviations followed by a capital
  (``Gen. Grant`` is known, ``Capt. Ahab`` is known, ``Wm. Smith`` is not) split;
* single line breaks never split a sentence (hard-wrapped prose would otherwise split every line), so text without
  punctuation or blank lines (code, tables) is one unit until the chunk size forces line splitting.

In ``lines`` mode the units are the lines of the text (split at ``\\n``), for code and line-oriented data.
"""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass

from .errors import OPRMUsageError

CHUNKINGS = ("tokens", "sentences", "lines")
SNAPS = ("end", "start")
DEFAULT_SNAP = "end"


@dataclass(frozen=True)
class Chunk:
    index: int
    token_start: int  # span in the context's token ids, end exclusive
    token_end: int
    char_start: int | None = None  # span in the context text, when offsets are known
    char_end: int | None = None

    @property
    def num_tokens(self) -> int:
        return self.token_end - self.token_start


def _check_sizes(chunk_size: int, overlap: int) -> None:
    if chunk_size <= 0:
        raise OPRMUsageError(f"chunk size must be a positive number of tokens, got {chunk_size}")
    if not 0 <= overlap < chunk_size:
        raise OPRMUsageError(f"chunk overlap must be in [0, chunk size), got {overlap} with chunk size {chunk_size}")


def chunk_spans(num_tokens: int, chunk_size: int, overlap: int = 0) -> list[tuple[int, int]]:
    """Token spans of the plain chunks of a context of ``num_tokens`` tokens.

    With stride = chunk_size - overlap, b = ceil((N - overlap) / stride) chunks (b = ceil(N / L) without overlap);
    N <= L gives one chunk holding the whole context.
    """
    _check_sizes(chunk_size, overlap)
    if num_tokens <= chunk_size:
        return [(0, num_tokens)]
    stride = chunk_size - overlap
    count = math.ceil((num_tokens - overlap) / stride)
    spans = [(i * stride, i * stride + chunk_size) for i in range(count - 1)]
    spans.append((num_tokens - chunk_size, num_tokens))  # the final L tokens: a full chunk, never padded
    return spans


# --------------------------------------------------------------------------------------------------- segmentation
# Lower-cased words that end with a "." without ending the sentence (titles, Latin, months, company forms). Words
# that also end sentences as plain English ("no", "sat", "art", "mar", "co", "ed") are left out; "No." and "Nos."
# only count before a number.
ABBREVIATIONS = frozenset("""
mr mrs ms messrs dr prof rev hon st sr jr capt col gen lt maj sgt cmdr adm supt insp esq
mt ft ave blvd rd vol vols pp chap fig figs eds viz vs etc cf ibid
e.g i.e a.m p.m u.s u.k u.n ph.d b.a m.a d.c inc ltd corp bros dept univ assn approx
jan feb apr jun jul aug sep sept oct nov dec
""".split())

_TERMINAL = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]\u00bb]*(?=\s)|[\u3002\uff01\uff1f]+[\"'\u201d\u2019\u300d\u300f)\]]*")
_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n\s*")
_WORD_BEFORE = re.compile(r"([\w.]+)$")


def _is_abbreviation(text: str, dot: int, next_char: str) -> bool:
    """Whether the "." at ``dot`` ends an abbreviation or an initial rather than a sentence."""
    m = _WORD_BEFORE.search(text, max(0, dot - 20), dot)
    if not m:
        return False
    word = m.group(1).lower().rstrip(".")
    if len(word) == 1 and word.isalpha():  # an initial: "J. R. Hart"
        return True
    if word in ("no", "nos"):
        return next_char.isdigit()
    return word in ABBREVIATIONS


def sentence_starts(text: str) -> list[int]:
    """Character offsets where sentences start (always including the first visible character)."""
    starts = set()
    n = len(text)
    first = len(text) - len(text.lstrip())
    if first < n:
        starts.add(first)
    for m in _TERMINAL.finditer(text):
        end = m.end()
        nxt = end
        while nxt < n and text[nxt].isspace():
            nxt += 1
        if nxt >= n:
            continue
        cjk = m.group(0)[0] in "\u3002\uff01\uff1f"
        if not cjk:
            if text[nxt].islower():
                continue  # "e.g. the", "... and then"
            if m.group(0)[0] == "." and m.group(0).rstrip("\"'\u201d\u2019)]\u00bb") == "." and \
                    _is_abbreviation(text, m.start(), text[nxt]):
                continue
        starts.add(nxt)
    for m in _BLANK_LINE.finditer(text):
        if m.end() < n:
            starts.add(m.end())
    return sorted(starts)


def line_starts(text: str) -> list[int]:
    """Character offsets where lines start (the first line at 0)."""
    return [0] + [m.end() for m in re.finditer("\n", text) if m.end() < len(text)]


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of ``text`` (each runs to the next sentence's start)."""
    starts = sentence_starts(text)
    return [(s, e) for s, e in zip(starts, starts[1:] + [len(text)])]


# --------------------------------------------------------------------------------------------------- boundary-safe
def token_boundaries(char_starts: list[int], offsets: list[tuple[int, int]]) -> list[int]:
    """Token indices where units starting at ``char_starts`` begin: the token holding the unit's first character
    (a BPE token such as " The" that carries the preceding space belongs to the unit it opens)."""
    ends = [o[1] for o in offsets]
    out = {0}
    for s in char_starts:
        i = bisect.bisect_right(ends, s)
        if 0 < i < len(offsets):
            out.add(i)
    return sorted(out)


def _start_snapped(num_tokens: int, chunk_size: int, bounds: list[int]) -> list[tuple[int, int]]:
    """Greedy windows that start on a unit boundary: each next window starts at the first unit the previous one cut;
    a unit longer than the window is stepped through in plain windows."""
    spans, c = [], 0
    while c + chunk_size < num_tokens:
        e = c + chunk_size
        spans.append((c, e))
        t = bounds[bisect.bisect_right(bounds, e) - 1]  # start of the unit holding token e (the first one cut)
        c = t if t > c else e
    spans.append((num_tokens - chunk_size, num_tokens))
    return spans


def _end_snapped(num_tokens: int, chunk_size: int, bounds: list[int]) -> list[tuple[int, int]]:
    """Greedy windows that end on a unit boundary, placed from the start: each next window keeps whole the first unit
    its predecessor cut and ends on the last unit boundary it can reach. Only the first window (which starts at
    token 0) and windows inside a unit longer than the chunk end elsewhere."""
    spans, covered = [], 0  # every unit that starts before ``covered`` lies whole in some window
    while covered + chunk_size < num_tokens:
        e = bounds[bisect.bisect_right(bounds, covered + chunk_size) - 1]
        if e <= covered:  # the unit at ``covered`` is longer than the window: a plain window through it
            e = covered + chunk_size
        spans.append((max(0, e - chunk_size), max(e, chunk_size)))
        covered = e
    spans.append((num_tokens - chunk_size, num_tokens))
    return spans


def snapped_spans(num_tokens: int, chunk_size: int, bounds: list[int], snap: str = DEFAULT_SNAP
                  ) -> list[tuple[int, int]]:
    """Token spans of boundary-safe chunks given the units' first tokens ``bounds`` (sorted, starting with 0).

    ``snap="end"``: windows end on unit boundaries (the partial unit is at a window's start, a clean sentence end next
    to the question); ``snap="start"``: windows start on unit boundaries (the partial unit is at a window's end).
    Both place windows from the document's start, so appending text keeps every window but the last (the final
    ``chunk_size`` tokens) and those the new text reaches: a grown document reuses its earlier chunks' states.
    """
    if snap not in SNAPS:
        raise OPRMUsageError(f"unknown snap {snap!r}; choose one of: {', '.join(SNAPS)}")
    _check_sizes(chunk_size, 0)
    if num_tokens <= chunk_size:
        return [(0, num_tokens)]
    bounds = sorted({b for b in bounds if 0 <= b < num_tokens} | {0})
    return (_start_snapped if snap == "start" else _end_snapped)(num_tokens, chunk_size, bounds)


def unit_starts(text: str, chunking: str, offsets: list[tuple[int, int]], chunk_size: int) -> list[int]:
    """First tokens of the units of ``text``: sentences (with over-long sentences split at their line breaks) or
    lines."""
    if chunking == "lines":
        return token_boundaries(line_starts(text), offsets)
    sent = token_boundaries(sentence_starts(text), offsets)
    lines = token_boundaries(line_starts(text), offsets)
    if len(lines) <= 1:
        return sent
    # a sentence longer than the chunk can only be kept partly whole: fall back to its lines
    out = list(sent)
    edges = sent + [len(offsets)]
    for a, b in zip(edges, edges[1:]):
        if b - a > chunk_size:
            out.extend(lines[bisect.bisect_right(lines, a): bisect.bisect_left(lines, b)])
    return sorted(set(out))


def make_chunks(num_tokens: int, chunk_size: int, overlap: int = 0,
                offsets: list[tuple[int, int]] | None = None, *, chunking: str = "tokens", text: str | None = None,
                snap: str = DEFAULT_SNAP) -> list[Chunk]:
    """Chunks with token spans and, when token character ``offsets`` are given, character spans.

    ``chunking="tokens"`` is the paper's plain windows (optionally overlapping); ``"sentences"`` and ``"lines"`` are
    boundary-safe windows, which need the context ``text`` and the per-token (char_start, char_end) ``offsets``.
    """
    if chunking not in CHUNKINGS:
        raise OPRMUsageError(f"unknown chunking {chunking!r}; choose one of: {', '.join(CHUNKINGS)}")
    if chunking == "tokens":
        spans = chunk_spans(num_tokens, chunk_size, overlap)
    else:
        _check_sizes(chunk_size, overlap)
        if overlap:
            raise OPRMUsageError("chunk overlap applies to token chunking; boundary-safe chunking places its own "
                                 "overlap (set overlap=0)")
        if text is None or offsets is None or len(offsets) != num_tokens:
            raise OPRMUsageError(f"{chunking} chunking needs the context text and its token offsets (a fast "
                                 "tokenizer); use chunking='tokens' for pre-tokenized input")
        spans = snapped_spans(num_tokens, chunk_size, unit_starts(text, chunking, offsets, chunk_size), snap)
    chunks = []
    for i, (start, end) in enumerate(spans):
        char_start = char_end = None
        if offsets and end > start:
            char_start, char_end = offsets[start][0], offsets[end - 1][1]
        chunks.append(Chunk(i, start, end, char_start, char_end))
    return chunks


def extra_tokens(chunks: list[Chunk], num_tokens: int) -> int:
    """Context tokens prefilled beyond the context itself (b * L - N; 0 for plain non-overlapping chunks when L
    divides N)."""
    return sum(c.num_tokens for c in chunks) - num_tokens
