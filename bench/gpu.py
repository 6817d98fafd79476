"""MAS on a GPU, side by side with the plain run: fine-tuning tokens/s, the Omega pass, peak memory.

Usage:
    python bench/gpu.py                      # on a CUDA machine: ~125M and ~1B Llama-shaped models, bf16
    python bench/gpu.py --device cpu --tiny  # the same code on a tiny model (what the tests can run)

For each Llama-shaped model built from config (bf16 weights, sdpa attention):
- training: tokens/s of `MASTrainer` (penalty active: Omega random, theta* = the weights) against a
  plain `transformers.Trainer` on the same batches (AdamW, interleaved steps, medians);
- importance: seconds of `compute_importance` (exact, per_sample) against a plain forward+backward of
  sum ||logits||^2 on the same batches, and per_batch;
- peak memory of each (`torch.cuda.max_memory_allocated` above what was allocated before).
The project never needs a GPU; this is what a lent one measures.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from common import interleaved, num_params, peak_allocated_bytes
from torch.utils.data import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from masllm import MASConfig, MASTrainer, Omega, compute_importance

SIZES = {
    "125m": {
        "hidden_size": 768,
        "intermediate_size": 2048,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
    },
    "1b": {
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_hidden_layers": 16,
        "num_attention_heads": 16,
    },
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4},
}


def llama(size: str, vocab: int, device: str, dtype: torch.dtype) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, max_position_embeddings=2048, num_key_value_heads=None, **SIZES[size])
    return LlamaForCausalLM(cfg).to(device=device, dtype=dtype)


class Tokens(Dataset):
    def __init__(self, n: int, seq: int, vocab: int):
        self.ids = torch.randint(0, vocab, (n, seq), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def synced(fn, device: str):
    def run():
        fn()
        if device == "cuda":
            torch.cuda.synchronize()

    return run


def stepper(trainer: Trainer):
    trainer.create_optimizer_and_scheduler(num_training_steps=10_000)
    trainer.accelerator.gradient_state._set_sync_gradients(True)
    trainer.current_gradient_accumulation_steps = 1
    batch = {k: v.to(trainer.args.device) for k, v in next(iter(trainer.get_train_dataloader())).items()}

    def step():
        trainer.training_step(trainer.model, batch)
        trainer._clip_grad_norm(trainer.model)
        trainer.optimizer.step()
        trainer.model.zero_grad(set_to_none=True)

    return step


def bench(size: str, batch: int, seq: int, rounds: int, device: str) -> None:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    vocab = 32000 if size != "tiny" else 512
    model = llama(size, vocab, device, dtype)
    tokens = batch * seq
    print(
        f"\n== Llama {size}: {num_params(model) / 1e6:.0f}M parameters, {dtype}, batch {batch} x {seq}, {device}"
    )
    g = torch.Generator().manual_seed(1)
    omega = Omega(
        {n: torch.rand(p.shape, generator=g).to(device) for n, p in model.named_parameters()},
        {n: p.detach().clone() for n, p in model.named_parameters()},
        tasks=[{"name": "previous", "num_samples": 1, "method": "mas"}],
    )
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch, report_to=[],
        use_cpu=device == "cpu", bf16=device == "cuda", max_grad_norm=1.0,
    )  # fmt: skip
    data = Tokens(4 * batch, seq, vocab)
    plain_step = stepper(Trainer(model, args, train_dataset=data))
    mas_step = stepper(MASTrainer(model, args, train_dataset=data, mas_config=MASConfig(), omega=omega))
    train = {"plain Trainer": synced(plain_step, device), "MASTrainer": synced(mas_step, device)}
    med = interleaved(train, rounds)
    mem = {k: peak_allocated_bytes(f, device) for k, f in train.items()}
    for k, t in med.items():
        print(
            f"{k:<30} {tokens / t:>10.0f} tokens/s  {t / med['plain Trainer']:>6.3f}x   peak {mem[k] / 2**30:.2f} GiB"
        )
    batches = [{"input_ids": data.ids[i * batch : (i + 1) * batch].to(device)} for i in range(2)]

    def plain():
        for b in batches:
            model(**b).logits.float().pow(2).sum().backward()
        model.zero_grad(set_to_none=True)

    imp = {
        "forward+backward": synced(plain, device),
        "masllm per_batch": synced(lambda: compute_importance(model, batches, MASConfig(abs_mode="per_batch"), show_progress=False), device),
        "masllm exact": synced(lambda: compute_importance(model, batches, MASConfig(), show_progress=False), device),
    }  # fmt: skip
    med = interleaved(imp, rounds)
    mem = {k: peak_allocated_bytes(f, device) for k, f in imp.items()}
    for k, t in med.items():
        print(
            f"{k:<30} {t:>10.3f} s         {t / med['forward+backward']:>6.3f}x   peak {mem[k] / 2**30:.2f} GiB"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", default="125m,1b")
    p.add_argument("--tiny", action="store_true", help="one tiny model, batch 2 x 32 (a smoke run)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    if a.tiny:
        a.sizes, a.batch, a.seq, a.rounds = "tiny", 2, 32, 2
    for size in a.sizes.split(","):
        bench(size, a.batch, a.seq, a.rounds, a.device)


if __name__ == "__main__":
    main()
