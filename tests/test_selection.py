"""Lambda chosen on validation data: the rule, the validation split it needs (the vision kind and
`validation_split`), and the masked-output evaluation of a shared head (SPP's Split MNIST protocol)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from masllm.continual import select_from_report, select_lambda
from masllm.continual.report import RunResult, build_report
from masllm.continual.selection import main as select_main
from masllm.tasks.vision import MultiHeadClassifier, accuracy, validation_split

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason="../shared/data not present")


def _R(final_row: list[float]) -> list[list[float]]:
    """A 2-task R whose last row is `final_row` (the first row does not enter ACC)."""
    return [[99.0, 50.0], final_row]


def test_rule_is_best_mean_validation_acc_over_seeds():
    grid = {
        1.0: [_R([90.0, 96.0]), _R([94.0, 96.0])],  # ACC 93, 95 -> 94
        0.1: [_R([80.0, 99.0])],  # 89.5
        10.0: [_R([97.0, 90.0]), _R([97.0, 89.0])],  # 93.5, 93 -> 93.25
    }
    sel = select_lambda(grid)
    assert sel.chosen == 1.0
    assert sel.scores == {0.1: 89.5, 1.0: 94.0, 10.0: 93.25}  # sorted by lambda, brute-force means
    assert "1: 94.00 (chosen)" in sel.table()
    tie = select_lambda({3.0: [_R([90.0, 90.0])], 0.3: [_R([95.0, 85.0])]})
    assert tie.chosen == 0.3  # equal ACC: the weaker constraint
    lower = select_lambda({0.1: [_R([30.0, 20.0])], 1.0: [_R([22.0, 21.0])]}, higher_is_better=False)
    assert lower.chosen == 1.0  # perplexity: the lowest mean wins
    with pytest.raises(ValueError, match="at least one"):
        select_lambda({})
    with pytest.raises(ValueError, match="No validation runs"):
        select_lambda({1.0: []})
    with pytest.raises(ValueError, match="square"):
        select_lambda({1.0: [[[1.0, 2.0]]]})


def _rows(val_final: float) -> list[dict[str, dict[str, float]]]:
    """Recipe rows of a 2-task run: test accuracy deliberately opposite to the validation one."""
    cell = lambda v: {"accuracy": 200.0 - v, "loss": 0.1, "val_accuracy": v}  # noqa: E731
    return [{"a": cell(99.0), "b": cell(50.0)}, {"a": cell(val_final), "b": cell(98.0)}]


def test_select_from_a_recipe_report_ignores_the_test_metric(tmp_path, capsys):
    runs = [RunResult("finetune", "finetune", None, _rows(80.0))]
    runs += [
        RunResult(f"mas-lambda{v:g}", "mas", v, _rows(f)) for v, f in ((0.1, 90.0), (1.0, 96.0), (10.0, 93.0))
    ]
    runs += [RunResult(f"l2-lambda{v:g}", "l2", v, _rows(f)) for v, f in ((0.01, 91.0), (0.1, 85.0))]
    metrics = {"accuracy": True, "loss": False, "val_accuracy": True}
    report = build_report(runs, ["a", "b"], metrics, "accuracy")
    chosen = select_from_report(report)
    assert set(chosen) == {"mas", "l2"}  # finetune has no strength
    assert chosen["mas"].chosen == 1.0 and chosen["l2"].chosen == 0.01  # test accuracy would pick 0.1
    path = tmp_path / "report.json"
    import json

    path.write_text(json.dumps(report))
    select_main([str(path)])
    assert "mas: lambda 1 (" in capsys.readouterr().out
    del report["metrics"]["val_accuracy"]
    with pytest.raises(ValueError, match="validation"):
        select_from_report(report)


def test_validation_split_is_a_seeded_disjoint_partition():
    train, val = validation_split(1000, 0.1, seed=3)
    assert len(val) == 100 and len(train) == 900
    assert torch.equal(torch.sort(torch.cat([train, val])).values, torch.arange(1000))
    again = validation_split(1000, 0.1, seed=3)
    assert torch.equal(again[1], val) and not torch.equal(validation_split(1000, 0.1, seed=4)[1], val)
    assert len(validation_split(10, 0.0)[1]) == 0
    with pytest.raises(ValueError, match="fraction"):
        validation_split(10, 1.0)
    with pytest.raises(ValueError, match="empty"):
        validation_split(3, 0.01)


def test_masked_accuracy_matches_a_brute_force_count():
    torch.manual_seed(0)
    model = MultiHeadClassifier.from_backbone_config("mlp", in_features=6, hidden_sizes=(5,), head_sizes=[10])
    x, classes = torch.randn(200, 6), (3, 7)
    y = torch.tensor(classes)[torch.randint(0, 2, (200,))]
    with torch.no_grad():
        logits = model(x).logits
    ref = sum(int(max(classes, key=lambda c: float(row[c])) == int(t)) for row, t in zip(logits, y))
    assert accuracy(model, x, y, 0, batch_size=64, classes=classes) == pytest.approx(100.0 * ref / 200)
    unmasked = 100.0 * float((logits.argmax(-1) == y).float().mean())
    assert accuracy(model, x, y, 0) == pytest.approx(unmasked)


@needs_data
def test_shared_head_split_mnist_keeps_digits():
    from masllm.tasks.vision import load_idx_dataset, split_tasks

    data = {k: v[:2000] for k, v in load_idx_dataset(DATA / "mnist").items()}
    shared, multi = split_tasks(data, shared_head=True), split_tasks(data)
    assert [t.classes for t in shared] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    assert {t.head for t in shared} == {0} and {t.num_classes for t in shared} == {10}
    for s, m, (a, _) in zip(shared, multi, ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))):
        assert torch.equal(s.x_train, m.x_train) and torch.equal(s.y_train, m.y_train + a)
        assert m.classes is None


@needs_data
def test_vision_kind_holds_out_validation_images():
    from masllm.tasks.vision.kind import vision_sequence
    from masllm.tasks.vision.mnist import load_idx_dataset, to_float

    mnist = str(DATA / "mnist")
    domains = [
        {"name": "a", "source": mnist, "classes": [0, 1], "validation": 0.1, "max_eval": 50},
        {"name": "b", "source": mnist, "permutation_seed": 2, "head": 1, "validation": 0.05, "max_eval": 50},
    ]
    args = (SimpleNamespace(model_config={"backbone": "mlp", "hidden_sizes": [8]}, model_name_or_path=None),
            SimpleNamespace(domains=domains), SimpleNamespace(seed=0))  # fmt: skip
    seq = vision_sequence(*args)
    assert seq.metrics["val_accuracy"] is True
    a, b = seq.tasks
    raw = load_idx_dataset(mnist)
    keep = torch.isin(raw["train_labels"], torch.tensor([0, 1]))
    x = to_float(raw["train_images"][keep])
    train_idx, val_idx = validation_split(len(x), 0.1)
    val = a.evaluate.keywords["validation"]
    assert torch.equal(a.train_dataset.x, x[train_idx]) and torch.equal(val.x, x[val_idx])
    assert torch.equal(a.importance_dataset.x, x[train_idx])  # Omega never sees validation images
    assert len(b.evaluate.keywords["validation"]) == 3000 and len(b.train_dataset) == 57000
    with pytest.raises(ValueError, match="every task a validation"):
        vision_sequence(
            args[0], SimpleNamespace(domains=[domains[0], {**domains[1], "validation": 0.0}]), args[2]
        )
    with pytest.raises(ValueError, match="fraction"):
        vision_sequence(args[0], SimpleNamespace(domains=[{**domains[0], "validation": 1.5}]), args[2])


@needs_data
def test_recipe_reports_validation_accuracy_and_selects_on_it(tmp_path):
    """Two Split MNIST tasks with a validation fraction, a grid of two lambdas: val_accuracy in R is
    the saved model's accuracy on the held-out images, and the choice follows it."""
    import yaml

    import masllm.continual as recipe
    from masllm.tasks.vision.kind import vision_sequence

    root = Path(__file__).resolve().parents[1]
    domains = [
        {"name": n, "source": str(DATA / "mnist"), "classes": c, "validation": 0.02, "max_train": 256,
         "max_eval": 100, "max_importance": 64}
        for n, c in (("0-1", [0, 1]), ("2-3", [2, 3]))
    ]  # fmt: skip
    model_config = "{backbone: mlp, in_features: 784, hidden_sizes: [16]}"
    argv = ["--config", str(root / "recipes" / "configs" / "split_mnist_lambda.yaml"), "--output_dir", str(tmp_path),
            "--domains", yaml.safe_dump(domains, default_flow_style=True), "--model_config", model_config,
            "--compare", "mas=0.01,mas=100", "--num_train_epochs", "1", "--per_device_train_batch_size", "32",
            "--save_strategy", "no", "--plots", "false", "--disable_tqdm", "true"]  # fmt: skip
    report = recipe.main(argv)
    assert report["metrics"]["val_accuracy"] is True
    seq = vision_sequence(
        SimpleNamespace(model_config=yaml.safe_load(model_config), model_name_or_path=None),
        SimpleNamespace(domains=domains),
        SimpleNamespace(seed=0),
    )
    from safetensors.torch import load_file

    model = seq.model_init(None)
    model.load_state_dict(load_file(str(tmp_path / "mas-lambda100" / "1-2-3" / "model.safetensors")))
    R_val = report["runs"]["mas-lambda100"]["R"]["val_accuracy"]
    for j, task in enumerate(seq.tasks):
        val = task.evaluate.keywords["validation"]
        assert abs(accuracy(model, val.x, val.y, val.head) - R_val[1][j]) < 1e-6
    sel = select_from_report(report)["mas"]
    scores = {
        lam: sum(report["runs"][f"mas-lambda{lam:g}"]["R"]["val_accuracy"][1]) / 2 for lam in (0.01, 100.0)
    }
    assert sel.scores == pytest.approx(scores)
    assert sel.chosen == max(scores, key=lambda lam: (scores[lam], -lam))


