"""One bench cell, in its own process: load the model, time the modes interleaved, or measure one mode's memory.

Run as ``python -m oprm.bench.cells --cell SPEC_JSON``; the result is printed as one line after ``RESULT_MARK``.
"""

from __future__ import annotations

import json
import os
import sys
import time

from .specs import load_model, make_input

__all__ = ["RESULT_MARK", "run_timing", "run_memory", "scan_path"]

RESULT_MARK = "OPRM_BENCH_RESULT "


def _reset_peak() -> None:
    """Reset this process's RSS high-water mark (Linux: writing 5 to clear_refs)."""
    import gc

    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class _FirstToken:
    """A streamer that notes when the first answer token arrives (its first ``put`` is the prompt)."""

    def __init__(self):
        self.puts, self.wall, self.cpu = 0, None, None

    def put(self, value):
        self.puts += 1
        if self.puts == 2:
            self.wall, self.cpu = time.perf_counter(), time.process_time()

    def end(self):
        pass


def scan_path(model) -> str | None:
    """Which selective scan a Mamba-1 family model runs here: ``mamba_ssm`` (CUDA kernel) or ``pytorch``."""
    from oprm.adapters.mamba_scan import supports_stateful_scan
    from oprm.adapters.selective_scan import kernel_available

    import torch

    if not isinstance(model, torch.nn.Module) or not supports_stateful_scan(model):
        return None
    return "mamba_ssm" if model.device.type == "cuda" and kernel_available() else "pytorch"


def _setup(spec: dict):
    from oprm.config import OPRMConfig
    from oprm.engine import OPRM
    from oprm.runtime import set_threads

    set_threads(spec["threads"])
    model = load_model(spec["model"], spec.get("dtype", "auto"), spec.get("device"))
    spec["threads"] = set_threads(spec["threads"], model)  # None: the family's default, recorded
    # every timed call prefills from scratch: no document cache
    engine = OPRM(model, None, config=OPRMConfig(**{**spec["engine"], "document_cache_bytes": 0}))
    vocab = model.config.vocab_size
    prefix, context, suffix = make_input(vocab, spec["length"], spec["prefix_tokens"], spec["suffix_tokens"])
    return model, engine, (prefix, context, suffix)


def _call(engine, spec, mode, prefix, context, suffix, document=None) -> dict:
    """One timed question; ``mode="document"`` asks it of an encoded ``document`` (only S is prefilled)."""
    import torch

    cuda = engine.adapter.device.type == "cuda"
    first = _FirstToken()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    if mode == "document":
        result = engine.generate(document=document, suffix_ids=suffix, streamer=first, **spec["generation"])
    else:
        result = engine.generate(prefix_ids=prefix, context_ids=context, suffix_ids=suffix, mode=mode,
                                 streamer=first, **spec["generation"])
    if cuda:
        torch.cuda.synchronize()
    t = result.timings
    return {"mode": mode, "ttft_s": first.wall - wall0, "ttft_cpu_s": first.cpu - cpu0,
            "cpu_s": time.process_time() - cpu0, "prefill_s": t["prefill"], "selection_s": t["selection"],
            "decode_s": t["decode"], "total_s": t["total"], "generated": len(result.token_ids),
            "tokens_processed": result.tokens_processed, "lookahead_tokens": result.lookahead_tokens,
            "num_chunks": len(result.chunks) if mode != "vanilla" else 1}


def _encode(engine, prefix, context, folder: str) -> tuple[object, dict]:
    """The context encoded once, saved and loaded back: the document mode's question reads its states from disk.
    Returns (loaded document, encode seconds, state bytes, file bytes, load seconds)."""
    from oprm.document import EncodedDocument

    t = time.perf_counter()
    doc = engine.encode(prefix_ids=prefix, context_ids=context)
    encode_s = time.perf_counter() - t
    state_bytes = doc.nbytes
    path = doc.save(os.path.join(folder, "doc.oprm"))
    del doc
    t = time.perf_counter()
    loaded = EncodedDocument.load(path)
    return loaded, {"encode_s": encode_s, "state_bytes": state_bytes, "file_bytes": os.path.getsize(path),
                    "load_s": time.perf_counter() - t, "chunks": len(loaded.chunks)}


def _warm_context(spec, context):
    return context[: min(len(context), 2 * spec["chunk_size"])]


def run_timing(spec: dict) -> dict:
    """Time every mode in one process, interleaved (A B, B A, A B, ...) so load drift hits all modes alike."""
    import tempfile

    import torch

    from oprm.runtime import family

    model, engine, (prefix, context, suffix) = _setup(spec)
    with tempfile.TemporaryDirectory() as folder:
        document, encoding = _encode(engine, prefix, context, folder) if "document" in spec["modes"] else (None, None)
        for mode in spec["modes"]:
            if mode != "document":
                _call(engine, spec, mode, prefix, _warm_context(spec, context), suffix)
        runs = []
        for r in range(spec["repeats"]):
            for mode in (spec["modes"] if r % 2 == 0 else spec["modes"][::-1]):
                runs.append(_call(engine, spec, mode, prefix, context, suffix, document))
    return dict(spec, kind="timing", runs=runs, torch_threads=torch.get_num_threads(), scan=scan_path(model),
                family=family(model), params=sum(p.numel() for p in model.parameters()), document=encoding)


def run_memory(spec: dict) -> dict:
    """Peak memory of one mode in a fresh process: RSS after loading, then the high-water mark of one call."""
    import resource

    import torch

    import tempfile

    model, engine, (prefix, context, suffix) = _setup(spec)
    cuda = engine.adapter.device.type == "cuda"
    with tempfile.TemporaryDirectory() as folder:
        document = None
        if spec["mode"] == "document":  # encoded first; then the peak is reset to measure the question alone
            document, _ = _encode(engine, prefix, context, folder)
            _reset_peak()
        rss_loaded = _rss_kb("VmRSS")
        _call(engine, spec, spec["mode"], prefix, _warm_context(spec, context), suffix, document)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        run = _call(engine, spec, spec["mode"], prefix, context, suffix, document)
    # a high-water mark is never below an earlier reading (the two counters are sampled differently by the kernel)
    peak_kb = max(_rss_kb("VmHWM"), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, rss_loaded)
    out = dict(spec, kind="memory", run=run, rss_loaded_mb=rss_loaded / 1024, peak_rss_mb=peak_kb / 1024,
               weights_mb=sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20,
               scan=scan_path(model))
    if cuda:
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main(argv: list[str]) -> int:
    spec = json.loads(argv[argv.index("--cell") + 1])
    if spec.get("mamba_kernels") == "off":  # before any scan runs: the kernel lookup is cached per process
        os.environ["OPRM_MAMBA_KERNELS"] = "0"
    cell = run_timing(spec) if spec["kind"] == "timing" else run_memory(spec)
    print(RESULT_MARK + json.dumps(cell), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
