"""Clean crawled pages with an LLM: crawl/pages/<id>.txt -> clean/<id>.txt, resumable.

Each page is split into token chunks, every chunk is sent with the clean prompt, and the answers
are joined into clean/<id>.txt (written atomically). clean/state.jsonl records one line per finished
page (done / failed with reason / empty); a rerun skips pages already done with the same input text
and prompt, so only missing or failed pages are sent again.

    python -m blocks.clean --project demo --backend local                       # embedded SmolLM2
    python -m blocks.clean --project demo --backend zhipu --concurrency 4      # key: ZHIPUAI_API_KEY
    python -m blocks.clean --project demo --backend openai --base-url http://127.0.0.1:8000/v1 --model qwen
    python -m blocks.clean --project demo --prompt-file my_prompt.txt --overwrite
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from blocks.chunking import chunk_text
from blocks.llm import (
    BACKENDS,
    AuthError,
    ChatClient,
    ClientSettings,
    EmptyOutputError,
    Heartbeat,
    LLMConnectionError,
    LLMError,
    LocalClient,
    MalformedResponseError,
    NotFoundError,
    RefusedAddressError,
    Request,
    RetryPolicy,
    SettingsError,
    StopSignal,
    make_client,
    run_requests,
    unload_local_models,
)
from blocks.workspace import CONFIGS_DIR, Project, WorkspaceError, get_project, pid_alive

PROMPTS_DIR = CONFIGS_DIR / "prompts"
PROMPT_NAMES = ("clean", "qa", "judge", "paraphrase", "question")


class StageInputError(ValueError):
    """The stage's input is missing or unusable; the message says which stage to run first."""


class PromptError(ValueError):
    """A prompt template that cannot work (e.g. without the {text} placeholder)."""


class StorageError(OSError):
    """An output file could not be written (disk full, read-only, permissions); finished pages are kept."""


def storage_error(path: Path, exc: OSError) -> StorageError:
    """A StorageError that names the file, the cause, and that a rerun resumes."""
    return StorageError(
        f"Cannot write {path}: {exc.strerror or exc}. Free some space (or fix the folder's permissions) "
        "and run again: finished pages are kept and the run resumes where it stopped."
    )


# ---------------------------------------------------------------- records


