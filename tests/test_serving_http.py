"""`edgespool serve` over real HTTP with the official `openai` client (and raw http.client for bad requests):

* /health answers 503 while the model loads, then 200; /v1/models lists the bundle;
* chat and text completions, non-streaming and streaming (SSE ending ``data: [DONE]``), usage and timings;
  the served prompt is the bundle's template rendered exactly as transformers' apply_chat_template renders it
  (the greedy reply equals Model.generate on the ids of transformers' rendering);
* bad requests -- malformed JSON, wrong types, unknown model, huge max_tokens, non-UTF-8, an oversize body, no
  messages -- get 4xx in OpenAI's error shape and the server stays up; a full queue gets 429;
* a client that disconnects mid-stream cancels its generation (the metrics stop counting its tokens);
* /metrics parses as Prometheus text (prometheus_client's parser).
"""
from __future__ import annotations

import json
import threading
import time

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from edgespool import load  # noqa: E402

from serving_common import Server, smol_bundle  # noqa: E402

MSGS = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return smol_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def server(bundle, tmp_path_factory):
    srv = Server(bundle, "--parallel", "2", "--queue", "1", "--ctx-size", "2048", "--max-body", "64KiB",
                 log=tmp_path_factory.mktemp("serve") / "serve.log")
    srv.seen = srv.wait()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model(bundle):
    m = load(bundle)
    yield m
    m.close()


def metrics(server) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    status, body = server.request("GET", "/metrics")
    assert status == 200
    return {s.name: s.value for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}


