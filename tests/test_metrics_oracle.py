"""The one ranking function (dinov2clip.retrieval) against a naive Python loop, on exact ties.

Embeddings are small multiples of 1/4, so every dot product is exact in float16, float32 and
float64 alike, in any summation order: the function and the oracle see the very same scores, and
any difference is a real difference in ranking or tie-breaking, never rounding.
"""

import pytest
import torch

from dinov2clip import retrieval
from dinov2clip.retrieval import recall_at_k

NEVER = retrieval._NEVER


def retrieval_ranks(text, image, c2i, chunk=retrieval.CHUNK):
    """The ranks the recalls count (private to retrieval.py: the project calls only recalls)."""
    return retrieval._ranks_of(retrieval.score_matrix(text, image), c2i, chunk)

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


def tied_data(seed: int, n_images: int, dim: int, shuffle: bool):
    """Unit vectors made of four entries of +-1/2 (many exact ties), 0 to 6 captions per image.

    Their norm is exactly 1 in any precision, so re-normalising leaves them as they are, and
    every score is a multiple of 1/4, exact in fp16, float32 and float64 alike.
    """
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 7, (n_images,), generator=g)
    counts[0] = max(int(counts[0]), 1)  # at least one caption in the set
    c2i = torch.repeat_interleave(torch.arange(n_images), counts)
    if shuffle:  # captions need not be grouped by image
        c2i = c2i[torch.randperm(len(c2i), generator=g)]

    def unit(n):
        out = torch.zeros(n, dim)
        for row in out:
            signs = torch.randint(0, 2, (4,), generator=g).float() - 0.5
            row[torch.randperm(dim, generator=g)[:4]] = signs
        return out

    image = unit(n_images)
    image[3] = image[5]  # duplicate images and captions: ties in both directions
    text = unit(len(c2i))
    text[1] = text[2]
    return text, image, c2i


CASES = [  # (seed, n_images, dim, shuffle): heavy ties, lighter ties, unsorted captions
    (0, 30, 4, False),
    (1, 40, 8, False),
    (2, 35, 5, True),
]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"seed{c[0]}")
def case(request):
    text, image, c2i = tied_data(*request.param)
    return text, image, c2i, oracle(text, image, c2i.tolist(), KS)


@pytest.fixture(params=[1, 2], ids=lambda n: f"{n}threads")
def torch_threads(request):
    """Chunks are counted on torch's thread count: one thread, and two counting at once."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("chunk", [1, 7, 64, 100000])
def test_ranks_match_oracle_at_every_chunk_size(case, chunk, torch_threads):
    text, image, c2i, want = case
    assert recall_at_k(text, image, c2i, KS, chunk=chunk) == want
    # Exact ranks, not just recalls: every chunk size gives the very same ones.
    t2i, i2t = retrieval_ranks(text, image, c2i, chunk=chunk)
    want_t2i, want_i2t = retrieval_ranks(text, image, c2i, chunk=100000)
    assert torch.equal(t2i, want_t2i) and torch.equal(i2t, want_i2t)


def test_fp16_input_gives_the_float32_answer(case):
    text, image, c2i, want = case
    assert recall_at_k(text.half(), image.half(), c2i, KS) == want
    assert recall_at_k(text.half(), image.half(), c2i, KS, chunk=7) == want


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
    assert recall_at_k(text, image, c2i, [1, 2]) == want
    # Unnormalised input: the function normalises, as the protocol does.
    assert recall_at_k(3 * text, 2 * image, c2i, [1, 2]) == want


def test_image_without_captions_is_never_retrieved():
    image = torch.eye(3)
    text = torch.eye(3)[:2]  # image 2 has no caption
    c2i = torch.tensor([0, 1])
    t2i, i2t = retrieval_ranks(text, image, c2i)
    assert i2t.tolist() == [0, 0, NEVER] and t2i.tolist() == [0, 0]
    assert recall_at_k(text, image, c2i, [1])["i2t_R@1"] == pytest.approx(200 / 3)


def test_recall_is_an_exact_share():
    # 1 of 3 captions finds its image first: exactly 100 / 3, not a float mean's rounding.
    image = torch.eye(3)
    text = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    c2i = torch.tensor([0, 1, 2])
    assert recall_at_k(text, image, c2i, [1])["t2i_R@1"] == 100.0 * 1 / 3


def test_non_finite_embeddings_are_refused():
    text, image = torch.eye(2), torch.eye(2)
    image[1, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN or inf"):
        recall_at_k(text, image, torch.tensor([0, 1]), [1])
