"""The training loop, top to bottom: cached tensors in, best projector out.

One epoch is a seeded permutation of the training rows cut into index slices (train/feed.py); each
step is one slice through the projector and the weighted loss. The step never waits for the GPU:
the non-finite check accumulates on device and is read only when a line is logged. After every
epoch: validation, the epoch's weights, the best model so far, metrics.jsonl, the plots, and last
train_state.pt, the commit point for --resume.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path

import torch

from dinov2clip.config import RESUME_AND_FORCE, Config, ConfigError, to_dict
from dinov2clip.device import autocast, compute_dtype, resolve_device
from dinov2clip.io_utils import remove_dead_temps
from dinov2clip.models.projector import (
    Projector,
    TwoTower,
    count_parameters,
    save_weights,
    unwrap,
)
from dinov2clip.store import (
    EmbeddingSet,
    RunDir,
    TrainedOn,
    embeddings_dir,
    embeddings_tag,
    load_split,
)
from dinov2clip.terminal import progress
from dinov2clip.train import checks as C
from dinov2clip.train import validate as V
from dinov2clip.train.dense_head import after_projector, require_heads
from dinov2clip.train.feed import Feed, placer, reserve_bytes
from dinov2clip.train.losses import WeightedLoss
from dinov2clip.train.plots import draw_curves
from dinov2clip.train.state import EMA, load_state, save_state

log = logging.getLogger(__name__)


def train(cfg: Config, resume: bool = False, force: bool = False) -> Path:
    if resume and force:
        raise ConfigError(RESUME_AND_FORCE)
    t, pcfg = cfg.train, cfg.train.projector
    tag = t.tag or embeddings_tag(cfg.extract)
    run = RunDir.named(cfg.root, t.run)
    emb_dir = embeddings_dir(cfg.root, t.dataset, tag)
    select_sign = C.select_sign(t.select_metric)
    device = resolve_device(t.device, "train.device")
    dtype = compute_dtype(t.compute_dtype, device)
    C.check_dims(cfg, emb_dir)
    require_heads(cfg, emb_dir)
    cfg = C.with_patch_tokens(cfg, emb_dir)  # the run's config.json records the resolved count
    t = cfg.train
    evalset = C.load_evalset(cfg, tag)
    torch.manual_seed(t.seed)
    two = t.kind == "two_tower"
    model = TwoTower(pcfg, t.text_projector) if two else Projector(pcfg)
    loss_fn = WeightedLoss(t.loss)
    _refuse_existing_run(run, resume, force)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 loss matmuls (B x B logits)

    reserve = reserve_bytes(count_parameters(model), t.batch_size, pcfg.width, pcfg.depth,
                            t.ema_decay > 0)
    place = placer(t.placement, device, reserve)
    train_set, val_set = load_split(emb_dir, t.pooling, t.val_fraction, t.num_patch_tokens,
                                    place_train=place, place_val=place, with_text=two)
    _prepare_run_dir(run, resume, force)  # after the data passed its checks: a damaged set
    # leaves no empty run directory, and --force keeps the old run
    _standardize(model, train_set)
    model.to(device)
    step_model = torch.compile(model) if t.compile else model  # saved unwrapped, see unwrap()
    loss_fn.to(device)
    params = list(model.parameters()) + list(loss_fn.parameters())
    opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay,
                            fused=device.type == "cuda")
    feed = Feed(train_set, t.batch_size, device, t.seed)
    fields = train_set.fields()  # a batch's tensors, by name: no teacher, no clip_img
    sched = _scheduler(opt, t.scheduler, t.lr, t.epochs * len(feed), t.warmup_fraction)
    ema = EMA(model, t.ema_decay) if t.ema_decay > 0 else None
    eval_model = ema.module if ema else model  # what is validated and saved

    fingerprint = _fingerprint(cfg, emb_dir, len(train_set), len(val_set))
    start_epoch, best = 0, {"epoch": -1, "score": -math.inf}
    if resume:
        start_epoch, best = load_state(run, fingerprint, model, loss_fn, opt, sched, ema)
        if start_epoch >= t.epochs:
            log.info("run %s is finished: all %d epochs are trained (best epoch %d); nothing to "
                     "resume (--force starts it over)", run, t.epochs, best["epoch"])
            after_projector(cfg, run, emb_dir, device, dtype, _scheduler, resume=True)
            return run.path
    if start_epoch == 0:
        run.write_config(cfg, trained_on(emb_dir, tag, t.dataset))
    log.info("training %s projector (%.1fM params) on %d pairs (%s), validating on %d, %s/%s",
             pcfg.kind, count_parameters(model) / 1e6, len(train_set), train_set.x.device,
             len(val_set), device, dtype)

    metrics = open(run.metrics, "a")
    for epoch in range(start_epoch, t.epochs):
        model.train()
        nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        bar = progress(feed.epoch(epoch), total=len(feed), desc=f"epoch {epoch + 1}/{t.epochs}",
                   unit="step")
        t0 = time.perf_counter()
        for i, batch in enumerate(bar):
            batch = dict(zip(fields, batch, strict=True))
            with autocast(device, dtype):
                pred, target = _outputs(step_model, batch)
            loss, parts = loss_fn(pred.float(), batch.get("clip_img"), target.float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if t.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
            opt.step()
            sched.step()
            if ema is not None:
                ema.update()
            nonfinite |= ~torch.isfinite(loss)  # stays on device: no sync per step
            if i % t.log_every == 0 or i == len(feed) - 1:  # the only syncs in the loop
                _stop_if_nonfinite(nonfinite, epoch, i, run)
                rate = (i + 1) * t.batch_size / (time.perf_counter() - t0)
                bar.set_postfix(loss=f"{loss.item():.4f}", samples_s=f"{rate:,.0f}")
                run.append_metrics(metrics, {"kind": "step", "epoch": epoch + 1,
                               "step": epoch * len(feed) + i + 1, "loss": loss.item(),
                               "lr": sched.get_last_lr()[0],
                               **{f"loss_{k}": v.item() for k, v in parts.items()}})
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0

        val = V.validate_split(eval_model, loss_fn, val_set, t.batch_size, t.val_retrieval_max,
                               device, dtype)
        if evalset is not None:
            val.update(V.validate_evalset(eval_model, evalset[0], evalset[1], device, dtype))
        record = {"kind": "epoch", "epoch": epoch + 1, "step": (epoch + 1) * len(feed),
                  "train_loss": loss.item(), "train_seconds": seconds,
                  "train_samples_per_s": len(train_set) / seconds, **val}
        save_weights(eval_model, run.checkpoint(epoch + 1))
        score = select_sign * val[t.select_metric]
        if best["epoch"] < 0 or score > best["score"]:  # a nan score never beats a real one
            best = {"epoch": epoch + 1, "score": score}
            unwrap(eval_model).save_pretrained(run.path)
        record["best_epoch"] = best["epoch"]
        run.append_metrics(metrics, record)
        draw_curves(run)
        save_state(run, epoch + 1, best, fingerprint, model, loss_fn, opt, sched, ema)
        log.info("epoch %d (%.0f samples/s): %s", epoch + 1, record["train_samples_per_s"],
                 ", ".join(f"{k} {v:.4g}" for k, v in val.items()))
    metrics.close()
    log.info("best epoch %d: %s %.4g (%s is better); projector in %s", best["epoch"],
             t.select_metric, select_sign * best["score"], "lower" if select_sign < 0 else "higher",
             run)
    after_projector(cfg, run, emb_dir, device, dtype, _scheduler, resume)  # train.dense.head
    return run.path


def _outputs(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(the image side's output, what the loss compares it with): CLIP's captions for an
    into-teacher batch; the text projector's output for a two-tower batch, which carries
    text_enc (and CLIP's arrays only when the set has a teacher)."""
    if "text" in batch:
        return model(batch["x"], batch["text"])
    return model(batch["x"]), batch["clip_txt"]


