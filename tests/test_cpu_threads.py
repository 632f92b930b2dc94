"""The CPU's cores split between the models and the decoding workers by what each costs."""

import pytest
import torch
from torch import nn

from dinov2clip.cpu_threads import (
    DECODE_CORE_S,
    clip_towers,
    dino_tower,
    model_core_seconds,
    model_threads,
    threads_for_models,
    weights_per_token,
)

VIT_B_PAIR_S = 1.05  # dinov2-base + ViT-B-16, core-seconds per image (model_core_seconds)
TINY_S = 0.0012  # the demo's tiny models


@pytest.mark.parametrize("cores, workers, model_s, threads", [
    (2, 2, VIT_B_PAIR_S, 2),  # real models: every core, the workers decode in the gaps
    (16, 8, VIT_B_PAIR_S, 16),  # 16 x 0.5 % of the CPU rounds to no core at all
    (2, 2, TINY_S, 1),  # tiny models: decoding is 80 % of the work
    (16, 8, TINY_S, 8),  # 13 cores' worth of decoding, but only 8 workers to do it
    (16, 16, TINY_S, 3),
    (16, 8, DECODE_CORE_S, 8),  # equal costs: half each
    (2, 0, TINY_S, 2),  # no workers: decoding takes turns with the models in this process
    (1, 4, TINY_S, 1),  # never below one thread
])
def test_threads_follow_what_each_side_costs(cores, workers, model_s, threads):
    assert model_threads(cores, workers, model_s) == threads


def test_weights_per_token_counts_matrices_not_tables_biases_or_norms():
    m = nn.Sequential(nn.Embedding(1000, 8), nn.Linear(8, 16), nn.LayerNorm(16),
                      nn.Linear(16, 4, bias=False))
    assert weights_per_token(m) == 8 * 16 + 16 * 4


def test_real_size_models_cost_about_a_core_second_and_tiny_ones_a_millisecond(tiny_models):
    """The estimate against the architectures, dinov2-base's and ViT-B-16's built on the
    meta device, and the tiny ones saved as the demo saves them."""
    import open_clip
    from transformers import Dinov2Config, Dinov2Model

    from dinov2clip.models.loaders import load_clip, load_dino

    with torch.device("meta"):  # shapes only: no memory, no initialisation
        base = Dinov2Model(Dinov2Config(hidden_size=768, num_hidden_layers=12,
                                        num_attention_heads=12, image_size=518, patch_size=14))
    vit_b = open_clip.create_model("ViT-B-16", pretrained=None, device="meta")
    weights, tokens = dino_tower(base, 224)
    assert tokens == 257 and 85e6 < weights < 88e6  # 22 GMACs at 224 px
    (image_w, image_t), (text_w, text_t) = clip_towers(vit_b, 224)
    assert (image_t, text_t) == (197, 77) and 85e6 < image_w < 88e6 and 37e6 < text_w < 39e6
    both = model_core_seconds([(weights, tokens), (image_w, image_t), (text_w, text_t)])
    assert both == pytest.approx(VIT_B_PAIR_S, rel=0.05)

    cpu = torch.device("cpu")
    dino, spec = load_dino(tiny_models["dino"], cpu)
    clip, _, clip_spec = load_clip(tiny_models["clip"], tiny_models["clip_pretrained"], cpu)
    tiny = model_core_seconds([dino_tower(dino, spec.crop), *clip_towers(clip, clip_spec.crop)])
    assert tiny == pytest.approx(TINY_S, rel=0.05)


def test_threads_are_set_for_the_block_capped_by_the_caller_and_restored(monkeypatch):
    monkeypatch.setattr("dinov2clip.cpu_threads.available_cores", lambda: 16)
    heavy, light = [(1e9, 40)], [(1e3, 1)]  # 1 s and 25 ns of a core per image
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(12)
        with threads_for_models(torch.device("cpu"), 4, light) as threads:
            assert threads == torch.get_num_threads() == 12
        assert torch.get_num_threads() == 12
        with threads_for_models(torch.device("cpu"), 8, light) as threads:
            assert threads == torch.get_num_threads() == 8
        with threads_for_models(torch.device("cpu"), 8, heavy) as threads:
            assert threads == 12  # 16 wanted, 12 set before (OMP_NUM_THREADS) caps it
        with threads_for_models(torch.device("cuda"), 8, light) as threads:
            assert threads == 12  # the models are on a GPU: the CPU's threads are not theirs
        assert torch.get_num_threads() == 12
    finally:
        torch.set_num_threads(before)


def test_the_mapper_counts_the_models_it_runs(tiny_models, tmp_path):
    """A teacher adds its two towers, a text encoder its own; without a teacher (a set for a
    text encoder alone) there is no CLIP to count."""
    from dinov2clip.data.tiny_models import build_tiny_bert
    from dinov2clip.extract.mapper import Mapper
    from dinov2clip.models.loaders import load_clip, load_dino
    from dinov2clip.models.text_encoders import TextEncoder

    cpu = torch.device("cpu")
    dino, spec = load_dino(tiny_models["dino"], cpu)
    clip, _, clip_spec = load_clip(tiny_models["clip"], tiny_models["clip_pretrained"], cpu)
    text = TextEncoder(str(build_tiny_bert(tmp_path / "bert")), "mean", cpu)
    backbone = dino_tower(dino, spec.crop)
    assert Mapper(dino, spec, clip, clip_spec, cpu, torch.float32).towers() == [
        backbone, *clip_towers(clip, clip_spec.crop)]
    alone = Mapper(dino, spec, None, None, cpu, torch.float32, text_encoder=text).towers()
    assert alone[0] == backbone and len(alone) == 2
    # the tiny BERT: 2 layers of attention (4 x 32 x 32) and MLP (2 x 32 x 64), and its pooler
    assert alone[1] == (2 * (4 * 32 * 32 + 2 * 32 * 64) + 32 * 32, 32)
