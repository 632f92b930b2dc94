"""`pipeline search`: a text query against an index, as a table or a self-contained HTML page."""

from __future__ import annotations

import base64
import html
import logging
import time
from pathlib import Path

import pyarrow.parquet as pq

from dinov2clip.config import ConfigError, UseOptions
from dinov2clip.formats.images import original_bytes, thumbnail_jpeg
from dinov2clip.index import faiss_index
from dinov2clip.io_utils import atomic_write_text
from dinov2clip.store import IndexDir

log = logging.getLogger(__name__)
THUMBNAIL_PX = 256


def load_index(index_dir: Path):
    """(faiss index, index.json summary, meta table) of a completed index."""
    import faiss

    out = IndexDir(index_dir)
    summary = out.read_summary()
    index = faiss.read_index(str(out.faiss("emb")))
    faiss_index.configure_search(index, summary)
    meta = pq.read_table(out.meta)
    if index.ntotal != meta.num_rows:
        raise ConfigError(f"{out}: index holds {index.ntotal} vectors but {out.meta.name} "
                          f"{meta.num_rows} rows")
    return index, summary, meta


def load_dino_index(index_dir: Path, summary: dict):
    """dino.faiss, ready to search and to reconstruct rows by id; None for an older index."""
    import faiss

    path = IndexDir(index_dir).faiss("dino")
    if not path.is_file():
        log.warning("%s has no %s (built before DINOv2 vectors were kept): similar-image "
                    "search is off until it is rebuilt with `pipeline index --force`", index_dir,
                    path.name)
        return None
    t0 = time.perf_counter()
    index = faiss.read_index(str(path))
    faiss_index.configure_search(index, summary)
    if summary.get("kind") == "ivf":
        faiss.extract_index_ivf(index).make_direct_map()  # reconstruct(id) needs it
    log.info("loaded %s (%d vectors) in %.1fs", path.name, index.ntotal, time.perf_counter() - t0)
    return index


def search(*, index_dir: Path, query: str, k: int = 10, html_out: Path | None = None,
           run: str | Path | None = None, root: Path | None = None,
           options: UseOptions = UseOptions(), nprobe: int = 0, table: bool = True
           ) -> list[dict]:
    """The k hits for query, each its rank, score, id and meta.parquet row; printed as a table
    unless table is False."""
    from dinov2clip.models.inference import DinoV2Clip

    if not query or not query.strip():
        raise ConfigError("empty query: give the text to search for")
    if k < 1:
        raise ConfigError(f"-k must be at least 1, got {k}")
    index, summary, meta = load_index(index_dir)
    if nprobe:
        faiss_index.configure_search(index, summary, nprobe)
    model = DinoV2Clip.from_pretrained(run or summary["run_dir"], root=root,
                                       **options.model_args(), image_tower=False)
    if model.dim != index.d:
        raise ConfigError(f"the index holds {index.d}-d embeddings but the run's text tower "
                          f"gives {model.dim}-d")
    q = model.encode_text([query]).numpy()  # (1, dim), L2-normalised
    scores, ids = index.search(q, min(k, index.ntotal))
    hits = []
    for rank, (score, i) in enumerate(zip(scores[0], ids[0], strict=True), start=1):
        if i < 0:  # IVF with few probed lists can return fewer than k
            continue
        row = {c: meta.column(c)[int(i)].as_py() for c in meta.column_names}
        hits.append({"rank": rank, "score": float(score), "id": int(i), **row})
    if table:
        print_hits(query, hits)
    if html_out:
        write_html(Path(html_out), query, hits)
        log.info("wrote %s", html_out)
    return hits


def where(hit: dict) -> str:
    """What a user can open: the URL when there is one, else the file (or tar + key)."""
    if hit.get("url"):
        return hit["url"]
    return hit["path"] if hit["kind"] == "file" else f"{hit['path']}#{hit['key']}"


def print_hits(query: str, hits: list[dict]) -> None:
    from rich.table import Table

    from dinov2clip.terminal import make_console

    table = Table(title=f"search: {query!r}")
    table.add_column("rank", justify="right")
    table.add_column("score", justify="right")
    table.add_column("path or URL", overflow="fold")
    table.add_column("caption", overflow="fold")
    for h in hits:
        table.add_row(str(h["rank"]), f"{h['score']:.4f}", where(h), h.get("caption") or "")
    make_console().print(table)


def write_html(path: Path, query: str, hits: list[dict]) -> None:
    """One page, images inlined as thumbnails so it opens anywhere; remote URLs linked."""
    cards = []
    for h in hits:
        src = _thumbnail_uri(h)
        cards.append(
            f'<figure><img src="{html.escape(src, quote=True)}" loading="lazy" alt="">'
            f"<figcaption><b>#{h['rank']}</b> {h['score']:.4f}<br>"
            f"{html.escape(h.get('caption') or '')}<br><small>{html.escape(where(h))}</small>"
            "</figcaption></figure>")
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>search: {html.escape(query)}</title><style>"
        "body{font-family:sans-serif;margin:1em}main{display:flex;flex-wrap:wrap;gap:12px}"
        "figure{width:260px;margin:0}img{max-width:256px;max-height:256px;display:block}"
        "figcaption{font-size:13px;word-break:break-all}</style></head><body>"
        f"<h2>{html.escape(query)}</h2><main>{''.join(cards)}</main></body></html>\n")
    atomic_write_text(path, page)


def _thumbnail_uri(hit: dict) -> str:
    link = Path(hit["path"]).as_uri() if hit["kind"] == "file" else hit.get("url") or ""
    try:  # size, mtime_ns: absent from an index written before meta.parquet kept them
        data = original_bytes(hit["kind"], hit["path"], hit["key"], hit.get("size"),
                              hit.get("mtime_ns"))
        jpeg = thumbnail_jpeg(data, THUMBNAIL_PX)
    except Exception:  # noqa: BLE001 - a hit whose image changed or no longer decodes keeps its link
        return link
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
