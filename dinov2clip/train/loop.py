"""The training loop, top to bottom: cached tensors in, best projector out.

One epoch is a permutation of the training rows cut into index slices; each step is one slice
through the projector and the weighted loss. After every epoch: validation, a checkpoint, a
train_state for --resume, the best model so far, metrics.jsonl and the plots.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from dinov2clip.config import Config, ConfigError, config_hash, to_dict, write_resolved
from dinov2clip.device import autocast, compute_dtype, resolve_device
from dinov2clip.evaluate.metrics import percent_of, retrieval_recalls
from dinov2clip.extract import embeddings_tag
from dinov2clip.train.data import Split, load_split
from dinov2clip.train.losses import WeightedLoss
from dinov2clip.train.plots import draw_curves
from dinov2clip.train.projector import Projector, count_parameters, save_weights, unwrap

log = logging.getLogger(__name__)


def train(cfg: Config, resume: bool = False, force: bool = False) -> Path:
    t = cfg.train
    run_dir = cfg.root / "runs" / t.run
    emb_dir = cfg.root / "embeddings" / t.dataset / (t.tag or embeddings_tag(cfg))
    _prepare_run_dir(run_dir, resume, force)
    device = resolve_device(t.device)
    dtype = compute_dtype(t.compute_dtype, device)
    torch.manual_seed(t.seed)

    train_set, val_set = load_split(emb_dir, t.pooling, t.val_fraction, t.num_patch_tokens)
    pcfg = _check_dims(cfg, train_set, emb_dir)
    model = Projector(pcfg)
    if pcfg.standardize:
        x = train_set.x.float()
        model.input_norm.mean.copy_(x.mean(0))
        model.input_norm.std.copy_(x.std(0).clamp_min(1e-6))
    model.to(device)
    loss_fn = WeightedLoss(t.loss).to(device)
    params = list(model.parameters()) + list(loss_fn.parameters())
    opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    steps_per_epoch = math.ceil(len(train_set) / t.batch_size)
    sched = _scheduler(opt, t.scheduler, t.lr, t.epochs * steps_per_epoch)
    train_set, val_set = train_set.to(device), val_set.to(device)

    fingerprint = {"projector": to_dict(pcfg), "loss": t.loss, "data": str(emb_dir),
                   "n_train": len(train_set), "pooling": t.pooling}
    start_epoch, best = 0, {"epoch": -1, "score": -math.inf}
    if resume and (run_dir / "train_state.pt").exists():
        start_epoch, best = _load_state(run_dir, fingerprint, model, loss_fn, opt, sched)
    else:
        write_resolved(cfg, run_dir)
    log.info("training %s projector (%.1fM params) on %d pairs, validating on %d, %s/%s",
             pcfg.kind, count_parameters(model) / 1e6, len(train_set), len(val_set), device,
             dtype)

    metrics = open(run_dir / "metrics.jsonl", "a")
    for epoch in range(start_epoch, t.epochs):
        model.train()
        perm = torch.randperm(len(train_set), device=device)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{t.epochs}", unit="step")
        t0 = time.perf_counter()
        for i in bar:
            idx = perm[i * t.batch_size:(i + 1) * t.batch_size]
            with autocast(device, dtype):
                pred = model(train_set.x[idx].float())
            loss, parts = loss_fn(pred.float(), train_set.clip_img[idx].float(),
                                  train_set.clip_txt[idx].float())
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"loss became {loss.item()} at epoch {epoch + 1} step {i}; the last good "
                    f"checkpoint is kept in {run_dir / 'checkpoints'}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if t.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
            opt.step()
            sched.step()
            step = epoch * steps_per_epoch + i + 1
            if i % t.log_every == 0 or i == steps_per_epoch - 1:
                rate = (i + 1) * t.batch_size / (time.perf_counter() - t0)
                bar.set_postfix(loss=f"{loss.item():.4f}", samples_s=f"{rate:,.0f}")
                _log(metrics, {"kind": "step", "epoch": epoch + 1, "step": step,
                               "loss": loss.item(), "lr": sched.get_last_lr()[0],
                               **{f"loss_{k}": v.item() for k, v in parts.items()}})

        val = validate(model, loss_fn, val_set, t.val_retrieval_max, device, dtype)
        record = {"kind": "epoch", "epoch": epoch + 1, "step": (epoch + 1) * steps_per_epoch,
                  "train_loss": loss.item(), **val}
        score = -val["val_loss"] if t.select_metric == "val_loss" else val[t.select_metric]
        save_weights(model, run_dir / "checkpoints" / f"epoch_{epoch + 1:03d}.safetensors")
        if score > best["score"]:
            best = {"epoch": epoch + 1, "score": score}
            unwrap(model).save_pretrained(run_dir)
        record["best_epoch"] = best["epoch"]
        _log(metrics, record)
        _save_state(run_dir, epoch + 1, best, fingerprint, model, loss_fn, opt, sched)
        draw_curves(run_dir)
        log.info("epoch %d: %s", epoch + 1, ", ".join(
            f"{k} {v:.4g}" for k, v in val.items()))
    metrics.close()
    log.info("best epoch %d (%s); projector in %s", best["epoch"], t.select_metric, run_dir)
    return run_dir


@torch.no_grad()
def validate(model, loss_fn, val: Split, max_retrieval: int, device, dtype) -> dict:
    """Val loss, cosine to CLIP, and R@1/5 against the val captions, also as % of CLIP's."""
    model.eval()
    preds = []
    for s in range(0, len(val), 8192):
        with autocast(device, dtype):
            preds.append(model(val.x[s:s + 8192].float()).float())
    pred = torch.cat(preds)
    loss, _ = loss_fn(pred, val.clip_img.float(), val.clip_txt.float())
    n = min(len(val), max_retrieval)
    proj = F.normalize(pred[:n], dim=-1).cpu()
    img, txt = val.clip_img[:n].float().cpu(), val.clip_txt[:n].float().cpu()
    pairs = torch.arange(n)
    ours = retrieval_recalls(proj, txt, pairs, ks=[1, 5])
    clip = retrieval_recalls(img, txt, pairs, ks=[1, 5])
    pct = percent_of(clip, ours)
    return {
        "val_loss": loss.item(),
        "val_cosine": F.cosine_similarity(pred, val.clip_img.float(), dim=-1).mean().item(),
        **{f"val_{k}": v for k, v in ours.items()},
        **{f"val_clip_{k}": v for k, v in clip.items()},
        "val_pct_clip": 0.5 * (pct["t2i_R@1"] + pct["i2t_R@1"]),
    }


