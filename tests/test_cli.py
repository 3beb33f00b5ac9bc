"""`oprm ask` on a local tiny model folder: the JSON fields, the explain table, and one-line errors."""

import json
import subprocess
import sys

import pytest
import transformers as tf
from tiny_models import tiny_model
from tiny_tokenizer import tiny_tokenizer

from oprm.cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-mamba2")
    tok = tiny_tokenizer()
    model = tiny_model("mamba2")
    model.resize_token_embeddings(len(tok))
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture()
def context_file(tmp_path):
    f = tmp_path / "context.txt"
    f.write_text("The code of the amber falcon is 4821. The weather was calm. " * 6)
    return f


def ask(model_dir, context, *extra):
    return ["ask", "--model", str(model_dir), "--context", str(context), "--question", "What is the code?",
            "--chunk-size", "24", "--max-new-tokens", "4", *extra]


def test_json_has_documented_fields(model_dir, context_file, capsys):
    assert main(ask(model_dir, context_file, "--json")) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("text", "token_ids", "chosen", "chosen_spans", "chunks", "timings", "tokens_processed", "mode",
                "prompt_tokens", "selection", "idk_fallback_used", "answers"):
        assert key in result
    assert len(result["chunks"]) > 1
    for key in ("index", "token_start", "token_end", "char_start", "char_end", "entropy", "is_idk", "top_tokens"):
        assert key in result["chunks"][0]
    if result["chosen"]:
        span = result["chosen_spans"][0]
        assert span["chunk"] == result["chosen"][0] and span["token_end"] - span["token_start"] == 24
        assert result["token_ids"] and all(isinstance(t, int) for t in result["token_ids"])


def test_explain_prints_table(model_dir, context_file, capsys):
    assert main(ask(model_dir, context_file, "--explain", "--idk-fallback", "min_entropy")) == 0
    out = capsys.readouterr().out
    assert "| chunk | tokens | entropy (nats) |" in out and "chunk " in out and "opens:" in out


def test_vanilla_and_truncate_modes(model_dir, context_file, capsys):
    assert main(ask(model_dir, context_file, "--mode", "vanilla", "--json")) == 0
    assert json.loads(capsys.readouterr().out)["mode"] == "vanilla"
    assert main(ask(model_dir, context_file, "--mode", "truncate", "--max-input-tokens", "64", "--json")) == 0
    assert json.loads(capsys.readouterr().out)["tokens_processed"] <= 64 + 4


def one_line_error(capsys, argv, match):
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("oprm: error:") and match in err, err


def test_bad_inputs(model_dir, context_file, tmp_path, capsys):
    one_line_error(capsys, ask(model_dir, tmp_path / "missing.txt"), "not found")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    one_line_error(capsys, ask(model_dir, empty), "empty")
    one_line_error(capsys, ask(model_dir, context_file, "--chunk-size", "0"), "chunk")
    one_line_error(capsys, ask(model_dir, context_file, "--chunk-size", "-3"), "chunk")
    template = tmp_path / "template.txt"
    template.write_text("Question: {input}")
    one_line_error(capsys, ask(model_dir, context_file, "--prompt-template", str(template)), "{context}")
    one_line_error(capsys, ask(model_dir, context_file, "--idk", ""), "IDK word")
    one_line_error(capsys, ask(tmp_path / "no-model", context_file), "not found")


