"""Text encoders as a model family: a tiny BERT saved as a sentence-transformers folder and as a
plain transformers one, loaded back through the code real ones use; their caption embeddings
cached as the store's text_enc array, identified in the set's models description and checked
against the done-marker like every other array."""

import json

import numpy as np
import pytest
import torch

from dinov2clip.config import TEXT_POOLINGS, ConfigError, load_config
from dinov2clip.data.synthetic import write_eval_set
from dinov2clip.data.tiny_models import build_tiny_bert, build_tiny_sentence_transformer
from dinov2clip.extract import run
from dinov2clip.models.text_encoders import TextEncoder, pool_tokens
from dinov2clip.store import EmbeddingSet, load_eval_embeddings
from tests.helpers import extract_config, write_config

CAPTIONS = ["a red circle", "a small blue square on a dark background", "one star"]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("text")
    return {"st": str(build_tiny_sentence_transformer(root / "tiny-st", seed=0)),
            "bert": str(build_tiny_bert(root / "tiny-bert", seed=0))}


def test_both_libraries_load_the_same_weights_to_the_same_embeddings(encoders):
    st = TextEncoder(encoders["st"], "auto", CPU)
    hf = TextEncoder(encoders["bert"], "mean", CPU)
    a, b = st.encode(CAPTIONS), hf.encode(CAPTIONS)
    assert a.shape == (3, 32) and torch.allclose(a.norm(dim=-1), torch.ones(3))
    # the sentence-transformers folder holds the same random BERT with mean pooling
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, TextEncoder(encoders["bert"], "cls", CPU).encode(CAPTIONS),
                              atol=1e-3)
    assert st.describe()["library"] == "sentence-transformers"
    assert hf.describe()["weights"]["sha256"]["model.safetensors"]


def test_max_length_cuts_the_captions(encoders):
    long = ["a red circle " + "and a blue square " * 10]
    short = TextEncoder(encoders["bert"], "mean", CPU, max_length=4)
    assert short.max_length == 4
    prefix = TextEncoder(encoders["bert"], "mean", CPU).encode(["a red"])  # [CLS] a red [SEP]
    assert torch.allclose(short.encode(long), prefix, atol=1e-5)


def test_pooling_ignores_padding_on_either_side():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool_tokens(hidden, right, "mean")[:, 0].tolist() == [0.5, 5.5]
    assert pool_tokens(hidden, right, "last_token")[:, 0].tolist() == [1.0, 7.0]
    assert pool_tokens(hidden, left, "last_token")[:, 0].tolist() == [3.0, 7.0]
    assert pool_tokens(hidden, right, "cls")[:, 0].tolist() == [0.0, 4.0]


@pytest.mark.parametrize(("key", "value", "words"), [
    ("extract.text_pooling", "max", ", ".join(TEXT_POOLINGS)),
    ("extract.text_max_length", -1, "at least 0"),
])
def test_a_bad_text_option_is_refused_when_the_config_is_read(tmp_path, key, value, words):
    with pytest.raises(ConfigError, match=words):
        write_config(tmp_path / "c.toml", {key: value})


def test_an_unloadable_text_encoder_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="cannot load text encoder") as err:
        TextEncoder(str(tmp_path / "nothing"), "mean", CPU)
    assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, tiny_models, encoders):
    root = tmp_path_factory.mktemp("text-extract")
    write_eval_set(root / "art" / "evalsets" / "caps", num=10, captions_per_image=3,
                   image_size=96, seed=0, shard_size=5)
    config = extract_config(root / "c.toml", root / "art", tiny_models, ["evalsets/caps"],
                            text_encoder=encoders["st"])
    run(load_config(config))
    return config, root / "art" / "embeddings" / "caps" / "t"


def test_extract_caches_text_enc_one_row_per_caption(extracted, encoders):
    _, emb_dir = extracted
    emb = load_eval_embeddings(emb_dir)
    m = emb.clip_text.shape[0]  # the set's captions, one row each in both text arrays
    assert m > 10 and emb.text_enc.shape == (m, 32)
    assert torch.allclose(emb.text_enc.norm(dim=-1), torch.ones(m), atol=2e-3)
    store = EmbeddingSet(emb_dir)
    shard = store.complete_shards()[0]
    captions = [c for row in store.meta_column(shard, "captions") for c in row]
    want = TextEncoder(encoders["st"], "auto", CPU).encode(captions)
    got = torch.from_numpy(np.load(store.array_path("text_enc", shard))).float()
    assert torch.allclose(got, want, atol=2e-3)  # float16 storage
    marker = store.markers.read(shard)
    assert marker["files"]["text_enc"]["shape"] == [len(captions), 32]
    assert marker["files"]["text_enc"]["dtype"] == "float16"


def test_the_manifest_identifies_the_text_encoder(extracted, encoders):
    _, emb_dir = extracted
    manifest = json.loads((emb_dir / "manifest.json").read_text())
    text = manifest["text_encoder"]
    assert (text["name"], text["pooling"], text["max_length"]) == (encoders["st"], "auto", 64)
    assert set(text["weights"]["sha256"]) == {"model.safetensors"}
    assert manifest["dims"]["text"] == 32 and manifest["dtypes"]["text_enc"] == "float16"
    assert "sentence_transformers" in manifest["runtime"]


def test_a_damaged_text_enc_is_refused_then_re_done(extracted):
    config, emb_dir = extracted
    store = EmbeddingSet(emb_dir)
    path = store.array_path("text_enc", "0")
    good = path.read_bytes()
    path.write_bytes(good[:-64])
    with pytest.raises(ConfigError, match=f"{path} is .* bytes"):
        load_eval_embeddings(emb_dir)
    run(load_config(config))  # extract finds the shard damaged and makes it again
    assert path.read_bytes() == good
