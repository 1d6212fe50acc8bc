"""KV reservation: the one rule by which the server and the simulator count KV needs.

It is SGLang's admission rule (``PrefillAdder``, sglang/srt/managers/schedule_policy.py):

- a request being admitted needs its uncached prompt plus its whole output, ``max_new_tokens``
  clipped at ``SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION`` (4096);
- a running request keeps room for the output it may still produce: the same clipped
  remainder times SGLang's new-token ratio (it decays while no request is retracted and
  rises after a retraction), or times 1 for a fixed-length request (``ignore_eos``);
- admission may take the free and evictable KV less that room.

SGLang can clip and scale because it retracts a running request when decoding runs out of
KV. The simulator does not retract: its requests are fixed length and it reserves their
whole output (``clip=None``), which is the rule's ratio-1 case with the clip lifted.
"""

from __future__ import annotations

#: SGLang's default clip on the output tokens it reserves per request.
OUTPUT_RESERVE_CLIP = 4096


def admission_kv_tokens(new_tokens: int, max_new_tokens: int, clip: int | None) -> int:
    """KV tokens a waiting request needs to be admitted (``clip`` None: no clip)."""
    output = max_new_tokens if clip is None else min(max_new_tokens, clip)
    return new_tokens + max(0, output)


def running_kv_room(max_new_tokens: int, generated: int, ratio: float, clip: int | None) -> float:
    """KV tokens a running request may still take for its output, as SGLang counts them."""
    left = max(0, max_new_tokens - generated)
    return (left if clip is None else min(left, clip)) * ratio
