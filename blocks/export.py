"""Export a trained adapter: merge LoRA into its base model, or package a P-tuning v2 adapter.

    python -m blocks.export --adapter data/demo/runs/RUN/adapter --out data/demo/exports/RUN-merged
    python -m blocks.export --adapter data/demo/runs/RUN/checkpoint-200 --out /tmp/x --model /new/base/path

LoRA (and QLoRA) adapters are merged (`merge_and_unload`) into a standalone Hugging Face folder
(safetensors, tokenizer, chat template) that loads with plain transformers, no peft needed.
P-tuning v2 prefixes cannot be merged into weights: the adapter is copied without the trainer's
optimizer state, with `umtcds_adapter.json` naming its base model and an EXPORT.md saying how to load it.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import shutil
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from blocks.chat import (
    MERGEABLE_METHODS,
    ChatError,
    check_weights,
    load_tokenizer,
    read_adapter_info,
    resolve_base_model,
)

EXPORT_INFO_FILE = "umtcds_export.json"
# Trainer state inside checkpoint-*/ folders: useless outside training, and pickles (.pt/.pth/.bin).
TRAINER_STATE = (
    "optimizer.*",
    "scheduler.*",
    "scaler.*",
    "rng_state*",
    "trainer_state.json",
    "training_args.bin",
)


class ExportError(ValueError):
    """An export the module refuses; the message says what to do."""


@dataclass(frozen=True)
class ExportResult:
    """Where the export went and what kind it is ("merged" or "adapter")."""

    path: Path
    kind: str
    message: str


def make_own_dir(out_dir: Path, kind: str) -> Path:
    """Create a hidden folder beside `out_dir` under a fresh random name: a folder that already
    exists (a user's "X.partial", another export's) is never reused, so never removed."""
    folder = out_dir.with_name(f".{out_dir.name}.{uuid.uuid4().hex[:12]}.{kind}")
    folder.mkdir()  # no exist_ok: a name collision fails here instead of adopting that folder
    return folder


def prepare_out_dir(out_dir: Path, overwrite: bool) -> Path:
    """A new, uniquely named temporary folder beside `out_dir` to write into; refuses to clobber a
    non-empty target unless asked. Only folders this export created are ever removed."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir} is a file, not a folder: choose a folder name for the export.")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ExportError(
            f"{out_dir} already exists and is not empty: choose another folder or allow overwrite."
        )
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        return make_own_dir(out_dir, "partial")
    except OSError as exc:
        raise ExportError(
            f"Cannot create a folder in {out_dir.parent}: {exc.strerror or exc}. Choose a folder you can "
            "write to."
        ) from exc


def write_or_clean_up(tmp: Path, out_dir: Path, write) -> None:
    """Run `write(tmp)` and swap the result into place; on any error remove `tmp` (ours) and explain."""
    try:
        write(tmp)
        finish_out_dir(tmp, out_dir)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExportError(
            f"Cannot write the export to {out_dir}: {exc.strerror or exc}. Free some space or choose "
            "another folder; an earlier export there is unchanged."
        ) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def finish_out_dir(tmp: Path, out_dir: Path) -> None:
    """Swap the finished temporary folder into place, so a crash never leaves a half export.

    An old `out_dir` (overwrite was allowed) is first renamed aside under a unique name of our own,
    then removed: a failed swap puts it back, and no other folder is touched.
    """
    if not out_dir.exists():
        tmp.rename(out_dir)
        return
    aside = make_own_dir(out_dir, "old")
    out_dir.rename(aside / out_dir.name)
    try:
        tmp.rename(out_dir)
    except OSError:
        (aside / out_dir.name).rename(out_dir)
        aside.rmdir()
        raise
    shutil.rmtree(aside)


