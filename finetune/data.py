"""Chat JSONL -> token ids and labels for the trainer: loss on the final assistant turn only.

The answer's tokens are the model's own chat template rendering of the whole conversation minus
the rendering of the prompt with the generation header, so the end-of-turn token is trained too.
"""

from __future__ import annotations

import json
from pathlib import Path

from blocks.config import TrainConfig

IGNORE = -100  # label value the loss skips


class DatasetError(ValueError):
    """The chat dataset cannot be trained on; the message says what to fix."""


# ---------------------------------------------------------------- data


def read_chat_jsonl(path: Path) -> list[list[dict]]:
    """The `messages` lists of a chat JSONL file; errors name the file and line."""
    conversations = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            messages = json.loads(line)["messages"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DatasetError(f"{path}:{lineno}: not a chat record with 'messages' ({exc}).") from exc
        if not messages or messages[-1].get("role") != "assistant":
            raise DatasetError(f"{path}:{lineno}: the last message must be the assistant's answer.")
        conversations.append(messages)
    return conversations


def split_prompt_answer(messages: list[dict], tokenizer) -> tuple[str, str]:
    """(prompt text up to the generation header, answer text): the template's rendering split where the
    last answer starts; the answer keeps the end-of-turn token the template appends."""
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise DatasetError(
            "The chat template renders the prompt differently inside the full conversation, so the "
            "answer tokens cannot be located: use a model whose template is prefix-stable (ChatML, GLM-4)."
        )
    return prompt, full[len(prompt) :]


def encode_conversation(messages: list[dict], tokenizer, max_input: int, max_output: int) -> dict:
    """Token ids and labels: the prompt (everything before the last answer) is masked out.

    The answer's tokens are the template's full rendering minus the rendering of the prompt with
    the generation header, so the end-of-turn token the template appends is trained too.
    """
    prompt, answer = split_prompt_answer(messages, tokenizer)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    prompt_ids = prompt_ids[-max_input:]  # keep the end: the question sits right before the answer
    answer_ids = answer_ids[:max_output]
    return {"input_ids": prompt_ids + answer_ids, "labels": [IGNORE] * len(prompt_ids) + answer_ids}


def load_split(dataset_dir: Path, split: str, tokenizer, cfg: TrainConfig) -> list[dict]:
    """Encoded records of one split ([] if the file is absent)."""
    path = dataset_dir / f"{split}.jsonl"
    if not path.is_file():
        return []
    return [
        encode_conversation(m, tokenizer, cfg.max_input_length, cfg.max_output_length)
        for m in read_chat_jsonl(path)
    ]


def collate_batch(records: list[dict], pad_id: int) -> dict:
    """Right-pad a batch; padding is masked in attention and labels."""
    import torch

    width = max(len(r["input_ids"]) for r in records)
    ids, labels, mask = [], [], []
    for r in records:
        pad = width - len(r["input_ids"])
        ids.append(r["input_ids"] + [pad_id] * pad)
        labels.append(r["labels"] + [IGNORE] * pad)
        mask.append([1] * len(r["input_ids"]) + [0] * pad)
    return {
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor(labels),
        "attention_mask": torch.tensor(mask),
    }
