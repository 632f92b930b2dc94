"""The mapper's outputs against the models run by hand: CLS, patch mean without registers, CLIP."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dinov2clip.extract.mapper import Mapper
from dinov2clip.models.loaders import load_clip, load_dino
from dinov2clip.models.preprocess import normalise

CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def parts(tiny_models):
    clip, tokenizer, clip_spec = load_clip(tiny_models["clip"], tiny_models["clip_pretrained"],
                                           CPU)
    g = torch.Generator().manual_seed(0)
    batch = {"dino": torch.randint(0, 256, (3, 224, 224, 3), dtype=torch.uint8, generator=g),
             "clip": torch.randint(0, 256, (3, 224, 224, 3), dtype=torch.uint8, generator=g),
             "tokens": tokenizer(["a red circle", "a blue star", "two", "three", "four"])}
    return clip, clip_spec, batch


@pytest.mark.parametrize("which, registers", [("dino", 0), ("dino_reg", 4)])
def test_patch_mean_excludes_cls_and_register_tokens(tiny_models, parts, which, registers):
    clip, clip_spec, b = parts
    dino, dino_spec = load_dino(tiny_models[which], CPU)
    mapper = Mapper(dino, dino_spec, clip, clip_spec, CPU, torch.float32)
    assert mapper.n_registers == registers
    emb = mapper(b["dino"], b["clip"], b["tokens"])
    with torch.inference_mode():
        hidden = dino(pixel_values=normalise(b["dino"], dino_spec)).last_hidden_state
    assert hidden.shape[1] == 1 + registers + 256  # CLS, registers, 16 x 16 patches
    patches = hidden[:, 1 + registers:]
    np.testing.assert_allclose(emb.dino_mean, patches.mean(1).half().numpy(), atol=1e-3)
    np.testing.assert_allclose(emb.dino_cls, hidden[:, 0].half().numpy(), atol=1e-3)
    wrong = hidden[:, 1:].mean(1).numpy()  # registers included
    if registers:
        assert np.abs(emb.dino_mean.astype(np.float32) - wrong).max() > 1e-2


def test_clip_embeddings_are_the_models_own_l2_normalised_in_float16(tiny_models, parts):
    clip, clip_spec, b = parts
    dino, dino_spec = load_dino(tiny_models["dino"], CPU)
    mapper = Mapper(dino, dino_spec, clip, clip_spec, CPU, torch.float32)
    emb = mapper(b["dino"], b["clip"], b["tokens"])
    assert emb.text_enc is None  # no text encoder given
    assert {a.dtype for a in vars(emb).values() if a is not None} == {np.dtype(np.float16)}
    assert emb.clip_image.shape == (3, 32) and emb.clip_text.shape == (5, 32)
    with torch.inference_mode():
        img = F.normalize(clip.encode_image(normalise(b["clip"], clip_spec)), dim=-1)
        txt = F.normalize(clip.encode_text(b["tokens"]), dim=-1)
    np.testing.assert_allclose(emb.clip_image, img.numpy(), atol=1e-3)
    np.testing.assert_allclose(emb.clip_text, txt.numpy(), atol=1e-3)
    # Two batches in flight give the same arrays as one at a time.
    first, second = (mapper.submit(b["dino"], b["clip"], b["tokens"]) for _ in range(2))
    assert np.array_equal(second.result().clip_text, emb.clip_text)
    assert np.array_equal(first.result().dino_mean, emb.dino_mean)
