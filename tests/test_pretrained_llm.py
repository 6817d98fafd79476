"""bench/pretrained_llm.py at toy size: a GPT-2 pretrained here on general text, two new domains.

The same code path as the Gemma run (the bench's own functions): LoRA through the recipe's loader,
task 0's Omega on general text, the method table's trainers, the front and the validation rule.
The rule's choice is checked against an independent argmin over the validation numbers, and
changing every test number must not change it.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
TEXT = Path(os.environ.get("MASLLM_TEXT_DATA", ROOT.parent / "shared" / "data" / "text"))


def _bench():
    sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("pretrained_llm", ROOT / "bench" / "pretrained_llm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pretrained_gpt2(directory: Path, bench) -> None:
    """A 2-layer GPT-2 with a BPE tokenizer, trained 30 steps on general text (its 'pretraining')."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from masllm.tasks.text.packing import pack, train_bpe_tokenizer

    docs = bench.general_documents(TEXT)
    tokenizer = train_bpe_tokenizer(docs[:40], 384)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=32,
                   eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)
    )  # fmt: skip
    blocks = torch.as_tensor(pack(docs[40:80], tokenizer, 32), dtype=torch.long)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for i in range(30):
        x = blocks[(i * 8) % (len(blocks) - 8) :][:8]
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


