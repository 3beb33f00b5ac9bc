"""The process heap: hand freed memory back to the system (glibc's allocator; nothing elsewhere)."""

from __future__ import annotations

import os


def release_freed_memory() -> None:
    """Hand freed heap memory back to the system (glibc's ``malloc_trim``). A state is many tensors of ~100 KB, below
    malloc's mmap threshold, so evicted documents leave holes in the heap that the process would otherwise keep
    resident: a server's memory grew by about twice its cache budget (benchmarks/serve_memory.py). Takes ~15 ms."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to do
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None
M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_malloc_arenas(count: int = 2) -> None:
    """At most ``count`` glibc malloc arenas for threads started from now on (unless $MALLOC_ARENA_MAX says
    otherwise). A server answers each request in a thread, and each thread's arena keeps its own freed room: with the
    default (8 per core), 30 requests on distinct 100 KB documents left a server 1.22x its 256 MiB cache budget above
    its warmed-up memory, with 2 arenas 1.12x (benchmarks/serve_memory.py). Does nothing off glibc."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, count)
    except (OSError, AttributeError):
        pass
