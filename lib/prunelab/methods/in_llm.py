"""In-LLM pruners: FastV, PDrop (PyramidDrop), SparseVLM, DART (methods-spec §2.8-2.11).

These methods drop visual tokens *inside* the language model, so they cannot be a function of a
:class:`~prunelab.methods.base.VisualContext`; they are driven by :class:`prunelab.models.decoder_edit.DecoderEditor`,
which calls, during prefill (batch 1):

* ``plan(n_layers, n_image, budget)`` -> :class:`Plan` (layers whose input the method reads / edits);
* ``start(prefill, embeds)`` before layer 0 -> ``state`` (``prefill`` = :class:`PrefillInfo`, the prompt's
  geometry and the budget; ``embeds`` = the LLM input embeddings, ``(1, L, D)``);
* ``request(state, layer_idx)`` -> :class:`Observe` at the input of each planned layer: what the method needs to
  see there;
* ``observe(state, seen)`` at the input of each ``plan.observe`` layer, then ``edit(state, seen)`` at each
  ``plan.edit`` layer -> :class:`LayerEdit` (which current visual tokens survive, and optional new tokens),
  applied to that layer and all later ones;
* ``describe(state)`` -> extra per-sample record fields.

Data flows one way: the engine computes exactly the tensors the :class:`Observe` asks for (attention rows and
keys recomputed from the decoder layer's own ``input_layernorm``, ``q_proj``, ``k_proj`` and RoPE, so no eager
attention is needed; the final norm of the hidden states; the visual rows) and hands the method ``seen``, a
:class:`LayerInput` of plain tensors and ints. The method never calls into the models layer
(``tests/test_dataflow.py`` traces it).

Budgets are absolute ``T`` (visual tokens out of ``N``). Because these methods keep all ``N`` tokens in the first
layers, the adapter reports the **equivalent token count** ``T_eq = sum_l n_l / n_layers`` (SparseVLM issues
#4/#10/#33) next to the nominal ``T``.

Layer schedules are given for the 32-layer Vicuna-7B in the sources and are **scaled to the model's depth**
(``round(l * n_layers / 32)``, made strictly increasing) so the same method runs on ToyLLaVA's 4 layers and the
tiny test models.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from prunelab.errors import BudgetError, CapabilityError, UnknownNameError
from prunelab.methods.base import Pruner, PruneResult, VisualContext, register
from prunelab.methods.clustering import cluster_and_merge

REFERENCE_DEPTH = 32  # Vicuna-7B, the depth the sources' layer indices refer to


@dataclass
class Plan:
    """Layers where the method observes and where it edits. On a layer in both, the engine observes the layer's
    input and then edits it (PDrop: rank and drop at the same layer), unless ``edit_first``: then it applies the edit
    decided from earlier scores and observes the edited input (SparseVLM, whose edit at layer l+1 uses layer l's
    scores, when l+1 is itself a sparse layer on a shallow decoder)."""

    observe: set[int] = field(default_factory=set)
    edit: set[int] = field(default_factory=set)
    edit_first: bool = False


# The interface types are defined here, on the methods side, so that the engine (models/) imports methods and
# never the reverse, and the method only ever receives plain data.
@dataclass(frozen=True)
class PrefillInfo:
    """The prompt and budget of one prefill, given to ``start`` (batch 1)."""

    budget: int  # visual tokens T
    n_layers: int  # decoder depth
    prompt_len: int  # tokens in the prompt, image placeholder expanded
    image_start: int  # prompt index of the first image token
    n_image: int  # image tokens N


@dataclass(frozen=True)
class Observe:
    """What a method needs to see at the input of one decoder layer; the engine computes only these.

    attention_rows: ``"last"`` (the last prompt token) or original prompt indices (tokens removed by an earlier
        edit are an error): their causal softmax attention over the current sequence at this layer.
    keys: this layer's keys after RoPE, heads concatenated.
    normed_hidden: the hidden states passed through the decoder's final norm (``model.norm``).
    visual_hidden: the hidden-state rows of the current visual tokens.
    """

    attention_rows: str | tuple[int, ...] | None = None
    keys: bool = False
    normed_hidden: bool = False
    visual_hidden: bool = False

    def __post_init__(self):
        rows = self.attention_rows
        if not (rows is None or rows == "last" or (isinstance(rows, tuple) and all(isinstance(r, int) for r in rows))):
            raise CapabilityError(
                f"Observe(attention_rows={rows!r}) is not understood; pass 'last' or a tuple of original prompt indices"
            )


@dataclass(frozen=True, eq=False)
class LayerInput:
    """What the engine hands the method at the input of decoder layer ``layer_idx``: positions always, tensors
    as requested by :class:`Observe` (``None`` where not requested). ``L`` = current prompt length."""

    layer_idx: int
    orig: torch.Tensor  # (L,) original prompt index of each current token (-1: a merged token)
    visual_pos: torch.Tensor  # current positions of the visual tokens (merged ones included), ascending
    text_after_pos: torch.Tensor  # current positions of the prompt tokens after the image, ascending
    attention: torch.Tensor | None = None  # (H, R, L) float32, rows as requested
    keys: torch.Tensor | None = None  # (L, n_kv_heads * head_dim)
    normed_hidden: torch.Tensor | None = None  # (L, D)
    visual_hidden: torch.Tensor | None = None  # (len(visual_pos), D)

    @property
    def n_prompt(self) -> int:
        return int(self.orig.numel())


@dataclass
class LayerEdit:
    """What an in-LLM method does at the input of one decoder layer.

    keep_visual: indices into the current visual tokens (``seen.visual_pos``) that survive, any order (the
        engine keeps sequence order). Text tokens always survive.
    extra: ``(M, D)`` new tokens (SparseVLM's recycled clusters) inserted right after the last kept visual token.
    """

    keep_visual: torch.Tensor
    extra: torch.Tensor | None = None


def scale_layers(layers, n_layers: int, lo: int = 0, hi: int | None = None) -> list[int]:
    """Scale 32-layer indices to ``n_layers`` and make them strictly increasing within ``lo..hi``."""
    hi = n_layers - 1 if hi is None else hi
    out: list[int] = []
    for layer in layers:
        v = int(round(layer * n_layers / REFERENCE_DEPTH))
        v = max(v, lo, (out[-1] + 1) if out else lo)
        out.append(v)
    if out and out[-1] > hi:
        raise BudgetError(
            f"the layer schedule {list(layers)} does not fit a {n_layers}-layer decoder; pass explicit layers"
        )
    return out


def _plan_at_k(method, n_layers: int) -> Plan:
    """Observe layer ``K-1``, edit at layer ``K`` (FastV's and DART's schedule); ``K`` must leave a layer to edit."""
    if method.k >= n_layers:
        raise BudgetError(
            f"{method.name} K={method.k} needs a decoder with more than {method.k} layers (has {n_layers}); "
            "pass a smaller k"
        )
    return Plan(observe={method.k - 1}, edit={method.k})


def _topk_sorted(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest scores (stable ties to the lower index), returned in ascending order."""
    order = torch.sort(scores.double(), descending=True, stable=True).indices[:k]
    return torch.sort(order).values


class InLLMPruner(Pruner):
    """Base of in-LLM methods (``stage = "in_llm"``). Run them with :class:`prunelab.models.adapter.LlavaAdapter`."""

    stage = "in_llm"
    family = "in_llm"
    requires = ()

    def select(self, ctx: VisualContext, budget: int) -> PruneResult:
        raise CapabilityError(
            f"{self.name} prunes inside the language model and cannot run on a VisualContext; "
            "run it with prunelab.models.adapter.LlavaAdapter(model).run(..., method=%r)" % self.name
        )

    def plan(self, n_layers: int, n_image: int, budget: int) -> Plan:  # pragma: no cover - abstract
        raise NotImplementedError

    def start(self, prefill: PrefillInfo, embeds: torch.Tensor) -> dict:
        return {"budget": prefill.budget, "n_image": prefill.n_image, "n_layers": prefill.n_layers}

    def request(self, state: dict, layer_idx: int) -> Observe:
        """What to compute at the input of planned layer ``layer_idx`` (default: positions only)."""
        return Observe()

    def observe(self, state: dict, seen: LayerInput) -> None:
        pass

    def edit(self, state: dict, seen: LayerInput) -> LayerEdit:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self, state: dict) -> dict:
        return {}


