"""Past one process with torch.distributed: chunk-parallel OPRM for one long input.

Launch with torchrun; every rank builds the same engine and calls ``generate`` on the same input with
``chunk_parallel=ChunkParallel()``. Each rank prefills its share of the chunks, the selection keys are gathered, the
rank(s) holding the winning chunk(s) decode, and every rank returns the same result. Works on any backend that
``all_gather_object`` supports (gloo on CPU, nccl on GPUs).
"""

from __future__ import annotations

import os

import torch.distributed as dist


class ChunkParallel:
    def __init__(self, group=None):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("chunk-parallel OPRM needs torch.distributed initialised (launch with torchrun)")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)

    def share(self, items: list) -> list:
        """This rank's items: round-robin, so ranks get equal numbers of chunks."""
        return items[self.rank::self.world_size]

    def gather(self, obj) -> list:
        """``obj`` from every rank, in rank order (on every rank)."""
        out = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out


def init_from_env(backend: str | None = None) -> bool:
    """Initialise the default process group when launched by torchrun; returns True when running distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        import torch

        dist.init_process_group(backend or ("nccl" if torch.cuda.is_available() else "gloo"))
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True
