"""prunelab.models.geometry: visual-token counts per model family from the config alone, checked on the 7B
configs built without weights (meta device) against the transformers processors' own counting code."""

from __future__ import annotations

import types

import pytest
import torch
import transformers
from hypothesis import given, settings, strategies as st

from prunelab.errors import CapabilityError, ImageError
from prunelab.models import geometry as Gm


def _meta(cls, cfg):
    with torch.device("meta"):  # the real architecture, no weights
        return cls(cfg)


@pytest.fixture(scope="module")
def next_cfg():
    cfg = transformers.LlavaNextConfig()  # llava-v1.6 defaults: CLIP-L/14 at 336 px, 5 grid pinpoints
    m = _meta(transformers.LlavaNextForConditionalGeneration, cfg)
    assert sum(p.numel() for p in m.parameters()) > 6e9  # a 7B-class model, built on the meta device
    return cfg


@pytest.fixture(scope="module")
def qwen_cfg():
    cfg = transformers.Qwen2_5_VLConfig()
    m = _meta(transformers.Qwen2_5_VLForConditionalGeneration, cfg)
    assert sum(p.numel() for p in m.parameters()) > 6e9
    return cfg


def test_llava_15_is_576_whatever_the_image():
    cfg = transformers.LlavaConfig(vision_config=transformers.CLIPVisionConfig(image_size=336, patch_size=14))
    assert Gm.token_layout(cfg, (336, 336)).total == Gm.token_layout(cfg, (480, 640)).total == 576
    cfg.vision_feature_select_strategy = "full"
    assert Gm.llava_layout(cfg).total == 577


def test_llava_next_7b_counts(next_cfg):
    a = Gm.token_layout(next_cfg, (480, 640))  # the example: 5 tiles -> 2,340 tokens
    assert (a.total, a.base, a.grid, a.newlines) == (2340, 576, (36, 48), 36)
    b = Gm.token_layout(next_cfg, (336, 336))
    assert (b.total, b.grid) == (576 + 24 * 24 + 24, (24, 24))


def _hf_next_count(cfg, h, w):
    """transformers' own count (LlavaNextProcessor._get_number_of_features), minus [CLS] for 'default'."""
    proc = transformers.LlavaNextProcessor
    stub = types.SimpleNamespace(
        image_processor=types.SimpleNamespace(image_grid_pinpoints=cfg.image_grid_pinpoints),
        patch_size=cfg.vision_config.patch_size,
        num_additional_image_tokens=1,
    )
    stub._get_unpadded_features = types.MethodType(proc._get_unpadded_features, stub)
    n = proc._get_number_of_features(stub, h, w, cfg.vision_config.image_size, cfg.vision_config.image_size)
    return n - 1 if cfg.vision_feature_select_strategy == "default" else n


@settings(max_examples=60, deadline=None)
@given(st.integers(16, 2000), st.integers(16, 2000))
def test_llava_next_agrees_with_the_transformers_processor(h, w):
    cfg = transformers.LlavaNextConfig()
    assert Gm.llava_next_layout(cfg, (h, w)).total == _hf_next_count(cfg, h, w)


def test_qwen_2_5_vl_7b_counts(qwen_cfg):
    assert Gm.token_layout(qwen_cfg, (336, 336)).total == 144  # 12 x 12 merged blocks
    q = Gm.token_layout(qwen_cfg, (480, 640))  # 476 x 644 after smart_resize
    assert (q.total, q.grid) == (17 * 23, (17, 23))


@settings(max_examples=80, deadline=None)
@given(st.integers(10, 5000), st.integers(10, 5000), st.sampled_from([Gm.QWEN_MAX_PIXELS, 28 * 28 * 1280]))
def test_qwen_resize_agrees_with_smart_resize(h, w, max_pixels):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    if max(h, w) / min(h, w) > 200:
        with pytest.raises(ImageError, match="aspect ratio"):
            Gm.qwen_resize(h, w, max_pixels=max_pixels)
        return
    assert Gm.qwen_resize(h, w, max_pixels=max_pixels) == smart_resize(h, w, 28, Gm.QWEN_MIN_PIXELS, max_pixels)


def test_best_resolution_prefers_least_padding_on_ties():
    pins = [[336, 672], [672, 336], [672, 672]]
    assert Gm.best_resolution((336, 336), pins) == (336, 672)  # same kept pixels as 672x672, less padding
    assert Gm.best_resolution((480, 640), pins) == (672, 672)


def test_bad_input_is_one_line():
    with pytest.raises(ImageError, match="positive"):
        Gm.best_resolution((0, 10), [[336, 336]])
    with pytest.raises(CapabilityError, match="no token layout"):
        Gm.token_layout(types.SimpleNamespace(model_type="blip"), (10, 10))
