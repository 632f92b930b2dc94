"""What the tests share: the CLI in a subprocess, configs written through the config module,
small synthetic embeddings and datasets, one torch thread, a run killed at a chosen point, and
the hub library pointed at a test's cache and fake hub."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from dinov2clip.config import load_config

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.toml"
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # as torchrun sets
# Generous: a loaded 2-core machine can take minutes just to import torch. No test may fail only
# because the machine is slow.
TIMEOUT = 1200


def run_cli(*args: str, cwd: Path = REPO, check: bool = True,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """The real entry point in a subprocess, as a user runs it."""
    proc = subprocess.run([sys.executable, "-m", "dinov2clip.pipeline", *args], cwd=cwd,
                          capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=TIMEOUT)
    if check and proc.returncode != 0:
        raise AssertionError(f"pipeline {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def start_cli(log: Path, *args: str, env: dict | None = None,
              umask: int = -1) -> subprocess.Popen:
    """The real entry point started in a subprocess, as run_cli runs it, without waiting; its
    stdout and stderr go to LOG, interleaved as a terminal shows them. finish_cli waits.
    UMASK, if given, is the subprocess's (-1: this process's)."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "dinov2clip.pipeline", *args], cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, umask=umask)


def finish_cli(proc: subprocess.Popen, log: Path) -> str:
    """The log of a start_cli process, once it has ended; fails if the command failed."""
    proc.wait(timeout=TIMEOUT)
    text = log.read_text()
    if proc.returncode != 0:
        raise AssertionError(f"pipeline {' '.join(proc.args[3:])} failed ({proc.returncode}):\n"
                             f"{text}")
    return text


def one_thread():
    """One intra-op thread: tiny CPU ops on a shared 2-core machine run 10x faster, and match
    subprocesses run with ONE_THREAD. conftest makes it the `one_torch_thread` fixture."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def dead_pid() -> int:
    """The id of a process that has ended: the writer of a temp left behind."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@contextlib.contextmanager
def live_process():
    """A process alive until the block ends: the writer of a temp that must not be touched."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(86400)"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


# --- A run killed at a deterministic point -----------------------------------------------------

# Runs `pipeline ARGS...` with TARGET (module:attribute, e.g. dinov2clip.store:DoneMarkers.write)
# wrapped: right after its CALLS-th call returns, the process SIGKILLs itself. No handler, no
# cleanup, as `kill -9` leaves it, but at the same point on a fast or a loaded machine.
_KILLED_RUN = """
import importlib, os, signal, sys
module, _, attribute = sys.argv[1].partition(":")
*path, name = attribute.split(".")
owner = importlib.import_module(module)
for part in path:
    owner = getattr(owner, part)
original, calls, last = getattr(owner, name), [], int(sys.argv[2])
def call_then_die(*args, **kwargs):
    result = original(*args, **kwargs)
    calls.append(1)
    if len(calls) == last:
        os.kill(os.getpid(), signal.SIGKILL)
    return result
setattr(owner, name, call_then_die)
from dinov2clip.pipeline import main
sys.argv = ["pipeline", *sys.argv[3:]]
main()
"""


def one_process_env() -> dict:
    """This environment for a subprocess that runs alone (no rank of ours) on one thread."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    return {**env, **ONE_THREAD}


