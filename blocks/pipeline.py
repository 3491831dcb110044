"""One click from a campus site to a chatbot: crawl -> QA pairs -> retrieval index -> dataset -> config -> training.

    python -m blocks.pipeline http://127.0.0.1:8765/index.htm --project demo          # offline, embedded model
    python -m blocks.pipeline https://www.example.edu.cn/ --project myuni --max-pages 100 --delay 1
    python -m blocks.pipeline URL --project myuni --backend zhipu        # QA with GLM-4-flash (ZHIPUAI_API_KEY)

Every stage writes its usual files under data/<project>/ (each tab shows them), so the pipeline
adds no state of its own: a rerun skips a crawl that already finished (--recrawl to fetch again),
QA generation skips finished pages, the index refreshes only changed pages, the dataset is rebuilt,
and a stopped pipeline training run is resumed. Ctrl-C (or the Stop button) ends the current stage
cleanly; run the same command again to go on. At the end it prints the command to chat with the bot.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from blocks.workspace import Project, get_project

STAGES = ("crawl", "qa", "index", "dataset", "config", "training")
PIPELINE_RUN = "pipeline"  # run id prefix of the pipeline's training runs


class PipelineError(RuntimeError):
    """A stage could not run; the message names the stage and what to do."""


@dataclass
class PipelineSettings:
    """What the one-click path does; defaults suit the offline demo on a laptop CPU."""

    start_url: str
    max_pages: int = 60
    max_depth: int = 3
    delay: float = 0.0  # seconds between requests (a real site: 1 or more)
    recrawl: bool = False
    backend: str = "local"  # QA generation: local (embedded model), zhipu, openai
    qa_model: str = ""  # API model name (zhipu/openai)
    qa_model_path: str = ""  # local backend: a model folder (empty = the embedded, English-only model)
    base_url: str = ""  # openai-compatible endpoint
    base_model: str = ""  # model to fine-tune; empty = the embedded model
    preset: str = ""  # empty: cpu-demo without a GPU, gpu-24gb with one
    max_steps: int = 0  # training steps; 0 = the preset's (a quick try: a handful)
    allow_private: bool = True  # crawl and LLM API may be at private addresses (False when exposed)
    allowed_origins: tuple[str, ...] = ()  # private origins allowed anyway (the app's own demo site)


@dataclass
class PipelineStatus:
    """Where the pipeline stands: one line per stage, the current one last."""

    stage: str = ""
    message: str = ""
    fraction: float = 0.0  # of the current stage
    lines: dict[str, str] = field(default_factory=dict)
    run_dir: Path | None = None
    done: bool = False
    stopped: bool = False
    started: float = field(default_factory=time.monotonic)

    def text(self) -> str:
        return "\n".join(f"{s}: {self.lines[s]}" for s in STAGES if s in self.lines)


def stop_flag(project: Project):
    """The file-backed Stop button of a project's pipeline (works across tabs and processes)."""
    from blocks.clean import StopFlag

    return StopFlag(project.root / ".pipeline.stop")


def chat_command(project: Project, run_dir: Path) -> str:
    return f"python -m blocks.chat --adapter {run_dir / 'adapter'} --project {project.name} --retrieve"


def run_pipeline(
    project: Project, settings: PipelineSettings, should_stop: Callable[[], bool] | None = None
) -> Iterator[PipelineStatus]:
    """Run every stage not done yet, yielding the status as each stage progresses."""
    stop = should_stop or (lambda: False)
    status = PipelineStatus()

    def say(stage: str, message: str, fraction: float = 0.0) -> PipelineStatus:
        status.stage, status.message, status.fraction = stage, message, fraction
        status.lines[stage] = message
        return status

    yield from _crawl(project, settings, stop, say)
    if stop():
        status.stopped = True
        yield status
        return
    yield from _qa(project, settings, stop, say)
    if stop():
        status.stopped = True
        yield status
        return
    from blocks.index import build_index

    yield say("index", "indexing the pages")
    r = build_index(project)
    yield say("index", f"{r.passages} passages from {r.sources} pages and pairs", 1.0)
    from blocks.dataset import DatasetError, DatasetOptions, build_dataset

    yield say("dataset", "building")
    try:
        # Every page in train: the bot must know the whole site (reworded questions are the test).
        report = build_dataset(project.root, options=DatasetOptions(ratios=(1.0, 0.0, 0.0)))
    except DatasetError as exc:
        raise PipelineError(f"dataset: {exc}") from exc
    kinds = report.stats["records_by_kind"]["train"]
    yield say(
        "dataset", f"{report.stats['kept']} pairs -> {sum(kinds.values())} training records {kinds}", 1.0
    )
    config_file = _config(project, settings)
    yield say("config", f"{config_file}", 1.0)
    yield from _train(project, config_file, stop, say, status)


