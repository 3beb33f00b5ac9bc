"""Each option's default is written once: OPRMConfig's fields and config.GENERATION_FLAGS decide them; no other
module of src/ repeats one as a literal (a command with another default names it next to its flags)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import oprm
from oprm.config import GENERATION_DEFAULTS, OPRMConfig
from oprm.decoding import make_generation_config

SRC = Path(oprm.__file__).resolve().parent
# an option given its config default as a keyword literal elsewhere (e.g. max_new_tokens=64, chunk_size=2000)
REPEATS = {f"max_new_tokens={GENERATION_DEFAULTS['max_new_tokens']}",
           f"lookahead_tokens={OPRMConfig().lookahead_tokens}", f"top_k_tokens={OPRMConfig().top_k_tokens}"}


@pytest.mark.parametrize("path", sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if p.name != "config.py"))
def test_no_module_repeats_a_default(path):
    code = re.sub(r"\s+", "", (SRC / path).read_text(encoding="utf-8"))
    assert not [r for r in REPEATS if re.search(rf"(?<![A-Za-z_.]){re.escape(r)}(?!\d)", code)], path


def test_generation_defaults_come_from_the_config():
    class Model:
        generation_config = None

    assert make_generation_config(Model()).max_new_tokens == GENERATION_DEFAULTS["max_new_tokens"]
