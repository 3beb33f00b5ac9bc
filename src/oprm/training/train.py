"""Train the small recurrent model that ships with oprm (``src/oprm/models/oprm-ar-mamba2``).

A stock ``transformers`` ``Mamba2ForCausalLM`` plus a BPE tokenizer trained here, both learned from the
synthetic natural-language associative-recall task of :mod:`oprm.synthetic.ar` (with "Error" = IDK answers).
The model is trained on documents of at most ``--max-ctx-tokens`` context tokens, so that much longer
documents *overflow* its recurrent state: the setting OPRM is designed for.

    oprm train-ar --out src/oprm/models/oprm-ar-mamba2          # (or: oprm train-ar ...)

Fixed seeds; CPU, one torch thread. Loss is on the answer tokens (+ <|im_end|>) only. With no training options
the shipped recipe runs (:mod:`oprm.training.recipe`).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

from .data import OPRM_MIX, TRAIN_MIX, make_batches
from .heldout import answer_accuracy, heldout_episodes, window_eval
from .measure import main as measure_main
from .model import SHIPPED_MODEL, build_model, build_tokenizer, grow_conv, grow_layers, save
from .recipe import CARD_NOTES, TRAIN_COMMAND, recipe_argv, train_recipe


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = recipe_argv(argv)
    if passthrough is not None:
        return train_recipe(passthrough, main)
    ap = argparse.ArgumentParser(prog="oprm train-ar", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(SHIPPED_MODEL))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minutes", type=float, default=45.0, help="wall-clock training budget")
    ap.add_argument("--max-steps", type=int, default=100000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--max-ctx-tokens", type=int, default=128, help="training length (context tokens)")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--state", type=int, default=64)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--groups", type=int, default=1,
                    help="Mamba2 n_groups: heads per group share the B/C projections (the state's keys and queries)")
    ap.add_argument("--conv-kernel", type=int, default=4,
                    help="causal conv width; > 4 lets one layer see a whole key next to its value (CPU/torch path); "
                         "with --init-from a wider one grows the model's convolutions (new taps start at zero)")
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-measure", action="store_true", help="skip the measurement / model card numbers")
    ap.add_argument("--init-from", default=None, help="continue training a saved model folder (stage 2)")
    ap.add_argument("--schedule-steps", type=int, default=None,
                    help="cosine schedule over this many steps (default: over the wall-clock budget)")
    ap.add_argument("--present-prob", type=float, default=TRAIN_MIX["present_prob"],
                    help="share of episodes whose key is in the document (the rest answer Error)")
    ap.add_argument("--hard-negative-prob", type=float, default=TRAIN_MIX["hard_negative_prob"])
    ap.add_argument("--extra-questions", default="%d,%d" % TRAIN_MIX["extra_questions"])
    ap.add_argument("--curriculum", default="%d,%g" % TRAIN_MIX["curriculum"],
                    help="START,FRAC: max facts starts at START and reaches the full range at FRAC of training")
    ap.add_argument("--data", choices=("docs", "oprm"), default="docs",
                    help="docs: whole documents and random token windows (the shipped recipe); oprm: exactly the "
                         "engine's chunks (boundary-safe and plain, chunk size = --max-ctx-tokens) of longer "
                         "documents, questions about keys whole in the chunk or absent from it")
    ap.add_argument("--first-token-weight", type=float, default=1.0,
                    help="loss weight of each answer's first token (the value's first digit or Error)")
    ap.add_argument("--needle-prob", type=float, default=OPRM_MIX["needle_prob"],
                    help="--data oprm: share of questions about a key whole in the window")
    ap.add_argument("--noun-prob", type=float, default=OPRM_MIX["hard_negative_noun_prob"],
                    help="--data oprm: share of hard negatives that share the noun / surname (else the modifier)")
    ap.add_argument("--value-prefix-prob", type=float, default=0.0,
                    help="share of values repeating the leading digits of an earlier value of the document, so the "
                         "answer's later digits must be recalled from the key (not copied after the first digit)")
    args = ap.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    mix = dict(TRAIN_MIX, present_prob=args.present_prob, hard_negative_prob=args.hard_negative_prob,
               extra_questions=tuple(int(x) for x in args.extra_questions.split(",")),
               curriculum=(int(args.curriculum.split(",")[0]), float(args.curriculum.split(",")[1])))
    if args.data == "oprm":
        mix = dict(OPRM_MIX, needle_prob=args.needle_prob, hard_negative_noun_prob=args.noun_prob)
    mix["value_prefix_prob"] = args.value_prefix_prob
    if args.init_from:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.init_from)
        model = AutoModelForCausalLM.from_pretrained(args.init_from, dtype=torch.float32)
        if args.layers > model.config.num_hidden_layers:
            model = grow_layers(model, args.layers, seed=args.seed)
        if args.conv_kernel > model.config.conv_kernel:
            model = grow_conv(model, args.conv_kernel)
        prior = Path(args.init_from) / "training_meta.json"
        # the stage before, without its copy of the card notes (they belong to the recipe, kept once at the top)
        prior_meta = ({k: v for k, v in json.loads(prior.read_text()).items() if k != "notes"}
                      if prior.exists() else None)
    else:
        tok = build_tokenizer(args.seed)
        model = build_model(tok, args.hidden, args.layers, args.state, args.head_dim, seed=args.seed,
                            conv_kernel=args.conv_kernel, groups=args.groups)
        prior_meta = None
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[train-ar] vocab={len(tok)} params={n_params:,} out={out}", flush=True)

    ev_present = heldout_episodes(10_001, 256, True, tok=tok, max_ctx_tokens=args.max_ctx_tokens)
    ev_absent = heldout_episodes(10_002, 256, False, tok=tok, max_ctx_tokens=args.max_ctx_tokens)

    decay, no_decay = [], []
    for n_, p in model.named_parameters():
        (no_decay if p.ndim < 2 or n_.endswith(("A_log", "D", "dt_bias")) else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98))
    rng = random.Random(args.seed + 1)
    t0 = time.time()
    budget = args.minutes * 60
    step, n_tok, queue = 0, 0, []
    ema = None
    history = []
    model.train()
    while step < min(args.max_steps, args.schedule_steps or args.max_steps):
        elapsed = time.time() - t0
        if elapsed > budget:
            break
        frac = min(1.0, step / args.schedule_steps if args.schedule_steps else elapsed / budget)
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        if not queue:
            queue = make_batches(rng, tok, args.batch_size * 8, args.batch_size, args.max_ctx_tokens, mix,
                                 progress=frac, data=args.data)
        ids, lab, first = queue.pop()
        if args.first_token_weight == 1.0:
            loss = model(input_ids=ids, labels=lab, use_cache=False).loss
        else:
            loss = weighted_loss(model(input_ids=ids, use_cache=False).logits, lab, first, args.first_token_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        n_tok += ids.numel()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 50 == 0:
            print(f"[train-ar] step {step} loss {ema:.4f} lr {lr:.2e} {n_tok / (time.time() - t0):.0f} tok/s "
                  f"{(time.time() - t0) / 60:.1f} min", flush=True)
        if step % args.eval_every == 0:
            acc, _ = answer_accuracy(model, tok, ev_present[:128])
            _, idk = answer_accuracy(model, tok, ev_absent[:128])
            history.append((step, round(acc, 4), round(idk, 4)))
            extra = ""
            if args.data == "oprm":
                w_acc, w_idk = window_eval(model, tok, args.max_ctx_tokens, n_episodes=24)
                history[-1] += (round(w_acc, 4), round(w_idk, 4))
                extra = f"  16x chunks: needle acc {w_acc:.3f}, key-less -> Error {w_idk:.3f}"
            print(f"[train-ar] eval step {step}: present acc {acc:.3f}  absent->Error {idk:.3f}{extra}", flush=True)
            save(model, tok, out)  # checkpoint (overwritten)

    train_min = (time.time() - t0) / 60
    acc, _ = answer_accuracy(model, tok, ev_present)
    _, idk = answer_accuracy(model, tok, ev_absent)
    print(f"[train-ar] done: {step} steps, {n_tok:,} tokens, {train_min:.1f} min; "
          f"present acc {acc:.3f}, absent->Error {idk:.3f}", flush=True)
    save(model, tok, out)
    meta = dict(seed=args.seed, steps=step, tokens=n_tok, train_minutes=round(train_min, 1), params=n_params,
                vocab=len(tok), notes=CARD_NOTES,
                max_ctx_tokens=args.max_ctx_tokens, batch_size=args.batch_size, lr=args.lr,
                hidden=model.config.hidden_size, layers=model.config.num_hidden_layers,
                state=model.config.state_size, head_dim=model.config.head_dim, groups=model.config.n_groups,
                conv_kernel=model.config.conv_kernel,
                mix={k: list(v) if isinstance(v, tuple) else v for k, v in mix.items()},
                data=args.data, first_token_weight=args.first_token_weight,
                init_from=args.init_from, prior_stage=prior_meta,
                final_heldout=dict(present_acc=acc, absent_idk=idk), history=history,
                command=f"{TRAIN_COMMAND} " + " ".join(argv))
    (out / "training_meta.json").write_text(json.dumps(meta, indent=1))
    if not args.no_measure:
        measure_main(["--model", str(out), "--write-card"])
    return 0


def weighted_loss(logits, labels, first, weight: float):
    """Next-token cross-entropy over the labelled tokens, each answer's first token weighted ``weight``."""
    import torch.nn.functional as F

    logits, labels, first = logits[:, :-1].float(), labels[:, 1:], first[:, 1:]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                         reduction="none").view(labels.shape)
    w = (labels != -100).float() * (1.0 + (weight - 1.0) * first.float())
    return (ce * w).sum() / w.sum()
