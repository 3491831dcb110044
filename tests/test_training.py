"""Job control: spawn, watch, stop, resume and the one-job lock, with real child processes.

Most tests run a small real trainer-shaped script (written below) as the child, so spawning,
signals, the lock and progress reading are exercised in seconds; the end-to-end test with the
real finetune.train and the tiny model runs when that module exists.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import blocks.training as tr
from blocks.models import REPO_ROOT

FAKE_TRAINER = r'''
"""A trainer-shaped child: honours the CLI and the progress.jsonl contract, trains nothing."""
import argparse, json, os, signal, sys, time
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("config")
parser.add_argument("--run-dir", required=True)
parser.add_argument("--resume", action="store_true")
args = parser.parse_args()
if os.environ.get("RANK", "0") != "0":
    sys.exit(0)  # under torchrun: rank 0 alone writes, as the real trainer does
cfg = dict(line.split(": ", 1) for line in Path(args.config).read_text().splitlines() if ": " in line)
total, sleep_s, save_every = int(cfg["steps"]), float(cfg["sleep"]), int(cfg["save_every"])
run = Path(args.run_dir)
frozen = run / "config.yaml"
if Path(args.config).resolve() != frozen.resolve():
    frozen.write_text(Path(args.config).read_text())
stop = False

def on_term(signum, frame):
    global stop
    stop = True

if cfg.get("ignore_term") != "yes":
    signal.signal(signal.SIGTERM, on_term)
else:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

def emit(**event):
    with open(run / "progress.jsonl", "a") as fh:
        fh.write(json.dumps({**event, "time": time.time()}) + "\n")

ckpts = sorted(int(p.name.split("-")[1]) for p in run.glob("checkpoint-*"))
first = ckpts[-1] if args.resume and ckpts else 0
emit(event="start", total_steps=total, resumed_from=first if args.resume else None,
     world_size=int(os.environ.get("WORLD_SIZE", "1")))
print("training", flush=True)
if cfg.get("fail") == "oom":
    print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", flush=True)
    emit(event="end", status="failed", error="CUDA out of memory. Tried to allocate 2.00 GiB")
    sys.exit(1)
for step in range(first + 1, total + 1):
    time.sleep(sleep_s)
    emit(event="log", step=step, loss=round(3.0 / step, 4), learning_rate=1e-4, epoch=step / total)
    if step % save_every == 0 or step == total:
        (run / f"checkpoint-{step}").mkdir(exist_ok=True)
        emit(event="eval", step=step, eval_loss=round(3.5 / step, 4))
        emit(event="save", step=step, path=f"checkpoint-{step}")
    if stop:
        (run / f"checkpoint-{step}").mkdir(exist_ok=True)
        emit(event="save", step=step, path=f"checkpoint-{step}")
        emit(event="end", status="stopped", error=None)
        sys.exit(0)
(run / "adapter").mkdir(exist_ok=True)
(run / "adapter" / "adapter_config.json").write_text("{}")
emit(event="end", status="done", error=None)
'''


@pytest.fixture()
def fake_trainer(tmp_path, monkeypatch, workspace):
    """Point job control at the trainer-shaped script; returns a config writer."""
    mod_dir = tmp_path / "fake_mod"
    mod_dir.mkdir()
    (mod_dir / "fake_trainer.py").write_text(FAKE_TRAINER)
    monkeypatch.setattr(tr, "TRAINER_MODULE", "fake_trainer")
    # The fake config is not a TrainConfig: freeze it as it is.
    monkeypatch.setattr(tr, "freeze_config", lambda p, c, r, a=None: Path(shutil.copy(c, r / "config.yaml")))
    monkeypatch.setenv("PYTHONPATH", str(mod_dir))

    def write_config(name="fake", steps=40, sleep=0.05, save_every=5, **extra) -> Path:
        path = tmp_path / f"{name}.yaml"
        lines = {"steps": steps, "sleep": sleep, "save_every": save_every, **extra}
        path.write_text("".join(f"{k}: {v}\n" for k, v in lines.items()))
        return path

    yield write_config
    # Never leave a child behind, whatever a test did.
    for run_dir in (workspace / "p").glob("runs/*"):
        job = tr.read_json(run_dir / "job.json")
        if job and tr.pid_alive(job["pid"], run_dir.name):
            os.killpg(job["pgid"], signal.SIGKILL)


def wait_for(predicate, timeout=20.0):
    """Poll until `predicate()` is truthy (returns its value)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


