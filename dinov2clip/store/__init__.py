"""The embeddings store: the one owner of embeddings/<dataset>/<tag>/ on disk.

layout.py says where every file goes and when a set is complete; readers.py reads a complete set
as a training split or an eval set. Extract writes through the layout; train, evaluate, index and
the DinoV2Clip API read through here. lock.py keeps a second writer off a set or an index.
"""

from dinov2clip.store.layout import (
    ARRAYS,
    MANIFEST,
    META_SCHEMA,
    PLAN,
    DoneMarkers,
    EmbeddingSet,
    changes,
    embeddings_dir,
    embeddings_root,
    embeddings_tag,
)
from dinov2clip.store.lock import WriterLock, lock_path, writer_locks
from dinov2clip.store.readers import (
    POOLINGS,
    EvalEmbeddings,
    EvalPairs,
    Placer,
    Split,
    is_val_key,
    load_eval_embeddings,
    load_eval_pairs,
    load_split,
    on_cpu,
    pool,
    pooled_dim,
    recorded_patch_tokens,
)
from dinov2clip.store.writer import Embeddings, ShardWriter, concat, empty_embeddings

__all__ = ["ARRAYS", "MANIFEST", "META_SCHEMA", "PLAN", "POOLINGS", "DoneMarkers", "EmbeddingSet",
           "Embeddings", "ShardWriter", "concat", "empty_embeddings", "embeddings_dir",
           "embeddings_root", "embeddings_tag",
           "EvalEmbeddings", "EvalPairs", "Placer", "Split", "changes", "is_val_key",
           "load_eval_embeddings", "load_eval_pairs", "load_split", "on_cpu", "pool", "pooled_dim",
           "recorded_patch_tokens", "WriterLock", "lock_path", "writer_locks"]
