"""Workspace bad input: a project, run or config name that collides with the workspace's own files
(data/train.lock, temporary and partial files, data/README.md) is refused with a message saying so,
and training keeps working for every other project (issue 16, item 4)."""

from __future__ import annotations

from pathlib import Path

import pytest

import blocks.training as tr
from bad_inputs.cli import assert_refused, run_cli, snapshot
from blocks import workspace as ws

RESERVED = [
    "train.lock",
    "TRAIN.LOCK",
    "demo.lock",
    "x.tmp",
    "export.partial",
    "run.old",
    "train.log",
    "README.md",
    "pages.jsonl",
    "job.json",
    "my-lora.yaml",
    "cfg.yml",
]


@pytest.mark.parametrize("name", RESERVED)
def test_reserved_project_name_is_refused_and_training_still_starts(name, workspace):
    (workspace / "README.md").write_text("Project workspaces live here.\n")
    before = snapshot(workspace)
    for what in ("project name", "run id", "config name"):
        with pytest.raises(ws.WorkspaceError, match="reserved") as caught:
            ws.check_name(name, what)
        assert what in str(caught.value) and "Choose another name" in str(caught.value)
    with pytest.raises(ws.WorkspaceError, match="reserved"):
        ws.get_project(name)
    assert snapshot(workspace) == before and sorted(p.name for p in workspace.iterdir()) == ["README.md"]

    run_dir = ws.get_project("demo").run_dir("r1")
    tr.acquire_lock(run_dir)  # the lock file can still be made: nothing took its name
    assert tr.read_lock()["run_id"] == "r1"
    tr.release_lock(run_dir)


def test_cli_refuses_a_reserved_project_name(tmp_path):
    proc = run_cli(
        ["-m", "blocks.training", "list", "--project", "train.lock"], {"UMTCDS_DATA_DIR": str(tmp_path)}
    )
    assert_refused(proc, "train.lock", "reserved")
    assert list(tmp_path.iterdir()) == []


def test_folder_left_under_the_lock_name_gets_a_clear_refusal(workspace):
    """A `train.lock` project made by an older version: training explains instead of IsADirectoryError."""
    (workspace / "train.lock" / "crawl").mkdir(parents=True)
    assert tr.read_lock() is None and tr.active_run() is None  # the UI still opens
    assert ws.list_projects() == []
    run_dir = ws.get_project("demo").run_dir("r1")
    with pytest.raises(tr.TrainingError, match="rename that folder"):
        tr.acquire_lock(run_dir)
    assert (workspace / "train.lock" / "crawl").is_dir()  # someone's project is not removed


@pytest.mark.parametrize("config", ["x.lock.yaml", "a.b.tmp.yaml", "README.md.yaml", "plain.yaml"])
def test_run_ids_from_any_config_file_name_are_valid(config):
    run_id = tr.new_run_id(Path("configs") / config)
    assert ws.check_name(run_id, "run id") == run_id


# ---------------------------------------------------------------- model roots (issue 16, item 10)

# Folders a --model-root must not be: system folders (and what is inside them), folders too wide to hold
# only models, and a home's dot-folders. Each exists on the test machine ("~" is the test's own home).
SYSTEM_ROOTS = ["/proc", "/proc/self", "/sys", "/sys/kernel", "/dev", "/etc", "/etc/ssl", "/usr", "/usr/lib",
                "/boot", "/run", "/var/log", "/"]  # fmt: skip
WIDE_ROOTS = ["/tmp", "/home", "/root", "/var", "~"]
HOME_DOT_FOLDERS = ["~/.ssh", "~/.config", "~/.aws/sub", "~/.cache"]


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    """A home folder with the dot-folders a user keeps secrets in, and a Hugging Face cache."""
    home = tmp_path / "home"
    for folder in (".ssh", ".config", ".aws/sub", ".cache/huggingface/hub", "models"):
        (home / folder).mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.mark.parametrize("root", SYSTEM_ROOTS + WIDE_ROOTS + HOME_DOT_FOLDERS)
def test_model_root_refuses_system_wide_and_dot_folders(root, home, workspace, monkeypatch):
    if not Path(root).expanduser().is_dir():
        pytest.skip(f"{root} does not exist here")
    with pytest.raises(ws.WorkspaceError, match="would let the UI open files that are not models"):
        ws.check_model_root(root)
    # set anyway (an older app.py, or the environment): it does not widen what a typed path may reach
    monkeypatch.setenv("UMTCDS_MODEL_ROOTS", str(Path(root).expanduser()))
    target = {"/proc": "/proc/self/environ", "/": "/etc/passwd"}.get(root, str(Path(root).expanduser()))
    with pytest.raises(ws.WorkspaceError, match="outside the workspace"):
        ws.confine_path(target)


def test_model_root_accepts_model_folders_and_the_hugging_face_cache(home, tmp_path, monkeypatch, workspace):
    for root in (home / "models", home / ".cache" / "huggingface" / "hub", tmp_path):
        assert ws.check_model_root(str(root)) == root.resolve()
        monkeypatch.setenv("UMTCDS_MODEL_ROOTS", str(root))
        assert ws.confine_path(root / "m") == (root / "m").resolve()
    with pytest.raises(ws.WorkspaceError, match="not an existing folder"):
        ws.check_model_root(str(tmp_path / "missing"))
