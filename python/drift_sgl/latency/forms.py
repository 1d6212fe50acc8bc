"""The model's form: which features each phase's latency is linear in, and why.

Prefill of n new tokens (over ``seqs`` sequences, with p cached prefix tokens in
total) costs, per layer:
  * GEMMs proportional to n (weights are re-used across tokens: compute-bound),
  * attention of every new token against its own sequence and its prefix:
    n_i * (n_i/2 + p_i) per sequence, which for equal sequences is
    n^2/seqs and n*p/seqs,
  * reading the prefix KV (proportional to p) and a per-sequence overhead,
  * a fixed launch/weight-read cost.
Decode of b sequences holding k KV tokens in total costs a weight read (fixed),
per-sequence work (b) and the KV read (k).

Each phase is the larger of two such linear forms (``max(A.x, B.x)``): one
fits the memory-bound regime (small prefills, small decode batches), the other
the compute-bound one, and their crossover (FLOP/s over bytes/s: ~250 prefill
tokens for a 16-bit model on an H100, fewer SMs move it) is a kink that a
single linear form cannot follow. All coefficients are fitted non-negative, so
a prediction never decreases with more new tokens, prefix tokens, decode
batch or KV tokens. (Splitting the same prefill tokens over more sequences can
predict less time: attention is quadratic per sequence.)
Guard regions bucket the phase's size by powers of two (``size_bucket``).
"""

from __future__ import annotations

PREFILL_FEATURES = ("const", "new", "prefix", "seqs", "new_sq_per_seq", "new_x_prefix_per_seq")
DECODE_FEATURES = ("const", "batch", "kv")
FEATURES = {"prefill": PREFILL_FEATURES, "decode": DECODE_FEATURES}


def prefill_features(new_tokens: int, prefix_tokens: int, seqs: int) -> tuple[float, ...]:
    # Conditionals, not max(): the planner computes this dozens of times a step.
    n, p, s = float(new_tokens), float(prefix_tokens), float(seqs) if seqs > 1 else 1.0
    return (1.0, n, p, s, n * n / s, n * p / s)


def decode_features(batch_size: int, kv_tokens: int) -> tuple[float, ...]:
    return (1.0, float(batch_size), float(kv_tokens))


def size_bucket(size: int) -> int:
    """The guard region of a phase size (new tokens or batch size): floor(log2)."""
    bucket = int(size).bit_length() - 1
    return bucket if bucket > 0 else 0
