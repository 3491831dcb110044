"""Project folders and path confinement."""

from __future__ import annotations

import pytest

from blocks import workspace as ws


def test_project_layout(workspace):
    project = ws.get_project("campus-2026")
    assert project.root == workspace / "campus-2026"
    assert project.qa_file == workspace / "campus-2026" / "qa" / "qa.jsonl"
    assert ws.list_projects() == ["campus-2026"]


@pytest.mark.parametrize("name", ["../etc", "a/b", "", " ", ".hidden", "x" * 80, "..", "a\\b", "名字/../x"])
def test_unsafe_project_names_are_refused(workspace, name):
    with pytest.raises(ws.WorkspaceError, match="Invalid project name"):
        ws.get_project(name)


def test_chinese_project_name_is_fine(workspace):
    assert ws.get_project("东湖大学").name == "东湖大学"


def test_run_id_cannot_escape(workspace):
    project = ws.get_project("p")
    with pytest.raises(ws.WorkspaceError):
        project.run_dir("../../x")


def test_confine_path(tmp_path, workspace):
    inside = workspace / "p" / "file.txt"
    roots = [workspace.resolve()]
    assert ws.confine_path(inside, roots) == inside.resolve()
    for outside in ["/etc/passwd", str(workspace / ".." / "elsewhere"), "~/.ssh/id_rsa", ""]:
        with pytest.raises(ws.WorkspaceError):
            ws.confine_path(outside, roots)


def test_confine_path_follows_symlinks(tmp_path, workspace):
    link = workspace / "sneaky"
    link.symlink_to("/etc")
    with pytest.raises(ws.WorkspaceError, match="outside the workspace"):
        ws.confine_path(link / "passwd", [workspace.resolve()])


def test_model_roots_from_launch_option(tmp_path, monkeypatch):
    extra = tmp_path / "autodl-tmp"
    extra.mkdir()
    monkeypatch.setenv("UMTCDS_MODEL_ROOTS", str(extra))
    assert ws.confine_path(extra / "glm-4-9b-chat-hf") == (extra / "glm-4-9b-chat-hf").resolve()