def _standardize(model, split) -> None:
    """Fix each tower's input standardisation (projector.standardize) from the train split."""
    towers = [(model.image, split.x), (model.text, split.text)] if isinstance(
        model, TwoTower) else [(model, split.x)]
    for tower, x in towers:
        if tower.cfg.standardize:
            mean, std = _feature_stats(x)
            tower.input_norm.mean.copy_(mean)
            tower.input_norm.std.copy_(std)


def _stop_if_nonfinite(nonfinite: torch.Tensor, epoch: int, step: int, run: RunDir) -> None:
    if nonfinite.item():
        kept = run.checkpoint_epochs()
        where = str(kept[-1][1].relative_to(run.path)) if kept else "no checkpoint yet"
        raise FloatingPointError(
            f"the loss became nan or inf in epoch {epoch + 1} (by step {step + 1}); stopped "
            f"without saving this epoch. Last good weights: {where} in {run}; try a lower "
            "train.lr or train.grad_clip")


def _feature_stats(x: torch.Tensor, chunk: int = 1 << 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std over rows, in float64 chunks (x may not fit twice in fp32)."""
    s = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    s2 = torch.zeros_like(s)
    for i in range(0, x.shape[0], chunk):
        c = x[i:i + chunk].double()
        s += c.sum(0)
        s2 += c.square().sum(0)
    n = x.shape[0]
    mean = s / n
    var = (s2 - n * mean.square()) / max(n - 1, 1)
    return mean.float().cpu(), var.clamp_min(1e-12).sqrt().float().cpu()


def _fingerprint(cfg: Config, emb_dir: Path, n_train: int, n_val: int) -> dict:
    """What must not change under --resume, by part, so a refusal can say which part changed."""
    t = cfg.train
    two = {"kind": t.kind, "text_projector": to_dict(t.text_projector)} \
        if t.kind == "two_tower" else {}  # into_teacher runs resume as before
    return {
        "architecture": {"projector": to_dict(t.projector), "pooling": t.pooling,
                         "num_patch_tokens": t.num_patch_tokens, **two},
        "data": {"dir": str(emb_dir), "shards": EmbeddingSet(emb_dir).fingerprint(),
                 "val_fraction": t.val_fraction, "n_train": n_train, "n_val": n_val},
        "loss": dict(t.loss),
        "schedule": {k: getattr(t, k) for k in ("epochs", "batch_size", "lr", "weight_decay",
                                                "scheduler", "warmup_fraction", "grad_clip",
                                                "seed", "ema_decay")},
    }


def _refuse_existing_run(run: RunDir, resume: bool, force: bool) -> None:
    path = run.path
    if path.exists() and any(path.iterdir()) and not (resume or force):
        raise ConfigError(f"run directory {path} exists; pass --resume to continue it or "
                          "--force to start over")


def _prepare_run_dir(run: RunDir, resume: bool, force: bool) -> None:
    _refuse_existing_run(run, resume, force)
    path = run.path
    if force and path.exists() and not resume:
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    for folder in (path, run.checkpoints):  # what a killed run was writing
        remove_dead_temps(folder)


def trained_on(emb_dir: Path, tag: str, dataset: str) -> TrainedOn:
    """What the run records of its embeddings: the tag, and the identity of the models that
    made them (the set's plan: model names, weights, preprocessing), for every later user."""
    plan = EmbeddingSet(emb_dir).read_plan() or {}
    return TrainedOn(tag=tag, dataset=dataset, models_hash=str(plan.get("models_hash", "")),
                     models=dict(plan.get("models") or {}))


def _scheduler(opt, kind: str, lr: float, total_steps: int, warmup_fraction: float):
    if kind == "onecycle":  # the seed's schedule, PyTorch defaults (30% warm-up, cosine anneal)
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(total_steps, 1))
    if kind == "cosine":  # linear warm-up, then cosine decay to zero
        warm = max(1, int(total_steps * warmup_fraction))
        decay = max(1, total_steps - warm)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / decay)))

        return torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)  # "constant"



