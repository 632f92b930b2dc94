"""The commands that use a finished run: zero-shot classification, segmenting a folder, indexing
a collection, searching it, and serving it."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from dinov2clip.cli.app import (
    ArtifactsOpt,
    BatchOpt,
    DeviceOpt,
    DtypeOpt,
    RunOpt,
    WaitOpt,
    WorkersOpt,
    guarded,
)
from dinov2clip.config import UseOptions


def zeroshot(
    run: RunOpt,
    data: Annotated[Path, typer.Option("--data", help="Folder with one sub-folder per class.")],
    classnames: Annotated[Path | None, typer.Option(
        help="Class names: JSON list or {folder: name}, or TXT one per line (sorted folder "
             "order). Default: folder names, _ as spaces.")] = None,
    templates: Annotated[str, typer.Option(help="Prompt set: imagenet80 | short | plain.")
                         ] = "imagenet80",
    out: Annotated[Path | None, typer.Option(
        help="Results JSON. Default: <run>/zeroshot/<data folder name>-<hash of its path>.json"
    )] = None,
    max_per_class: Annotated[int, typer.Option(help="Use at most this many images per class "
                                                    "(0: all).")] = 0,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "bf16",
    batch_size: BatchOpt = 64,
    num_workers: WorkersOpt = 2,
    artifacts: ArtifactsOpt = Path("artifacts"),
) -> None:
    """Zero-shot top-1/top-5 for CLIP, projected DINOv2 and their ensemble, with % of CLIP."""
    from dinov2clip.evaluate.zeroshot import run_zeroshot

    guarded(lambda: run_zeroshot(
        run=run, root=artifacts, data_dir=data, classnames_file=classnames, templates=templates,
        out=out,
        options=UseOptions(device=device, dtype=dtype, batch_size=batch_size,
                           num_workers=num_workers),
        max_per_class=max_per_class))


def segment(
    run: RunOpt,
    images: Annotated[Path, typer.Option("--images", help="An image folder (recursive).")],
    classes: Annotated[str, typer.Option(help='Comma-separated class names: "cat,dog,grass".')],
    out: Annotated[Path | None, typer.Option(
        help="Output folder. Default: <run>/segment/<images folder name>")] = None,
    background: Annotated[float | None, typer.Option(
        help="A cosine threshold: pixels whose best class scores below it are background "
             "(label 0). Default: no background class.")] = None,
    pamr: Annotated[bool, typer.Option(
        help="Refine each window's class scores by its pixels (PAMR, as Talk2DINO evaluates)."
    )] = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "bf16",
    artifacts: ArtifactsOpt = Path("artifacts"),
) -> None:
    """Open-vocabulary segmentation of a folder: label maps and overlays, the eval's protocol."""
    from dinov2clip.segment import segment_folder

    guarded(lambda: segment_folder(run=run, images=images, classes=classes, out=out,
                                   background=background, pamr=pamr, root=artifacts,
                                   options=UseOptions(device=device, dtype=dtype)))


def index(
    run: RunOpt,
    images: Annotated[Path, typer.Option(
        "--images", help="An image folder (recursive: jpg png webp gif bmp) or a folder of *.tar "
                         "webdataset shards.")],
    out: Annotated[Path | None, typer.Option(
        help="Index directory. Default: <run>/index/<images folder name>")] = None,
    kind: Annotated[str, typer.Option(
        help="auto (exact up to --exact-max, IVF beyond) | flat | ivf | hnsw")] = "auto",
    exact_max: Annotated[int, typer.Option(help="Largest collection given an exact index.")
                         ] = 100_000,
    chunk_size: Annotated[int, typer.Option(help="Folder images per resumable chunk.")] = 4096,
    force: Annotated[bool, typer.Option(help="Delete an existing index and start over.")] = False,
    wait: WaitOpt = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "bf16",
    batch_size: BatchOpt = 64,
    num_workers: WorkersOpt = 2,
    artifacts: ArtifactsOpt = Path("artifacts"),
) -> None:
    """Embed an image collection with projected DINOv2 into a FAISS index (resumable)."""
    from dinov2clip.index import build_index

    guarded(lambda: build_index(
        run=run, root=artifacts, images=images, out_dir=out, chunk_size=chunk_size,
        exact_max=exact_max,
        kind=kind, options=UseOptions(device=device, dtype=dtype, batch_size=batch_size,
                                      num_workers=num_workers),
        force=force, wait=wait))


def search(
    query: Annotated[str, typer.Argument(help="The text to search for.")],
    index_dir: Annotated[Path, typer.Option("--index", help="A directory `pipeline index` "
                                                           "wrote.")],
    k: Annotated[int, typer.Option("-k", help="Number of results.")] = 10,
    html: Annotated[Path | None, typer.Option(help="Also write a page showing the images.")
                    ] = None,
    run: Annotated[str | None, typer.Option(
        "--run", help="Run whose text tower encodes the query (a name, directory or "
                      "hf-hub:ORG/NAME). Default: the index's run.")] = None,
    nprobe: Annotated[int, typer.Option(help="IVF lists to visit (0: as built).")] = 0,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the hits as one JSON document on stdout, and nothing else there "
                       "(for scripts): {\"query\", \"results\": [{\"rank\", \"score\", \"id\", "
                       "\"key\", \"path\", ...}]}.")] = False,
    device: DeviceOpt = "auto",
    artifacts: ArtifactsOpt = Path("artifacts"),
) -> None:
    """Search an index with a text query: rank, score, path or URL, caption."""
    from dinov2clip.index import search as search_index

    def find(table: bool) -> list[dict]:
        return search_index(index_dir=index_dir, query=query, k=k, html_out=html, run=run,
                            root=artifacts, options=UseOptions(device=device), nprobe=nprobe,
                            table=table)

    guarded(lambda: _print_json(query, find) if as_json else find(True))


def _print_json(query: str, search_fn: Callable[[bool], list[dict]]) -> None:
    # Whatever a library prints goes to stderr: a script reads stdout as one JSON document.
    with contextlib.redirect_stdout(sys.stderr):
        hits = search_fn(False)
    typer.echo(json.dumps({"query": query, "results": hits}, ensure_ascii=False))


def serve(
    index_dir: Annotated[Path, typer.Option("--index", help="A directory `pipeline index` "
                                                           "wrote.")],
    run: Annotated[str | None, typer.Option(
        "--run", help="Run whose towers encode queries (a name, directory or "
                      "hf-hub:ORG/NAME). Default: the index's run.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")
                    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    max_batch: Annotated[int, typer.Option(help="Most text queries encoded in one batch.")
                         ] = 32,
    device: DeviceOpt = "auto",
    artifacts: ArtifactsOpt = Path("artifacts"),
) -> None:
    """Serve an index: a JSON API (text, similar-image and image search) and a web page."""
    from dinov2clip.serve import STOPPED
    from dinov2clip.serve import serve as serve_index

    guarded(lambda: serve_index(index_dir=index_dir, run=run, root=artifacts, host=host,
                                port=port, device=device, max_batch=max_batch),
            interrupted=STOPPED)
