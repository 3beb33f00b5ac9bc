"""Chunk-parallel OPRM over 2 CPU processes (gloo) gives the one-process result; data-parallel eval helpers.

The two ranks are started with torch.multiprocessing (spawn) and a tcp:// rendezvous on a free local port. Each rank
computes the one-process reference itself (same inputs, no chunk parallelism) and the chunk-parallel result, and
writes both to a JSON file; the test compares them on both ranks. The inputs are pre-tokenized random ids with an
empty suffix, so the chunks' first-token argmaxes differ and the IDK word can be chosen to filter some chunks.
"""

import json
import os

import pytest
import torch
import torch.multiprocessing as mp

from oprm.eval.storage import merge_prediction_files
from oprm.parallel import shard_samples
from ports import free_port

WORLD = 2
CHUNK = 16


def _summary(result) -> dict:
    return {"chosen": result.chosen, "token_ids": result.token_ids, "text": result.text,
            "entropies": [c.entropy for c in result.chunks], "is_idk": [c.is_idk for c in result.chunks],
            "answer_chunks": [a.chunk for a in result.answers], "tokens_processed": result.tokens_processed,
            "idk_fallback_used": result.idk_fallback_used, "document": result.document}


def _cases(model_type: str, tok, engine):
    """(name, generate kwargs) for one model; the IDK words are picked from an unfiltered reference run."""
    g = torch.Generator().manual_seed(1)

    def ids(n):
        return torch.randint(3, len(tok), (n,), generator=g).tolist()

    prefix, context = ids(6), ids(5 * CHUNK)  # 5 chunks: ranks hold 3 and 2
    base = dict(prefix_ids=prefix, context_ids=context, suffix_ids=[], max_new_tokens=4, selection="entropy")
    plain = engine.generate(**base, idk=None)
    argmax = [c.argmax for c in plain.chunks]
    idk = tok.decode([argmax[plain.chosen[0]]]).strip()  # the unfiltered winner says IDK: the filter must act
    pattern = ids(CHUNK)
    same = dict(prefix_ids=prefix, context_ids=pattern * 5, suffix_ids=[], max_new_tokens=4, selection="entropy")
    all_idk = tok.decode([engine.generate(**same, idk=None).chunks[0].argmax]).strip()  # identical chunks
    assert idk and all_idk, f"{model_type}: pick another seed (an argmax decodes to whitespace)"
    return [
        ("entropy_idk", dict(base, idk=idk)),
        ("entropy_no_idk", dict(base, idk=None)),
        ("decode_all", dict(base, idk=None, decode="all")),
        ("top_k", dict(base, idk=idk, decode="top_k", num_decode=2)),
        ("all_idk_answer", dict(same, idk=all_idk)),
        ("all_idk_min_entropy", dict(same, idk=all_idk, idk_fallback="min_entropy")),
        # a suffix: the document cache applies; the default look-ahead selection ranks every rank's chunks
        ("with_suffix", dict(base, suffix_ids=ids(4), idk=None, selection="support")),
    ]


