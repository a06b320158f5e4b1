"""The official OpenAI Python SDK against agv-server: change `base_url`, nothing else.

    tests/sdk/setup.sh
    AGV_BASE_URL=http://127.0.0.1:PORT/v1 AGV_KEY=agv_... \\
        target/sdk-venv/bin/pytest -q tests/sdk

Environment:
  AGV_BASE_URL     base URL the SDK is given (required; the whole module is skipped without it)
  AGV_KEY          a proxy-scope key of a tenant in good standing (required)
  AGV_ADMIN_KEY    an admin-scope key; when set the target is taken to be agv-server and
                   the agv-only checks run (401 for a bad key, 403 for scope, x-agv-call-id)
  AGV_FROZEN_KEY   a key that is frozen by the kill switch        -> 423
  AGV_BROKE_KEY    a key of a tenant whose budget is exhausted    -> 402
  AGV_LIMITED_KEY  a key of a tenant with key_requests_per_minute = 1 -> 429 on the 2nd call
  AGV_MODEL, AGV_EMBEDDING_MODEL  model names (default gpt-4o-mini, text-embedding-3-small)

Without AGV_ADMIN_KEY and the three status keys, the suite can be pointed directly at
the mock upstream (`cargo run --example mock_upstream`) with any key, which checks the
mock speaks the protocol the SDK expects.
"""
import asyncio
import base64
import math
import os
import struct

import openai
import pytest

BASE_URL = os.environ.get("AGV_BASE_URL")
KEY = os.environ.get("AGV_KEY")
ADMIN_KEY = os.environ.get("AGV_ADMIN_KEY")
FROZEN_KEY = os.environ.get("AGV_FROZEN_KEY")
BROKE_KEY = os.environ.get("AGV_BROKE_KEY")
LIMITED_KEY = os.environ.get("AGV_LIMITED_KEY")
MODEL = os.environ.get("AGV_MODEL", "gpt-4o-mini")
EMBEDDING_MODEL = os.environ.get("AGV_EMBEDDING_MODEL", "text-embedding-3-small")

pytestmark = pytest.mark.skipif(
    not (BASE_URL and KEY), reason="set AGV_BASE_URL and AGV_KEY to run the SDK suite"
)
agv_only = pytest.mark.skipif(not ADMIN_KEY, reason="AGV_ADMIN_KEY unset: target is not agv-server")

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name three primary colours."},
]


def client(key=None, **kw):
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout", 30.0)
    return openai.OpenAI(base_url=BASE_URL, api_key=key or KEY, **kw)


def chat(c, **kw):
    return c.chat.completions.create(model=MODEL, messages=MESSAGES, **kw)


# --- the happy paths -------------------------------------------------------------------


def test_chat_completion_returns_a_message_and_consistent_usage():
    resp = chat(client(), user="sdk-suite-user")
    assert resp.object == "chat.completion"
    assert resp.id
    assert resp.model.startswith(MODEL)
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    u = resp.usage
    assert u.prompt_tokens > 0 and u.completion_tokens > 0
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens


def test_streaming_without_include_usage_sends_no_usage():
    stream = chat(client(), stream=True)
    chunks = list(stream)
    assert chunks, "no chunks"
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    assert all(ch.usage is None for ch in chunks), "usage must only arrive when asked for"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes and finishes[-1] in ("stop", "length")


def test_streaming_with_include_usage_ends_with_a_usage_chunk():
    stream = chat(client(), stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(ch.usage is None for ch in chunks[:-1])
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text


def test_streaming_text_matches_the_non_streaming_answer_for_the_same_prompt():
    # The upstream used in tests is deterministic; a real model would not be.
    c = client()
    full = chat(c).choices[0].message.content
    streamed = "".join(
        ch.choices[0].delta.content or "" for ch in chat(c, stream=True) if ch.choices
    )
    assert streamed == full


def test_async_client_streams_too():
    async def run():
        c = openai.AsyncOpenAI(base_url=BASE_URL, api_key=KEY, max_retries=0, timeout=30.0)
        try:
            stream = await c.chat.completions.create(
                model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            )
            chunks = [ch async for ch in stream]
        finally:
            await c.close()
        return chunks

    chunks = asyncio.run(run())
    assert chunks[-1].usage is not None


def test_embeddings_in_float_and_in_the_sdk_default_base64_agree():
    c = client()
    as_float = c.embeddings.create(model=EMBEDDING_MODEL, input=["hello world", "bye"],
                                   encoding_format="float")
    assert len(as_float.data) == 2
    assert [d.index for d in as_float.data] == [0, 1]
    vec = as_float.data[0].embedding
    assert len(vec) > 0 and all(isinstance(x, float) for x in vec)
    assert as_float.usage.prompt_tokens > 0

    # The SDK asks for base64 by default and decodes it itself.
    default = c.embeddings.create(model=EMBEDDING_MODEL, input=["hello world", "bye"])
    assert len(default.data[0].embedding) == len(vec)
    for a, b in zip(default.data[0].embedding, vec):
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6)

    raw = c.with_options().embeddings.with_raw_response.create(
        model=EMBEDDING_MODEL, input="hello world", encoding_format="base64"
    )
    payload = raw.http_response.json()["data"][0]["embedding"]
    floats = struct.unpack(f"<{len(vec)}f", base64.b64decode(payload))
    for a, b in zip(floats, vec):
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6)


def test_models_list():
    models = list(client().models.list())
    assert models
    assert all(m.id and m.object == "model" for m in models)


# --- agv-server specifics --------------------------------------------------------------


@agv_only
def test_proxied_responses_carry_a_call_id():
    raw = client().chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    assert raw.headers.get("x-agv-call-id")
    assert raw.parse().choices[0].message.content


@agv_only
def test_a_bad_key_is_an_authentication_error():
    with pytest.raises(openai.AuthenticationError) as err:
        chat(client("agv_this_key_does_not_exist"))
    assert err.value.status_code == 401
    assert isinstance(err.value.body, dict) and err.value.body.get("message")


@agv_only
def test_a_proxy_key_cannot_use_admin_routes_and_an_admin_key_can():
    with pytest.raises(openai.PermissionDeniedError) as err:
        client().get("/killswitch/status", cast_to=object)
    assert err.value.status_code == 403
    status = client(ADMIN_KEY).get("/killswitch/status", cast_to=object)
    assert isinstance(status, dict)


@pytest.mark.skipif(not BROKE_KEY, reason="AGV_BROKE_KEY unset")
def test_an_exhausted_budget_is_a_402_status_error():
    with pytest.raises(openai.APIStatusError) as err:
        chat(client(BROKE_KEY))
    assert err.value.status_code == 402
    assert isinstance(err.value.body, dict) and err.value.body.get("message")


@pytest.mark.skipif(not FROZEN_KEY, reason="AGV_FROZEN_KEY unset")
def test_a_frozen_key_is_a_423_status_error_also_when_streaming():
    for kw in ({}, {"stream": True}):
        with pytest.raises(openai.APIStatusError) as err:
            result = chat(client(FROZEN_KEY), **kw)
            list(result) if kw else None
        assert err.value.status_code == 423
        assert isinstance(err.value.body, dict) and err.value.body.get("message")


@pytest.mark.skipif(not LIMITED_KEY, reason="AGV_LIMITED_KEY unset")
def test_a_rate_limited_key_is_a_rate_limit_error_with_retry_after():
    c = client(LIMITED_KEY, max_retries=0)
    with pytest.raises(openai.RateLimitError) as err:
        for _ in range(3):  # the limit is 1 request per minute
            chat(c)
    assert err.value.status_code == 429
    assert err.value.response.headers.get("retry-after")
