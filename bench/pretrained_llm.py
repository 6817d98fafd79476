"""Benchmark: a pretrained LLM (Gemma-3-270M) learns three new domains; does MAS keep what it knew?

Usage (the CPU run of bench/results/pretrained_llm/README.md):
    python bench/pretrained_llm.py --out bench/results/pretrained_llm \
        --methods finetune,l2,ewc,mas,mas_hidden --strengths l2=A:B:C,ewc=...,mas=...,mas_hidden=...

The model (--model: default the cached Gemma-3-270M of bench/gemma.py; any path or hub name)
learns the domains of recipes/configs/pretrained_llm.yaml in turn (Python source -> license texts
-> Debian man pages) with one LoRA adapter (--lora, the config's `peft:` block) or all weights
(--full). Task 0 is the pretrained model itself: its Omega comes from unlabeled general text
(Pride and Prejudice and Shakespeare, never trained on; MAS Sec. 4.4 uses test-time data),
computed once per estimator and cached (<out>/cache), shared by every run and strength.

Methods come from the library's method table (masllm.continual.methods, the recipe's --compare
names) through `ContinualArguments.run_config`; `mas_hidden` is `mas` with F = the last hidden
states (MASConfig.output). Training is the library's MASTrainer (or the method's trainer: LwF),
Omega is `compute_importance`, merged by the method's rule. After each domain the bench measures
test perplexity on that domain; at the end test and validation perplexity on every domain and on
general text. Each run is written to <out>/runs/<name>.json as soon as it ends (a rerun with the
same settings, recorded in <out>/run_manifest.json, skips finished runs; one with others is refused); then the front (bench/pretrained_front.py), lambda chosen per method on validation
data only (masllm.continual.selection), front.md, front.json and front.png.

The wider sweep is the same command with other flags, e.g. on a GPU:
    python bench/pretrained_llm.py --methods finetune,l2,ewc,online_ewc,si,lmas,spp,lwf,mas,mas_hidden \
        --strengths ... --full --bf16 --batch 8 --seq 512 --steps 500 --eval_blocks 64
(tokens/s of every run is in its record: finetune's vs mas's is the cost of MAS).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import yaml

# this checkout's masllm and the bench's own modules, whatever is installed
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from pretrained_data import as_dataset, build_data, general_documents  # noqa: E402,F401
from pretrained_front import front, plot, select, table  # noqa: E402

from masllm import Omega, compute_importance  # noqa: E402
from masllm.continual.arguments import ContinualArguments, RunConfig  # noqa: E402
from masllm.continual.manifest import check_output_dir, prepare_output_dir  # noqa: E402
from masllm.omega.io import atomic_write_text  # noqa: E402
from masllm.tasks.text.kind import causal_lm_collator, token_statistics  # noqa: E402
from masllm.tasks.text.model import load_causal_lm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "configs" / "pretrained_llm.yaml"
TEXT = Path(os.environ.get("MASLLM_TEXT_DATA", ROOT.parent / "shared" / "data" / "text"))
ALIASES = {"mas_hidden": ("mas", {"output": "hidden_states"})}  # bench name -> (method, MASConfig fields)


def run_configs(methods: str, strengths: str) -> list[RunConfig]:
    """The runs: each method at each of its strengths (`l2=0.1:1,mas=...`; none given: its default)."""
    grid = {}
    for spec in filter(None, (s.strip() for s in strengths.split(","))):
        name, _, values = spec.partition("=")
        grid[name] = [float(v) for v in values.split(":")]
    runs = []
    for name in filter(None, (m.strip() for m in methods.split(","))):
        method, fields = ALIASES.get(name, (name, {}))
        for s in grid.get(name, [None]) if method != "finetune" else [None]:
            run = ContinualArguments(method=method).run_config(method, s)
            if run.wiring.imm:
                raise ValueError(f"{name}: IMM methods merge saved task models; run them with the recipe")
            for k, v in fields.items():
                setattr(run.mas, k, v)
            run.name = name if s is None else f"{name}-lambda{s:g}"
            run.method = name
            runs.append(run)
    # the middle strengths first, then the weaker, then the stronger: a cut-off run still has every method
    index = [sum(q.method == r.method for q in runs[:i]) for i, r in enumerate(runs)]  # within its method
    key = [-2 if r.strength is None else {0: 0, 1: -1, 2: 1}.get(j, j) for r, j in zip(runs, index)]
    return [runs[i] for i in sorted(range(len(runs)), key=lambda i: (key[i], i))]


def load_model(model: str, peft: dict | None, seed: int) -> tuple[Any, Any]:
    """Tokenizer and causal LM through the recipe's loader (the `peft:` block's one adapter, or full)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    margs = SimpleNamespace(
        model_name_or_path=model, gguf_file=None, torch_dtype=None, attn_implementation=None,
        peft=peft, use_peft=False, model_config=None,
    )  # fmt: skip
    torch.manual_seed(seed)  # the adapter's initialisation: the same in every run
    lm = load_causal_lm(margs, SimpleNamespace(gradient_checkpointing=False, seed=seed), tokenizer, None)
    return tokenizer, lm