def _cli_outputs(out_dir: str) -> dict:
    """What ``oprm ask --json`` prints on this rank, alone and with --chunk-parallel (as under torchrun)."""
    import contextlib
    import io

    from oprm.cli import main

    args = ["ask", "--model", os.path.join(out_dir, "model"), "--context", os.path.join(out_dir, "context.txt"),
            "--question", "What is the code?", "--chunk-size", "24", "--max-new-tokens", "4", "--dtype", "float64",
            "--threads", "1", "--json"]
    outputs = {}
    for name, extra in (("single", []), ("parallel", ["--chunk-parallel"])):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert main(args + extra) == 0
        outputs[name] = buf.getvalue()
    return outputs


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank))  # what torchrun sets; the CLI reads WORLD_SIZE
    try:
        from tiny_models import tiny_model
        from tiny_tokenizer import tiny_tokenizer

        from oprm import OPRM
        from oprm.parallel import ChunkParallel

        tok = tiny_tokenizer()
        out = {}
        for model_type in ("mamba2", "mamba"):
            model = tiny_model(model_type).double()  # fp64: batch composition cannot move an entropy 1e-6
            model.resize_token_embeddings(len(tok), mean_resizing=False)
            single = OPRM(model, tok, chunk_size=CHUNK, max_batch_tokens=3 * (6 + CHUNK))  # several micro-batches
            parallel = OPRM(model, tok, chunk_size=CHUNK, max_batch_tokens=3 * (6 + CHUNK),
                            chunk_parallel=ChunkParallel())
            for name, kwargs in _cases(model_type, tok, single):
                out[f"{model_type}/{name}"] = {"single": _summary(single.generate(**kwargs)),
                                               "parallel": _summary(parallel.generate(**kwargs)),
                                               "parallel_again": _summary(parallel.generate(**kwargs))}
        out["cli"] = _cli_outputs(out_dir)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(out, f)
        dist.barrier()  # rank 0 hosts the rendezvous store: tearing it down while rank 1 still runs aborts rank 1
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory):
    from tiny_models import tiny_model
    from tiny_tokenizer import tiny_tokenizer

    out_dir = tmp_path_factory.mktemp("dist")
    tok, model = tiny_tokenizer(), tiny_model("mamba2")  # a model folder for `oprm ask --chunk-parallel`
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out_dir / "model")
    tok.save_pretrained(out_dir / "model")
    (out_dir / "context.txt").write_text("The code of the amber falcon is 4821. The weather was calm. " * 6)
    mp.start_processes(_worker, args=(WORLD, free_port(), str(out_dir)), nprocs=WORLD, start_method="spawn")
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(WORLD)]


CASES = [f"{m}/{c}" for m in ("mamba2", "mamba") for c in ("entropy_idk", "entropy_no_idk", "decode_all", "top_k",
                                                            "all_idk_answer", "all_idk_min_entropy", "with_suffix")]


@pytest.mark.parametrize("case", CASES)
def test_chunk_parallel_equals_one_process(distributed_results, case):
    for rank, results in enumerate(distributed_results):
        single, parallel = results[case]["single"], results[case]["parallel"]
        assert parallel["chosen"] == single["chosen"], (rank, case)
        assert parallel["token_ids"] == single["token_ids"], (rank, case)
        assert parallel["answer_chunks"] == single["answer_chunks"]
        assert parallel["is_idk"] == single["is_idk"]
        assert parallel["idk_fallback_used"] == single["idk_fallback_used"]
        if not case.endswith("with_suffix"):  # look-ahead selection may prefill a winner again on one side only
            assert parallel["tokens_processed"] == single["tokens_processed"], (rank, case)
        assert len(parallel["entropies"]) == len(single["entropies"]) == 5
        for a, b in zip(parallel["entropies"], single["entropies"]):
            assert abs(a - b) <= 1e-6
        again = results[case]["parallel_again"]  # each rank answers again from the chunk states it cached
        assert again["chosen"] == single["chosen"] and again["token_ids"] == single["token_ids"], (rank, case)
        assert max(abs(a - b) for a, b in zip(again["entropies"], single["entropies"])) <= 1e-6
        if case.endswith("with_suffix"):
            assert parallel["document"]["cache"] == "miss" and again["document"]["cache"] == "hit"
            # (against the parallel miss: one process looks ahead on fewer chunks, ranks on every chunk they hold)
            assert again["tokens_processed"] < parallel["tokens_processed"]
    assert distributed_results[0][case] == distributed_results[1][case]  # every rank returns the same result


def test_cases_exercise_the_idk_filter(distributed_results):
    for model_type in ("mamba2", "mamba"):
        res = distributed_results[0]
        filtered = res[f"{model_type}/entropy_idk"]["single"]
        assert any(filtered["is_idk"]) and not all(filtered["is_idk"])
        assert filtered["chosen"] != res[f"{model_type}/entropy_no_idk"]["single"]["chosen"]
        assert res[f"{model_type}/all_idk_answer"]["single"]["idk_fallback_used"]
        assert res[f"{model_type}/all_idk_answer"]["single"]["chosen"] == []
        assert res[f"{model_type}/all_idk_min_entropy"]["single"]["chosen"] != []
        assert res[f"{model_type}/decode_all"]["single"]["answer_chunks"] == [0, 1, 2, 3, 4]