def test_unsupported_architecture(tmp_path, context_file, capsys):
    folder = tmp_path / "t5"
    tf.T5Config(vocab_size=320, d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    one_line_error(capsys, ask(folder, context_file), "unsupported architecture")


def test_console_entry_point(model_dir, context_file):
    proc = subprocess.run([sys.executable, "-m", "oprm", *ask(model_dir, context_file, "--chunk-size", "0")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("oprm: error:")
    assert "Traceback" not in proc.stderr


def test_encode_then_ask_a_document(model_dir, context_file, tmp_path, capsys):
    doc = tmp_path / "doc.oprm"
    assert main(["encode", "--model", str(model_dir), "--context", str(context_file), "--output", str(doc),
                 "--chunk-size", "24"]) == 0
    assert "chunks of 24" in capsys.readouterr().out and doc.is_file()
    assert main(["ask", "--document", str(doc), "--question", "What is the code?", "--max-new-tokens", "4",
                 "--json"]) == 0  # the model comes from the document
    from_doc = json.loads(capsys.readouterr().out)
    assert main(ask(model_dir, context_file, "--json", "--document-cache-bytes", "0")) == 0
    scratch = json.loads(capsys.readouterr().out)
    assert from_doc["token_ids"] == scratch["token_ids"] and from_doc["chosen"] == scratch["chosen"]
    assert from_doc["document"] == {"source": "document"} and scratch["document"] is None
    assert from_doc["tokens_processed"] < scratch["tokens_processed"]
    one_line_error(capsys, ["ask", "--document", str(doc), "--question", "Why?", "--chunk-size", "32"], "chunk_size")


def test_several_questions_share_one_encoding(model_dir, context_file, tmp_path, capsys):
    questions = tmp_path / "questions.txt"
    questions.write_text("What is the weather?\n\nWho keeps the box?\n")
    assert main(ask(model_dir, context_file, "--question", "Where?", "--questions", str(questions), "--json")) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["question"] for r in lines] == ["What is the code?", "Where?", "What is the weather?",
                                              "Who keeps the box?"]
    assert [r["document"]["cache"] for r in lines] == ["miss", "hit", "hit", "hit"]
    assert main(ask(model_dir, context_file, "--question", "Where?")) == 0
    out = capsys.readouterr().out
    assert out.startswith("| question | answer | chunk | seconds |") and "| Where? |" in out
    one_line_error(capsys, ask(model_dir, context_file, "--question", " "), "question is empty")


def test_one_question_keeps_no_memory_cache_unless_asked(model_dir, context_file, tmp_path, capsys, monkeypatch):
    """One question in a one-shot process: no memory cache (nothing would read it), so `support` may skip chunks;
    with a cache folder or an explicit budget the document is kept."""
    monkeypatch.delenv("OPRM_CACHE_DIR", raising=False)
    results = {}
    for name, extra in (("one", ()), ("budget", ("--document-cache-bytes", "1000000")),
                        ("folder", ("--cache-dir", str(tmp_path / "cache")))):
        assert main(ask(model_dir, context_file, "--json", *extra)) == 0
        results[name] = json.loads(capsys.readouterr().out)
    assert results["one"]["document"] is None
    assert results["budget"]["document"]["cache"] == results["folder"]["document"]["cache"] == "miss"
    assert list((tmp_path / "cache").glob("*.oprm"))
    assert results["one"]["token_ids"] == results["budget"]["token_ids"] == results["folder"]["token_ids"]


def test_chunk_size_defaults_to_the_models_measured_best(model_dir, context_file, tmp_path, capsys):
    """ask (and OPRM.from_pretrained) chunk at chunk_sizes.json's best when the user gives no chunk size."""
    import shutil

    from oprm import OPRM, OPRMConfig

    def chunk_lengths(folder, *extra):
        argv = ["ask", "--model", str(folder), "--context", str(context_file), "--question", "What is the code?",
                "--max-new-tokens", "2", "--json", *extra]
        assert main(argv) == 0
        return {c["token_end"] - c["token_start"] for c in json.loads(capsys.readouterr().out)["chunks"]}

    assert chunk_lengths(model_dir) == {len(OPRM.from_pretrained(str(model_dir)).tokenizer.encode(
        context_file.read_text(), add_special_tokens=False))}  # no sweep: one chunk of at most 2000 tokens
    measured = tmp_path / "measured"
    shutil.copytree(model_dir, measured)
    (measured / "chunk_sizes.json").write_text(json.dumps({"best": 16}))
    assert chunk_lengths(measured) == {16}
    assert chunk_lengths(measured, "--chunk-size", "32") == {32}
    assert OPRM.from_pretrained(str(measured)).config.chunk_size == 16
    assert OPRM.from_pretrained(str(measured), chunk_size=32).config.chunk_size == 32
    assert OPRM.from_pretrained(str(measured), config=OPRMConfig()).config.chunk_size == 2000
    assert OPRM.from_pretrained(str(model_dir)).config.chunk_size == 2000
