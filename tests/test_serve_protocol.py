"""The request models (oprm.serve.protocol): generated from OPRMConfig, one error shape, the server's limits."""

from __future__ import annotations

import dataclasses
import json

import pytest

from oprm import OPRMConfig
from oprm.serve.parser import Parser
from oprm.serve.plan import APIError, Limits
from oprm.serve.protocol import ChatRequest, OprmExtension, parse, server_only_options


def test_extension_mirrors_oprm_config():
    """Every request-settable OPRMConfig field is in the extension with its choices and bound; no other is."""
    props = OprmExtension.model_json_schema()["properties"]
    server_only = server_only_options()
    for f in dataclasses.fields(OPRMConfig):
        if not f.metadata["request"]:
            assert f.name not in props and f.name in server_only
            continue
        assert f.name in props, f.name
        default = getattr(OPRMConfig(), f.name)
        assert OprmExtension.model_validate({f.name: default}).config_overrides() == {f.name: default}
        for choice in f.metadata["choices"] or ():
            OprmExtension.model_validate({f.name: choice})
        if f.metadata["choices"]:
            with pytest.raises(Exception):
                OprmExtension.model_validate({f.name: "no-such-choice"})
        if f.metadata["minimum"] is not None:
            with pytest.raises(Exception):
                OprmExtension.model_validate({f.name: f.metadata["minimum"] - 1})
        if "None" not in str(f.type):
            with pytest.raises(Exception):
                OprmExtension.model_validate({f.name: None})


def chat(parser, **body):
    return parser.chat({"model": "m", "messages": [{"role": "user", "content": "q"}], **body})


def error(parser, raw=None, **body) -> APIError:
    with pytest.raises(APIError) as e:
        parser.chat(raw) if raw is not None else chat(parser, **body)
    assert e.value.code and e.value.status in (400, 404, 413), e.value.body()
    return e.value


@pytest.fixture()
def parser():
    return Parser(["m"], OPRMConfig(chunk_size=64), {"max_new_tokens": 8},
                  Limits(max_tokens=100, max_document_bytes=1000, max_template_chars=200))


@pytest.mark.parametrize("name", sorted(server_only_options()))
def test_server_options_refused_by_name(parser, name):
    e = error(parser, oprm={"context": "d", name: "/tmp/x"})
    assert e.status == 400 and e.param == f"oprm.{name}" and e.code == "server_option"
    assert server_only_options()[name] in e.message  # the flag that sets it


def test_numbers_beyond_any_limit(parser):
    assert error(parser, max_tokens=2**70).param == "max_tokens"
    assert error(parser, max_completion_tokens=101).param == "max_completion_tokens"
    assert chat(parser, max_tokens=100).max_new_tokens == 100
    body = '{"model": "m", "messages": [{"role": "user", "content": "q"}], "max_tokens": %s}'
    assert error(parser, raw=(body % ("9" * 5000)).encode()).code == "invalid_json"
    assert error(parser, raw=(body % "NaN").encode()).param == "max_tokens"
    assert error(parser, raw=body.replace("max_tokens", "temperature") % "1e999").param == "temperature"
    assert error(parser, temperature=True).code == "invalid_type"
    assert error(parser, max_tokens=5.0).code == "invalid_type"
    assert error(parser, oprm={"context": "d", "repetition_penalty": float("inf")}).param == "oprm.repetition_penalty"


def test_lone_surrogates_and_bad_bytes(parser):
    for raw in (b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}',
                b'{"model": "m", "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}',
                b'{"model": "m", "messages": [{"role": "user", "content": "q"}], "oprm": {"context": "\\udfff x"}}'):
        assert error(parser, raw=raw).code == "invalid_json"
    pair = '{"model": "m", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}'  # a valid pair: an emoji
    assert parser.chat(pair).vanilla_messages[-1]["content"] == "\U0001F600"


@pytest.mark.parametrize("template", ["{context} {input:>20000}", "{context} {input.x}", "{context} {input[0]}",
                                      "{context} {input!r}", "{context} {", "{context} {0}"])
def test_templates_are_plain_substitution(parser, template):
    e = error(parser, oprm={"context": "d", "template": template})
    assert e.status == 400 and e.param == "oprm.template"
    assert error(parser, oprm={"context": "d", "answer_prefix": template}).param == "oprm.answer_prefix"


def test_document_and_template_caps(parser):
    e = error(parser, oprm={"context": "é" * 501})
    assert e.status == 413 and e.code == "document_too_large"
    assert error(parser, oprm={"context": "d", "template": "{context}" + "x" * 200}).param == "oprm.template"
    assert chat(parser, oprm={"context": "é" * 500, "template": "{context} {input} {{braces}}"}).oprm


def test_every_message_is_an_error_object(parser):
    e = error(parser, raw=json.dumps({"model": "m", "messages": [{"role": "tool", "content": "x"}]}))
    assert e.body()["error"]["param"] == "messages[0].role" and e.body()["error"]["code"] == "invalid_value"
    image = [{"role": "user", "content": [{"type": "image_url"}]}]
    assert error(parser, messages=image).code == "unsupported_content"
    messages = [{"role": "developer", "content": "s"}, {"role": "user", "content": "q"}]
    assert parse(ChatRequest, {"model": "m", "messages": messages}).messages[0].role == "system"


def test_api_keys_from_flags_or_environment(monkeypatch):
    from oprm.errors import OPRMUsageError
    from oprm.serve import api_keys

    monkeypatch.setenv("OPRM_API_KEY", "a, b")
    assert api_keys(None) == ["a", "b"] and api_keys(["c"]) == ["c"]
    monkeypatch.delenv("OPRM_API_KEY")
    assert api_keys(None) == []
    with pytest.raises(OPRMUsageError):
        api_keys(["with space"])


@pytest.mark.parametrize("header, name", [("[::1]:80", "::1"), ("LocalHost.:8000", "localhost"),
                                          ("evil.example:1", "evil.example"), ("::1", "::1")])
def test_host_names(header, name):
    from oprm.serve.guard import host_name, is_loopback

    assert host_name(header) == name
    assert is_loopback(name) == (name != "evil.example")
    assert is_loopback("app.localhost") and is_loopback("127.0.0.2") and not is_loopback("0.0.0.0")


def test_integers_stay_within_64_bits_and_lookahead_within_the_token_limit(parser):
    """torch.manual_seed(2**70) raised inside the engine (a 500); a look-ahead of 10**9 tokens was unbounded work."""
    assert error(parser, seed=2**70).param == "seed"
    for name in ("seed", "top_k_tokens", "num_decode", "top_k"):
        assert error(parser, oprm={"context": "d", name: 2**64}).param == f"oprm.{name}"
    assert error(parser, oprm={"context": "d", "lookahead_tokens": 101}).param == "oprm.lookahead_tokens"
    assert chat(parser, seed=-(2**63), oprm={"context": "d", "seed": 2**63 - 1, "lookahead_tokens": 100}).oprm
