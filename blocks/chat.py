"""Chat with a trained run: load a base model plus a LoRA / P-tuning v2 adapter and stream replies.

    python -m blocks.chat --model models/smollm2-135m-instruct --prompt "When does the library open?"
    python -m blocks.chat --adapter data/demo/runs/RUN/adapter --prompt "When does the library open?"
    python -m blocks.chat --adapter data/demo/runs/RUN/checkpoint-200 --model /new/path/to/base
    python -m blocks.chat --adapter data/demo/runs/RUN/adapter        # interactive; /reset, /exit
    python -m blocks.chat --adapter data/demo/runs/RUN/adapter --project demo --retrieve --prompt "..."

With --retrieve the question is answered from the passages of the project's retrieval index
(blocks.index) that match it best, and after the reply one line per cited source is printed: [n] URL.

An adapter folder holds `umtcds_adapter.json` (see docs/CONTRACTS.md): the base model path it was
trained on and that model's fingerprint. If the base model moved, pass its new path with --model;
it is accepted when the fingerprint matches, and an adapter for a different base model is refused.
Weights load as bf16 on a GPU and fp32 on CPU, safetensors only.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blocks.models import REPO_ROOT, default_model_path, model_fingerprint

ADAPTER_INFO_FILE = "umtcds_adapter.json"
METHODS = ("lora", "qlora", "ptuning")
MERGEABLE_METHODS = ("lora", "qlora")


# HF's repetition penalty also lowers tokens of the prompt: with retrieved pages in the prompt it
# fights the very copying of numbers and names a grounded answer needs.
GROUNDED_REPETITION_PENALTY = 1.0


class ChatError(ValueError):
    """A model, adapter or request the chat refuses; the message says what to do."""


class BaseModelMovedError(ChatError):
    """The base model recorded in an adapter is not where training left it."""

    def __init__(self, recorded: str) -> None:
        self.recorded = recorded
        super().__init__(
            f"The base model recorded in this checkpoint, {recorded}, is not a model folder on this "
            "machine (moved or deleted?). Enter its new path as the base model and load again; it is "
            "accepted if it is the same model."
        )


class AdapterMismatchError(ChatError):
    """The adapter was trained on a different base model than the one chosen."""


@dataclass(frozen=True)
class AdapterInfo:
    """What `umtcds_adapter.json` says about one adapter folder."""

    path: Path
    method: str
    base_model: str
    base_fingerprint: dict  # empty when the trainer could not read the base (then it is not checked)
    run_id: str = ""
    created_at: str = ""


@dataclass
class GenParams:
    """Sampling settings for one reply; temperature 0 means greedy decoding."""

    temperature: float = 0.7
    top_p: float = 0.9
    max_new_tokens: int = 256
    repetition_penalty: float = 1.1

    def check(self) -> GenParams:
        """Return self, or raise ChatError naming the setting that is out of range."""
        if not 0 <= self.temperature <= 2:
            raise ChatError(f"temperature {self.temperature} is out of range: use 0 (greedy) to 2.")
        if not 0 < self.top_p <= 1:
            raise ChatError(f"top_p {self.top_p} is out of range: use a value above 0 and at most 1.")
        if not 1 <= int(self.max_new_tokens) <= 8192:
            raise ChatError(f"max_new_tokens {self.max_new_tokens} is out of range: use 1 to 8192.")
        if not 0.5 <= self.repetition_penalty <= 2:
            raise ChatError(f"repetition_penalty {self.repetition_penalty} is out of range: use 0.5 to 2.")
        return self


@dataclass
class LoadedModel:
    """A model ready to answer; `stop_event` is the UI's Stop button.

    All generation runs on the one long-lived thread of `executor`: it serialises concurrent users
    (a queue in arrival order), and a reused thread keeps CUDA's per-thread setup (cuBLAS handles,
    workspaces) warm; a fresh thread per reply measured 2.5x slower on an H200.
    """

    model: Any
    tokenizer: Any
    base_path: Path
    adapter: AdapterInfo | None
    device: str
    dtype: str
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="umtcds-generate")
    )
    stop_event: threading.Event = field(default_factory=threading.Event)

    @property
    def name(self) -> str:
        """A short model id: run/checkpoint for an adapter, the folder name for a base model."""
        if self.adapter is None:
            return self.base_path.name
        run = self.adapter.run_id or self.adapter.path.parent.name
        return f"{run}/{self.adapter.path.name}"

    def describe(self) -> str:
        """One line for status boxes and logs."""
        what = f"{self.adapter.method} adapter {self.name} on " if self.adapter else "base model "
        return f"{what}{self.base_path} ({self.device}, {self.dtype})"


@dataclass(frozen=True)
class Reply:
    """A finished reply with OpenAI-style usage numbers."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn or Stop pressed) or "length"


