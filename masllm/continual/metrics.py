"""The result matrix R of a task sequence, and the continual-learning summaries computed from it.

R[i][j] is a metric (perplexity, token accuracy, ...) of task j measured right after training on
task i, for every task of the sequence, seen or still to come. With T tasks, following the SPP
paper (Peng et al. 2018, Sec. 4, "Evaluation"; its P_{j,i} is our R[j][i]):

    ACC = 1/T     sum_{i=1..T}   R[T][i]                  (Eq. 6: average final performance)
    FWT = 1/(T-1) sum_{i=1..T-1} R[i][i] - m_i            (Eq. 7: how well each task was learnt,
                                                           against a reference m_i)
    BWT = 1/(T-1) sum_{i=1..T-1} R[T][i] - R[i][i]        (Eq. 8: what later tasks did to earlier ones)

The paper's reference m_i is a joint multi-task model; the recipe uses plain fine-tuning on the
same sequence (the unconstrained result each task reaches), so FWT says how much a method
held back the learning of new tasks. Forgetting is BWT signed so that positive always means
"worse than right after learning it": for perplexity (lower is better) that is the mean
perplexity increase on earlier tasks, for accuracy the mean drop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

Matrix = Sequence[Sequence[float]]


@dataclass(frozen=True)
class ContinualSummary:
    """ACC, BWT, FWT and forgetting of one R matrix (one metric, one method)."""

    acc: float
    bwt: float
    fwt: float | None
    forgetting: float
    forgetting_per_task: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


def check_matrix(R: Matrix) -> int:
    """Return T after checking that R is a square T x T table of finite numbers, T >= 1."""
    T = len(R)
    if T == 0:
        raise ValueError("R is empty: at least one task is needed")
    for i, row in enumerate(R):
        if len(row) != T:
            raise ValueError(f"R must be square (T x T): row {i} has {len(row)} entries, expected {T}")
        for j, value in enumerate(row):
            if not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
                raise ValueError(f"R[{i}][{j}]={value!r} is not a finite number")
    return T


def acc(R: Matrix) -> float:
    """Eq. 6: mean over tasks of the final model's performance."""
    T = check_matrix(R)
    return sum(R[T - 1]) / T


def bwt(R: Matrix) -> float:
    """Eq. 8: mean change, on tasks 1..T-1, from right after learning them to the end (0 for T = 1)."""
    T = check_matrix(R)
    if T == 1:
        return 0.0
    return sum(R[T - 1][i] - R[i][i] for i in range(T - 1)) / (T - 1)


def fwt(R: Matrix, reference: Sequence[float]) -> float:
    """Eq. 7: mean over tasks 1..T-1 of R[i][i] - m_i, m = `reference` (0 for T = 1)."""
    T = check_matrix(R)
    if len(reference) != T:
        raise ValueError(f"reference has {len(reference)} entries, R has {T} tasks")
    if T == 1:
        return 0.0
    return sum(R[i][i] - reference[i] for i in range(T - 1)) / (T - 1)


def forgetting_per_task(R: Matrix, higher_is_better: bool) -> list[float]:
    """For each task i < T: how much worse the final model is on it than right after learning it."""
    T = check_matrix(R)
    sign = 1.0 if higher_is_better else -1.0
    return [sign * (R[i][i] - R[T - 1][i]) for i in range(T - 1)]


def summarize(
    R: Matrix, higher_is_better: bool, reference: Sequence[float] | None = None
) -> ContinualSummary:
    """All summaries of one matrix; FWT only when a reference m is given."""
    per_task = forgetting_per_task(R, higher_is_better)
    return ContinualSummary(
        acc=acc(R),
        bwt=bwt(R),
        fwt=None if reference is None else fwt(R, reference),
        forgetting=sum(per_task) / len(per_task) if per_task else 0.0,
        forgetting_per_task=per_task,
    )


def diagonal(R: Matrix) -> list[float]:
    """R[i][i]: each task right after learning it (the new-task performance)."""
    T = check_matrix(R)
    return [R[i][i] for i in range(T)]
