"""Chat: load LoRA and P-tuning v2 adapters on a tiny model, stream, multi-turn, compare, refusals."""

from __future__ import annotations

import gc
import json
import re
import shutil
import threading
import weakref
from pathlib import Path

import pytest
from tiny import QUESTION, train_tiny_adapter

from blocks import chat
from blocks.chat import (
    AdapterMismatchError,
    BaseModelMovedError,
    ChatError,
    GenParams,
    build_messages,
    compare_replies,
    generate_reply,
    list_checkpoints,
    list_runs,
    load_model,
    stream_reply,
    unload_model,
)

GREEDY = GenParams(temperature=0, max_new_tokens=12, repetition_penalty=1.0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A private copy of the tiny model, so tests may move it."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("base") / "tiny-llama"))


@pytest.fixture(scope="module")
def runs_dir(base_dir, tmp_path_factory) -> Path:
    """A project's runs/ folder: a LoRA run (adapter + checkpoint) and a P-tuning run."""
    runs = tmp_path_factory.mktemp("project") / "runs"
    train_tiny_adapter(base_dir, runs / "lora-run" / "checkpoint-10", "lora", steps=10, run_id="lora-run")
    train_tiny_adapter(base_dir, runs / "lora-run" / "adapter", "lora", run_id="lora-run")
    train_tiny_adapter(base_dir, runs / "ptuning-run" / "adapter", "ptuning", run_id="ptuning-run")
    (runs / "empty-run").mkdir()  # a run that failed before saving anything
    return runs


@pytest.fixture(scope="module")
def lora(runs_dir):
    loaded = load_model(adapter_dir=runs_dir / "lora-run" / "adapter")
    yield loaded
    unload_model(loaded)


def test_lists_runs_and_checkpoints(runs_dir):
    assert sorted(list_runs(runs_dir)) == ["lora-run", "ptuning-run"]
    assert list_checkpoints(runs_dir / "lora-run") == ["adapter", "checkpoint-10"]
    assert list_runs(runs_dir / "missing") == []


@pytest.mark.parametrize("run", ["lora-run", "ptuning-run"])
def test_adapter_changes_the_answer(runs_dir, run):
    """Both LoRA and P-tuning v2 checkpoints load on their recorded base and answer unlike the base model."""
    loaded = load_model(adapter_dir=runs_dir / run / "adapter")
    assert loaded.device == "cpu" and loaded.dtype == "float32"
    assert loaded.adapter.method == ("lora" if run == "lora-run" else "ptuning")
    messages = build_messages([], QUESTION)
    base, tuned = compare_replies(loaded, messages, GREEDY)
    assert tuned and tuned != base
    assert generate_reply(loaded, messages, GREEDY).text == tuned  # greedy is repeatable
    unload_model(loaded)


def test_stream_pieces_add_up_to_the_reply(lora):
    stream = stream_reply(lora, build_messages([], QUESTION), GREEDY)
    pieces = list(stream)
    assert len(pieces) > 1
    assert (
        "".join(pieces)
        == stream.reply.text
        == generate_reply(lora, build_messages([], QUESTION), GREEDY).text
    )
    assert stream.reply.completion_tokens == 12 and stream.reply.finish_reason == "length"


def test_stop_ends_a_running_reply(lora):
    params = GenParams(temperature=0, max_new_tokens=200, repetition_penalty=1.0)
    stream = stream_reply(lora, build_messages([], QUESTION), params)
    for i, _ in enumerate(stream):
        if i == 2:
            stream.stop()
    assert stream.reply.completion_tokens < 10
    # The lock is free again: the next question is answered.
    assert generate_reply(lora, build_messages([], QUESTION), GREEDY).text


def test_stop_button_event_stops_only_while_pressed(lora):
    """The UI shares one Stop event across replies: a finished reply must not cut the next one short."""
    button = threading.Event()
    messages = build_messages([], QUESTION)
    first = stream_reply(lora, messages, GREEDY, stop_event=button)
    second = stream_reply(lora, messages, GREEDY, stop_event=button)
    assert "".join(first) == "".join(second) and second.reply.completion_tokens == 12
    button.set()
    stopped = stream_reply(lora, messages, GREEDY, stop_event=button)
    list(stopped)
    assert stopped.reply.completion_tokens <= 1


def test_multi_turn_keeps_system_prompt_and_first_question(lora):
    """The seed dropped the first question when a system prompt was typed; here every turn reaches the model."""
    history = [
        {"role": "user", "content": "Where is the registrar?"},
        {"role": "assistant", "content": "In Building A."},
    ]
    messages = build_messages(history, QUESTION, system_prompt="You are the campus assistant.")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    prompt = lora.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    for text in ("You are the campus assistant.", "Where is the registrar?", "In Building A.", QUESTION):
        assert text in prompt
    with_history = generate_reply(lora, messages, GREEDY)
    alone = generate_reply(lora, build_messages([], QUESTION), GREEDY)
    assert with_history.prompt_tokens > alone.prompt_tokens


def test_bad_requests_are_explained(lora):
    with pytest.raises(ChatError, match="question is empty"):
        build_messages([], "   ")
    with pytest.raises(ChatError, match="temperature"):
        generate_reply(lora, build_messages([], QUESTION), GenParams(temperature=5))
    with pytest.raises(ChatError, match="last message must come from the user"):
        generate_reply(lora, [{"role": "assistant", "content": "hi"}])


def test_adapter_for_another_base_is_refused(runs_dir, tmp_path):
    from tiny import build_tiny_model

    other = build_tiny_model(tmp_path / "other", seed=1)
    with pytest.raises(AdapterMismatchError, match="different base model"):
        load_model(other, runs_dir / "lora-run" / "adapter")


def test_moved_base_asks_for_new_path_and_accepts_the_same_model(runs_dir, base_dir, tmp_path):
    adapter = tmp_path / "adapter"
    shutil.copytree(runs_dir / "lora-run" / "adapter", adapter)
    info = json.loads((adapter / "umtcds_adapter.json").read_text())
    info["base_model"] = str(tmp_path / "was-here")
    (adapter / "umtcds_adapter.json").write_text(json.dumps(info))
    with pytest.raises(BaseModelMovedError, match="new path") as err:
        load_model(adapter_dir=adapter)
    assert err.value.recorded == str(tmp_path / "was-here")
    moved = Path(shutil.copytree(base_dir, tmp_path / "moved-base"))
    loaded = load_model(moved, adapter)
    assert loaded.base_path == moved
    reference = load_model(adapter_dir=runs_dir / "lora-run" / "adapter")
    messages = build_messages([], QUESTION)
    assert generate_reply(loaded, messages, GREEDY).text == generate_reply(reference, messages, GREEDY).text


def test_broken_checkpoints_are_explained(runs_dir, tmp_path):
    with pytest.raises(ChatError, match="umtcds_adapter.json"):
        load_model(adapter_dir=runs_dir / "empty-run")
    no_safetensors = Path(shutil.copytree(runs_dir / "lora-run" / "adapter", tmp_path / "pickled"))
    (no_safetensors / "adapter_model.safetensors").rename(no_safetensors / "adapter_model.bin")
    with pytest.raises(ChatError, match="only safetensors"):
        load_model(adapter_dir=no_safetensors)
    with pytest.raises(ChatError, match="not a model folder"):
        load_model(tmp_path / "nowhere")


def test_unload_frees_the_model(base_dir):
    loaded = load_model(base_dir)
    ref = weakref.ref(loaded.model)
    unload_model(loaded)
    gc.collect()
    assert ref() is None
    with pytest.raises(ChatError, match="No model is loaded"):
        generate_reply(loaded, build_messages([], QUESTION))


@pytest.mark.gpu
def test_gpu_loads_bf16_and_unload_gives_memory_back(runs_dir):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    loaded = load_model(adapter_dir=runs_dir / "lora-run" / "adapter")
    assert (loaded.device, loaded.dtype) == ("cuda", "bfloat16")
    assert generate_reply(loaded, build_messages([], QUESTION), GREEDY).completion_tokens > 0
    assert torch.cuda.memory_allocated() > before
    ref = weakref.ref(loaded.model)
    unload_model(loaded)
    gc.collect()
    assert ref() is None
    # What stays is cuBLAS's workspace (32 MiB per generation thread), not weights or cache blocks.
    assert torch.cuda.memory_allocated() - before <= 64 << 20
    assert torch.cuda.memory_reserved() - torch.cuda.memory_allocated() <= 2 << 20  # cache given back


def test_concurrent_users_are_queued(lora):
    """Two threads asking at once both get the same full answer (generation is serialised)."""
    results: list[str] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(generate_reply(lora, build_messages([], QUESTION), GREEDY).text)
        )
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and len(set(results)) == 1


