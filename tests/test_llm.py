"""Chat clients: real SDKs against the loopback fake server, and the local backend on a tiny model."""

from __future__ import annotations

import gc
import logging
import random
import shutil
import threading
import weakref
from itertools import dropwhile

import pytest
from fake_llm_server import FakeLLMServer

from blocks import llm
from blocks.llm import (
    ClientSettings,
    ContentFilterError,
    ContextOverflowError,
    EmptyOutputError,
    LocalClient,
    OpenAIClient,
    Request,
    RetryPolicy,
    SettingsError,
    ZhipuClient,
    backoff_delay,
    chat_with_retry,
    make_client,
    run_requests,
)

HI = [{"role": "user", "content": "hi"}]
FAST = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def server():
    with FakeLLMServer() as s:
        yield s


def both_clients(server):
    return [OpenAIClient(server.url, "m", "sk-open-123"), ZhipuClient("sk-zhipu-456", base_url=server.url)]


def test_both_sdks_talk_to_the_fake_server_over_http(server):
    for client in both_clients(server):
        assert client.chat([{"role": "user", "content": "你好"}]) == "你好"
    assert [r["auth"] for r in server.requests] == ["Bearer sk-open-123", "Bearer sk-zhipu-456"]
    assert server.requests[1]["body"]["model"] == "glm-4-flash"  # Zhipu default


def test_429_waits_as_long_as_retry_after_says(server):
    server.retry_after = "2"
    for client in both_clients(server):
        server.fail_next("429")
        waits = []
        assert chat_with_retry(client, HI, sleep=waits.append) == "hi"
        assert waits == [2.0]


def test_rate_limit_1302_and_500_are_retried_with_growing_backoff(server):
    for client in both_clients(server):
        server.fail_next("1302", "500", "500")
        waits = []
        policy = RetryPolicy(base_delay=1.0, max_delay=30.0)
        assert chat_with_retry(client, HI, policy=policy, sleep=waits.append) == "hi"
        assert len(waits) == 3
        assert 0.5 <= waits[0] <= 1.0 and 1.0 <= waits[1] <= 2.0 and 2.0 <= waits[2] <= 4.0


def test_content_filter_is_reported_and_not_retried(server):
    for client in both_clients(server):
        server.fail_next("1301")
        before = len(server.requests)
        with pytest.raises(ContentFilterError, match="1301"):
            chat_with_retry(client, HI, policy=FAST)
        assert len(server.requests) == before + 1


def test_malformed_and_empty_answers_are_retried_then_given_up(server):
    client = OpenAIClient(server.url, "m")
    server.fail_next("malformed", "empty")
    assert chat_with_retry(client, HI, policy=FAST) == "hi"
    server.fail_next(*["empty"] * FAST.max_attempts)
    with pytest.raises(EmptyOutputError, match="empty"):
        chat_with_retry(client, HI, policy=FAST)


def test_refused_key_says_what_to_check(server):
    server.fail_next("401")
    with pytest.raises(llm.AuthError, match="check the key"):
        chat_with_retry(ZhipuClient("bad", base_url=server.url), HI, policy=FAST)


def test_missing_settings_give_actionable_messages(monkeypatch):
    monkeypatch.delenv("ZHIPUAI_API_KEY", raising=False)
    with pytest.raises(SettingsError, match="ZHIPUAI_API_KEY"):
        make_client(ClientSettings(backend="zhipu"))
    with pytest.raises(SettingsError, match="base URL"):
        make_client(ClientSettings(backend="openai", model="m"))
    with pytest.raises(SettingsError, match="choose one of"):
        make_client(ClientSettings(backend="gpt"))


def test_key_from_environment_and_never_logged_or_shown(server, monkeypatch, caplog):
    monkeypatch.setenv("ZHIPUAI_API_KEY", "sk-secret-from-env-789")
    settings = ClientSettings(backend="zhipu", base_url=server.url)
    client = make_client(settings)
    caplog.set_level(logging.DEBUG)
    server.fail_next("429", "500")
    server.retry_after = "0"
    assert chat_with_retry(client, HI, policy=FAST) == "hi"
    assert server.requests[-1]["auth"] == "Bearer sk-secret-from-env-789"
    assert "sk-secret" not in caplog.text
    typed = ClientSettings(backend="openai", api_key="sk-typed-000")
    assert "sk-typed" not in repr(typed)


