"""DPC-kNN clustering (density peaks with k-nearest-neighbour density) and cluster-mean merging.

Source: SparseVLM (``Gumpest/SparseVLMs``, branch ``v1.5``, ``llava/model/language_model/utils.py::
cluster_and_merge``), which follows the DPC-kNN step of TCFormer / "density peaks clustering" (Rodriguez & Laio,
Science 2014, with Du et al.'s kNN density). Used here by the BAT adaptation (methods-spec §2.12) and by
SparseVLM's token recycling (§2.10). Written from the description, not copied.

Algorithm, for ``M`` tokens ``x`` of width ``C`` and ``n_clusters`` centres:

1. ``d_ij = ||x_i - x_j||_2 / sqrt(C)`` (Euclidean, scaled by the width as in SparseVLM).
2. Local density ``rho_i = exp(-mean(d_ij^2 over the k nearest j))``; the ``k`` nearest *include* ``i`` itself
   (its zero self-distance is among the ``k`` smallest, as ``torch.topk(largest=False)`` gives in the source).
   SparseVLM uses ``k = n_clusters``; here ``k`` is a parameter with that default.
3. ``delta_i`` = distance to the nearest token of higher density; the densest token gets the largest distance
   in the whole matrix.
4. ``score_i = rho_i * delta_i``; the ``n_clusters`` highest scores are the centres.
5. Every token joins its nearest centre; a centre always joins its own cluster.

Deliberate deviation: SparseVLM adds ``1e-6 * rand`` to the densities to break ties at random. Here ties are
broken deterministically instead: among equal densities the lower index counts as denser, equal scores prefer
the lower index, and equal centre distances prefer the centre with the higher score. Merged tokens are exact
cluster means (the source divides by ``count + 1e-6``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunelab.errors import BudgetError


@dataclass
class DPCResult:
    """Output of :func:`dpc_knn`.

    centers: ``(K,)`` indices of the centre tokens, in descending score order (cluster ``c`` is
        ``centers[c]``).
    assignment: ``(M,)`` cluster id in ``0..K-1`` of every token.
    density, delta, score: ``(M,)`` float64 per-token quantities of steps 2-4.
    """

    centers: torch.Tensor
    assignment: torch.Tensor
    density: torch.Tensor
    delta: torch.Tensor
    score: torch.Tensor

    @property
    def n_clusters(self) -> int:
        return int(self.centers.numel())

    def sizes(self) -> torch.Tensor:
        """``(K,)`` number of members of each cluster (centres included)."""
        return torch.bincount(self.assignment, minlength=self.n_clusters)


def _stable_desc(v: torch.Tensor) -> torch.Tensor:
    # Ties go to the lower index, independent of the sort kernel.
    return torch.sort(v, descending=True, stable=True).indices


def dpc_knn(x: torch.Tensor, n_clusters: int, k: int | None = None) -> DPCResult:
    """Cluster the rows of ``x`` ``(M, C)`` into ``n_clusters`` groups with DPC-kNN (see module docstring).

    ``k`` (default ``n_clusters``, as in SparseVLM) is the neighbourhood size of the density, clipped to ``M``.
    Computed in float64. Deterministic. Raises :class:`BudgetError` unless ``1 <= n_clusters <= M``.
    """
    if x.ndim != 2:
        raise ValueError(f"dpc_knn needs a token matrix (M, C), got shape {tuple(x.shape)}")
    m, c = x.shape
    if isinstance(n_clusters, bool) or not 1 <= int(n_clusters) <= m:
        raise BudgetError(
            f"n_clusters={n_clusters!r} is outside 1..{m} (there are {m} tokens); choose 1 <= n_clusters <= {m}"
        )
    n_clusters = int(n_clusters)
    if k is None:
        k = n_clusters
    if isinstance(k, bool) or int(k) < 1:
        raise BudgetError(f"k={k!r} must be a positive number of neighbours; pass k >= 1 or leave it None")
    k = min(int(k), m)

    xf = x.detach().to(torch.float64)
    dist = torch.cdist(xf, xf) / (c**0.5)
    dist.fill_diagonal_(0.0)  # cdist can leave tiny non-zeros on the diagonal

    knn = torch.topk(dist, k=k, dim=1, largest=False).values
    density = torch.exp(-(knn**2).mean(dim=1))

    # rank[i] = position of i in "denser first" order; j is denser than i iff rank[j] < rank[i].
    order = _stable_desc(density)
    rank = torch.empty(m, dtype=torch.long)
    rank[order] = torch.arange(m)
    denser = rank[None, :] < rank[:, None]  # denser[i, j]: j denser than i
    dmax = dist.max()
    delta = torch.where(denser, dist, dmax).min(dim=1).values
    delta[order[0]] = dmax  # the densest token has no denser neighbour

    score = density * delta
    centers = _stable_desc(score)[:n_clusters]
    # argmin returns the first minimum, i.e. the higher-scoring centre on ties.
    assignment = dist[:, centers].argmin(dim=1)
    assignment[centers] = torch.arange(n_clusters)
    return DPCResult(centers=centers, assignment=assignment, density=density, delta=delta, score=score)


def merge_clusters(x: torch.Tensor, assignment: torch.Tensor, n_clusters: int) -> torch.Tensor:
    """Mean of the rows of ``x`` in each cluster: ``(n_clusters, C)`` in ``x``'s dtype (averaged in float64).

    Every cluster must be non-empty (true for :func:`dpc_knn` output, whose centres belong to their own cluster).
    """
    assignment = torch.as_tensor(assignment, dtype=torch.long)
    xf = x.detach().to(torch.float64)
    sums = torch.zeros(n_clusters, x.shape[1], dtype=torch.float64).index_add_(0, assignment, xf)
    counts = torch.bincount(assignment, minlength=n_clusters)
    if (counts == 0).any():
        raise ValueError("merge_clusters got an empty cluster; every cluster id 0..n_clusters-1 needs a member")
    return (sums / counts[:, None].to(torch.float64)).to(x.dtype)


def cluster_and_merge(x: torch.Tensor, n_clusters: int, k: int | None = None) -> tuple[torch.Tensor, DPCResult]:
    """DPC-kNN cluster the rows of ``x`` and average each cluster (SparseVLM ``cluster_and_merge``).

    Returns ``(merged, result)``: ``merged`` is ``(n_clusters, C)`` with row ``c`` the mean of cluster ``c``
    (ordered like ``result.centers``, i.e. by descending centre score, as the source returns them).
    """
    res = dpc_knn(x, n_clusters, k)
    return merge_clusters(x, res.assignment, n_clusters), res


__all__ = ["DPCResult", "dpc_knn", "merge_clusters", "cluster_and_merge"]
