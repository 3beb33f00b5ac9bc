"""Each option's default is written once: OPRMConfig's fields and config.GENERATION_FLAGS decide them; no other
module of src/ repeats one as a literal (a command with another default names it next to its flags)."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

import oprm
from oprm.config import GENERATION_DEFAULTS, OPRMConfig
from oprm.decoding import make_generation_config

SRC = Path(oprm.__file__).resolve().parent
DEFAULTS = {**{f.name: getattr(OPRMConfig(), f.name) for f in dataclasses.fields(OPRMConfig)}, **GENERATION_DEFAULTS}


def repeated_defaults(code: str) -> list[str]:
    """Where ``code`` writes an option's default again: a parameter named like the option whose default is that
    literal (``def f(chunk_size=2000)``), or a call passing the literal (``generate(max_new_tokens=64)``). Booleans,
    0 and 1 are everyone's neutral values (``overlap=0``, ``seed=0``) and texts passed in calls are choices
    (``mode="oprm"``): those do not count, a text as a parameter's default does."""
    found = []

    def same(name, node, strict):
        if name not in DEFAULTS or not isinstance(node, ast.Constant) or DEFAULTS[name] is None:
            return False
        value, default = node.value, DEFAULTS[name]
        if type(value) is not type(default) or value != default:
            return False
        if isinstance(value, int):  # bool is an int
            return value not in (0, 1)
        return strict

    for node in ast.walk(ast.parse(code)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            args = node.args
            positional = args.posonlyargs + args.args
            pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults))
            pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
            found += [f"line {d.lineno}: {a.arg}={d.value!r}" for a, d in pairs if same(a.arg, d, True)]
        elif isinstance(node, ast.Call):
            found += [f"line {k.value.lineno}: {k.arg}={k.value.value!r}" for k in node.keywords
                      if k.arg and same(k.arg, k.value, False)]
    return found


@pytest.mark.parametrize("path", sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if p.name != "config.py"))
def test_no_module_repeats_a_default(path):
    assert repeated_defaults((SRC / path).read_text(encoding="utf-8")) == [], path


def test_the_check_sees_a_repeated_default():
    code = "def ask(q, chunk_size=2000, *, idk='Error'):\n    return run(q, max_new_tokens=64, overlap=0, mode='oprm')\n"
    assert repeated_defaults(code) == ["line 1: chunk_size=2000", "line 1: idk='Error'", "line 2: max_new_tokens=64"]


def test_generation_defaults_come_from_the_config():
    class Model:
        generation_config = None

    assert make_generation_config(Model()).max_new_tokens == GENERATION_DEFAULTS["max_new_tokens"]