@torch.no_grad()
def perplexity(model: Any, blocks: torch.Tensor, batch: int) -> float:
    """exp(mean next-token NLL) over the blocks (the recipe's token statistics)."""
    model.eval()
    stats = sum(
        token_statistics(
            model(input_ids=blocks[i : i + batch], use_cache=False).logits, blocks[i : i + batch]
        )
        .double()
        .sum(0)
        for i in range(0, len(blocks), batch)
    )
    return math.exp(float(stats[0] / stats[2]))


def train_domain(model: Any, run: RunConfig, omega: Omega | None, blocks: torch.Tensor, a: Any) -> Any:
    """One domain with the method's trainer: L_k + lambda sum Omega (theta - theta*)^2 (Eq. 3)."""
    from transformers import TrainingArguments

    targs = TrainingArguments(
        output_dir=str(Path(a.out) / "cache" / "trainer"), max_steps=a.steps, per_device_train_batch_size=a.batch,
        learning_rate=a.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, save_strategy="no",
        report_to="none", disable_tqdm=True, logging_steps=10**6, use_cpu=not torch.cuda.is_available(),
        seed=a.seed, remove_unused_columns=False, dataloader_num_workers=0, bf16=a.bf16,
    )  # fmt: skip
    trainer = run.wiring.trainer_class(
        model=model,
        args=targs,
        train_dataset=as_dataset(blocks),
        data_collator=causal_lm_collator,
        callbacks=run.wiring.callbacks(run.mas) if run.mas else [],
        mas_config=run.mas,
        omega=omega,
        **run.trainer_kwargs,
    )
    trainer.train()
    return trainer


def task0_omega(model: Any, run: RunConfig, blocks: torch.Tensor, a: Any) -> Omega | None:
    """Omega of the pretrained model on unlabeled general text, cached per estimator configuration."""
    if run.mas is None or run.wiring.records_training:  # SI records importance while training: none here
        return None if run.mas is None else Omega(config=run.mas)
    omega = Omega(config=run.mas)
    spec = {**run.mas.to_dict(), "reg_lambda": None, "model": a.model, "lora": not a.full, "n": len(blocks)}
    spec |= {"seq": a.seq, "seed": a.seed, "ids": hashlib.sha256(blocks.numpy().tobytes()).hexdigest()}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    directory = Path(a.out) / "cache" / f"omega0-{run.mas.method}-{run.mas.output}-{key}"
    if (directory / "mas_config.json").is_file():
        return omega.merge(Omega.from_pretrained(directory, model=model))
    new = compute_importance(
        model,
        as_dataset(blocks),
        run.mas,
        task_name="general",
        collate_fn=causal_lm_collator,
        show_progress=False,
    )
    new.save_pretrained(directory, model=model)
    return omega.merge(new)