def test_run_requests_is_concurrent_keeps_order_and_survives_failures():
    with FakeLLMServer(latency=0.2) as server:
        client = OpenAIClient(server.url, "m")
        server.fail_next("1301")
        requests = [Request([{"role": "user", "content": f"item {i}"}]) for i in range(8)]
        results = dict(run_requests(client, requests, concurrency=4, policy=FAST))
    assert sorted(results) == list(range(8))
    failed = [i for i, r in results.items() if isinstance(r, ContentFilterError)]
    assert len(failed) == 1
    assert all(results[i] == f"item {i}" for i in results if i not in failed)
    assert 2 <= server.max_in_flight <= 4


def test_stop_sends_no_new_requests():
    with FakeLLMServer(latency=0.1) as server:
        client = OpenAIClient(server.url, "m")
        stop = threading.Event()
        requests = [Request(HI) for _ in range(20)]
        got = []
        for i, _result in run_requests(client, requests, concurrency=2, stop=stop):
            got.append(i)
            stop.set()
    assert len(got) < 20
    assert len(server.requests) <= 4


def test_backoff_honours_retry_after_and_caps():
    rng = random.Random(0)
    policy = RetryPolicy(base_delay=1.0, max_delay=10.0)
    assert backoff_delay(1, policy, 3.0, rng) == 3.0
    assert backoff_delay(1, policy, 99.0, rng) == 10.0
    assert 5.0 <= backoff_delay(8, policy, None, rng) <= 10.0


# ---------------------------------------------------------------- local backend


@pytest.fixture(scope="module")
def talkative_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with large random weights (its answers depend on the prompt) and no special tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("talkative") / "tiny"
    shutil.copytree(tiny_model_dir, folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0, 0.5)
    model.generation_config.suppress_tokens = [0, 1, 2]
    model.save_pretrained(folder)
    return folder


@pytest.fixture()
def tiny_client(talkative_model_dir):
    yield LocalClient(str(talkative_model_dir), batch_size=4)
    llm.unload_local_models()


def test_batched_generation_equals_one_at_a_time(tiny_client):
    convs = [
        [{"role": "user", "content": text}]
        for text in [
            "library",
            "When does the library open? Call 027-8765-4321.",
            "图书馆开放时间",
            "a b c d e f",
        ]
    ]
    alone = [tiny_client.chat(c, max_tokens=8, temperature=0) for c in convs]
    batched = tiny_client.chat_batch(convs, max_tokens=8, temperature=0)
    assert all(alone) and len(set(alone)) == 4
    assert batched == alone  # left padding + attention mask: padding never changes an answer
    via_runner = dict(run_requests(tiny_client, [Request(c, 8, 0) for c in convs]))
    assert [via_runner[i] for i in range(4)] == alone  # length-sorted batches come back in order


def plain_sdpa_generate(model, *args, **kwargs):
    """generate() with transformers' own SDPA attention: the reference the static path must match."""
    saved = model.config._attn_implementation
    model.config._attn_implementation = "sdpa"
    try:
        return llm.generate_ids(model, *args, **kwargs)
    finally:
        model.config._attn_implementation = saved


