"""Prompt text of a given token length, made up deterministically.

A trace stores token counts only. The replay sends text (chat messages), so
it needs text that the server's tokenizer turns into about that many tokens.
Random ids from the tokenizer's plain, printable vocabulary are decoded to
text and re-encoded; tokens merge across the joins, so the text is extended
until it has enough tokens and then cut to exactly ``tokens`` ids and decoded
again. Re-encoding that text can still differ by a token or two at a
boundary, and the chat template adds its own tokens around each message: the
server's own count (``usage.prompt_tokens``) is the one the report uses.

The same key gives the same text in every process (the seed is a CRC of the
key): a shared system prompt is byte-identical across sessions, which is what
makes it a prefix-cache hit, and different sessions get different text.
"""

from __future__ import annotations

import random
import zlib
from functools import lru_cache
from typing import Any, Protocol


class Tokenizer(Protocol):
    """What is used of a Hugging Face tokenizer."""

    all_special_ids: list[int]

    def __len__(self) -> int: ...

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class TextMaker:
    """Deterministic text of a requested token length for one tokenizer."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._vocab = _plain_tokens(tokenizer)
        if len(self._vocab) < 16:
            raise ValueError("the tokenizer has fewer than 16 plain printable tokens")
        self.text = lru_cache(maxsize=4096)(self._text)

    def count(self, text: str) -> int:
        """Tokens in ``text`` (no special tokens added)."""
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def _text(self, key: str, tokens: int) -> str:
        """About ``tokens`` tokens of text, the same for the same key."""
        if tokens < 1:
            raise ValueError(f"tokens must be >= 1, got {tokens}")
        rng = random.Random(zlib.crc32(key.encode()))
        ids: list[int] = []
        for _ in range(8):  # merges shrink the count; a few extensions always suffice
            ids += rng.choices(self._vocab, k=tokens - len(ids) + 4)
            ids = self.tokenizer.encode(self.tokenizer.decode(ids), add_special_tokens=False)
            if len(ids) >= tokens:
                break
        return self.tokenizer.decode(ids[:tokens])


def _plain_tokens(tokenizer: Tokenizer) -> list[int]:
    """Ids that decode alone to printable ASCII with a letter or digit.

    Excludes special tokens and byte fragments of multi-byte characters, which
    would decode to replacement characters.
    """
    special = set(tokenizer.all_special_ids)
    plain = []
    for token_id in range(len(tokenizer)):
        if token_id in special:
            continue
        piece = tokenizer.decode([token_id])
        if piece.isascii() and piece.strip().isprintable() and any(c.isalnum() for c in piece):
            plain.append(token_id)
    return plain


def load_tokenizer(path: str) -> Any:
    """The Hugging Face tokenizer at ``path`` (a local directory or a hub name)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=True)
