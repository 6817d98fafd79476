"""Incremental Moment Matching (Lee et al., NeurIPS 2017) as a baseline: merge the task models.

Each task t is trained in sequence (IMM's transfer: start from the previous task's weights, with an
L2 penalty towards them: `MASConfig(method='l2')`), its weights theta_t kept, and at the end:

    mean-IMM:  theta = sum_t alpha_t theta_t                                          (Eq. 3)
    mode-IMM:  theta = (sum_t alpha_t F_t theta_t) / (sum_t alpha_t F_t)              (Eq. 7)

F_t the diagonal Fisher of task t (`compute_importance(model_t, data_t, MASConfig(method='ewc'))`),
alpha_t the mixing ratios (default 1/T each), and a small `eps` keeping the mode defined where every
F_t vanishes (IMM adds it to F). The MAS paper reports the better of the two per experiment (Sec. 5.1).
Parameters are matched by name; all task states must cover the same names and shapes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

State = Mapping[str, torch.Tensor]


def _alphas(n: int, alphas: Sequence[float] | None) -> list[float]:
    if alphas is None:
        return [1.0 / n] * n
    if len(alphas) != n or any(a < 0 for a in alphas) or not sum(alphas) > 0:
        raise ValueError(f"IMM needs {n} non-negative mixing ratios with a positive sum, got {list(alphas)}")
    return [a / sum(alphas) for a in alphas]


def _check(states: Sequence[State]) -> None:
    if not states:
        raise ValueError("IMM needs at least one task model")
    names = set(states[0])
    for i, s in enumerate(states[1:], 1):
        if set(s) != names:
            raise ValueError(f"IMM: task {i} has different parameters from task 0")
        for n in names:
            if s[n].shape != states[0][n].shape:
                raise ValueError(
                    f"IMM: {n!r} has shape {tuple(s[n].shape)} in task {i}, {tuple(states[0][n].shape)} in 0"
                )


def mean_imm(states: Sequence[State], alphas: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """sum_t alpha_t theta_t (Eq. 3)."""
    _check(states)
    a = _alphas(len(states), alphas)
    return {n: sum(w * s[n].float() for w, s in zip(a, states)) for n in states[0]}


def mode_imm(
    states: Sequence[State],
    fishers: Sequence[State],
    alphas: Sequence[float] | None = None,
    eps: float = 1e-8,
) -> dict[str, torch.Tensor]:
    """(sum_t alpha_t F_t theta_t) / (sum_t alpha_t F_t), F_t + eps (Eq. 7, diagonal Fisher)."""
    _check(states)
    if len(fishers) != len(states):
        raise ValueError(f"mode-IMM needs one Fisher per task: {len(fishers)} for {len(states)} tasks")
    a = _alphas(len(states), alphas)
    merged = {}
    for n in states[0]:
        weights = [w * (f[n].float() + eps) for w, f in zip(a, fishers)]
        merged[n] = sum(wt * s[n].float() for wt, s in zip(weights, states)) / sum(weights)
    return merged