def list_runs(runs_dir: Path) -> list[str]:
    """Run ids under `runs_dir` that hold at least one loadable adapter, newest first."""
    if not Path(runs_dir).is_dir():
        return []
    runs = [p for p in Path(runs_dir).iterdir() if p.is_dir() and list_checkpoints(p)]
    return [p.name for p in sorted(runs, key=lambda p: p.stat().st_mtime, reverse=True)]


def list_checkpoints(run_dir: Path) -> list[str]:
    """Adapter folders of one run: `adapter` (final) first, then checkpoints, latest step first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p.name for p in run_dir.iterdir() if p.is_dir() and (p / ADAPTER_INFO_FILE).is_file()]

    def order(name: str) -> tuple[int, int]:
        if name == "adapter":
            return (0, 0)
        step = name.rpartition("-")[2]
        return (1, -int(step)) if step.isdigit() else (2, 0)

    return sorted(found, key=order)


def read_adapter_info(adapter_dir: str | Path) -> AdapterInfo:
    """Read and check `umtcds_adapter.json` plus the PEFT files of an adapter folder."""
    folder = Path(adapter_dir)
    if not folder.is_dir():
        raise ChatError(
            f"Adapter folder {folder} does not exist: pick a run and checkpoint that finished saving."
        )
    info_file = folder / ADAPTER_INFO_FILE
    if not info_file.is_file():
        raise ChatError(
            f"{folder} has no {ADAPTER_INFO_FILE}: it is not an adapter saved by the UMTCDS trainer "
            "(choose runs/<run-id>/adapter or a checkpoint-* folder)."
        )
    try:
        data = json.loads(info_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ChatError(f"{info_file} is not valid JSON ({exc}): the checkpoint is damaged.") from exc
    if not isinstance(data, dict):
        raise ChatError(f"{info_file} is not a JSON object: the checkpoint is damaged.")
    missing = [k for k in ("method", "base_model") if not data.get(k)]
    if missing:
        raise ChatError(f"{info_file} lacks {', '.join(missing)}: the checkpoint was not saved completely.")
    if not isinstance(data["base_model"], str) or not isinstance(data.get("base_fingerprint") or {}, dict):
        raise ChatError(f"{info_file}: base_model must be a path and base_fingerprint an object.")
    if data["method"] not in METHODS:
        raise ChatError(
            f"{info_file}: unknown method {data['method']!r} (expected one of {', '.join(METHODS)})."
        )
    if not (folder / "adapter_config.json").is_file():
        raise ChatError(f"{folder} has no adapter_config.json: the checkpoint was not saved completely.")
    if not (folder / "adapter_model.safetensors").is_file():
        raise ChatError(
            f"{folder} has no adapter_model.safetensors: only safetensors adapters are loaded "
            "(pickled .bin files can run code when opened)."
        )
    return AdapterInfo(
        path=folder,
        method=data["method"],
        base_model=str(data["base_model"]),
        base_fingerprint=dict(data.get("base_fingerprint") or {}),
        run_id=str(data.get("run_id") or ""),
        created_at=str(data.get("created_at") or ""),
    )


def _as_local_path(path: str | Path) -> Path:
    """Relative paths are taken from the repository root, where the app and trainer run."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p