def test_cli_prints_one_answer(runs_dir, capsys):
    adapter = runs_dir / "lora-run" / "adapter"
    code = chat.main(
        ["--adapter", str(adapter), "--prompt", QUESTION, "--temperature", "0", "--max-new-tokens", "12"]
    )
    assert code == 0
    loaded = load_model(adapter_dir=adapter)
    assert (
        capsys.readouterr().out.strip()
        == generate_reply(loaded, build_messages([], QUESTION), GREEDY).text.strip()
    )
    assert chat.main(["--adapter", str(runs_dir / "empty-run"), "--prompt", "hi"]) == 2
    assert "umtcds_adapter.json" in capsys.readouterr().err


@pytest.mark.slow
def test_embedded_model_streams_a_multi_turn_chat(embedded_model_dir):
    """The real SmolLM2 answers, stops at the end of its turn, and uses the earlier turn."""
    loaded = load_model(embedded_model_dir)
    params = GenParams(temperature=0, max_new_tokens=20)
    first = generate_reply(loaded, build_messages([], "What is the capital of France?"), params)
    assert "Paris" in first.text and "<|im_end|>" not in first.text and first.finish_reason == "stop"
    history = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": first.text},
    ]
    stream = stream_reply(loaded, build_messages(history, "And of Italy?"), params)
    assert "Rome" in "".join(stream)
    unload_model(loaded)


