"""Training job control: start the trainer as a background process, watch, stop and resume it.

The trainer (`python -m finetune.train CONFIG.yaml --run-dir RUN_DIR [--resume]`) runs in its own
process group with its output in RUN_DIR/train.log. Everything the UI shows is derived from files
(job.json, progress.jsonl, train.log, a lock under data/), so a refreshed page or a restarted app
re-attaches to a running job without any in-memory state.

    python -m blocks.training start  --project demo --config configs/lora.yaml
    python -m blocks.training status --project demo [RUN_ID] [--follow]
    python -m blocks.training list   --project demo
    python -m blocks.training stop   --project demo [RUN_ID] [--timeout 30]
    python -m blocks.training resume --project demo RUN_ID
    python -m blocks.training restart-from --project demo RUN_ID     # new run from RUN_ID's adapter
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import blocks.workspace as ws
from blocks.models import REPO_ROOT
from blocks.workspace import pid_alive

log = logging.getLogger(__name__)

TRAINER_MODULE = "finetune.train"
LOCK_NAME = "train.lock"
STOP_TIMEOUT_S = 120.0  # a big model's step plus checkpoint save can take a minute; SIGKILL mid-save loses it
STATUSES = ("starting", "running", "done", "stopped", "failed", "crashed")
_OOM_RE = re.compile(
    r"out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED|MemoryError|DefaultCPUAllocator: can't allocate",
    re.IGNORECASE,
)


class TrainingError(RuntimeError):
    """A training action that cannot be done; the message says what to do instead."""


class JobRunningError(TrainingError):
    """Another training job holds the lock (one GPU job at a time)."""


@dataclass
class RunStatus:
    """What a user needs to know about one run, derived only from its files."""

    run_id: str
    run_dir: str
    status: str  # one of STATUSES
    step: int = 0
    total_steps: int | None = None
    loss: float | None = None
    eval_loss: float | None = None
    gpu_gib: float | None = None  # the trainer's peak GPU memory (PyTorch allocator), when on a GPU
    started_at: float | None = None
    eta_s: float | None = None
    error: str | None = None
    oom: bool = False  # the log shows an out-of-memory error: suggest a smaller batch/length or QLoRA
    checkpoints: list[int] = field(default_factory=list)
    has_adapter: bool = False
    pid: int | None = None

    @property
    def active(self) -> bool:
        return self.status in ("starting", "running")


# ---------------------------------------------------------------- pure core


def parse_events(text: str) -> list[dict]:
    """Parse complete JSONL lines; a corrupt line (e.g. cut by a SIGKILL mid-write) is skipped."""
    events = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            log.warning("skipping a corrupt progress line: %.80s", line)
            continue
        if isinstance(event, dict) and "event" in event:
            events.append(event)
    return events


def current_segment(events: list[dict]) -> list[dict]:
    """Events since the last `start` (a resumed run appends a new segment to the same file)."""
    starts = [i for i, e in enumerate(events) if e.get("event") == "start"]
    return events[starts[-1] :] if starts else events


def estimate_eta(events: list[dict], now: float) -> float | None:
    """Seconds left, from the step rate of the current segment's log events."""
    segment = current_segment(events)
    total = segment[0].get("total_steps") if segment and segment[0].get("event") == "start" else None
    steps = [(e["time"], e["step"]) for e in segment if e.get("event") in ("log", "eval") and "time" in e]
    if not total or not steps:
        return None
    t0 = segment[0].get("time", steps[0][0])
    s0 = segment[0].get("resumed_from") or 0
    t1, s1 = steps[-1]
    if s1 <= s0 or t1 <= t0:
        return None
    rate = (s1 - s0) / (t1 - t0)
    return max(0.0, (total - s1) / rate - (now - t1))


