"""The arguments of a continual run: dataclasses for `HfArgumentParser`, a YAML file as defaults.

`--config FILE` gives defaults for every argument (`ModelArguments`, `DataArguments`,
`ContinualArguments` and transformers' `TrainingArguments`); command-line flags override it.
`ContinualArguments` carries every MASConfig field and the method options (EWC, SI, LwF), and turns
`--method` / `--compare finetune,mas,l2=0.01` into one `RunConfig` per run.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import HfArgumentParser, TrainingArguments

from ..config import MASConfig, check_types
from ..distributed.fsdp import requested_fsdp_version
from ..importance import EWCConfig
from ..methods import LwFConfig, LwFTrainer, SIConfig
from ..registry import ESTIMATOR_CONFIGS, did_you_mean
from ..tasks import TASK_KINDS
from ..tasks.text.model import lora_kwargs
from .methods import FINETUNE, Method, method_of


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Hub name or local path of a pretrained model."}
    )
    model_config: dict | str | None = field(
        default=None,
        metadata={
            "help": "Build the model from this config instead (a dict with model_type; JSON on the CLI)."
        },
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Tokenizer to use; default: the model's, or one trained on the domains."},
    )
    vocab_size: int = field(
        default=4096, metadata={"help": "Vocabulary of the locally trained BPE tokenizer."}
    )
    gguf_file: str | None = field(
        default=None,
        metadata={"help": "A GGUF file in model_name_or_path: transformers dequantizes it (needs `gguf`)."},
    )
    torch_dtype: str | None = field(
        default=None,
        metadata={
            "help": "dtype of the loaded weights: auto, bfloat16, float16 or float32 (from_pretrained)."
        },
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={"help": "Attention kernel: eager, sdpa, flash_attention_2, ... (from_pretrained)."},
    )
    peft: dict | str | None = field(
        default=None,
        metadata={
            "help": "One LoRA adapter trained across the whole sequence, Omega over it: {r, alpha, dropout, "
            "target_modules, modules_to_save} (JSON on the CLI)."
        },
    )
    use_peft: bool = field(
        default=False, metadata={"help": "TRL's ModelConfig form of `peft`: train a LoRA adapter."}
    )
    lora_r: int = field(default=16, metadata={"help": "With use_peft: LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "With use_peft: LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "With use_peft: LoRA dropout."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "With use_peft: the modules to adapt (default: all linear layers)."}
    )


@dataclass
class DataArguments:
    kind: str = field(default="causal_lm", metadata={"help": "Task kind, a key of masllm.tasks.TASK_KINDS."})
    domains: list | str | None = field(
        default=None,
        metadata={"help": "Ordered list of domains (the kind's task config fields; JSON on the CLI)."},
    )
    block_size: int = field(
        default=128,
        metadata={"help": "Tokens per packed training block (chat kind: the longest conversation)."},
    )
    packing: bool = field(
        default=False,
        metadata={"help": "Chat kind: several conversations per row, padding-free (TRL's BFD packing)."},
    )
    cache_dir: str | None = field(
        default=None,
        metadata={"help": "Cache of tokenizer and packed domains (default: <output_dir>/cache)."},
    )
    document_seed: int = field(default=0, metadata={"help": "Seed of the document shuffle before packing."})
    tokenizer_chars_per_domain: int = field(
        default=1_000_000, metadata={"help": "Characters of each domain the local tokenizer is trained on."}
    )


@dataclass
class RunConfig:
    """One run of the comparison: its method's wiring and configs, and the strength it reports."""

    name: str
    method: str
    wiring: Method
    mas: MASConfig | None  # None: no Omega (finetune, LwF)
    trainer_kwargs: dict[str, Any]
    strength: float | None  # the value of wiring.strength (lambda, or LwF's lambda_o)