@pytest.mark.parametrize("boolean", [True, False])
def test_grouped_attention_equals_sdpa_without_copying_key_value_heads(boolean):
    """One-token steps of a grouped-query model (8 query heads on 2 KV heads) with a padding mask."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    module = torch.nn.Module().eval()
    module.num_key_value_groups = 4
    query, key, value = torch.randn(3, 8, 1, 16), torch.randn(3, 2, 20, 16), torch.randn(3, 2, 20, 16)
    keep = torch.ones(3, 1, 1, 20, dtype=torch.bool)
    keep[1, ..., :5] = False  # a left-padded row
    keep[2, ..., 15:] = False  # cache slots not written yet
    mask = keep if boolean else torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))
    ours, _ = llm.grouped_attention(module, query, key, value, mask, scaling=0.3)
    reference, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.3)
    assert ours.shape == reference.shape == (3, 1, 8, 16)
    assert torch.allclose(ours, reference, atol=1e-5)
    longer = torch.randn(3, 8, 4, 16)  # several query tokens (prefill): transformers' SDPA itself
    both = [
        f(module, longer, key, value, None, scaling=0.3)[0]
        for f in (llm.grouped_attention, sdpa_attention_forward)
    ]
    assert torch.equal(*both)


def test_static_cache_batches_fill_rows_pad_width_and_answer_the_same(tiny_client):
    """The GPU fast path (static KV cache, fixed shapes) gives the dynamic cache's greedy answers."""
    model, tokenizer = llm.load_local_model(tiny_client.model_path)
    texts = ["library", "When does the library open? Call 027-8765-4321.", "图书馆开放时间"]
    prompts = [tiny_client.encode_chat([{"role": "user", "content": t}]) for t in texts]
    assert max(map(len, prompts)) % llm.STATIC_WIDTH_STEP  # so the width really is padded up
    pad = tokenizer.pad_token_id
    dynamic = plain_sdpa_generate(model, prompts, pad, 8)
    static = llm.generate_ids(model, prompts, pad, 8, static_rows=4)  # 3 prompts fill a 4-row batch
    assert len(static) == 3 and static == dynamic
    assert model.config._attn_implementation == llm.GROUPED_ATTENTION  # decoded without K/V copies
    capped = llm.generate_ids(model, prompts, pad, 8, static_rows=4, max_width=max(map(len, prompts)))
    assert capped == dynamic  # near the context limit the width is not padded past it


def test_static_cache_without_padding_never_attends_to_empty_cache_slots(tiny_client):
    """Prompts of one length (no padding): the not-yet-written cache slots must still be masked."""
    model, tokenizer = llm.load_local_model(tiny_client.model_path)
    prompt = tiny_client.encode_chat([{"role": "user", "content": "When does the library open?"}])
    pad = tokenizer.pad_token_id
    dynamic = plain_sdpa_generate(model, [prompt, prompt], pad, 12)
    assert llm.generate_ids(model, [prompt, prompt], pad, 12, static_rows=2, max_width=len(prompt)) == dynamic
    assert llm.generate_ids(model, [prompt], pad, 12, static_rows=1, max_width=len(prompt)) == dynamic[:1]


