"""The eval stage: CLIP_benchmark retrieval for CLIP, projected DINOv2 and their ensemble."""

from __future__ import annotations

import logging
from pathlib import Path

import torch.nn.functional as F

from dinov2clip.config import Config, ConfigError, write_resolved
from dinov2clip.io_utils import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


def run(cfg: Config) -> dict:
    from dinov2clip.evaluate.embeddings import load_eval_embeddings, project, run_config
    from dinov2clip.evaluate.metrics import percent_of
    from dinov2clip.evaluate.report import markdown, print_table, recall_chart
    from dinov2clip.evaluate.retrieval import faiss_recalls
    from dinov2clip.extract import embeddings_tag
    from dinov2clip.train.projector import Projector

    run_name = cfg.eval.run or cfg.train.run
    run_dir = cfg.root / "runs" / run_name
    train_cfg = run_config(run_dir)["train"]
    projector = Projector.from_pretrained(run_dir)
    tag = train_cfg.get("tag") or embeddings_tag(cfg)
    ks = list(cfg.eval.ks)
    results = {"run": run_name, "run_dir": str(run_dir), "tag": tag, "ks": ks, "sets": {},
               "note": _note(cfg)}
    for name in cfg.eval.sets:
        emb_dir = cfg.root / "embeddings" / name / tag
        if not emb_dir.is_dir():
            raise ConfigError(f"eval set {name!r}: no embeddings at {emb_dir} (is it in "
                              "extract.datasets as evalsets/" + name + "?)")
        emb = load_eval_embeddings(emb_dir)
        projected = project(emb, projector, train_cfg["pooling"], train_cfg["num_patch_tokens"])
        ensemble = F.normalize(emb.clip_image + projected, dim=-1)
        res = {"n_images": emb.clip_image.shape[0], "n_captions": emb.clip_text.shape[0]}
        for row, image in (("clip", emb.clip_image), ("projected", projected),
                           ("ensemble", ensemble)):
            res[row] = faiss_recalls(image, emb.clip_text, emb.caption_to_image, ks,
                                     cfg.eval.use_gpu_faiss)
        res["projected_pct"] = percent_of(res["clip"], res["projected"])
        res["ensemble_pct"] = percent_of(res["clip"], res["ensemble"])
        results["sets"][name] = res
    out = run_dir / "eval"
    write_resolved(cfg, out)
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "report.md", markdown(results, ks))
    recall_chart(results, ks, out / "recall.png")
    print_table(results, ks)
    log.info("eval results in %s", out)
    return results


def _note(cfg: Config) -> str:
    if Path(cfg.extract.dino_model).name.startswith("tiny") or cfg.data.synthetic.tiny_models:
        return ("These models are tiny and randomly initialised: the numbers show only that the "
                "machinery works, not how well DINOv2 aligns with CLIP.")
    return ""