def summarize_events(events: list[dict], alive: bool, job_started: float | None) -> dict:
    """Status, step, losses and error from the events and whether the trainer process lives.

    `job_started` is job.json's spawn time: an end event older than it closed an earlier attempt
    (a resume was just spawned and has not written its start event yet).
    """
    segment = current_segment(events)
    end = next((e for e in reversed(segment) if e.get("event") == "end"), None)
    if end is not None and job_started is not None and end.get("time", job_started) < job_started:
        end = None
    started = any(e.get("event") == "start" and e.get("time", 0) >= (job_started or 0) for e in segment)
    if end is not None:
        status = end.get("status") if end.get("status") in ("done", "stopped", "failed") else "failed"
    elif alive:
        status = "running" if started else "starting"
    else:
        status = "crashed" if job_started is not None else "starting"
    start = next((e for e in reversed(events) if e.get("event") == "start"), None)
    logs = [e for e in events if e.get("event") == "log" and e.get("loss") is not None]
    evals = [e for e in events if e.get("event") == "eval" and e.get("eval_loss") is not None]
    stepped = [e["step"] for e in events if isinstance(e.get("step"), int)]
    return {
        "status": status,
        "step": max(stepped) if stepped else (start or {}).get("resumed_from") or 0,
        "total_steps": (start or {}).get("total_steps"),
        "loss": logs[-1]["loss"] if logs else None,
        "eval_loss": evals[-1]["eval_loss"] if evals else None,
        "gpu_gib": max(
            (e["gpu_gib"] for e in logs if isinstance(e.get("gpu_gib"), int | float)), default=None
        ),
        "error": end.get("error") if end else None,
    }


def loss_points(events: list[dict]) -> list[dict]:
    """Rows {step, loss, series} for a train/eval loss plot (later segments overwrite resumed steps)."""
    points: dict[tuple[str, int], float] = {}
    for e in events:
        if e.get("event") == "log" and e.get("loss") is not None:
            points[("train", e["step"])] = float(e["loss"])
        elif e.get("event") == "eval" and e.get("eval_loss") is not None:
            points[("eval", e["step"])] = float(e["eval_loss"])
    return [
        {"step": s, "loss": v, "series": k} for (k, s), v in sorted(points.items(), key=lambda x: x[0][1])
    ]


def looks_like_oom(log_text: str) -> bool:
    """True when the trainer's log shows an out-of-memory error."""
    return bool(_OOM_RE.search(log_text))


def new_run_id(config_path: Path, now: datetime | None = None) -> str:
    """A sortable, safe run id: <yyyymmdd-hhmmss>-<config name>."""
    stem = re.sub(r"[^A-Za-z0-9_.\-\u4e00-\u9fff]", "-", Path(config_path).stem)[:40].strip("-.") or "run"
    if ws.is_reserved_name(stem):  # a config named "x.lock" must still give a usable run id
        stem = stem.replace(".", "-")
    return f"{(now or datetime.now()).strftime('%Y%m%d-%H%M%S')}-{stem}"


def trainer_command(config_path: Path, run_dir: Path, resume: bool = False, processes: int = 1) -> list[str]:
    """The trainer's argument list (never a shell string); `processes` > 1: under torchrun, one
    process per GPU (DDP, docs/TRAINING.md)."""
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    cmd = [*launcher, "-m", TRAINER_MODULE, str(config_path), "--run-dir", str(run_dir)]
    return cmd + ["--resume"] if resume else cmd


# ---------------------------------------------------------------- processes and files


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON via a temporary file and os.replace, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    """The JSON object in `path`, or None if the file does not exist."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def lock_path() -> Path:
    """The one-job-at-a-time lock; it lives under data/ so it survives app restarts."""
    return Path(ws.DATA_DIR) / LOCK_NAME


def read_lock() -> dict | None:
    """The live lock's content, or None if free (a lock whose process died is stale and removed)."""
    path = lock_path()
    if path.is_dir():  # not a lock: a folder made under this name (acquire_lock explains)
        return None
    lock = read_json(path)
    if lock is None:
        return None
    if pid_alive(lock.get("pid"), lock.get("run_id") if lock.get("run_dir") else None):
        return lock
    path.unlink(missing_ok=True)
    return None


def locked_message(holder: dict) -> str:
    """What to tell a user whose start is refused because another job runs."""
    return (
        f"Training run {holder.get('run_id')} (project {holder.get('project')}) is still running: "
        "only one training job runs at a time. Stop it or wait for it to finish."
    )


