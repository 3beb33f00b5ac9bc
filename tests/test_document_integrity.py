"""An ``.oprm`` file is checked: a flipped byte anywhere in its states, its header or its token ids is refused with one
line; the model is known by a fingerprint of its config, weights and tokenizer, not by its path."""

import json
import shutil
import struct

import pytest
from tiny_models import tiny_model
from tiny_tokenizer import tiny_tokenizer

from oprm import OPRM, OPRMUsageError
from oprm.cli import main
from oprm.document import EncodedDocument
from oprm.document_file import DocumentWriter

TEXT = "The code of the amber falcon is 4821. The weather was calm and the river ran slowly. " * 6


def save_model(folder, seed=0):
    tok, model = tiny_tokenizer(), tiny_model("mamba2", seed=seed)
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def encoded(model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("doc")
    (folder / "context.txt").write_text(TEXT)
    assert main(["encode", "--model", str(model_dir), "--context", str(folder / "context.txt"), "--chunk-size", "16",
                 "--output", str(folder / "doc.oprm")]) == 0
    return folder / "doc.oprm"


def ask(document, *extra):
    return ["ask", "--document", str(document), "--question", "What is the code?", "--max-new-tokens", "4", "--json",
            *extra]


def answer(capsys, argv):
    assert main(argv) == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    return result["token_ids"], [c["entropy"] for c in result["chunks"]]


def one_line(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("oprm: error:") and match in err, err


def tensor_span(path, name):
    """(start, end) of a tensor's bytes in a safetensors file."""
    raw = path.read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    entry = json.loads(raw[8:8 + size])[name]
    return 8 + size + entry["data_offsets"][0], 8 + size + entry["data_offsets"][1]


def flipped(path, tmp_path, where):
    """A copy of ``path`` with one byte flipped: in a state tensor, the token ids or the JSON header."""
    raw = bytearray(path.read_bytes())
    if where == "header":
        at = raw.index(b"amber falcon")  # the context text, inside the oprm metadata
    else:
        start, end = tensor_span(path, where)
        at = (start + end) // 2
    raw[at] ^= 0x10
    out = tmp_path / f"flipped-{where}.oprm"
    out.write_bytes(bytes(raw))
    return out


@pytest.mark.parametrize("where, match", [("chunk0.0", "chunk0.0 fails its checksum"),
                                          ("chunk3.1", "chunk3.1 fails its checksum"),
                                          ("context_ids", "header or token ids fail"),
                                          ("header", "header or token ids fail")])
def test_flipped_byte_is_refused_with_one_line(capsys, encoded, model_dir, tmp_path, where, match):
    one_line(capsys, ask(flipped(encoded, tmp_path, where), "--model", str(model_dir)), match)


def test_intact_document_answers(capsys, encoded, model_dir):
    tokens, _ = answer(capsys, ask(encoded))  # the document's model is the default --model
    assert tokens == answer(capsys, ask(encoded, "--model", str(model_dir)))[0]


def test_copied_model_folder_is_accepted_with_identical_answers(capsys, encoded, model_dir, tmp_path):
    copy = tmp_path / "elsewhere" / "model-copy"
    shutil.copytree(model_dir, copy)
    assert answer(capsys, ask(encoded, "--model", str(copy))) == answer(capsys, ask(encoded, "--model",
                                                                                     str(model_dir)))


def test_different_model_at_the_same_path_is_refused(capsys, model_dir, tmp_path):
    folder = save_model(tmp_path / "model", seed=0)
    (tmp_path / "context.txt").write_text(TEXT)
    doc = tmp_path / "doc.oprm"
    assert main(["encode", "--model", str(folder), "--context", str(tmp_path / "context.txt"), "--chunk-size", "16",
                 "--output", str(doc)]) == 0
    capsys.readouterr()
    shutil.rmtree(folder)
    save_model(folder, seed=5)  # another checkpoint of the same architecture, at the same path
    one_line(capsys, ask(doc, "--model", str(folder)), "encoded with another model weights")


def test_old_format_is_refused_with_one_line(capsys, encoded, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(encoded), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        header = json.loads(f.metadata()["oprm"])
    header["format"] = "oprm-document/1"
    del header["state_checksums"]
    old = tmp_path / "old.oprm"
    save_file(tensors, str(old), metadata={"oprm": json.dumps(header)})
    one_line(capsys, ask(old), "written by an older oprm (oprm-document/1, without checksums): encode the document "
                               "again")


def test_api_refuses_a_corrupted_state_and_writer_leaves_nothing_on_failure(encoded, model_dir, tmp_path):
    engine = OPRM.from_pretrained(str(model_dir))
    doc = EncodedDocument.load(flipped(encoded, tmp_path, "chunk2.0"))
    with pytest.raises(OPRMUsageError, match="corrupted"):
        engine.generate(document=doc, query="What is the code?", max_new_tokens=2)
    writer = DocumentWriter(tmp_path / "partial.oprm")
    writer.abort()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("partial")) == []
