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