def test_text_domains_report_validation_perplexity_and_select_on_it(tmp_path):
    """Text domains with a `validation` fraction: val_perplexity in R is the saved model's perplexity
    on the held-out blocks (recomputed here from the logits), lower is better, and the rule picks the
    lambda of the lowest mean validation NLL over domains."""
    import math

    import yaml
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    import masllm.continual as recipe
    from masllm.tasks.text.packing import load_domain

    root = Path(__file__).resolve().parents[1]
    config = yaml.safe_load((root / "recipes" / "configs" / "tiny.yaml").read_text())
    domains = [{**d, "validation": 0.1, "max_validation_blocks": 8} for d in config["domains"]]
    argv = ["--config", str(root / "recipes" / "configs" / "tiny.yaml"), "--output_dir", str(tmp_path),
            "--domains", yaml.safe_dump(domains, default_flow_style=True), "--compare", "mas=0.01,mas=1000",
            "--cache_dir", str(tmp_path / "cache"), "--max_steps", "3", "--save_strategy", "no"]  # fmt: skip
    report = recipe.main(argv)
    assert report["metrics"]["val_perplexity"] is False and report["metrics"]["val_nll"] is False
    assert report["validation_metric"] == "val_nll"
    run = "mas-lambda1000"
    model = GPT2LMHeadModel(GPT2Config(**{k: v for k, v in config["model_config"].items() if k != "model_type"},
                                       vocab_size=config["vocab_size"]))  # fmt: skip
    missing, unexpected = model.load_state_dict(
        load_file(str(tmp_path / run / "1-code" / "model.safetensors")), strict=False
    )
    assert set(missing) <= {"lm_head.weight"} and not unexpected  # saved once, as the tied embedding
    model.tie_weights()
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(next((tmp_path / "cache").glob("tokenizer-*")))
    for j, d in enumerate(domains):
        from masllm.tasks.text.domains import DomainConfig

        blocks = load_domain(
            DomainConfig.from_dict(d), tokenizer, config["block_size"], tmp_path / "cache", 0
        )
        ids, train = blocks["validation"][:]["input_ids"], blocks["train"][:]["input_ids"]
        assert len(ids) == 8 and not set(map(tuple, ids.tolist())) & set(map(tuple, train.tolist()))
        with torch.no_grad():
            logits = model(input_ids=ids).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        R = report["runs"][run]["R"]
        assert R["val_perplexity"][1][j] == pytest.approx(math.exp(float(nll)), rel=1e-4)
        assert R["val_nll"][1][j] == pytest.approx(float(nll), rel=1e-4)
    sel = select_from_report(report)["mas"]  # the kind's validation metric: val_nll
    scores = {lam: sum(report["runs"][f"mas-lambda{lam:g}"]["R"]["val_nll"][1]) / 2 for lam in (0.01, 1000.0)}
    assert sel.scores == pytest.approx(scores) and not sel.higher_is_better
    assert sel.chosen == min(scores, key=lambda lam: (scores[lam], lam))