@pytest.mark.skipif(not TEXT.is_dir(), reason="needs the general text of ../shared/data/text")
def test_pretrained_llm_bench_small(tmp_path: Path) -> None:
    bench = _bench()
    _pretrained_gpt2(tmp_path / "model", bench)
    config = yaml.safe_load((ROOT / "recipes" / "configs" / "pretrained_llm.yaml").read_text())
    config["domains"] = config["domains"][:2]  # python, licenses
    config["peft"] = {"r": 4, "alpha": 8, "target_modules": ["c_attn", "c_fc"]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    argv = ["--config", str(tmp_path / "config.yaml"), "--model", str(tmp_path / "model"), "--out", str(out)]
    argv += ["--methods", "finetune,l2,mas,mas_hidden", "--strengths", "l2=0.01:100,mas=0.001:1,mas_hidden=1"]
    argv += ["--steps", "3", "--seq", "32", "--eval_blocks", "3", "--importance_blocks", "2"]
    argv += ["--general_importance_blocks", "3", "--lr", "0.01"]
    text = bench.main(argv)
    with pytest.raises(ValueError, match=r"bench\.steps: 3 -> 4"):  # finished runs are never mixed in
        bench.main([*argv, "--steps", "4"])

    names = [
        "finetune",
        "l2-lambda0.01",
        "l2-lambda100",
        "mas-lambda0.001",
        "mas-lambda1",
        "mas_hidden-lambda1",
    ]
    assert sorted(p.stem for p in (out / "runs").glob("*.json")) == sorted(names)
    assert (out / "front.png").stat().st_size > 0
    rows = {r["name"]: r for r in json.loads((out / "front.json").read_text())["rows"]}
    assert set(rows) == set(names)
    assert rows["finetune"]["plasticity"] == pytest.approx(1.0)
    records = {n: json.loads((out / "runs" / f"{n}.json").read_text()) for n in names}
    pre = json.loads((out / "pretrained.json").read_text())
    lora = 2 * (4 * (32 + 96) + 4 * (32 + 128))  # 2 layers, r = 4 on c_attn (32 -> 96) and c_fc (32 -> 128)
    for n, r in records.items():  # the front's numbers from the records, recomputed here
        assert r["trainable_parameters"] == lora  # the adapter only (--lora is the default)
        assert set(r["test"]) == {"after_python", "after_licenses"}
        assert set(r["test"]["after_python"]) == {"python"}
        assert set(r["test"]["after_licenses"]) == {"general", "python", "licenses"}
        assert rows[n]["general_forgetting"] == pytest.approx(
            r["test"]["after_licenses"]["general"] / pre["test:general"] - 1
        )
        rel = [
            r["test"][f"after_{d}"][d] / records["finetune"]["test"][f"after_{d}"][d]
            for d in ("python", "licenses")
        ]
        assert rows[n]["plasticity"] == pytest.approx(sum(rel) / 2)
        learnt = [r["test"][f"after_{d}"][d] / pre[f"test:{d}"] for d in ("python", "licenses")]
        assert rows[n]["vs_pretrained"] == pytest.approx(sum(learnt) / 2)
        assert rows[n]["domain_forgetting"] == pytest.approx(
            r["test"]["after_licenses"]["python"] / r["test"]["after_python"]["python"] - 1
        )
    assert rows["l2-lambda100"]["plasticity"] != pytest.approx(1.0)  # the penalty acted

    # where Omega lies: L2's Omega is 1 everywhere, so each share is a share of the adapter's parameters
    (l2_omega,) = (out / "cache").glob("omega0-l2-*")
    shares = __import__("pretrained_front").omega_shares(l2_omega)["lora"]
    assert shares["lora_A"] == pytest.approx(2 * 2 * 4 * 32 / lora)
    assert shares["lora_B"] == pytest.approx(2 * 4 * (96 + 128) / lora)

    # the rule: an independent argmin of the mean final validation perplexity (general + domains)
    tasks = ["general", "python", "licenses"]
    for method, lams in (("l2", (0.01, 100.0)), ("mas", (0.001, 1.0))):
        val = {
            lam: sum(records[f"{method}-lambda{lam:g}"]["validation"][t] for t in tasks) / 3 for lam in lams
        }
        best = min(val, key=lambda lam: (val[lam], lam))
        assert f"- {method}: {best:g} (" in text
    chosen = bench.select(list(records.values()), tasks)
    for r in records.values():  # test numbers changed: the choice stays
        for row in r["test"].values():
            for k in row:
                row[k] = math.pi * (1 + hash(k) % 7)
    assert {m: s.chosen for m, s in bench.select(list(records.values()), tasks).items()} == {
        m: s.chosen for m, s in chosen.items()
    }


def test_recipe_config_parses() -> None:
    from masllm.continual.arguments import parse_args

    model_args, data_args, cl_args, _ = parse_args(
        ["--config", str(ROOT / "recipes/configs/pretrained_llm.yaml")]
    )
    assert model_args.peft["target_modules"] == "all-linear"
    assert [d["name"] for d in data_args.domains] == ["python", "licenses", "man"]
    assert data_args.kind == "causal_lm"
    assert [m for m, _ in cl_args.runs()] == ["finetune", "l2", "ewc", "mas"]


def test_man_pages_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """builtin:man_pages: gzipped and plain pages of sections 1-8, `.so` redirects left out."""
    import gzip

    from masllm.tasks.text import domains

    (tmp_path / "man1").mkdir()
    (tmp_path / "man9").mkdir()
    (tmp_path / "man1" / "ls.1.gz").write_bytes(gzip.compress(b".TH LS 1\n.SH NAME\nls \\- list\n"))
    (tmp_path / "man1" / "dir.1.gz").write_bytes(gzip.compress(b".so man1/ls.1\n"))
    (tmp_path / "man1" / "cat.1").write_text(".TH CAT 1\n")
    (tmp_path / "man9" / "k.9").write_text(".TH K 9\n")
    monkeypatch.setattr(domains, "MAN_ROOT", tmp_path)
    docs = domains.load_documents(
        "builtin:man_pages", "train", domains.DomainConfig("man", "builtin:man_pages")
    )
    assert docs == [".TH CAT 1\n", ".TH LS 1\n.SH NAME\nls \\- list\n"]
    monkeypatch.setattr(domains, "MAN_ROOT", tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="no manual pages"):
        domains.load_documents("builtin:man_pages", "train", domains.DomainConfig("man", "builtin:man_pages"))
