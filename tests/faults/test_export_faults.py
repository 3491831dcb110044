"""Export faults: an export writes its target folder and nothing else. Folders beside the target whose
names look like an export's temporary ones (`X.partial`, `.X.partial`, `X.old`, ...) are someone's
work: a new export, an overwrite and an export that fails mid-write leave them as they were, and
leave no temporary folder behind (issue 16, item 3)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from bad_inputs.cli import snapshot
from tiny import train_tiny_adapter

from blocks import export
from blocks.export import ExportError, export_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NEIGHBOURS = [
    "X.partial",
    ".X.partial",
    "X.old",
    ".X.old",
    "X.tmp",
    ".X.tmp",
    "X-merged",
    "X.partial.partial",
]


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    runs = tmp_path_factory.mktemp("project") / "runs"
    return {
        "lora": train_tiny_adapter(tiny_model_dir, runs / "run-1" / "adapter", steps=2),
        "ptuning": train_tiny_adapter(tiny_model_dir, runs / "run-2" / "adapter", "ptuning", steps=2),
    }


def make_neighbours(parent: Path) -> None:
    for name in NEIGHBOURS:
        (parent / name).mkdir(parents=True)
        (parent / name / "work.txt").write_text(f"someone's work in {name}")


def outside_target(parent: Path) -> dict[str, bytes]:
    return {k: v for k, v in snapshot(parent).items() if not k.startswith("X/")}


@pytest.mark.parametrize("method", ["lora", "ptuning"])
def test_export_touches_only_its_target(method, adapters, tmp_path):
    parent = tmp_path / "data"
    make_neighbours(parent)
    before = outside_target(parent)
    entries = sorted(p.name for p in parent.iterdir())

    first = export_model(adapters[method], parent / "X")  # a new folder
    again = export_model(adapters[method], parent / "X", overwrite=True)  # replacing the first
    assert first.path == again.path == parent / "X" and any((parent / "X").iterdir())
    assert outside_target(parent) == before
    assert sorted(p.name for p in parent.iterdir()) == sorted([*entries, "X"])


@pytest.mark.parametrize("method", ["lora", "ptuning"])
def test_failed_export_leaves_old_export_and_neighbours(method, adapters, tmp_path, monkeypatch):
    parent = tmp_path / "data"
    make_neighbours(parent)
    export_model(adapters[method], parent / "X")
    before = snapshot(parent)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export, "write_export_info", full_disk)
    with pytest.raises(ExportError, match="No space left"):
        export_model(adapters[method], parent / "X", overwrite=True)
    assert snapshot(parent) == before  # the old export, the neighbours, and no temporary folder
    assert sorted(p.name for p in parent.iterdir()) == sorted([*NEIGHBOURS, "X"])
