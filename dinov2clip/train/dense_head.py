"""Training a dense head after the projector, into the same run, from cached tensors.

talk2dino: psi maps each image's first caption (the teacher's cached text embedding) into the
backbone's space; the loss is Talk2DINO's InfoNCE against the image's per-head attention-pooled
patch embeddings (extract.dino_heads), the best head per pair (dense/talk2dino.py). The loop's
machinery is the projector's: the same key-hash split, Feed's index slices of a seeded
permutation, the scheduler, autocast and metrics.jsonl lines ("dense_step", "dense_epoch"). The
best epoch by validation text->image R@1 is saved through RunDir.

It resumes as the projector does (train/state.py): after each head epoch, the best weights, the
epoch's metrics lines and last <head>_state.pt (weights, optimiser, scheduler, RNG, best so far),
the commit point. `train --resume` on a run killed in the head replays it from its last finished
epoch, bitwise on a CPU; a finished head is not trained again; a config that changes the head's
training (train.dense, the seed, the split, the schedule, the data) is refused, naming the key.
A head none of whose epochs finished starts over, under the config at hand.
"""

from __future__ import annotations

import logging
import math
import time

import torch

from dinov2clip.config import Config, ConfigError, to_dict
from dinov2clip.dense.talk2dino import Talk2DinoConfig, Talk2DinoMap, best_head_similarity, infonce
from dinov2clip.device import autocast
from dinov2clip.retrieval import recall_of
from dinov2clip.store import EmbeddingSet, HeadPairs, RunDir, Split, load_head_pairs
from dinov2clip.terminal import progress
from dinov2clip.train.feed import Feed
from dinov2clip.train.state import read_head_state, restore_head_state, save_head_state

log = logging.getLogger(__name__)


def require_heads(cfg: Config, emb_dir) -> None:
    """Before any projector epoch: a set without the heads fails now, not after hours."""
    if cfg.train.dense.head and not EmbeddingSet(emb_dir).has_dino_heads():
        raise ConfigError(f"train.dense.head needs dino_heads in {emb_dir}: set "
                          "extract.dino_heads = true and run `pipeline extract`")


def after_projector(cfg: Config, run: RunDir, emb_dir, device, dtype, scheduler,
                    resume: bool = False) -> None:
    """train.dense.head once the projector is trained; with resume, from the head's last
    finished epoch, and not at all when it is finished."""
    if cfg.train.dense.head:
        train_dense_head(cfg, run, emb_dir, device, dtype, scheduler, resume)


def train_dense_head(cfg: Config, run: RunDir, emb_dir, device: torch.device,
                     dtype: torch.dtype, scheduler, resume: bool = False) -> dict:
    """Train cfg.train.dense's head; its best validation record. scheduler: the loop's own
    (optimizer, kind, lr, total steps, warm-up) -> LR scheduler."""
    t, d = cfg.train, cfg.train.dense
    fingerprint = _fingerprint(cfg, emb_dir)
    state = read_head_state(run, d.head, fingerprint) if resume else None  # refuses first
    if state is not None and state["epoch"] >= d.epochs:
        log.info("the %s head of %s is finished: all %d epochs are trained (best epoch %d)",
                 d.head, run, d.epochs, state["best"]["epoch"])
        return state["best"]
    train_set, val_set = load_head_pairs(emb_dir, t.val_fraction)
    n_heads, d_dino = train_set.heads.shape[1:]
    torch.manual_seed(t.seed)
    model = Talk2DinoMap(Talk2DinoConfig(text_dim=train_set.text.shape[1], dino_dim=d_dino,
                                         hidden=d.hidden or d_dino)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=d.lr, weight_decay=d.weight_decay)
    # Feed slices (x, img, txt): x carries the heads flattened, the text rides as both others
    feed = Feed(Split(train_set.heads.flatten(1), train_set.text, train_set.text),
                d.batch_size, device, t.seed)
    sched = scheduler(opt, t.scheduler, d.lr, d.epochs * len(feed), t.warmup_fraction)
    start, best = restore_head_state(run, state, model, opt, sched) if resume else (
        0, {"epoch": -1, "val_t2i_R@1": -math.inf})
    log.info("training the %s head (%d params) on %d images x %d heads, validating on %d%s",
             d.head, sum(p.numel() for p in model.parameters()), len(train_set), n_heads,
             len(val_set), f", from its epoch {start + 1}" if start else "")
    with open(run.metrics, "a") as metrics:
        for epoch in range(start, d.epochs):
            model.train()
            t0 = time.perf_counter()
            bar = progress(feed.epoch(epoch), total=len(feed),
                           desc=f"{d.head} epoch {epoch + 1}/{d.epochs}", unit="step")
            for i, (x, _, txt) in enumerate(bar):
                with autocast(device, dtype):
                    loss = infonce(model, txt, x.view(-1, n_heads, d_dino))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if i % t.log_every == 0 or i == len(feed) - 1:
                    run.append_metrics(metrics, {"kind": "dense_step", "head": d.head,
                                                 "epoch": epoch + 1, "loss": loss.item()})
            val = validate(model, val_set, d.batch_size, t.val_retrieval_max, device)
            record = {"kind": "dense_epoch", "head": d.head, "epoch": epoch + 1,
                      "train_loss": loss.item(), "train_seconds": time.perf_counter() - t0,
                      **val}
            if val["val_t2i_R@1"] > best["val_t2i_R@1"] or best["epoch"] < 0:
                best = {"epoch": epoch + 1, **val}
                model.save(run.dense_head_config(d.head), run.dense_head_weights(d.head))
            record["best_epoch"] = best["epoch"]
            run.append_metrics(metrics, record)
            save_head_state(run, d.head, epoch + 1, best, fingerprint, model, opt, sched)
            log.info("%s epoch %d: val loss %.4g, t2i R@1 %.2f", d.head, epoch + 1,
                     val["val_loss"], val["val_t2i_R@1"])
    return best


def _fingerprint(cfg: Config, emb_dir) -> dict:
    """What the head's training must keep under --resume, as the config spells it."""
    t = cfg.train
    kept = ("seed", "val_fraction", "scheduler", "warmup_fraction", "val_retrieval_max")
    return {"train": {"dense": to_dict(t.dense), **{k: getattr(t, k) for k in kept}},
            "data": {"dir": str(emb_dir), "shards": EmbeddingSet(emb_dir).fingerprint()}}


@torch.no_grad()
def validate(model: Talk2DinoMap, val: HeadPairs, batch_size: int, max_pairs: int,
             device: torch.device) -> dict:
    """Held-out InfoNCE (in batches, as trained) and R@1/5 both ways among up to max_pairs
    images, each scored by its best head, ranked by retrieval.py's one rule."""
    model.eval()
    losses = []
    for s in range(0, len(val), batch_size):
        txt, heads = (v[s:s + batch_size].to(device).float() for v in (val.text, val.heads))
        losses.append(float(infonce(model, txt, heads)) * len(txt))
    n = min(len(val), max_pairs)
    heads = val.heads[:n].to(device)
    mapped = model(val.text[:n].to(device).float())
    # in text chunks: (chunk, n, heads) floats at a time, not (n, n, heads)
    scores = torch.cat([best_head_similarity(mapped[s:s + 256], heads)
                        for s in range(0, n, 256)])
    recalls = recall_of(scores, torch.arange(n, device=scores.device), (1, 5))
    model.train()
    return {"val_loss": sum(losses) / len(val), **{f"val_{k}": v for k, v in recalls.items()}}