LAST_TOKEN = Observe(attention_rows="last")


def _last_token_scores(seen: LayerInput) -> torch.Tensor:
    """Head-mean attention of the last prompt token over the current visual tokens (``seen`` from ``LAST_TOKEN``)."""
    return seen.attention.mean(0)[0, seen.visual_pos]  # attention: (H, 1, L)


@register("FastV")
class FastV(InLLMPruner):
    """FastV: after layer ``K-1``, keep the ``T`` image tokens the last prompt token attends to most.

    Source: FastV (ECCV'24, arXiv 2403.06764), ``pkunlp-icler/FastV``
    ``src/transformers/src/transformers/models/llama/modeling_llama.py`` (FastV branch of ``LlamaModel.forward``:
    attention probabilities of layer ``K-1``, head mean, query = last token, image columns; top-R sorted; kept
    tokens keep their original position ids) and ``src/FastV/lmms-eval/fastv_kvcache.py`` (prune once at prefill,
    then decode with the KV cache). The code uses the last token's row although the paper says "average
    attention" (issues #14, #44); ``K=2`` is the README's setting and ``R = T`` gives the budget. Layers ``< K``
    still see all ``N`` tokens: ``T_eq = (K·N + (n_layers-K)·T) / n_layers``.
    """

    positions = "original"
    source = "arXiv 2403.06764; pkunlp-icler/FastV modeling_llama.py (FastV branch), fastv_kvcache.py"
    paper_name = "FastV"

    def __init__(self, k: int = 2):
        super().__init__(k=k)
        if isinstance(k, bool) or int(k) < 1:
            raise BudgetError(f"FastV needs K >= 1 (it reads layer K-1's attention), got K={k!r}; pass k=2")
        self.k = int(k)

    def plan(self, n_layers, n_image, budget):
        return _plan_at_k(self, n_layers)

    def request(self, state, layer_idx):
        return LAST_TOKEN if layer_idx == self.k - 1 else Observe()

    def observe(self, state, seen):
        state["scores"] = _last_token_scores(seen)

    def edit(self, state, seen):
        return LayerEdit(keep_visual=_topk_sorted(state["scores"], state["budget"]))

    def describe(self, state):
        return {"prune_layers": [self.k]}


