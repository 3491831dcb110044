"""Training faults: a Stop that has to fall back to SIGKILL, and a progress line torn by a kill, must
leave a run that resumes and finishes; every reader of progress.jsonl skips torn lines and the
appenders never write a blank one (issue 16, item 1)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

import blocks.training as tr
from finetune import train as trainer

START = {"event": "start", "step": 0, "total_steps": 10, "resumed_from": None}
LOG = {"event": "log", "step": 1, "loss": 2.5}
# What a SIGKILL mid-write leaves: half a line with no newline, cut inside a multi-byte character.
TORN_TAILS = [
    b"",
    b'{"event": "log", "step": 2, "lo',
    '{"event": "end", "status": "failed", "error": "显存'.encode()[:-1],
    b"\n",  # a blank line written by an older version of the appender
]


def write_progress(run_dir: Path, tail: bytes) -> Path:
    path = run_dir / "progress.jsonl"
    path.write_bytes((json.dumps(START) + "\n" + json.dumps(LOG) + "\n").encode() + tail)
    return path


@pytest.mark.parametrize("tail", TORN_TAILS, ids=["clean", "torn-json", "torn-utf8", "blank-line"])
def test_app_and_trainer_appenders_after_a_kill_keep_the_file_readable(tail, tmp_path):
    """The app's SIGKILL `end` event, then a resumed trainer's own events: every reader sees them all."""
    path = write_progress(tmp_path, tail)
    tr.append_event(tmp_path, {"event": "end", "status": "stopped", "error": "killed"})
    trainer.append_event(tmp_path, "start", step=0, total_steps=10, resumed_from=1)
    trainer.append_event(tmp_path, "log", step=2, loss=1.5)

    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"", "the file must end with a newline"
    new_lines = [json.loads(x) for x in lines[-4:-1]]  # the three appended events, whole and unglued
    assert [e["event"] for e in new_lines] == ["end", "start", "log"]
    # appenders never add a blank line (only what an old appender left can be blank)
    assert lines[:-1].count(b"") == tail.count(b"\n")

    assert trainer.read_curve(tmp_path) == ([(1, 2.5), (2, 1.5)], [])
    events, _ = tr.read_progress(tmp_path)
    assert [e["event"] for e in events] == ["start", "log", "end", "start", "log"]


def test_curve_reader_skips_blank_torn_and_foreign_lines(tmp_path):
    """Any line that is not a whole event object is skipped, wherever it is in the file."""
    junk = [
        b"",
        b"   ",
        b"\xff\xfe",
        b"[1, 2]",
        b'"text"',
        b'{"no_event": 1}',
        b'{"event": "log", "step": "x"}',
    ]
    body = b"\n".join([json.dumps(START).encode(), *junk, json.dumps(LOG).encode(), b'{"event": "ev']) + b"\n"
    (tmp_path / "progress.jsonl").write_bytes(body)
    assert trainer.read_curve(tmp_path) == ([(1, 2.5)], [])
    assert trainer.read_curve(tmp_path / "missing") == ([], [])


def wait_for(predicate, timeout: float, poll: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(poll)


@pytest.mark.slow
def test_real_trainer_killed_by_stop_resumes_and_finishes(tiny_model_dir, workspace, monkeypatch, tmp_path):
    """finetune.train on the tiny model: a Stop that ends in SIGKILL, then Resume, runs to the end."""
    from blocks.config import TrainConfig, save_config

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    dataset = workspace / "p" / "dataset"
    dataset.mkdir(parents=True)
    line = {"messages": [{"role": "user", "content": "When?"}, {"role": "assistant", "content": "At 8:00."}]}
    for split in ("train", "dev", "test"):
        (dataset / f"{split}.jsonl").write_text(json.dumps(line) + "\n")
    cfg = TrainConfig(
        base_model=str(tiny_model_dir),
        dataset_dir=str(dataset),
        max_steps=400,
        batch_size=1,
        logging_steps=1,
        eval_steps=1000,
        save_steps=3,
        lr_scheduler="constant",
        warmup_ratio=0.0,
        max_input_length=32,
        max_output_length=16,
    )
    run_dir = Path(tr.start_run("p", save_config(cfg, tmp_path / "tiny.yaml"), run_id="killed").run_dir)
    try:
        wait_for(lambda: trainer.latest_checkpoint(run_dir) is not None, timeout=180)
        stopped = tr.stop_run(run_dir, timeout_s=0)  # no grace: the SIGKILL fallback, every time
        assert stopped.status == "stopped", tr.read_log_tail(run_dir)
        assert "killed" in (stopped.error or "")
        checkpoint = int(trainer.latest_checkpoint(run_dir).name.split("-")[1])

        frozen = run_dir / "config.yaml"  # a short schedule for the test; the frozen config says 400
        frozen.write_text(frozen.read_text().replace("max_steps: 400", f"max_steps: {checkpoint + 3}"))
        tr.resume_run("p", "killed")
        final = tr.wait_run(run_dir, timeout_s=180)
        assert final.status == "done", tr.read_log_tail(run_dir)
        assert final.has_adapter and final.step == checkpoint + 3
        train_points, _ = trainer.read_curve(run_dir)
        assert train_points[-1][0] == checkpoint + 3
        assert b"\n\n" not in (run_dir / "progress.jsonl").read_bytes()
    finally:
        job = tr.read_json(run_dir / "job.json")
        if job and tr.pid_alive(job["pid"], run_dir.name):
            os.killpg(job["pgid"], signal.SIGKILL)
