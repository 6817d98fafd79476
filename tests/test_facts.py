"""The `facts` kind: MAP against a brute-force reference, the S/P/O head and its loss, Omega of the
embedding against per-sample autograd, the data builder's determinism, MAS vs finetune on two real
fact tasks, and the recipe config end to end."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from reference import brute_force_omega, split_samples

import masllm.continual as recipe
from masllm import MASConfig, compute_importance
from masllm.tasks import TASK_KINDS
from masllm.tasks.facts import (
    FactEmbeddingModel,
    FactsSpec,
    all_facts,
    average_precisions,
    fact_groups,
    fact_loss,
    load_facts,
    make_tasks,
    task_map,
)
from masllm.tasks.facts import embeddings as emb_mod
from masllm.tasks.facts.data import CELL, build_facts, compose
from masllm.tasks.vision import batches, train_task
from masllm.tasks.vision.models import MLPBackbone

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MASLLM_DATA", ROOT.parent / "shared" / "data"))
needs_data = pytest.mark.skipif(not (DATA / "fashion-mnist").is_dir(), reason="shared data not present")


def brute_ap(dist: list[float], rel: list[bool]) -> float:
    """AP written out: sort by (distance, relevant) so ties put non-relevant images first."""
    ranked = [r for _, r in sorted(zip(dist, rel), key=lambda t: (t[0], t[1]))]
    hits, total = 0, 0.0
    for k, r in enumerate(ranked, start=1):
        if r:
            hits += 1
            total += hits / k
    return total / sum(rel)


def test_map_matches_brute_force_with_ties():
    g = torch.Generator().manual_seed(0)
    dist = torch.randint(0, 5, (6, 12), generator=g).float()  # many ties
    rel = torch.rand(6, 12, generator=g) < 0.4
    rel[:, 0] = True
    ours = average_precisions(dist, rel)
    ref = [brute_ap(d.tolist(), r.tolist()) for d, r in zip(dist, rel)]
    assert torch.allclose(ours, torch.tensor(ref, dtype=torch.float64))
    # by hand: distances 0.1 (rel), 0.2, 0.2 (rel) -> AP = (1/1 + 2/3) / 2; the tie ranks the non-relevant first
    hand = average_precisions(torch.tensor([[0.1, 0.2, 0.2]]), torch.tensor([[True, False, True]]))
    assert abs(float(hand) - (1 + 2 / 3) / 2) < 1e-12
    with pytest.raises(ValueError, match="no relevant"):
        average_precisions(torch.zeros(1, 3), torch.zeros(1, 3, dtype=torch.bool))


def tiny_model(dim: int = 8, facts: int = 5, seed: int = 0) -> FactEmbeddingModel:
    torch.manual_seed(seed)
    targets = torch.randn(facts, 3 * dim)
    return FactEmbeddingModel(MLPBackbone(in_features=12, hidden_sizes=(16,)), targets)


def test_head_shapes_and_loss():
    model = tiny_model()
    x, labels = torch.randn(4, 12), torch.tensor([0, 3, 1, 3])
    out = model(x, labels=labels, task_ids=torch.zeros(4, dtype=torch.long))
    assert out.logits.shape == (4, 24)
    v, e = out.logits.reshape(4, 3, 8), model.targets[labels].reshape(4, 3, 8)
    assert torch.allclose(out.loss, ((v - e) ** 2).sum(-1).sum(-1).mean())
    assert torch.allclose(
        fact_loss(out.logits, model.targets[labels], "euclidean"), (v - e).norm(dim=-1).sum(-1).mean()
    )
    with pytest.raises(ValueError, match="3\\*dim"):
        fact_loss(torch.zeros(2, 7), torch.zeros(2, 7))
    with pytest.raises(ValueError, match="distance"):
        FactEmbeddingModel(MLPBackbone(in_features=12, hidden_sizes=(4,)), torch.zeros(2, 6), "cosine")


def test_omega_of_embedding_matches_per_sample_autograd():
    model = tiny_model()
    x = torch.randn(10, 12)
    omega = compute_importance(model, batches(x, None, 0, 4), MASConfig(), show_progress=False)
    ref = brute_force_omega(
        model, split_samples({"pixel_values": x})
    )  # F = [S | P | O], ||F||^2, |g| per sample, mean
    for name, value in ref.items():
        assert torch.allclose(omega.importance[name], value, rtol=1e-5, atol=1e-7), name
    assert set(omega.importance) == set(ref)  # the targets buffer is no parameter: no Omega


def test_compose_places_units_by_relation():
    d, i = (
        torch.full((4, CELL, CELL), 1, dtype=torch.uint8),
        torch.full((4, CELL, CELL), 2, dtype=torch.uint8),
    )
    canvas = compose(d, i, torch.tensor([0, 1, 2, 3]), torch.tensor([1, 0, 1, 0]))
    cell = lambda k, r, c: int(canvas[k, r * CELL, c * CELL])  # noqa: E731
    assert (cell(0, 1, 0), cell(0, 1, 1)) == (1, 2)  # left of, lower row
    assert (cell(1, 0, 1), cell(1, 0, 0)) == (1, 2)  # right of, upper row
    assert (cell(2, 0, 1), cell(2, 1, 1)) == (1, 2)  # above, right column
    assert (cell(3, 1, 0), cell(3, 0, 0)) == (1, 2)  # below, left column


def test_fact_groups_are_disjoint_and_cover():
    for split in ("units", "random"):
        groups = fact_groups(split, seed=3)
        joined = torch.cat(groups)
        assert len(joined) == 400 and len(joined.unique()) == 400 and [len(g) for g in groups] == [100] * 4
    facts = all_facts()
    g0, g1 = fact_groups("units", seed=3)[:2]
    assert not set(facts[g0, 0].tolist()) & set(facts[g1, 0].tolist())  # T1 and T2 share no digit
    assert not torch.equal(fact_groups("random", 0)[0], fact_groups("random", 1)[0])


@needs_data
def test_builder_is_deterministic_and_cached(tmp_path):
    spec = FactsSpec(
        str(DATA / "mnist"), str(DATA / "fashion-mnist"), seed=0, train_per_fact=1, test_per_fact=1
    )
    a, b = build_facts(spec), build_facts(spec)
    c = build_facts(FactsSpec(spec.digits, spec.items, seed=1, train_per_fact=1, test_per_fact=1))
    assert (
        a.x_train.shape == (400, 28, 28)
        and torch.equal(a.x_train, b.x_train)
        and torch.equal(a.f_test, b.f_test)
    )
    assert not torch.equal(a.x_train, c.x_train)
    cached = load_facts(spec, tmp_path)
    (file,) = tmp_path.glob("facts-*.safetensors")
    raw = file.read_bytes()
    assert torch.equal(cached.x_train, a.x_train) and torch.equal(load_facts(spec, tmp_path).x_test, a.x_test)
    assert (
        file.read_bytes() == raw and len(list(tmp_path.iterdir())) == 1
    )  # read, not rewritten; no temporary


def test_random_embedding_fallback_warns(tmp_path, monkeypatch):
    monkeypatch.setattr(emb_mod, "_package_model", lambda cache: None)

    def no_hub(path, texts):
        raise OSError("offline")

    monkeypatch.setattr(emb_mod, "encode", no_hub)
    with pytest.warns(UserWarning, match="RANDOM"):
        e, source = emb_mod.unit_embeddings(["a", "b"], tmp_path)
    assert source == "random" and e.shape == (2, 384) and torch.allclose(e.norm(dim=1), torch.ones(2))
    with pytest.raises(FileNotFoundError, match="all-minilm"):
        emb_mod.unit_embeddings(["c"], None, allow_random=False)


@needs_data
def test_mas_keeps_first_task_better_than_finetune(tmp_path):
    spec = FactsSpec(str(DATA / "mnist"), str(DATA / "fashion-mnist"), train_per_fact=12, test_per_fact=4)
    data = load_facts(spec, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        units = [emb_mod.random_embeddings(list(range(n)), dim=32, seed=k) for k, n in enumerate((10, 4, 10))]
    targets = emb_mod.fact_embeddings(data.facts, *units)
    t1, t2 = make_tasks(data, fact_groups("units", 0)[:2], validation=0.0)
    final = {}
    for method, lam in (("finetune", 0.0), ("mas", 10.0)):
        torch.manual_seed(0)
        model = FactEmbeddingModel(MLPBackbone(in_features=784, hidden_sizes=(64,)), targets)
        omega, g = None, torch.Generator().manual_seed(0)
        for k, t in enumerate((t1, t2)):
            opt = torch.optim.Adam(model.parameters(), lr=2e-3)
            train_task(model, t.x_train, t.f_train, 0, opt, epochs=4, batch_size=50, omega=omega,
                       reg_lambda=lam, generator=g)  # fmt: skip
            if k == 0:
                first = task_map(model, t1)
                if method == "mas":
                    omega = compute_importance(
                        model, batches(t1.x_train, None, 0, 256), MASConfig(), show_progress=False
                    )
        final[method] = (first, task_map(model, t1), task_map(model, t2))
    (f_first, f_t1, _), (m_first, m_t1, m_t2) = final["finetune"], final["mas"]
    assert f_first == m_first > 0.3  # the same T1 training
    assert f_t1 < 0.7 * f_first  # finetune forgets T1 ...
    assert m_t1 > f_t1 + 0.05  # ... MAS keeps more of it
    assert m_t2 > 0.2  # and still learns T2


@needs_data
@pytest.mark.skipif("facts" not in TASK_KINDS, reason="the facts kind is not registered")
def test_facts_recipe_end_to_end(tmp_path):
    config = yaml.safe_load((ROOT / "recipes" / "configs" / "facts.yaml").read_text())
    assert config["kind"] == "facts" and len(config["domains"]) == 4
    domains = [dict(d, max_train=200, max_importance=64) for d in config["domains"][:2]]
    domains[0].update(digits=str(DATA / "mnist"), items=str(DATA / "fashion-mnist"), train_per_fact=3,
                      test_per_fact=2, importance_subjects=[0, 1, 2, 3, 4])  # fmt: skip
    argv = ["--config", str(ROOT / "recipes" / "configs" / "facts.yaml"), "--output_dir", str(tmp_path / "out"),
            "--domains", yaml.safe_dump(domains, default_flow_style=True), "--model_config",
            "{backbone: mlp, hidden_sizes: [16]}", "--compare", "finetune,mas=1", "--cache_dir", str(tmp_path),
            "--num_train_epochs", "1", "--save_strategy", "no", "--plots", "false", "--disable_tqdm", "true"]  # fmt: skip
    report = recipe.main(argv)
    R = report["runs"]["mas-lambda1"]["R"]["map"]
    assert len(R) == 2 and all(0.0 < v <= 1.0 for row in R for v in row)
    assert len(report["runs"]["mas-lambda1"]["R"]["val_map"]) == 2
    ewc = [a if a != "finetune,mas=1" else "ewc" for a in argv]
    ewc[ewc.index("--output_dir") + 1] = str(tmp_path / "ewc")
    with pytest.raises(ValueError, match="does not fit this task kind.*embedding"):
        recipe.main(ewc)