def _check_dims(cfg: Config, train_set: Split, emb_dir: Path):
    """The projector config, after checking its dims against the cached embeddings."""
    t, p = cfg.train, cfg.train.projector
    d_in, d_out = train_set.x.shape[1], train_set.clip_img.shape[1]
    if (p.in_dim, p.out_dim) != (d_in, d_out):
        raise ConfigError(
            f"train.projector dims {p.in_dim}->{p.out_dim} do not match the embeddings in "
            f"{emb_dir}: {t.pooling} pooling gives {d_in}-d inputs, CLIP is {d_out}-d")
    return p


def _prepare_run_dir(run_dir: Path, resume: bool, force: bool) -> None:
    if run_dir.exists() and any(run_dir.iterdir()) and not (resume or force):
        raise ConfigError(f"run directory {run_dir} exists; pass --resume to continue it or "
                          "--force to start over")
    if force and run_dir.exists() and not resume:
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def _scheduler(opt, kind: str, lr: float, total_steps: int):
    if kind == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(total_steps, 1))
    if kind == "cosine":  # 5% linear warm-up, then cosine decay to zero
        warm = max(1, total_steps // 20)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total_steps -
                                                                                warm))))

        return torch.optim.lr_scheduler.LambdaLR(opt, factor)
    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    raise ConfigError(f"train.scheduler: unknown {kind!r} (known: onecycle, cosine, constant)")


def _log(fh, record: dict) -> None:
    fh.write(json.dumps(record) + "\n")
    fh.flush()


def _save_state(run_dir, epoch, best, fingerprint, model, loss_fn, opt, sched) -> None:
    from dinov2clip.io_utils import atomic_write

    state = {"epoch": epoch, "best": best, "fingerprint": config_hash(fingerprint),
             "model": unwrap(model).state_dict(), "loss": loss_fn.state_dict(),
             "opt": opt.state_dict(), "sched": sched.state_dict(),
             "rng": torch.get_rng_state()}
    atomic_write(run_dir / "train_state.pt", lambda tmp: torch.save(state, tmp))


def _load_state(run_dir, fingerprint, model, loss_fn, opt, sched) -> tuple[int, dict]:
    # train_state.pt is written by this trainer for its own resume, never downloaded.
    state = torch.load(run_dir / "train_state.pt", map_location="cpu", weights_only=False)
    if state["fingerprint"] != config_hash(fingerprint):
        raise ConfigError(f"cannot resume {run_dir}: its architecture, loss or data differ from "
                          "this config (use --force to start over)")
    unwrap(model).load_state_dict(state["model"], strict=True)
    loss_fn.load_state_dict(state["loss"], strict=True)
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    torch.set_rng_state(state["rng"])
    _truncate_metrics(run_dir / "metrics.jsonl", state["epoch"])
    log.info("resuming %s after epoch %d", run_dir, state["epoch"])
    return state["epoch"], state["best"]


def _truncate_metrics(path: Path, epoch: int) -> None:
    """Drop lines logged after the last completed epoch, so a resumed log has no duplicates."""
    from dinov2clip.io_utils import atomic_write_text

    if path.exists():
        keep = [ln for ln in path.read_text().splitlines()
                if ln.strip() and json.loads(ln)["epoch"] <= epoch]
        atomic_write_text(path, "".join(ln + "\n" for ln in keep))
