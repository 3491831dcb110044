"""Serve: the official openai client against a real server on loopback, tiny LoRA model behind it."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from tiny import QUESTION, train_tiny_adapter

from blocks import serve
from blocks.chat import GenParams, build_messages, generate_reply, load_model, unload_model
from blocks.serve import create_app, start_server

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KEY = "test-key-0123456789"


@pytest.fixture(scope="module")
def loaded(tiny_model_dir, tmp_path_factory):
    adapter = train_tiny_adapter(
        tiny_model_dir, tmp_path_factory.mktemp("run") / "serve-run" / "adapter", run_id="serve-run"
    )
    loaded = load_model(adapter_dir=adapter)
    yield loaded
    unload_model(loaded)


@pytest.fixture(scope="module")
def server(loaded):
    with start_server(create_app(loaded, api_key=KEY, max_new_tokens=16)) as running:
        yield running


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0, timeout=120)


def expected_answer(loaded, max_new_tokens: int = 12) -> str:
    params = GenParams(temperature=0, max_new_tokens=max_new_tokens, repetition_penalty=1.0)
    return generate_reply(loaded, build_messages([], QUESTION), params).text


def ask(client, model: str, **kwargs):
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0,
        max_tokens=12,
        extra_body={"repetition_penalty": 1.0},
        **kwargs,
    )


def test_lists_the_served_model(client, loaded):
    assert [m.id for m in client.models.list()] == [loaded.name] == ["serve-run/adapter"]


def test_answer_matches_the_in_app_chat(client, loaded):
    reply = ask(client, loaded.name)
    assert reply.choices[0].message.content == expected_answer(loaded)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 12 and reply.usage.prompt_tokens > 0


def test_streaming_delivers_the_same_answer_piece_by_piece(client, loaded):
    chunks = list(ask(client, loaded.name, stream=True, stream_options={"include_usage": True}))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1
    assert "".join(pieces) == expected_answer(loaded)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 12


def test_ten_concurrent_clients_are_all_answered(client, loaded):
    def one(i: int) -> str:
        kwargs = {"stream": True} if i % 2 else {}
        reply = ask(client, loaded.name, **kwargs)
        if i % 2:
            return "".join(c.choices[0].delta.content or "" for c in reply if c.choices)
        return reply.choices[0].message.content

    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(one, range(10)))
    assert answers == [expected_answer(loaded)] * 10


def test_wrong_or_missing_key_is_refused(server, loaded):
    bad = openai.OpenAI(base_url=server.url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="API key"):
        ask(bad, loaded.name)
    assert httpx.get(f"{server.url}/models").status_code == 401


def test_bad_requests_get_clear_errors(client, loaded):
    with pytest.raises(openai.NotFoundError, match="serves 'serve-run/adapter'"):
        ask(client, "gpt-4o")
    with pytest.raises(openai.BadRequestError, match="messages is empty"):
        client.chat.completions.create(model=loaded.name, messages=[])
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(
            model=loaded.name, messages=[{"role": "user", "content": "hi"}], temperature=7
        )


def test_cli_refuses_public_address_without_key(capsys):
    assert serve.main(["--host", "0.0.0.0", "--model", "models/none"]) == 2
    assert "--api-key" in capsys.readouterr().err


def test_answers_the_trained_question_differently_from_base(client, loaded):
    """A campus front end sees the fine-tuned answer, not the base model's."""
    base = generate_reply(
        loaded,
        build_messages([], QUESTION),
        GenParams(temperature=0, max_new_tokens=12, repetition_penalty=1.0),
        use_adapter=False,
    ).text
    assert ask(client, loaded.name).choices[0].message.content != base


# ---------------------------------------------------------------- issue 16, item 12: hostile requests

# Bodies of the right JSON but the wrong shape or value: each field the server reads, wrong in type, range
# or finiteness. Raw JSON text, so that 1e400 (inf to Python's json) and NaN reach the server as sent.
BAD_FIELDS = [
    '"max_tokens": 1e400',
    '"max_tokens": 12.5',
    '"max_tokens": true',
    '"max_tokens": -1',
    '"max_tokens": 1000000000000',
    '"max_completion_tokens": "12"',
    '"n": "x"',
    '"n": 2',
    '"temperature": "hot"',
    '"temperature": NaN',
    '"temperature": 1e400',
    '"top_p": [1]',
    '"repetition_penalty": -Infinity',
    '"stream": "yes"',
    '"stream_options": "yes"',
    '"stream_options": {"include_usage": "yes"}',
]
BAD_MESSAGES = ['["hi"]', '"hi"', "[]", '[{"role": 5, "content": "hi"}]', '[{"role": "user", "content": 5}]',
                '[{"role": "user", "content": [5]}]', '[{"role": "robot", "content": "hi"}]', "null",
                '[{"role": "assistant", "content": "hi"}]']  # fmt: skip