def run_one(run: RunConfig, model: Any, init: dict, data: dict, domains: list[str], a: Any) -> dict:
    """The whole sequence for one run, from the pretrained weights; its record (test/validation ppl)."""
    params = dict(model.named_parameters())
    with torch.no_grad():  # back to the pretrained model (and the adapter's one initialisation)
        for n, t in init.items():
            params[n].copy_(t)
    start = time.perf_counter()
    omega = task0_omega(model, run, data["general"]["importance"], a)
    record: dict[str, Any] = {"name": run.name, "method": run.method, "strength": run.strength, "test": {}}
    record["seconds_task0_importance"] = time.perf_counter() - start
    train_s = 0.0
    for k, d in enumerate(domains):
        t0 = time.perf_counter()
        trainer = train_domain(model, run, omega, data[d]["train"][: a.steps * a.batch], a)
        train_s += time.perf_counter() - t0
        if run.mas is not None and k < len(domains) - 1:  # Omega_k (Eq. 2) merged (Sec. 4.2); theta* <- theta
            trainer.omega.merge(
                compute_importance(
                    model, as_dataset(data[d]["train"][: a.importance_blocks]), run.mas,
                    task_name=d, collate_fn=causal_lm_collator, show_progress=False,
                )
            )  # fmt: skip
            omega = trainer.omega
        seen = [d] if k < len(domains) - 1 else ["general", *domains]  # just learnt; at the end: all
        record["test"][f"after_{d}"] = {t: perplexity(model, data[t]["test"], a.eval_batch) for t in seen}
        print(f"[{run.name}] after {d}: test ppl {record['test'][f'after_{d}']}", flush=True)
    record["validation"] = {
        t: perplexity(model, data[t]["validation"], a.eval_batch) for t in ["general", *domains]
    }
    record["seconds"] = time.perf_counter() - start
    record["trainable_parameters"] = sum(t.numel() for t in init.values())
    record["train_tokens_per_s"] = len(domains) * a.steps * a.batch * a.seq / train_s
    return record


def print_plan(runs: list[RunConfig], k: int, f: float, a: Any) -> None:
    """The plan's estimated time from the measured forward time f of one block: a training step ~1.5
    forward per sequence, an importance sample ~3 (l2: none)."""
    evals = 3 * k + 1  # test: the domain just learnt; at the end every test and validation set
    per = {r.name: 3 * a.steps * 1.5 * a.batch * f + evals * a.eval_blocks * f for r in runs}
    for r in runs:
        if r.mas is not None and r.mas.method != "l2":
            per[r.name] += (k - 1) * a.importance_blocks * 3 * f
    task0 = len({(r.mas.method, r.mas.output) for r in runs if r.mas is not None and r.mas.method != "l2"})
    total = sum(per.values()) + task0 * a.general_importance_blocks * 3 * f
    print(f"plan: {len(runs)} runs, {f:.2f} s per block forward -> about {total / 60:.0f} min", flush=True)


