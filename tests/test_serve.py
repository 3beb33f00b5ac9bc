"""`oprm serve` as a real process on a free port, driven by the official openai client and raw HTTP.

Answers are compared with the engine run in this process on the same input and options (and once with `oprm ask
--json`); the server runs the shipped AR model, whose answers are short, so the whole file takes well under a minute.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from oprm import OPRM  # noqa: E402
from oprm.synthetic.ar import AR_TEMPLATE, make_ar_episode  # noqa: E402
from servers import running_server, subprocess_env  # noqa: E402

MODEL = "oprm-ar-mamba2"
CHUNK = 128
MAX_NEW = 16
MAX_QUEUE = 24
MAX_BODY_MB = 1


def health(port: int) -> dict:
    status, body = request(port, "GET", "/health")
    assert status == 200
    return body


def request(port: int, method: str, path: str, body=None, headers: dict | None = None, timeout: float = 60):
    """(status, parsed JSON or raw text) of one HTTP request; ``body`` is a dict (sent as JSON) or raw bytes."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    raw = response.read().decode()
    conn.close()
    try:
        return response.status, json.loads(raw)
    except json.JSONDecodeError:
        return response.status, raw


@pytest.fixture(scope="module")
def server():
    with running_server(["--model", MODEL, "--chunk-size", str(CHUNK), "--max-new-tokens", str(MAX_NEW),
                         "--max-queue", str(MAX_QUEUE), "--max-body-mb", str(MAX_BODY_MB),
                         "--max-tokens-limit", "100000"]) as (port, _):
        yield port


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server}/v1", api_key="x", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def engine():
    return OPRM.from_pretrained(MODEL, chunk_size=CHUNK)


def ar(seed: int, facts: int = 21):
    return make_ar_episode(seed, facts)


def ask_server(client, ep, stream: bool = False, **extra):
    ext = {"context": ep.context, "template": AR_TEMPLATE, "answer_prefix": ep.answer_prefix, **extra.pop("oprm", {})}
    kwargs = dict(model=MODEL, messages=[{"role": "user", "content": ep.question}], extra_body={"oprm": ext}, **extra)
    if not stream:
        return client.chat.completions.create(**kwargs)
    pieces, last = [], None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        if chunk.choices:
            last = chunk
            pieces.append(chunk.choices[0].delta.content or "")
    return "".join(pieces), last


def reference(engine, ep, **options):
    return engine.generate(**ep.prompt_kwargs(), max_new_tokens=options.pop("max_new_tokens", MAX_NEW), **options)


# --- answers ------------------------------------------------------------------------------------------------------
def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    status = health(server)
    assert status["status"] == "ok" and status["model"] == MODEL and status["max_queue"] == MAX_QUEUE


def test_answer_equals_engine_with_details(client, engine):
    for seed in (1, 2, 3):
        ep = ar(seed)
        ref = reference(engine, ep)
        r = ask_server(client, ep, oprm={"explain": True}, max_tokens=MAX_NEW)
        assert r.choices[0].message.content == ref.text
        assert r.choices[0].finish_reason == "stop"
        assert r.usage.completion_tokens == len(ref.token_ids)
        assert r.usage.prompt_tokens == sum(ref.prompt_tokens.values())
        details = r.model_extra["oprm"]
        assert details["chosen"] == ref.chosen and details["chosen_spans"] == ref.chosen_spans
        assert [c["is_idk"] for c in details["chunks"]] == [c.is_idk for c in ref.chunks]
        assert [c["entropy"] for c in details["chunks"]] == pytest.approx([c.entropy for c in ref.chunks], abs=1e-5)
        assert details["mode"] == "oprm" and details["document_from"] == "extension"


def test_bare_question_is_asked_in_the_models_own_prompt(client, engine):
    """The README's request: only the context and the question; the shipped model's prompt_format.json supplies the
    AR template and answer prefix, so the answer is the same as with the episode's own prompt (and right, at the
    model's measured chunk size)."""
    for seed in (4, 5):
        ep = ar(seed)
        r = client.chat.completions.create(model=MODEL, max_tokens=MAX_NEW,
                                           messages=[{"role": "user", "content": ep.question}],
                                           extra_body={"oprm": {"context": ep.context, "chunk_size": 16}})
        assert r.choices[0].message.content == reference(engine, ep, chunk_size=16).text
        assert r.choices[0].message.content.strip() == ep.answer