BAD_BODIES = ["[]", '"text"', "{", "[" * 100_000 + "]" * 100_000, '{"model": 5, "messages": []}']


def post_raw(server, body: str | bytes, headers: dict | None = None, timeout: float = 60) -> httpx.Response:
    return httpx.post(
        f"{server.url}/chat/completions",
        content=body.encode() if isinstance(body, str) else body,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", **(headers or {})},
        timeout=timeout,
    )


def assert_clear_refusal(response: httpx.Response, status: int = 400) -> str:
    assert response.status_code == status, response.text[:500]
    message = response.json()["error"]["message"]
    assert message and "Traceback" not in response.text and 'File "' not in response.text
    return message


@pytest.mark.parametrize("field", BAD_FIELDS)
def test_a_field_of_the_wrong_type_or_range_gets_400_naming_it(server, loaded, field):
    ok = '{"role": "user", "content": "hi"}'
    body = f'{{"model": "{loaded.name}", "messages": [{ok}], {field}}}'
    name = field.split('"')[1]
    assert name in assert_clear_refusal(post_raw(server, body))


@pytest.mark.parametrize("messages", BAD_MESSAGES)
def test_messages_of_the_wrong_shape_get_400(server, loaded, messages):
    body = f'{{"model": "{loaded.name}", "messages": {messages}}}'
    assert "message" in assert_clear_refusal(post_raw(server, body)).lower()


@pytest.mark.parametrize("body", BAD_BODIES, ids=["array", "string", "cut", "nested", "model-int"])
def test_a_body_that_is_not_a_request_gets_400(server, body):
    response = post_raw(server, body)
    assert response.status_code in (400, 404)  # 404: a model that is not the served one
    assert_clear_refusal(response, response.status_code)


def test_an_oversized_body_gets_413_and_a_prompt_beyond_the_context_400(server, loaded):
    huge = json.dumps({"model": loaded.name, "messages": [{"role": "user", "content": "x" * 2_000_000}]})
    assert "bytes" in assert_clear_refusal(post_raw(server, huge), 413)
    chunked = post_raw(server, iter([huge.encode()]))  # no Content-Length: counted while read
    assert_clear_refusal(chunked, 413)
    # The tiny model's context is 512 tokens: 300 words plus 300 new tokens do not fit, nor 20,000 chars.
    long = {
        "model": loaded.name,
        "messages": [{"role": "user", "content": "library " * 300}],
        "max_tokens": 300,
    }
    assert "context" in assert_clear_refusal(post_raw(server, json.dumps(long)))
    long["messages"][0]["content"] = "图" * 20_000
    assert "context" in assert_clear_refusal(post_raw(server, json.dumps(long)), 413)
    assert ask(
        openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0), loaded.name
    ).choices  # still up


@pytest.mark.parametrize("key", ["ключ-密钥-0123456789", "clé-secrète-überall-0123"])
def test_a_non_ascii_api_key_works(loaded, key):
    with start_server(create_app(loaded, api_key=key, max_new_tokens=4)) as running:
        body = json.dumps({"model": loaded.name, "messages": [{"role": "user", "content": "hi"}]})
        url = f"{running.url}/chat/completions"
        good = httpx.post(url, content=body, headers={"Authorization": b"Bearer " + key.encode()}, timeout=60)
        assert good.status_code == 200, good.text
        bad = httpx.post(
            url, content=body, headers={"Authorization": b"Bearer " + key[:-1].encode()}, timeout=60
        )
        latin = httpx.post(url, content=body, headers={"Authorization": b"Bearer " + key.encode("utf-8")[1:]})
    assert bad.status_code == latin.status_code == 401


@pytest.fixture(scope="module")
def long_server(tmp_path_factory):
    """The tiny model with a 16k context behind a server: a reply of 8192 tokens takes it 10+ seconds."""
    from tiny import build_tiny_model

    folder = build_tiny_model(tmp_path_factory.mktemp("long") / "tiny-long")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 16384}))
    model = load_model(folder)
    with start_server(create_app(model, max_new_tokens=16)) as running:
        yield running, model.name
    unload_model(model)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_hangs_up_stops_its_generation(long_server, stream):
    """The next client is answered at once, not after the 8192 tokens nobody will read."""
    import time

    running, name = long_server
    body = {"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8192,
            "temperature": 0, "repetition_penalty": 1.0, "stream": stream}  # fmt: skip
    url = f"{running.url}/chat/completions"
    if stream:
        with httpx.stream("POST", url, json=body, timeout=30) as response:
            lines = response.iter_lines()
            assert [next(lines) for _ in range(6)]  # the reply is coming: hang up
    else:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url, json=body, timeout=1.0)
    started = time.monotonic()
    quick = httpx.post(url, json={**body, "max_tokens": 1, "stream": False}, timeout=60)
    assert quick.status_code == 200 and quick.json()["usage"]["completion_tokens"] == 1
    assert time.monotonic() - started < 5
