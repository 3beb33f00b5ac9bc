"""RWKV v5 / v6 (Finch) / v7 (Goose) ``.pth`` checkpoints (and v4) on the official `rwkv` runtime (PyPI ``rwkv``).

    model, tokenizer = load_rwkv_runtime("RWKV-x060-World-1B6-v2.1-20240328-ctx4096.pth", dtype="float32")

The runtime runs one sequence at a time: ``forward(tokens, state) -> (logits, state)`` with the state an explicit list
of tensors, and no batch dimension anywhere (v7 takes a list of ints, v5/v6 also a 1-D tensor; nested lists fail). A
batched state here is therefore a list of per-row states, and prefill loops over the rows. The one speed knob found
on CPU is the runtime's own RWKV_JIT_ON=0: v6 prefill ~1.15x and decoding ~1.5x faster (tiny bench model, 1 thread);
v7 always uses TorchScript. We keep the runtime's default.

Exactness (tests/test_rwkv_runtime.py): every row is one runtime call, and decoding feeds one token per call, exactly
as the runtime's own greedy decoding of [P, C_j, S] does. Continuing a state with a multi-token segment is bit-exact
on v7 but not on v5/v6 (measured: up to ~1e-5 on logits), so only v7 computes the shared prefix P once.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys
from types import SimpleNamespace

import torch

from ..errors import OPRMUsageError
from .base import StateAdapter

_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
_MODULES: dict[str, object] = {}


def checkpoint_version(keys) -> str:
    """The RWKV generation of a state dict, from its key names as the runtime tells them apart."""
    keys = set(keys)
    if "blocks.0.att.r_k" in keys:
        return "7"
    if "emb.weight" not in keys or "blocks.0.att.key.weight" not in keys:
        raise OPRMUsageError("not an RWKV checkpoint (no emb.weight / blocks.0.att.key.weight)")
    if any("time_maa" in k for k in keys):
        return "6"
    if any(".ln_x." in k for k in keys):
        return "5"
    return "4"


def runtime_strategy(dtype, device: str | None) -> str:
    """The runtime's strategy string for oprm's ``dtype`` / ``device``; a ``dtype`` with a space is a strategy already
    (e.g. ``"cuda fp16i8 *10 -> cpu fp32"``, see https://pypi.org/project/rwkv/)."""
    name = str(dtype).removeprefix("torch.")
    if " " in name:
        if device:
            raise OPRMUsageError("a runtime strategy string names its own devices: drop --device")
        return name
    device = device or "cpu"
    if name == "auto":  # the runtime's usual choice: fp16 on GPUs (as the OPRM paper ran RWKV6), fp32 on CPUs
        name = "float32" if device == "cpu" else "float16"
    if name not in _DTYPES:
        raise OPRMUsageError(f"unknown dtype {dtype!r} for an RWKV checkpoint; use float32, float16, bfloat16, auto "
                             "or a runtime strategy such as 'cuda fp16i8'")
    return f"{device} {_DTYPES[name]}"


def _runtime_module(v7: bool, strategy: str):
    """``rwkv.model`` with v7 on or off.

    The module reads RWKV_V7_ON once, at import, and binds the name RWKV to either the v7 class or the v4-v6 one, so
    one import cannot serve both. We execute its source once per family under our own module name with the variable
    set for that family (measured: each takes <0.1 s; v6 and v7 models then run side by side in one process, their
    TorchScript functions compiled under distinct qualified names). RWKV_V7_ON is restored afterwards; RWKV_JIT_ON and
    RWKV_CUDA_ON keep the user's values, and unset, the runtime sets them (TorchScript on, its CUDA kernels off) as a
    plain import does, because it reads them again while loading and running. The v7 class keeps its dtype and
    device in module globals, so each v7 strategy gets a copy of its own.
    """
    key = f"v7 {strategy}" if v7 else "v4-v6"
    if key not in _MODULES:
        try:
            spec = importlib.util.find_spec("rwkv.model")
        except ModuleNotFoundError:
            spec = None
        if spec is None:
            raise OPRMUsageError("RWKV .pth models need the rwkv runtime: pip install 'oprm[rwkv]'")
        name = f"oprm_rwkv_runtime_{len(_MODULES)}"
        module_spec = importlib.util.spec_from_file_location(name, spec.origin)
        module = importlib.util.module_from_spec(module_spec)
        saved = os.environ.get("RWKV_V7_ON")
        os.environ["RWKV_V7_ON"] = "1" if v7 else "0"
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # v7 announces itself on stdout
                module_spec.loader.exec_module(module)
        finally:
            if saved is None:
                del os.environ["RWKV_V7_ON"]
            else:
                os.environ["RWKV_V7_ON"] = saved
        sys.modules[name] = module  # TorchScript resolves the module's globals through sys.modules
        _MODULES[key] = module
    return _MODULES[key]


class RwkvRuntimeModel:
    """A runtime model with what the engine and ``oprm bench`` read from a transformers model."""

    def __init__(self, runtime, path: str, version: str, strategy: str):
        from transformers import GenerationConfig

        self.runtime = runtime
        self.weights = runtime.z if version == "7" else runtime.w
        vocab, n_embd = self.weights["emb.weight"].shape
        self.config = SimpleNamespace(model_type="rwkv_runtime", version=version, strategy=strategy,
                                      vocab_size=vocab, hidden_size=n_embd, num_hidden_layers=runtime.args.n_layer,
                                      _name_or_path=path)
        # the World models end a text with token 0 (the official OPRM script stops at tokenizer.eos_token_id = 0)
        self.generation_config = GenerationConfig(eos_token_id=0)
        self.device = self.weights["head.weight"].device  # where the logits come out

    def eval(self):
        return self

    def forward(self, tokens: list[int], state=None, full_output: bool = False):
        return self.runtime.forward(tokens, state, full_output=full_output)

    def parameters(self):
        return iter(self.weights.values())


class RwkvRuntimeAdapter(StateAdapter):
    """A batched state is a list of per-row states (each the runtime's list of tensors)."""

    model_types = ("rwkv_runtime",)

    def __init__(self, model: RwkvRuntimeModel):
        super().__init__(model)
        self.continuation_exact = model.config.version == "7"  # see the module docstring

    @property
    def device(self) -> torch.device:
        return self.model.device

    def prefill(self, input_ids, state=None, start=0, num_logits=1):
        logits, states = [], []
        for b, ids in enumerate(input_ids.tolist()):
            out, row_state = self.model.forward(ids, None if state is None else state[b], full_output=num_logits > 1)
            logits.append(out.float().reshape(-1, out.shape[-1])[-num_logits:])  # one token: [V], not [1, V]
            states.append(row_state)
        return torch.stack(logits), states

    def select(self, state, rows):
        # the runtime replaces the list's tensors on CPU but its CUDA kernels update them in place: copy
        return [[t.clone() for t in state[r]] for r in rows]

    def concat(self, states):
        return [[t.clone() for t in row] for state in states for row in state]


def load_rwkv_runtime(path: str, dtype="float32", device: str | None = None, prompt_format: str = "chat"):
    """(model, tokenizer) for an RWKV ``.pth`` checkpoint, run by the `rwkv` runtime with the World tokenizer."""
    from .rwkv_world import RwkvWorldTokenizer

    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise OPRMUsageError(f"model file not found: {path}")
    strategy = runtime_strategy(dtype, device)
    try:
        keys = torch.load(path, map_location="cpu", mmap=True, weights_only=True).keys()
    except Exception as e:  # noqa: BLE001 - any unreadable file is one line for the user
        raise OPRMUsageError(f"{path} is not an RWKV checkpoint: {_first_line(e)}") from None
    try:
        version = checkpoint_version(keys)
    except OPRMUsageError as e:
        raise OPRMUsageError(f"{path} is {e}") from None
    tokenizer = RwkvWorldTokenizer(prompt_format)
    module = _runtime_module(version == "7", strategy)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the loader prints its progress
            if version == "7":  # the v7 loader appends ".pth" itself
                runtime = module.RWKV_x070(path[: -len(".pth")], strategy)
            else:
                runtime = module.RWKV(path, strategy, verbose=False)
    except Exception as e:  # noqa: BLE001
        raise OPRMUsageError(f"the rwkv runtime could not load {path} with strategy {strategy!r}: "
                             f"{_first_line(e)}") from None
    if version != "7":
        version = f"{runtime.version:.1f}"  # 5.0 / 5.1 / 5.2 / 6.0, as the runtime detected it
    return RwkvRuntimeModel(runtime, path, version, strategy), tokenizer


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