def resolve_base_model(info: AdapterInfo, base_path: str | Path | None = None) -> Path:
    """The base folder to load under `info`: `base_path` if given, else the recorded one; fingerprint checked."""
    if base_path:
        candidate = _as_local_path(base_path)
        if not (candidate / "config.json").is_file():
            raise ChatError(
                f"{base_path} is not a model folder (no config.json): enter the base model's folder."
            )
    else:
        candidate = _as_local_path(info.base_model)
        if not (candidate / "config.json").is_file():
            raise BaseModelMovedError(info.base_model)
    found = read_fingerprint(candidate)
    if info.base_fingerprint and found != info.base_fingerprint:
        diff = ", ".join(
            f"{k}: adapter {info.base_fingerprint.get(k)!r} vs model {found.get(k)!r}"
            for k in sorted(set(found) | set(info.base_fingerprint))
            if found.get(k) != info.base_fingerprint.get(k)
        )
        raise AdapterMismatchError(
            f"This adapter was trained on a different base model than {candidate} ({diff}). "
            f"Choose the model it was trained on (recorded as {info.base_model})."
        )
    return candidate


def read_fingerprint(folder: Path) -> dict:
    """The model's fingerprint, or ChatError when its config.json cannot be read."""
    try:
        return model_fingerprint(folder)
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, OSError) as exc:
        raise ChatError(
            f"{folder / 'config.json'} cannot be read ({exc}): the model folder is damaged."
        ) from exc


def check_weights(base: Path) -> None:
    """Refuse a model folder without safetensors weights; pickled files are never opened."""
    if list(base.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in base.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl"))
    found = f" (found {', '.join(pickled[:3])}: pickled weights can run code when opened)" if pickled else ""
    raise ChatError(
        f"{base} has no .safetensors weights{found}: only safetensors models are loaded. Convert it with "
        "`save_pretrained(folder, safe_serialization=True)` on a machine you trust."
    )


def pick_device() -> tuple[str, Any]:
    """cuda + bf16 when a GPU is present, else cpu + fp32 (bf16 matmuls are slow on most CPUs)."""
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.bfloat16
    return "cpu", torch.float32


def load_tokenizer(folder: Path, fallback: Path):
    """The tokenizer saved with the adapter (it carries the training chat template), else the base's."""
    from transformers import AutoTokenizer

    source = folder if (folder / "tokenizer_config.json").is_file() else fallback
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, KeyError, TypeError, ImportError) as exc:
        raise ChatError(f"Cannot load the tokenizer in {source}: {str(exc)[:300]}") from exc
    if not tokenizer.chat_template:
        raise ChatError(f"The tokenizer in {source} has no chat template: use an instruct/chat model.")
    return tokenizer


def load_model(
    base_path: str | Path | None = None, adapter_dir: str | Path | None = None, device: str | None = None
) -> LoadedModel:
    """Load a base model, optionally with an adapter (its recorded base unless `base_path` is given)."""
    info = read_adapter_info(adapter_dir) if adapter_dir else None
    if info is not None:
        base = resolve_base_model(info, base_path)
    else:
        base = _as_local_path(base_path or default_model_path())
        if not (base / "config.json").is_file():
            raise ChatError(
                f"{base} is not a model folder (no config.json): enter a Hugging Face model folder."
            )
    check_weights(base)
    if device not in (None, "cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ChatError(f"Unknown device {device!r}: use cpu or cuda.")
    import torch  # only now: refusals above come without the seconds torch takes to import
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    picked, dtype = pick_device()
    device = device or picked
    if device == "cpu":
        dtype = torch.float32
    # On a GPU, load straight into device memory (a 9B model need not pass through host RAM first).
    on_gpu = device.startswith("cuda")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            base, dtype=dtype, use_safetensors=True, device_map=device if on_gpu else None
        )
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            raise
        raise ChatError(
            f"Cannot load the model in {base}: {str(exc)[:300]}. The folder must hold a complete Hugging "
            "Face model (config.json, *.safetensors, tokenizer files)."
        ) from exc
    if info is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, info.path, is_trainable=False)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
            raise AdapterMismatchError(
                f"Cannot apply the adapter {info.path} to {base}: {str(exc)[:300]}. The adapter is damaged "
                f"or was trained on another model (recorded base: {info.base_model})."
            ) from exc
    model.to(device)
    model.eval()
    tokenizer = load_tokenizer(info.path if info else base, base)
    return LoadedModel(model, tokenizer, base, info, device, str(dtype).removeprefix("torch."))


