"""Training ToyLLaVA-S (:mod:`prunelab.models.toyllava_s`) with the LLaVA recipe, plus a cheap alignment stage.

Stages (all resumable from the checkpoint of the last finished step; batches are a function of the seed and the
step, so a resumed run equals an uninterrupted one):

0. ``align`` (a documented deviation from LLaVA; toy-model-probe.md, option 3): the projector alone is fitted so
   that each patch token lands near the LM's input embedding of the word for what the patch shows (the COCO
   category of the object covering it, else the word " background"): cosine-softmax cross-entropy over those
   class vectors plus a penalty pulling the token norm to the median embedding norm. It needs no LM forward
   (thousands of scenes a minute) and replaces the ~20k LM-forward sequences that grounding took from a random
   projector (12-14 CPU hours at 2.2-2.5 s per sequence, probe 2). Pruning-relevant consequence: object patches
   start out word-like; stages 1-2 then train every token against the LM's own loss.
1. ``pretrain`` (LLaVA stage 1): projector only, LM frozen, loss on the description.
2. ``instruct`` (LLaVA stage 2): projector + LoRA on every decoder projection, multi-turn dialogues: a
   description, then yes/no (POPE-style), counting and where questions; loss on the answers only.

No stage trains on pruned token subsets (the primary model must become robust the way LLaVA is).
CLI: ``python -m prunelab.train.toyllava_s {align,pretrain,instruct,package,eval}`` (``make toy-model-s``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prunelab.errors import PrunelabError
from prunelab.models import smollm2, toyllava_s as S
from prunelab.models.toyllava_s import LORA_TARGETS, lora_key
from prunelab.paths import atomic_write, cache_dir
from prunelab.train import toytrain as T
from prunelab.train.toyllava_s_check import validate, write_card
from prunelab.train.toyllava_s_data import (
    Dialogues,
    class_vectors,
    class_words,
    embed,
    load_split,
    make_batch,
    patch_labels,
    prefix_store,
)

N_TOK, FEAT_DIM, LM_DIM = 576, 384, 576


@dataclass
class Config:
    """Everything that determines a ToyLLaVA-S run (stored in checkpoints and the model card)."""

    seed: int = 0
    train_split: str = "train"
    n_train: int = 2000
    n_val: int = 150
    # stage 0
    align_epochs: int = 3
    align_batch: int = 32
    align_lr: float = 2e-3
    align_tau: float = 0.1
    align_norm_weight: float = 0.1
    # stages 1-2
    batch_size: int = 4
    pretrain_steps: int = 30
    pretrain_lr: float = 1e-3
    instruct_steps: int = 1500
    instruct_lr_projector: float = 2e-4
    instruct_lr_lora: float = 3e-4
    warmup: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    lora_rank: int = 16
    lora_alpha: float = 32.0
    qa_turns: int = 4
    count_turns: int = 1
    where_turns: int = 1
    bf16: bool = True
    ckpt_every: int = 25
    threads: int = 1

    @property
    def lora_scale(self) -> float:
        return self.lora_alpha / self.lora_rank

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def run_dir(cfg: Config) -> Path:
    return cache_dir("toyllava-s", f"run-s{cfg.seed}")


STAGES = ("align", "pretrain", "instruct")


def resume_dir() -> Path:
    """Committed resume checkpoints (``data/models/toyllava-s/resume``): a CPU run spans several sessions."""
    return S.default_dir() / "resume"


def _ckpt_progress(path: Path) -> tuple[int, int]:
    st = load_ckpt(path)
    if st is None:
        return (-1, -1)
    return (STAGES.index(st["meta"].get("stage", "align")), int(st["meta"].get("step", 0)))


def seed_run_dir(cfg: Config, src: Path | None = None, log=print) -> bool:
    """Copy the committed checkpoints into the run folder when they are further along than the cached ones (a
    fresh machine resumes where the last session stopped). Returns whether anything was copied."""
    import shutil

    src = Path(src) if src is not None else resume_dir()
    rd = run_dir(cfg)
    ahead = [
        st for st in STAGES if _ckpt_progress(src / f"{st}.safetensors") > _ckpt_progress(rd / f"{st}.safetensors")
    ]
    if not ahead:
        return False
    committed = load_ckpt(src / f"{ahead[-1]}.safetensors")["meta"].get("config", {})
    if committed and committed != cfg.to_json():
        raise PrunelabError(
            f"the committed checkpoints in {src} were trained with another configuration "
            f"(differs in {sorted(k for k in committed if committed[k] != cfg.to_json().get(k))}); "
            "pass the same --set values or delete them to start over"
        )
    for st in ahead:
        tmp = rd / f".{st}.copy.part"
        shutil.copyfile(src / f"{st}.safetensors", tmp)
        tmp.replace(rd / f"{st}.safetensors")
    log(f"[resume] copied {', '.join(ahead)} from {src}")
    return True


def publish_resume(cfg: Config, dst: Path | None = None) -> Path:
    """Copy the run's checkpoints into ``data/models/toyllava-s/resume`` (to be committed)."""
    import shutil

    dst = Path(dst) if dst is not None else resume_dir()
    dst.mkdir(parents=True, exist_ok=True)
    for st in STAGES:
        f = run_dir(cfg) / f"{st}.safetensors"
        if f.is_file():
            tmp = dst / f".{st}.part"
            shutil.copyfile(f, tmp)
            tmp.replace(dst / f"{st}.safetensors")
    return dst


