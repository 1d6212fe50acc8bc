"""Write a tiny random Llama, with its own tokenizer and chat template.

    python -m drift_sgl.tools.tiny_model DIR [--layers 6] [--seed 0]

Nothing is downloaded: the byte-level BPE tokenizer is trained on a few
built-in lines and the weights are random (seeded, so the same command always
writes the same model). Greedy outputs are gibberish but deterministic, which
makes token-by-token comparisons between two schedulers meaningful.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}</s>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_CORPUS = [
    "drift multiplexes prefill and decode on one gpu.",
    "The quick brown fox jumps over the lazy dog.",
    "user: what is the capital of France? assistant: Paris is the capital.",
    "system: you are a helpful agent that calls tools and reads their output.",
    'tool output: {"status": "ok", "rows": 42, "elapsed_ms": 3.5}',
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
    "Multi-turn conversations reuse the prefix cache across turns.",
    "def add(a, b):\n    return a + b\n",
]
_SPECIAL_TOKENS = ["<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>"]


def build_tokenizer(vocab_size: int):
    """Train a byte-level BPE tokenizer offline and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def write_tiny_model(
    out_dir: Path,
    *,
    num_layers: int = 6,
    hidden_size: int = 64,
    vocab_size: int = 512,
    max_position_embeddings: int = 2048,
    seed: int = 0,
) -> Path:
    """Write config, random safetensors weights and tokenizer to ``out_dir``."""
    if num_layers < 1:
        raise ValueError("num_layers must be >= 1")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "generation_config.json").write_text(
        json.dumps({"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id})
    )
    return out_dir


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="directory to write the model into")
    parser.add_argument(
        "--layers", type=int, default=6, help="transformer layers (>= 4 recommended)"
    )
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = write_tiny_model(
        args.out_dir, num_layers=args.layers, hidden_size=args.hidden_size, seed=args.seed
    )
    print(f"tiny Llama written to {path}")


if __name__ == "__main__":
    main()
