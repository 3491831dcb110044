"""The project folder layout: every artifact of one project lives under data/<project>/.

Stages never build paths by hand; they ask this module, so a project or run name
typed into the UI can never escape the workspace.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from blocks.models import MODELS_DIR, REPO_ROOT

DATA_DIR = Path(os.environ.get("UMTCDS_DATA_DIR", REPO_ROOT / "data"))
CONFIGS_DIR = REPO_ROOT / "configs"
DEFAULT_PROJECT = "demo"
_NAME_RE = re.compile(r"^[A-Za-z0-9\u4e00-\u9fff][A-Za-z0-9_.\-\u4e00-\u9fff]{0,63}$")


class WorkspaceError(ValueError):
    """A name or path that the workspace refuses; the message says what is allowed."""


# Endings of files the app keeps beside project folders (data/train.lock, temporary and partial
# files, data/README.md): a project, run or config named like one would collide with them.
RESERVED_SUFFIXES = (".lock", ".tmp", ".partial", ".old", ".log", ".md", ".json", ".jsonl", ".yaml", ".yml")


def is_reserved_name(name: str) -> bool:
    """True for names the workspace keeps for its own files (any letter case)."""
    return name.lower().endswith(RESERVED_SUFFIXES)


def check_name(name: str, what: str = "project name") -> str:
    """Return `name` if it is a safe single folder name, else raise WorkspaceError."""
    name = (name or "").strip() if isinstance(name, str) else ""
    if not _NAME_RE.fullmatch(name) or ".." in name:
        raise WorkspaceError(
            f"Invalid {what} {name!r}: use 1-64 letters, digits, Chinese characters, '-', '_' or '.', "
            "starting with a letter or digit (no slashes)."
        )
    if is_reserved_name(name):
        raise WorkspaceError(
            f"The {what} {name!r} is reserved: names ending in {', '.join(RESERVED_SUFFIXES)} are kept for "
            f"the workspace's own files (data/train.lock is the training lock). Choose another name, "
            f"such as {name.replace('.', '-')!r}."
        )
    return name


@dataclass(frozen=True)
class Project:
    """Paths of one project's stage outputs (see ARCHITECTURE.md)."""

    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def crawl_dir(self) -> Path:
        return self.root / "crawl"

    @property
    def clean_dir(self) -> Path:
        return self.root / "clean"

    @property
    def qa_dir(self) -> Path:
        return self.root / "qa"

    @property
    def qa_file(self) -> Path:
        return self.qa_dir / "qa.jsonl"

    @property
    def dataset_dir(self) -> Path:
        return self.root / "dataset"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / check_name(run_id, "run id")