# ----------------------------------------------------------------------------------------------------------
# ----------------------------------------------------------------------------------------------------------
# Trainable parts: standardised projector and LoRA
# ----------------------------------------------------------------------------------------------------------


def _nn():
    import torch

    return torch.nn


class Projector(_nn().Module):
    """LLaVA's 2-layer GELU projector on per-channel standardised features (the affine map is folded into
    ``linear_1`` by :meth:`export`, so the package is a plain ``LlavaMultiModalProjector``)."""

    def __init__(self, mean: np.ndarray, std: np.ndarray):
        import torch

        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.linear_1 = torch.nn.Linear(FEAT_DIM, LM_DIM)
        self.act = torch.nn.GELU()
        self.linear_2 = torch.nn.Linear(LM_DIM, LM_DIM)

    def forward(self, feats):
        return self.linear_2(self.act(self.linear_1((feats - self.mean) / self.std)))

    def export(self) -> dict:
        w1, b1 = self.linear_1.weight.detach(), self.linear_1.bias.detach()
        w = w1 / self.std[None, :]
        b = b1 - (w1 * (self.mean / self.std)[None, :]).sum(1)
        return {
            "linear_1.weight": w.clone(),
            "linear_1.bias": b.clone(),
            "linear_2.weight": self.linear_2.weight.detach().clone(),
            "linear_2.bias": self.linear_2.bias.detach().clone(),
        }

    def unfold(self, exported: dict) -> dict:
        """The parameters whose :meth:`export` is ``exported`` (this projector's standardisation), in fp32."""
        std, mean = self.std.double(), self.mean.double()
        w1 = exported["linear_1.weight"].double() * std[None, :]
        b1 = exported["linear_1.bias"].double() + (w1 * (mean / std)[None, :]).sum(1)
        return {
            "linear_1.weight": w1.float(),
            "linear_1.bias": b1.float(),
            "linear_2.weight": exported["linear_2.weight"].float(),
            "linear_2.bias": exported["linear_2.bias"].float(),
        }


class LoRALinear(_nn().Module):
    """``base(x) + scale * B(A(x))`` around a frozen ``nn.Linear`` (Hu et al. 2021; A Kaiming-uniform, B zero, as
    peft initialises them), for training only: the package merges ``scale * B @ A`` into the weight."""

    def __init__(self, base, rank: int, scale: float, seed: int):
        import torch

        super().__init__()
        self.base, self.scale = base, scale
        g = torch.Generator().manual_seed(seed)
        bound = 1.0 / math.sqrt(base.in_features)
        self.A = torch.nn.Parameter((torch.rand(rank, base.in_features, generator=g) * 2 - 1) * bound)
        self.B = torch.nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x):
        return self.base(x) + self.scale * ((x @ self.A.t().to(x.dtype)) @ self.B.t().to(x.dtype))


