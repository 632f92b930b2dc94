"""Every recall path against a naive Python loop, on data made of exact ties.

Embeddings are small multiples of 1/4, so every dot product is exact in float16, float32 and
float64 alike, in any summation order: each implementation sees the very same scores, and any
difference is a real difference in ranking or tie-breaking, never rounding.
"""

import numpy as np
import pytest
import torch

from dinov2clip.evaluate import scores
from dinov2clip.evaluate.metrics import (
    image_to_text_ranks,
    recalls_percent,
    retrieval_recalls,
    text_to_image_ranks,
)
from dinov2clip.evaluate.retrieval import faiss_ranks
from dinov2clip.evaluate.scores import exact_ranks

KS = [1, 5, 10]


def oracle(text: torch.Tensor, image: torch.Tensor, c2i: list[int], ks) -> dict[str, float]:
    """The protocol, literally: sort every list by (score desc, index asc) and look."""
    t, im = text.double().tolist(), image.double().tolist()

    def score(c, j):
        return sum(a * b for a, b in zip(t[c], im[j], strict=True))

    out = {}
    for k in ks:
        hits = 0
        for c in range(len(t)):
            order = sorted(range(len(im)), key=lambda j, c=c: (-score(c, j), j))
            hits += c2i[c] in order[:k]
        out[f"t2i_R@{k}"] = 100.0 * hits / len(t)
        hits = 0
        for j in range(len(im)):
            order = sorted(range(len(t)), key=lambda c, j=j: (-score(c, j), c))
            hits += any(c2i[c] == j for c in order[:k])
        out[f"i2t_R@{k}"] = 100.0 * hits / len(im)
    return out


def tied_data(seed: int, n_images: int, dim: int, levels: int, shuffle: bool):
    """Quantised embeddings (many exact ties), 0 to 6 captions per image, fp16-exact."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 7, (n_images,), generator=g)
    counts[0] = max(int(counts[0]), 1)  # at least one caption in the set
    c2i = torch.repeat_interleave(torch.arange(n_images), counts)
    if shuffle:  # captions need not be grouped by image
        c2i = c2i[torch.randperm(len(c2i), generator=g)]
    q = lambda *s: torch.randint(-levels, levels + 1, s, generator=g).float() / 4  # noqa: E731
    image = q(n_images, dim)
    image[3] = image[5]  # duplicate images and captions: ties in both directions
    text = q(len(c2i), dim)
    text[1] = text[2]
    return text, image, c2i


CASES = [  # (seed, n_images, dim, levels, shuffle): heavy ties, lighter ties, unsorted captions
    (0, 30, 3, 1, False),
    (1, 40, 8, 3, False),
    (2, 35, 4, 2, True),
]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"seed{c[0]}")
def case(request):
    text, image, c2i = tied_data(*request.param)
    return text, image, c2i, oracle(text, image, c2i.tolist(), KS)


@pytest.mark.parametrize("chunk", [1, 7, 64, 100000])
def test_rank_path_matches_oracle_at_every_chunk_size(case, chunk):
    text, image, c2i, want = case
    t2i = text_to_image_ranks(text, image, c2i, chunk=chunk)
    i2t = image_to_text_ranks(image, text, c2i, chunk=chunk)
    assert recalls_percent(t2i, i2t, KS) == want


SCREENS = [torch.bfloat16, torch.float32]


@pytest.mark.parametrize("wide", [10 ** 9, -1], ids=["pairs", "whole"])
@pytest.mark.parametrize("dtype", SCREENS, ids=["bf16", "fp32"])
@pytest.mark.parametrize(("chunk", "threads"), [(1, 1), (7, 3), (64, 2), (100000, 1)])
def test_screened_path_matches_oracle_at_every_chunk_size(case, chunk, threads, dtype, wide,
                                                          monkeypatch):
    # Undecided entries re-checked pair by pair, or every such target as a whole float64 row.
    monkeypatch.setattr(scores, "_WIDE", wide)
    text, image, c2i, want = case
    t2i, i2t = exact_ranks(text, image, c2i, max(KS), chunk=chunk, dtype=dtype, threads=threads)
    assert recalls_percent(t2i, i2t, KS) == want
    # Exact ranks, not just recalls: the same as the reference path, clipped at the cap.
    cap = max(KS)
    assert torch.equal(torch.from_numpy(t2i), text_to_image_ranks(text, image, c2i).clamp(max=cap))
    assert torch.equal(torch.from_numpy(i2t), image_to_text_ranks(image, text, c2i).clamp(max=cap))


def test_faiss_path_matches_oracle_on_ties(case):
    text, image, c2i, want = case
    t2i, i2t = faiss_ranks(image, text, c2i, max(KS), use_gpu=False)
    assert recalls_percent(t2i, i2t, KS) == want


def test_fp16_input_gives_the_float32_answer(case):
    text, image, c2i, want = case
    assert retrieval_recalls(image.half(), text.half(), c2i, KS) == want
    for dtype in SCREENS:
        t2i, i2t = exact_ranks(text.half(), image.half(), c2i, 10, dtype=dtype)
        assert recalls_percent(t2i, i2t, KS) == want
    t2i, i2t = faiss_ranks(image.half(), text.half(), c2i, 10, use_gpu=False)
    assert recalls_percent(t2i, i2t, KS) == want


def test_oracle_itself_on_a_hand_checked_case():
    # All images identical: every caption ties with every image, so the lower index wins and
    # caption c finds its image j at rank j. Image 0 owns captions 0, 1; image 1 caption 2;
    # image 2 caption 3.
    image = torch.ones(3, 2)
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, 0.0]])
    c2i = torch.tensor([0, 0, 1, 2])
    want = oracle(text, image, c2i.tolist(), [1, 2])
    assert want["t2i_R@1"] == 50.0 and want["t2i_R@2"] == 75.0
    # Image->text: caption scores are 1, 1, 2, 0.5 for every image: order 2, 0, 1, 3.
    assert want["i2t_R@1"] == 100.0 / 3 and want["i2t_R@2"] == 200.0 / 3
    assert retrieval_recalls(image, text, c2i, [1, 2]) == want
    for dtype in SCREENS:
        t2i, i2t = exact_ranks(text, image, c2i, 2, dtype=dtype)
        assert recalls_percent(t2i, i2t, [1, 2]) == want


def test_image_without_captions_is_never_retrieved():
    image = torch.eye(3)
    text = torch.eye(3)[:2]  # image 2 has no caption
    c2i = torch.tensor([0, 1])
    for dtype in SCREENS:
        t2i, i2t = exact_ranks(text, image, c2i, 10, dtype=dtype)
        assert i2t.tolist() == [0, 0, 10] and t2i.tolist() == [0, 0]
    t2i_f, i2t_f = faiss_ranks(image, text, c2i, 10, use_gpu=False)
    assert i2t_f.tolist() == [0, 0, 10]
    assert recalls_percent(t2i, i2t, [1])["i2t_R@1"] == pytest.approx(200 / 3)


def test_recall_is_an_exact_share():
    ranks = np.array([0] * 1 + [20] * 2)  # 1 of 3
    assert recalls_percent(ranks, ranks, [1])["t2i_R@1"] == 100.0 * 1 / 3