def acquire_lock(run_dir: Path) -> None:
    """Take the lock for `run_dir` (held by this process until the trainer's pid replaces it)."""
    path = lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():  # a project folder made under this name before the name was reserved
        raise TrainingError(
            f"{path} is a folder, but training keeps its lock file there: rename that folder "
            f"(e.g. to {path.name.replace('.', '-')}) and start again."
        )
    # Our own pid for now: if we die before spawning, the lock is stale, not stuck.
    tmp = path.with_name(f".{LOCK_NAME}.{os.getpid()}.tmp")
    tmp.write_text(
        json.dumps({"pid": os.getpid(), "run_dir": None, "run_id": run_dir.name}), encoding="utf-8"
    )
    try:
        for _ in range(2):
            try:
                os.link(tmp, path)  # atomic create-if-absent, with the content already complete
                return
            except FileExistsError:
                holder = read_lock()  # removes a stale lock, so the second try succeeds
                if holder is not None:
                    raise JobRunningError(locked_message(holder)) from None
    finally:
        tmp.unlink(missing_ok=True)
    raise JobRunningError(f"Could not take the training lock {path}: another start is racing; try again.")


def release_lock(run_dir: Path) -> None:
    """Remove the lock if it belongs to `run_dir`."""
    lock = read_json(lock_path())
    if lock is not None and lock.get("run_id") == run_dir.name:
        lock_path().unlink(missing_ok=True)


# Secrets of the app and the LLM stages: the trainer needs none of them, and a child process's environment
# is readable by anything running as the same user for as long as the (hours-long) training lasts.
TRAINER_HIDDEN_ENV = ("UMTCDS_AUTH", "UMTCDS_API_KEY", "ZHIPUAI_API_KEY", "OPENAI_API_KEY")


def trainer_env() -> dict[str, str]:
    """This process's environment without the secrets the trainer has no use for (TRAINER_HIDDEN_ENV)."""
    return {k: v for k, v in os.environ.items() if k not in TRAINER_HIDDEN_ENV}


def spawn_trainer(config_path: Path, run_dir: Path, resume: bool = False, processes: int = 1) -> int:
    """Start the trainer in its own process group, output to train.log; write job.json; return the pid."""
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    project = run_dir.parent.parent.name
    acquire_lock(run_dir)
    try:
        with open(run_dir / "train.log", "ab") as logf:
            proc = subprocess.Popen(  # noqa: S603 - argument list built by trainer_command, no shell
                trainer_command(config_path, run_dir, resume, processes),
                cwd=REPO_ROOT,
                env=trainer_env(),
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
    except BaseException:
        release_lock(run_dir)
        raise
    job = {
        "pid": proc.pid,
        "pgid": os.getpgid(proc.pid),
        "started_at": time.time(),
        "resume": resume,
        "processes": processes,
    }
    write_json_atomic(run_dir / "job.json", job)
    # The run id is in the trainer's command line: a later check uses it to spot pid reuse.
    lock = {**job, "run_dir": str(run_dir), "run_id": run_dir.name, "project": project}
    write_json_atomic(lock_path(), lock)
    return proc.pid


def read_progress(run_dir: Path, offset: int = 0) -> tuple[list[dict], int]:
    """New events in progress.jsonl after byte `offset`, and the offset to pass next time."""
    path = Path(run_dir) / "progress.jsonl"
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return [], offset
    complete = data.rfind(b"\n") + 1  # a line still being written is read next time
    return parse_events(data[:complete].decode("utf-8", errors="replace")), offset + complete


def read_log_tail(run_dir: Path, max_lines: int = 40, max_bytes: int = 64_000) -> str:
    """The last lines of train.log (progress bars' carriage returns folded into lines)."""
    path = Path(run_dir) / "train.log"
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - max_bytes))
            text = fh.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    lines = [part.rsplit("\r", 1)[-1] for part in text.split("\n")]
    return "\n".join(lines[-max_lines:]).strip("\n")


def list_checkpoints(run_dir: Path) -> list[int]:
    """Steps of the saved checkpoints, ascending."""
    steps = []
    for p in Path(run_dir).glob("checkpoint-*"):
        suffix = p.name.split("-", 1)[1]
        if p.is_dir() and suffix.isdigit():
            steps.append(int(suffix))
    return sorted(steps)