def get_project(name: str = DEFAULT_PROJECT, data_dir: Path | None = None) -> Project:
    """The project folder for `name` (created if missing)."""
    base = Path(data_dir or DATA_DIR)
    root = base / check_name(name)
    # A project folder that is a symlink out of data/ would let every stage write elsewhere.
    if root.is_symlink() and not root.resolve().is_relative_to(base.resolve()):
        raise WorkspaceError(
            f"Project {name!r} is a link to {root.resolve()}, outside the workspace {base}: "
            "remove the link or choose another project name."
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WorkspaceError(f"Cannot create the project folder {root}: {exc.strerror or exc}.") from exc
    return Project(root)


def list_projects(data_dir: Path | None = None) -> list[str]:
    """Names of existing projects, sorted."""
    base = Path(data_dir or DATA_DIR)
    if not base.is_dir():
        return []
    return sorted(
        p.name
        for p in base.iterdir()
        if p.is_dir() and _NAME_RE.fullmatch(p.name) and not is_reserved_name(p.name)
    )


# Folders a model root may not be, or lie in: the kernel's and the system's files, where a typed path would
# read /proc/self/environ (the login, the keys) or /etc/shadow.
SYSTEM_DIRS = ("/proc", "/sys", "/dev", "/etc", "/boot", "/run", "/bin", "/sbin", "/lib", "/lib32", "/lib64",
               "/libx32", "/usr", "/var/run", "/var/lib", "/var/log", "/snap")  # fmt: skip
# Folders too wide to be a model root (anything of anyone's could be under them); folders inside are fine.
WIDE_DIRS = ("/", "/home", "/root", "/tmp", "/var", "/var/tmp", "/opt", "/mnt", "/media", "/srv", "/data")


def check_model_root(root: str | Path) -> Path:
    """Return the resolved model root, or raise WorkspaceError for a system folder, a folder too wide (/,
    a home, /tmp), or a home's dot-folder (~/.ssh; the Hugging Face cache ~/.cache/huggingface is allowed)."""
    raw = str(root).strip()
    try:
        path = Path(raw).expanduser().resolve() if raw and "\x00" not in raw else None
    except (RuntimeError, OSError):
        path = None
    if path is None or not path.is_dir():
        raise WorkspaceError(
            f"The model root {raw[:200]!r} is not an existing folder: create it or fix the path."
        )
    homes = {Path("/root"), Path(os.path.expanduser("~")).resolve()} | set(Path("/home").glob("*"))
    inside_home = next((h for h in homes if path.is_relative_to(h) and path != h), None)
    hidden = inside_home is not None and any(
        part.startswith(".") for part in path.relative_to(inside_home).parts
    )
    hf_cache = inside_home is not None and path.is_relative_to(inside_home / ".cache" / "huggingface")
    system = any(path == Path(d) or path.is_relative_to(d) for d in SYSTEM_DIRS)
    if system or str(path) in WIDE_DIRS or path in homes or (hidden and not hf_cache):
        raise WorkspaceError(
            f"The model root {raw} ({path}) would let the UI open files that are not models (system files, "
            "a whole home or /tmp, or a dot-folder such as ~/.ssh): name the folder that holds the models, "
            "for example /root/autodl-tmp/models."
        )
    return path


def allowed_roots(extra: list[str] | None = None) -> list[Path]:
    """Folders a path typed into the UI may point into: the workspace plus launch-time model roots.

    A model root that check_model_root refuses (/proc, /etc, ~/.ssh, /) is left out, whoever set it.
    """
    roots = [DATA_DIR, CONFIGS_DIR, MODELS_DIR]
    env = os.environ.get("UMTCDS_MODEL_ROOTS", "")
    chosen = [p for p in env.split(os.pathsep) if p.strip()] + list(extra or [])
    for root in chosen:
        try:
            roots.append(check_model_root(root))
        except WorkspaceError:
            continue  # refused at launch (app.py) too; here it only must not widen the confinement
    return [r.resolve() for r in roots]


def confine_path(path: str | Path, roots: list[Path] | None = None) -> Path:
    """Resolve `path` and return it if it lies under an allowed root, else raise WorkspaceError."""
    raw = str(path).strip()
    if not raw:
        raise WorkspaceError("The path is empty: enter a folder inside the workspace.")
    if "\x00" in raw:
        raise WorkspaceError("The path contains a NUL character: type a plain folder path.")
    try:
        p = Path(raw).expanduser()
        if not p.is_absolute():
            p = REPO_ROOT / p
        resolved = p.resolve()
    except (RuntimeError, OSError) as exc:  # ~unknownuser, symlink loops, names too long
        raise WorkspaceError(f"{raw[:200]} cannot be used as a path ({exc}).") from exc
    roots = roots if roots is not None else allowed_roots()
    for root in roots:
        if resolved == root or root in resolved.parents:
            return resolved
    shown = ", ".join(str(r) for r in roots)
    raise WorkspaceError(
        f"{raw} is outside the workspace. Allowed: {shown}. "
        "Start the app with --model-root DIR to allow another model folder."
    )


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (binding them exposes nothing to the network)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------- processes


def pid_alive(pid: int | None, marker: str | None = None) -> bool:
    """True if process `pid` runs (reaping it if it is our exited child); `marker` guards against pid reuse."""
    if not pid:
        return False
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False  # our child, exited just now: reaped, so it does not linger as a zombie
    except ChildProcessError:
        pass  # not our child (the app restarted): ask the kernel instead
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            if ") Z" in (proc / "stat").read_text():
                return False
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            # empty while a just-spawned child is still inside exec (seen right after Popen): not reuse
            if marker and cmdline and marker not in cmdline:
                return False  # the pid was reused by an unrelated process
        except FileNotFoundError:
            return False
    return True