def test_answer_equals_oprm_ask(client, tmp_path):
    ep = ar(4, 5)
    context = tmp_path / "context.txt"
    context.write_text(ep.context)
    proc = subprocess.run([sys.executable, "-m", "oprm", "ask", "--model", MODEL, "--context", str(context),
                           "--question", ep.question, "--chunk-size", str(CHUNK), "--max-new-tokens", str(MAX_NEW),
                           "--selection", "max_prob", "--json"], env=subprocess_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    asked = json.loads(proc.stdout)
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": ep.question}],
                                       extra_body={"oprm": {"context": ep.context, "selection": "max_prob",
                                                            "explain": True}})
    details = r.model_extra["oprm"]
    assert r.choices[0].message.content == asked["text"]
    assert r.usage.completion_tokens == len(asked["token_ids"])
    assert details["chosen"] == asked["chosen"] and details["selection"] == "max_prob"
    assert [c["entropy"] for c in details["chunks"]] == pytest.approx([c["entropy"] for c in asked["chunks"]],
                                                                      abs=1e-5)


def test_streaming_equals_non_streaming_and_ends_with_done(server, client, engine):
    ep = ar(5)
    text, last = ask_server(client, ep, stream=True)
    assert text == reference(engine, ep).text and last.choices[0].finish_reason == "stop"
    body = {"model": MODEL, "messages": [{"role": "user", "content": ep.question}], "stream": True,
            "stream_options": {"include_usage": True},
            "oprm": {"context": ep.context, "template": AR_TEMPLATE, "answer_prefix": ep.answer_prefix,
                     "explain": True}}
    status, raw = request(server, "POST", "/v1/chat/completions", body)
    assert status == 200
    events = [e[len("data: "):] for e in raw.split("\n\n") if e.strip()]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    final = chunks[-2]
    assert final["choices"][0]["finish_reason"] == "stop" and final["oprm"]["chosen"]


def test_twenty_concurrent_requests(server, client, engine):
    episodes, expected = [], []
    for seed in range(100, 200):  # twenty episodes the model answers right, so "correct" means the gold answer
        ep = ar(seed, 5 if seed % 2 else 21)
        if reference(engine, ep).text == ep.answer:
            episodes.append(ep)
            expected.append(ep.answer)
        if len(episodes) == 20:
            break
    assert len(episodes) == 20
    before = health(server)

    def one(i):
        if i % 2:
            return ask_server(client, episodes[i], stream=True)[0]
        return ask_server(client, episodes[i]).choices[0].message.content

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(one, range(20)))
    assert answers == expected
    after = health(server)
    assert after["completed"] - before["completed"] == 20 and after["failed"] == before["failed"]
    assert after["rejected"] == before["rejected"]


def test_document_block_in_messages(client, engine):
    ep = ar(6, 5)
    ref = engine.generate(context=ep.context, query=ep.question, max_new_tokens=MAX_NEW)
    asked = [{"role": "user", "content": f"<document>{ep.context}</document>\n{ep.question}"}]
    r = client.chat.completions.create(model=MODEL, messages=asked)
    assert r.choices[0].message.content == ref.text
    in_system = [{"role": "system", "content": f"<document>{ep.context}</document>"},
                 {"role": "user", "content": ep.question}]
    r2 = client.chat.completions.create(model=MODEL, messages=in_system, extra_body={"oprm": {"explain": True}})
    assert r2.choices[0].message.content == ref.text and r2.model_extra["oprm"]["document_from"] == "message"
    assert r2.model_extra["oprm"]["chosen"] == ref.chosen


def test_plain_chat_is_vanilla(client, engine):
    messages = [{"role": "user", "content": "The code of the amber falcon is 4821. What is the code?"}]
    ids = engine.tokenizer(engine.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                           add_special_tokens=False)["input_ids"]
    ref = engine.generate(prefix_ids=[], context_ids=ids, suffix_ids=[], mode="vanilla", max_new_tokens=MAX_NEW)
    r = client.chat.completions.create(model=MODEL, messages=messages, extra_body={"oprm": {"explain": True}})
    assert r.choices[0].message.content == ref.text and r.model_extra["oprm"]["mode"] == "vanilla"
    assert r.usage.prompt_tokens == len(ids)


