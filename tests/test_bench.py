"""`oprm bench` plumbing on a short input, in-process: cells, medians, the tokens floor, the table and the plots.

No timings are asserted (the bench is a measurement, not a test).
"""

import pytest

from oprm import bench
from oprm.cli import build_parser
from oprm.errors import OPRMUsageError


def _args(**over):
    ns = build_parser().parse_args(["bench", "--model", "tiny-mamba2", "--lengths", "300", "--chunk-size", "128",
                                    "--repeats", "1", "--threads", "1", "--max-new-tokens", "3",
                                    "--prefix-tokens", "5", "--suffix-tokens", "4"])
    for k, v in over.items():
        setattr(ns, k, v)
    return ns


def test_bench_is_a_subcommand():
    args = _args()
    assert args.func is bench.run_bench and args.modes == "vanilla,oprm"


def test_plan_interleaves_modes_and_measures_memory_per_mode():
    specs = bench.plan(_args(lengths="300,600", threads="1,2"))
    assert [(s["kind"], s["length"], s["threads"], s.get("mode")) for s in specs[:3]] == [
        ("timing", 300, 1, None), ("memory", 300, 1, "vanilla"), ("memory", 300, 1, "oprm")]
    assert len(specs) == 2 * 2 * 3 and specs[0]["modes"] == ["vanilla", "oprm"]
    assert all(s["kind"] == "timing" for s in bench.plan(_args(no_memory=True)))
    for bad in (dict(modes="vanilla,fast"), dict(lengths="0"), dict(lengths="1k"), dict(chunk_size=0)):
        with pytest.raises(OPRMUsageError):
            bench.plan(_args(**bad))


@pytest.fixture(scope="module")
def cells():
    specs = bench.plan(_args())
    return [bench.run_timing(specs[0]), bench.run_memory(specs[1]), bench.run_memory(specs[2])]


def test_rows_count_tokens_against_the_floor(cells):
    rows = {r["mode"]: r for r in bench.rows_from_cells(cells)}
    o, v = rows["oprm"], rows["vanilla"]
    b = 3  # ceil(300 / 128) chunks
    assert o["num_chunks"] == b and v["num_chunks"] == 1
    assert o["floor"] == 300 + b * 4 + 5 and v["floor"] == 300 + 4 + 5
    assert v["prefill_tokens"] == v["floor"]
    # the last chunk is the final 128 tokens (it overlaps its neighbour): b*L = 384 context tokens, not 300
    assert o["prefill_tokens"] == 5 + b * (128 + 4) and o["floor_ratio"] == pytest.approx(401 / 317)
    for r in (o, v):
        assert r["ttft_s"] > 0 and r["decode_tok_s"] > 0 and r["peak_rss_mb"] >= r["rss_loaded_mb"] > 0
        assert r["threads"] == 1 and r["repeats"] == 1


def test_timing_cell_alternates_modes(cells):
    assert [r["mode"] for r in cells[0]["runs"]] == ["vanilla", "oprm"]
    assert cells[0]["torch_threads"] == 1


def test_outputs(cells, tmp_path):
    meta = bench.meta(_args())
    rows, files = bench.write_outputs(tmp_path, meta, cells, plots=True)
    assert [f.name for f in files] == ["bench.json", "bench.md", "bench_time.png", "bench_memory.png"]
    assert {r["mode"] for r in rows} == {"vanilla", "oprm"}
    table = (tmp_path / "bench.md").read_text()
    assert "| tiny-mamba2 | oprm | 300 | 1 | 1 |" in table and "OPRM/vanilla TTFT" in table
    assert (tmp_path / "bench_time.png").stat().st_size > 0 and (tmp_path / "bench_memory.png").stat().st_size > 0
    comparison = bench.compare(rows)[0]
    assert comparison["length"] == 300 and comparison["ttft_ratio"] > 0


def test_cli_bench_end_to_end_in_subprocesses(tmp_path, capsys):
    from oprm.cli import main

    args = ["bench", "--model", "tiny-rwkv", "--lengths", "64", "--chunk-size", "32", "--repeats", "1",
            "--threads", "1", "--max-new-tokens", "2", "--prefix-tokens", "2", "--suffix-tokens", "2",
            "--no-memory", "--output-path", str(tmp_path)]
    assert main(args) == 0
    assert "| tiny-rwkv | oprm | 64 |" in capsys.readouterr().out
    assert (tmp_path / "bench.json").exists()


