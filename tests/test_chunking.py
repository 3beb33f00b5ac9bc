import math

import pytest

from oprm import OPRMUsageError, chunk_spans, make_chunks


@pytest.mark.parametrize("n,L,expected", [
    (5, 10, [(0, 5)]),                                  # N < L: one chunk, the whole context
    (10, 10, [(0, 10)]),                                # N = L
    (30, 10, [(0, 10), (10, 20), (20, 30)]),            # N = kL
    (31, 10, [(0, 10), (10, 20), (20, 30), (21, 31)]),  # N = kL + 1: the last chunk is the final L tokens
])
def test_spans(n, L, expected):
    assert chunk_spans(n, L) == expected


@pytest.mark.parametrize("n,L", [(1, 1), (7, 3), (1000, 64), (1001, 64), (4096, 1024)])
def test_every_chunk_is_full_and_covers(n, L):
    spans = chunk_spans(n, L)
    assert len(spans) == max(1, -(-n // L))  # b = ceil(N / L)
    assert all(e - s == min(n, L) for s, e in spans)
    covered = set()
    for s, e in spans:
        covered.update(range(s, e))
    assert covered == set(range(n))


def test_overlap():
    spans = chunk_spans(25, 10, overlap=2)
    assert spans == [(0, 10), (8, 18), (15, 25)]
    assert all(a[1] - b[0] >= 2 for a, b in zip(spans, spans[1:]))


@pytest.mark.parametrize("L,overlap", [(0, 0), (-5, 0), (10, 10), (10, -1)])
def test_bad_sizes(L, overlap):
    with pytest.raises(OPRMUsageError):
        chunk_spans(100, L, overlap)


def test_char_spans_from_offsets():
    offsets = [(i * 2, i * 2 + 1) for i in range(7)]  # one-character tokens separated by spaces
    chunks = make_chunks(7, 3, offsets=offsets)
    assert [(c.char_start, c.char_end) for c in chunks] == [(0, 5), (6, 11), (8, 13)]
    assert [c.index for c in chunks] == [0, 1, 2]


# --- boundary-safe chunking -----------------------------------------------------------------------------------------
import random  # noqa: E402
import re  # noqa: E402

from oprm.chunking import (extra_tokens, line_starts, sentence_spans, sentence_starts,  # noqa: E402
                           snapped_spans, token_boundaries, unit_starts)


def _tokenize(text):
    """A word tokenizer with BPE-like offsets: each token is a word with its leading whitespace."""
    return [(m.start(), m.end()) for m in re.finditer(r"\s*\S+", text)]


def _random_text(rng, n_sent, long_every=0):
    sents = []
    for i in range(n_sent):
        n = rng.randint(1, 60) if long_every and i % long_every == 0 else rng.randint(1, 14)
        words = [rng.choice(["alpha", "beta", "gamma", "delta", "x", "y"]) for _ in range(n)]
        sents.append(" ".join(words).capitalize() + rng.choice([".", "!", "?", "."]))
    sep = lambda: rng.choice([" ", " ", "  ", "\n", "\n\n"])  # noqa: E731
    return "".join(s + sep() for s in sents).rstrip()


def _whole(span, units):
    s, e = span
    return [u for u in units if s <= u[0] and u[1] <= e]


@pytest.mark.parametrize("seed", range(60))
@pytest.mark.parametrize("snap", ["end", "start"])
def test_sentence_chunks_invariants(seed, snap):
    rng = random.Random(seed)
    text = _random_text(rng, rng.randint(1, 80), long_every=rng.choice([0, 7]))
    offsets = _tokenize(text)
    n, L = len(offsets), rng.choice([5, 8, 16, 33])
    chunks = make_chunks(n, L, offsets=offsets, chunking="sentences", text=text, snap=snap)
    assert chunks[0].token_start == 0 and chunks[-1].token_end == n
    assert all(c.num_tokens == min(n, L) for c in chunks)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert all(a.token_start < b.token_start for a, b in zip(chunks, chunks[1:]))
    covered = set()
    for c in chunks:
        covered.update(range(c.token_start, c.token_end))
    assert covered == set(range(n))
    bounds = unit_starts(text, "sentences", offsets, L)
    units = list(zip(bounds, bounds[1:] + [n]))
    for u in units:
        if u[1] - u[0] <= L:  # every unit that fits is whole in at least one chunk
            assert any(c.token_start <= u[0] and u[1] <= c.token_end for c in chunks), (u, chunks)
    # the snapped side sits on a unit boundary unless a unit longer than the chunk forces plain stepping
    long_units = [u for u in units if u[1] - u[0] > L]
    for c in chunks:
        edge = c.token_end if snap == "end" else c.token_start
        inside_long = any(u[0] < edge < u[1] for u in long_units)
        assert edge in set(bounds) | {n} or inside_long or c.token_start == n - L or c.token_end == L


@pytest.mark.parametrize("seed", range(20))
def test_snapped_chunks_are_few(seed):
    """Greedy placement: no more chunks than units, and at most one extra chunk per chunk-sized stretch of text
    when units are short."""
    rng = random.Random(seed)
    n, L = rng.randint(50, 400), rng.randint(10, 40)
    bounds = sorted({0} | {rng.randrange(n) for _ in range(n // 4)})
    gaps = [b - a for a, b in zip(bounds, bounds[1:] + [n])]
    for snap in ("end", "start"):
        spans = snapped_spans(n, L, bounds, snap)
        assert len(spans) <= len(bounds) + math.ceil(n / L)
        if max(gaps) <= L // 2:  # each window advances at least L - longest unit
            assert len(spans) <= math.ceil((n - L) / (L - max(gaps))) + 1


@pytest.mark.parametrize("seed", range(30))
def test_snapped_chunks_survive_appending(seed):
    """Windows are placed from the start: appending units keeps every window of the shorter text but its last (the
    final L tokens), so a grown document reuses its earlier chunks."""
    rng = random.Random(seed)
    n, L = rng.randint(60, 400), rng.randint(8, 40)
    bounds = sorted({0} | {rng.randrange(n) for _ in range(n // 5)})
    m = rng.choice([b for b in bounds if b > L] or [n])  # the shorter text ends where a unit starts
    for snap in ("end", "start"):
        short = snapped_spans(m, L, [b for b in bounds if b < m], snap)
        grown = snapped_spans(n, L, bounds, snap)
        assert set(short[:-1]) <= set(grown), (snap, short, grown)


def test_short_context_is_one_chunk():
    text = "One. Two. Three."
    offsets = _tokenize(text)
    for mode in ("sentences", "lines"):
        chunks = make_chunks(len(offsets), 10, offsets=offsets, chunking=mode, text=text)
        assert [(c.token_start, c.token_end) for c in chunks] == [(0, 3)]


def test_lines_mode_on_code():
    lines = [f"    x_{i} = compute(x_{i - 1}, {i})" if i % 5 else f"def f_{i}():" for i in range(60)]
    text = "\n".join(lines)
    offsets = _tokenize(text)
    L = 12
    chunks = make_chunks(len(offsets), L, offsets=offsets, chunking="lines", text=text)
    for line_start in line_starts(text):
        line_end = text.find("\n", line_start)
        line_end = len(text) if line_end < 0 else line_end
        assert any(c.char_start <= line_start and line_end <= c.char_end for c in chunks)
    # code has no sentence ends: sentences mode falls back to lines inside the over-long "sentence"
    chunks_s = make_chunks(len(offsets), L, offsets=offsets, chunking="sentences", text=text)
    assert [(c.token_start, c.token_end) for c in chunks_s] == [(c.token_start, c.token_end) for c in chunks]


def test_unit_longer_than_chunk_steps_in_token_windows():
    text = "Short one. Long" + " word" * 49 + ". Tail here."
    offsets = _tokenize(text)
    chunks = make_chunks(len(offsets), 8, offsets=offsets, chunking="sentences", text=text, snap="start")
    assert all(c.num_tokens == 8 for c in chunks)
    starts = [c.token_start for c in chunks]
    assert starts[:3] == [0, 2, 10]  # the long sentence starts at token 2, then plain 8-token steps
    assert chunks[-1].token_end == len(offsets)


def test_sentence_rules():
    text = ('Mr. Smith met Dr. J. R. Hart at 3 p.m. in the U.S. embassy. He said "Hi!" Then he left... and came '
            'back. "Who?" he asked. No. 5 is big. He said no. Really? Yes.\n\nCHAPTER 2\nThe end')
    got = [text[s:e].strip() for s, e in sentence_spans(text)]
    assert got == ['Mr. Smith met Dr. J. R. Hart at 3 p.m. in the U.S. embassy.', 'He said "Hi!"',
                   'Then he left... and came back.', '"Who?" he asked.', 'No. 5 is big.', 'He said no.', 'Really?',
                   'Yes.', 'CHAPTER 2\nThe end']
    assert sentence_starts("  Leading space. Next") == [2, 17]
    assert sentence_starts("") == []
    assert sentence_starts("第一句。第二句！第三句") == [0, 4, 8]


def test_token_boundaries_map_to_the_token_holding_the_first_character():
    text = "Ab. Cd ef. Gh"
    offsets = _tokenize(text)  # "Ab." " Cd" " ef." " Gh"
    assert token_boundaries(sentence_starts(text), offsets) == [0, 1, 3]


def test_boundary_chunking_errors_and_cost():
    text = "Aa bb. Cc dd. Ee ff. Gg hh."
    offsets = _tokenize(text)
    with pytest.raises(OPRMUsageError):
        make_chunks(len(offsets), 3, offsets=None, chunking="sentences", text=text)
    with pytest.raises(OPRMUsageError):
        make_chunks(len(offsets), 3, offsets=offsets, chunking="sentences", text=text, overlap=1)
    with pytest.raises(OPRMUsageError):
        make_chunks(len(offsets), 3, offsets=offsets, chunking="paragraphs", text=text)
    with pytest.raises(OPRMUsageError):
        make_chunks(len(offsets), 3, offsets=offsets, chunking="sentences", text=text, snap="middle")
    plain = make_chunks(len(offsets), 4, offsets=offsets)
    safe = make_chunks(len(offsets), 4, offsets=offsets, chunking="sentences", text=text)
    assert extra_tokens(plain, len(offsets)) == 0
    # 2-token sentences, 4-token chunks: token windows [0,4) [4,8) already keep every sentence whole: no cost
    assert [(c.token_start, c.token_end) for c in safe] == [(0, 4), (4, 8)] and extra_tokens(safe, 8) == 0
    safe3 = make_chunks(len(offsets), 3, offsets=offsets, chunking="sentences", text=text)
    # end-snapped, each window ends on a sentence end: [0,3) cuts "Cc dd." so [1,4) ends after it, and so on
    assert [(c.token_start, c.token_end) for c in safe3] == [(0, 3), (1, 4), (3, 6), (5, 8)]
    assert extra_tokens(safe3, 8) == 3 * 4 - 8