def test_engine_options_and_completions_endpoint(client, engine):
    ep = ar(7)
    options = {"selection": "max_prob", "idk": None, "chunking": "tokens", "overlap": 16, "shared_prefix": False,
               "chunk_size": 96}
    ref = reference(engine, ep, **options)
    r = ask_server(client, ep, oprm={**options, "explain": True})
    assert r.choices[0].message.content == ref.text
    assert r.model_extra["oprm"]["chunk_size"] == 96 and r.model_extra["oprm"]["chosen"] == ref.chosen
    summary = reference(engine, ep, decode="all", max_new_tokens=4)
    r_all = ask_server(client, ep, oprm={"decode": "all"}, max_tokens=4)
    assert r_all.choices[0].message.content == summary.text and "\n" in summary.text
    text_all, _ = ask_server(client, ep, stream=True, oprm={"decode": "all"}, max_tokens=4)
    assert text_all == summary.text
    c = client.completions.create(model=MODEL, prompt=ep.question, extra_body={
        "oprm": {"context": ep.context, "template": AR_TEMPLATE, "answer_prefix": ep.answer_prefix}})
    assert c.choices[0].text == reference(engine, ep).text and c.object == "text_completion"


def test_openai_generation_fields(client, engine):
    ep = ar(8)
    full = reference(engine, ep).text
    assert len(full) >= 3
    short = ask_server(client, ep, max_tokens=1)
    assert short.choices[0].finish_reason == "length"
    assert short.choices[0].message.content == reference(engine, ep, max_new_tokens=1).text
    stop = full[1]
    cut = full[:full.index(stop)]
    r = ask_server(client, ep, stop=[stop])
    assert r.choices[0].message.content == cut and r.choices[0].finish_reason == "stop"
    assert ask_server(client, ep, stream=True, stop=stop)[0] == cut
    sampled = [ask_server(client, ep, temperature=1.5, seed=11).choices[0].message.content for _ in range(2)]
    assert sampled[0] == sampled[1] == reference(engine, ep, do_sample=True, temperature=1.5, seed=11).text
    lp = ask_server(client, ep, logprobs=True, top_logprobs=2).choices[0].logprobs.content
    assert lp and "".join(t.token for t in lp).strip() == full
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in lp)
    assert lp[0].logprob == pytest.approx(lp[0].top_logprobs[0].logprob)  # greedy: the best token