def get_run_status(run_dir: Path, events: list[dict] | None = None) -> RunStatus:
    """The run's status from its files: running, done/stopped/failed (end event) or crashed.

    Pass `events` already read incrementally (see read_progress) to skip re-reading progress.jsonl.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TrainingError(f"Run folder {run_dir} does not exist: pick a run from the list.")
    job = read_json(run_dir / "job.json")
    # Liveness first: a trainer that exits right after this check has already written its end event.
    alive = pid_alive(job.get("pid"), run_dir.name) if job else False
    given = events is not None
    if events is None:
        events, _ = read_progress(run_dir)
    summary = summarize_events(events, alive, job.get("started_at") if job else None)
    if summary["status"] == "crashed" and given:
        # The trainer may have written its end event and exited after `events` were read.
        events, _ = read_progress(run_dir)
        summary = summarize_events(events, alive, job.get("started_at") if job else None)
    status = RunStatus(
        run_id=run_dir.name,
        run_dir=str(run_dir),
        started_at=job.get("started_at") if job else None,
        pid=job.get("pid") if job and alive else None,
        checkpoints=list_checkpoints(run_dir),
        has_adapter=(run_dir / "adapter" / "adapter_config.json").is_file(),
        **summary,
    )
    if status.status == "running":
        status.eta_s = estimate_eta(events, time.time())
    if status.status in ("failed", "crashed"):
        status.oom = looks_like_oom(read_log_tail(run_dir, max_lines=80)) or looks_like_oom(
            status.error or ""
        )
        if status.status == "crashed" and not status.error:
            status.error = (
                "The trainer exited without an end event (killed?): see train.log; resume to continue."
            )
    return status


def list_runs(project: str) -> list[RunStatus]:
    """All runs of `project`, newest first."""
    runs_dir = ws.get_project(project).runs_dir
    if not runs_dir.is_dir():
        return []
    dirs = sorted((p for p in runs_dir.iterdir() if p.is_dir()), key=lambda p: p.name, reverse=True)
    return [get_run_status(p) for p in dirs]


def find_run(project: str, run_id: str) -> Path:
    """The folder of run `run_id` in `project`; TrainingError if it does not exist."""
    run_dir = ws.get_project(project).run_dir(run_id)
    if not run_dir.is_dir():
        raise TrainingError(f"No run {run_id!r} in project {project!r}: pick one from the runs list.")
    return run_dir


def active_run() -> RunStatus | None:
    """The job holding the lock (any project), for re-attaching after a refresh or restart."""
    lock = read_lock()
    if lock is None or not lock.get("run_dir"):
        return None
    return get_run_status(Path(lock["run_dir"]))


def list_config_files(project: str) -> list[str]:
    """Config YAMLs a run can start from: the project's configs, then configs/ and configs/presets/."""
    folders = [ws.get_project(project).root / "configs", ws.CONFIGS_DIR, ws.CONFIGS_DIR / "presets"]
    found = []
    for folder in folders:
        for path in sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml")):
            try:
                found.append(str(path.relative_to(REPO_ROOT)))
            except ValueError:
                found.append(str(path))
    return found


def freeze_config(project: str, config_path: Path, run_dir: Path, init_adapter: Path | None = None) -> Path:
    """Validate the config and write the run's frozen copy (a preset gets the project's dataset)."""
    from blocks import config as cf

    try:
        if config_path.resolve().parent == cf.PRESETS_DIR.resolve():
            cfg = cf.load_preset(config_path.stem, project)
        else:
            cfg = cf.load_config(config_path)
        if init_adapter is not None:
            cfg.init_adapter = str(init_adapter)
        # Machine checks (CUDA, bitsandbytes) are left to the trainer's own clear failure: probing the
        # GPU here would import torch and hold a CUDA context in the app process for its whole life.
        problems = cf.validate_config(cfg, None, check_machine=False)
    except cf.ConfigError as exc:
        raise TrainingError(f"{exc} (fix it in the Config tab)") from exc
    if problems:
        raise TrainingError(f"{config_path.name}: " + " ".join(problems))
    return cf.save_config(cfg, run_dir / "config.yaml")


def run_processes(run_dir: Path) -> int:
    """How many trainer processes (GPUs) the run's last start used (job.json; 1 before it was recorded)."""
    return int((read_json(Path(run_dir) / "job.json") or {}).get("processes", 1))


