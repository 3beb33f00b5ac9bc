import pytest
from tiny_tokenizer import tiny_tokenizer

from oprm import OPRMUsageError, build_prompt, default_qa_template
from oprm.prompts import idk_token_ids, prompt_frame


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_chat_template_splits_around_context(tok):
    ctx = "The code of the amber falcon is 4821. The river ran."
    q = "What is the code of the amber falcon?"
    p = build_prompt(tok, ctx, default_qa_template(), {"input": q})
    rendered = tok.apply_chat_template([{"role": "user", "content": default_qa_template().format(context=ctx, input=q)}],
                                       tokenize=False, add_generation_prompt=True)
    prefix, suffix = tok.decode(p.prefix_ids), tok.decode(p.suffix_ids)
    assert prefix.startswith("<|endoftext|><|im_start|>user\n") and "Text:\n" in prefix
    assert suffix.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert prefix + tok.decode(p.context_ids) + suffix == rendered
    assert tok.decode(p.suffix_ids[slice(*p.query_span)]).strip() == q
    assert 'return "Error"' in suffix


def test_offsets_map_tokens_to_text(tok):
    ctx = "amber falcon 4821 and silver otter 7731"
    p = build_prompt(tok, ctx, "{context}\nQ: {input}", {"input": "x"}, chat=False)
    assert "".join(ctx[s:e] for s, e in p.context_offsets).replace(" ", "") == ctx.replace(" ", "")
    assert p.prefix_ids == [] and tok.decode(p.suffix_ids) == "\nQ: x"


def test_template_without_context_or_empty_context(tok):
    with pytest.raises(OPRMUsageError, match="context"):
        build_prompt(tok, "text", "no placeholder {input}", {"input": "q"})
    with pytest.raises(OPRMUsageError, match="empty"):
        build_prompt(tok, "   ", default_qa_template(), {"input": "q"})
    with pytest.raises(OPRMUsageError, match="needs a value"):
        build_prompt(tok, "text", "{context} {missing}", {})


def test_no_idk_template_has_no_instruction():
    assert "Error" not in default_qa_template(None) and 'return "Error"' in default_qa_template("Error")


def test_idk_ids_cover_both_spellings(tok):
    ids = idk_token_ids(tok, "Error")
    assert {tok.decode([i]) for i in ids} >= {"Error", " Error"}
    assert all(tok.decode([i]).strip() == "Error" for i in ids)


def test_idk_that_tokenizes_to_nothing(tok):
    with pytest.raises(OPRMUsageError, match="tokenizes to nothing"):
        idk_token_ids(tok, "")


def test_answer_prefix_follows_the_assistant_header(tok):
    p = build_prompt(tok, "text", "{context}\nWhat is the number for {input}?", {"input": "amber"},
                     answer_prefix="The number for {input} is")
    assert tok.decode(p.suffix_ids).endswith("<|im_start|>assistant\nThe number for amber is")
    assert tok.decode(p.suffix_ids[slice(*p.query_span)]).strip() == "amber"  # the query inside the question


@pytest.mark.parametrize("template", ["{context} {input:>20000}", "{context} {input.nope}", "{context} {input[0]}",
                                      "{context} {input!r}", "{context} }"])
def test_templates_are_plain_substitution(tok, template):
    """No str.format specs: `{input:>20000}` spent 71 s in the server, `{input.x}` reached attributes."""
    with pytest.raises(OPRMUsageError):
        prompt_frame(tok, template, {"input": "q"}, chat=False)


def test_template_fields_substitute_values_verbatim(tok):
    frame = prompt_frame(tok, "Q: {input} {{literal}}\n{context}", {"input": "{context} {0}"}, chat=False)
    assert tok.decode(frame.prefix_ids).endswith("Q: {context} {0} {literal}\n")


def test_cli_template_with_an_attribute_is_one_line(tmp_path, capsys):
    from oprm.cli import main

    template, context = tmp_path / "t.txt", tmp_path / "c.txt"
    template.write_text("{context}\nQuestion: {input.nope}\nAnswer:")
    context.write_text("The code of the amber falcon is 4821. " * 4)
    assert main(["ask", "--model", "oprm-ar-mamba2", "--context", str(context), "--question", "What is the code?",
                 "--prompt-template", str(template), "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "{input.nope}" in err[0], err
