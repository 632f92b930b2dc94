"""The on-disk contracts, one owner each: the embeddings set (embeddings/<dataset>/<tag>/), the
training run (runs/<run>/, RunDir) and the index of an image collection (IndexDir).

layout.py says where every file of a set goes and when it is complete; writer.py writes a set's
shards; readers.py reads a complete set as a training split or an eval set. Extract writes
through here; train, evaluate, index and the DinoV2Clip API read through here. integrity.py
checks each file a reader opens against its done-marker; lock.py keeps a second writer off a set
or an index directory.
"""

from dinov2clip.store.index import IndexDir
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
from dinov2clip.store.run import RunDir, TrainedOn, runs_root
from dinov2clip.store.writer import Embeddings, ShardWriter, concat, empty_embeddings

__all__ = ["ARRAYS", "MANIFEST", "META_SCHEMA", "PLAN", "POOLINGS", "changes", "concat",
           "DoneMarkers", "Embeddings", "embeddings_dir", "embeddings_root", "embeddings_tag",
           "EmbeddingSet", "empty_embeddings", "EvalEmbeddings", "EvalPairs", "IndexDir",
           "is_val_key", "load_eval_embeddings", "load_eval_pairs", "load_split", "lock_path",
           "on_cpu", "Placer", "pool", "pooled_dim", "recorded_patch_tokens", "RunDir",
           "runs_root", "ShardWriter", "Split", "TrainedOn", "WriterLock", "writer_locks"]