class StopFlag:
    """A stop request kept as a file in the stage folder, so Stop works from any tab or after a refresh.

    Has the part of threading.Event's interface the stages use (set / clear / is_set).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def set(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def is_set(self) -> bool:
        return self.path.exists()


@dataclass
class Page:
    """One saved document from crawl/pages.jsonl (only the fields the LLM stages use)."""

    id: str  # stem of text_file, e.g. "000012"
    url: str
    title: str
    text_file: str
    status: str = "new"


@dataclass
class RunReport:
    """Live and final counts of a run; `summary()` is what the user reads."""

    stage: str
    total: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0
    requests_done: int = 0
    requests_ok: int = 0  # answered without error (to tell "server down" from "one bad page")
    pairs: int = 0
    failures: dict[str, str] = field(default_factory=dict)  # page id -> "reason: message"
    drops: dict[str, int] = field(default_factory=dict)  # QA: reason -> count
    suspect: list[str] = field(default_factory=list)  # clean: pages whose numbers went missing
    stopped: bool = False
    finished: bool = False
    started: float = field(default_factory=time.monotonic)
    # Progress inside pages: requests of the main phase ("chunks" or "sentences") and model tokens.
    units: str = "chunks"
    units_total: int = 0
    units_done: int = 0
    new_tokens: int = 0
    generation_s: float = 0.0
    work_started: float | None = None  # when the first request was sent (model loading excluded)

    @property
    def processed(self) -> int:
        return self.done + self.failed + self.skipped

    @property
    def tokens_per_s(self) -> float | None:
        """New tokens per second of the local model so far (None for API backends)."""
        return self.new_tokens / self.generation_s if self.new_tokens and self.generation_s > 0 else None

    def note_tokens(self, beat) -> None:
        """Count a blocks.llm.Heartbeat (tokens written and seconds since the previous one)."""
        self.new_tokens += beat.tokens
        self.generation_s += beat.seconds

    def start_work(self, units: str, total: int) -> None:
        """The main phase is about to send `total` requests of kind `units`."""
        self.units, self.units_total, self.units_done = units, total, 0
        self.work_started = time.monotonic()

    def eta_s(self) -> float | None:
        """Seconds left: from the rate of requests (chunks) when known, else of pages sent so far."""
        if self.units_total and self.work_started is not None:
            if self.units_done == 0 or self.units_done >= self.units_total:
                return None if self.units_done == 0 else 0.0
            spent = time.monotonic() - self.work_started
            return spent / self.units_done * (self.units_total - self.units_done)
        worked = self.done + self.failed
        left = self.total - self.processed
        if worked == 0:
            return None
        return (time.monotonic() - self.started) / worked * left

    def progress_line(self, lang: str = "en") -> str:
        """Signs of life inside pages: requests done of all, tokens/s (empty before any work)."""
        if not self.units_total:
            return ""
        names = {"chunks": "文本块", "sentences": "句子"}
        unit = names.get(self.units, self.units) if lang == "zh" else self.units
        text = f"{self.units_done}/{self.units_total} {unit}"
        rate = self.tokens_per_s
        if rate is not None:
            text += f", {rate:.1f} tok/s" + (
                f" ({self.new_tokens} 个 token)" if lang == "zh" else f" ({self.new_tokens} tokens)"
            )
        return text

    def drop(self, reason: str, n: int = 1) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + n

    def summary(self, lang: str = "en") -> str:
        """One paragraph: counts, then failures by reason; never claims success it did not have."""
        state = "stopped" if self.stopped else ("finished" if self.finished else "running")
        if lang == "zh":
            state = {"stopped": "已停止", "finished": "已完成", "running": "运行中"}[state]
            text = (
                f"{self.stage} {state}：成功 {self.done}，失败 {self.failed}，跳过 {self.skipped}"
                f"（共 {self.total} 页）"
            )
        else:
            text = (
                f"{self.stage} {state}: {self.done} done, {self.failed} failed, {self.skipped} skipped "
                f"(of {self.total} pages)"
            )
        if self.stage == "qa":
            text += f"; {self.pairs} QA pairs written" if lang != "zh" else f"；写入问答对 {self.pairs} 条"
        if self.progress_line(lang):
            text += ("；" if lang == "zh" else "; ") + self.progress_line(lang)
        if self.drops:
            text += "; dropped: " + ", ".join(f"{k} {v}" for k, v in sorted(self.drops.items()))
        if self.failures:
            by_reason: dict[str, int] = {}
            for msg in self.failures.values():
                reason = msg.split(":", 1)[0]
                by_reason[reason] = by_reason.get(reason, 0) + 1
            text += "; failures: " + ", ".join(f"{k} {v}" for k, v in sorted(by_reason.items()))
        if self.suspect:
            text += f"; {len(self.suspect)} pages lost numbers while cleaning (check them): " + ", ".join(
                self.suspect[:5]
            )
        return text


# ---------------------------------------------------------------- files


def write_text_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and os.replace, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)  # a full disk (or text no file can hold) must not leave a temp file
        if isinstance(exc, OSError):
            raise storage_error(path, exc) from exc
        raise


def remove_stale_temp_files(folder: Path) -> None:
    """Delete the temporary files write_text_atomic left behind when its process was killed mid-write
    (named .NAME.PID.THREAD.tmp, and PID is gone), so a rerun leaves the folder as a clean run would."""
    for tmp in folder.rglob(".*.tmp") if folder.is_dir() else ():
        pid = tmp.name.rsplit(".", 3)[1] if tmp.name.count(".") >= 4 else ""
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def json_line(record: dict) -> str:
    """`record` as one JSON line, readable UTF-8 where it can be; text that UTF-8 cannot hold (a lone
    surrogate from a "\\ud800" escape in a page title) is kept as a JSON escape instead of failing the write."""
    line = json.dumps(record, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(record)
    return line


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line with a single write; readers ignore a torn last line after a crash."""
    data = (json_line(record) + "\n").encode("utf-8")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # a crash tore the last line: end it, or this record would be glued to it
            written = os.write(fd, data)
            if written != len(data):  # a short write on a full disk: readers skip the torn line
                raise OSError(28, "No space left on device")
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise storage_error(path, exc) from exc