def add_lora(lm, cfg: Config) -> dict:
    """Wrap every target projection of ``lm`` in :class:`LoRALinear` (training copy only); returns name -> module."""
    out = {}
    for i, layer in enumerate(lm.model.layers):
        for name in LORA_TARGETS:
            parent = layer.self_attn if hasattr(layer.self_attn, name) else layer.mlp
            mod = LoRALinear(
                getattr(parent, name),
                cfg.lora_rank,
                cfg.lora_scale,
                seed=cfg.seed * 1000 + i * 10 + LORA_TARGETS.index(name),
            )
            setattr(parent, name, mod)
            out[lora_key(i, name, "")[:-1]] = mod
    return out


def export_lora(mods: dict) -> dict:
    return {f"{k}.{p}": getattr(m, p).detach().clone() for k, m in mods.items() for p in ("A", "B")}


def load_lora(mods: dict, state: dict) -> None:
    import torch

    with torch.no_grad():
        for k, m in mods.items():
            m.A.copy_(state[f"{k}.A"])
            m.B.copy_(state[f"{k}.B"])


# ----------------------------------------------------------------------------------------------------------
# Stage 0: alignment
# ----------------------------------------------------------------------------------------------------------


def base_parts(cfg: Config, store):
    """The frozen SmolLM2 (+ ``<image>`` row), its tokenizer and a fresh standardised projector (seeded)."""
    import torch

    lm = smollm2.load_lm()
    S.add_image_row(lm)
    lm.requires_grad_(False)
    tok = S.build_tokenizer()
    mean, std = T.feature_stats(store, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    proj = Projector(mean, std)
    return lm, tok, proj


def align(cfg: Config, records, store, val, lm, tok, proj, log=print) -> dict:
    """Stage 0 (see the module docstring). Returns per-epoch ``{loss, val_accuracy}``; deterministic."""
    import torch

    words = class_words()
    class_of = {w: i for i, w in enumerate(words)}
    C = class_vectors(lm, tok, words)
    Cn = torch.nn.functional.normalize(C, dim=-1)
    norm_target = float(lm.get_input_embeddings().weight.detach().norm(dim=1).median())
    labels = np.stack([patch_labels(r, len(words), class_of) for r in records])
    v_recs, v_store = val
    v_lab = np.stack([patch_labels(r, len(words), class_of) for r in v_recs])
    opt = torch.optim.AdamW(proj.parameters(), lr=cfg.align_lr, weight_decay=0.0)
    # background patches outnumber object patches ~6:1; weigh classes so objects are not ignored
    counts = np.bincount(labels.ravel(), minlength=len(words) + 1).astype(np.float64)
    w = torch.tensor(np.where(counts > 0, (counts.sum() / np.maximum(counts, 1)) ** 0.5, 0.0), dtype=torch.float32)
    w = w / w[counts > 0].mean()
    hist = []
    n = len(records)
    steps_per_epoch = math.ceil(n / cfg.align_batch)
    total = cfg.align_epochs * steps_per_epoch
    step = 0
    for epoch in range(cfg.align_epochs):
        perm = np.random.default_rng([cfg.seed, epoch, 11]).permutation(n)
        tot = 0.0
        for s in range(steps_per_epoch):
            idx = np.sort(perm[s * cfg.align_batch : (s + 1) * cfg.align_batch])
            x = torch.from_numpy(np.asarray(store.features[idx], dtype=np.float32))
            y = torch.from_numpy(labels[idx])
            for g in opt.param_groups:
                g["lr"] = cfg.align_lr * 0.5 * (1 + math.cos(math.pi * step / total))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                p = proj(x)
            p = p.float()
            logits = torch.nn.functional.normalize(p, dim=-1) @ Cn.t() / cfg.align_tau
            ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), weight=w)
            nrm = ((p.norm(dim=-1) - norm_target) ** 2).mean()
            loss = ce + cfg.align_norm_weight * nrm
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss.detach())
            step += 1
        acc = align_accuracy(proj, v_store, v_lab, Cn)
        hist.append({"epoch": epoch + 1, "loss": tot / steps_per_epoch, **acc})
        log(
            f"[align] epoch {epoch + 1}: loss {tot / steps_per_epoch:.3f} val object-patch acc {acc['object_acc']:.3f} "
            f"background acc {acc['background_acc']:.3f} norm {acc['mean_norm']:.2f} (target {norm_target:.2f})"
        )
    return {"history": hist, "norm_target": norm_target}