@register("PDrop")
class PDrop(InLLMPruner):
    """PyramidDrop: at the start of each stage, rank the remaining image tokens by the last instruction token's
    attention and keep a geometric fraction ``λ^s`` of the original ``N``.

    Source: PyramidDrop (CVPR'25), ``Cooperx521/PyramidDrop`` ``llava/model/modeling_llama_pdrop.py::
    pdrop_forward/pdrop_rank_drop`` (at stage boundary ``l``: layer ``l``'s ``input_layernorm``, ``q_proj``,
    ``k_proj`` and RoPE on the current hidden states, causal softmax of the last token, head mean, image
    columns; keep the top ``⌊N·λ_s⌋`` sorted; positions renumbered contiguously) and
    ``scripts/v1_5/pdrop_eval/*.sh`` (``layer_list=[8,16,24]``, ``λ=[0.5,0.25,0.125]``).

    Budget matching [RECONSTRUCTION, as the sources give no budget rule]: ``layers`` default to the source's
    ``[8,16,24]`` scaled to the depth and the per-stage ratio ``λ`` (counts ``max(1, ⌊N·λ^s⌋)``) is the largest
    one whose ``T_eq`` does not exceed ``T``. When even ``λ -> 0`` cannot reach ``T`` (the first stage alone keeps
    all ``N`` tokens for ``l1`` layers), the boundaries move earlier to ``[l1, 2·l1, 3·l1]`` with the largest
    feasible ``l1``. Pass ``layers`` and ``ratio`` to pin both.
    """

    positions = "contiguous"
    source = "CVPR'25 PyramidDrop; Cooperx521/PyramidDrop llava/model/modeling_llama_pdrop.py::pdrop_forward"
    paper_name = "PDrop"

    def __init__(self, layers: tuple[int, ...] | None = None, ratio: float | None = None):
        super().__init__(layers=layers, ratio=ratio)
        self.layers = None if layers is None else tuple(int(x) for x in layers)
        if ratio is not None and not 0.0 < float(ratio) <= 1.0:
            raise BudgetError(f"PDrop ratio must be in (0, 1], got {ratio!r}; pass e.g. ratio=0.5")
        self.ratio = None if ratio is None else float(ratio)

    @staticmethod
    def counts(n: int, ratio: float, stages: int) -> list[int]:
        return [max(1, int(n * ratio**s)) for s in range(1, stages + 1)]

    @staticmethod
    def equivalent(n: int, layers: list[int], counts: list[int], n_layers: int) -> float:
        bounds = list(layers) + [n_layers]
        total = layers[0] * n
        for s, c in enumerate(counts):
            total += (bounds[s + 1] - bounds[s]) * c
        return total / n_layers

    def schedule(self, n_layers: int, n: int, budget: int) -> tuple[list[int], list[int]]:
        layers = list(self.layers) if self.layers is not None else scale_layers((8, 16, 24), n_layers, lo=1)
        if any(not 0 <= x < n_layers for x in layers) or sorted(set(layers)) != layers:
            raise BudgetError(f"PDrop layers {layers} must be increasing and within 0..{n_layers - 1}")
        if self.ratio is not None:
            return layers, self.counts(n, self.ratio, len(layers))
        floor = self.equivalent(n, layers, [1] * len(layers), n_layers)
        if floor > budget and self.layers is None:
            l1 = max(0, min(layers[0], int((budget * n_layers - n_layers) // max(1, n - 1))))
            step = max(1, l1)
            layers = [l1 + i * step for i in range(3)]
            layers = [x for x in layers if x < n_layers]
            layers = sorted(set(layers))
        lo, hi = 0.0, 1.0
        for _ in range(60):  # bisection on a monotone step function
            mid = (lo + hi) / 2
            if self.equivalent(n, layers, self.counts(n, mid, len(layers)), n_layers) <= budget:
                lo = mid
            else:
                hi = mid
        return layers, self.counts(n, lo, len(layers))

    def plan(self, n_layers, n_image, budget):
        self._layers, self._counts = self.schedule(n_layers, n_image, budget)
        return Plan(observe=set(self._layers), edit=set(self._layers))

    def start(self, prefill, embeds):
        st = super().start(prefill, embeds)
        st["layers"], st["counts"] = list(self._layers), list(self._counts)
        return st

    def request(self, state, layer_idx):
        return LAST_TOKEN  # observe and edit share each stage-boundary layer

    def observe(self, state, seen):
        state["scores"] = _last_token_scores(seen)

    def edit(self, state, seen):
        s = state["layers"].index(seen.layer_idx)
        k = min(state["counts"][s], int(state["scores"].numel()))
        return LayerEdit(keep_visual=_topk_sorted(state["scores"], k))

    def describe(self, state):
        return {"prune_layers": state["layers"], "schedule": state["counts"]}


@register("SparseVLM")
class SparseVLM(InLLMPruner):
    """SparseVLM v1.5: text raters score visual tokens at three layers; pruned tokens are partly recycled.

    Source: SparseVLM (ICML'25, arXiv 2410.04417), ``Gumpest/SparseVLMs`` branch ``v1.5``:
    ``llava/model/language_model/modelling_sparse_llama.py`` (``LlamaModel.forward`` sparse branch),
    ``score.py::attn_postprocess_topk``, ``utils.py::cluster_and_merge``.

    * Raters (before layer 0, on the input embeddings): relevance of each text token after the image =
      mean over visual tokens of ``softmax_text(visual · textᵀ)``; raters = text tokens above the mean relevance.
    * At each sparse layer ``l`` (``[2, 6, 15]`` scaled to the depth): causal attention of layer ``l`` recomputed
      from q/k, rows = raters, columns = current visual tokens, mean over heads and raters. The top ``k_l`` visual
      tokens survive into layer ``l+1`` (positions renumbered contiguously, as the source truncates its position
      tensor).
    * Recycling: of the pruned tokens, the top ``int(0.3·n_pruned)+1`` by score are clustered with DPC-kNN
      (:func:`prunelab.methods.clustering.cluster_and_merge`, Euclidean on the layer's hidden states) into
      ``int(n/10)+1`` cluster means, inserted right after the kept visual tokens. This adds tokens, so ``T_eq``
      exceeds the nominal budget (issue #33).
    * Schedules ``k_l`` (v1.5): 192 -> [300, 200, 110]; 128 -> [303, 110, 36]; 64 -> [66, 30, 17].
      [RECONSTRUCTION] other ``(N, T)``: the nearest table entry by ``T/N`` scaled by ``(T/N)/(T*/576)·N/576``.
    """

    positions = "contiguous"
    source = "arXiv 2410.04417; Gumpest/SparseVLMs@v1.5 modelling_sparse_llama.py, score.py, utils.py"
    paper_name = "SparseVLM"
    SCHEDULES = {192: (300, 200, 110), 128: (303, 110, 36), 64: (66, 30, 17)}

    def __init__(
        self,
        layers: tuple[int, ...] | None = None,
        schedule: tuple[int, ...] | None = None,
        recycle: bool = True,
        recycle_ratio: float = 0.3,
    ):
        super().__init__(layers=layers, schedule=schedule, recycle=recycle, recycle_ratio=recycle_ratio)
        self.layers = None if layers is None else tuple(int(x) for x in layers)
        self.schedule = None if schedule is None else tuple(int(x) for x in schedule)
        self.recycle = bool(recycle)
        self.recycle_ratio = float(recycle_ratio)

    def counts(self, n: int, budget: int) -> list[int]:
        if self.schedule is not None:
            return list(self.schedule)
        if n == 576 and budget in self.SCHEDULES:
            return list(self.SCHEDULES[budget])
        ref = min(self.SCHEDULES, key=lambda t: abs(t / 576 - budget / n))
        scale = (budget / n) / (ref / 576) * n / 576
        return [min(n, max(1, round(c * scale))) for c in self.SCHEDULES[ref]]

    def plan(self, n_layers, n_image, budget):
        self._layers = (
            list(self.layers) if self.layers is not None else scale_layers((2, 6, 15), n_layers, hi=n_layers - 2)
        )
        if self._layers[-1] + 1 >= n_layers:
            raise BudgetError(
                f"SparseVLM layers {self._layers} leave no layer to prune into (decoder has {n_layers}); pass smaller layers"
            )
        self._counts = self.counts(n_image, budget)
        if len(self._counts) != len(self._layers):
            raise BudgetError(
                f"SparseVLM needs one count per sparse layer, got {self._counts} for layers {self._layers}"
            )
        return Plan(observe=set(self._layers), edit={x + 1 for x in self._layers}, edit_first=True)

    def start(self, prefill, embeds):
        st = super().start(prefill, embeds)
        st["layers"], st["counts"], st["recycled"] = list(self._layers), list(self._counts), []
        e = embeds[0].float()
        s, n = prefill.image_start, prefill.n_image
        vis, txt = e[s : s + n], e[s + n :]
        if txt.shape[0] == 0:
            raise CapabilityError("SparseVLM needs instruction text after the image; put the question after <image>")
        rel = torch.softmax(vis @ txt.T, dim=-1).mean(0)
        raters = (rel > rel.mean()).nonzero().flatten()
        if raters.numel() == 0:  # all relevances equal
            raters = torch.arange(txt.shape[0])
        st["raters_orig"] = tuple((raters + s + n).tolist())  # original prompt indices
        st["n_raters"] = int(raters.numel())
        return st

    def request(self, state, layer_idx):
        rows = state["raters_orig"] if layer_idx in state["layers"] else None
        recycle = self.recycle and (layer_idx - 1) in state["layers"]  # the recycled clusters need the rows
        return Observe(attention_rows=rows, visual_hidden=recycle)

    def observe(self, state, seen):
        state["scores"] = seen.attention.mean(0)[:, seen.visual_pos].mean(0)  # attention: (H, R, L)

    def edit(self, state, seen):
        s = state["layers"].index(seen.layer_idx - 1)
        scores = state["scores"]
        n_cur = int(scores.numel())
        k = min(state["counts"][s], n_cur)
        order = torch.sort(scores.double(), descending=True, stable=True).indices
        keep = torch.sort(order[:k]).values
        extra = None
        pruned = order[k:]
        if self.recycle and pruned.numel() > 0:
            m = min(int(pruned.numel() * self.recycle_ratio) + 1, int(pruned.numel()))
            cand = pruned[:m]
            n_clusters = min(int(m / 10) + 1, m)
            rows = seen.visual_hidden[cand]
            extra, _ = cluster_and_merge(rows.float(), n_clusters)
            extra = extra.to(seen.visual_hidden.dtype)
            state["recycled"].append(n_clusters)
        else:
            state["recycled"].append(0)
        return LayerEdit(keep_visual=keep, extra=extra)

    def describe(self, state):
        return {
            "prune_layers": [x + 1 for x in state["layers"]],
            "schedule": state["counts"],
            "recycled_per_layer": state["recycled"],
            "n_raters": state["n_raters"],
        }


PIVOT_ORDERS = ("source", "norm")


def _check_pivot_order(order: str) -> None:
    if order not in PIVOT_ORDERS:
        raise UnknownNameError(f"unknown DART pivot_order {order!r}; pass 'source' (the fork's set order) or 'norm'")


def dart_select(
    states: torch.Tensor,
    key_l1: torch.Tensor,
    image_pos: torch.Tensor,
    text_pos: torch.Tensor,
    budget: int,
    pivot_image: int = 4,
    pivot_text: int = 4,
    match_budget: bool = False,
    pivot_order: str = "source",
) -> tuple[torch.Tensor, list[int], list[int]]:
    """DART's choice of image tokens (methods-spec §2.11); see :class:`DART`.

    ``states``: ``(L, D)`` layer ``K-1`` outputs after ``model.norm``; ``key_l1``: ``(L,)`` L1 norms of layer
    ``K-1``'s keys; ``image_pos`` / ``text_pos``: *absolute* sequence positions (ascending) of the image tokens
    and of the prompt tokens after the image. Returns ``(kept image-token indices 0..n-1 sorted, pivot positions in the
    order they were served, picks per served pivot)``.

    Scores and picks use the source's own calls (``torch.norm(p=1)`` in the caller, ``topk`` of the norms,
    ``-cosine_similarity(...).topk``), and with ``pivot_order="source"`` the pivots are served in the order
    of ``list(set(image pivots + text pivots))`` over absolute positions, as ``get_retained_image_token`` does
    (CPython's order for a set of small ints: deterministic, by value modulo the table size, so it depends on
    where the image sits in the prompt). The candidates are likewise ``list()`` of the shrinking set of free
    image positions. ``pivot_order="norm"``: image pivots by descending norm, then text pivots by descending norm
    (this library's earlier order; with it the kept sets equal the earlier code's, 60 of 60 on the tiny model,
    and could differ only on exactly tied norms or similarities, which the earlier code broke by index).
    """
    _check_pivot_order(pivot_order)
    n = int(image_pos.numel())
    n_pi = min(pivot_image, n, budget)
    n_pt = min(pivot_text, int(text_pos.numel()))
    img_piv = image_pos[key_l1[image_pos].topk(n_pi).indices].tolist()
    txt_piv = text_pos[key_l1[text_pos].topk(n_pt).indices].tolist() if n_pt else []
    served = list(set(img_piv + txt_piv)) if pivot_order == "source" else img_piv + txt_piv
    n_piv = len(served)
    if match_budget:
        rest = max(0, budget - n_pi)
        picks = [rest // n_piv + (1 if j < rest % n_piv else 0) for j in range(n_piv)]
    else:
        picks = [budget // n_piv] * n_piv
    free = set(image_pos.tolist()) - set(img_piv)
    kept = list(img_piv)
    for pivot, m in zip(served, picks):
        candidates = list(free)
        m = min(m, len(candidates))
        if m <= 0:
            continue
        dissim = -F.cosine_similarity(states[pivot], states[candidates], dim=-1)
        chosen = [candidates[i] for i in dissim.topk(m).indices.tolist()]
        kept += chosen
        free.difference_update(chosen)
    keep = torch.searchsorted(image_pos, torch.tensor(sorted(kept), dtype=torch.long, device=image_pos.device))
    return keep, served, picks


@register("DART")
class DART(InLLMPruner):
    """DART: keep image tokens that are *least* duplicated with respect to a few pivot tokens.

    Source: DART (arXiv 2502.11494), fork ``xqy1111111/DART`` @ ``d6a5af6`` of ``ZichenWen1/DART``
    ``llava/model/language_model/modeling_llama_self.py::LlamaModel.forward`` (lines 337-359) and
    ``::get_retained_image_token`` (lines 397-449); ``scripts/v1_5/eval/mme.sh``. At the input of layer ``K``
    (default 2), with :func:`dart_select`:

    * pivots: the ``pivot_image`` image tokens and ``pivot_text`` text tokens (after the image) with the largest
      L1 norm of their layer ``K-1`` keys (after RoPE, heads concatenated);
    * for each pivot, in turn, the ``picks`` not-yet-chosen, non-pivot image tokens with the **lowest** cosine
      similarity to the pivot in the space of layer ``K-1``'s output passed through the final ``model.norm``;
    * kept = image pivots ∪ picks (text pivots are not added), original position ids.

    ``picks = T // (pivot_image + pivot_text)`` (the source's ``max_num_trunction // 8``), so the kept count is
    ``4 + 8·(T // 8)`` (132 for T=128), reported as ``n_kept``; ``match_budget=True`` instead spreads
    ``T - pivot_image`` picks over the pivots (exactly ``T``).

    ``pivot_order`` — the order pivots pick in, which decides the kept set since each pick removes candidates
    from the later pivots: ``"source"`` (default) iterates ``list(set(...))`` of the pivots' absolute sequence
    positions, as the fork does, so the order (and the kept set) depends on the image's offset in the prompt
    (the original LLaVA prompt puts it at 35, llava-hf's chat format at 5: same rule, other orders);
    ``"norm"`` serves image pivots by descending norm, then text pivots (the earlier default here: its kept
    sets never matched the fork's, neither in the issue-13 check on LLaVA, Jaccard about 0.75, nor on the tiny
    test model, 0 of 30, where ``"source"`` matches 30 of 30; ``tests/test_in_llm.py`` checks it against a
    transcription of the fork).
    """

    positions = "original"
    source = "arXiv 2502.11494; xqy1111111/DART modeling_llama_self.py::get_retained_image_token"

    def __init__(
        self,
        k: int = 2,
        pivot_image: int = 4,
        pivot_text: int = 4,
        match_budget: bool = False,
        pivot_order: str = "source",
    ):
        super().__init__(
            k=k, pivot_image=pivot_image, pivot_text=pivot_text, match_budget=match_budget, pivot_order=pivot_order
        )
        if int(k) < 1:
            raise BudgetError(f"DART needs K >= 1 (it reads layer K-1's keys), got K={k!r}; pass k=2")
        _check_pivot_order(pivot_order)
        self.k, self.pivot_image, self.pivot_text = int(k), int(pivot_image), int(pivot_text)
        self.match_budget = bool(match_budget)
        self.pivot_order = pivot_order

    def plan(self, n_layers, n_image, budget):
        return _plan_at_k(self, n_layers)

    def request(self, state, layer_idx):
        return Observe(keys=True) if layer_idx == self.k - 1 else Observe(normed_hidden=True)

    def observe(self, state, seen):
        state["key_l1"] = torch.norm(seen.keys.float(), p=1, dim=-1)

    def edit(self, state, seen):
        # DART edits first, so current positions are the absolute prompt positions the fork's set holds.
        assert torch.equal(seen.orig.cpu(), torch.arange(seen.n_prompt))
        states = seen.normed_hidden.float()
        keep, served, picks = dart_select(
            states,
            state["key_l1"],
            seen.visual_pos,
            seen.text_after_pos,
            state["budget"],
            self.pivot_image,
            self.pivot_text,
            self.match_budget,
            self.pivot_order,
        )
        state["picks"], state["pivots"] = picks, served
        return LayerEdit(keep_visual=keep)

    def describe(self, state):
        return {"prune_layers": [self.k], "picks_per_pivot": state.get("picks"), "pivot_positions": state.get("pivots")}


__all__ = [
    "InLLMPruner",
    "Plan",
    "PrefillInfo",
    "Observe",
    "LayerInput",
    "LayerEdit",
    "FastV",
    "PDrop",
    "SparseVLM",
    "DART",
    "dart_select",
    "scale_layers",
]