def test_bad_model_fails_in_one_line():
    with pytest.raises(OPRMUsageError):
        bench.load_model("./no/such/model")


def test_ints_parses_scientific_lengths():
    assert bench.parse_ints("1024,1e6", "--lengths") == [1024, 1000000]


def test_bench_loads_a_model_folder(tmp_path):
    from tiny_models import tiny_model

    tiny_model("mamba2").save_pretrained(tmp_path / "m")
    model = bench.load_model(str(tmp_path / "m"))
    assert model.config.model_type == "mamba2" and model.generation_config.eos_token_id is None


def test_engine_flags_come_from_the_config():
    from oprm.config import OPRMConfig

    args = build_parser().parse_args(["bench", "--lengths", "300"])
    spec = bench.plan(args)[0]
    assert spec["chunk_size"] == OPRMConfig().chunk_size == 2000  # one default everywhere
    assert spec["threads"] is None  # resolved per model family inside the cell
    args = _args(overlap=16, shared_prefix=False)
    spec = bench.plan(args)[0]
    assert spec["engine"]["overlap"] == 16 and spec["engine"]["shared_prefix"] is False
    assert spec["engine"]["idk"] is None and spec["generation"] == {"max_new_tokens": 3}
    with pytest.raises(OPRMUsageError, match="overlap"):
        bench.plan(_args(overlap=128))  # not below the chunk size
    with pytest.raises(OPRMUsageError, match="threads"):
        bench.plan(_args(threads="0"))


def test_mamba_kernels_both_gives_separate_rows(cells):
    specs = bench.plan(_args(mamba_kernels="both", no_memory=True))
    assert [s["mamba_kernels"] for s in specs] == ["auto", "off"]
    off = dict(cells[0], mamba_kernels="off")
    rows = bench.rows_from_cells([cells[0], off])
    assert sorted({r["model"] for r in rows}) == ["tiny-mamba2", "tiny-mamba2 (PyTorch scan)"]


def test_falcon_mamba_7b_widths_spec():
    import torch
    import transformers as tf

    config = bench.specs.random_config("falcon-mamba-7b-2l")
    assert (config.hidden_size, config.intermediate_size, config.state_size, config.num_hidden_layers) == (
        4096, 8192, 16, 2)
    with torch.device("meta"):  # the real size, without allocating it
        model = tf.AutoModelForCausalLM.from_config(config)
    per_layer = sum(p.numel() for p in model.backbone.layers[0].parameters())
    assert 100e6 < per_layer < 110e6  # ~105M parameters per Falcon-Mamba-7B layer


def test_scan_path_is_reported_for_mamba1_models():
    from oprm.bench.cells import scan_path

    assert scan_path(bench.load_model("tiny-falcon-mamba")) == "pytorch"  # CPU: always the PyTorch scan
    assert scan_path(bench.load_model("tiny-mamba2")) is None