def align_accuracy(proj, store, labels: np.ndarray, Cn) -> dict:
    import torch

    with torch.no_grad():
        p = proj(torch.from_numpy(np.asarray(store.features[: len(labels)], dtype=np.float32)))
        pred = (torch.nn.functional.normalize(p, dim=-1) @ Cn.t()).argmax(-1).numpy()
    bg = labels == Cn.shape[0] - 1
    return {
        "object_acc": float((pred == labels)[~bg].mean()),
        "background_acc": float((pred == labels)[bg].mean()),
        "mean_norm": float(p.norm(dim=-1).mean()),
    }


# ----------------------------------------------------------------------------------------------------------
# Stages 1-2: LM loss, resumable
# ----------------------------------------------------------------------------------------------------------


def _lr(base: float, cfg: Config, step: int, total: int, restarts: tuple = ()) -> float:
    """Linear warm-up, then cosine to ``min_lr_ratio``; after a warm restart (fresh Adam moments at a step in
    ``restarts``) the rate is warmed up again over ``cfg.warmup`` steps so the first moment-free updates stay small."""
    if step < cfg.warmup:
        return base * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, total - cfg.warmup)
    lr = base * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))
    since = [step - r for r in restarts if r <= step]
    return lr * min(1.0, (min(since) + 1) / cfg.warmup) if since else lr


def warm_start(cfg: Config, proj, src: Path | None = None, log=print) -> bool:
    """Start stage 2 from a packaged folder's deltas when the run folder has no stage-2 checkpoint (a fresh machine
    without the ~74 MB resume state); returns whether it did. Not bit-identical to an uninterrupted run: fp16 LoRA,
    unfolded projector, zero Adam moments; the step goes into ``restarts`` and the rate is re-warmed (:func:`_lr`)."""
    import torch

    i_path = run_dir(cfg) / "instruct.safetensors"
    if load_ckpt(i_path) is not None:
        return False
    try:
        p_sd, lora_sd, rec = S.read_deltas(src)
    except PrunelabError:
        return False
    if rec.get("stage") != "instruct" or rec.get("config") != cfg.to_json():
        return False
    tensors = {
        **{f"projector.{k}": v for k, v in proj.unfold(p_sd).items()},
        **{k: v.to(torch.float32) for k, v in lora_sd.items()},
    }
    hist = rec.get("history", {})
    step = int(rec["step"])
    meta = {
        "stage": "instruct",
        "step": step,
        "history": hist.get("instruct", []),
        "config": cfg.to_json(),
        "restarts": [*rec.get("restarts", []), step],
        "prior_history": {k: hist.get(k, []) for k in ("align", "pretrain")},
    }
    save_ckpt(i_path, {"meta": meta, "tensors": tensors})
    log(f"[resume] warm start of stage 2 at step {step} from the packaged deltas (fresh Adam moments, lr re-warmed)")
    return True


def lm_loss(lm, proj, batch, image_id: int, bf16: bool):
    import torch

    ids, feats, labels, att = batch
    target = labels[:, 1:]
    sel = target != -100
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        emb = embed(lm, proj, ids, feats, image_id)
        hidden = lm.model(inputs_embeds=emb, attention_mask=att, use_cache=False).last_hidden_state
        # the vocabulary projection only where a label is (about 1 in 7 positions: a fifth of the step's FLOPs)
        logits = lm.lm_head(hidden[:, :-1][sel])
    return torch.nn.functional.cross_entropy(logits.float(), target[sel])