def write_export_info(folder: Path, info, base: Path, kind: str) -> None:
    """Record where an export came from (adapter, base model and its fingerprint)."""
    data = {
        "kind": kind,
        "method": info.method,
        "source_adapter": str(info.path),
        "base_model": str(base),
        "base_fingerprint": info.base_fingerprint,
        "run_id": info.run_id,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (folder / EXPORT_INFO_FILE).write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")


def merge_lora(
    adapter_dir: Path, out_dir: Path, base_path: str | Path | None = None, overwrite: bool = False
) -> ExportResult:
    """Merge a LoRA adapter into its base and save a standalone model folder."""
    info = read_adapter_info(adapter_dir)
    if info.method not in MERGEABLE_METHODS:
        raise ExportError(f"{info.method} adapters cannot be merged: use export_adapter instead.")
    base = resolve_base_model(info, base_path)
    check_weights(base)
    import torch  # after the checks above: refusals come without the import's seconds
    from peft import PeftModel
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    # Merge in fp32 for accuracy, then save in the base model's own dtype (bf16 stays half the size).
    config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    saved_dtype = getattr(torch, str(config.get("torch_dtype") or config.get("dtype") or "float32"), None)
    if not isinstance(saved_dtype, torch.dtype):
        saved_dtype = torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, use_safetensors=True)
        model = PeftModel.from_pretrained(model, info.path).merge_and_unload()
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
        raise ExportError(
            f"Cannot apply the adapter {info.path} to {base}: {str(exc)[:300]}. The adapter is damaged or "
            f"was trained on another model (recorded base: {info.base_model})."
        ) from exc
    model = model.to(saved_dtype)
    tokenizer = load_tokenizer(info.path, base)  # carries the chat template used in training
    tmp = prepare_out_dir(out_dir, overwrite)

    def write(folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        write_export_info(folder, info, base, "merged")

    write_or_clean_up(tmp, out_dir, write)
    return ExportResult(
        out_dir, "merged", f"Merged {info.method} adapter into {base.name}: a standalone model in {out_dir}."
    )


def export_adapter(
    adapter_dir: Path, out_dir: Path, base_path: str | Path | None = None, overwrite: bool = False
) -> ExportResult:
    """Copy an adapter (without trainer state) with its base-model reference and loading notes."""
    info = read_adapter_info(adapter_dir)
    base = resolve_base_model(info, base_path)
    tmp = prepare_out_dir(out_dir, overwrite)
    note = (
        f"# {info.method} adapter\n\n"
        f"P-tuning v2 learns prefixes fed to every layer at run time; they cannot be merged into the\n"
        f"model weights. Load this folder on top of its base model ({base}):\n\n"
        "```python\n"
        "from peft import PeftModel\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f'base = AutoModelForCausalLM.from_pretrained("{base}")\n'
        'model = PeftModel.from_pretrained(base, "THIS_FOLDER")\n'
        'tokenizer = AutoTokenizer.from_pretrained("THIS_FOLDER")\n'
        "```\n\n"
        "or serve it: `python -m blocks.serve --adapter THIS_FOLDER`.\n"
    )

    def write(folder: Path) -> None:
        for item in info.path.iterdir():
            if item.is_file() and not any(fnmatch.fnmatch(item.name, pat) for pat in TRAINER_STATE):
                shutil.copy2(item, folder / item.name)
        adapter_info = json.loads((folder / "umtcds_adapter.json").read_text(encoding="utf-8"))
        adapter_info["base_model"] = str(base)  # the path that exists now, if the base moved
        (folder / "umtcds_adapter.json").write_text(
            json.dumps(adapter_info, indent=2, ensure_ascii=False), encoding="utf-8"
        )
        (folder / "EXPORT.md").write_text(note, encoding="utf-8")
        write_export_info(folder, info, base, "adapter")

    write_or_clean_up(tmp, out_dir, write)
    return ExportResult(
        out_dir,
        "adapter",
        f"{info.method} adapters cannot be merged into the model: copied the adapter with its base "
        f"reference ({base}) to {out_dir}; load it with peft on top of the base model (see EXPORT.md).",
    )


def export_model(
    adapter_dir: str | Path, out_dir: str | Path, base_path: str | Path | None = None, overwrite: bool = False
) -> ExportResult:
    """Merge LoRA/QLoRA into a standalone model; package P-tuning v2 adapters as they are."""
    info = read_adapter_info(adapter_dir)
    if info.method in MERGEABLE_METHODS:
        return merge_lora(info.path, Path(out_dir), base_path, overwrite)
    return export_adapter(info.path, Path(out_dir), base_path, overwrite)


def default_export_dir(project_root: Path, run_id: str, checkpoint: str) -> Path:
    """Where the Chat tab exports a run's checkpoint: data/<project>/exports/<run>-<checkpoint>."""
    return project_root / "exports" / f"{run_id}-{checkpoint}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--adapter", required=True, help="adapter folder: runs/<run-id>/adapter or checkpoint-N"
    )
    parser.add_argument("--out", required=True, type=Path, help="folder to create")
    parser.add_argument("--model", default=None, help="base model folder, only if it moved since training")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    args = parser.parse_args(argv)
    try:
        result = export_model(args.adapter, args.out, args.model, args.overwrite)
    except (ChatError, ExportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result.message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