def read_jsonl(path: Path, bad_lines: list[int] | None = None) -> list[dict]:
    """JSON objects of a JSONL file; unparseable lines (a torn write) are skipped, never fatal.

    Line numbers of skipped lines are appended to `bad_lines` when given (to tell the user).
    """
    if not path.is_file():
        return []
    records = []
    # errors="replace": a stray invalid byte spoils one line, not the whole file.
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            record = None
        if isinstance(record, dict):
            records.append(record)
        elif bad_lines is not None:
            bad_lines.append(number)
    return records


def read_state(path: Path) -> dict[str, dict]:
    """Latest state record per page id."""
    return {r["id"]: r for r in read_jsonl(path) if isinstance(r.get("id"), str)}


def read_pages(crawl_dir: Path) -> list[Page]:
    """Pages of crawl/pages.jsonl that still exist on the site (vanished ones are left out)."""
    manifest = crawl_dir / "pages.jsonl"
    if not manifest.is_file():
        raise StageInputError(f"No crawl output at {manifest}: run the Crawl tab (or blocks.crawl) first.")
    bad: list[int] = []
    pages = []
    for rec in read_jsonl(manifest, bad):
        text_file = rec.get("text_file")
        if rec.get("status") == "vanished":
            continue
        if not isinstance(text_file, str) or not _is_page_file(text_file):
            bad.append(-1)  # a record whose text_file is missing or points outside crawl/pages/
            continue
        url, title = rec.get("url"), rec.get("title")
        pages.append(
            Page(
                id=Path(text_file).stem,
                url=url if isinstance(url, str) else "",
                title=title if isinstance(title, str) else "",
                text_file=text_file,
                status=str(rec.get("status", "new")),
            )
        )
    if not pages:
        detail = f" ({len(bad)} lines are not valid page records)" if bad else ""
        raise StageInputError(
            f"{manifest} lists no usable pages{detail}: crawl the site again (Crawl tab or blocks.crawl)."
        )
    return pages


def _is_page_file(text_file: str) -> bool:
    """True for a plain `pages/<name>.txt` path: a manifest must not make a stage read other files."""
    parts = Path(text_file).parts
    return len(parts) == 2 and parts[0] == "pages" and parts[1].endswith(".txt") and ".." not in parts[1]