# --- data-parallel eval: shard the samples, merge the per-rank prediction files ------------------------------------
def _run_shards(samples, world, tmp_path):
    parts = []
    for rank in range(world):
        path = tmp_path / f"pred.rank{rank}.jsonl"
        with open(path, "w") as f:
            for s in shard_samples(samples, rank, world):
                f.write(json.dumps({"_id": s["_id"], "pred": s["_id"].upper()}) + "\n")
        parts.append(path)
    return parts


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_shards_are_disjoint_and_complete(world):
    samples = [{"_id": f"s{i}"} for i in range(10)]
    shards = [shard_samples(samples, r, world) for r in range(world)]
    ids = [s["_id"] for shard in shards for s in shard]
    assert sorted(ids) == sorted(s["_id"] for s in samples) and len(ids) == len(set(ids))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ValueError):
        shard_samples(samples, world, world)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_merge_restores_every_prediction_once_in_order(tmp_path, world):
    samples = [{"_id": f"s{i}"} for i in range(8)]
    parts = _run_shards(samples, world, tmp_path)
    out = tmp_path / "merged" / "pred.jsonl"
    assert merge_prediction_files(parts, out) == 8
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["_id"] for r in rows] == [s["_id"] for s in samples]
    order = [s["_id"] for s in reversed(samples)]
    assert merge_prediction_files(parts, out, order=order) == 8
    assert [json.loads(line)["_id"] for line in out.read_text().splitlines()] == order


def test_merge_dedups_resumed_records_and_reports_problems(tmp_path):
    samples = [{"_id": f"s{i}"} for i in range(4)]
    parts = _run_shards(samples, 2, tmp_path)
    with open(parts[1], "a") as f:  # a resumed rank wrote one record twice
        f.write(json.dumps({"_id": "s1", "pred": "S1"}) + "\n")
    assert merge_prediction_files(parts, tmp_path / "m.jsonl") == 4
    with pytest.raises(ValueError, match="missing"):  # a rank that died early: a sample is lost
        merge_prediction_files(parts[:1], tmp_path / "m.jsonl", order=[s["_id"] for s in samples])
    ids = [s["_id"] for s in samples]
    assert merge_prediction_files(parts, tmp_path / "m.jsonl", order=ids[:3]) == 4  # an earlier, larger run: kept
    assert [json.loads(x)["_id"] for x in (tmp_path / "m.jsonl").read_text().splitlines()] == ["s0", "s1", "s2", "s3"]
    assert merge_prediction_files(parts + [tmp_path / "absent.jsonl"], tmp_path / "m.jsonl") == 4
    with open(parts[0], "a") as f:
        f.write(json.dumps({"_id": "s1", "pred": "different"}) + "\n")
    with pytest.raises(ValueError, match="conflicting"):
        merge_prediction_files(parts, tmp_path / "m.jsonl")


def test_ask_chunk_parallel_rank0_prints_the_one_process_answer(distributed_results):
    rank0, rank1 = (r["cli"] for r in distributed_results)
    assert rank1["parallel"] == ""  # only rank 0 prints
    single, parallel = json.loads(rank0["single"]), json.loads(rank0["parallel"])
    assert len(single["chunks"]) > 2
    for key in ("text", "token_ids", "chosen", "idk_fallback_used"):
        assert parallel[key] == single[key], key
    # one process looks ahead only where the choice needs it, and runs S only on the support tiers the choice can
    # need (oprm.run: tiers); ranks look ahead on, and run S on, every chunk they hold
    skipped = [b["index"] for b in single["chunks"] if b["entropy"] is None]
    prefill = {k: r["tokens_processed"] - r["lookahead_tokens"] for k, r in (("single", single), ("parallel", parallel))}
    assert prefill["single"] <= prefill["parallel"] and (prefill["single"] == prefill["parallel"]) == (not skipped)
    for a, b in zip(parallel["chunks"], single["chunks"]):
        assert a["index"] == b["index"]
        if b["entropy"] is not None:
            assert a["is_idk"] == b["is_idk"] and abs(a["entropy"] - b["entropy"]) <= 1e-6
