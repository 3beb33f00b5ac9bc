"""The server's pieces without a server: request checks, streaming text pieces, stop sequences, cancellation."""

from __future__ import annotations

import threading

import pytest
import torch
from transformers import AutoTokenizer

from oprm import OPRMConfig
from oprm.models import resolve_model
from oprm.serve.plan import APIError
from oprm.serve.parser import Parser
from oprm.serve.responses import cut_at_stop
from oprm.serve.worker import DecodeCancelled, _partial_stop, _Streamer


class FakePlan:
    def __init__(self, stop):
        self.stop = stop


class FakeJob:
    def __init__(self, stop):
        self.plan = FakePlan(stop)
        self.cancelled = threading.Event()
        self.tokens_decoded = 0
        self.first_token = None
        self.pieces: list[str] = []

    def emit(self, delta):
        self.pieces.append(delta)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model("oprm-ar-mamba2")[0])


def test_partial_stop_and_cut():
    assert _partial_stop("the code is 48", ["482", "END"]) == 2
    assert _partial_stop("the code EN", ["END"]) == 2 and _partial_stop("the code", ["END"]) == 0
    assert cut_at_stop("a END b", ["END", "b"]) == ("a ", True) and cut_at_stop("abc", ["x"]) == ("abc", False)


@pytest.mark.parametrize("stops", [[], ["END"], ["4821. E"], ["zzz"]])
def test_stream_pieces_never_run_ahead_of_the_answer(tokenizer, stops):
    text = "  The code of the amber falcon is 4821. END of the text  "
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    job = FakeJob(stops)
    streamer = _Streamer(job, tokenizer, stream_text=True)
    streamer.put(torch.tensor([1, 2, 3]))  # the prompt comes first and is skipped
    final, _ = cut_at_stop(tokenizer.decode(ids, skip_special_tokens=True).strip(), stops)
    for token in ids:
        streamer.put(torch.tensor([token]))
        assert final.startswith("".join(job.pieces))  # what was sent is never taken back
    assert "".join(job.pieces) + streamer.final_delta(final) == final
    assert not any(s in "".join(job.pieces) for s in stops)
    job.cancelled.set()
    with pytest.raises(DecodeCancelled):
        streamer.put(torch.tensor([ids[0]]))


def parser():
    return Parser(["m"], OPRMConfig(chunk_size=64), {"max_new_tokens": 8})


def test_parser_maps_openai_fields_and_extension():
    plan = parser().chat({"model": "m", "messages": [{"role": "system", "content": "Be brief."},
                                                      {"role": "user", "content": [{"type": "text", "text": "Q?"}]}],
                          "max_completion_tokens": 5, "temperature": 0.5, "top_p": 0.9, "seed": 3, "stop": "\n",
                          "oprm": {"context": "doc", "selection": "max_prob", "idk": None, "top_k": 4}})
    kw = plan.engine_kwargs
    assert plan.oprm and plan.document_from == "extension" and plan.stop == ["\n"]
    assert kw["max_new_tokens"] == 5 and kw["do_sample"] and kw["temperature"] == 0.5 and kw["top_p"] == 0.9
    assert kw["seed"] == 3 and kw["selection"] == "max_prob" and kw["idk"] is None and kw["top_k"] == 4
    assert kw["context"] == "doc" and kw["query"] == "Q?" and kw["system_prompt"] == "Be brief."
    greedy = parser().chat({"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0})
    assert not greedy.oprm and greedy.engine_kwargs["do_sample"] is False and greedy.vanilla_messages


def test_parser_document_block():
    plan = parser().chat({"model": "m", "messages": [
        {"role": "user", "content": "Before <document>the text</document> What is it?"}]})
    assert plan.document_from == "message"
    assert plan.engine_kwargs["context"] == "the text" and plan.engine_kwargs["query"] == "Before  What is it?"
    with pytest.raises(APIError, match="not both"):
        parser().chat({"model": "m", "messages": [{"role": "user", "content": "<document>a</document>q"}],
                       "oprm": {"context": "b"}})
    with pytest.raises(APIError, match="closing"):
        parser().chat({"model": "m", "messages": [{"role": "user", "content": "<document>a q"}]})
    with pytest.raises(APIError, match="earlier turns"):
        parser().chat({"model": "m", "messages": [{"role": "user", "content": "a"}, {"role": "assistant",
                                                                                         "content": "b"},
                                                   {"role": "user", "content": "<document>a</document>q"}]})


@pytest.mark.parametrize("body, param", [
    ({"oprm": {"context": "d", "shared_prefix": "yes"}}, "oprm.shared_prefix"),
    ({"oprm": {"context": "d", "idk": 3}}, "oprm.idk"),
    ({"oprm": {"context": "d", "overlap": 64}}, "oprm"),
    ({"oprm": {"context": "d", "selection": "oracle"}}, "oprm.gold_text"),
    ({"oprm": {"context": "d", "template": "no placeholder"}}, "oprm.template"),
    ({"oprm": {"context": "d", "explain": "yes"}}, "oprm.explain"),
    ({"oprm": "d"}, "oprm"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"stream": True, "logprobs": True}, "logprobs"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"top_p": 0}, "top_p"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"tools": [{"type": "function"}]}, "tools"),
])
def test_parser_rejects_with_the_parameter_named(body, param):
    with pytest.raises(APIError) as e:
        parser().chat({"model": "m", "messages": [{"role": "user", "content": "q"}], **body})
    assert e.value.status == 400 and e.value.param == param


