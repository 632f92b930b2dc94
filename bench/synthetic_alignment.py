"""Which loss aligns best? A synthetic task with known structure, no weights needed.

A shared latent drives DINO-like features (one fixed random non-linear map of most of the latent,
plus noise) and CLIP-like image and caption embeddings (another map of all of it; 5 captions per
test image). For each loss in the registry, and two mixes, the real trainer fits the same small
projector; the selected model (by the held-out split's val_pct_clip) is then scored on a separate
test set: its text<->image retrieval as % of what the "CLIP" image embeddings themselves reach.

    .venv/bin/python bench/synthetic_alignment.py            # about 10 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dinov2clip.config import load_config
from dinov2clip.data.synthetic_task import AlignmentTask, write_embeddings
from dinov2clip.models.projector import Projector
from dinov2clip.retrieval import percent_of, recall_at_k
from dinov2clip.store import load_eval_pairs
from dinov2clip.train.loop import train

LOSSES = {
    "unit_mse": {"unit_mse": 1.0},
    "cosine": {"cosine": 1.0},
    "cos_smoothl1": {"cos_smoothl1": 1.0},
    "text_infonce": {"text_infonce": 1.0},
    "image_infonce": {"image_infonce": 1.0},
    "retrieval_kd": {"retrieval_kd": 1.0},
    "unit_mse+text_infonce": {"unit_mse": 1.0, "text_infonce": 0.2},
    "unit_mse+retrieval_kd": {"unit_mse": 1.0, "retrieval_kd": 0.1},
}
D_DINO, D_CLIP = 96, 48


def build_task(art: Path, n_train: int, n_test: int) -> None:
    task = AlignmentTask(d_dino=D_DINO, d_clip=D_CLIP, latent=24, clip_only_dims=2, seed=0)
    write_embeddings(art / "embeddings" / "syn-train" / "t", task.sample(n_train, 1, seed=1),
                     1, shard_size=10_000, prefix="train-")
    write_embeddings(art / "embeddings" / "syn-test" / "t", task.sample(n_test, 5, seed=2),
                     5, shard_size=10_000, prefix="test-")


def fit(art: Path, name: str, loss: dict, args) -> Path:
    cfg_path = art.parent / "align.toml"
    cfg_path.write_text(f'artifacts = "{art}"\n[extract]\ntag = "t"\n[eval]\nsets = []\n')
    loss_toml = "{" + ", ".join(f"{k} = {v}" for k, v in loss.items()) + "}"
    cfg = load_config(cfg_path, [
        'train.dataset="syn-train"', f'train.run="{name}"', f"train.epochs={args.epochs}",
        f"train.batch_size={args.batch_size}", f"train.lr={args.lr}", "train.val_fraction=0.05",
        'train.device="cpu"', f"train.loss={loss_toml}", "train.log_every=20",
        'train.pooling="token_mean"', f"train.projector.in_dim={D_DINO}",
        f"train.projector.out_dim={D_CLIP}", "train.projector.width=256",
        "train.projector.depth=2", "train.projector.head_width=128"])
    return train(cfg, force=True)


def score(run_dir: Path, test) -> dict:
    model = Projector.from_pretrained(run_dir)
    with torch.no_grad():
        proj = F.normalize(model(test.x), dim=-1)
    ours = recall_at_k(proj, test.clip_text, test.caption_to_image, ks=[1, 5])
    clip = recall_at_k(test.clip_image, test.clip_text, test.caption_to_image, ks=[1, 5])
    epochs = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in epochs if r["kind"] == "epoch"]
    pct = percent_of(clip, ours)
    return {"projected": ours, "clip": clip, "pct_of_clip": pct,
            "pct_of_clip_mean_r1": 0.5 * (pct["t2i_R@1"] + pct["i2t_R@1"]),
            "best_epoch": epochs[-1]["best_epoch"],
            "val_cosine_best": epochs[epochs[-1]["best_epoch"] - 1]["val_cosine"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-train", type=int, default=20_000)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--losses", default=",".join(LOSSES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).parent / "results" / "synthetic_alignment.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                           "torch_threads": args.threads},
               "setup": {k: v for k, v in vars(args).items() if k != "out"}, "losses": {}}
    with tempfile.TemporaryDirectory() as tmp:
        art = Path(tmp) / "artifacts"
        build_task(art, args.n_train, args.n_test)
        test = load_eval_pairs(art / "embeddings" / "syn-test" / "t", "token_mean")
        for name in args.losses.split(","):
            t0 = time.perf_counter()
            res = score(fit(art, name, LOSSES[name], args), test)
            res["seconds"] = time.perf_counter() - t0
            results["losses"][name] = res
            print(f"{name:24s} {res['pct_of_clip_mean_r1']:6.1f}% of CLIP R@1 "
                  f"(t2i {res['projected']['t2i_R@1']:.1f} vs {res['clip']['t2i_R@1']:.1f}, "
                  f"i2t {res['projected']['i2t_R@1']:.1f} vs {res['clip']['i2t_R@1']:.1f})",
                  flush=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
