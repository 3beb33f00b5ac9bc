"""Data-parallel `oprm eval` on 2 gloo ranks: every sample predicted once, the same predictions as one process."""

import json

import torch.multiprocessing as mp
from ports import free_port

SYNTH = {"ar_num_facts": [3, 6], "samples_per_setting": 5}


def _run(out_dir, data_parallel=None):
    from test_evaluate import FakeEngine

    from oprm.eval import evaluate

    return evaluate(FakeEngine(), "ar", modes=("vanilla", "oprm"), output_path=out_dir, model_name="fake",
                    synthetic_options=SYNTH, progress=False, plots=False, data_parallel=data_parallel)


def _worker(rank, world, port, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        from oprm.parallel import ChunkParallel

        _run(out_dir, ChunkParallel())
        dist.barrier()  # rank 0 hosts the rendezvous store: tearing it down while rank 1 still runs aborts rank 1
    finally:
        dist.destroy_process_group()


def _predictions(root):
    files = sorted(root.glob("fake/*/pred/ar.jsonl"))
    out = {}
    for f in files:
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        out[f.parent.parent.name] = [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    return out


def test_data_parallel_eval_matches_one_process(tmp_path):
    mp.start_processes(_worker, args=(2, free_port(), str(tmp_path / "dp")), nprocs=2, start_method="spawn")
    _run(tmp_path / "single")
    dp, single = _predictions(tmp_path / "dp"), _predictions(tmp_path / "single")
    assert set(dp) == set(single) and len(single) == 2  # vanilla and oprm
    for config, rows in single.items():
        ids = [r["_id"] for r in dp[config]]
        assert len(ids) == len(set(ids)) == 10  # every sample once
        assert dp[config] == rows  # same predictions, same order
    assert not list((tmp_path / "dp").rglob("*.rank*-of-*.jsonl"))  # the part files were merged away
    assert (tmp_path / "dp" / "fake" / "results.json").exists()
