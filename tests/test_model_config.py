"""`model_config` keys are checked against the model's config class before any data work (issue 13,
case 3): a typo used to build the default model silently (`n_layers: 4` gave 12 layers)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from masllm.tasks.text.kind import causal_lm_sequence, check_model_config
from masllm.tasks.vision.kind import check_backbone_config, vision_sequence


def test_a_misspelt_key_is_refused_with_a_suggestion():
    with pytest.raises(
        ValueError, match=r"\['n_layers'\] not a field of GPT2Config .*did you mean 'n_layer'"
    ):
        check_model_config({"model_type": "gpt2", "n_layers": 4})
    with pytest.raises(ValueError, match="unknown model_type 'gtp2' \\(did you mean 'gpt2'"):
        check_model_config({"model_type": "gtp2"})
    with pytest.raises(ValueError, match="with a model_type"):
        check_model_config({"n_layer": 2})


def test_valid_keys_pass():
    check_model_config(
        {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "num_attention_heads": 2, "dtype": "float32"}
    )
    check_model_config({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "rope_theta": 1e4})


def test_checked_before_the_domains_are_read(tmp_path):
    args = (
        SimpleNamespace(model_name_or_path=None, model_config={"model_type": "gpt2", "n_layers": 4},
                        tokenizer_name_or_path=None, vocab_size=64),
        SimpleNamespace(domains=[{"name": "a", "source": str(tmp_path / "does-not-exist.txt")}], cache_dir=str(tmp_path),
                        block_size=8, document_seed=0, tokenizer_chars_per_domain=100),
        None,
    )  # fmt: skip
    with pytest.raises(ValueError, match="n_layers"):
        causal_lm_sequence(*args)


@pytest.mark.parametrize(
    "config,message",
    [
        (
            {"backbone": "mlp", "hidden_size": [4]},
            "not an argument of the mlp backbone .*did you mean 'hidden_sizes'",
        ),
        ({"backbone": "vit", "hidden_sizes": 16}, "not a field of ViTConfig .*did you mean 'hidden_size'"),
        ({"backbone": "resnett"}, "unknown backbone 'resnett' \\(did you mean 'resnet'"),
    ],
)
def test_vision_backbone_keys(config, message):
    rest = {k: v for k, v in config.items() if k != "backbone"}
    with pytest.raises(ValueError, match=message):
        check_backbone_config(config["backbone"], rest)
    model_args = SimpleNamespace(model_config=config, model_name_or_path=None)
    with pytest.raises(ValueError, match=message.split(" ")[0]):
        vision_sequence(model_args, SimpleNamespace(domains=[{"name": "t", "source": "/nonexistent"}]), None)


def test_vision_valid_keys_pass():
    check_backbone_config("resnet", {"image_size": 224, "embedding_size": 8})
    check_backbone_config("mlp", {"in_features": 784, "hidden_sizes": [400, 400]})
