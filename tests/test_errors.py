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


def one_line(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("oprm: error:") and match in err, err


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
    assert proc.stderr.strip().splitlines() == [f"oprm: error: the model {failing_model_dir} failed: index out of "
                                                "range in self"]
