"""A real `oprm serve` process with API keys, faced with hostile and careless clients (issue 22).

Keys (401), a foreign Host (403), non-JSON bodies (415), server paths and server-wide options in a request (400,
nothing written), numbers past every limit, lone surrogates and format-spec templates (4xx, also when streaming),
a taken port (one line, before any URL); and a property-based fuzz test: >= 1,000 generated malformed requests at the
same process, every answer a 4xx error object, the server alive, its memory flat, a good request answered as before.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import oprm  # noqa: E402
from oprm.models import resolve_model  # noqa: E402
from oprm.serve.protocol import server_only_options  # noqa: E402
from oprm.synthetic.ar import AR_TEMPLATE, make_ar_episode  # noqa: E402
from servers import running_server, subprocess_env  # noqa: E402

MODEL = "oprm-ar-mamba2"
KEYS = ("key-one", "key-two")
CHAT = "/v1/chat/completions"
TOKENS_LIMIT = 64
FUZZ_REQUESTS = 1000


class Client:
    """Raw HTTP on one keep-alive connection (reopened when the server closes it)."""

    def __init__(self, port: int):
        self.port, self.conn = port, None

    def send(self, method: str, path: str, body=None, headers: dict | None = None, key: str | None = KEYS[0]):
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        base = {"Content-Type": "application/json"}
        if key is not None:
            base["Authorization"] = f"Bearer {key}"
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            try:
                self.conn.request(method, path, body=data, headers={**base, **(headers or {})})
                response = self.conn.getresponse()
                raw = response.read()
                break
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        if response.getheader("connection", "").lower() == "close":
            self.conn.close()
            self.conn = None
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw


MODEL_PATH = resolve_model(MODEL)[0]  # the shipped model's folder: served by its absolute path, seen as MODEL


def serve(args: list[str], env: dict):
    """A real `oprm serve` process on a free port: (port, process); its output must hold no traceback."""
    return running_server(args, env)


@pytest.fixture(scope="module")
def server():
    # --api-key flags win over $OPRM_API_KEY (set here to a key that must then be refused)
    args = ["--model", MODEL_PATH, "--chunk-size", "128", "--max-new-tokens", "16", "--max-tokens-limit",
            str(TOKENS_LIMIT), "--max-body-mb", "1", "--api-key", KEYS[0], "--api-key", KEYS[1]]
    with serve(args, {**subprocess_env(), "OPRM_API_KEY": "env-key"}) as running:
        yield running


@pytest.fixture(scope="module")
def web(server):
    return Client(server[0])


def good_body(seed: int = 1) -> dict:
    ep = make_ar_episode(seed, 8)
    return {"model": MODEL, "messages": [{"role": "user", "content": ep.question}], "max_tokens": 16,
            "oprm": {"context": ep.context, "template": AR_TEMPLATE, "answer_prefix": ep.answer_prefix}}


def is_error_object(answer, status: int) -> bool:
    return (isinstance(answer, dict) and set(answer.get("error", {})) == {"message", "type", "param", "code"}
            and answer["error"]["code"] is not None and 400 <= status < 500)


def test_api_keys(server, web):
    port = server[0]
    for key in (None, "wrong", KEYS[0] + "x", "", "env-key"):
        status, answer = web.send("GET", "/v1/models", key=key)
        assert status == 401 and is_error_object(answer, status) and answer["error"]["code"] == "invalid_api_key"
        status, answer = web.send("POST", CHAT, good_body(), key=key)
        assert status == 401
    assert web.send("GET", "/v1/models", headers={"Authorization": f"Basic {KEYS[0]}"})[0] == 401
    assert web.send("GET", "/health", key=None)[0] == 200  # open, for load balancers
    for key in KEYS:
        assert web.send("GET", "/v1/models", key=key)[0] == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0).models.list()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEYS[1], max_retries=0, timeout=60)
    body = good_body()
    answer = client.chat.completions.create(model=MODEL, messages=body["messages"], max_tokens=16,
                                            extra_body={"oprm": body["oprm"]})
    assert answer.choices[0].message.content == web.send("POST", CHAT, body)[1]["choices"][0]["message"]["content"]


def test_api_keys_from_the_environment():
    """$OPRM_API_KEY (comma-separated) on a real server started without --api-key."""
    env = {**subprocess_env(), "OPRM_API_KEY": "env-one, env-two"}
    with serve(["--model", MODEL, "--chunk-size", "128", "--max-new-tokens", "4"], env) as (port, _):
        web = Client(port)
        for key in (None, "wrong", "env-one, env-two", "env-one,env-two", "env"):
            status, answer = web.send("GET", "/v1/models", key=key)
            assert status == 401 and answer["error"]["code"] == "invalid_api_key", key
            assert web.send("POST", CHAT, good_body(), key=key)[0] == 401
        assert web.send("GET", "/health", key=None)[0] == 200
        for key in ("env-one", "env-two"):
            assert web.send("GET", "/v1/models", key=key)[0] == 200
        status, answer = web.send("POST", CHAT, good_body(), key="env-two")
        assert status == 200 and answer["choices"][0]["message"]["content"]


def test_a_bad_key_names_where_it_came_from(monkeypatch):
    from oprm import OPRMUsageError
    from oprm.serve import api_keys

    monkeypatch.setenv("OPRM_API_KEY", "two words")
    with pytest.raises(OPRMUsageError, match=r"^\$OPRM_API_KEY must be"):
        api_keys(None)
    with pytest.raises(OPRMUsageError, match="^--api-key must be"):
        api_keys(["two words"])


def test_models_show_a_name_never_the_server_path(web):
    """Served by its absolute folder, the model is seen by its name: /v1/models, /health, errors hold no path."""
    status, listing = web.send("GET", "/v1/models")
    assert status == 200 and [m["id"] for m in listing["data"]] == [MODEL]
    assert all(value == MODEL for value in (listing["data"][0]["id"], listing["data"][0]["root"]))
    answers = [listing, web.send("GET", f"/v1/models/{MODEL}")[1], web.send("GET", "/health", key=None)[1],
               web.send("GET", "/v1/models/other")[1], web.send("POST", CHAT, {**good_body(), "model": "other"})[1]]
    assert answers[2]["model"] == MODEL and answers[3]["error"]["code"] == "model_not_found"
    for answer in answers:
        text = json.dumps(answer)
        assert os.path.dirname(MODEL_PATH) not in text and os.sep + MODEL not in text, text
    # the path itself stays an accepted alias for clients that send it
    assert web.send("POST", CHAT, {**good_body(), "model": MODEL_PATH})[0] == 200


def test_model_names_hide_local_paths(tmp_path):
    from oprm.serve import model_names

    folder = tmp_path / "my-model"
    folder.mkdir()
    assert model_names(str(folder), None) == ["my-model", str(folder)]
    assert model_names(str(folder), "team-model") == ["team-model", "my-model", str(folder)]
    assert model_names("./models/m.gguf", None)[0] == "m.gguf" and model_names("~/m/", None)[0] == "m"
    assert model_names("HuggingFaceTB/SmolLM2-135M", None) == ["HuggingFaceTB/SmolLM2-135M", "SmolLM2-135M"]
    assert model_names(MODEL, None)[0] == MODEL


def test_origin_and_media_type(web):
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "10.0.0.1"):
        status, answer = web.send("GET", "/v1/models", headers={"Host": host})
        assert status == 403 and answer["error"]["code"] == "host_not_allowed", host
    assert web.send("GET", "/health", headers={"Host": "evil.example"})[0] == 403
    for host in ("localhost:1234", "127.0.0.1", "[::1]:80", "LOCALHOST."):
        assert web.send("GET", "/v1/models", headers={"Host": host})[0] == 200, host
    body = json.dumps(good_body()).encode()
    for media in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""):
        status, answer = web.send("POST", CHAT, body, headers={"Content-Type": media})
        assert status == 415 and answer["error"]["code"] == "unsupported_media_type", media
    assert web.send("POST", CHAT, body, headers={"Content-Type": "application/json; charset=utf-8"})[0] == 200


def test_server_options_refused_and_nothing_written(web, tmp_path):
    target = tmp_path / "cache-here"
    for name, value in [("cache_dir", str(target)), ("cache_dir", "/"), ("document_cache_bytes", 0),
                        ("max_batch_tokens", 1), ("threads", 64), ("device", "cuda"), ("model", "other")]:
        body = good_body()
        body["oprm"][name] = value
        status, answer = web.send("POST", CHAT, body)
        assert status == 400 and answer["error"]["param"] == f"oprm.{name}", answer
        assert answer["error"]["code"] == "server_option"
    assert not target.exists() and not any(tmp_path.iterdir())


@pytest.mark.parametrize("stream", [False, True])
def test_unbounded_and_malformed_values_are_4xx_before_any_token(web, stream):
    body = {**good_body(), "stream": stream}
    raw = json.dumps(body)
    cases = [json.dumps({**body, "max_tokens": 2**70}), json.dumps({**body, "max_tokens": TOKENS_LIMIT + 1}),
             raw.replace('"max_tokens": 16', '"max_tokens": ' + "9" * 5000),
             raw.replace('"max_tokens": 16', '"max_tokens": NaN'),
             raw.replace('"max_tokens": 16', '"temperature": 1e999'),
             json.dumps({**body, "oprm": {**body["oprm"], "context": "\ud800 lone"}}),
             json.dumps({**body, "messages": [{"role": "user", "content": "\udc00"}]}),
             json.dumps({**body, "oprm": {**body["oprm"], "template": "{context} {input:>20000}"}}),
             json.dumps({**body, "oprm": {**body["oprm"], "template": "{context} {input.__class__}"}}),
             json.dumps({**body, "oprm": {**body["oprm"], "answer_prefix": "{input[0]}"}})]
    for case in filter(None, cases):
        started = time.process_time()
        status, answer = web.send("POST", CHAT, case.encode("utf-8", "surrogatepass"))
        assert 400 <= status < 500 and is_error_object(answer, status), (case[-120:], answer)
        assert time.process_time() - started < 5  # nothing ran: the client spent no time (not a server timing)
    status, answer = web.send("POST", CHAT, {**body, "max_tokens": TOKENS_LIMIT,
                                              "oprm": {**body["oprm"], "ignore_eos": True}})
    assert status == 200


def test_taken_port_is_one_line_before_any_url(server):
    port = server[0]
    run = subprocess.run([sys.executable, "-m", "oprm", "serve", "--model", MODEL, "--port", str(port)],
                         env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    lines = (run.stdout + run.stderr).strip().splitlines()
    assert len(lines) == 1 and str(port) in lines[0] and "http://" not in lines[0], lines


def test_unusable_cache_dir_is_one_line_before_any_url(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    run = subprocess.run([sys.executable, "-m", "oprm", "serve", "--model", MODEL, "--port", "0",
                          "--cache-dir", str(blocker / "docs")], env=subprocess_env(), capture_output=True, text=True,
                         timeout=120)
    assert run.returncode != 0
    lines = (run.stdout + run.stderr).strip().splitlines()
    assert len(lines) == 1 and "--cache-dir" in lines[0] and "http://" not in lines[0], lines


# --- fuzzing ------------------------------------------------------------------------------------------------------
def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1])


_junk = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                  max_size=3), max_leaves=8)
_not_int = st.one_of(st.text(max_size=5), st.floats(allow_nan=False), st.booleans(),
                     st.lists(st.integers(), max_size=2), st.integers(max_value=0),
                     st.integers(min_value=TOKENS_LIMIT + 1))
_not_text = st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.dictionaries(st.text(max_size=3),
                                                                                               st.integers(),
                                                                                               max_size=2))
_bad_template = st.one_of(
    st.builds(lambda spec: "{context} {input:" + spec + "}", st.text(min_size=1, max_size=8).filter(
        lambda s: "{" not in s and "}" not in s)),
    st.builds(lambda attr: "{context} {input." + attr + "}", st.from_regex(r"[a-z_]{1,8}", fullmatch=True)),
    st.just("{context} {input[0]}"), st.just("{context} {input!r}"), st.just("{context} {"),
    st.just("no placeholder"), st.just("{context}{context}"))


def _set(path: tuple, value):
    def mutate(body: dict) -> dict:
        target = body
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return body
    return mutate


_mutations = st.one_of(
    st.builds(lambda v: _set(("max_tokens",), v), _not_int),
    st.builds(lambda v: _set(("temperature",), v), st.one_of(st.floats(min_value=2.01, allow_infinity=False),
                                                             st.floats(max_value=-0.01, allow_infinity=False),
                                                             st.text(max_size=4), st.booleans())),
    st.builds(lambda v: _set(("top_p",), v), st.one_of(st.floats(min_value=1.01, allow_infinity=False),
                                                       st.floats(max_value=0, allow_infinity=False))),
    st.builds(lambda v: _set(("messages",), v), st.one_of(st.just([]), _not_text,
                                                          st.lists(_not_text, min_size=1, max_size=2))),
    st.builds(lambda v: _set(("messages", 0, "role"), v), st.text(max_size=8).filter(
        lambda r: r not in ("user", "system", "developer", "assistant"))),
    st.builds(lambda v: _set(("messages", 0, "content"), v), st.one_of(st.integers(), st.booleans(),
                                                                       st.lists(_not_text, min_size=1, max_size=2))),
    st.builds(lambda v: _set(("model",), v), st.one_of(_not_text, st.text(max_size=10).filter(lambda m: m != MODEL))),
    st.builds(lambda v: _set(("stop",), v), st.one_of(st.lists(st.text(min_size=1, max_size=3), min_size=5,
                                                               max_size=7), st.just(""), _not_text)),
    st.builds(lambda v: _set(("n",), v), st.integers(min_value=2)),
    st.builds(lambda k, v: _set(("oprm", k), v), st.sampled_from(sorted(server_only_options())), _junk),
    st.builds(lambda k, v: _set(("oprm", k), v), st.text(min_size=1, max_size=12).filter(
        lambda k: k not in set(oprm.OPRMConfig.names()) | set(server_only_options()) | {
            "context", "template", "answer_prefix", "gold_text", "top_k", "repetition_penalty", "do_sample",
            "ignore_eos", "explain"}), _junk),
    st.builds(lambda k, v: _set(("oprm", k), v), st.sampled_from(["chunk_size", "overlap", "lookahead_tokens",
                                                                  "num_decode", "top_k_tokens", "top_k"]),
              st.one_of(st.integers(max_value=-1), st.text(max_size=3), st.floats(allow_nan=False))),
    st.builds(lambda k, v: _set(("oprm", k), v), st.sampled_from(["selection", "chunking", "decode", "mode",
                                                                  "idk_fallback"]),
              st.text(max_size=10).filter(lambda s: s not in ("support", "tokens", "one", "oprm", "answer"))
              .filter(lambda s: s not in oprm.config.SELECTIONS + oprm.config.DECODES + oprm.config.MODES
                      + oprm.config.IDK_FALLBACKS + ("sentences", "lines"))),
    st.builds(lambda v: _set(("oprm", "template"), v), _bad_template),
    st.builds(lambda v: _set(("oprm", "context"), v), st.one_of(_not_text, st.just("  "))),
    st.builds(lambda v: _set(("oprm",), v), st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(),
                                                      st.text(max_size=4), st.lists(st.integers(), max_size=2))),
)
_raw_bodies = st.one_of(
    st.binary(max_size=40),
    st.builds(lambda n: ('{"model": "%s", "messages": [{"role": "user", "content": "q"}], "max_tokens": %s}'
                         % (MODEL, n)).encode(), st.sampled_from(["9" * 5000, "NaN", "-Infinity", "1e999", "--1"])),
    st.builds(lambda s: ('{"model": "%s", "messages": [{"role": "user", "content": "%s"}]}' % (MODEL, s)).encode(),
              st.sampled_from(["\\ud800", "\\udfff", "\\ud83d", "\\ud800\\ud800"])),
    st.builds(lambda depth: b'{"model": ' + b"[" * depth, st.integers(min_value=1, max_value=3000)),
)


def test_fuzz_malformed_requests(server, web):
    port, proc = server
    good = good_body(3)
    status, before = web.send("POST", CHAT, good)
    assert status == 200
    warmup = None
    sent = {"n": 0, "statuses": {}}

    def check(status, answer):
        sent["n"] += 1
        sent["statuses"][status] = sent["statuses"].get(status, 0) + 1
        assert 400 <= status < 500 and is_error_object(answer, status), (status, answer)

    @settings(max_examples=FUZZ_REQUESTS, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(choice=st.integers(0, 9), mutation=_mutations, raw=_raw_bodies,
           media=st.sampled_from(["text/plain", "application/x-www-form-urlencoded", "", "text/json"]),
           key=st.one_of(st.none(), st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=12).filter(
               lambda k: k not in KEYS)),
           path=st.sampled_from([CHAT, "/v1/completions"]))
    def fuzz(choice, mutation, raw, media, key, path):
        nonlocal warmup
        if choice <= 5:  # one field made wrong
            body = mutation(json.loads(json.dumps(good)))
            check(*web.send("POST", CHAT, json.dumps(body).encode()))
        elif choice <= 7:  # not JSON, bad numbers, surrogates, nesting
            check(*web.send("POST", path, raw))
        elif choice == 8:  # a browser's simple request: not application/json
            check(*web.send("POST", path, json.dumps(good).encode(), headers={"Content-Type": media}))
        else:  # no key or a wrong one
            check(*web.send("POST" if key else "GET", path if key else "/v1/models", good, key=key))
        if sent["n"] == 100:
            warmup = rss_kb(proc.pid)

    fuzz()
    assert sent["n"] >= FUZZ_REQUESTS and proc.poll() is None
    rss = rss_kb(proc.pid)
    assert rss - warmup < 64 * 1024, (warmup, rss)  # kB: flat (allocator noise only), not growing per request
    status, after = web.send("POST", CHAT, good)
    assert status == 200 and after["choices"] == before["choices"] and after["usage"] == before["usage"]
    print(f"\nfuzz: {sent['n']} requests, statuses {sorted(sent['statuses'].items())}, RSS {warmup} -> {rss} kB")