# --- bad input ----------------------------------------------------------------------------------------------------
def test_bad_requests_get_error_objects(server, client):
    ep = ar(9, 5)
    good = {"model": MODEL, "messages": [{"role": "user", "content": ep.question}],
            "oprm": {"context": ep.context}}
    chat = "/v1/chat/completions"
    cases = [  # (method, path, body, status, expected code)
        ("POST", chat, b"{not json", 400, "invalid_json"),
        ("POST", chat, b"", 400, "invalid_json"),
        ("POST", chat, b"\xff\xfe", 400, "invalid_json"),
        ("POST", chat, [1, 2], 400, "invalid_type"),
        ("POST", chat, b"[" * 100_000, 400, "invalid_json"),
        ("POST", chat, {**good, "model": "gpt-4"}, 404, "model_not_found"),
        ("POST", chat, {"messages": good["messages"]}, 400, "missing_required_parameter"),
        ("POST", chat, {"model": MODEL}, 400, "missing_required_parameter"),
        ("POST", chat, {**good, "messages": []}, 400, "invalid_value"),
        ("POST", chat, {**good, "messages": [{"role": "assistant", "content": "hi"}]}, 400, "invalid_value"),
        ("POST", chat, {**good, "messages": [{"role": "user", "content": 5}]}, 400, "invalid_type"),
        ("POST", chat, {**good, "oprm": {"context": ep.context, "chunk_size": 0}}, 400, "invalid_value"),
        ("POST", chat, {**good, "oprm": {"context": ep.context, "selection": "best"}}, 400, "invalid_value"),
        ("POST", chat, {**good, "oprm": {"context": ep.context, "chunk_size": "big"}}, 400, "invalid_type"),
        ("POST", chat, {**good, "oprm": {"context": ep.context, "chunk_sise": 64}}, 400, "unknown_parameter"),
        ("POST", chat, {**good, "oprm": {"context": "   "}}, 400, "invalid_value"),
        ("POST", chat, {**good, "oprm": {"chunk_size": 64}}, 400, "missing_document"),
        ("POST", chat, {**good, "n": 2}, 400, "unsupported_value"),
        ("POST", chat, {**good, "max_tokens": -1}, 400, "invalid_value"),
        ("POST", chat, {**good, "temperature": "hot"}, 400, "invalid_type"),
        ("POST", chat, {**good, "stop": ["a", "b", "c", "d", "e"]}, 400, "invalid_value"),
        ("POST", chat, {**good, "frequency_penalty": 1.0}, 400, "unsupported_parameter"),
        ("POST", chat, {**good, "oprm": {"context": "x " * 700_000}}, 413, "request_too_large"),
        ("POST", "/v1/completions", {"model": MODEL}, 400, "missing_required_parameter"),
        ("GET", chat, None, 405, "method_not_allowed"),
        ("POST", "/v1/nothing", good, 404, "not_found"),
    ]
    for method, path, body, status, code in cases:
        got, answer = request(server, method, path, body)
        assert got == status, (body if not isinstance(body, dict) else list(body), answer)
        assert isinstance(answer, dict) and set(answer["error"]) == {"message", "type", "param", "code"}, answer
        assert answer["error"]["code"] == code, answer
        assert "Traceback" not in answer["error"]["message"]
        assert health(server)["status"] == "ok"
    with pytest.raises(openai.BadRequestError) as e:  # the official client sees the same objects
        client.chat.completions.create(model=MODEL, messages=good["messages"],
                                       extra_body={"oprm": {"context": ep.context, "idk_fallback": "guess"}})
    assert e.value.status_code == 400 and "idk_fallback" in e.value.message
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=good["messages"])
    assert client.chat.completions.create(**{k: v for k, v in good.items() if k != "oprm"},
                                          extra_body={"oprm": good["oprm"]}).choices[0].message.content is not None


def test_disconnect_stops_decode_and_full_queue_is_refused(server, client, engine):
    """Streams that would decode 100000 tokens fill every running slot and are dropped after a few pieces: their
    decodes stop (the jobs queued behind them finish at once). While they run, the queue fills and the next request
    gets a 503 error object with Retry-After."""
    ep = ar(10, 5)
    before = health(server)
    slots = before["max_running"]
    long_body = {"model": MODEL, "messages": [{"role": "user", "content": ep.question}], "stream": True,
                 "max_tokens": 100_000, "oprm": {"context": ep.context, "ignore_eos": True}}
    streams = []
    for _ in range(slots):
        conn = http.client.HTTPConnection("127.0.0.1", server, timeout=60)
        conn.request("POST", "/v1/chat/completions", body=json.dumps(long_body),
                     headers={"Content-Type": "application/json"})
        stream = conn.getresponse()
        assert stream.status == 200
        for _ in range(3):
            assert stream.fp.readline()  # pieces are arriving: the long decode runs
        streams.append(conn)
    assert health(server)["running"] == slots
    quick = {"model": MODEL, "messages": [{"role": "user", "content": ep.question}],
             "oprm": {"context": ep.context}}
    results = []
    waiting = [threading.Thread(target=lambda: results.append(request(server, "POST", "/v1/chat/completions", quick)))
               for _ in range(MAX_QUEUE)]
    for t in waiting:
        t.start()
    deadline = time.time() + 30
    while health(server)["queued"] < MAX_QUEUE:
        assert time.time() < deadline, health(server)
        time.sleep(0.05)
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=60)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(quick), headers={"Content-Type": "application/json"})
    refused = conn.getresponse()
    assert refused.status == 503 and refused.getheader("Retry-After") == "1"
    assert json.loads(refused.read())["error"]["code"] == "queue_full"
    conn.close()
    for conn in streams:  # the clients go away mid-stream
        conn.close()
    for t in waiting:  # the cancelled streams free the slots (counted below), so the queued requests finish
        t.join(60)
    assert [s for s, _ in results] == [200] * MAX_QUEUE
    after = health(server)
    assert after["cancelled"] == before["cancelled"] + slots and after["rejected"] == before["rejected"] + 1
    assert not after["busy"] and after["queued"] == 0


