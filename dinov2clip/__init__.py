"""Give DINOv2 a voice: a projector from frozen DINOv2 embeddings into CLIP's image-text space."""


def __getattr__(name: str):
    # Lazy, so `import dinov2clip` (and the CLI's --help) stays free of torch's import time.
    if name == "DinoV2Clip":
        from dinov2clip.models.inference import DinoV2Clip

        return DinoV2Clip
    raise AttributeError(f"module 'dinov2clip' has no attribute {name!r}")


__all__ = ["DinoV2Clip"]
