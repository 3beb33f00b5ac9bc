"""Tiny random-weight models of every supported architecture, for exactness tests (no network, no files).

fp32, untied embeddings, hidden 32-64, 2-4 layers. Zero biases and the pad-embedding row are re-randomised, as in
pretrained models, because zeros can hide state or padding leaks.

The output embedding is rescaled so first-token logits have a standard deviation of about ``LOGIT_STD``: at the default
init most of these models give a near-uniform first token (entropy within 1e-6 of log V), so which chunk has the
lowest entropy was decided by float rounding and changed with the CPU kernel set (``ATEN_CPU_CAPABILITY``).

``OPRM_TEST_DEVICE`` (default ``cpu``) moves every tiny model to that device, so the same suite runs on a GPU.
"""

from __future__ import annotations

import os

import torch
import transformers as tf

VOCAB = 96
LOGIT_STD = 2.0  # entropies ~1.3-2.8 nats: chunk margins >= 2e-5 (vs ~1e-6 rounding), logits still far from saturating
DEVICE = os.environ.get("OPRM_TEST_DEVICE", "cpu")

# model_type -> (config class, kwargs)
CONFIGS = {
    "mamba": ("MambaConfig", dict(hidden_size=32, num_hidden_layers=2, state_size=8, expand=2, conv_kernel=4)),
    "falcon_mamba": ("FalconMambaConfig", dict(hidden_size=32, num_hidden_layers=2, state_size=8, expand=2,
                                               conv_kernel=4)),
    "mamba2": ("Mamba2Config", dict(hidden_size=32, num_hidden_layers=2, state_size=8, expand=2, head_dim=8,
                                    num_heads=8, n_groups=1, conv_kernel=4, chunk_size=8)),
    "zamba": ("ZambaConfig", dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                                  attention_hidden_size=64, intermediate_size=64, mamba_d_state=8, mamba_expand=2,
                                  mamba_dt_rank=4, n_mamba_heads=2, attn_layer_period=2, attn_layer_offset=1)),
    "zamba2": ("Zamba2Config", dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                    num_key_value_heads=4, intermediate_size=64, mamba_d_state=8, mamba_expand=2,
                                    mamba_headdim=8, mamba_ngroups=1, n_mamba_heads=8, chunk_size=8,
                                    layers_block_type=["mamba", "hybrid", "mamba", "hybrid"], use_mem_rope=True)),
    "bamba": ("BambaConfig", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  intermediate_size=64, mamba_d_state=8, mamba_expand=2, mamba_d_head=8,
                                  mamba_n_heads=8, mamba_n_groups=1, mamba_chunk_size=8, attn_layer_indices=[1])),
    "jamba": ("JambaConfig", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  intermediate_size=64, mamba_d_state=8, mamba_expand=2, mamba_dt_rank=4,
                                  attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
                                  expert_layer_offset=1, num_experts=2, num_experts_per_tok=1,
                                  use_mamba_kernels=False)),
    "granitemoehybrid": ("GraniteMoeHybridConfig", dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        mamba_d_state=8, mamba_expand=2, mamba_d_head=8, mamba_n_heads=8, mamba_n_groups=1, mamba_chunk_size=8,
        layer_types=["mamba", "attention"], num_local_experts=2, num_experts_per_tok=1, shared_intermediate_size=64)),
    "falcon_h1": ("FalconH1Config", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, intermediate_size=64, mamba_d_state=8,
                                         mamba_expand=2, mamba_d_head=8, mamba_n_heads=8, mamba_n_groups=1,
                                         mamba_chunk_size=8, head_dim=8, mamba_d_ssm=64)),
    "nemotron_h": ("NemotronHConfig", dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                           num_key_value_heads=2, intermediate_size=64, ssm_state_size=8,
                                           mamba_num_heads=8, mamba_head_dim=8, n_groups=1, chunk_size=8,
                                           head_dim=8, hybrid_override_pattern="M*-")),
    "lfm2": ("Lfm2Config", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                intermediate_size=64, layer_types=["conv", "full_attention"], conv_L_cache=3)),
    "qwen3_next": ("Qwen3NextConfig", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                           num_key_value_heads=2, intermediate_size=64, head_dim=8,
                                           linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8,
                                           linear_value_head_dim=8, linear_conv_kernel_dim=4,
                                           layer_types=["linear_attention", "full_attention"], num_experts=2,
                                           num_experts_per_tok=1, moe_intermediate_size=32,
                                           shared_expert_intermediate_size=32, decoder_sparse_step=1)),
    "qwen3_5_text": ("Qwen3_5TextConfig", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                               num_key_value_heads=2, intermediate_size=64, head_dim=8,
                                               linear_num_key_heads=2, linear_num_value_heads=4,
                                               linear_key_head_dim=8, linear_value_head_dim=8,
                                               linear_conv_kernel_dim=4,
                                               layer_types=["linear_attention", "full_attention"])),
    "gemma": ("GemmaConfig", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  intermediate_size=64, head_dim=8)),
    # Gemma-3's local layers keep a sliding window shorter than the test prompts (a DynamicSlidingWindowLayer)
    "gemma3_text": ("Gemma3TextConfig", dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                             num_key_value_heads=2, intermediate_size=64, head_dim=8, sliding_window=6,
                                             layer_types=["sliding_attention", "sliding_attention", "full_attention"])),
    "llama": ("LlamaConfig", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  intermediate_size=64)),
    "rwkv": ("RwkvConfig", dict(hidden_size=32, num_hidden_layers=2, attention_hidden_size=32,
                                intermediate_size=64, context_length=1024)),
    "recurrent_gemma": ("RecurrentGemmaConfig", dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                                     num_key_value_heads=2, intermediate_size=64, lru_width=32,
                                                     attention_window_size=16, conv1d_width=4,
                                                     block_types=["recurrent", "recurrent", "attention"],
                                                     head_dim=8, final_w_init_variance_scale=1.0)),
    "xlstm": ("xLSTMConfig", dict(hidden_size=64, embedding_dim=64, num_hidden_layers=2, num_blocks=2, num_heads=2,
                                  qk_dim_factor=1.0, v_dim_factor=1.0, autocast_kernel_dtype="float32",
                                  inference_state_dtype="float32", chunk_size=8, mode="inference")),
}


