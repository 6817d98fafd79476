"""Merge rules across tasks (ema, decay, alpha-scaling) against the explicit per-task formulas."""

from __future__ import annotations

import json

import pytest
import torch

from masllm import LwFConfig, MASConfig, Omega, SIConfig


def task_omegas(seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Three tasks of very different scales (the case alpha-scaling is for), one with a missing head."""
    g = torch.Generator().manual_seed(seed)
    tasks = [
        {"w": torch.rand(3, 4, generator=g) * s, "b": torch.rand(4, generator=g) * s} for s in (1, 50, 0.1)
    ]
    del tasks[2]["b"]  # a parameter the third task does not cover counts as 0 for it
    return tasks


def merged(rule: str, tasks, **kw) -> Omega:
    cfg = MASConfig(merge=rule, **kw)
    omega = Omega(config=cfg)
    for i, t in enumerate(tasks):
        omega.merge(Omega(t, config=cfg, tasks=[{"name": f"t{i}"}]))
    return omega


def full(tasks):
    return [{"w": t["w"], "b": t.get("b", torch.zeros(4))} for t in tasks]


def assert_equal(omega: Omega, expected: dict[str, torch.Tensor]) -> None:
    for n, t in expected.items():
        torch.testing.assert_close(omega[n], t, rtol=1e-6, atol=1e-7)


def test_alpha_scaling_equals_explicit_formula_on_three_tasks():
    tasks = task_omegas()
    omega = merged("alpha", tasks)
    ts = full(tasks)
    S = [float(t["w"].sum() + t["b"].sum()) for t in ts]
    inv = sum(1 / s for s in S)
    alphas = [(1 / s) / inv for s in S]  # alpha_t S_t equal for every t, sum_t alpha_t = 1
    assert sum(alphas) == pytest.approx(1.0)
    assert len({round(a * s, 9) for a, s in zip(alphas, S)}) == 1
    expected = {n: sum(a * t[n] for a, t in zip(alphas, ts)) for n in ("w", "b")}
    assert_equal(omega, expected)
    # each task weighs the same in the merged total
    shares = [float(sum((a * t[n]).sum() for n in t)) for a, t in zip(alphas, ts)]
    assert shares == pytest.approx([float(omega["w"].sum() + omega["b"].sum()) / 3] * 3)
    # constant memory: only scalars join the state, which survives json
    assert json.loads(json.dumps(omega.merge_state))["alpha_inv_total"] == pytest.approx(inv)


def test_alpha_rejects_zero_importance():
    with pytest.raises(ValueError, match="positive total"):
        merged("alpha", [{"w": torch.zeros(2)}])


@pytest.mark.parametrize("d", [0.0, 0.5, 0.9])
def test_ema_and_decay_equal_explicit_formulas(d):
    ts = full(task_omegas(1))
    ema, dec = {}, {}
    for n in ("w", "b"):
        e = ts[0][n]
        for t in ts[1:]:
            e = d * e + (1 - d) * t[n]
        ema[n] = e
        dec[n] = sum(d ** (len(ts) - 1 - i) * t[n] for i, t in enumerate(ts))
    assert_equal(merged("ema", task_omegas(1), merge_decay=d), ema)
    assert_equal(merged("decay", task_omegas(1), merge_decay=d), dec)


def test_decay_one_is_sum():
    a, b = merged("decay", task_omegas(2), merge_decay=1.0), merged("sum", task_omegas(2))
    assert_equal(a, dict(b.items()))


def test_method_field_validation():
    with pytest.raises(ValueError, match="merge_decay"):
        MASConfig(merge="ema", merge_decay=1.5)
    with pytest.raises(ValueError, match="merge='decay'"):
        MASConfig(method="online_ewc")
    with pytest.raises(ValueError, match="si_xi"):
        SIConfig(si_xi=0.0)
    with pytest.raises(ValueError, match="lwf_temperature"):
        LwFConfig(lwf_temperature=0.0)
    with pytest.raises(ValueError, match="lwf_weight"):
        LwFConfig(lwf_weight=-1.0)


def test_alpha_under_zero_uses_the_total_over_all_ranks(monkeypatch):
    """A rank's slices: S_t must be the sum over every rank's slice (here another rank holds 10 per task)."""
    import masllm.omega.container

    monkeypatch.setattr(
        masllm.omega.container, "all_reduce_sum", lambda v: torch.tensor(v, dtype=torch.float64) + 10
    )
    cfg = MASConfig(merge="alpha")
    tasks = full(task_omegas(3))
    omega = Omega(config=cfg)
    for t in tasks:
        omega.merge(Omega(t, config=cfg, shards={n: object() for n in t}))
    S = [10 + float(t["w"].sum() + t["b"].sum()) for t in tasks]
    inv = sum(1 / s for s in S)
    expected = {n: sum((1 / s) / inv * t[n] for s, t in zip(S, tasks)) for n in ("w", "b")}
    assert_equal(omega, expected)
    assert omega.merge_state["alpha_inv_total"] == pytest.approx(inv)
    assert "_global_total" not in omega.merge_state