def test_bench_device_cuda_without_gpu_is_one_line(capsys):
    import torch

    from oprm.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["bench", "--device", "cuda", "--lengths", "64", "--no-memory"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not available" in err


def test_rounds_alternate_thread_order_and_pool_the_runs(cells):
    specs = bench.plan(_args(threads="1,2", rounds=3))
    timing = [(s["round"], s["threads"]) for s in specs if s["kind"] == "timing"]
    assert timing == [(0, 1), (0, 2), (1, 2), (1, 1), (2, 1), (2, 2)]
    assert {s["threads"] for s in specs if s["kind"] == "memory"} == {1, 2} and len(specs) == 6 + 4
    second = dict(cells[0], round=1)
    (vanilla,) = [r for r in bench.rows_from_cells([cells[0], second]) if r["mode"] == "vanilla"]
    assert vanilla["repeats"] == 2  # both rounds' runs in one median


def test_document_mode_answers_from_the_encoded_context(tmp_path):
    specs = bench.plan(_args(modes="oprm,document"))
    timing = bench.run_timing(specs[0])
    memory = bench.run_memory(next(s for s in specs if s.get("mode") == "document"))
    rows = {r["mode"]: r for r in bench.rows_from_cells([timing, memory])}
    d, o = rows["document"], rows["oprm"]
    assert d["floor"] == 3 * 4 and d["prefill_tokens"] == d["floor"]  # only S per chunk: b*|S| tokens
    assert d["document"]["chunks"] == 3 and d["document"]["state_bytes"] > 0 and d["document"]["file_bytes"] > 0
    assert d["above_loaded_mb"] is not None and o["prefill_tokens"] > d["prefill_tokens"]
    _, files = bench.write_outputs(tmp_path, bench.meta(_args(modes="oprm,document")), [timing, memory])
    assert "| state KB per chunk |" in (tmp_path / "bench.md").read_text()


def test_speed_pairs_run_the_same_work_on_a_tiny_model():
    """python -m oprm.bench.speed's in-process pairs: the plain forwards and OPRM's prefill see the same context
    tokens, and the engine's decode makes generate's tokens (eos off). No timing is asserted."""
    from oprm.bench.speed import compare_decode, compare_prefill
    from oprm.engine import OPRM

    model = bench.load_model("tiny-llama", dtype="float32")
    engine = OPRM(model, None)
    context = list(range(10, 10 + 64))
    prefill = compare_prefill(model, engine, [4, 5, 6], context, [7, 8], 16, repeats=1)
    assert prefill["context_tokens"] == 64 and prefill["chunk_size"] == 16
    assert {"context_cpu_tok_s", "prompts_cpu_tok_s", "oprm_cpu_tok_s", "oprm_over_prompts_cpu"} <= set(prefill)
    decode = compare_decode(model, engine, context[:20], 4, repeats=1)
    assert decode["same_tokens"] and decode["new_tokens"] == 4 and decode["generate_cpu_tok_s"] > 0


def test_speed_table_holds_every_figure():
    from oprm.bench.speed import markdown

    pair = {"context_cpu_tok_s": 100.0, "prompts_cpu_tok_s": 95.0, "oprm_cpu_tok_s": 96.0, "chunk_size": 16,
            "oprm_over_prompts_cpu": 1.01, "oprm_over_context_cpu": 0.96, "oprm_over_prompts_wall": 1.0,
            "oprm_over_context_wall": 0.9}
    dec = {"generate_cpu_tok_s": 10.0, "oprm_cpu_tok_s": 11.0, "oprm_over_generate_cpu": 1.1,
           "oprm_over_generate_wall": 1.0, "same_tokens": True}
    report = {"document": {"tokens": 16384},
              "end_to_end": {"runs": [{"cpu": 60.0, "wall": 70.0, "correct": True}], "floor": "plain",
                             "floor_runs": [{"cpu": 45.0, "wall": 50.0}], "cpu_ratio": 1.33, "wall_ratio": 1.4},
              "startup": {"phases": {"imports": {"cpu": 5.0, "wall": 6.0}}, "process_cpu": 6.5},
              "prefill": {"smollm2_bf16": pair, "smollm2_fp32": {"context_cpu_tok_s": 60.0}, "mamba2_fp32": pair},
              "decode": {"smollm2_bf16": dec}}
    table = markdown(report)
    assert "1.33x" in table and "1/1 correct" in table and "1.67x" in table and "1.1x" in table


def test_ttft_on_text_runs_the_shipped_model_on_a_few_chunks():
    """The TTFT pair on text: OPRM from scratch (defaults, no cache) runs a few of the chunks and answers; vanilla
    runs every token. No timing is asserted."""
    from oprm.bench.speed import markdown
    from oprm.bench.ttft import ttft_on_text

    t = ttft_on_text("oprm-ar-mamba2", 1500, seed=3, repeats=1)
    assert t["context_tokens"] >= 1500 and t["chunks"] > 20
    oprm, vanilla = t["runs"]["oprm"][0], t["runs"]["vanilla"][0]
    assert 1 <= oprm["chunks_run"] < t["chunks"] / 4 and oprm["tokens_processed"] < vanilla["tokens_processed"] / 4
    assert t["answer"] in t["oprm_answer"]
    assert f"**{t['cpu_ratio']}x**" in markdown({"ttft": t})
