"""bench/gpu_check.py --smoke: the GPU acceptance script runs end to end on a CPU, so it cannot
rot between GPU loans (the full run is the same code with real-size models on CUDA)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow  # the whole GPU check, on a CPU with tiny models
def test_gpu_check_smoke_runs_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--smoke", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["mode"] == "smoke" and r["device"] == "cpu"
    for section in ("extract", "agreement", "train", "eval", "faiss", "dense"):
        assert "error" not in r[section], r[section]
    ex = r["extract"]
    assert ex["images"] == 200
    for decode in ("cpu", "gpu"):
        run = ex["decode"][decode]
        assert run["images_per_s"] > 0 and run["cpu_cores_used"] > 0
        assert {"read", "model", "write"} <= set(run["phase_seconds"])
    assert ex["decode"]["gpu"]["phase_seconds"]["device_decode"] > 0
    assert min(ex["decode_gpu_vs_cpu_min_cosine"].values()) >= 0.999
    assert ex["decode_modes_vs_pil"] == {"L": 0, "CMYK": 0}  # torchvision's CPU decoder
    assert min(r["agreement"]["min_cosine_bf16_vs_fp32"].values()) >= 0.99
    assert r["train"]["eager"]["samples_per_s"] > 0 and r["train"]["compile"]["samples_per_s"] > 0
    assert set(r["eval"]) >= {"mscoco", "flickr30k", "flickr8k"}
    assert r["faiss"]["ran_on"] == "cpu (fallback)" and r["faiss"]["self_is_top1"]
    dense = r["dense"]
    assert dense["images"] == 2 and dense["windows_per_image"] == 2 and dense["images_per_s"] > 0
    assert dense["labels_shape"] == [375, 500] and dense["labels_in_range"]
    assert dense["head"] == "projector" and dense["classes"] == 5
    assert dense["pamr_images"] == 1 and dense["pamr_images_per_s"] > 0