def test_disconnect_while_waiting_for_a_plain_response(server):
    """A non-streaming client that leaves is noticed too: its job is stopped."""
    ep = ar(11, 5)
    before = health(server)["cancelled"]
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": ep.question}], "max_tokens": 100_000,
                       "oprm": {"context": ep.context, "ignore_eos": True}}).encode()
    sock = socket.create_connection(("127.0.0.1", server))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    deadline = time.time() + 30
    while not health(server)["busy"]:
        assert time.time() < deadline
        time.sleep(0.05)
    sock.close()
    while health(server)["cancelled"] == before or health(server)["busy"]:
        assert time.time() < deadline, health(server)
        time.sleep(0.05)


def test_completions_streaming_and_plain_text(client, engine):
    from oprm.prompts import bos_prefix

    ep = ar(12)
    ext = {"context": ep.context, "template": AR_TEMPLATE, "answer_prefix": ep.answer_prefix}
    pieces = [c.choices[0].text for c in client.completions.create(model=MODEL, prompt=ep.question, stream=True,
                                                                   extra_body={"oprm": ext}) if c.choices]
    assert "".join(pieces) == reference(engine, ep).text
    prompt = "The code of the amber falcon is"
    ids = bos_prefix(engine.tokenizer) + engine.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ref = engine.generate(prefix_ids=[], context_ids=ids, suffix_ids=[], mode="vanilla", max_new_tokens=MAX_NEW)
    assert client.completions.create(model=MODEL, prompt=prompt).choices[0].text == ref.text


def test_second_question_on_a_document_uses_the_engine_cache(client):
    """The server keeps no cache of its own; the engine's document-state cache (``result.document``) serves a
    repeated document, and ``explain`` reports its record."""
    ep = ar(13)
    first = ask_server(client, ep, oprm={"explain": True}).model_extra["oprm"]
    assert first["document"]["cache"] == "miss"
    second = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "What is the text?"}],
                                            extra_body={"oprm": {"context": ep.context, "template": AR_TEMPLATE,
                                                                 "explain": True}}).model_extra["oprm"]
    assert second["document"]["cache"] == "hit"


def test_metrics_in_prometheus_format(server, client, engine):
    """/metrics parses as Prometheus text; requests counted agree with /health; eight requests at once share decode
    steps (the decode forwards hold more rows than there were forwards)."""
    from prometheus_client.parser import text_string_to_metric_families

    episodes = [ar(300 + i, 21) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda ep: ask_server(client, ep), episodes))
    status, page = request(server, "GET", "/metrics")
    assert status == 200
    samples = {}
    for family in text_string_to_metric_families(page):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    h = health(server)
    assert samples[("oprm_requests_total", (("code", ""), ("outcome", "completed")))] == h["completed"]
    assert samples.get(("oprm_requests_total", (("code", "queue_full"), ("outcome", "rejected"))), 0) == h["rejected"]
    assert samples[("oprm_queue_depth", ())] == h["queued"] and samples[("oprm_queue_capacity", ())] == MAX_QUEUE
    assert samples[("oprm_time_to_first_token_seconds_count", ())] == h["completed"]
    assert samples[("oprm_output_tokens_total", ())] > 0
    assert samples[("oprm_document_cache_misses_total", ())] >= 8 and samples[("oprm_document_cache_bytes", ())] > 0
    steps = samples[("oprm_forward_rows_count", (("kind", "step"),))]
    rows = samples[("oprm_forward_rows_sum", (("kind", "step"),))]
    assert h["batching"] and rows > steps
    assert samples[("oprm_batched_steps_total", ())] > 0  # some decode step served several requests in one forward
    assert 0 <= samples[("oprm_reused_batch_steps_total", ())] <= samples[("oprm_batched_steps_total", ())]
