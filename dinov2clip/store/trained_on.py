"""What a run was trained on (config.json's "embeddings" record), and which backbone and
teacher load it: read through RunDir.trained_on() and RunDir.trained_models()."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dinov2clip.store.layout import changes

if TYPE_CHECKING:
    from dinov2clip.store.run import RunDir


@dataclass(frozen=True)
class TrainedOn:
    """The embeddings a run was trained on. models/models_hash are empty for a run trained
    before they were recorded: its tag comes from its own config.json."""

    tag: str
    dataset: str
    models_hash: str = ""
    models: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"tag": self.tag, "dataset": self.dataset, "models_hash": self.models_hash,
                "models": self.models}

    def differences(self, plan: dict) -> list[str]:
        """What differs between the models of these embeddings and those of another set's
        plan.json, by dotted key; the compute dtype is left out (the same weights under
        another device's autocast)."""
        return changes(_identity(self.models), _identity(plan.get("models") or {}))


def _identity(models: dict) -> dict:
    return {k: v for k, v in models.items() if k != "compute_dtype"}


@dataclass(frozen=True)
class TrainedModels:
    """Which backbone and teacher to load for a run: those that made its training embeddings
    (recorded in the run), or for a run from before that record, its config's extract section."""

    dino_model: str
    dino_revision: str
    clip_model: str
    clip_pretrained: str

    @classmethod
    def of(cls, run: RunDir) -> TrainedModels:
        ex, models = run.read_config().extract, run.trained_on().models
        if not models:
            return cls(ex.dino_model, ex.dino_revision, ex.clip_model, ex.clip_pretrained)
        dino_weights = (models.get("weights") or {}).get("dino") or {}
        # the hub commit the embeddings were made with, so a moved branch cannot change them
        revision = dino_weights.get("commit") or ex.dino_revision
        # a set made without a teacher names clip_model "" and no clip_pretrained
        return cls(models["dino_model"], revision, models["clip_model"],
                   models.get("clip_pretrained", ""))
