"""The app shell: launch safety, the eight tabs, and the gradio-free lower layers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import app

ROOT = Path(__file__).resolve().parent.parent


def test_exposed_without_login_is_refused():
    with pytest.raises(app.LaunchError, match="--auth"):
        app.parse_args(["--host", "0.0.0.0"])


def test_exposed_with_login_or_explicit_opt_out_is_allowed(monkeypatch):
    monkeypatch.delenv("UMTCDS_AUTH", raising=False)
    settings = app.parse_args(["--host", "0.0.0.0", "--auth", "admin:correct-horse"])
    assert settings.auth == ("admin", "correct-horse")
    assert settings.port == 6006
    assert app.parse_args(["--host", "0.0.0.0", "--insecure-no-auth"]).auth is None


def test_login_from_environment(monkeypatch):
    monkeypatch.setenv("UMTCDS_AUTH", "teacher:long-password")
    assert app.parse_args(["--host", "10.0.0.5"]).auth == ("teacher", "long-password")


@pytest.mark.parametrize("value", ["nocolon", ":pw-long-enough", "user:", "user:short"])
def test_bad_auth_values_say_what_to_do(value):
    with pytest.raises(app.LaunchError):
        app.parse_auth(value)


def test_cli_refusal_is_a_message_not_a_traceback():
    proc = subprocess.run(
        [sys.executable, "app.py", "--host", "0.0.0.0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    assert "Refusing to listen" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "host,expected",
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("0.0.0.0", False),
        ("192.168.1.4", False),
        ("example.org", False),
    ],
)
def test_is_loopback(host, expected):
    assert app.is_loopback(host) is expected


def test_app_has_eight_tabs_in_pipeline_order(workspace):
    import gradio as gr

    demo = app.build_app(app.LaunchSettings(project="demo"))
    tabs = [b.label for b in demo.blocks.values() if isinstance(b, gr.Tab)]
    assert tabs == [en for _, en, _ in app.TABS]


def _imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_gradio_is_imported_only_by_the_ui_layer():
    offenders = [
        str(p.relative_to(ROOT))
        for folder in ("blocks", "finetune")
        for p in (ROOT / folder).rglob("*.py")
        if "gradio" in _imports_of(p)
    ]
    assert offenders == []


def test_blocks_import_without_gradio():
    code = (
        "import sys, importlib, pkgutil, blocks, finetune\n"
        "sys.modules['gradio'] = None\n"  # any import of gradio now raises ImportError
        "for m in pkgutil.iter_modules(blocks.__path__, 'blocks.'):\n"
        "    importlib.import_module(m.name)\n"
        "for m in pkgutil.iter_modules(finetune.__path__, 'finetune.'):\n"
        "    importlib.import_module(m.name)\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("ok")


def test_no_shell_commands_in_product_code():
    bad = []
    for p in ROOT.rglob("*.py"):
        rel = p.relative_to(ROOT)
        if rel.parts[0] in (".venv", "tests", "data", "models"):
            continue
        text = p.read_text(encoding="utf-8")
        if "shell=True" in text or "os.system(" in text or "os.popen(" in text:
            bad.append(str(rel))
    assert bad == []


def test_every_stage_module_has_cli_help():
    stages = [p.stem for p in (ROOT / "blocks").glob("*.py") if p.stem not in ("__init__", "workspace")]
    for stage in stages:
        text = (ROOT / "blocks" / f"{stage}.py").read_text(encoding="utf-8")
        if 'if __name__ == "__main__"' not in text:
            continue
        proc = subprocess.run(
            [sys.executable, "-m", f"blocks.{stage}", "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, f"blocks.{stage} --help failed: {proc.stderr[-500:]}"
        assert "usage" in proc.stdout.lower()
