"""Serve: the official openai client against a real server on loopback, tiny LoRA model behind it."""

from __future__ import annotations

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
