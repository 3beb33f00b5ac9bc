"""The shipped model's tokenizer and Mamba2, built from scratch (or grown from a trained one), and how it is saved.

A stock ``transformers`` ``Mamba2ForCausalLM`` plus a byte-level BPE tokenizer trained here on generated AR text.
"""
from __future__ import annotations

import random
from pathlib import Path

from ..config import IDK_WORD
from ..models import SHIPPED_DIR
from ..synthetic import AR_TEMPLATE, make_ar_episode
from ..synthetic import words as W
from ..synthetic.ar import AR_PROMPT_FORMAT
from .chat import BOS, CHAT_TEMPLATE, IM_END, IM_START, PAD, render_chat

SHIPPED_MODEL = SHIPPED_DIR / "oprm-ar-mamba2"  # where training writes and the measurement reads by default


def build_tokenizer(seed: int = 0, vocab_size: int = 4096, n_docs: int = 6000):
    """Byte-level BPE with single digits, trained on generated AR text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(seed + 17)
    texts = []
    for i in range(n_docs):
        ep = make_ar_episode(rng, rng.randint(1, 12), filler_ratio=rng.choice([0.5, 1.0, 2.0]),
                             present=rng.random() < 0.6, slice_edges=rng.random() < 0.5)
        texts.append(render_chat(ep.user_message(AR_TEMPLATE), ep.answer_prefix + ep.answer))
    vocab_words = (W.COLOURS + W.ADJECTIVES + W.ANIMALS + W.OBJECTS + W.FIRST_NAMES + W.SURNAMES
                   + W.ATTRIBUTES + W.PEOPLE + W.SETTINGS + W.INTRANSITIVE + W.TRANSITIVE + W.ADVERBS
                   + W.FEELINGS)
    for _ in range(50):  # every word with and without a leading space, capitalised too
        texts.append(" ".join(vocab_words) + " " + " ".join(w.capitalize() for w in vocab_words))
        # the IDK word where prompts and answers put it, so it and " " + it become single tokens
        texts.append(f'{IDK_WORD}\n {IDK_WORD} answer {IDK_WORD}. Return "{IDK_WORD}". The answer is {IDK_WORD}')

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = [PAD, BOS, IM_START, IM_END]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=IM_END, pad_token=PAD,
                                   unk_token=None, additional_special_tokens=[IM_START],
                                   model_max_length=1 << 20, padding_side="left")
    fast.chat_template = CHAT_TEMPLATE
    for w in (IDK_WORD, " " + IDK_WORD):
        assert len(fast.encode(w, add_special_tokens=False)) == 1, f"{w!r} is not a single token"
    return fast


def build_model(tok, hidden: int = 128, layers: int = 2, state: int = 64, head_dim: int = 64,
                chunk_size: int = 64, seed: int = 0, conv_kernel: int = 4, groups: int = 1):
    import torch
    from transformers import Mamba2Config, Mamba2ForCausalLM

    torch.manual_seed(seed)
    cfg = Mamba2Config(
        vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, state_size=state,
        expand=2, head_dim=head_dim, num_heads=2 * hidden // head_dim, n_groups=groups, conv_kernel=conv_kernel,
        chunk_size=chunk_size, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, tie_word_embeddings=False, use_cache=True,
        rescale_prenorm_residual=False,
    )
    return Mamba2ForCausalLM(cfg)


def grow_layers(model, layers: int, seed: int = 0):
    """A deeper copy of ``model``: its layers keep their weights and are spread out evenly, the new layers in
    between start as identities (output projection zeroed), so the grown model computes the same function."""
    import torch
    from transformers import Mamba2ForCausalLM

    old_n = model.config.num_hidden_layers
    cfg = model.config.__class__.from_dict({**model.config.to_dict(), "num_hidden_layers": layers})
    torch.manual_seed(seed)
    new = Mamba2ForCausalLM(cfg)
    place = {i: round(i * layers / old_n) for i in range(old_n)}   # old layer i -> new position
    sd = new.state_dict()
    for k, v in model.state_dict().items():
        if k.startswith("backbone.layers."):
            parts = k.split(".")
            parts[2] = str(place[int(parts[2])])
            k = ".".join(parts)
        sd[k] = v
    for j in set(range(layers)) - set(place.values()):
        sd[f"backbone.layers.{j}.mixer.out_proj.weight"].zero_()
    new.load_state_dict(sd)
    return new


def grow_conv(model, conv_kernel: int):
    """A copy of ``model`` whose causal convolutions are ``conv_kernel`` wide: the trained taps keep the most recent
    positions, the new (older) taps start at zero, so the grown model computes the same function."""
    import torch
    from transformers import Mamba2ForCausalLM

    cfg = model.config.__class__.from_dict({**model.config.to_dict(), "conv_kernel": conv_kernel})
    new = Mamba2ForCausalLM(cfg)
    sd = model.state_dict()
    for k, v in new.state_dict().items():
        if k.endswith("conv1d.weight"):
            w = torch.zeros_like(v)
            w[..., conv_kernel - sd[k].shape[-1]:] = sd[k]
            sd[k] = w
    new.load_state_dict(sd)
    return new


def save(model, tok, out: Path):
    from transformers import GenerationConfig

    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    AR_PROMPT_FORMAT.save(out)  # `oprm ask` / `oprm serve` then ask in the format the model was trained on
    GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                     do_sample=False, max_new_tokens=8).save_pretrained(out)