def test_health_503_while_loading_then_ok(server):
    assert server.seen[0] == 503 and server.seen[-1] == 200
    status, body = server.request("GET", "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"


def test_models(client, bundle):
    ids = [m.id for m in client.models.list()]
    assert ids == [bundle.name]


def test_chat_prompt_is_transformers_rendering(client, model, bundle):
    pytest.importorskip("transformers")
    from test_chat_template import hf_tokenizer

    tmpl = model.chat_template
    ref_text = hf_tokenizer(tmpl.source, model._chat_section()["special_tokens"]).apply_chat_template(
        MSGS, tokenize=False, add_generation_prompt=True)
    ids = model.tokenizer.encode_rendered(ref_text)
    want = "".join(model.generate(ids, 24))
    r = client.chat.completions.create(model=bundle.name, messages=MSGS, max_tokens=24, temperature=0)
    assert r.usage.prompt_tokens == len(ids)
    assert r.choices[0].message.content == want and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream_equals_non_stream(client, bundle):
    full = client.chat.completions.create(model=bundle.name, messages=MSGS, max_tokens=20, temperature=0)
    chunks = list(client.chat.completions.create(model=bundle.name, messages=MSGS, max_tokens=20, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_completions_and_stop(client, model, bundle):
    want = "".join(model.generate("def fibonacci(n):", 20))
    r = client.completions.create(model=bundle.name, prompt="def fibonacci(n):", max_tokens=20, temperature=0)
    assert r.choices[0].text == want and r.usage.completion_tokens == 20 and r.choices[0].finish_reason == "length"
    stop = want.strip().split()[1]
    r = client.completions.create(model=bundle.name, prompt="def fibonacci(n):", max_tokens=20, temperature=0,
                                  stop=[stop])
    assert r.choices[0].text == want[:want.index(stop)] and r.choices[0].finish_reason == "stop"
    s = list(client.completions.create(model=bundle.name, prompt="def fibonacci(n):", max_tokens=20, temperature=0,
                                       stream=True))
    assert "".join(c.choices[0].text for c in s) == want


def test_sse_wire_format(server, bundle):
    body = json.dumps({"model": bundle.name, "prompt": "Hello", "max_tokens": 4, "stream": True}).encode()
    status, raw = server.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    events = [e for e in raw.decode().split("\n\n") if e]
    assert status == 200 and all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    last = json.loads(events[-2][6:])
    assert last["choices"][0]["finish_reason"] in ("stop", "length") and "timings" in last


def test_sampling_seed_reproducible(client, bundle):
    kw = dict(model=bundle.name, prompt="Once upon a time", max_tokens=16, temperature=1.0, top_p=0.9, seed=7,
              extra_body={"top_k": 20})
    a, b = client.completions.create(**kw), client.completions.create(**kw)
    assert a.choices[0].text == b.choices[0].text


BAD = [
    (b"{not json", 400, "not valid JSON"),
    (b"\xff\xfe{}", 400, "not valid UTF-8"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (json.dumps({"messages": []}).encode(), 400, "'messages' must be a non-empty list"),
    (json.dumps({"messages": [{"role": "user", "content": 5}]}).encode(), 400, "content must be a string"),
    (json.dumps({"messages": MSGS, "temperature": "hot"}).encode(), 400, "'temperature' must be a number"),
    (json.dumps({"messages": MSGS, "max_tokens": 1.5}).encode(), 400, "'max_tokens' must be an integer"),
    (json.dumps({"messages": MSGS, "max_tokens": 10 ** 9}).encode(), 400, "exceed the 1024 positions of a slot"),
    (json.dumps({"messages": MSGS, "model": "gpt-4o"}).encode(), 404, "is not served here"),
    (json.dumps({"messages": MSGS, "n": 3}).encode(), 400, "'n' must be 1"),
    (json.dumps({"messages": MSGS, "content": "x" * 70000}).encode(), 413, "exceeds the limit"),
]


@pytest.mark.parametrize("body,status,msg", BAD, ids=[b[2] for b in BAD])
def test_bad_requests_get_4xx_and_server_stays_up(server, body, status, msg):
    got, raw = server.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    assert got == status, raw
    err = json.loads(raw)["error"]
    assert msg in err["message"] and err["type"]
    assert server.request("GET", "/health")[0] == 200


def test_openai_client_errors(client, bundle):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=MSGS)
    with pytest.raises(openai.BadRequestError, match="exceed"):
        client.completions.create(model=bundle.name, prompt="x", max_tokens=100000)
    with pytest.raises(openai.BadRequestError, match="top_p"):
        client.completions.create(model=bundle.name, prompt="x", top_p=3)


def _stream_in_thread(client, bundle, n, out):
    try:
        for _ in client.completions.create(model=bundle.name, prompt="Write a long essay about the sea.",
                                           max_tokens=n, temperature=0, stream=True,
                                           extra_body={"ignore_eos": True}):
            pass
        out.append("ok")
    except openai.APIStatusError as e:
        out.append(e.status_code)


def test_queue_full_gets_429(server, client, bundle):
    out: list = []
    ts = [threading.Thread(target=_stream_in_thread, args=(client, bundle, 256, out)) for _ in range(3)]
    for t in ts:  # 2 slots + 1 queue place
        t.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until both slots are busy and one request waits
            h = json.loads(server.request("GET", "/health")[1])
            if h["slots_processing"] == 2 and h["queued"] == 1:
                break
            time.sleep(0.05)
        with pytest.raises(openai.RateLimitError):
            client.completions.create(model=bundle.name, prompt="one more", max_tokens=4)
    finally:
        for t in ts:
            t.join()
    assert out == ["ok", "ok", "ok"]


def test_disconnect_cancels_generation(server, bundle):
    import http.client

    before = metrics(server)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    body = json.dumps({"model": bundle.name, "prompt": "Count: 1, 2, 3,", "max_tokens": 900, "stream": True,
                       "temperature": 0})
    conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    for _ in range(3):
        r.fp.readline()
    conn.sock.shutdown(2)
    conn.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        m = metrics(server)
        if (m["edgespool_requests_cancelled_total"] > before["edgespool_requests_cancelled_total"]
                and m["edgespool_slots_processing"] == 0):
            break
        time.sleep(0.1)
    else:
        pytest.fail("the disconnected request was not cancelled")
    assert m["edgespool_slots_processing"] == 0
    n1 = m["edgespool_generated_tokens_total"]
    time.sleep(0.5)
    assert metrics(server)["edgespool_generated_tokens_total"] == n1  # nothing runs on
    assert n1 - before["edgespool_generated_tokens_total"] < 900


def test_metrics_prometheus(server):
    m = metrics(server)
    for k in ("edgespool_requests_total", "edgespool_generated_tokens_total", "edgespool_queue_length",
              "edgespool_time_to_first_token_seconds_count", "edgespool_process_resident_memory_bytes",
              "edgespool_decode_tokens_per_second", "edgespool_slots_total"):
        assert k in m, k
    assert m["edgespool_slots_total"] == 2 and m["edgespool_process_resident_memory_bytes"] > 50e6


def test_ignore_eos_generates_max_tokens(client, bundle):
    short = client.chat.completions.create(model=bundle.name, messages=[{"role": "user", "content": "What is 2+2?"}],
                                           max_tokens=64, temperature=0)
    assert short.choices[0].finish_reason == "stop" and short.usage.completion_tokens < 64
    full = client.chat.completions.create(model=bundle.name, messages=[{"role": "user", "content": "What is 2+2?"}],
                                          max_tokens=64, temperature=0, extra_body={"ignore_eos": True})
    assert full.choices[0].finish_reason == "length" and full.usage.completion_tokens == 64


def test_streamed_serve_plan_names_the_slots(bundle, tmp_path):
    """--memory-budget + --plan: the plan, then the slots carved out of the plan's KV cache; a request over a
    slot is refused with both numbers."""
    log = tmp_path / "serve.log"
    srv = Server(bundle, "--memory-budget", "96MiB", "--max-context", "1024", "--parallel", "4", "--plan", log=log)
    try:
        srv.wait()
        text = log.read_text()
        assert "memory plan for" in text and "KV cache" in text
        assert "slots: 4 slots x 256 KV positions (1024 from the memory plan's KV cache" in text
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="exceed the 256 positions of a slot"):
            c.completions.create(model=bundle.name, prompt="hi", max_tokens=300)
        r = c.completions.create(model=bundle.name, prompt="The capital of France is", max_tokens=8, temperature=0)
        assert r.usage.completion_tokens >= 1
    finally:
        srv.close()
