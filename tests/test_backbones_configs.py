"""The shipped pair configs: each names both models in its tag, shares the seed's data, and has a
projector whose output width is its teacher's embedding width."""

import dataclasses

import open_clip
import pytest

from dinov2clip.config import load_config
from dinov2clip.store import embeddings_tag
from tests.conftest import REPO

CONFIGS = ("cc12m-seed", "dinov3-clip", "dinov3-siglip2")


@pytest.mark.parametrize("name", CONFIGS)
def test_pair_configs_share_the_data_and_fit_their_teacher(name):
    cfg = load_config(REPO / "configs" / f"{name}.toml")
    seed = load_config(REPO / "configs" / "cc12m-seed.toml")
    e = cfg.extract
    assert (cfg.artifacts, cfg.data, e.datasets) == (seed.artifacts, seed.data,
                                                      seed.extract.datasets)
    assert cfg.train.projector.out_dim == open_clip.get_model_config(e.clip_model)["embed_dim"]
    assert open_clip.get_pretrained_cfg(e.clip_model, e.clip_pretrained)  # a known tag
    assert cfg.train.num_patch_tokens == 0  # from the manifest
    # The explicit tag and the derived one both name the backbone and the teacher.
    derived = embeddings_tag(dataclasses.replace(e, tag=""))
    for tag in (e.tag, derived):
        assert e.clip_model in tag and e.clip_pretrained in tag
        assert e.dino_model.split("/")[1].split("-pretrain")[0] in tag


def test_tags_differ_between_pairs_and_name_hub_teachers():
    tags = {load_config(REPO / "configs" / f"{n}.toml").extract.tag for n in CONFIGS}
    assert len(tags) == len(CONFIGS)
    cfg = load_config(REPO / "configs" / "dinov3-siglip2.toml",
                      ['extract.tag=""', 'extract.clip_model="hf-hub:timm/ViT-B-16-SigLIP2"',
                       'extract.clip_pretrained=""'])
    assert embeddings_tag(cfg.extract) == "dinov3-vitb16-pretrain-lvd1689m__ViT-B-16-SigLIP2"


def test_token_mean_weighs_by_the_manifests_patch_count(tmp_path):
    import json

    import torch

    from dinov2clip.config import ConfigError
    from dinov2clip.store import pool
    from dinov2clip.train.checks import with_patch_tokens

    cfg = load_config(REPO / "configs" / "dinov3-clip.toml")
    emb = tmp_path / "emb"
    emb.mkdir()
    with pytest.raises(ConfigError, match="does not record the backbone's patch-token count"):
        with_patch_tokens(cfg, emb)  # no manifest count, no train.num_patch_tokens
    (emb / "manifest.json").write_text(json.dumps({"dino_patch_tokens": 196}))
    assert with_patch_tokens(cfg, emb).train.num_patch_tokens == 196
    set256 = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, num_patch_tokens=256))
    with pytest.raises(ConfigError, match="256 but the backbone gave 196"):
        with_patch_tokens(set256, emb)
    cls, mean = torch.ones(2, 4), torch.zeros(2, 4)
    torch.testing.assert_close(pool(cls, mean, "token_mean", 196), torch.full((2, 4), 1 / 197))
    with pytest.raises(ConfigError, match="patch-token count"):
        pool(cls, mean, "token_mean", 0)  # never silently the CLS token
