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
    ChatClient,
    ClientSettings,
    LLMError,
    LocalClient,
    Request,
    RetryPolicy,
    SettingsError,
    StopSignal,
    make_client,
    run_requests,
    unload_local_models,
)
from blocks.workspace import CONFIGS_DIR, Project, WorkspaceError, get_project

PROMPTS_DIR = CONFIGS_DIR / "prompts"
PROMPT_NAMES = ("clean", "qa", "judge", "paraphrase")


class StageInputError(ValueError):
    """The stage's input is missing or unusable; the message says which stage to run first."""


class PromptError(ValueError):
    """A prompt template that cannot work (e.g. without the {text} placeholder)."""


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
    pairs: int = 0
    failures: dict[str, str] = field(default_factory=dict)  # page id -> "reason: message"
    drops: dict[str, int] = field(default_factory=dict)  # QA: reason -> count
    suspect: list[str] = field(default_factory=list)  # clean: pages whose numbers went missing
    stopped: bool = False
    finished: bool = False
    started: float = field(default_factory=time.monotonic)

    @property
    def processed(self) -> int:
        return self.done + self.failed + self.skipped

    def eta_s(self) -> float | None:
        """Seconds left, from the rate of pages sent so far (skipped pages cost nothing)."""
        worked = self.done + self.failed
        left = self.total - self.processed
        if worked == 0:
            return None
        return (time.monotonic() - self.started) / worked * left

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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line with a single write; readers ignore a torn last line after a crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSONL file; an unparseable line (torn write) is skipped, never fatal."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def read_state(path: Path) -> dict[str, dict]:
    """Latest state record per page id."""
    return {r["id"]: r for r in read_jsonl(path) if "id" in r}


def read_pages(crawl_dir: Path) -> list[Page]:
    """Pages of crawl/pages.jsonl that still exist on the site (vanished ones are left out)."""
    manifest = crawl_dir / "pages.jsonl"
    if not manifest.is_file():
        raise StageInputError(f"No crawl output at {manifest}: run the Crawl tab (or blocks.crawl) first.")
    pages = []
    for rec in read_jsonl(manifest):
        if rec.get("status") == "vanished" or not rec.get("text_file"):
            continue
        pages.append(
            Page(
                id=Path(rec["text_file"]).stem,
                url=rec.get("url", ""),
                title=rec.get("title") or "",
                text_file=rec["text_file"],
                status=rec.get("status", "new"),
            )
        )
    if not pages:
        raise StageInputError(f"{manifest} lists no pages: crawl a site first.")
    return pages


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
    settings = settings or CleanSettings()
    template = settings.template()
    version = prompt_version(template)
    pages = read_pages(project.crawl_dir)
    state_file = project.clean_dir / "state.jsonl"
    state = read_state(state_file)
    report = RunReport("clean", total=len(pages))
    todo: list[tuple[Page, str, str]] = []
    for page in pages:
        path = project.crawl_dir / page.text_file
        if not path.is_file():
            report.failed += 1
            report.failures[page.id] = f"missing_input: {path} does not exist (re-crawl)"
            continue
        text = path.read_text(encoding="utf-8")
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
        for i, result in run_requests(client, requests, settings.concurrency, policy, stop):
            item = wave[owner[i][0]]
            report.requests_done += 1
            if isinstance(result, LLMError):
                item["error"] = item["error"] or result
                item["parts"][owner[i][1]] = ""
            else:
                item["parts"][owner[i][1]] = strip_fences(strip_think(result))
            if all(p is not None for p in item["parts"]):
                _finish_page(project, client, item, version, report)
            yield report
        if stop is not None and stop.is_set():
            report.stopped = True
            return


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
            print(
                f"\r{report.processed}/{report.total} pages{eta_text}   ", end="", file=sys.stderr, flush=True
            )
    except KeyboardInterrupt:
        stop.set()
        print("\nstopped; finished pages are saved, rerun to continue", file=sys.stderr)
        return 130
    except (StageInputError, PromptError, SettingsError, WorkspaceError, LLMError) as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2
    print("", file=sys.stderr)
    print(report.summary())
    return 1 if report and report.failed else 0


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
        prompt = args.prompt_file.read_text(encoding="utf-8") if args.prompt_file else ""
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