def summarise(out: Path, domains: list[str], names: list[str]) -> str:
    """front.md / front.json / front.png from the finished run records (also after a cut-off run)."""
    pretrained = json.loads((out / "pretrained.json").read_text())
    records = [json.loads(p.read_text()) for n in names if (p := out / "runs" / f"{n}.json").is_file()]
    tasks = ["general", *domains]
    chosen, chosen_nll = select(records, tasks), select(records, tasks, log=True)
    rows = front(records, pretrained, domains)
    text = (
        table(rows, chosen, domains) + "\nlambda chosen on validation (mean final validation ppl, Eq. 6):\n"
    )
    text += "".join(f"- {m}: {s.chosen:g} ({s.table()})\n" for m, s in chosen.items())
    text += "\nthe same rule on mean validation NLL (log ppl) instead, as a check:\n"
    text += "".join(f"- {m}: {s.chosen:g}\n" for m, s in chosen_nll.items())
    text += "\npretrained model: " + ", ".join(f"{k} {v:.3f}" for k, v in pretrained.items()) + "\n"
    atomic_write_text(out / "front.md", text)
    atomic_write_text(
        out / "front.json", json.dumps({"rows": rows, "pretrained": pretrained}, indent=1) + "\n"
    )
    if rows:
        plot(rows, chosen, out / "front.png")
    return text


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(CONFIG), help="The recipe config whose domains / peft are used.")
    p.add_argument("--model", default=None, help="Path or hub name (default: the cached Gemma-3-270M).")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--lora", dest="full", action="store_false", help="One LoRA adapter (default).")
    mode.add_argument("--full", dest="full", action="store_true", help="Full fine-tuning.")
    p.set_defaults(full=False)  # both flags share the dest: without this the first one's default (True) wins
    p.add_argument("--methods", default="finetune,l2,ewc,mas,mas_hidden")
    p.add_argument("--strengths", default="", help="Per method, colon-separated: l2=0.1:1:10,mas=...")
    p.add_argument("--steps", type=int, default=8, help="Optimizer steps per domain.")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--lr", type=float, default=None, help="Default: the config's learning_rate.")
    p.add_argument("--eval_blocks", type=int, default=4, help="Blocks per validation / test set.")
    p.add_argument("--eval_batch", type=int, default=4)
    p.add_argument("--importance_blocks", type=int, default=4, help="Omega samples per domain.")
    p.add_argument("--general_importance_blocks", type=int, default=8, help="Omega samples of task 0.")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results/pretrained_llm")
    a = p.parse_args(argv)
    config = yaml.safe_load(Path(a.config).read_text())
    if a.model is None:
        from gemma import gemma_dir

        a.model = str(gemma_dir())
    a.lr = a.lr if a.lr is not None else float(config["learning_rate"])
    out = Path(a.out)
    # what shapes the results, recorded as the recipe does (run_manifest.json): finished runs are
    # reused only under the same settings, a rerun with others is refused before any work
    settings = {"bench": {k: v for k, v in vars(a).items() if k not in ("methods", "strengths", "out")}}
    settings["config"] = config
    prepare_output_dir(out, settings, [], check_output_dir(out, settings, [], overwrite=False))
    (out / "runs").mkdir(parents=True, exist_ok=True)
    runs = run_configs(a.methods, a.strengths)
    domains = [d["name"] for d in config["domains"]]
    t0 = time.perf_counter()
    tokenizer, model = load_model(a.model, None if a.full else config["peft"], a.seed)
    init = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    sizes = {"eval_blocks": a.eval_blocks, "train_blocks": a.steps * a.batch}
    sizes |= {
        "importance_blocks": a.importance_blocks,
        "general_importance_blocks": a.general_importance_blocks,
    }
    data = build_data(config["domains"], TEXT, tokenizer, a.seq, sizes, a.seed)
    print(f"model and data in {time.perf_counter() - t0:.0f} s; {len(runs)} runs: {[r.name for r in runs]}")
    t1 = time.perf_counter()
    if not (out / "pretrained.json").is_file():
        ppl = {
            f"{s}:{t}": perplexity(model, data[t][s], a.eval_batch)
            for t in data
            for s in ("validation", "test")
        }
        atomic_write_text(out / "pretrained.json", json.dumps(ppl, indent=1) + "\n")
    else:
        perplexity(model, data["general"]["test"], a.eval_batch)
    print_plan(runs, len(domains), (time.perf_counter() - t1) / (len(data) * 2 * a.eval_blocks), a)
    for run in runs:
        path = out / "runs" / f"{run.name}.json"
        if path.is_file():
            continue
        record = run_one(run, model, init, data, domains, a)
        atomic_write_text(path, json.dumps(record, indent=1) + "\n")
        print(f"[{run.name}] done in {record['seconds']:.0f} s", flush=True)
        summarise(out, domains, [r.name for r in runs])
    text = summarise(out, domains, [r.name for r in runs])
    print(text)
    return text


if __name__ == "__main__":
    main()