def unload_model(loaded: LoadedModel | None) -> None:
    """Drop the model's weights and give GPU memory back to the driver."""
    if loaded is None or loaded.model is None:
        return
    loaded.stop_event.set()

    def drop() -> None:  # queued behind any running generation, so weights are never freed under it
        loaded.model = None
        loaded.tokenizer = None

    loaded.executor.submit(drop).result()
    loaded.executor.shutdown(wait=True)
    on_gpu = loaded.device.startswith("cuda")
    gc.collect()
    if on_gpu:
        import torch

        torch.cuda.empty_cache()


def build_messages(history: list[dict], user_text: str, system_prompt: str = "") -> list[dict]:
    """The conversation to send: system prompt (if any), earlier turns, the new question."""
    user_text = (user_text or "").strip()
    if not user_text:
        raise ChatError("The question is empty: type something to ask.")
    messages = [{"role": "system", "content": system_prompt.strip()}] if system_prompt.strip() else []
    for turn in history:
        if turn.get("role") in ("user", "assistant") and isinstance(turn.get("content"), str):
            messages.append({"role": turn["role"], "content": turn["content"]})
    messages.append({"role": "user", "content": user_text})
    return messages


def check_messages(messages: list[dict]) -> list[dict]:
    """Return `messages` if it is a chat the template can render, else raise ChatError."""
    if not messages:
        raise ChatError("messages is empty: send at least one user message.")
    for i, m in enumerate(messages):
        if m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
            raise ChatError(
                f"messages[{i}] must have role system/user/assistant and text content, got {m.get('role')!r}."
            )
    if messages[-1]["role"] != "user":
        raise ChatError("The last message must come from the user: that is the one answered.")
    return messages


def _eos_ids(loaded: LoadedModel) -> list[int]:
    """Token ids that end a reply: the model's generation eos plus the tokenizer's end-of-turn token."""
    ids = loaded.model.generation_config.eos_token_id
    ids = list(ids) if isinstance(ids, (list, tuple)) else ([ids] if ids is not None else [])
    tok = loaded.tokenizer
    for token in (tok.eos_token, "<|im_end|>", "<|endoftext|>"):
        tid = tok.convert_tokens_to_ids(token) if token else None
        if isinstance(tid, int) and tid != tok.unk_token_id and tid not in ids:
            ids.append(tid)
    return ids


def generation_kwargs(params: GenParams, eos_ids: list[int], pad_id: int | None) -> dict:
    """Arguments for `model.generate`; temperature 0 switches to greedy decoding."""
    kwargs: dict = {
        "max_new_tokens": int(params.max_new_tokens),
        "repetition_penalty": float(params.repetition_penalty),
        "eos_token_id": eos_ids,
        "pad_token_id": pad_id if pad_id is not None else eos_ids[0],
    }
    if params.temperature > 0:
        kwargs.update(do_sample=True, temperature=float(params.temperature), top_p=float(params.top_p))
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kwargs


