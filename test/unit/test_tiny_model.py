"""The tiny random Llama used by the end-to-end tests and the benchmarks."""

import json
import subprocess
import sys

import pytest

from drift_sgl.tools.tiny_model import write_tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny"), num_layers=4)


def test_config_has_requested_layers(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    assert config["num_hidden_layers"] == 4
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["model_type"] == "llama"
    assert (model_dir / "model.safetensors").stat().st_size > 0


def test_tokenizer_and_chat_template(model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    assert len(tokenizer) == config["vocab_size"]
    assert tokenizer.eos_token == "</s>"
    assert tokenizer.eos_token_id == config["eos_token_id"]

    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "what is the capital of France?"},
    ]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt.startswith("<|system|>be brief</s>\n<|user|>")
    assert prompt.endswith("<|assistant|>")

    ids = tokenizer.encode("The quick brown fox", add_special_tokens=False)
    assert ids and max(ids) < len(tokenizer)
    assert tokenizer.decode(ids) == "The quick brown fox"


def test_same_seed_gives_identical_weights(model_dir, tmp_path):
    again = write_tiny_model(tmp_path / "again", num_layers=4)
    assert (again / "model.safetensors").read_bytes() == (
        model_dir / "model.safetensors"
    ).read_bytes()
    assert (again / "tokenizer.json").read_bytes() == (model_dir / "tokenizer.json").read_bytes()


def test_other_seed_gives_other_weights(model_dir, tmp_path):
    other = write_tiny_model(tmp_path / "other", num_layers=4, seed=1)
    assert (other / "model.safetensors").read_bytes() != (
        model_dir / "model.safetensors"
    ).read_bytes()


@pytest.mark.parametrize("layers", [0, -1])
def test_no_layers_raises(tmp_path, layers):
    with pytest.raises(ValueError, match="num_layers"):
        write_tiny_model(tmp_path / "none", num_layers=layers)
    assert not (tmp_path / "none").exists()


def test_cli_writes_model(tmp_path):
    out = tmp_path / "cli-model"
    proc = subprocess.run(
        [sys.executable, "-m", "drift_sgl.tools.tiny_model", str(out), "--layers", "4"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(out) in proc.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 4
    assert (out / "model.safetensors").is_file()
    assert (out / "tokenizer.json").is_file()
