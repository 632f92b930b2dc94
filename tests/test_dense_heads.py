"""The `projector` dense head and DinoV2Clip's dense use (encode_patches, heatmap, segment) on
tiny random models, against a manual forward of the backbone."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dinov2clip.config import ConfigError, ProjectorConfig
from dinov2clip.dense.heads import split_tokens
from dinov2clip.models.inference import DinoV2Clip
from dinov2clip.models.loaders import load_clip, load_dino
from dinov2clip.models.preprocess import normalise, resize_and_crop
from dinov2clip.models.projector import Projector

CPU = torch.device("cpu")


def model(tiny_models, dino_key: str, pooling: str, kind: str = "linear") -> DinoV2Clip:
    dino, spec = load_dino(tiny_models[dino_key], CPU)
    clip, tok, clip_spec = load_clip(tiny_models["clip"], tiny_models["clip_pretrained"], CPU)
    in_dim = 96 if pooling == "concat" else 48
    torch.manual_seed(0)
    proj = Projector(ProjectorConfig(kind=kind, in_dim=in_dim, out_dim=32, width=64, depth=1,
                                     head_width=32)).eval()
    return DinoV2Clip(projector=proj, clip=clip, tokenizer=tok, clip_spec=clip_spec, dino=dino,
                      dino_spec=spec, pooling=pooling)


def picture(w: int = 260, h: int = 200, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("pooling", ["patch_mean", "concat"])
def test_patches_are_the_projector_on_each_patch_token_registers_left_out(tiny_models, pooling):
    m = model(tiny_models, "dino_reg", pooling, kind="residual")
    img = picture()
    got = m.encode_patches([img])  # (1, 16, 16, 32)
    assert got.shape == (1, 16, 16, 32)
    x = normalise(torch.from_numpy(resize_and_crop(img, m.dino_spec))[None], m.dino_spec)
    with torch.no_grad():
        hidden = m.dino(pixel_values=x).last_hidden_state  # (1, 1 + 4 + 256, 48)
        assert hidden.shape[1] == 1 + 4 + 256
        patch = hidden[0, 5 + 3 * 16 + 7]  # row 3, column 7
        x_in = torch.cat([hidden[0, 0], patch]) if pooling == "concat" else patch
        want = F.normalize(m.projector(x_in[None]), dim=-1)[0]
    torch.testing.assert_close(got[0, 3, 7], want, atol=1e-5, rtol=1e-5)


def test_a_linear_head_averages_to_the_pooled_embedding(tiny_models):
    # Linear projector, patch-mean pooling: the mean of the per-patch outputs is the projector
    # of the patch mean, i.e. what encode_image embeds. Ties the dense path to the pooled one.
    m = model(tiny_models, "dino", "patch_mean")
    img = picture(seed=1)
    x = next(m._batches([img], m.dino_spec))
    with torch.no_grad():
        mean = m._patch_features(x).mean(dim=(1, 2))
    torch.testing.assert_close(F.normalize(mean, dim=-1), m.encode_image([img]), atol=1e-5,
                               rtol=1e-5)


def test_heatmap_and_segment_come_at_the_image_size(tiny_models):
    m = model(tiny_models, "dino_reg", "patch_mean")
    img = picture(w=150, h=110, seed=2)
    heat = m.heatmap(img, "a red circle")
    assert heat.shape == (110, 150) and torch.isfinite(heat).all()
    assert heat.abs().max() <= 1.0 + 1e-5 and heat.std() > 0  # cosines, not a constant
    labels = m.segment(img, ["circle", "square", "star"])
    assert labels.shape == (110, 150) and set(labels.unique().tolist()) <= {0, 1, 2}
    assert (m.segment(img, ["circle", "square"], background=2.0) == 0).all()  # above any cosine
    assert (m.segment(img, ["circle", "square"], background=-2.0) > 0).all()
    with pytest.raises(ConfigError, match="no classes"):
        m.segment(img, [])


def test_a_heatmap_refined_by_pamr_follows_the_images_edges(tiny_models):
    """pamr=True: each window's similarity refined by its pixels, as segment(pamr=True) does;
    a map on a different grid, and the protocol's own refinement, not another one."""
    from dataclasses import replace

    from dinov2clip.dense.protocol import Protocol, segment_logits

    m = model(tiny_models, "dino", "patch_mean")
    img = picture(w=60, h=40, seed=3)
    small = Protocol(short_side=56, window=56, stride=28)
    plain, refined = (m.heatmap(img, "a red circle", protocol=small, pamr=p) for p in (0, 1))
    assert refined.shape == plain.shape == (40, 60) and not torch.allclose(refined, plain)
    x = m.image_tensor(img)
    scorer = m.dense_scorer(m.encode_text(["a red circle"]), "projector")
    with torch.inference_mode():
        want = segment_logits(x, scorer, replace(small, pamr=True), (40, 60))[0]
    torch.testing.assert_close(refined, want)


def test_split_tokens_refuses_a_grid_that_does_not_fit():
    with pytest.raises(ValueError, match="4x4 grid"):
        split_tokens(torch.zeros(1, 1 + 15, 8), 0, (4, 4))
