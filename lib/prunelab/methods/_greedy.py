"""Greedy max-min diversity selection (farthest-point sampling), shared by DivPrune, FPS and the mixture.

DivPrune (``vbdi/divprune``, ``LLaVA/llava/model/llava_arch.py::DivPrune``) solves the Max-Min Diversity
Problem greedily: after a first pick, repeatedly add the token whose minimum distance to the selected set is
largest. The reference recomputes ``min`` over the selected columns every step (O(T²·N)); here a running
min-distance vector is updated with the newest pick only (O(T·N)), which selects exactly the same tokens
(ties broken towards the lowest index, as ``torch.argmax`` does in both). ``maxmin_greedy_textbook`` keeps
the reference formulation for the equivalence test.
"""

from __future__ import annotations

import torch

from prunelab.errors import UnknownNameError


def cosine_distance_matrix(x: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine distance ``1 - cos`` of the rows of ``x`` (float32, as DivPrune's
    ``pairwise_cosine_similarity``), shape ``(N, N)``."""
    xf = x.float()
    xn = xf / xf.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return 1.0 - xn @ xn.T


def l2_distance_matrix(x: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    return torch.cdist(xf, xf)


def distance_matrix(x: torch.Tensor, metric: str = "cosine") -> torch.Tensor:
    if metric == "cosine":
        return cosine_distance_matrix(x)
    if metric == "l2":
        return l2_distance_matrix(x)
    raise UnknownNameError(f"unknown distance metric {metric!r}; known: cosine, l2")


def divprune_first_pick(dist: torch.Tensor) -> int:
    """DivPrune's first pick: the token whose nearest *other* token is farthest (second-smallest value of
    its column, the smallest being its zero self-distance)."""
    d = dist.clone()
    d.fill_diagonal_(float("inf"))
    return int(torch.argmax(d.min(dim=0).values))


def maxmin_greedy(dist: torch.Tensor, k: int, seeds: list[int] | torch.Tensor) -> torch.Tensor:
    """Extend the selected set ``seeds`` to ``k`` tokens by greedy max-min distance (incremental, O(k·N)).

    Returns the selected indices in *selection order* (seeds first). ``dist`` is a symmetric ``(N, N)``
    distance matrix. Already-selected tokens are never re-picked, even with duplicate features.
    """
    n = dist.shape[0]
    seeds = [int(s) for s in torch.as_tensor(seeds, dtype=torch.long).tolist()]
    if not seeds:
        raise ValueError("maxmin_greedy needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError("seeds must be distinct")
    if not 0 < k <= n:
        raise ValueError(f"k must be in 1..{n}")
    selected = list(seeds[:k])
    chosen = torch.zeros(n, dtype=torch.bool, device=dist.device)
    chosen[selected] = True
    mind = dist[selected].min(dim=0).values.clone()
    while len(selected) < k:
        cand = mind.masked_fill(chosen, float("-inf"))
        nxt = int(torch.argmax(cand))
        selected.append(nxt)
        chosen[nxt] = True
        mind = torch.minimum(mind, dist[nxt])
    return torch.tensor(selected, dtype=torch.long)


def maxmin_greedy_textbook(dist: torch.Tensor, k: int, seeds: list[int]) -> torch.Tensor:
    """Reference O(k²·N) formulation (min over all selected columns recomputed each step). Test oracle only."""
    n = dist.shape[0]
    selected = [int(s) for s in seeds][:k]
    while len(selected) < k:
        sub = dist[:, selected]  # (N, |S|)
        mind = sub.min(dim=1).values
        mind[selected] = float("-inf")
        selected.append(int(torch.argmax(mind)))
        assert len(set(selected)) == len(selected) or n < k
    return torch.tensor(selected, dtype=torch.long)