# ---------------------------------------------------------------- pure core


def test_read_progress_returns_only_new_complete_lines(tmp_path):
    path = tmp_path / "progress.jsonl"
    path.write_text('{"event":"start","total_steps":3}\n{"event":"log","step":1,"lo')
    events, offset = tr.read_progress(tmp_path, 0)
    assert [e["event"] for e in events] == ["start"]
    with open(path, "a") as fh:
        fh.write('ss":2.0}\n{"event":"log","step":2,"loss":1.0}\n')
    events, offset2 = tr.read_progress(tmp_path, offset)
    assert [(e["step"], e["loss"]) for e in events] == [(1, 2.0), (2, 1.0)]
    assert tr.read_progress(tmp_path, offset2) == ([], offset2)
    assert tr.read_progress(tmp_path / "missing", 0) == ([], 0)


def test_corrupt_line_from_a_killed_writer_is_skipped():
    text = '{"event":"log","step":1,"loss":2}\n{"event":"lo\n{"event":"start","total_steps":9}\n'
    assert [e["event"] for e in tr.parse_events(text)] == ["log", "start"]


def test_status_comes_from_end_event_or_process_liveness():
    events = [{"event": "start", "total_steps": 10, "time": 1.0}, {"event": "log", "step": 3, "loss": 1.5}]
    assert tr.summarize_events(events, alive=True, job_started=0.5)["status"] == "running"
    assert tr.summarize_events(events, alive=False, job_started=0.5)["status"] == "crashed"
    assert tr.summarize_events([], alive=True, job_started=0.5)["status"] == "starting"
    stopped = events + [{"event": "end", "status": "stopped", "error": None, "time": 2.0}]
    assert tr.summarize_events(stopped, alive=False, job_started=0.5)["status"] == "stopped"
    # Resume just spawned (job started after that end), its start event not yet written.
    assert tr.summarize_events(stopped, alive=True, job_started=3.0)["status"] == "starting"
    resumed = stopped + [{"event": "start", "total_steps": 10, "resumed_from": 3, "time": 3.5}]
    summary = tr.summarize_events(resumed, alive=True, job_started=3.0)
    assert (summary["status"], summary["step"], summary["loss"]) == ("running", 3, 1.5)
    failed = resumed + [{"event": "end", "status": "failed", "error": "boom", "time": 4.0}]
    assert tr.summarize_events(failed, alive=False, job_started=3.0)["error"] == "boom"


def test_eta_from_step_rate():
    events = [
        {"event": "start", "total_steps": 100, "resumed_from": 20, "time": 0.0},
        {"event": "log", "step": 30, "loss": 1.0, "time": 10.0},
    ]
    # 10 steps in 10 s, 70 left: 70 s from the last log, 5 s of which already passed.
    assert tr.estimate_eta(events, now=15.0) == pytest.approx(65.0)
    assert tr.estimate_eta(events[:1], now=15.0) is None


def test_loss_points_have_train_and_eval_series_and_resume_overwrites():
    events = [
        {"event": "log", "step": 1, "loss": 3.0},
        {"event": "log", "step": 2, "loss": 2.0},
        {"event": "eval", "step": 2, "eval_loss": 2.5},
        {"event": "start", "total_steps": 4, "resumed_from": 1},
        {"event": "log", "step": 2, "loss": 1.9},
    ]
    points = tr.loss_points(events)
    assert {(p["series"], p["step"], p["loss"]) for p in points} == {
        ("train", 1, 3.0),
        ("train", 2, 1.9),
        ("eval", 2, 2.5),
    }


