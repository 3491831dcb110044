"""Split page text into chunks of at most N tokens of the chosen model, on paragraph boundaries.

Paragraphs (one per line, as the crawler writes them) are packed greedily; the last paragraphs of a
chunk are repeated at the start of the next (overlap) so a fact cut at a boundary appears whole in
one of them. A paragraph longer than the limit is split at sentence ends, then hard-split.
Pure functions; the token counter is passed in (a tokenizer's or blocks.llm.estimate_tokens).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

CountTokens = Callable[[str], int]
_SENTENCE_END = re.compile(r"(?<=[。！？；!?;])|(?<=[.!?])\s+")
# A sentence ends at 。！？ or at . ! ? followed by a space and a capital/digit/quote ("4.6万" stays whole).
_FACT_END = re.compile(r"(?<=[。！？])|(?<=[.!?])\s+(?=[A-Z0-9(\"'“‘])")


@dataclass(frozen=True)
class Chunk:
    """A piece of one page's text, small enough for one request."""

    index: int
    text: str
    n_tokens: int


def split_paragraphs(text: str) -> list[str]:
    """Non-empty, stripped lines of `text`."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def split_long(paragraph: str, max_tokens: int, count: CountTokens) -> list[str]:
    """Cut one over-long paragraph into pieces of at most `max_tokens`, at sentence ends when possible."""
    pieces: list[str] = []
    current = ""
    for sentence in (s for s in _SENTENCE_END.split(paragraph) if s and s.strip()):
        candidate = current + sentence if current else sentence
        if count(candidate) <= max_tokens:
            current = candidate
            continue
        if current:
            pieces.append(current.strip())
        current = sentence
        while count(current) > max_tokens:  # a single sentence too long: hard split by characters
            cut = max(1, len(current) * max_tokens // max(count(current), 1))
            while cut > 1 and count(current[:cut]) > max_tokens:
                cut = cut * 3 // 4
            pieces.append(current[:cut].strip())
            current = current[cut:]
    if current.strip():
        pieces.append(current.strip())
    return [p for p in pieces if p]


def chunk_text(text: str, max_tokens: int, count: CountTokens, overlap_tokens: int = 0) -> list[Chunk]:
    """Pack paragraphs into chunks of at most `max_tokens`, repeating up to `overlap_tokens` of context."""
    if max_tokens < 16:
        raise ValueError(f"chunk size {max_tokens} tokens is too small: use at least 16 (e.g. 1000)")
    overlap_tokens = min(overlap_tokens, max_tokens // 2)
    units: list[tuple[str, int]] = []
    for para in split_paragraphs(text):
        n = count(para)
        if n <= max_tokens:
            units.append((para, n))
        else:
            units.extend((piece, count(piece)) for piece in split_long(para, max_tokens, count))
    chunks: list[Chunk] = []
    current: list[tuple[str, int]] = []
    fresh = False  # does `current` hold anything not already emitted?

    def size(parts: list[tuple[str, int]]) -> int:
        return count("\n".join(p for p, _ in parts)) if parts else 0

    for unit in units:
        if current and size([*current, unit]) > max_tokens:
            if fresh:
                chunks.append(Chunk(len(chunks), "\n".join(p for p, _ in current), size(current)))
            tail: list[tuple[str, int]] = []
            for part in reversed(current):  # carry the last paragraphs as overlap
                if sum(n for _, n in tail) + part[1] > overlap_tokens:
                    break
                tail.insert(0, part)
            while tail and size([*tail, unit]) > max_tokens:
                tail.pop(0)
            current = tail
        current.append(unit)
        fresh = True
    if current and fresh:
        chunks.append(Chunk(len(chunks), "\n".join(p for p, _ in current), size(current)))
    return chunks


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`, one paragraph at a time (decimals and times are never cut)."""
    return [s.strip() for para in split_paragraphs(text) for s in _FACT_END.split(para) if s and s.strip()]