def save_ckpt(path: Path, state: dict) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in state["tensors"].items()}
    meta = {"json": json.dumps(state["meta"])}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{__import__('os').getpid()}.part")
    save_file(tensors, str(tmp), metadata=meta)
    __import__("os").replace(tmp, path)


def load_ckpt(path: Path) -> dict | None:
    from safetensors import safe_open

    if not path.is_file():
        return None
    with safe_open(str(path), "pt") as fh:
        meta = json.loads(fh.metadata()["json"])
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    return {"meta": meta, "tensors": tensors}


def _opt_state_tensors(opt, params: dict) -> dict:
    out = {}
    names = {id(p): n for n, p in params.items()}
    for p, st in opt.state.items():
        for k in ("exp_avg", "exp_avg_sq"):
            out[f"opt.{names[id(p)]}.{k}"] = st[k]
        out[f"opt.{names[id(p)]}.step"] = st["step"].reshape(1).float()
    return out


def _load_opt_state(opt, params: dict, tensors: dict) -> None:
    for n, p in params.items():
        if f"opt.{n}.exp_avg" in tensors:
            opt.state[p] = {
                "exp_avg": tensors[f"opt.{n}.exp_avg"].clone(),
                "exp_avg_sq": tensors[f"opt.{n}.exp_avg_sq"].clone(),
                "step": tensors[f"opt.{n}.step"].reshape(()).clone(),
            }


def train_stage(
    cfg: Config,
    stage: str,
    records,
    store,
    lm,
    tok,
    proj,
    lora_mods: dict,
    ckpt: Path,
    log=print,
    stop_after: float | None = None,
) -> list[dict]:
    """Run ``pretrain`` or ``instruct`` from the checkpoint at ``ckpt`` (if any) to its last step."""
    import torch

    dia = Dialogues(tok)
    total = cfg.pretrain_steps if stage == "pretrain" else cfg.instruct_steps
    pparams = {f"projector.{n}": p for n, p in proj.named_parameters()}
    lparams = (
        {f"{k}.{p}": getattr(m, p) for k, m in lora_mods.items() for p in ("A", "B")} if stage == "instruct" else {}
    )
    for p in pparams.values():
        p.requires_grad_(True)
    for p in lparams.values():
        p.requires_grad_(True)
    lr_p = cfg.pretrain_lr if stage == "pretrain" else cfg.instruct_lr_projector
    groups = [{"params": list(pparams.values()), "lr": lr_p, "base": lr_p}]
    if lparams:
        groups.append({"params": list(lparams.values()), "lr": cfg.instruct_lr_lora, "base": cfg.instruct_lr_lora})
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    allp = {**pparams, **lparams}
    state = load_ckpt(ckpt)
    start, hist, carry = 0, [], {}
    if state is not None and state["meta"].get("stage") == stage:
        with torch.no_grad():
            for n, p in allp.items():
                p.copy_(state["tensors"][n])
        _load_opt_state(opt, allp, state["tensors"])
        start, hist = int(state["meta"]["step"]), state["meta"]["history"]
        carry = {k: state["meta"][k] for k in ("restarts", "prior_history") if k in state["meta"]}
        log(f"[{stage}] resumed at step {start}")
    restarts = tuple(carry.get("restarts", ()))
    t_start = time.perf_counter()
    lm.train()
    for step in range(start, total):
        t0 = time.perf_counter()
        batch = make_batch(cfg, stage, step, records, store, dia)
        for g in opt.param_groups:
            g["lr"] = _lr(g["base"], cfg, step, total, restarts)
        loss = lm_loss(lm, proj, batch, dia.image_id, cfg.bf16)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(allp.values()), cfg.grad_clip)
        opt.step()
        hist.append(
            {
                "step": step + 1,
                "loss": round(float(loss.detach()), 5),
                "seconds": round(time.perf_counter() - t0, 2),
                "tokens": int(batch[3].sum()),
            }
        )
        if (step + 1) % 5 == 0:
            log(
                f"[{stage}] step {step + 1}/{total} loss {np.mean([h['loss'] for h in hist[-5:]]):.3f} "
                f"{np.mean([h['seconds'] for h in hist[-5:]]):.1f} s/step"
            )
        done = step + 1 == total
        out_of_time = stop_after is not None and time.perf_counter() - t_start > stop_after
        if (step + 1) % cfg.ckpt_every == 0 or done or out_of_time:
            tensors = {n: p.detach().clone() for n, p in allp.items()}
            tensors.update(_opt_state_tensors(opt, allp))
            save_ckpt(
                ckpt,
                {
                    "meta": {"stage": stage, "step": step + 1, "history": hist, "config": cfg.to_json(), **carry},
                    "tensors": tensors,
                },
            )
        if out_of_time:
            log(f"[{stage}] stopped after {stop_after:.0f} s at step {step + 1}; run again to resume")
            break
    lm.eval()
    return hist