def test_gpu_memory_peak_is_shown_in_the_tab_and_the_cli():
    import ui_training

    events = [
        {"event": "start", "total_steps": 10, "resumed_from": None, "time": 0.0},
        {"event": "log", "step": 1, "loss": 3.0, "gpu_gib": 20.5, "time": 1.0},
        {"event": "log", "step": 2, "loss": 2.0, "gpu_gib": 21.25, "time": 2.0},
        {"event": "log", "step": 3, "loss": 1.5, "gpu_gib": 21.0, "time": 3.0},
    ]
    summary = tr.summarize_events(events, alive=True, job_started=0.0)
    assert summary["gpu_gib"] == 21.25  # the peak so far, not the last reading
    status = tr.RunStatus(run_id="r1", run_dir="/x", **summary)
    assert "GPU memory peak 21.2 GiB" in ui_training.render_status(status, "en")
    assert "显存峰值 21.2 GiB" in ui_training.render_status(status, "zh")
    assert "gpu 21.2 GiB" in tr.format_status(status)
    # a CPU run logs no memory: nothing is shown
    cpu = tr.RunStatus(run_id="r2", run_dir="/x", **tr.summarize_events(events[:1], True, 0.0))
    assert cpu.gpu_gib is None and "GiB" not in ui_training.render_status(cpu, "en")


def test_oom_detection_and_safe_run_ids():
    assert tr.looks_like_oom("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate")
    assert not tr.looks_like_oom("ValueError: dataset is empty")
    run_id = tr.new_run_id(Path("my config/../x y.yaml"))
    assert tr.ws.check_name(run_id, "run id") == run_id and run_id.endswith("-x-y")


