"""The causal LM of a text sequence, loaded the way TRL's scripts load it, with one LoRA adapter.

Reads `model_args`: `model_name_or_path` (with `gguf_file`: transformers dequantizes a GGUF
checkpoint, which needs the `gguf` package), or `model_config` (a model built from a config, seeded
by the run's seed); `torch_dtype` and `attn_implementation` go to `from_pretrained`; the adapter
comes from a `peft:` block (`r`, `alpha`, `dropout`, `target_modules`, `modules_to_save`) or TRL's
`ModelConfig` fields (`use_peft`, `lora_r`, `lora_alpha`, `lora_dropout`, `lora_target_modules`).
`training_args.gradient_checkpointing` and `bf16` act through the Trainer as usual.

One adapter is trained across the whole sequence: Omega, theta* and the penalty then cover its
parameters only (the frozen base needs none), and the step directories hold the adapter
(`Trainer.save_model` of a `PeftModel`), so `load(path)` rebuilds the base and loads the adapter
from `path`, trainable. A new adapter per task is refused: the penalty protects the parameters that
keep training, and a task's own adapter would leave nothing to protect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

ADAPTER_CONFIG = "adapter_config.json"
# the `peft:` block's keys -> LoraConfig's
PEFT_KEYS = {
    "r": "r",
    "alpha": "lora_alpha",
    "lora_alpha": "lora_alpha",
    "dropout": "lora_dropout",
    "lora_dropout": "lora_dropout",
    "target_modules": "target_modules",
    "modules_to_save": "modules_to_save",
}
PER_TASK_KEYS = ("per_task", "adapter_per_task", "new_adapter_per_task")


def lora_kwargs(model_args: Any) -> dict[str, Any] | None:
    """LoraConfig's arguments from the `peft:` block or TRL's `use_peft` / `lora_*` fields (None:
    full fine-tuning). Raises ValueError, naming the key, on anything not supported."""
    block = getattr(model_args, "peft", None)
    if block is not None and not isinstance(block, dict):
        raise ValueError(f"peft: expected a mapping of LoRA fields, got {block!r}")
    if block and getattr(model_args, "use_peft", False):
        raise ValueError("Give the adapter once: a `peft:` block or TRL's use_peft / lora_* fields, not both")
    if not block:
        if not getattr(model_args, "use_peft", False):
            return None
        block = {
            "r": model_args.lora_r,
            "alpha": model_args.lora_alpha,
            "dropout": model_args.lora_dropout,
            "target_modules": model_args.lora_target_modules,
        }
    per_task = [k for k in PER_TASK_KEYS if block.get(k)]
    if per_task:
        raise ValueError(
            f"peft.{per_task[0]}: a new adapter per task is not supported. MAS protects the parameters that "
            "keep training: one adapter is trained across the whole sequence, with Omega over it"
        )
    unknown = sorted(set(block) - set(PEFT_KEYS) - set(PER_TASK_KEYS))
    if unknown:
        raise ValueError(f"peft: unknown keys {unknown}; known keys are {sorted(PEFT_KEYS)}")
    kwargs = {PEFT_KEYS[k]: v for k, v in block.items() if k in PEFT_KEYS and v is not None}
    kwargs.setdefault("target_modules", "all-linear")
    return {"task_type": "CAUSAL_LM", **kwargs}


def pretrained_kwargs(model_args: Any) -> dict[str, Any]:
    """`dtype` and `attn_implementation` for `from_pretrained` ("auto" dtype: the checkpoint's)."""
    kwargs: dict[str, Any] = {}
    dtype = getattr(model_args, "torch_dtype", None)
    if dtype is not None:
        kwargs["dtype"] = dtype if dtype == "auto" else getattr(torch, dtype)
    if getattr(model_args, "attn_implementation", None):
        kwargs["attn_implementation"] = model_args.attn_implementation
    return kwargs


def load_causal_lm(model_args: Any, training_args: Any, tokenizer: Any, path: str | None) -> nn.Module:
    """The model of a step: built or loaded (`path=None`), or reloaded from a step directory."""
    lora = lora_kwargs(model_args)
    if path is not None and lora is None:
        return _pretrained(path, model_args)
    base = _base(model_args, training_args, tokenizer)
    if lora is None:
        return base
    from peft import LoraConfig, PeftModel, get_peft_model

    if getattr(training_args, "gradient_checkpointing", False):
        base.enable_input_require_grads()  # the frozen embeddings must still hand gradients on
    if path is not None and (Path(path) / ADAPTER_CONFIG).is_file():
        return PeftModel.from_pretrained(base, path, is_trainable=True)
    if path is not None:
        raise ValueError(
            f"{path}: no {ADAPTER_CONFIG}; the run's earlier steps were trained without the adapter"
        )
    return get_peft_model(base, LoraConfig(**lora))


def pretrained_tokenizer(model_args: Any) -> Any:
    """The tokenizer of `tokenizer_name_or_path`, or of the model (its GGUF file too); None: neither."""
    from transformers import AutoTokenizer

    if model_args.tokenizer_name_or_path:
        return AutoTokenizer.from_pretrained(model_args.tokenizer_name_or_path)
    if model_args.model_name_or_path:
        gguf = getattr(model_args, "gguf_file", None)
        return AutoTokenizer.from_pretrained(
            model_args.model_name_or_path, **({"gguf_file": gguf} if gguf else {})
        )
    return None


def _base(model_args: Any, training_args: Any, tokenizer: Any) -> nn.Module:
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    if model_args.model_name_or_path:
        return _pretrained(model_args.model_name_or_path, model_args, getattr(model_args, "gguf_file", None))
    if not model_args.model_config:
        raise ValueError("Give model_name_or_path or model_config (a dict with model_type)")
    config = dict(model_args.model_config)
    config.setdefault("vocab_size", len(tokenizer))
    ids = {"bos_token_id": tokenizer.eos_token_id, "eos_token_id": tokenizer.eos_token_id}
    config.update(ids, pad_token_id=tokenizer.pad_token_id)  # as the Trainer would align them, noisily
    config = AutoConfig.for_model(**config)
    torch.manual_seed(training_args.seed)
    # The class itself, not `from_config`: under ZeRO-3 that initialises inside zero.Init, whose
    # partitioned random init differs from one process's (the engine partitions the model later).
    return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)](config)


def _pretrained(source: str, model_args: Any, gguf_file: str | None = None) -> nn.Module:
    from transformers import AutoModelForCausalLM

    extra = {"gguf_file": gguf_file} if gguf_file else {}
    model = AutoModelForCausalLM.from_pretrained(source, **pretrained_kwargs(model_args), **extra)
    if gguf_file:  # dequantized to plain weights: trained and saved as such (the Trainer and
        model.config.__dict__.pop("quantization_config", None)  # save_pretrained refuse a model still
        model.is_quantized, model.hf_quantizer = False, None  # marked GGUF-quantized)
    return model