def read_page_text(path: Path) -> str:
    """A crawled or cleaned page's text; a missing or undecodable file raises StageInputError."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise StageInputError(f"missing_input: {path} does not exist (crawl the site again)") from exc
    except UnicodeDecodeError as exc:
        raise StageInputError(f"unreadable_input: {path} is not UTF-8 text ({exc.reason})") from exc
    except OSError as exc:
        raise StageInputError(f"unreadable_input: cannot read {path} ({exc.strerror or exc})") from exc


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ---------------------------------------------------------------- prompts


def load_prompt(name: str, lang: str = "zh") -> str:
    """The default prompt `name` (clean/qa/judge/paraphrase) in `lang` (zh/en) from configs/prompts/."""
    if name not in PROMPT_NAMES or lang not in ("zh", "en"):
        raise PromptError(f"no prompt {name!r} in {lang!r}: names are {PROMPT_NAMES}, languages zh/en")
    return (PROMPTS_DIR / f"{name}_{lang}.txt").read_text(encoding="utf-8")


def prompt_version(*templates: str) -> str:
    """Short hash of the prompt text(s): recorded with every output so edits are traceable."""
    return hashlib.sha256("\x00".join(templates).encode("utf-8")).hexdigest()[:10]


def check_prompt(template: str, required: tuple[str, ...] = ("{text}",)) -> str:
    """Return the template if it has the placeholders the stage fills, else raise PromptError."""
    missing = [p for p in required if p not in template]
    if missing:
        raise PromptError(
            f"The prompt lacks {', '.join(missing)}: the stage inserts the page text there. "
            "Add it back (or reset the prompt to the default)."
        )
    return template


def fill_prompt(template: str, **values: object) -> str:
    """Replace {name} placeholders; other braces (JSON examples) are left alone."""
    for key, value in values.items():
        template = template.replace("{" + key + "}", str(value))
    return template


def strip_think(text: str) -> str:
    """Remove <think>...</think> reasoning (also an unclosed one) and surrounding code fences."""
    text = re.sub(r"<think>.*?</think>", "", text, flags=re.S)
    if "</think>" in text:
        text = text.split("</think>", 1)[1]
    text = re.sub(r"<think>.*", "", text, flags=re.S)
    return text.strip()


def strip_fences(text: str) -> str:
    """The inside of a ``` fenced block if the whole answer is one."""
    m = re.fullmatch(r"\s*```[\w-]*\n(.*?)\n?```\s*", text, flags=re.S)
    return m.group(1) if m else text


# ---------------------------------------------------------------- clean core


@dataclass
class CleanSettings:
    """How pages are cleaned (the client is separate)."""

    prompt: str = ""  # empty = default in prompt_lang
    prompt_lang: str = "zh"
    chunk_tokens: int = 1000
    max_new_tokens: int = 0  # 0 = 1.5 x chunk size
    temperature: float = 0.1
    concurrency: int = 4
    overwrite: bool = False
    release_model: bool | None = None  # local backend: unload at the end (None = only on GPU)

    def template(self) -> str:
        return check_prompt(self.prompt or load_prompt("clean", self.prompt_lang))

    def check(self) -> CleanSettings:
        """Return self, or raise StageInputError naming the setting that cannot work."""
        check_numbers(
            chunk_tokens=(self.chunk_tokens, 16, 1_000_000),
            max_new_tokens=(self.max_new_tokens, 0, 1_000_000),
            concurrency=(self.concurrency, 1, 64),
            temperature=(self.temperature, 0, 2),
        )
        return self


def check_numbers(**fields: tuple[float, float, float]) -> None:
    """Raise StageInputError for the first `name=(value, low, high)` whose value is out of range."""
    for name, (value, low, high) in fields.items():
        if not isinstance(value, int | float) or not low <= value <= high:
            raise StageInputError(f"{name} is {value!r}: use a number from {low} to {high}.")


def fit_chunk_tokens(client: ChatClient, template: str, wanted: int, max_new: int) -> int:
    """The chunk size that keeps prompt + chunk + answer inside the model's context."""
    overhead = client.count_tokens(fill_prompt(template, text="", title="x" * 40, url="x" * 60)) + 32
    room = client.context_tokens - overhead - max_new
    if room < 16:
        raise SettingsError(
            f"The model's context ({client.context_tokens} tokens) leaves no room for text after the prompt "
            f"({overhead}) and the answer ({max_new}): shorten the prompt or lower max new tokens."
        )
    return min(wanted, room)


def build_messages(template: str, page: Page, text: str) -> list[dict[str, str]]:
    """The chat messages for one chunk of one page."""
    return [{"role": "user", "content": fill_prompt(template, text=text, title=page.title, url=page.url)}]


def kept_numbers_ratio(before: str, after: str) -> float:
    """Share of the numbers in `before` still present in `after` (a cheap 'kept every fact' check)."""
    nums = set(re.findall(r"\d+(?:[.:\-]\d+)*", before))
    if not nums:
        return 1.0
    return sum(n in after for n in nums) / len(nums)


def clean_pages(
    project: Project,
    client: ChatClient,
    settings: CleanSettings | None = None,
    stop: StopSignal | None = None,
    policy: RetryPolicy = RetryPolicy(),
) -> Iterator[RunReport]:
    """Clean every crawled page not done yet; yields the report after each request and at the end."""
    settings = (settings or CleanSettings()).check()
    template = settings.template()
    version = prompt_version(template)
    pages = read_pages(project.crawl_dir)
    remove_stale_temp_files(project.clean_dir)
    state_file = project.clean_dir / "state.jsonl"
    state = read_state(state_file)
    report = RunReport("clean", total=len(pages))
    todo: list[tuple[Page, str, str]] = []
    for page in pages:
        try:
            text = read_page_text(project.crawl_dir / page.text_file)
        except StageInputError as exc:
            report.failed += 1
            report.failures[page.id] = str(exc)
            continue
        sha = sha256_text(text)
        prev = state.get(page.id)
        out = project.clean_dir / f"{page.id}.txt"
        if (
            not settings.overwrite
            and prev
            and prev.get("input_sha256") == sha
            and prev.get("prompt_version") == version
            and (prev["status"] == "empty" or (prev["status"] == "done" and out.is_file()))
        ):
            report.skipped += 1
            continue
        todo.append((page, text, sha))
    yield report
    try:
        if todo:
            max_new = settings.max_new_tokens or settings.chunk_tokens * 3 // 2
            size = fit_chunk_tokens(client, template, settings.chunk_tokens, max_new)
            yield from _clean_todo(
                project, client, settings, todo, template, version, size, max_new, report, stop, policy
            )
    finally:
        release = settings.release_model
        if isinstance(client, LocalClient) and (release or (release is None and on_gpu())):
            unload_local_models()
    report.finished = not report.stopped
    yield report


def on_gpu() -> bool:
    if "torch" not in sys.modules:
        return False
    import torch

    return torch.cuda.is_available()


def _clean_todo(project, client, settings, todo, template, version, size, max_new, report, stop, policy):
    """Send the chunks of `todo` pages in waves and write each page as soon as its chunks are back."""
    state_file = project.clean_dir / "state.jsonl"
    wave_chunks = max(settings.concurrency, getattr(client, "batch_size", 1)) * 4
    report.start_work("chunks", sum(len(chunk_text(text, size, client.count_tokens)) for _, text, _ in todo))
    yield report
    pos = 0
    while pos < len(todo):
        wave, requests, owner, n_chunks = [], [], [], 0
        while pos < len(todo) and n_chunks < wave_chunks:
            page, text, sha = todo[pos]
            pos += 1
            chunks = chunk_text(text, size, client.count_tokens)
            if not chunks:
                append_jsonl(state_file, _state(page, sha, version, client, "empty", "page has no text"))
                report.skipped += 1
                continue
            wave.append(
                {"page": page, "text": text, "sha": sha, "parts": [None] * len(chunks), "error": None}
            )
            for c in chunks:
                requests.append(
                    Request(build_messages(template, page, c.text), max_new, settings.temperature)
                )
                owner.append((len(wave) - 1, c.index))
            n_chunks += len(chunks)
        for i, result in run_requests(client, requests, settings.concurrency, policy, stop, heartbeat=1.0):
            if isinstance(result, Heartbeat):
                report.note_tokens(result)
                yield report
                continue
            item = wave[owner[i][0]]
            report.requests_done += 1
            report.units_done += 1
            check_fatal(result, report)
            text = "" if isinstance(result, LLMError) else strip_fences(strip_think(result))
            if not isinstance(result, LLMError) and not text.strip():
                result = EmptyOutputError("the model answered with reasoning (<think>) only, no text")
            elif not isinstance(result, LLMError) and not is_utf8_text(text):
                result = MalformedResponseError("the answer is not valid Unicode (a lone surrogate)")
            if isinstance(result, LLMError):
                item["error"] = item["error"] or result
                item["parts"][owner[i][1]] = ""
            else:
                item["parts"][owner[i][1]] = text
            if all(p is not None for p in item["parts"]):
                _finish_page(project, client, item, version, report)
            yield report
        if stop is not None and stop.is_set():
            report.stopped = True
            return


def is_utf8_text(text: str) -> bool:
    """False for text a UTF-8 file cannot hold (lone surrogates): such an answer fails its page only."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_fatal(result: object, report: RunReport) -> None:
    """Stop the whole run on errors no other page can escape: a refused key, a wrong base URL path (404),
    a private address refused while exposed, or a server never reached.

    Sending every other page to a server that refuses the key (or does not exist) would only fill the
    report with the same failure; pages finished earlier stay saved.
    """
    if isinstance(result, AuthError | NotFoundError | RefusedAddressError) or (
        isinstance(result, LLMConnectionError) and report.requests_ok == 0
    ):
        raise result
    if not isinstance(result, LLMError):
        report.requests_ok += 1


def _finish_page(project, client, item, version, report) -> None:
    page, sha, state_file = item["page"], item["sha"], project.clean_dir / "state.jsonl"
    if item["error"] is not None:
        err: LLMError = item["error"]
        report.failed += 1
        report.failures[page.id] = f"{err.reason}: {err}"
        append_jsonl(state_file, _state(page, sha, version, client, "failed", f"{err.reason}: {err}"))
        return
    cleaned = "\n".join(p.strip() for p in item["parts"] if p.strip()) + "\n"
    write_text_atomic(project.clean_dir / f"{page.id}.txt", cleaned)
    kept = kept_numbers_ratio(item["text"], cleaned)
    if kept < 0.8:
        report.suspect.append(page.id)
    record = _state(page, sha, version, client, "done", None)
    record["numbers_kept"] = round(kept, 3)
    append_jsonl(state_file, record)
    report.done += 1


def _state(page: Page, sha: str, version: str, client, status: str, reason: str | None) -> dict:
    return {
        "id": page.id,
        "url": page.url,
        "status": status,
        "reason": reason,
        "input_sha256": sha,
        "prompt_version": version,
        "backend": client.backend,
        "model": client.model,
        "updated_at": now_iso(),
    }


# ---------------------------------------------------------------- CLI


def add_client_args(parser: argparse.ArgumentParser) -> None:
    """Backend flags shared by the clean and QA command lines (the key only from the environment)."""
    parser.add_argument("--backend", choices=BACKENDS, default="local")
    parser.add_argument("--model", default="", help="API model name (zhipu default glm-4-flash)")
    parser.add_argument("--base-url", default="", help="API base URL (openai backend: required)")
    parser.add_argument(
        "--model-path", default="", help="local backend: HF folder (default: embedded SmolLM2)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="local backend batch size")
    parser.add_argument(
        "--static-cache",
        action="store_true",
        help="local backend on a GPU: compiled static KV cache (faster for long runs; compiles first)",
    )
    parser.add_argument("--concurrency", type=int, default=4, help="parallel API requests")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per API request")
    parser.add_argument("--prompt-lang", choices=["zh", "en"], default="zh")
    parser.add_argument("--prompt-file", type=Path, default=None, help="custom prompt template")
    parser.add_argument("--overwrite", action="store_true", help="redo pages already done")


def client_from_args(args: argparse.Namespace) -> ChatClient:
    """Build the client; API keys come from ZHIPUAI_API_KEY / OPENAI_API_KEY, never from flags."""
    return make_client(
        ClientSettings(
            backend=args.backend,
            model=args.model,
            base_url=args.base_url,
            model_path=args.model_path,
            timeout=args.timeout,
            batch_size=args.batch_size,
            static_cache=args.static_cache,
        )
    )


def run_cli(stage_run, argv_args) -> int:
    """Drive a stage generator from the command line with a one-line progress display."""
    stop = threading.Event()
    report = None
    try:
        for report in stage_run(stop):
            eta = report.eta_s()
            eta_text = f" ETA {eta:.0f}s" if eta is not None else ""
            inside = f", {report.progress_line()}" if report.progress_line() else ""
            print(
                f"\r{report.processed}/{report.total} pages{inside}{eta_text}   ",
                end="",
                file=sys.stderr,
                flush=True,
            )
    except KeyboardInterrupt:
        stop.set()
        print("\nstopped; finished pages are saved, rerun to continue", file=sys.stderr)
        return 130
    except (StageInputError, PromptError, SettingsError, WorkspaceError, LLMError, StorageError) as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2
    print("", file=sys.stderr)
    print(report.summary())
    if report.failed:
        print(failure_hint(report), file=sys.stderr)
    return 1 if report and report.failed else 0


def failure_hint(report: RunReport) -> str:
    """The failed pages with their reasons (first 20), for the end of a CLI run."""
    lines = [f"  {page_id}: {msg[:300]}" for page_id, msg in list(report.failures.items())[:20]]
    return "failed pages (run again to retry them):\n" + "\n".join(lines)


def read_prompt_file(path: Path | None) -> str:
    """The text of --prompt-file, or '' when not given; unreadable files raise PromptError."""
    if path is None:
        return ""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PromptError(f"The prompt file {path} is not UTF-8 text: save it as UTF-8.") from exc
    except OSError as exc:
        raise PromptError(f"Cannot read the prompt file {path}: {exc.strerror or exc}.") from exc
    if not text.strip():
        raise PromptError(
            f"The prompt file {path} is empty: write a prompt with {{text}}, or drop --prompt-file."
        )
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--project", default="demo")
    parser.add_argument("--chunk-tokens", type=int, default=1000)
    add_client_args(parser)
    args = parser.parse_args(argv)

    def stage_run(stop):
        project = get_project(args.project)
        prompt = read_prompt_file(args.prompt_file)
        settings = CleanSettings(
            prompt=prompt,
            prompt_lang=args.prompt_lang,
            chunk_tokens=args.chunk_tokens,
            concurrency=args.concurrency,
            overwrite=args.overwrite,
        )
        return clean_pages(project, client_from_args(args), settings, stop)

    return run_cli(stage_run, args)


if __name__ == "__main__":
    sys.exit(main())
