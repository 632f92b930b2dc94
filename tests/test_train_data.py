"""Cached shards into tensors: pooling, the key-hash split, eval pairs, and the batch feed."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from dinov2clip.config import ConfigError, TrainConfig
from dinov2clip.store import is_val_key, load_eval_pairs, load_split, pool
from dinov2clip.train.feed import Feed, placer, reserve_bytes
from tests.helpers import D_CLIP, D_DINO, make_embeddings


def test_pooling_matches_a_mean_over_all_257_tokens():
    tokens = torch.randn(3, 257, 8, dtype=torch.float64)  # CLS + 256 patch tokens
    cls, patch_mean = tokens[:, 0], tokens[:, 1:].mean(1)
    torch.testing.assert_close(pool(cls, patch_mean, "token_mean", 256), tokens.mean(1))
    assert torch.equal(pool(cls, patch_mean, "cls"), cls)
    assert torch.equal(pool(cls, patch_mean, "patch_mean"), patch_mean)
    assert torch.equal(pool(cls, patch_mean, "concat"), torch.cat([cls, patch_mean], 1))
    with pytest.raises(ConfigError, match="unknown 'max'"):
        pool(cls, patch_mean, "max")


def test_split_by_key_hash_is_deterministic_and_complete(tmp_path):
    emb = make_embeddings(tmp_path, n=500, shard_size=120)
    train, val = load_split(emb, "concat", 0.2)
    keys = [k for s in sorted((emb / "meta").glob("*.parquet"))
            for k in pq.read_table(s, columns=["key"]).column(0).to_pylist()]
    is_val = np.array([is_val_key(k, 0.2) for k in keys])
    assert len(val) == is_val.sum() and len(train) == (~is_val).sum()
    assert 60 < len(val) < 140  # about 20% of 500
    cls = np.concatenate([np.load(p) for p in sorted((emb / "dino_cls").glob("*.npy"))])
    mean = np.concatenate([np.load(p) for p in sorted((emb / "dino_mean").glob("*.npy"))])
    img = np.concatenate([np.load(p) for p in sorted((emb / "clip_image").glob("*.npy"))])
    # rows keep their order within each side, pooled as configured
    np.testing.assert_array_equal(val.x.numpy(), np.concatenate([cls, mean], 1)[is_val])
    np.testing.assert_array_equal(train.clip_img.numpy(), img[~is_val])
    assert train.x.shape[1] == 2 * D_DINO and train.x.dtype == torch.float16


def test_eval_pairs_map_each_caption_to_its_image(tmp_path):
    emb = make_embeddings(tmp_path, n=30, shard_size=12, dataset="ev", captions=5)
    pairs = load_eval_pairs(emb, "cls")
    assert pairs.x.shape == (30, D_DINO) and pairs.clip_text.shape == (150, D_CLIP)
    assert pairs.caption_to_image.tolist() == np.repeat(np.arange(30), 5).tolist()
    txt = np.concatenate([np.load(p) for p in sorted((emb / "clip_text").glob("*.npy"))])
    np.testing.assert_array_equal(pairs.clip_text.numpy(), txt.astype(np.float32))


def test_feed_covers_each_row_once_per_epoch_in_a_seeded_order():
    from dinov2clip.store import Split

    n = 103
    data = Split(torch.arange(n, dtype=torch.float16)[:, None].repeat(1, 4),
                 torch.zeros(n, 2, dtype=torch.float16), torch.ones(n, 2, dtype=torch.float16))
    feed = Feed(data, 10, torch.device("cpu"), seed=3)
    assert len(feed) == 11
    rows = [b[0][:, 0].long() for b in feed.epoch(0)]
    assert sorted(torch.cat(rows).tolist()) == list(range(n))
    assert all(b[0].dtype == torch.float32 for b in feed.epoch(0))
    again = torch.cat([b[0][:, 0] for b in Feed(data, 10, torch.device("cpu"), 3).epoch(0)])
    assert torch.equal(again.long(), torch.cat(rows))
    other = torch.cat([b[0][:, 0] for b in feed.epoch(1)]).long()
    assert not torch.equal(other, torch.cat(rows))
    # the host-gather path (pinned staging buffers on a GPU box) yields the same batches
    host = Feed(data, 10, torch.device("cpu"), 3, gather_on_host=True)
    for a, b in zip(feed.epoch(2), host.epoch(2), strict=True):
        for ta, tb in zip(a, b, strict=True):
            assert torch.equal(ta, tb)


def test_placement_on_cpu_and_its_options():
    place = placer("auto", torch.device("cpu"), reserve_bytes(10**6, 4096, 2048, 6, True))
    assert place(10**12) == (torch.device("cpu"), False)
    assert reserve_bytes(54_608_384, 4096, 2048, 6, False) > 4 * 4 * 54_608_384
    with pytest.raises(ConfigError, match="'placement' must be one of auto, device, pinned"):
        TrainConfig(placement="gpu")  # refused when the config is read


def test_eval_images_follow_numeric_shard_order(tmp_path):
    """Shards 0, 1, 2, ..., 11 in that order, as CLIP_benchmark reads a set (ties go to the
    lower index, so the order is part of the result)."""
    from collections import Counter

    from dinov2clip.extract.runner import Source, list_shards
    from dinov2clip.store import Embeddings, load_eval_embeddings
    from dinov2clip.store.writer import ShardWriter

    writer = ShardWriter(tmp_path / "emb", models_hash="h")
    writer.start({str(s): "x" for s in range(12)}, models={})
    for s in range(12):
        row = np.full((1, 4), s, np.float16)
        meta = [{"key": f"k{s}", "captions": ["c"], "url": "", "row": 0, "caption_start": 0,
                 "n_captions": 1}]
        writer.write(str(s), Embeddings(row, row, row, row), meta, Counter(), source="x")
    emb = load_eval_embeddings(tmp_path / "emb")
    assert emb.dino_cls[:, 0].tolist() == list(range(12))
    (tmp_path / "tars").mkdir()
    for s in range(12):
        (tmp_path / "tars" / f"{s}.tar").write_bytes(b"")
    shards = list_shards(Source("x", tmp_path / "tars", True), "*.tar")
    assert [p.stem for p in shards] == [str(s) for s in range(12)]
