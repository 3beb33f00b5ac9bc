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
