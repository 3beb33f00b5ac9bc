"""Decode steps of several requests batched into one forward, as ``oprm serve``'s scheduler runs them
(``serve/batching.py``), against one forward per request. Prints one JSON object.

A randomly initialised model of a realistic size per state layout (no hybrid checkpoint is available offline; a step's
cost depends on the shapes, not the weights): ``llama`` (attention, SmolLM2-135M's shape), ``mamba2`` (recurrent),
``gemma3`` (Gemma-3-270M's shape: sliding-window and global attention layers), ``zamba2`` / ``jamba`` /
``bamba`` (hybrids), ``xlstm`` (mLSTM states, stacked by its adapter). ``--requests`` prompts of different lengths are prefilled alone, then
each decodes ``--steps`` greedy tokens, every round's steps run by ``StepBatcher`` with batching on (``--mode
batched``) or off (``--mode alone``). Both modes print the tokens' digest: equal digests, equal answers.

    python benchmarks/serve_steps.py --arch zamba2 --mode batched
    python benchmarks/serve_steps.py --arch zamba2 --mode alone
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "src"))

from oprm.adapters import get_adapter  # noqa: E402
from oprm.serve.batching import StepBatcher  # noqa: E402

ARCHS = {  # ~100M parameters each; the hybrids have attention in a few layers, as the real models
    "llama": ("LlamaConfig", dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                                  intermediate_size=1536)),
    "gemma3": ("Gemma3TextConfig", dict(hidden_size=640, num_hidden_layers=18, num_attention_heads=4,
                                        num_key_value_heads=1, head_dim=256, intermediate_size=2048,
                                        sliding_window=512, vocab_size=262144)),  # Gemma-3-270M's shape
    "mamba2": ("Mamba2Config", dict(hidden_size=768, num_hidden_layers=24, state_size=128, expand=2, head_dim=64,
                                    num_heads=24, n_groups=1, conv_kernel=4, chunk_size=256)),
    "zamba2": ("Zamba2Config", dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                    num_key_value_heads=12, intermediate_size=2048, mamba_d_state=64, mamba_expand=2,
                                    mamba_headdim=64, mamba_ngroups=1, n_mamba_heads=24, chunk_size=256,
                                    layers_block_type=["mamba", "mamba", "hybrid"] * 4)),
    "jamba": ("JambaConfig", dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                  num_key_value_heads=4, intermediate_size=2048, mamba_d_state=16, mamba_expand=2,
                                  mamba_dt_rank=48, attn_layer_period=4, attn_layer_offset=2, expert_layer_period=2,
                                  expert_layer_offset=1, num_experts=4, num_experts_per_tok=2,
                                  use_mamba_kernels=False)),
    "bamba": ("BambaConfig", dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                  num_key_value_heads=4, intermediate_size=2048, mamba_d_state=64, mamba_expand=2,
                                  mamba_d_head=64, mamba_n_heads=24, mamba_n_groups=1, mamba_chunk_size=256,
                                  attn_layer_indices=[3, 7, 11])),
    "xlstm": ("xLSTMConfig", dict(hidden_size=768, embedding_dim=768, num_hidden_layers=12, num_blocks=12, num_heads=4,
                                  mode="inference", autocast_kernel_dtype="float32",
                                  inference_state_dtype="float32")),  # mLSTM states: no length
}


def build(arch: str):
    import transformers as tf  # noqa: PLC0415

    cls, kwargs = ARCHS[arch]
    config = getattr(tf, cls)(**{"vocab_size": 32000, "tie_word_embeddings": True, "pad_token_id": 0, **kwargs})
    torch.manual_seed(0)
    return tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


@torch.no_grad()
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=sorted(ARCHS), default="zamba2")
    p.add_argument("--mode", choices=("batched", "alone"), default="batched")
    p.add_argument("--requests", type=int, default=8)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    adapter = get_adapter(build(a.arch))
    g = torch.Generator().manual_seed(1)
    lengths = [int(x) for x in torch.randint(128, 1024, (a.requests,), generator=g)]
    current = []
    for n in lengths:
        logits, state = adapter.prefill(torch.randint(3, 32000, (1, n), generator=g))
        current.append([logits[:, -1], state, n])
    batcher = StepBatcher(adapter)
    batcher.enabled = a.mode == "batched"
    tokens: list[list[int]] = [[] for _ in current]
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(a.steps):
        items = []
        for i, (logits, state, pos) in enumerate(current):
            token = int(logits.argmax(-1))
            tokens[i].append(token)
            items.append((torch.tensor([[token]]), state, pos))
        for c, (logits, state) in zip(current, batcher.run(items)):
            c[0], c[1], c[2] = logits, state, c[2] + 1
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(json.dumps({"arch": a.arch, "mode": a.mode, "requests": a.requests, "steps": a.steps,
                      "prompt_lengths": lengths, "threads": a.threads, "decode_cpu_s": round(cpu, 3),
                      "decode_wall_s": round(wall, 3), "tokens_per_cpu_s": round(a.requests * a.steps / cpu, 1),
                      "batched_forwards": batcher.batched_steps,
                      "tokens_digest": hashlib.sha256(json.dumps(tokens).encode()).hexdigest()[:16]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