def test_command_is_an_argument_list_with_resume_flag(tmp_path):
    cmd = tr.trainer_command(tmp_path / "c.yaml", tmp_path / "run", resume=True)
    assert cmd[:3] == [sys.executable, "-m", "finetune.train"]
    assert cmd[3:] == [str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "run"), "--resume"]
    ddp = tr.trainer_command(tmp_path / "c.yaml", tmp_path / "run", processes=4)
    assert ddp[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4"]
    assert ddp[5:] == cmd[1:-1]


def test_gpu_count_is_checked_before_starting(monkeypatch):
    assert tr.check_processes(1) == 1 and tr.check_processes(2.0) == 2
    for bad in (0, -1, 1.5, "2", True, None):
        with pytest.raises(tr.TrainingError, match="whole number of at least 1"):
            tr.check_processes(bad)
    import blocks.config

    monkeypatch.setattr(blocks.config, "gpu_count", lambda: 2)
    assert tr.check_processes(2) == 2
    with pytest.raises(tr.TrainingError, match="has 2 GPU"):
        tr.check_processes(4)


# ---------------------------------------------------------------- real child processes


def test_start_watch_stop_resume_finish(fake_trainer, workspace):
    config = fake_trainer(steps=40, sleep=0.05, save_every=5)
    status = tr.start_run("p", config, run_id="r1")
    run_dir = Path(status.run_dir)
    assert status.active and (run_dir / "job.json").is_file()
    job = json.loads((run_dir / "job.json").read_text())
    assert job["pgid"] == job["pid"]  # its own process group
    assert tr.active_run().run_id == "r1"  # what a refreshed page re-attaches to

    wait_for(lambda: tr.get_run_status(run_dir).step >= 6)
    with pytest.raises(tr.JobRunningError, match="only one training job"):
        tr.start_run("p", config, run_id="r2")
    assert not (workspace / "p" / "runs" / "r2").exists()

    stopped = tr.stop_run(run_dir, timeout_s=10)
    assert stopped.status == "stopped" and stopped.error is None
    assert tr.active_run() is None and not tr.lock_path().exists()
    stopped_at = stopped.step
    assert stopped.checkpoints[-1] == stopped_at  # the trainer saved on stop
    assert "training" in tr.read_log_tail(run_dir)

    resumed = tr.resume_run("p", "r1")
    assert resumed.active
    final = tr.wait_run(run_dir, timeout_s=30)
    assert final.status == "done" and final.step == 40 and final.has_adapter
    events, _ = tr.read_progress(run_dir)
    starts = [e for e in events if e["event"] == "start"]
    assert starts[-1]["resumed_from"] == stopped_at
    # The curve continues where it stopped: every step logged exactly once.
    steps = [e["step"] for e in events if e["event"] == "log"]
    assert sorted(steps) == list(range(1, 41))
    assert [s.run_id for s in tr.list_runs("p")] == ["r1"]

    with pytest.raises(tr.TrainingError, match="finished"):
        tr.resume_run("p", "r1")


def test_several_gpus_run_under_torchrun_and_resume_with_as_many(fake_trainer, workspace):
    """GPUs > 1 starts one process each (torchrun); stop reaches them; resume uses the same count."""
    config = fake_trainer(steps=30, sleep=0.05, save_every=5)
    run_dir = Path(tr.start_run("p", config, run_id="ddp", processes=2).run_dir)
    assert tr.read_json(run_dir / "job.json")["processes"] == 2
    wait_for(lambda: tr.get_run_status(run_dir).step >= 6, timeout=60)
    stopped = tr.stop_run(run_dir, timeout_s=30)
    assert stopped.status == "stopped" and stopped.checkpoints, tr.read_log_tail(run_dir)
    tr.resume_run("p", "ddp")
    assert tr.read_json(run_dir / "job.json")["processes"] == 2
    final = tr.wait_run(run_dir, timeout_s=60)
    assert final.status == "done" and final.step == 30, tr.read_log_tail(run_dir)
    events, _ = tr.read_progress(run_dir)
    assert [e["world_size"] for e in events if e["event"] == "start"] == [2, 2]


def test_trainer_ignoring_sigterm_is_killed_and_can_resume(fake_trainer):
    config = fake_trainer(steps=30, sleep=0.05, save_every=3, ignore_term="yes")
    run_dir = Path(tr.start_run("p", config, run_id="stubborn").run_dir)
    wait_for(lambda: tr.get_run_status(run_dir).checkpoints)
    status = tr.stop_run(run_dir, timeout_s=0.5)
    assert status.status == "stopped" and "killed" in status.error
    status = tr.resume_run("p", "stubborn")
    assert tr.wait_run(run_dir, timeout_s=30).status == "done"


def test_killed_trainer_shows_crashed_and_frees_the_lock(fake_trainer):
    config = fake_trainer(steps=200, sleep=0.05, save_every=2)
    run_dir = Path(tr.start_run("p", config, run_id="victim").run_dir)
    wait_for(lambda: tr.get_run_status(run_dir).checkpoints)
    os.killpg(tr.read_json(run_dir / "job.json")["pgid"], signal.SIGKILL)
    status = wait_for(lambda: (s := tr.get_run_status(run_dir)).status == "crashed" and s)
    assert "resume" in status.error
    assert tr.read_lock() is None  # the stale lock does not block the next job
    resumed = tr.resume_run("p", "victim")
    assert resumed.active
    tr.stop_run(run_dir, timeout_s=10)


def test_failure_shows_failed_log_tail_and_oom_hint(fake_trainer):
    config = fake_trainer(fail="oom")
    run_dir = Path(tr.start_run("p", config, run_id="big").run_dir)
    status = tr.wait_run(run_dir, timeout_s=20)
    assert status.status == "failed" and status.oom
    assert "CUDA out of memory" in tr.read_log_tail(run_dir)
    with pytest.raises(tr.TrainingError, match="no checkpoint"):
        tr.resume_run("p", "big")


def test_stale_or_reused_pid_lock_does_not_block(fake_trainer, workspace):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tr.lock_path().write_text(json.dumps({"pid": dead.pid, "run_dir": "/x/r0", "run_id": "r0"}))
    assert tr.read_lock() is None and not tr.lock_path().exists()
    # A live pid that is not a trainer for that run (pid reused after a reboot) is stale too.
    tr.lock_path().write_text(json.dumps({"pid": os.getpid(), "run_dir": "/x/r0", "run_id": "r0"}))
    assert tr.read_lock() is None


def test_bad_input_gives_clear_messages(fake_trainer, workspace, tmp_path):
    with pytest.raises(tr.TrainingError, match="does not exist"):
        tr.start_run("p", tmp_path / "nope.yaml")
    with pytest.raises(tr.TrainingError, match="No run"):
        tr.resume_run("p", "nothing")
    with pytest.raises(tr.ws.WorkspaceError, match="Invalid run id"):
        tr.resume_run("p", "../etc")
    (workspace / "p" / "runs" / "idle").mkdir(parents=True)
    with pytest.raises(tr.TrainingError, match="not running"):
        tr.stop_run(workspace / "p" / "runs" / "idle")
    with pytest.raises(tr.TrainingError, match="no final adapter"):
        tr.restart_from_adapter("p", "idle")


def test_cli_lists_runs_and_reports_errors(fake_trainer, workspace):
    config = fake_trainer(steps=3, sleep=0.01)
    tr.wait_run(Path(tr.start_run("p", config, run_id="cli1").run_dir), timeout_s=20)
    env = {**os.environ, "UMTCDS_DATA_DIR": str(workspace)}
    run = [sys.executable, "-m", "blocks.training"]
    out = subprocess.run(
        [*run, "list", "--project", "p"], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0 and "cli1" in out.stdout and "done" in out.stdout
    out = subprocess.run(
        [*run, "resume", "--project", "p", "ghost"], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 2 and "No run 'ghost'" in out.stderr
    args = [*run, "start", "--project", "p", "--config", str(config), "--gpus", "0"]
    out = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 2 and "GPUs must be a whole number of at least 1" in out.stderr
    out = subprocess.run([*run, "--help"], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert "python -m blocks.training start" in out.stdout


# ---------------------------------------------------------------- the tab's polling (no browser)


def test_tab_reattaches_from_disk_and_reads_incrementally(fake_trainer, workspace):
    import ui_training as ui

    config = fake_trainer(steps=40, sleep=0.1, save_every=5)
    tr.start_run("p", config, run_id="live")
    wait_for(lambda: tr.get_run_status(workspace / "p" / "runs" / "live").step >= 3)
    # A fresh page: no run chosen, empty state. The tick finds the running job by itself.
    watch, run_update, status_md, bar, plot, tail, table = ui.poll("p", "", ui.empty_watch(), "en")
    assert watch["run_id"] == "live" and run_update["value"] == "live"
    assert "running" in status_md and "ETA" in status_md and "width:" in bar
    (axes,) = plot.axes
    assert [line.get_label() for line in axes.get_lines()][0] == "train"
    assert min(axes.get_lines()[0].get_xdata()) == 1
    assert "training" in tail and list(table["run"]) == ["live"]
    first_offset = watch["offset"]
    tr.wait_run(workspace / "p" / "runs" / "live", timeout_s=30)
    watch, *_rest = ui.poll("p", "live", watch, "zh")
    assert watch["offset"] > first_offset
    steps = [e["step"] for e in watch["events"] if e["event"] == "log"]
    assert steps == list(range(1, 41))  # every event read exactly once across ticks
    assert "已完成" in _rest[1]


def test_tab_shows_failure_with_oom_hint(fake_trainer, workspace):
    import ui_training as ui

    tr.wait_run(Path(tr.start_run("p", fake_trainer(fail="oom"), run_id="oom").run_dir), timeout_s=20)
    _watch, _run, status_md, _bar, _plot, tail, _table = ui.poll("p", "oom", ui.empty_watch(), "en")
    assert "failed" in status_md and "Out of memory" in status_md and "QLoRA" in status_md
    assert "CUDA out of memory" in tail


# ---------------------------------------------------------------- the real trainer


@pytest.mark.slow
def test_real_trainer_start_stop_resume_finish(tiny_model_dir, workspace, monkeypatch, tmp_path):
    """finetune.train on the tiny model, driven only through blocks.training."""
    from blocks.config import TrainConfig, save_config

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny steps: extra threads only fight for 2 cores
    dataset = workspace / "p" / "dataset"
    dataset.mkdir(parents=True)
    pairs = [("When does the library open?", "At 8:00."), ("Where is the office?", "In Building A.")]
    lines = [
        json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
        for q, a in pairs
    ]
    for split in ("train", "dev", "test"):
        (dataset / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    cfg = TrainConfig(
        base_model=str(tiny_model_dir),
        dataset_dir=str(dataset),
        learning_rate=1e-2,
        max_steps=400,
        batch_size=2,
        logging_steps=1,
        eval_steps=5,
        save_steps=5,
        lr_scheduler="constant",
        warmup_ratio=0.0,
        max_input_length=64,
        max_output_length=32,
    )
    config = save_config(cfg, tmp_path / "tiny-lora.yaml")
    run_dir = Path(tr.start_run("p", config, run_id="real").run_dir)
    try:
        wait_for(lambda: tr.get_run_status(run_dir).step >= 6, timeout=180)
        assert tr.get_run_status(run_dir).status == "running"
        stopped = tr.stop_run(run_dir, timeout_s=60)
        assert stopped.status == "stopped", tr.read_log_tail(run_dir)
        assert stopped.checkpoints and not tr.lock_path().exists()

        # Resume with a short schedule: the frozen config keeps max_steps, so edit only for the test.
        frozen = run_dir / "config.yaml"
        frozen.write_text(
            frozen.read_text().replace("max_steps: 400", f"max_steps: {stopped.checkpoints[-1] + 4}")
        )
        tr.resume_run("p", "real")
        final = tr.wait_run(run_dir, timeout_s=180)
        assert final.status == "done", tr.read_log_tail(run_dir)
        assert final.has_adapter and final.step == stopped.checkpoints[-1] + 4
        events, _ = tr.read_progress(run_dir)
        assert [e for e in events if e["event"] == "start"][-1]["resumed_from"] == stopped.checkpoints[-1]
    finally:
        job = tr.read_json(run_dir / "job.json")
        if job and tr.pid_alive(job["pid"], run_dir.name):
            os.killpg(job["pgid"], signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.browser
def test_tab_drives_a_real_run_in_the_browser(tiny_model_dir, tmp_path):
    """The Training tab in headless Chromium: start, curve/status update, stop, refresh, resume, finish, evaluate."""
    from browser import ARTIFACTS, browser_page, running_app

    from blocks.config import TrainConfig, save_config

    data = tmp_path / "data"
    dataset = data / "demo" / "dataset"
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
        eval_steps=5,
        save_steps=5,
        max_input_length=32,
        max_output_length=16,
    )
    save_config(cfg, data / "demo" / "configs" / "tiny-ui.yaml")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with running_app(data, env={"OMP_NUM_THREADS": "1"}) as url, browser_page() as page:
        page.goto(url)
        page.get_by_role("tab", name="7 Training").click()
        page.get_by_role("listbox", name="Config", exact=True).click()
        page.get_by_role("option", name=re.compile("tiny-ui.yaml")).click()
        page.get_by_role("button", name="Start training").click()
        page.get_by_text("· running ·").wait_for(timeout=120_000)
        page.get_by_text(re.compile(r"running · step ([6-9]|\d\d)")).wait_for(timeout=120_000)
        page.screenshot(path=str(ARTIFACTS / "training-running.png"), full_page=True)
        page.get_by_role("button", name="Stop training").click()
        page.get_by_text("· stopped ·").wait_for(timeout=90_000)

        run_dir = next((data / "demo" / "runs").iterdir())
        stopped_at = tr.get_run_status(run_dir).checkpoints[-1]
        frozen = run_dir / "config.yaml"  # a short remaining schedule keeps the test quick
        frozen.write_text(frozen.read_text().replace("max_steps: 400", f"max_steps: {stopped_at + 3}"))

        page.reload()  # re-attach: the state comes from disk only
        page.get_by_role("tab", name="7 Training").click()
        page.get_by_text("· stopped ·").wait_for(timeout=30_000)
        page.wait_for_timeout(4000)
        page.screenshot(path=str(ARTIFACTS / "training-reattached.png"), full_page=True)
        page.get_by_role("button", name="Resume from last checkpoint").click()
        page.get_by_text(f"· done · step {stopped_at + 3}").wait_for(timeout=120_000)
        page.get_by_text("Evaluate on the test split").click()
        page.get_by_role("button", name="Evaluate", exact=True).click()
        page.get_by_text("facts_all").wait_for(timeout=120_000)
        page.screenshot(path=str(ARTIFACTS / "training-done.png"), full_page=True)
    assert tr.get_run_status(run_dir).has_adapter
    assert json.loads((run_dir / "eval" / "metrics.json").read_text())["n"] == 1


def test_invalid_config_is_refused_before_any_process_starts(tiny_model_dir, workspace, tmp_path):
    from blocks.config import TrainConfig, save_config

    config = save_config(
        TrainConfig(base_model=str(tiny_model_dir), dataset_dir=str(tmp_path / "no-dataset")),
        tmp_path / "c.yaml",
    )
    with pytest.raises(tr.TrainingError, match="build the dataset first"):
        tr.start_run("p", config, run_id="bad")
    bad_key = tmp_path / "typo.yaml"
    bad_key.write_text(config.read_text() + "learning_rat: 0.1\n")
    with pytest.raises(tr.TrainingError, match="learning_rat"):
        tr.start_run("p", bad_key, run_id="bad")
    assert not (workspace / "p" / "runs" / "bad").exists() and tr.read_lock() is None
