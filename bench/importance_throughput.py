"""Cost of the Omega pass (Eq. 2) against a plain forward+backward and against the peers, side by side.

Usage:
    OMP_NUM_THREADS=1 python bench/importance_throughput.py [--models mlp,gpt2-5m,gpt2-23m,llama,vit,gemma]
        [--rounds 3] [--device cpu|cuda]

For each model, on the same unlabeled batches, seconds per importance pass (median of interleaved
rounds; the ratio is the median over rounds of its time over the plain pass's in the same round) and
the peak tensor memory each variant allocates (`torch.cuda.max_memory_allocated` on a GPU, the same
high-water mark from the profiler's allocation records on CPU):
- forward+backward: a plain pass of sum ||F||^2, no hooks (the floor);
- masllm per_batch: |.| per micro-batch (an approximation: samples cancel);
- masllm exact: |.| per sample in one backward pass (the default);
- naive loop: one sample per backward pass, |.| after each (exact, unbatched);
- torch.func: vmap(grad) over samples, then sum |.| (materialises B x P per-sample gradients);
- Opacus: GradSampleModule's per-sample gradients, then sum |.| (when opacus is installed);
- Avalanche's definition: |.| of the gradient of the batch mean of ||F||_2 (its MAS plugin).
Every exact variant is checked against masllm exact (max relative difference printed).
Targets: exact <= 1.10x forward+backward on gpt2-23m, <= 1.3x on gemma, and at or below torch.func's
ratio where torch.func fits; exact's peak memory <= 1.2x the plain pass's.
"""

from __future__ import annotations

import argparse
import copy
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
from common import num_params, paired_ratios, peak_allocated_bytes, timings
from torch import nn

from masllm import MASConfig, compute_importance


@dataclass
class Case:
    """A model, its batches, and F: how its output is read (logits of every position)."""

    name: str
    model: nn.Module
    batches: list
    note: str


def _tokens(vocab: int, batch: int, seq: int, n: int, device: str) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        {
            "input_ids": torch.randint(0, vocab, (batch, seq), generator=g).to(device),
            "attention_mask": torch.ones(batch, seq, dtype=torch.long, device=device),
        }
        for _ in range(n)
    ]


def make_case(name: str, device: str) -> Case:
    from common import gpt2_25m

    torch.manual_seed(0)
    if name == "mlp":
        model = nn.Sequential(
            nn.Linear(784, 400), nn.ReLU(), nn.Linear(400, 400), nn.ReLU(), nn.Linear(400, 10)
        )
        g = torch.Generator().manual_seed(0)
        batches = [torch.rand(128, 784, generator=g).to(device) for _ in range(2)]
        return Case(name, model.to(device), batches, "MLP 784-400-400-10, 2 batches of 128")
    if name == "gpt2-5m":
        from transformers import GPT2Config, GPT2LMHeadModel

        model = GPT2LMHeadModel(GPT2Config(vocab_size=8192, n_positions=256, n_embd=256, n_layer=4, n_head=4))
        return Case(
            name, model.to(device), _tokens(8192, 8, 128, 2, device), "GPT-2, 2 batches of 8x128 tokens"
        )
    if name == "gpt2-23m":
        return Case(
            name, gpt2_25m().to(device), _tokens(8192, 8, 128, 2, device), "GPT-2, 2 batches of 8x128"
        )
    if name == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(vocab_size=8192, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)  # fmt: skip
        return Case(
            name, LlamaForCausalLM(cfg).to(device), _tokens(8192, 8, 128, 2, device), "Llama, 2 x 8x128"
        )
    if name == "vit":
        from transformers import ViTConfig, ViTForImageClassification

        cfg = ViTConfig(image_size=32, patch_size=4, num_channels=3, hidden_size=192, num_hidden_layers=4,
                        num_attention_heads=3, intermediate_size=768, num_labels=10)  # fmt: skip
        g = torch.Generator().manual_seed(0)
        batches = [{"pixel_values": torch.rand(32, 3, 32, 32, generator=g).to(device)} for _ in range(2)]
        return Case(name, ViTForImageClassification(cfg).to(device), batches, "ViT 32x32, 2 batches of 32")
    if name == "gemma":
        from gemma import gemma_dir
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(gemma_dir(), dtype=torch.float32)
        vocab = model.config.vocab_size
        return Case(
            name, model.to(device), _tokens(vocab, 2, 64, 2, device), "Gemma-3-270M, 2 batches of 2x64"
        )
    raise ValueError(f"unknown model {name!r}")


def output_norm(model: nn.Module, x) -> torch.Tensor:
    """sum_k ||F(x_k)||^2 over the batch (F = logits)."""
    out = model(**x) if isinstance(x, dict) else model(x)
    logits = out if isinstance(out, torch.Tensor) else out.logits
    return logits.float().pow(2).sum()


def plain(case: Case) -> Callable[[], None]:
    def run():
        for b in case.batches:
            output_norm(case.model, b).backward()
        case.model.zero_grad(set_to_none=True)

    return run


def masllm(case: Case, mode: str, per_sample_batches: bool = False) -> Callable[[], dict]:
    cfg = MASConfig(abs_mode=mode, check_per_sample=False)
    data = case.batches
    if per_sample_batches:  # the naive loop: one sample per backward pass
        data = [_slice(b, i) for b in case.batches for i in range(_size(b))]
    return lambda: dict(compute_importance(case.model, data, cfg, show_progress=False))


def _size(b) -> int:
    return len(next(iter(b.values()))) if isinstance(b, dict) else len(b)


def _slice(b, i: int):
    return {k: v[i : i + 1] for k, v in b.items()} if isinstance(b, dict) else b[i : i + 1]