def test_cli_interactive_session_answers_and_resets(runs_dir, monkeypatch, capsys):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(f"{QUESTION}\n/reset\n{QUESTION}\n/exit\n"))
    adapter = runs_dir / "lora-run" / "adapter"
    assert chat.main(["--adapter", str(adapter), "--temperature", "0", "--max-new-tokens", "12"]) == 0
    out = capsys.readouterr().out
    assert "Loaded lora adapter lora-run/adapter" in out
    answers = [line.split("bot> ")[-1] for line in out.splitlines() if "bot> " in line]
    # After /reset the same question gets the same greedy answer.
    assert len(answers) == 2 and answers[0] == answers[1] != ""


@pytest.mark.slow
@pytest.mark.browser
def test_chat_tab_loads_a_run_and_answers_in_the_browser(tiny_model_dir, tmp_path):
    """A user's path in headless Chromium: pick the run, Load, ask greedily, read the streamed reply,
    compare it with the base model's, Unload."""
    from browser import ARTIFACTS, browser_page, running_app

    data = tmp_path / "data"
    train_tiny_adapter(
        tiny_model_dir, data / "demo" / "runs" / "lora-run" / "adapter", "lora", run_id="lora-run"
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with running_app(data, env={"OMP_NUM_THREADS": "1"}) as url, browser_page() as page:
        page.goto(url)
        page.get_by_role("tab", name="8 Chat").click()
        page.get_by_role("button", name="Send", exact=True).click()  # nothing loaded yet: told what to do
        page.get_by_text("Load a model first.").first.wait_for(timeout=30_000)
        page.get_by_role("button", name="Load", exact=True).click()
        page.get_by_text("Loaded:").wait_for(timeout=120_000)
        loaded = page.locator("p", has_text="Loaded:").inner_text()
        assert "lora-run" in loaded, loaded
        page.get_by_text("System prompt and sampling").click()
        for name, value in (("Temperature", "0"), ("Max new tokens", "16"), ("Repetition penalty", "1")):
            field = page.get_by_role("spinbutton", name=re.compile(name))  # greedy and short
            field.fill(value)
            field.press("Enter")
        page.get_by_label("Your question").fill(QUESTION)
        page.get_by_role("button", name="Send", exact=True).click()
        page.get_by_test_id("user").get_by_text(QUESTION).wait_for(timeout=30_000)
        reply = page.get_by_test_id("bot").last
        reply.wait_for(timeout=120_000)

        # "Ask both" waits for the chat's generation (one at a time), then answers with and without the adapter
        page.get_by_text("Compare base vs fine-tuned").click()
        page.get_by_label("Question to compare").fill(QUESTION)
        page.get_by_role("button", name="Ask both").click()
        tuned = page.get_by_label("Fine-tuned model")
        page.wait_for_function("el => el.value.length > 0", arg=tuned.element_handle(), timeout=120_000)
        base = page.get_by_label("Base model", exact=True).input_value()
        page.screenshot(path=str(ARTIFACTS / "chat-answer.png"), full_page=True)
        assert reply.inner_text().strip() == tuned.input_value().strip() != ""  # greedy: the same reply
        assert base != tuned.input_value()  # the adapter changes the answer (the random base: blank lines)

        page.get_by_role("button", name="Unload").click()
        page.get_by_text("Unloaded: memory freed.").wait_for(timeout=30_000)
