"""What the launcher decides from the model's config: multiplex, refuse, or leave to SGLang."""

import pytest
from sglang.srt.server_args import prepare_server_args

from drift_sgl.config import DriftConfigError
from drift_sgl.model_check import ModelFacts, check_servable, has_split_prefill, inspect_model
from model_dirs import fake_model_dir


@pytest.mark.parametrize(
    ("architecture", "expected"),
    [
        ("LlamaForCausalLM", True),
        ("MistralForCausalLM", True),  # inherits Llama's
        ("Qwen2ForCausalLM", True),
        ("Qwen3MoeForCausalLM", True),
        ("Gemma3ForCausalLM", True),
        ("MixtralForCausalLM", False),
        ("Qwen2VLForConditionalGeneration", False),
        ("LlamaForSequenceClassification", False),
        ("NoSuchArchitecture", None),  # unknown: the scheduler decides
    ],
)
def test_split_prefill_is_read_from_sglangs_sources(architecture, expected):
    assert has_split_prefill(architecture) is expected


@pytest.mark.parametrize(
    ("architecture", "generative", "multimodal"),
    [
        ("LlamaForCausalLM", True, False),
        ("LlavaLlamaForCausalLM", True, True),
        ("LlamaForSequenceClassification", False, False),
    ],
)
def test_inspect_model_reads_sglangs_model_config(tmp_path, architecture, generative, multimodal):
    model = fake_model_dir(tmp_path / "m", architecture)
    facts = inspect_model(prepare_server_args(["--model-path", str(model), "--device", "cpu"]))
    assert facts.architecture == architecture
    assert facts.generative is generative
    assert facts.multimodal is multimodal


def test_unreadable_model_names_the_flag(tmp_path):
    args = prepare_server_args(["--model-path", str(tmp_path / "missing"), "--device", "cpu"])
    with pytest.raises(DriftConfigError, match=r"^--model-path: SGLang cannot load the model"):
        inspect_model(args)


def facts(**overrides):
    base = dict(architecture="A", generative=True, multimodal=False, split_prefill=True)
    return ModelFacts(**{**base, **overrides})


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (facts(multimodal=True), "A is a multimodal model"),
        (facts(split_prefill=False), "A has no layer-split prefill"),
        (facts(ngram_embedding=True), "A uses n-gram embeddings"),
    ],
)
def test_refusals_name_the_architecture(model, message):
    with pytest.raises(DriftConfigError) as info:
        check_servable(model)
    assert info.value.flag == "--model-path"
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "model",
    [
        facts(),
        facts(split_prefill=None),  # unknown from the sources: the scheduler checks
        facts(generative=False, split_prefill=False),  # SGLang's own scheduler serves it
        facts(generative=False, multimodal=True),
    ],
)
def test_servable_models_pass(model):
    check_servable(model)
