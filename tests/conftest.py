"""Shared fixtures: tiny models, the embedded model, an isolated workspace."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny Llama + tokenizer folder (session-wide; copy it before modifying)."""
    from tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    """The embedded SmolLM2 folder, prepared on first use."""
    from blocks.models import prepare_default_model

    return prepare_default_model()


@pytest.fixture()
def workspace(tmp_path, monkeypatch) -> Path:
    """An empty data/ folder for one test, so projects never touch the real workspace."""
    import blocks.workspace as ws

    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setattr(ws, "DATA_DIR", data)
    monkeypatch.setenv("UMTCDS_DATA_DIR", str(data))
    return data


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models are latency-bound: with other processes on the 2 cores, one torch thread runs them
    ~10x faster than two (OpenMP spin-waits). Modules opt in with `pytestmark = usefixtures(...)`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
