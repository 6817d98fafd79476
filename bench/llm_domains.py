"""Benchmark: forgetting across four text domains, fine-tuning vs L2 vs MAS, in one run.

Usage:
    python bench/llm_domains.py [--output_dir DIR] [--methods finetune,l2=LAMBDA,mas=LAMBDA,...]
                                [--steps N] [--first_steps N] [recipe flags ...]

The recipe's procedure (recipes/sequential.py) at a larger size than the demo: a GPT-2 built from
config (3 layers, hidden 128, a 2048-token BPE tokenizer trained here) learns Shakespeare
(tinyshakespeare), then Jane Austen (Pride and Prejudice, ../shared/data/text), then Python's
standard library source code, then the license texts of the installed packages. It prints the
perplexity matrix R[i][j] and the forgetting of every method, then checks the issue's target:
MAS cuts forgetting (mean perplexity increase on earlier domains) by >= 50% vs fine-tuning while
its perplexity on each new domain stays within 5% of fine-tuning's.

With `--validation 0.05` every domain holds out 5% of its blocks (never trained on, never in
Omega's data) and each method's lambda is chosen on them by masllm.continual.selection's rule
(lowest mean final validation NLL). Measured (2-core CPU, one thread; 674 s wall for the first 7
runs, 181 s for two more, finished runs reused):

    python bench/llm_domains.py --validation 0.05 --methods finetune,l2=0.0005,l2=0.002,l2=0.01,\
        l2=0.03,mas=0.00225,mas=0.01,mas=0.03,mas=0.1

    method        val NLL  forgetting  cut vs finetune  new-domain ppl vs finetune (austen, python, licenses; mean)
    finetune       5.604     369.9        -             -
    l2 0.0005      5.336     239.3       35%            +2%  -3%  +0%     mean -0.2%
    l2 0.002 *     5.242     169.1       54%            +5%  +8%  +42%    mean +18%
    l2 0.01        5.312     103.3       72%            +24% +47% +314%   mean +128%
    l2 0.03        5.493      80.3       78%            +50% +115% +781%  mean +315%
    mas 0.00225    5.218     176.0       52%            +2%  +1%  +17%    mean +6.6%
    mas 0.01       5.120     113.1       69%            +8%  +17% +63%    mean +29%
    mas 0.03 *     5.093      69.8       81%            +19% +42% +162%   mean +74%
    mas 0.1        5.128      38.0       90%            +38% +95% +344%   mean +159%

(* = chosen on validation; the other columns are test numbers.) The rule picks MAS 0.03 and L2
0.002, both inside their grids; MAS's best validation NLL (5.093) beats L2's (5.242), and at equal
forgetting cut MAS costs less (52% at +6.6% vs L2's 54% at +18%). The rule weighs forgetting more
than the issue's old target (>= 50% cut at <= +5% cost, which no run meets here: the 5% held out
shortens training): it accepts +74% on the new domains for 81% less forgetting. The first table of
this benchmark (lambda picked on the test sequence itself: MAS 0.00225, 52% at +4.6%) is superseded.

lambda differs per method because Omega's scale does: MAS's Omega (F = the last hidden states,
as in the demo) averages |d ||F||^2 / d theta| over samples, summed over tokens; L2's is 1 everywhere. Any estimator of
masllm.ESTIMATORS can be added to --methods (with its own `=lambda`).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import yaml

from masllm.continual import main as sequential
from masllm.continual import select_from_report

ROOT = Path(__file__).resolve().parents[1]
TEXT = Path(os.environ.get("MASLLM_TEXT_DATA", ROOT.parent / "shared" / "data" / "text"))
DEFAULT_METHODS = "finetune,l2=0.002,mas=0.03"  # the strengths chosen on validation (above)


def bench_config(
    output_dir: str, methods: str, steps: int, first_steps: int, validation: float = 0.0
) -> dict:
    """The recipe's YAML content for this benchmark (`validation`: the fraction of each domain's
    blocks held out for the lambda rule, up to 64 blocks)."""
    limits = {"max_eval_blocks": 64, "max_importance_blocks": 128}
    if validation:
        limits |= {"validation": validation, "max_validation_blocks": 64}
    return {
        "output_dir": output_dir,
        "model_config": {"model_type": "gpt2", "n_embd": 128, "n_layer": 3, "n_head": 4, "n_positions": 128},
        "vocab_size": 2048,
        "tokenizer_chars_per_domain": 500_000,
        "block_size": 128,
        "domains": [
            {
                "name": "shakespeare",
                "source": str(TEXT / "tinyshakespeare.txt"),
                **limits,
                "training": {"max_steps": first_steps},
            },
            {"name": "austen", "source": str(TEXT / "pg1342-pride-and-prejudice.txt"), **limits},
            {"name": "python", "source": "builtin:python_stdlib", "max_chars": 2_000_000, **limits},
            {"name": "licenses", "source": "builtin:package_licenses", **limits},
        ],  # fmt: skip
        "compare": methods,
        "output": "hidden_states",  # as in the demo: see recipes/configs/demo.yaml
        "max_steps": steps,
        "per_device_train_batch_size": 16,
        "per_device_eval_batch_size": 32,
        "learning_rate": 0.002,
        "lr_scheduler_type": "constant_with_warmup",
        "warmup_steps": 10,
        "weight_decay": 0.0,
        "save_strategy": "steps",
        "save_steps": 100,
        "save_total_limit": 1,
        "logging_steps": 50,
        "report_to": "none",
        "disable_tqdm": True,
        "seed": 0,
    }


def check_target(report: dict) -> list[str]:
    """One line per compared method: forgetting cut (target >= 50%) and the mean new-domain cost (<= 5%)."""
    lines = []
    for name, c in report.get("comparison", {}).items():
        cut, cost = c["forgetting_reduction"], c["new_task_relative_change"]
        ok = cut is not None and cut >= 0.5 and cost is not None and cost <= 0.05
        lines.append(
            f"{name}: forgetting cut {cut:.1%} (target >= 50%), new-domain perplexity {cost:+.1%} vs "
            f"finetune, mean over new domains (target <= +5%) -> {'TARGET MET' if ok else 'target not met'}"
            if cut is not None and cost is not None
            else f"{name}: no forgetting to compare against"
        )
    return lines


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default=str(Path(tempfile.gettempdir()) / "masllm-bench-llm-domains"))
    parser.add_argument("--methods", default=DEFAULT_METHODS)
    parser.add_argument("--steps", type=int, default=60, help="Training steps per later domain.")
    parser.add_argument("--first_steps", type=int, default=300, help="Training steps on the first domain.")
    parser.add_argument(
        "--validation",
        type=float,
        default=0.0,
        help="Hold out this fraction of each domain for validation and choose each method's lambda on it.",
    )
    args, recipe_flags = parser.parse_known_args(argv)
    config = bench_config(args.output_dir, args.methods, args.steps, args.first_steps, args.validation)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    config_path = Path(args.output_dir) / "bench_config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    start = time.perf_counter()
    report = sequential(["--config", str(config_path), *recipe_flags])
    print(f"\nwall time {time.perf_counter() - start:.0f} s; methods {args.methods}")
    print("\n".join(check_target(report)))
    if args.validation:
        for method, sel in select_from_report(report).items():
            print(f"{method}: lambda {sel.chosen:g} chosen on validation ({sel.table()})")
    return report


if __name__ == "__main__":
    main()