def _crawl(project, settings, stop, say):
    from blocks.crawl import CrawlError, CrawlOptions, crawl_site

    manifest = project.crawl_dir / "pages.jsonl"
    if manifest.is_file() and not settings.recrawl:
        pages = sum(1 for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip())
        if pages:
            yield say("crawl", f"{pages} pages already crawled (recrawl to fetch again)", 1.0)
            return
    options = CrawlOptions(
        max_depth=settings.max_depth,
        max_pages=settings.max_pages,
        delay=settings.delay,
        allow_private=settings.allow_private,
        allowed_origins=settings.allowed_origins,
    )
    try:
        for p in crawl_site(settings.start_url, project.crawl_dir, options, stop):
            fraction = min(p.fetched / max(settings.max_pages, 1), 1.0)
            yield say("crawl", f"{p.fetched} fetched, {p.saved} saved", fraction)
    except CrawlError as exc:
        raise PipelineError(f"crawl: {exc}") from exc
    if not manifest.is_file():
        raise PipelineError("crawl: no page could be saved: check the start address in a browser.")


def _qa(project, settings, stop, say):
    from blocks.clean import StageInputError
    from blocks.llm import ClientSettings, LLMError, SettingsError, make_client
    from blocks.qa import QASettings, generate_qa

    class _Stop:
        def is_set(self) -> bool:
            return stop()

    try:
        client = make_client(
            ClientSettings(
                backend=settings.backend,
                model=settings.qa_model,
                base_url=settings.base_url,
                model_path=settings.qa_model_path,
                allow_private=settings.allow_private,  # exposed app: the API must be public too
            )
        )
    except SettingsError as exc:
        raise PipelineError(f"QA generation: {exc}") from exc
    report = None
    try:
        english_only = settings.backend == "local" and not settings.qa_model_path
        qa_settings = QASettings(prompt_lang="en", only_language="en" if english_only else "")
        for report in generate_qa(project, client, qa_settings, _Stop()):
            total = max(report.total, 1)
            yield say(
                "qa",
                f"{report.processed}/{report.total} pages, {report.pairs} pairs"
                + (f", {report.failed} failed" if report.failed else ""),
                report.processed / total,
            )
    except (StageInputError, LLMError) as exc:
        raise PipelineError(f"QA generation: {exc}") from exc
    if report is not None and not report.stopped and report.pairs == 0:
        raise PipelineError(
            "QA generation made no pairs: see the QA tab's failures; with the embedded model only English "
            "pages give pairs (use an API model for Chinese pages)."
        )


def _config(project: Project, settings: PipelineSettings) -> Path:
    """data/<project>/configs/pipeline.yaml: cpu-demo for the embedded model, gpu-24gb for a big one."""
    from blocks.config import detect_gpu, load_preset, save_config

    big = bool(settings.base_model) and detect_gpu() is not None
    cfg = load_preset(settings.preset or ("gpu-24gb" if big else "cpu-demo"), project.name)
    if settings.base_model:
        cfg.base_model = settings.base_model
    if settings.max_steps > 0:
        cfg.max_steps = settings.max_steps
        cfg.save_steps = cfg.eval_steps = min(cfg.save_steps, settings.max_steps)
        cfg.logging_steps = min(cfg.logging_steps, settings.max_steps)
    fit_lengths(cfg)
    return save_config(cfg, project.root / "configs" / "pipeline.yaml")


