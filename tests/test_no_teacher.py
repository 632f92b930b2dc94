"""A set and a run without a teacher (extract.clip_model = ""): the refusals when the config is
read, the store writing and reading a set with no CLIP arrays, and eval's rows for one."""

from collections import Counter

import numpy as np
import pytest
import torch

from dinov2clip.config import ConfigError, load_config
from dinov2clip.evaluate.compute import SetEval
from dinov2clip.retrieval import recall_of, score_matrix
from dinov2clip.store import (
    Embeddings,
    EmbeddingSet,
    ShardWriter,
    embeddings_tag,
    load_eval_embeddings,
    load_split,
)

TWO_TOWER = ('[extract]\nclip_model = ""\ntext_encoder = "some/text-model"\n'
             '[train.projector]\nout_dim = 32\n[train.text_projector]\nout_dim = 32\n'
             '[train]\nkind = "two_tower"\nloss = { infonce = 1.0 }\n')


def config(tmp_path, text: str):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return load_config(path)


@pytest.mark.parametrize("text, message", [
    ('[extract]\nclip_model = ""\n', "extract.text_encoder is empty"),
    ('[extract]\nclip_model = ""\ntext_encoder = "t"\n', "'train.kind' is 'into_teacher'"),
    (TWO_TOWER + 'select_metric = "val_pct_clip"\n', "'val_pct_clip', which needs a teacher"),
    (TWO_TOWER + 'val_evalset = "v"\nselect_metric = "evalset_pct_clip"\n', "needs a teacher"),
    (TWO_TOWER + '[train.dense]\nhead = "talk2dino"\n', "'train.dense.head' is 'talk2dino'"),
])
def test_a_teacher_less_config_that_cannot_work_is_refused_when_read(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        config(tmp_path, text)


def test_select_metric_defaults_to_the_towers_recall_without_a_teacher(tmp_path):
    assert config(tmp_path, TWO_TOWER).train.select_metric == "val_t2i_R@1"
    assert config(tmp_path, "[train]\nepochs = 2\n").train.select_metric == "val_pct_clip"
    cfg = config(tmp_path, TWO_TOWER + 'select_metric = "val_i2t_R@5"\n')
    assert cfg.train.select_metric == "val_i2t_R@5"
    assert embeddings_tag(cfg.extract) == "dinov2-base__no-teacher__text-model"


def write_set(path, teacher: bool, n_shards: int = 2, n: int = 6, k: int = 2):
    """A set of n_shards shards of n images and k captions each; returns the arrays written."""
    rng = np.random.default_rng(0)
    models = {"dino_model": "d", "clip_model": "c" if teacher else "",
              "text_encoder": {"name": "t"}}
    writer = ShardWriter(path, "hash")
    writer.start({str(s): f"{s}.tar" for s in range(n_shards)}, models)
    written = []
    for s in range(n_shards):
        def unit(rows, d):
            x = rng.standard_normal((rows, d)).astype(np.float32)
            return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
        emb = Embeddings(unit(n, 8), unit(n, 8), unit(n, 4) if teacher else None,
                         unit(n * k, 4) if teacher else None, unit(n * k, 5))
        meta = [{"key": f"{s}-{i}", "captions": [f"c{j}" for j in range(k)], "url": "",
                 "row": i, "caption_start": i * k, "n_captions": k} for i in range(n)]
        writer.write(str(s), emb, meta, Counter(), f"{s}.tar")
        written.append(emb)
    writer.write_manifest({"dims": {"dino": 8, "text": 5, **({"clip": 4} if teacher else {})}})
    return written


def test_the_store_reads_a_set_without_teacher_arrays(tmp_path):
    written = write_set(tmp_path / "set", teacher=False)
    store = EmbeddingSet(tmp_path / "set")
    assert store.arrays() == ("dino_cls", "dino_mean", "text_enc") and not store.has_teacher()
    assert not (tmp_path / "set" / "clip_image").exists()
    assert store.dims() == (8, 0) and store.text_dim() == 5
    train, val = load_split(tmp_path / "set", "cls", 0.5, with_text=True)
    assert train.clip_img is None and train.fields() == ("x", "text")
    got = torch.cat([train.text, val.text]).float().sort(dim=0).values
    want = torch.from_numpy(np.concatenate([w.text_enc[::2] for w in written])).float()
    torch.testing.assert_close(got, want.sort(dim=0).values)  # each image's first caption
    emb = load_eval_embeddings(tmp_path / "set")
    assert emb.clip_image is None and emb.clip_text is None
    assert (emb.n_images, emb.n_captions) == (12, 24) and emb.text_enc.shape == (24, 5)
    (tmp_path / "set" / "text_enc" / "1.npy").unlink()  # integrity covers the arrays it holds
    with pytest.raises(ConfigError, match="text_enc/1.npy"):
        EmbeddingSet(tmp_path / "set").verified_shards()


def test_a_set_with_a_teacher_still_needs_its_clip_arrays(tmp_path):
    write_set(tmp_path / "set", teacher=True)
    assert EmbeddingSet(tmp_path / "set").has_teacher()
    (tmp_path / "set" / "clip_image" / "0.npy").unlink()
    with pytest.raises(ConfigError, match="clip_image/0.npy"):
        EmbeddingSet(tmp_path / "set").verified_shards()


def test_eval_without_a_teacher_gives_the_projected_row_alone():
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(10, 6, generator=g), torch.randn(20, 6, generator=g)
    c2i = torch.arange(20) // 2
    ev = SetEval(None, None, c2i, [1, 5], n_images=10)
    rows = ev.rows(img, txt)
    assert set(rows) == {"projected"}
    assert rows["projected"] == recall_of(score_matrix(txt, img, "cpu"), c2i, [1, 5])
    with pytest.raises(ConfigError, match="10 images"):
        ev.rows(img[:9], txt)
