"""Fact-to-image retrieval: mean average precision (MAP), the MAS paper's fact learning metric.

For each query fact q, the images are ranked by the Euclidean distance of their predicted
embedding [S | P | O] to the fact's language embedding [e(S) | e(P) | e(O)], nearest first; the
images showing q are the relevant ones, and

    AP(q) = 1/|rel(q)| sum_{k : image k relevant} precision@rank(k),     MAP = mean_q AP(q).

Per task, the queries are the task's facts and the images the task's test images only (the
paper's protocol); overall MAP ranks every test image for every fact.

Ties (equal distances) are broken pessimistically: among images at the same distance the
non-relevant ones rank first. A model whose outputs are constant thus scores the lowest AP its
ranking allows, not a lucky order; for distinct distances the order is the plain one.
"""

from __future__ import annotations

import torch


def average_precisions(dist: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """AP of each query: `dist` (Q, N) distances, `relevant` (Q, N) bool. A query with no relevant
    image is an error (its AP is undefined)."""
    if dist.shape != relevant.shape or dist.dim() != 2:
        raise ValueError(f"dist {tuple(dist.shape)} and relevant {tuple(relevant.shape)} must be (Q, N)")
    counts = relevant.sum(1)
    if bool((counts == 0).any()):
        raise ValueError(f"{int((counts == 0).sum())} queries have no relevant image: AP is undefined")
    rel = relevant.to(torch.int8)
    by_rel = torch.sort(rel, dim=1, stable=True).indices  # non-relevant first: the tie rule
    order = torch.sort(dist.gather(1, by_rel), dim=1, stable=True).indices
    ranked = rel.gather(1, by_rel).gather(1, order).double()  # (Q, N) relevance in rank order
    hits = ranked.cumsum(1)
    ranks = torch.arange(1, dist.shape[1] + 1, dtype=torch.float64)
    return (ranked * hits / ranks).sum(1) / counts.double()


def retrieval_map(
    embeddings: torch.Tensor,
    image_facts: torch.Tensor,
    fact_targets: torch.Tensor,
    query_facts: torch.Tensor,
) -> float:
    """MAP of retrieving, for each fact index in `query_facts`, the images (predicted `embeddings`
    (N, E), their facts `image_facts` (N,)) by distance to `fact_targets[q]` (num_facts, E)."""
    dist = torch.cdist(fact_targets[query_facts].double(), embeddings.double())  # (Q, N)
    relevant = image_facts.unsqueeze(0) == query_facts.unsqueeze(1)
    return float(average_precisions(dist, relevant).mean())