def test_server_defaults_and_sampling_seeds():
    p = Parser(["m"], OPRMConfig(), {"max_new_tokens": 8, "stop_strings": ["###"]})
    plan = p.chat({"model": "m", "messages": [{"role": "user", "content": "q"}]})
    assert plan.stop == ["###"] and plan.engine_kwargs["stop_strings"] == ["###"]  # the server's --stop, cut too
    plan = p.chat({"model": "m", "messages": [{"role": "user", "content": "q"}], "stop": ["!"]})
    assert plan.stop == ["!"]
    sampled = [p.chat({"model": "m", "messages": [{"role": "user", "content": "q"}], "temperature": 1})
               for _ in range(3)]
    assert len({s.engine_kwargs["seed"] for s in sampled}) > 1  # no seed: a fresh one per request
    seeded = p.chat({"model": "m", "messages": [{"role": "user", "content": "<document>d</document>q"}],
                     "temperature": 1, "seed": 7})
    assert seeded.engine_kwargs["seed"] == 7
    assert "seed" not in p.chat({"model": "m", "messages": [{"role": "user", "content": "q"}]}).engine_kwargs


def test_decode_all_from_the_server_default_streams_as_one_piece():
    p = Parser(["m"], OPRMConfig(decode="all"), {})
    plan = p.chat({"model": "m", "messages": [{"role": "user", "content": "<document>d</document>q"}], "stream": True})
    assert plan.decode == "all" and not plan.streams_pieces
    plan = p.chat({"model": "m", "messages": [{"role": "user", "content": "<document>d</document>q"}], "stream": True,
                   "oprm": {"decode": "one"}})
    assert plan.streams_pieces


def test_neutral_values_of_unsupported_fields_pass():
    ok = parser().chat({"model": "m", "messages": [{"role": "user", "content": "q"}], "tools": [], "logit_bias": {},
                        "tool_choice": "auto", "presence_penalty": 0.0, "frequency_penalty": 0, "user": "u"})
    assert ok.vanilla_messages
    with pytest.raises(APIError):
        parser().chat({"model": "m", "messages": [{"role": "user", "content": "q"}], "logit_bias": {"5": 1}})


@pytest.mark.parametrize("name", ["cache_dir", "document_cache_bytes", "max_batch_tokens"])
def test_server_wide_options_are_refused(name):
    with pytest.raises(APIError) as e:
        parser().chat({"model": "m", "messages": [{"role": "user", "content": "q"}],
                       "oprm": {"context": "d", name: "/tmp/x" if name == "cache_dir" else 1}})
    assert e.value.status == 400 and e.value.param == f"oprm.{name}"