# ----------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------


def _setup(cfg: Config):
    import torch

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    recs, store = load_split(cfg.train_split, cfg.n_train, with_patches=True)
    val = load_split("val", cfg.n_val, with_patches=True)
    lm, tok, proj = base_parts(cfg, store)
    return recs, store, val, lm, tok, proj


def cmd_train(cfg: Config, stop_after: float | None = None, log=print) -> Path:
    """All stages in order, each resumed from its checkpoint; returns the run folder."""
    import torch

    rd = run_dir(cfg)
    seed_run_dir(cfg, log=log)
    recs, store, val, lm, tok, proj = _setup(cfg)
    i_path = rd / "instruct.safetensors"
    if warm_start(cfg, proj, log=log) or load_ckpt(i_path) is not None:  # stage 2 holds the projector too
        train_stage(
            cfg, "instruct", recs, store, lm, tok, proj, add_lora(lm, cfg), i_path, log=log, stop_after=stop_after
        )
        return rd
    a_path = rd / "align.safetensors"
    a = load_ckpt(a_path)
    if a is None:
        t0 = time.perf_counter()
        res = align(cfg, recs, store, val, lm, tok, proj, log=log)
        save_ckpt(
            a_path,
            {
                "meta": {"stage": "align", **res, "seconds": time.perf_counter() - t0, "config": cfg.to_json()},
                "tensors": {f"projector.{n}": p.detach().clone() for n, p in proj.state_dict().items()},
            },
        )
    else:
        proj.load_state_dict({k[len("projector.") :]: v for k, v in a["tensors"].items()})
        log("[align] loaded")
    t_all = time.perf_counter()
    remaining = lambda: None if stop_after is None else max(0.0, stop_after - (time.perf_counter() - t_all))  # noqa: E731
    p_path = rd / "pretrain.safetensors"
    p_state = load_ckpt(p_path)
    if p_state is None or p_state["meta"]["step"] < cfg.pretrain_steps:
        train_stage(cfg, "pretrain", recs, store, lm, tok, proj, {}, p_path, log=log, stop_after=remaining())
        p_state = load_ckpt(p_path)
        if p_state["meta"]["step"] < cfg.pretrain_steps:
            return rd
    with torch.no_grad():
        for n, p in proj.named_parameters():
            p.copy_(p_state["tensors"][f"projector.{n}"])
    mods = add_lora(lm, cfg)
    train_stage(cfg, "instruct", recs, store, lm, tok, proj, mods, i_path, log=log, stop_after=remaining())
    return rd


def parts_from_run(cfg: Config, lm, proj):
    """Load the newest checkpoint of the run into ``lm`` (LoRA added when the run reached stage 2) and ``proj``;
    returns the stage name and step."""
    import torch

    rd = run_dir(cfg)
    for stage in ("instruct", "pretrain", "align"):
        st = load_ckpt(rd / f"{stage}.safetensors")
        if st is None:
            continue
        t = st["tensors"]
        with torch.no_grad():
            for n, p in proj.named_parameters():
                p.copy_(t[f"projector.{n}"])
        a = load_ckpt(rd / "align.safetensors")  # the standardisation buffers live with the align stage
        if a is not None:
            proj.load_state_dict({k[len("projector.") :]: v for k, v in a["tensors"].items()}, strict=False)
            with torch.no_grad():
                for n, p in proj.named_parameters():
                    p.copy_(t[f"projector.{n}"])
        mods = {}
        if stage == "instruct":
            mods = add_lora(lm, cfg)
            load_lora(mods, {k: v for k, v in t.items() if k.startswith("lora.")})
        return stage, int(st["meta"].get("step", 0)), st, mods
    raise PrunelabError(f"no checkpoint in {rd}; run `python -m prunelab.train.toyllava_s train` first")