def tiny_model(model_type: str, seed: int = 0, vocab_size: int = VOCAB):
    cls_name, kwargs = CONFIGS[model_type]
    config = getattr(tf, cls_name)(vocab_size=vocab_size, tie_word_embeddings=False, pad_token_id=0, bos_token_id=1,
                                   eos_token_id=2, **kwargs)
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") and p.abs().max() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        emb = model.get_input_embeddings().weight
        emb[0].copy_(torch.randn(emb.shape[1], generator=g) * emb.std())
        probe = torch.randint(3, VOCAB, (4, 24), generator=g)
        std = float(model(probe).logits[:, -1].std())
        # two significant digits: the same weights whatever kernels computed the probe
        model.get_output_embeddings().weight.mul_(float(f"{LOGIT_STD / std:.2g}"))
    model.generation_config.eos_token_id = None  # decode a fixed number of tokens in exactness tests
    model.generation_config.pad_token_id = 0
    return model.to(DEVICE)


def reference_generate(model, prompt: list[int], max_new_tokens: int):
    """``model.generate`` on one prompt alone: greedy tokens and the raw logits of each step."""
    device = next(model.parameters()).device
    out = model.generate(torch.tensor([prompt], device=device), max_new_tokens=max_new_tokens, do_sample=False,
                         output_logits=True, return_dict_in_generate=True, min_new_tokens=max_new_tokens,
                         attention_mask=torch.ones(1, len(prompt), dtype=torch.long, device=device))
    return out.sequences[0, len(prompt):].tolist(), [l[0].float().cpu() for l in out.logits]