@dataclass
class ContinualArguments(LwFConfig, SIConfig, EWCConfig):
    """MASConfig's fields and the method options (every one a flag), the method(s), the report."""

    method: str = field(
        default="mas",
        metadata={
            "help": "'finetune' (no penalty), an importance estimator of masllm.ESTIMATORS "
            "(mas, l2, ewc, online_ewc, lmas, mas_vector, spp, si), 'lwf', 'mean_imm' or 'mode_imm'."
        },
    )
    compare: str | None = field(
        default=None,
        metadata={"help": "Comma-separated methods run on the same sequence, e.g. 'finetune,mas,l2=0.01'."},
    )
    plots: bool = field(default=True, metadata={"help": "Write PNG plots beside report.json."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Delete the results already in output_dir and start afresh (needed to rerun there with "
            "another configuration than its run_manifest.json records; the same one resumes)."
        },
    )

    def __post_init__(self) -> None:
        MASConfig.__post_init__(self)

    def validate(self) -> None:
        """Each run must name a known method (--method too, even when --compare overrides it), and
        its configs must be valid."""
        check_types(self)
        method_of(self.method)
        for method, strength in self.runs():
            self.run_config(method, strength)

    def runs(self) -> list[tuple[str, float | None]]:
        """(method, strength or None for the default) of each run, in order."""
        specs = self.compare.split(",") if self.compare else [self.method]
        out = []
        for spec in (s.strip() for s in specs):
            method, _, value = spec.partition("=")
            method_of(method)  # raises on an unknown name
            try:
                out.append((method, float(value) if value else None))
            except ValueError:
                raise ValueError(
                    f"compare entry {spec!r}: the part after '=' must be a number (the strength)"
                ) from None
        if len({self.run_name(m, v) for m, v in out}) != len(out):
            raise ValueError(f"compare lists a run twice: {self.compare!r}")
        return out

    def run_config(self, method: str, strength: float | None) -> RunConfig:
        """The configs of one run: its estimator's MASConfig (None without Omega), LwF's config."""
        wiring = method_of(method)
        given = {wiring.strength: strength} if strength is not None else {}
        lwf_values = {f.name: getattr(self, f.name) for f in fields(LwFConfig)}
        lwf = LwFConfig(**{**lwf_values, **(given if wiring.strength in lwf_values else {})})
        mas = None
        if method != FINETUNE and wiring.estimator is not None:
            mas = self._mas_config(wiring, method, {} if wiring.strength in lwf_values else given)
        target = lwf if wiring.strength in lwf_values else mas
        kwargs = {"lwf_config": lwf} if issubclass(wiring.trainer_class, LwFTrainer) else {}
        value = getattr(target, wiring.strength) if target is not None else None
        return RunConfig(self.run_name(method, strength), method, wiring, mas, kwargs, value)

    def _mas_config(self, wiring: Method, method: str, given: dict[str, Any]) -> MASConfig:
        cls = ESTIMATOR_CONFIGS.get(wiring.estimator, MASConfig)
        values = {f.name: getattr(self, f.name) for f in fields(cls)}
        values["method"] = wiring.estimator
        defaults = MASConfig()
        for name, required in wiring.fixed.items():
            if values[name] not in (required, getattr(defaults, name)):
                raise ValueError(
                    f"Method {method!r} needs {name}={required!r} (set by the recipe); "
                    f"--{name} {values[name]!r} conflicts with it"
                )
            values[name] = required
        return cls(**{**values, **given})

    def check_backend(self, zero_stage: int | None, fsdp_version: int | None = None) -> None:
        """Before any training: every run's method must run under the DeepSpeed ZeRO stage and the
        FSDP version of the launch (None: not used)."""
        if fsdp_version is not None and fsdp_version != 2:
            raise ValueError(
                f"FSDP version {fsdp_version}: masllm runs under FSDP2 (accelerate `fsdp_version: 2`), "
                "whose parameters are DTensor shards; FSDP1's flat parameters are not supported"
            )
        for method, _ in self.runs():
            wiring = method_of(method)
            if zero_stage is not None and zero_stage not in wiring.zero_stages:
                raise ValueError(
                    f"Method {method!r} does not run under DeepSpeed ZeRO-{zero_stage}: {wiring.zero_note}. "
                    f"ZeRO stages it runs under: {list(wiring.zero_stages) or 'none'} (DDP and one process: all)."
                )
            if fsdp_version is not None and not wiring.fsdp2:
                raise ValueError(
                    f"Method {method!r} does not run under FSDP2: {wiring.fsdp2_note}. "
                    "It runs under DDP and one process."
                )

    @staticmethod
    def run_name(method: str, strength: float | None) -> str:
        return method if strength is None else f"{method}-lambda{strength:g}"


def make_parser() -> HfArgumentParser:
    return HfArgumentParser((ModelArguments, DataArguments, ContinualArguments, TrainingArguments))


def parse_args(argv: list[str] | None = None) -> tuple[Any, ...]:
    """`--config FILE` sets the defaults (every key must be a known argument); flags override them."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(argv)
    parser = make_parser()
    defaults: dict[str, Any] = {}
    if known.config:
        defaults = yaml.safe_load(Path(known.config).read_text()) or {}
        valid = sorted(a.dest for a in parser._actions)
        unknown = sorted(set(defaults) - set(valid))
        if unknown:
            hint = did_you_mean(unknown[0], valid)
            raise ValueError(f"{known.config}: unknown keys {unknown}{hint}")
    if not torch.cuda.is_available() and "--use_cpu" not in rest:
        # without it each CPU rank would silently train alone (accelerate's `use_cpu` does not reach them)
        defaults.setdefault("use_cpu", True)
    if _given(rest, "--method") and not _given(rest, "--compare"):
        defaults.pop("compare", None)  # a --method flag overrides the file's compare too
    parser.set_defaults(**defaults)
    model_args, data_args, cl_args, training_args = parser.parse_args_into_dataclasses(args=rest)
    model_args.model_config = _structured(model_args.model_config)
    model_args.peft = _structured(model_args.peft)
    lora_kwargs(model_args)  # an unsupported adapter setting fails here, before any training
    data_args.domains = _structured(data_args.domains)
    if not data_args.domains:
        raise ValueError("No domains: give `domains:` in the YAML file or --domains '[...]'")
    if data_args.kind not in TASK_KINDS:
        raise ValueError(
            f"Unknown kind {data_args.kind!r}{did_you_mean(data_args.kind, list(TASK_KINDS))}; "
            f"known kinds are {sorted(TASK_KINDS)}"
        )
    data_args.cache_dir = data_args.cache_dir or str(Path(training_args.output_dir) / "cache")
    plugin = training_args.deepspeed_plugin
    cl_args.check_backend(
        zero_stage=int(plugin.zero_stage) if plugin is not None else None,
        fsdp_version=requested_fsdp_version(training_args.fsdp_plugin_args),
    )
    return model_args, data_args, cl_args, training_args


def _given(argv: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def _structured(value: Any) -> Any:
    """A YAML/JSON string from the command line, or the already-structured value from the YAML file."""
    return yaml.safe_load(value) if isinstance(value, str) else value