def check_processes(processes) -> int:
    """The number of trainer processes (GPUs) asked for, or a TrainingError saying what is possible."""
    if isinstance(processes, float) and processes.is_integer():
        processes = int(processes)
    if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
        raise TrainingError(f"GPUs must be a whole number of at least 1, not {processes!r}.")
    from blocks.config import gpu_count

    gpus = gpu_count()
    if processes > 1 and gpus and processes > gpus:
        raise TrainingError(f"This machine has {gpus} GPU(s): choose at most {gpus}.")
    return processes


def start_run(
    project: str,
    config_path: str | Path,
    run_id: str | None = None,
    init_adapter: Path | None = None,
    processes: int = 1,
) -> RunStatus:
    """Start a new training run of `config_path` in `project`; JobRunningError if one is running.

    `processes` > 1 trains with DDP, one process per GPU: the effective batch is
    batch_size x grad_accum x processes."""
    config_path = Path(config_path)
    processes = check_processes(processes)
    if not config_path.is_file():
        raise TrainingError(f"Config {config_path} does not exist: create one in the Config tab first.")
    proj = ws.get_project(project)
    run_dir = proj.run_dir(run_id or new_run_id(config_path))
    if run_dir.exists():
        raise TrainingError(f"Run {run_dir.name} already exists: choose another run id or resume it.")
    holder = read_lock()  # checked again atomically when spawning; this avoids leaving an empty folder
    if holder is not None:
        raise JobRunningError(locked_message(holder))
    run_dir.mkdir(parents=True)
    try:
        spawn_trainer(
            freeze_config(project, config_path, run_dir, init_adapter), run_dir, processes=processes
        )
    except BaseException:
        shutil.rmtree(run_dir)  # a refused config or a lost race for the lock leaves no empty run behind
        raise
    return get_run_status(run_dir)


def resume_run(project: str, run_id: str) -> RunStatus:
    """Continue run `run_id` from its latest checkpoint (optimizer, scheduler and RNG state included)."""
    run_dir = find_run(project, run_id)
    status = get_run_status(run_dir)
    if status.active:
        raise JobRunningError(f"Run {run_id} is still running: nothing to resume.")
    if status.status == "done":
        raise TrainingError(
            f"Run {run_id} finished: to train more, use 'start again from this adapter' or a new run."
        )
    if not status.checkpoints:
        raise TrainingError(
            f"Run {run_id} saved no checkpoint yet, so it cannot resume: start it again as a new run "
            "(or lower save_steps in the config)."
        )
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise TrainingError(f"{config} is missing (the frozen config): start a new run instead.")
    # the same number of processes: the checkpoint's data order and step count assume it
    spawn_trainer(config, run_dir, resume=True, processes=run_processes(run_dir))
    return get_run_status(run_dir)


def restart_from_adapter(project: str, run_id: str, new_id: str | None = None) -> RunStatus:
    """A new run whose training starts from run `run_id`'s final adapter (fresh optimizer and schedule)."""
    source = find_run(project, run_id)
    adapter = source / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise TrainingError(f"Run {run_id} has no final adapter yet: resume it or wait until it finishes.")
    new_id = new_id or f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-from-{run_id}"[:64]
    return start_run(
        project, source / "config.yaml", new_id, init_adapter=adapter, processes=run_processes(source)
    )


def stop_run(run_dir: Path, timeout_s: float = STOP_TIMEOUT_S) -> RunStatus:
    """SIGTERM the trainer's process group (it saves at the next step); SIGKILL after `timeout_s`."""
    run_dir = Path(run_dir)
    job = read_json(run_dir / "job.json")
    if not job or not pid_alive(job.get("pid"), run_dir.name):
        raise TrainingError(f"Run {run_dir.name} is not running: nothing to stop.")
    pgid = job["pgid"]
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and pid_alive(job["pid"], run_dir.name):
        time.sleep(0.1)
    if pid_alive(job["pid"], run_dir.name):
        os.killpg(pgid, signal.SIGKILL)
        while pid_alive(job["pid"], run_dir.name):
            time.sleep(0.05)
        append_event(
            run_dir,
            {
                "event": "end",
                "status": "stopped",
                "error": f"killed after {timeout_s:.0f} s without a clean stop; resume continues "
                "from the last checkpoint",
            },
        )
    release_lock(run_dir)
    return get_run_status(run_dir)