def fit_lengths(cfg) -> None:
    """Shorten the prompt length so prompt + answer fit the model's context (a short-context model
    would otherwise be refused by the config check)."""
    from blocks.config import resolve_path

    try:
        model_config = json.loads((resolve_path(cfg.base_model) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # a hub id or a missing folder: the config check says what is wrong
    limit = model_config.get("max_position_embeddings")
    if isinstance(limit, int) and cfg.max_input_length + cfg.max_output_length > limit:
        cfg.max_output_length = min(cfg.max_output_length, limit // 2)
        cfg.max_input_length = limit - cfg.max_output_length


def _train_sha(project: Project) -> str:
    return hashlib.sha256((project.dataset_dir / "train.jsonl").read_bytes()).hexdigest()


def _read_marker(run_dir: Path) -> str | None:
    """The training data a pipeline run was started on (None if unknown)."""
    try:
        return json.loads((run_dir / "pipeline.json").read_text(encoding="utf-8")).get("train_sha256")
    except (OSError, ValueError, AttributeError):
        return None


def _train(project, config_file, stop, say, status):
    from blocks import training as tr

    previous = sorted(p for p in project.runs_dir.glob(f"{PIPELINE_RUN}-*") if p.is_dir())
    run_dir = None
    if previous:
        last = tr.get_run_status(previous[-1])
        if last.has_adapter and _read_marker(previous[-1]) == _train_sha(project):
            status.run_dir, status.done = previous[-1], True  # trained on this very dataset already
            yield say("training", f"done earlier: chat with `{chat_command(project, previous[-1])}`", 1.0)
            return
        if last.active:
            run_dir = previous[-1]  # a pipeline run is training already (e.g. the page was reloaded)
        elif not (previous[-1] / "adapter").is_dir() and tr.list_checkpoints(previous[-1]):
            tr.resume_run(project.name, previous[-1].name)
            run_dir = previous[-1]
    if run_dir is None:
        run_id = f"{PIPELINE_RUN}-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            run_dir = tr.start_run(project.name, config_file, run_id).run_dir
        except tr.TrainingError as exc:
            raise PipelineError(f"training: {exc}") from exc
        from blocks.clean import write_text_atomic

        write_text_atomic(Path(run_dir) / "pipeline.json", json.dumps({"train_sha256": _train_sha(project)}))
    status.run_dir = Path(run_dir)
    while True:
        s = tr.get_run_status(run_dir)
        fraction = (s.step or 0) / s.total_steps if s.total_steps else 0.0
        eta = f", about {s.eta_s / 60:.0f} min left" if s.eta_s else ""
        loss = f", loss {s.loss:.3f}" if s.loss is not None else ""
        yield say("training", f"step {s.step or 0}/{s.total_steps or '?'}{loss}{eta}", fraction)
        if not s.active:
            break
        if stop():
            tr.stop_run(run_dir)
            status.stopped = True
            yield say("training", "stopped: run the pipeline again to resume", fraction)
            return
        time.sleep(2)
    if not (Path(run_dir) / "adapter").is_dir():
        raise PipelineError(
            f"training: the run ended without an adapter ({s.status}): see {run_dir}/train.log"
        )
    status.done = True
    yield say("training", f"done: chat with `{chat_command(project, Path(run_dir))}`", 1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("start_url")
    parser.add_argument("--project", default="demo")
    parser.add_argument("--max-pages", type=int, default=60)
    parser.add_argument("--max-depth", type=int, default=3)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds between requests (real sites: 1+)")
    parser.add_argument("--recrawl", action="store_true", help="crawl again even if a crawl finished")
    parser.add_argument("--backend", choices=("local", "zhipu", "openai"), default="local")
    parser.add_argument("--qa-model", default="", help="API model name for zhipu/openai")
    parser.add_argument("--base-url", default="", help="OpenAI-compatible endpoint for --backend openai")
    parser.add_argument(
        "--qa-model-path",
        default="",
        help="local model folder for QA (default: the embedded, English-only one)",
    )
    parser.add_argument("--base-model", default="", help="model folder to fine-tune (default: embedded)")
    parser.add_argument(
        "--max-steps", type=int, default=0, help="training steps (default: the preset's; a quick try: 5)"
    )
    args = parser.parse_args(argv)
    if args.max_steps < 0:
        parser.error("--max-steps must be 0 (the preset's) or more")
    settings = PipelineSettings(
        args.start_url,
        max_pages=args.max_pages,
        max_depth=args.max_depth,
        delay=args.delay,
        recrawl=args.recrawl,
        backend=args.backend,
        qa_model=args.qa_model,
        base_url=args.base_url,
        qa_model_path=args.qa_model_path,
        base_model=args.base_model,
        max_steps=args.max_steps,
    )
    from blocks.workspace import WorkspaceError

    last_stage = ""
    s = None
    try:
        project = get_project(args.project)
        flag = stop_flag(project)
        flag.clear()
        for s in run_pipeline(project, settings, flag.is_set):
            if s.stage != last_stage and last_stage:
                print(f"\r{last_stage}: {s.lines[last_stage]}".ljust(100), flush=True)
            last_stage = s.stage
            elapsed = time.monotonic() - s.started
            print(f"\r[{elapsed:5.0f} s] {s.stage}: {s.message}"[:160].ljust(100), end="", flush=True)
        print(flush=True)
    except KeyboardInterrupt:
        if s is not None and s.run_dir is not None:
            from blocks.training import stop_run

            stop_run(s.run_dir)  # the trainer runs in its own process group: Ctrl-C does not reach it
        print("\nstopped: run the same command again to go on", file=sys.stderr)
        return 130
    except (PipelineError, WorkspaceError) as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