def torch_func(case: Case) -> Callable[[], dict]:
    from torch.func import functional_call, grad, vmap

    model = case.model.eval()
    params = {n: p.detach() for n, p in model.named_parameters()}

    def one(p, x):
        # an all-ones attention_mask is left out: transformers' mask code is data-dependent (vmap
        # refuses it); without it the same causal attention runs
        x = (
            {k: v.unsqueeze(0) for k, v in x.items() if k != "attention_mask"}
            if isinstance(x, dict)
            else x.unsqueeze(0)
        )
        out = (
            functional_call(model, p, args=(), kwargs=x)
            if isinstance(x, dict)
            else functional_call(model, p, (x,))
        )
        logits = out if isinstance(out, torch.Tensor) else out.logits
        return logits.float().pow(2).sum()

    def run():
        total = {n: torch.zeros_like(p) for n, p in params.items()}
        for b in case.batches:
            for n, g in vmap(grad(one), in_dims=(None, 0))(params, b).items():
                total[n] += g.abs().sum(0)
        n = sum(_size(b) for b in case.batches)
        return {k: v / n for k, v in total.items()}

    return run


def opacus(case: Case) -> Callable[[], dict] | None:
    try:
        from opacus import GradSampleModule
    except ImportError:
        return None
    model = copy.deepcopy(case.model)  # Opacus hooks the modules it wraps: keep them off the others
    for m in model.modules():  # Opacus records activations in train mode only: same maths, no dropout
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    module = GradSampleModule(model.train(), loss_reduction="sum")  # our loss is a sum over samples

    def run():
        total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
        for b in case.batches:
            output_norm(
                module, {k: v for k, v in b.items() if k != "attention_mask"} if isinstance(b, dict) else b
            ).backward()
            for n, p in model.named_parameters():
                total[n] += p.grad_sample.abs().sum(0)
                p.grad_sample = None
            module.zero_grad(set_to_none=True)
        n = sum(_size(b) for b in case.batches)
        return {k: v / n for k, v in total.items()}

    return run


def avalanche(case: Case) -> Callable[[], dict]:
    """Avalanche 0.6's MAS plugin: per batch, |grad of mean_k ||F(x_k)||_2| summed over batches."""

    def run():
        total = {n: torch.zeros_like(p) for n, p in case.model.named_parameters()}
        for b in case.batches:
            out = case.model(**b) if isinstance(b, dict) else case.model(b)
            logits = out if isinstance(out, torch.Tensor) else out.logits
            torch.norm(logits.float().reshape(len(logits), -1), p="fro", dim=1).mean().backward()
            for n, p in case.model.named_parameters():
                total[n] += p.grad.abs()
            case.model.zero_grad(set_to_none=True)
        return {k: v / len(case.batches) for k, v in total.items()}

    return run


def rel_diff(a: dict, b: dict) -> float:
    num = sum(float((a[n] - b[n]).abs().sum()) for n in b)
    return num / max(sum(float(b[n].abs().sum()) for n in b), 1e-30)


def bench_case(case: Case, rounds: int, device: str, skip: set[str]) -> None:
    case.model.eval()
    makers: dict[str, Callable[[], Callable | None]] = {
        "forward+backward": lambda: plain(case),
        "masllm per_batch": lambda: masllm(case, "per_batch"),
        "masllm exact": lambda: masllm(case, "per_sample"),
        "naive loop (batch size 1)": lambda: masllm(case, "per_batch", per_sample_batches=True),
        "torch.func vmap(grad)": lambda: torch_func(case),
        "Opacus": lambda: opacus(case),
        "Avalanche's definition": lambda: avalanche(case),
    }
    variants = {k: f for k, make in makers.items() if k not in skip and (f := make()) is not None}
    print(f"\n== {case.name}: {case.note}; {num_params(case.model) / 1e6:.1f}M parameters, {device}")
    reference = variants["masllm exact"]()
    errors = {}
    for name in ("naive loop (batch size 1)", "torch.func vmap(grad)", "Opacus"):
        if name in variants:
            try:
                errors[name] = rel_diff(variants[name](), reference)
            except Exception as e:  # a peer that cannot run this model: say why, drop it
                print(f"   {name}: failed ({type(e).__name__}: {str(e)[:120]})")
                variants.pop(name)
    times = timings({k: (lambda f=f: f() and None) for k, f in variants.items()}, rounds)
    ratio = paired_ratios(times, "forward+backward")
    mem = {name: peak_allocated_bytes(fn, device) for name, fn in variants.items()}
    print(
        f"{'variant':<28} {'median s':>9} {'x fwd+bwd':>10} {'peak MiB':>9} {'x fwd+bwd':>10} {'rel. diff':>10}"
    )
    for name, ts in times.items():
        d = f"{errors[name]:.1e}" if name in errors else ""
        print(f"{name:<28} {statistics.median(ts):>9.3f} {ratio[name]:>10.3f} {mem[name] / 2**20:>9.1f} "
              f"{mem[name] / max(mem['forward+backward'], 1):>10.2f} {d:>10}")  # fmt: skip


def main(models: list[str], rounds: int, device: str, skip: set[str]) -> None:
    if device == "cpu":
        torch.set_num_threads(1)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {rounds} interleaved rounds")
    for name in models:
        case = make_case(name, device)
        peers_fit = name != "gemma"  # B x P per-sample gradients: 4 x 268M floats and more
        bench_case(case, rounds, device, skip | (set() if peers_fit else {"torch.func vmap(grad)", "Opacus"}))
        del case


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="mlp,gpt2-5m,gpt2-23m,llama,vit")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip", default="", help="variants to leave out, comma-separated")
    a = p.parse_args()
    main(a.models.split(","), a.rounds, a.device, set(filter(None, a.skip.split(","))))