def append_event(run_dir: Path, event: dict) -> None:
    """Append one event line to progress.jsonl (used only when the trainer could not write its own end).

    Like the trainer's own appender: a line cut by the SIGKILL is ended first (readers skip it),
    and no blank line is ever written (finetune.train.read_curve reads the same file).
    """
    line = json.dumps({**event, "time": time.time()}, ensure_ascii=False)
    with open(Path(run_dir) / "progress.jsonl", "a+b") as fh:
        size = fh.seek(0, os.SEEK_END)
        torn = size > 0 and os.pread(fh.fileno(), 1, size - 1) != b"\n"
        fh.write(("\n" if torn else "").encode() + line.encode("utf-8", "backslashreplace") + b"\n")


def wait_run(run_dir: Path, timeout_s: float | None = None, poll_s: float = 0.2) -> RunStatus:
    """Block until the run is no longer active (for the CLI and tests)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        status = get_run_status(run_dir)
        if not status.active:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise TrainingError(f"Run {Path(run_dir).name} still running after {timeout_s} s.")
        time.sleep(poll_s)


# ---------------------------------------------------------------- CLI


def format_status(s: RunStatus) -> str:
    """One line per run for the CLI."""
    total = f"/{s.total_steps}" if s.total_steps else ""
    loss = f" loss {s.loss:.4f}" if s.loss is not None else ""
    ev = f" eval {s.eval_loss:.4f}" if s.eval_loss is not None else ""
    eta = f" eta {s.eta_s:.0f}s" if s.eta_s is not None else ""
    gpu = f" gpu {s.gpu_gib:.1f} GiB" if s.gpu_gib is not None else ""
    err = f"  error: {s.error}" if s.error else ""
    hint = "  (out of memory: use a smaller batch size or max length, or QLoRA)" if s.oom else ""
    return f"{s.run_id}  {s.status:8s} step {s.step}{total}{loss}{ev}{gpu}{eta}{err}{hint}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="action", required=True)
    for name in ("start", "stop", "status", "list", "resume", "restart-from"):
        p = sub.add_parser(name)
        p.add_argument("--project", default=ws.DEFAULT_PROJECT)
        if name == "start":
            p.add_argument("--config", required=True, type=Path, help="config YAML (see the Config stage)")
            p.add_argument("--run-id", default=None)
            p.add_argument("--gpus", type=int, default=1, help="train on N GPUs with DDP (torchrun)")
        elif name in ("resume", "restart-from"):
            p.add_argument("run_id")
        elif name in ("stop", "status"):
            p.add_argument("run_id", nargs="?", help="default: the running job")
        if name == "stop":
            p.add_argument("--timeout", type=float, default=STOP_TIMEOUT_S, help="seconds before SIGKILL")
        if name in ("start", "resume", "restart-from", "status"):
            p.add_argument("--follow", action="store_true", help="print progress until the run ends")
    args = parser.parse_args(argv)
    try:
        if args.action == "list":
            for s in list_runs(args.project):
                print(format_status(s))
            return 0
        if args.action == "start":
            status = start_run(args.project, args.config, args.run_id, processes=args.gpus)
        elif args.action == "resume":
            status = resume_run(args.project, args.run_id)
        elif args.action == "restart-from":
            status = restart_from_adapter(args.project, args.run_id)
        else:
            if args.run_id:
                run_dir = find_run(args.project, args.run_id)
            else:
                running = active_run()
                if running is None:
                    raise TrainingError("No training job is running: pass a RUN_ID (see `list`).")
                run_dir = Path(running.run_dir)
            if args.action == "stop":
                status = stop_run(run_dir, args.timeout)
            else:
                status = get_run_status(run_dir)
        print(format_status(status))
        if getattr(args, "follow", False):
            offset = 0
            while True:
                events, offset = read_progress(Path(status.run_dir), offset)
                for e in events:
                    print(json.dumps(e, ensure_ascii=False))
                status = get_run_status(Path(status.run_dir))
                if not status.active:
                    print(format_status(status))
                    break
                time.sleep(1.0)
        return 0 if status.status not in ("failed", "crashed") else 1
    except (TrainingError, ws.WorkspaceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