def package(cfg: Config, out=None) -> Path:
    """Write the newest checkpoint of the run as a ToyLLaVA-S folder (deltas + build record + training log)."""
    lm, tok, proj = base_parts(
        cfg,
        prefix_store("train", [f"train-{i:05d}" for i in range(cfg.n_train)])
        or load_split(cfg.train_split, cfg.n_train)[1],
    )
    stage, step, st, mods = parts_from_run(cfg, lm, proj)
    rd = run_dir(cfg)
    prior = st["meta"].get("prior_history", {})  # a warm-started run has no stage-0/1 checkpoints of its own
    hist = {
        k: (load_ckpt(rd / f"{k}.safetensors") or {"meta": {}})["meta"].get("history", prior.get(k, []))
        for k in ("align", "pretrain", "instruct")
    }
    meta = {
        "stage": stage,
        "step": step,
        "restarts": st["meta"].get("restarts", []),
        "lora_scale": cfg.lora_scale if mods else 1.0,
        "config": cfg.to_json(),
        "history": {k: v[-200:] if isinstance(v, list) else v for k, v in hist.items()},
    }
    val_path = rd / f"validate-{stage}-{step}.json"
    validation = json.loads(val_path.read_text()) if val_path.is_file() else None
    extra = {"README.md": write_card(meta, validation)}
    if validation:
        extra["validation.json"] = json.dumps(validation, indent=1) + "\n"
    return S.write_package(
        Path(out) if out else S.default_dir(), proj.export(), export_lora(mods) if mods else {}, meta, extra_files=extra
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m prunelab.train.toyllava_s")
    ap.add_argument("command", choices=["train", "validate", "package", "publish"])
    ap.add_argument("--out", default=None, help="package folder (default data/models/toyllava-s)")
    ap.add_argument("--n", type=int, default=24, help="val scenes for validate")
    ap.add_argument("--stop-after", type=float, default=None, help="seconds of LM training before stopping (resumable)")
    ap.add_argument("--set", nargs="*", default=[], help="Config overrides, key=value")
    args = ap.parse_args(argv)
    cfg = Config()
    for kv in args.set:
        k, _, v = kv.partition("=")
        if not hasattr(cfg, k):
            raise SystemExit(f"unknown config key {k!r}; known: {', '.join(cfg.to_json())}")
        setattr(cfg, k, type(getattr(cfg, k))(v))
    log_path = run_dir(cfg) / "train.log"

    def log(msg: str) -> None:
        print(msg, flush=True)
        with open(log_path, "a") as fh:
            fh.write(msg + "\n")

    if args.command == "train":
        cmd_train(cfg, stop_after=args.stop_after, log=log)
    elif args.command == "validate":
        import torch

        torch.set_num_threads(cfg.threads)
        recs, store = load_split("val", cfg.n_val, with_patches=True)
        lm, tok, proj = base_parts(cfg, prefix_store("train", [f"train-{i:05d}" for i in range(cfg.n_train)]) or store)
        stage, step, _, _ = parts_from_run(cfg, lm, proj)
        res = validate(lm, tok, proj, recs, store, n=args.n)
        res["checkpoint"] = {"stage": stage, "step": step}
        print(json.dumps(res, indent=1))
        with atomic_write(run_dir(cfg) / f"validate-{stage}-{step}.json", "w") as fh:
            json.dump(res, fh, indent=1)
    elif args.command == "package":
        print(package(cfg, args.out))
    elif args.command == "publish":  # package + resume checkpoints, both under data/models/toyllava-s
        out = package(cfg, args.out)
        print(out, publish_resume(cfg, Path(out) / "resume" if args.out else None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