def run_killed(target: str, calls: int, *args: str) -> subprocess.CompletedProcess:
    """`pipeline ARGS` killed by SIGKILL right after TARGET's CALLS-th call; fails if it was not."""
    proc = subprocess.run([sys.executable, "-c", _KILLED_RUN, target, str(calls), *args],
                          cwd=REPO, env=one_process_env(), capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == -signal.SIGKILL, f"not killed ({proc.returncode}):\n{proc.stderr}"
    return proc


# --- The Hugging Face hub, in this process --------------------------------------------------------


def hub_here(monkeypatch, cache: Path, url: str | None = None) -> None:
    """huggingface_hub (and transformers through it), in this process, reads and fills CACHE and
    asks URL, a fake hub on 127.0.0.1, without a token; with no URL it is offline. It read
    HF_ENDPOINT, HF_HUB_CACHE, HF_HUB_OFFLINE and HF_HOME when imported, so setting the variables
    is not enough: its constants are set too."""
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", url is None)
    monkeypatch.setattr(hub, "HF_TOKEN_PATH", str(cache / "no-token"))
    monkeypatch.setenv("HF_TOKEN", "")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    if url:
        monkeypatch.setenv("HF_ENDPOINT", url)  # dinov2clip passes it on itself
        monkeypatch.setattr(hub, "ENDPOINT", url)
        monkeypatch.setattr(hub, "HUGGINGFACE_CO_URL_TEMPLATE",
                            url + "/{repo_id}/resolve/{revision}/{filename}")


# --- Configs ------------------------------------------------------------------------------------


def write_config(path: Path, settings: dict, base: Path | None = None) -> Path:
    """BASE's TOML (or nothing) with `section.key: value` settings, written to PATH and read
    back with load_config, which refuses a key that does not exist. A setting always lands,
    however the base file is laid out."""
    raw = tomllib.loads(base.read_text()) if base else {}
    for key, value in settings.items():
        *sections, name = key.split(".")
        table = raw
        for section in sections:
            table = table.setdefault(section, {})
        table[name] = value
    path.write_text(toml_text(raw))
    load_config(path)
    return path


def demo_settings(artifacts: Path) -> dict:
    """The demo shrunk for tests, with its artifacts, models and zero-shot set under ARTIFACTS."""
    return {"artifacts": str(artifacts),
            "data.synthetic.num_train": 384, "data.synthetic.num_eval": 60,
            "data.synthetic.shard_size": 128, "data.synthetic.zeroshot_per_class": 3,
            "extract.dino_model": f"{artifacts}/models/tiny-dinov2",
            "extract.clip_model": f"{artifacts}/models/tiny-clip/tiny-clip.json",
            "extract.clip_pretrained": f"{artifacts}/models/tiny-clip/open_clip_model.safetensors",
            "extract.num_workers": 0, "train.epochs": 4,
            "eval.zeroshot": f"{artifacts}/zeroshot/shapes"}


def demo_config(path: Path, artifacts: Path, settings: dict | None = None) -> Path:
    """configs/demo.toml shrunk for tests (demo_settings), then SETTINGS, written to PATH."""
    return write_config(path, {**demo_settings(artifacts), **(settings or {})}, base=DEMO)


def toml_text(table: dict, name: str = "") -> str:
    """TOML for a config's tables of strings, numbers, booleans and lists (tomli-w's job)."""
    lines, tables = [f"[{name}]"] if name else [], []
    for key, value in table.items():
        key = key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)
        if isinstance(value, dict):
            tables.append(toml_text(value, f"{name}.{key}" if name else key).rstrip("\n"))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines + tables) + "\n"


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return repr(value)  # inf and nan are TOML's spelling too
    if isinstance(value, str):
        return json.dumps(value)  # JSON's escapes are TOML's
    if isinstance(value, list):
        return "[" + ", ".join(map(_toml_value, value)) + "]"
    raise TypeError(f"no TOML for {value!r}")


def extract_config(path: Path, artifacts: Path, models: dict, datasets: list[str],
                   **extract) -> Path:
    """A config whose [extract] section runs the tiny models on CPU."""
    values = {"datasets": datasets, "dino_model": models["dino"], "clip_model": models["clip"],
              "clip_pretrained": models["clip_pretrained"], "tag": "t", "batch_size": 4,
              "num_workers": 0, "device": "cpu", **extract}
    return write_config(path, {"artifacts": str(artifacts),
                               **{f"extract.{k}": v for k, v in values.items()}})


# --- Train: small synthetic embeddings and their config ----------------------------------------

D_DINO, D_CLIP = 16, 8

TRAIN_SETTINGS = {
    "extract.tag": "t", "train.dataset": "syn", "train.run": "r", "train.pooling": "token_mean",
    "train.epochs": 3, "train.batch_size": 64, "train.lr": 3e-3, "train.val_fraction": 0.15,
    "train.log_every": 2, "train.device": "cpu", "train.select_metric": "val_cosine",
    "train.projector.kind": "residual", "train.projector.in_dim": D_DINO,
    "train.projector.out_dim": D_CLIP, "train.projector.width": 32, "train.projector.depth": 1,
    "train.projector.head_width": 16, "eval.sets": []}


def make_embeddings(art: Path, n: int = 600, shard_size: int = 200, dataset: str = "syn",
                    captions: int = 1, seed: int = 1, heads: int = 0) -> Path:
    """heads > 0: with dino_heads of that many heads, for a dense head to train on."""
    from dinov2clip.data.synthetic_task import AlignmentTask, write_embeddings

    task = AlignmentTask(d_dino=D_DINO, d_clip=D_CLIP, latent=8, seed=0)
    emb = task.sample(n, captions_per_image=captions, seed=seed, heads=heads)
    return write_embeddings(art / "embeddings" / dataset / "t", emb, captions, shard_size,
                            prefix=f"{dataset}-")


def train_config(art: Path, name: str = "c.toml") -> Path:
    """The train-stage test config over make_embeddings(art), next to ART."""
    return write_config(art.parent / name, {"artifacts": str(art), **TRAIN_SETTINGS})


def load(art: Path, *overrides: str):
    """The train test config with `section.key=value` overrides, as --set gives them."""
    return load_config(train_config(art), list(overrides))


# --- Data ---------------------------------------------------------------------------------------


def write_shape_classes(root: Path, classes=("circle", "square", "triangle"), per_class: int = 4,
                        seed: int = 0, size: int = 96) -> Path:
    """An ImageNet-style folder dataset: root/<shape>/<i>.png, one class per synthetic shape."""
    from dinov2clip.data.synthetic import write_class_folders

    write_class_folders(root, per_class, size, seed, tuple(classes))
    return root


def tree_bytes(root: Path, skip: tuple[str, ...] = ("config.json",)) -> dict[str, bytes]:
    """Every file under root (hidden temp files included) -> its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in skip}
