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
        return shard_samples(items, self.rank, self.world_size)

    def gather(self, obj) -> list:
        """``obj`` from every rank, in rank order (on every rank)."""
        out = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def merge_selection(self, records: list, candidates: list, fallbacks: list) -> tuple[list, list, list]:
        """Every rank's chunk records (in chunk order) and selection keys, so every rank picks the same winners."""
        parts = self.gather((records, candidates, fallbacks))
        return (sorted((r for part in parts for r in part[0]), key=lambda r: r.index),
                [c for part in parts for c in part[1]], [c for part in parts for c in part[2]])

    def merge_answers(self, answers: list, stats, prefix_tokens: int) -> list:
        """Every rank's decoded answers; ``stats`` (a RunStats) becomes the total over the ranks, with the shared
        prefix counted once (as one process counts it: each rank ran it)."""
        parts = self.gather((answers, stats.tokens_processed, stats.lookahead_tokens))
        stats.tokens_processed = sum(part[1] for part in parts) - (self.world_size - 1) * prefix_tokens
        stats.lookahead_tokens = sum(part[2] for part in parts)
        return [a for part in parts for a in part[0]]


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


# --- data-parallel evaluation: each rank runs a shard of the samples (oprm.eval.storage merges the files) ----------
def shard_samples(samples: list, rank: int, world: int) -> list:
    """The samples rank ``rank`` of ``world`` runs: round-robin, so long and short samples spread evenly.

    The shards are disjoint and together hold every sample once; ``oprm.eval.storage.merge_prediction_files`` undoes
    the split.
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world}")
    return list(samples)[rank::world]
