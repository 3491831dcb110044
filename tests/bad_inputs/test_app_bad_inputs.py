"""App shell and workspace bad input: launch options, project and run names, typed paths, symlinks.

Launch options are refused by `python app.py` (exit 2, before the UI is built) and by parse_args
(LaunchError); names and paths by blocks.workspace (WorkspaceError), the stage CLIs and the tabs (gr.Error).
"""

from __future__ import annotations

import pytest
from tabs import tab_handlers

import app
from bad_inputs.cli import assert_refused, run_cli, snapshot
from blocks import workspace as ws

SECRET = "hunter2-very-secret"  # must never be echoed back

BAD_LAUNCH = [
    ("port-too-high", ["--port", "70000"], "out of range"),
    ("port-zero", ["--port", "0"], "out of range"),
    ("port-negative", ["--port", "-1"], "out of range"),
    ("host-nonsense", ["--host", "no such host!"], "is not an IP address or a known host name"),
    ("host-empty", ["--host", ""], "--host is empty"),
    ("model-root-missing", ["--model-root", "/no/such/folder"], "is not an existing folder"),
    ("model-root-filesystem", ["--model-root", "/"], "would let the UI open files"),
    ("model-root-proc", ["--model-root", "/proc"], "would let the UI open files"),
    ("auth-no-colon", ["--host", "0.0.0.0", "--auth", "admin" + SECRET], "must look like user:password"),
    ("auth-no-user", ["--host", "0.0.0.0", "--auth", ":" + SECRET], "must look like user:password"),
    ("auth-no-password", ["--host", "0.0.0.0", "--auth", "admin:"], "must look like user:password"),
    (
        "auth-blank-password",
        ["--host", "0.0.0.0", "--auth", "admin:          "],
        "must look like user:password",
    ),
    ("auth-short-password", ["--host", "0.0.0.0", "--auth", "admin:hunter2"], "shorter than 8 characters"),
    ("auth-space-in-user", ["--host", "0.0.0.0", "--auth", "ad min:" + SECRET], "must not contain spaces"),
    ("project-traversal", ["--project", "../etc"], "Invalid project name"),
]


@pytest.mark.parametrize("case,argv,message", BAD_LAUNCH, ids=[c[0] for c in BAD_LAUNCH])
def test_bad_launch_options(case, argv, message, monkeypatch):
    monkeypatch.delenv("UMTCDS_AUTH", raising=False)
    proc = run_cli(["app.py", *argv])
    assert_refused(proc, message)
    assert SECRET not in proc.stderr + proc.stdout and "hunter2" not in proc.stderr
    with pytest.raises((app.LaunchError, ws.WorkspaceError), match=message) as caught:
        app.parse_args(argv)
    assert SECRET not in str(caught.value)


def test_bad_login_from_environment_is_refused_without_echoing_it():
    proc = run_cli(["app.py", "--host", "0.0.0.0"], env={"UMTCDS_AUTH": "admin:short"})
    assert_refused(proc, "shorter than 8 characters")
    assert "short" not in proc.stderr.replace("shorter", "")


@pytest.mark.parametrize(
    "argv", [["--port", "abc"], ["--lang", "fr"]], ids=["port-not-a-number", "unknown-lang"]
)
def test_argparse_refusals_are_usage_messages(argv):
    assert_refused(run_cli(["app.py", *argv]), "usage:", "invalid")
    with pytest.raises(SystemExit) as caught:
        app.parse_args(argv)
    assert caught.value.code == 2


BAD_NAMES = [
    "../etc",
    "a/b",
    "..",
    ".hidden",
    "x" * 80,
    "a\\b",
    "名字/../x",
    "ok\nname",
    "-flag",
    "a b",
    "\x00",
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=[repr(n)[1:13] for n in BAD_NAMES])
def test_bad_project_and_run_names(name, workspace):
    with pytest.raises(ws.WorkspaceError, match="Invalid project name"):
        ws.get_project(name)
    with pytest.raises(ws.WorkspaceError, match="Invalid run id"):
        ws.get_project("p").run_dir(name)
    if "\x00" not in name and "\n" not in name:  # argv cannot carry these
        proc = run_cli(["-m", "blocks.dataset", f"--project={name}", "--check"])
        assert_refused(proc, "Invalid project name")
    assert sorted(p.name for p in workspace.iterdir()) == ["p"]  # nothing created outside


def test_tabs_turn_bad_project_names_into_messages(workspace):
    import gradio as gr

    handlers = tab_handlers("ui_crawl")
    with pytest.raises(gr.Error, match="Invalid project name"):
        handlers["on_stop"]("../../etc", "en")
    assert handlers["manifest_table"]("../../etc") == []
    assert not (workspace.parent / "etc").exists()


BAD_PATHS = [
    "/etc/passwd",
    "../../etc/passwd",
    "data/../../etc/passwd",
    "~/.ssh/id_rsa",
    "~no_such_user_xyz/file",
    "/proc/self/environ",
    "",
    "data/p/\x00evil",
]


@pytest.mark.parametrize("raw", BAD_PATHS, ids=[repr(p)[1:20] or "empty" for p in BAD_PATHS])
def test_typed_paths_outside_the_workspace_are_refused(raw, workspace):
    with pytest.raises(ws.WorkspaceError):
        ws.confine_path(raw)


def test_symlink_escapes(workspace, tmp_path):
    """A link inside data/ pointing out: refused as a typed path and as a project folder."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (workspace / "evil").symlink_to(outside)
    (workspace / "loop").symlink_to(workspace / "loop")
    with pytest.raises(ws.WorkspaceError, match="outside the workspace"):
        ws.confine_path(workspace / "evil" / "secret.txt")
    with pytest.raises(ws.WorkspaceError):
        ws.confine_path(workspace / "loop" / "x")
    with pytest.raises(ws.WorkspaceError, match="outside the workspace"):
        ws.get_project("evil")
    before = snapshot(outside)
    proc = run_cli(["-m", "blocks.dataset", "--project", "evil", "--model", ""])
    assert_refused(proc, "outside the workspace")
    assert snapshot(outside) == before and not (outside / "dataset").exists()


def test_dataset_tab_refuses_paths_outside_the_workspace(workspace):
    import gradio as gr

    import ui_dataset
    from ui_common import Bilingual, UIContext

    texts = Bilingual("en")
    with gr.Blocks() as demo:
        lang = gr.State("en")
        texts.lang_state = lang
        picker = gr.Dropdown(choices=["p"], value="p", allow_custom_value=True)
        ui_dataset.build_tab(UIContext(L=texts, project=picker, lang=lang, default_model=""))
    on_build = {f.name: f.fn for f in demo.fns.values()}["on_build"]
    for field in ("paths", "model"):
        for raw in ("/etc/passwd", "../../../etc", "~/.bashrc"):
            args = ["p", "en", "", None, "8:1:1", 42, "", False, "", 512, 512, 1000, 4000, 3, True]
            args[2 if field == "paths" else 8] = raw
            with pytest.raises(gr.Error, match="outside the workspace"):
                on_build(*args)