class ReplyStream:
    """Iterate for text pieces as they are generated; afterwards `reply` holds the totals.

    Generation runs on the model's executor thread (so concurrent users queue);
    `stop()` or the given event ends it between two tokens.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        messages: list[dict],
        params: GenParams,
        stop_event: threading.Event | None = None,
        use_adapter: bool = True,
    ) -> None:
        if loaded.model is None:
            raise ChatError("No model is loaded: load a model first.")
        self.loaded = loaded
        self.messages = check_messages(messages)
        self.params = params.check()
        self.stop_event = stop_event  # shared, e.g. the UI's Stop button; never set here
        self._stop = threading.Event()  # this reply only
        self.use_adapter = use_adapter
        self.reply: Reply | None = None

    def stop(self) -> None:
        """Ask the generation to end after the current token."""
        self._stop.set()

    def __iter__(self) -> Iterator[str]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        loaded, own_stop, shared_stop = self.loaded, self._stop, self.stop_event
        tokenizer = loaded.tokenizer
        text = tokenizer.apply_chat_template(self.messages, tokenize=False, add_generation_prompt=True)
        inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(loaded.device)
        eos_ids = _eos_ids(loaded)
        kwargs = generation_kwargs(self.params, eos_ids, tokenizer.pad_token_id)
        counts = {"tokens": 0, "last": None}

        class TokenStreamer(TextIteratorStreamer):
            """Emits text after every token (the stock streamer waits for a space) and counts tokens."""

            def put(self, value):
                if self.next_tokens_are_prompt:  # the first call carries the prompt
                    self.next_tokens_are_prompt = False
                    return
                ids = value.reshape(-1).tolist()
                counts["tokens"] += len(ids)
                counts["last"] = ids[-1]
                self.token_cache.extend(ids)
                text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
                if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                    return
                self.on_finalized_text(text[self.print_len :])
                if text.endswith("\n"):  # keeps decoding cost flat on long replies
                    self.token_cache, self.print_len = [], 0
                else:
                    self.print_len = len(text)

        class StopOnEvent(StoppingCriteria):
            def __call__(self, input_ids, scores, **_):
                stop = own_stop.is_set() or (shared_stop is not None and shared_stop.is_set())
                return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

        streamer = TokenStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        errors: list[BaseException] = []
        adapter_off = not self.use_adapter and loaded.adapter is not None

        def work() -> None:
            try:
                model = loaded.model
                if model is None:
                    raise ChatError("The model was unloaded: load it again.")
                with torch.inference_mode(), model.disable_adapter() if adapter_off else nullcontext():
                    model.generate(
                        **inputs,
                        **kwargs,
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([StopOnEvent()]),
                    )
            except BaseException as exc:  # handed to the consumer, which re-raises it
                errors.append(exc)
                streamer.end()

        try:
            job = loaded.executor.submit(work)
        except RuntimeError as exc:  # executor shut down by unload_model
            raise ChatError("The model was unloaded: load it again.") from exc
        pieces: list[str] = []
        try:
            for piece in streamer:
                if piece:
                    pieces.append(piece)
                    yield piece
        finally:
            # A consumer that goes away (closed browser tab, dropped HTTP client) stops the generation.
            own_stop.set()
        job.result()  # already finished (the streamer ended); work() keeps its errors in `errors`
        if errors:
            if isinstance(errors[0], ChatError):
                raise errors[0]
            raise ChatError(f"Generation failed: {errors[0]}") from errors[0]
        n = counts["tokens"]
        hit_limit = n >= self.params.max_new_tokens and counts["last"] not in eos_ids
        self.reply = Reply(
            text="".join(pieces),
            prompt_tokens=int(inputs["input_ids"].shape[1]),
            completion_tokens=n,
            finish_reason="length" if hit_limit else "stop",
        )


def stream_reply(
    loaded: LoadedModel,
    messages: list[dict],
    params: GenParams | None = None,
    stop_event: threading.Event | None = None,
    use_adapter: bool = True,
) -> ReplyStream:
    """Start answering `messages`; iterate the result for text pieces."""
    return ReplyStream(loaded, messages, params or GenParams(), stop_event, use_adapter)


def generate_reply(
    loaded: LoadedModel, messages: list[dict], params: GenParams | None = None, use_adapter: bool = True
) -> Reply:
    """Answer `messages` in one piece."""
    stream = stream_reply(loaded, messages, params, use_adapter=use_adapter)
    for _ in stream:
        pass
    assert stream.reply is not None
    return stream.reply


def compare_replies(
    loaded: LoadedModel, messages: list[dict], params: GenParams | None = None
) -> tuple[str, str]:
    """The same question answered by the base model (adapter off) and the fine-tuned model."""
    if loaded.adapter is None:
        raise ChatError(
            "Compare needs a fine-tuned checkpoint: load a run's adapter, not a base model alone."
        )
    base = generate_reply(loaded, messages, params, use_adapter=False).text
    tuned = generate_reply(loaded, messages, params, use_adapter=True).text
    return base, tuned


def ask_messages(history: list[dict], question: str, system_prompt: str = "", project=None):
    """(messages, hits): the chat to send and, with a project, the passages it is grounded in."""
    if project is None:
        return build_messages(history, question, system_prompt), []
    from blocks.index import grounded_messages, retrieve

    build_messages([], question)  # the empty-question check, before the search
    hits = retrieve(project, question)
    return grounded_messages(history, question.strip(), hits, system_prompt), hits


def answer_and_print(loaded, history, question, params, system_prompt="", project=None) -> str:
    """Stream one reply to stdout, then (when grounded) one line per cited source: [n] URL."""
    from blocks.index import cited_hits, format_sources

    messages, hits = ask_messages(history, question, system_prompt, project)
    stream = stream_reply(loaded, messages, params)
    try:
        for piece in stream:
            print(piece, end="", flush=True)
    except KeyboardInterrupt:
        stream.stop()
    print(flush=True)
    answer = stream.reply.text if stream.reply else ""
    if hits:
        print(format_sources(cited_hits(answer, hits)), flush=True)
    return answer


def run_interactive(loaded: LoadedModel, params: GenParams, system_prompt: str, project=None) -> None:
    """A terminal chat: streams each reply; /reset forgets the history, /exit (or Ctrl-D) quits."""
    history: list[dict] = []
    print(f"Loaded {loaded.describe()}. Type /reset to start over, /exit to quit.", flush=True)
    while True:
        try:
            question = input("you> ").strip()
        except EOFError:
            print()
            return
        if question in ("/exit", "/quit"):
            return
        if question == "/reset":
            history = []
            continue
        if not question:
            continue
        print("bot> ", end="", flush=True)
        answer = answer_and_print(loaded, history, question, params, system_prompt, project)
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=None, help="base model folder (with --adapter: only if it moved)")
    parser.add_argument(
        "--adapter", default=None, help="adapter folder: runs/<run-id>/adapter or checkpoint-N"
    )
    parser.add_argument("--prompt", default=None, help="ask one question, print the answer and exit")
    parser.add_argument("--system", default="", help="system prompt")
    parser.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default 0.7)")
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument(
        "--repetition-penalty",
        type=float,
        default=None,
        help="default 1.1, or 1.0 with --retrieve (copying a number from the pages must not be penalised)",
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--project", default=None, help="project whose retrieval index --retrieve uses")
    parser.add_argument(
        "--retrieve", action="store_true", help="answer from the project's pages and list the cited URLs"
    )
    args = parser.parse_args(argv)
    penalty = args.repetition_penalty
    if penalty is None:
        penalty = GROUNDED_REPETITION_PENALTY if args.retrieve else GenParams.repetition_penalty
    params = GenParams(args.temperature, args.top_p, args.max_new_tokens, penalty)
    from blocks.index import RetrievalError, ensure_index
    from blocks.workspace import WorkspaceError, get_project

    try:
        params.check()
        project = None
        if args.retrieve:
            project = get_project(args.project or "demo")
            ensure_index(project)  # nothing to index: say so before the (slow) model load
        elif args.project:
            raise ChatError("--project is used with --retrieve: add --retrieve to answer from its pages.")
        # Check the question before the (slow) model load.
        if args.prompt is not None:
            build_messages([], args.prompt, args.system)
        loaded = load_model(args.model, args.adapter, args.device)
        if args.prompt is not None:
            answer_and_print(loaded, [], args.prompt, params, args.system, project)
        else:
            run_interactive(loaded, params, args.system, project)
    except (ChatError, RetrievalError, WorkspaceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