def test_static_decodes_from_two_threads_do_not_share_a_cache_at_once(tiny_client):
    """Two stages on one model: the reused cache of a shape must not be written by both at once."""
    model, tokenizer = llm.load_local_model(tiny_client.model_path)
    texts = ["When does the library open?", "图书馆在哪里？请说明具体位置"]
    prompts = [tiny_client.encode_chat([{"role": "user", "content": t}]) for t in texts]
    pad = tokenizer.pad_token_id
    expected = [llm.generate_ids(model, [p], pad, 10, static_rows=2, max_width=64) for p in prompts]
    results: dict = {0: [], 1: []}

    def worker(i: int) -> None:
        for _ in range(4):
            results[i].append(llm.generate_ids(model, [prompts[i]], pad, 10, static_rows=2, max_width=64))

    threads = [threading.Thread(target=worker, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0] == [expected[0]] * 4 and results[1] == [expected[1]] * 4


def test_static_cache_stops_rows_at_end_of_sequence_like_generate(tiny_client):
    """A row that emits the end token is padded afterwards; min_new_tokens holds the end token back."""
    model, tokenizer = llm.load_local_model(tiny_client.model_path)
    prompts = [tiny_client.encode_chat([{"role": "user", "content": t}]) for t in ("library", "图书馆")]
    pad = tokenizer.pad_token_id
    first = plain_sdpa_generate(model, prompts, pad, 8)
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = first[0][2]  # row 0 now ends at its third token
    try:
        for min_new in (0, 5):
            dynamic = plain_sdpa_generate(model, prompts, pad, 8, min_new_tokens=min_new)
            static = llm.generate_ids(model, prompts, pad, 8, min_new_tokens=min_new, static_rows=2)

            def trim(rows):
                return [list(reversed(list(dropwhile(lambda t: t == pad, reversed(r))))) for r in rows]

            assert trim(static) == trim(dynamic)
            ended = trim(static)[0]
            if min_new == 0:
                assert ended == first[0][:3]  # stopped at the end token, padded after it
            else:
                assert first[0][2] not in ended[:min_new] and len(ended) >= min_new
    finally:
        model.generation_config.eos_token_id = saved


def test_local_model_loaded_once_and_unload_frees_it(tiny_client, talkative_model_dir):
    model, _ = llm.load_local_model(str(talkative_model_dir))
    assert llm.load_local_model(str(talkative_model_dir))[0] is model
    assert (
        next(model.parameters()).dtype.is_floating_point
        and str(next(model.parameters()).dtype) == "torch.float32"
    )
    ref = weakref.ref(model)
    del model
    assert llm.unload_local_models() == 1
    gc.collect()
    assert ref() is None and llm.loaded_local_models() == []


def test_local_prompt_longer_than_context_is_refused(tiny_client):
    long = [{"role": "user", "content": "library " * 600}]
    with pytest.raises(ContextOverflowError, match="lower the chunk size"):
        tiny_client.chat(long, max_tokens=8)


def test_local_folder_must_be_a_model(tmp_path):
    with pytest.raises(SettingsError, match="config.json"):
        LocalClient(str(tmp_path)).chat(HI)


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exc:
        llm.main(["--help"])
    assert exc.value.code == 0
    assert "--backend" in capsys.readouterr().out


def test_stop_ends_a_local_batch_between_two_tokens(tiny_client):
    """Stop takes effect inside a long generation, not after it: the batch ends within a token or two."""
    stop = threading.Event()
    steps = []

    def count(n):
        steps.append(n)
        if len(steps) == 3:
            stop.set()

    convs = [[{"role": "user", "content": "library"}], [{"role": "user", "content": "图书馆"}]]
    with pytest.raises(llm.StoppedError):
        tiny_client.chat_batch(convs, max_tokens=200, temperature=0, stop=stop, on_tokens=count)
    assert len(steps) == 3 and steps[0] == 2  # two rows wrote one token each per step
    requests = [Request(c, 200, 0) for c in convs]
    assert list(run_requests(tiny_client, requests, stop=stop)) == []  # a stopped run yields nothing


def test_rows_end_at_their_stop_string_and_heartbeats_count_the_tokens(tiny_client):
    convs = [[{"role": "user", "content": t}] for t in ("library", "When does the library open?")]
    full = tiny_client.chat_batch(convs, max_tokens=24, temperature=0)
    marks = tuple({text[len(text) // 3] for text in full if len(text) > 3})  # a character each answer has
    cut = tiny_client.chat_batch(convs, max_tokens=24, temperature=0, stop_strings=marks)
    for whole, short in zip(full, cut, strict=True):
        # ended at the token that completed a stop string: the same text up to there, shorter
        assert whole.startswith(short) and any(m in short for m in marks) and len(short) < len(whole)
    beats, answers = [], {}
    for i, result in run_requests(tiny_client, [Request(c, 24, 0) for c in convs], heartbeat=0.01):
        if isinstance(result, llm.Heartbeat):
            beats.append(result)
        else:
            answers[i] = result
    assert [answers[0], answers[1]] == full  # heartbeats change nothing in the answers
    assert len(beats) > 1 and sum(b.tokens for b in beats) == 2 * 24  # no end-of-sequence: 24 tokens a row


def test_a_short_answer_ends_at_its_stop_string_or_when_it_loops():
    stops = ("?", "？")
    assert llm.short_answer_done("When does the library open?", stops)
    assert llm.short_answer_done("东湖大学图书馆几点开门？", stops)
    assert llm.short_answer_done("通知公告2024-11-20通知2024-11-20通知2024-11-20通知2024-11-20", stops)
    # a question still being written, even one that names the university twice, goes on
    assert not llm.short_answer_done("What is the name of the university Eastlake University", stops)
    assert not llm.short_answer_done("Where is Eastlake University's library, the Eastlake University", stops)
