"""Peak RSS and wall time of one long Mamba prefill: transformers' own path vs ``stateful_mamba_scan``.

Each variant runs in a fresh subprocess (so ``ru_maxrss`` is that variant's own peak), on 1 torch thread, with a
random-weight float32 ``MambaForCausalLM`` (hidden 256, 4 layers, d_state 16 by default). Prints one JSON object.

    .venv/bin/python benchmarks/mamba_scan_memory.py [--tokens 8192] [--block 256]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, os.pardir, "src")


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(args) -> None:
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, SRC)
    from transformers import MambaConfig, MambaForCausalLM

    from oprm.adapters.mamba_scan import stateful_mamba_scan

    torch.manual_seed(0)
    cfg = MambaConfig(vocab_size=1000, hidden_size=args.hidden, state_size=args.d_state,
                      num_hidden_layers=args.layers, tie_word_embeddings=False)
    model = MambaForCausalLM(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, args.tokens), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # warm-up on a short input (allocator, lazy imports), outside the measurement
        with stateful_mamba_scan(model, block_size=args.block) if args.variant == "patched" else _null():
            model(input_ids=ids[:, :64], use_cache=True, logits_to_keep=1)
    base = _rss_mib()
    t0 = time.perf_counter()
    with torch.no_grad():
        if args.variant == "patched":
            with stateful_mamba_scan(model, block_size=args.block):
                out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        else:
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    torch.save({"logits": out.logits[:, -1].float(),
                "ssm": [l.recurrent_states[0] for l in out.cache.layers]}, args.out)
    print(json.dumps({"seconds": round(seconds, 3), "rss_before_mib": round(base, 1), "peak_rss_mib": round(peak, 1),
                      "peak_minus_before_mib": round(peak - base, 1)}))


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--block", type=int, default=256)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--d-state", dest="d_state", type=int, default=16)
    p.add_argument("--variant", choices=["unpatched", "patched"], help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        child(args)
        return

    import torch

    results = {"config": {"tokens": args.tokens, "hidden": args.hidden, "layers": args.layers,
                          "d_state": args.d_state, "intermediate": 2 * args.hidden, "block": args.block,
                          "dtype": "float32", "threads": 1, "torch": torch.__version__}}
    saved = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ("unpatched", "patched"):
            out = os.path.join(tmp, variant + ".pt")
            cmd = [sys.executable, os.path.abspath(__file__), "--variant", variant, "--out", out,
                   "--tokens", str(args.tokens), "--block", str(args.block), "--hidden", str(args.hidden),
                   "--layers", str(args.layers), "--d-state", str(args.d_state)]
            env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
            results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
            saved[variant] = torch.load(out)
    a, b = saved["unpatched"], saved["patched"]
    results["max_abs_diff_last_logits"] = (a["logits"] - b["logits"]).abs().max().item()
    results["max_abs_diff_ssm_state"] = max((x - y).abs().max().item() for x, y in zip(a["ssm"], b["ssm"]))
    u, q = results["unpatched"], results["patched"]
    results["speedup"] = round(u["seconds"] / q["seconds"], 2)
    results["transient_ratio"] = round(u["peak_minus_before_mib"] / max(q["peak_minus_before_mib"], 1e-9), 1)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
