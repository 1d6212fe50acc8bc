"""Llama-shaped layers in plain torch for the GPU microbench: the shapes from a model's
config.json, and a forward over one prefill sequence and/or decode tokens with a KV cache."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Shapes:
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    layers: int
    eps: float = 1e-5

    @classmethod
    def from_config(cls, path: Path) -> Shapes:
        c = json.loads(path.read_text())
        keys = ("hidden_size", "num_attention_heads", "num_key_value_heads")
        hidden, heads, kv_heads = (c[k] for k in keys)
        head_dim = c.get("head_dim") or hidden // heads
        eps = c.get("rms_norm_eps", 1e-5)
        return cls(hidden, heads, kv_heads, head_dim, c["intermediate_size"],
                   c["num_hidden_layers"], eps)  # fmt: skip


class Model:
    """Random weights for ``sets`` distinct layers, reused cyclically over the depth. A set
    (~0.44 GB at 8B shapes; KV sets alike) is far larger than L2, so the reuse keeps the
    DRAM traffic of distinct layers. RoPE and KV writes are left out (small elementwise)."""

    def __init__(self, s: Shapes, sets: int, device: str, dtype: torch.dtype) -> None:
        self.s, self.device, self.dtype = s, device, dtype
        new = lambda *shape: torch.randn(*shape, device=device, dtype=dtype) * shape[-1] ** -0.5  # noqa: E731
        qkv, attn = (s.heads + 2 * s.kv_heads) * s.head_dim, s.heads * s.head_dim
        self.sets = [
            dict(norm=torch.ones(s.hidden, device=device, dtype=dtype), qkv=new(qkv, s.hidden),
                 o=new(s.hidden, attn), gate_up=new(2 * s.intermediate, s.hidden),
                 down=new(s.hidden, s.intermediate))
            for _ in range(sets)
        ]  # fmt: skip

    def tokens(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.s.hidden, device=self.device, dtype=self.dtype)

    def kv_cache(self, batch: int, context: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        shape = (batch, self.s.kv_heads, context, self.s.head_dim)
        new = lambda: torch.randn(shape, device=self.device, dtype=self.dtype)  # noqa: E731
        return [(new(), new()) for _ in self.sets]

    def forward(self, x: torch.Tensor, layers: int, kv: Any = None, decode_rows: int = 0) -> Any:
        """``layers`` layers over ``x``: its first ``decode_rows`` rows are decode tokens that
        read ``kv``; the other rows are one prefill sequence attending causally to itself."""
        s = self.s
        sizes = [s.heads * s.head_dim, s.kv_heads * s.head_dim, s.kv_heads * s.head_dim]
        norm = lambda x, w: F.rms_norm(x, (s.hidden,), w, s.eps)  # noqa: E731
        for i in range(layers):
            w = self.sets[i % len(self.sets)]
            q, k, v = F.linear(norm(x, w["norm"]), w["qkv"]).split(sizes, -1)
            cache = kv[i % len(kv)] if decode_rows else None
            x = x + F.linear(self._attend(q, k, v, cache, decode_rows), w["o"])
            gate, up = F.linear(norm(x, w["norm"]), w["gate_up"]).chunk(2, -1)
            x = x + F.linear(F.silu(gate) * up, w["down"])
        return x

    def _attend(self, q: Any, k: Any, v: Any, cache: Any, rows: int) -> torch.Tensor:
        s, group, out = self.s, self.s.heads // self.s.kv_heads, []
        if rows:  # GQA decode: a KV head's `group` query heads act as its query positions,
            # so SDPA reads each cached KV head once instead of a repeated cache
            qd = q[:rows].reshape(rows, s.kv_heads, group, s.head_dim)
            out.append(F.scaled_dot_product_attention(qd, *cache).reshape(rows, -1))
        n = q.shape[0] - rows
        if n:
            heads = lambda t, h: t[rows:].reshape(n, h, s.head_dim).transpose(0, 1)[None]  # noqa: E731
            kp, vp = (heads(t, s.kv_heads).repeat_interleave(group, 1) for t in (k, v))
            o = F.scaled_dot_product_attention(heads(q, s.heads), kp, vp, is_causal=True)
            out.append(o[0].transpose(0, 1).reshape(n, -1))
        return out[0] if len(out) == 1 else torch.cat(out)
