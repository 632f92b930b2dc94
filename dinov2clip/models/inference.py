"""DinoV2Clip: a trained run as one model, for inference in CLIP's image-text space.

Images go through the frozen DINOv2 backbone and the run's projector; text goes through CLIP's
text tower, or for a two-tower run through its frozen text encoder and text projector, into the
space the run learnt (encode_clip_text is then CLIP's own text, for comparisons). Preprocessing,
pooling and the forward pass are the extract stage's own building blocks, so an image embedded
here equals the same image embedded by extract + projector.

    m = DinoV2Clip.from_pretrained("artifacts/runs/seed")
    img = m.encode_image([Image.open("dog.jpg")])      # (1, 512), L2-normalised
    txt = m.encode_text(["a dog", "a cat"])             # (2, 512), L2-normalised
    m.similarity(img, txt)                              # (1, 2) cosine similarities
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dinov2clip.config import ConfigError
from dinov2clip.device import autocast, compute_dtype, resolve_device
from dinov2clip.models.dense_api import DenseMixin
from dinov2clip.models.loaders import (
    cls_and_patch_mean,
    load_clip,
    load_dino,
    register_count,
)
from dinov2clip.models.preprocess import (
    ImageInput,
    PreprocessSpec,
    normalise,
    open_image,
    resize_and_crop,
)
from dinov2clip.models.projector import Projector, TwoTower, load_projector
from dinov2clip.models.text_encoders import TextEncoder, load_text_encoder
from dinov2clip.store import RunDir, pool, pooled_dim

_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


class DinoV2Clip(DenseMixin):
    def __init__(self, *, projector: Projector | TwoTower, clip, tokenizer,
                 clip_spec: PreprocessSpec, dino=None, dino_spec: PreprocessSpec | None = None,
                 pooling: str = "token_mean", num_patch_tokens: int = 256,
                 device: torch.device | None = None, dtype: torch.dtype = torch.float32,
                 batch_size: int = 64, text_encoder: TextEncoder | None = None):
        self.projector, self.clip, self.tokenizer = projector, clip, tokenizer
        self.text_encoder = text_encoder  # a two-tower run's; None: CLIP's text tower
        self.dino, self.dino_spec, self.clip_spec = dino, dino_spec, clip_spec
        self.pooling, self.num_patch_tokens = pooling, num_patch_tokens
        self.device = device or torch.device("cpu")
        self.dtype, self.batch_size = dtype, batch_size
        self.n_registers = register_count(dino) if dino else 0
        self.run: RunDir | None = None  # where a trained dense head is read from, on first use
        self._dense_maps: dict = {}
        self._cls_attention = None

    @classmethod
    def from_pretrained(cls, run: str | Path, *, root: str | Path | None = None,
                        device: str | torch.device = "auto", dtype: str | torch.dtype = "bf16",
                        image_tower: bool = True, clip_image: bool = False,
                        batch_size: int = 64) -> DinoV2Clip:
        """Load the run's DINOv2 backbone, projector and CLIP text tower: the models that made
        the embeddings it was trained on, as the run records them.

        run: a training run directory, "hf-hub:ORG/NAME" for one `pipeline push` shared, or a
        run name under root/runs (root: an artifacts directory).

        dtype is the autocast compute dtype on GPU (bf16 | fp16 | fp32, or the torch dtype);
        CPU always runs fp32.
        image_tower=False skips DINOv2 (text-only use, e.g. search); clip_image=True keeps
        CLIP's own image tower (for comparing with CLIP, as zero-shot does), else it is dropped.
        """
        run_dir = RunDir.resolve(run, root)  # "hf-hub:ORG/NAME" downloads a pushed projector
        cfg = run_dir.read_config()
        models = run_dir.trained_models()
        try:  # a bad device or dtype name is a user error: one line, exit 2 in the CLI
            dev = device if isinstance(device, torch.device) else resolve_device(device)
            amp = compute_dtype(_DTYPE_NAMES.get(dtype, dtype), dev)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        projector = load_projector(run_dir.path, device=dev)  # raises if weights gone
        projector.requires_grad_(False)
        tr = cfg.train
        text_encoder = _text_encoder(run_dir, projector, dev)
        clip = tokenizer = clip_spec = None  # a two-tower run trained without a teacher
        if models.clip_model:
            clip, tokenizer, clip_spec = load_clip(models.clip_model, models.clip_pretrained,
                                                   dev)
            clip_dim = int(getattr(clip.visual, "output_dim", 0) or 0)  # 0: a hidden dim
            if clip_dim and text_encoder is None and clip_dim != projector.cfg.out_dim:
                raise ConfigError(f"the projector in {run_dir} outputs {projector.cfg.out_dim}"
                                  f"-d embeddings but CLIP {models.clip_model!r} is "
                                  f"{clip_dim}-d")
            if not clip_image:
                clip.visual = None  # frees CLIP's image tower; encode_text does not use it
        dino = dino_spec = None
        if image_tower:
            dino, dino_spec = load_dino(models.dino_model, dev, models.dino_revision)
            d_in = pooled_dim(int(dino.config.hidden_size), tr.pooling)
            if d_in != projector.cfg.in_dim:
                raise ConfigError(f"DINOv2 {models.dino_model!r} gives {d_in}-d {tr.pooling} "
                                  f"features but the projector expects {projector.cfg.in_dim}")
        model = cls(projector=projector, clip=clip, tokenizer=tokenizer, clip_spec=clip_spec,
                    dino=dino, dino_spec=dino_spec, pooling=tr.pooling,
                    num_patch_tokens=tr.num_patch_tokens, device=dev,
                    dtype=amp, batch_size=batch_size, text_encoder=text_encoder)
        model.run = run_dir
        return model

    @property
    def dim(self) -> int:
        return int(self.projector.cfg.out_dim)

    @torch.inference_mode()
    def encode_image(self, images: ImageInput) -> torch.Tensor:
        """(n, dim) float32 on CPU, L2-normalised: projected DINOv2 embeddings in CLIP space.

        images: PIL images or file paths (resized and cropped here exactly as extract does);
        or a tensor, either (B, H, W, 3) already resized and centre-cropped to the DINOv2 crop
        (RGB, 0-255; uint8, or float32 as resize_and_crop gives it for DINOv3), or float
        (B, 3, H, W) already normalised with DINOv2's mean/std.
        """
        if self.dino is None:
            raise ConfigError("this DinoV2Clip was loaded with image_tower=False")
        outs = [self._project(self._dino_features(x))
                for x in self._batches(images, self.dino_spec)]
        return torch.cat(outs) if outs else torch.zeros(0, self.dim)

    @torch.inference_mode()
    def encode_image_and_dino(self, images: ImageInput) -> tuple[torch.Tensor, torch.Tensor]:
        """((n, dim) projected, (n, in_dim) pooled DINOv2) float32 on CPU, both L2-normalised.

        One DINOv2 pass gives both: the projected vector for text search, and DINOv2's own
        pooled vector, the better judge of which images look alike (the index keeps both).
        """
        if self.dino is None:
            raise ConfigError("this DinoV2Clip was loaded with image_tower=False")
        projected, raw = [], []
        for x in self._batches(images, self.dino_spec):
            feats = self._dino_features(x)
            projected.append(self._project(feats))
            raw.append(F.normalize(feats.float(), dim=-1).cpu())
        if not projected:
            return torch.zeros(0, self.dim), torch.zeros(0, self.dino_dim)
        return torch.cat(projected), torch.cat(raw)

    @property
    def dino_dim(self) -> int:
        return int(self.projector.cfg.in_dim)

    @torch.inference_mode()
    def encode_clip_image(self, images: ImageInput) -> torch.Tensor:
        """(n, dim) CLIP's own L2-normalised image embeddings; same input rules, CLIP's crop."""
        self._require_teacher()
        if self.clip.visual is None:
            raise ConfigError("CLIP's image tower was not loaded "
                              "(from_pretrained(clip_image=True))")
        outs = []
        for x in self._batches(images, self.clip_spec):
            with autocast(self.device, self.dtype):
                img = self.clip.encode_image(x)
            outs.append(F.normalize(img.float(), dim=-1).cpu())
        return torch.cat(outs) if outs else torch.zeros(0, self.dim)

    @property
    def two_tower(self) -> bool:
        return self.text_encoder is not None

    @property
    def has_teacher(self) -> bool:
        """False for a two-tower run trained without one: no CLIP towers to compare with."""
        return self.clip is not None

    def _require_teacher(self) -> None:
        if self.clip is None:
            raise ConfigError("this run was trained without a teacher (extract.clip_model = "
                              '""): it has no CLIP towers; use encode_image / encode_text')

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str] | str) -> torch.Tensor:
        """(m, dim) float32 on CPU, L2-normalised, in the space encode_image gives: CLIP's text
        embeddings, or a two-tower run's text encoder through its text projector."""
        if self.text_encoder is None:
            return self.encode_clip_text(texts)
        texts = _checked(texts)
        outs = []
        for i in range(0, len(texts), self.batch_size):
            with autocast(self.device, self.dtype):
                feats = self.text_encoder.encode(texts[i:i + self.batch_size])
            outs.append(F.normalize(self.projector.encode_text(feats.float()).float(),
                                    dim=-1).cpu())
        return torch.cat(outs)

    @torch.inference_mode()
    def encode_clip_text(self, texts: Sequence[str] | str) -> torch.Tensor:
        """(m, D_clip) float32 on CPU: CLIP's own text embeddings, L2-normalised."""
        self._require_teacher()
        texts = _checked(texts)
        outs = []
        for i in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(texts[i:i + self.batch_size]).to(self.device)
            with autocast(self.device, self.dtype):
                txt = self.clip.encode_text(tokens)
            outs.append(F.normalize(txt.float(), dim=-1).cpu())
        return torch.cat(outs)

    def similarity(self, images: ImageInput, texts: Sequence[str] | str | torch.Tensor
                   ) -> torch.Tensor:
        """(n_images, n_texts) cosine similarities; either side may be embeddings already."""
        img = images if _is_embedding(images, self.dim) else self.encode_image(images)
        txt = texts if isinstance(texts, torch.Tensor) else self.encode_text(texts)
        return F.normalize(img.float(), dim=-1) @ F.normalize(txt.float(), dim=-1).T

    def _dino_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) pooled DINOv2 features, exactly as extract caches and train pools them."""
        with autocast(self.device, self.dtype):
            hidden = self.dino(pixel_values=x).last_hidden_state  # (B, 1+R+P, D), post-norm
        cls, patch_mean = cls_and_patch_mean(hidden, self.n_registers)
        return pool(cls, patch_mean, self.pooling, self.num_patch_tokens)

    def _project(self, feats: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projector(feats.float()).float(), dim=-1).cpu()

    def _batches(self, images: ImageInput, spec: PreprocessSpec):
        """(b, 3, crop, crop) normalised float batches on the model's device, decoded lazily."""
        if isinstance(images, torch.Tensor):
            _check_tensor(images, spec)
            for i in range(0, images.shape[0], self.batch_size):
                x = images[i:i + self.batch_size].to(self.device)
                yield normalise(x, spec) if _channels_last(x) else x.float()
            return
        if isinstance(images, Image.Image | str | Path):
            images = [images]
        images = list(images)
        for i in range(0, len(images), self.batch_size):
            crops = [resize_and_crop(open_image(im), spec) for im in images[i:i + self.batch_size]]
            yield normalise(torch.from_numpy(np.stack(crops)).to(self.device), spec)


def _checked(texts: Sequence[str] | str) -> list[str]:
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts or any(not t or not t.strip() for t in texts):
        raise ConfigError("empty text query")
    return texts


def _text_encoder(run_dir: RunDir, projector, device: torch.device) -> TextEncoder | None:
    """A two-tower run's text encoder, as its training embeddings' models record it (name,
    pooling, max length, the hub commit); None for a run into CLIP's space."""
    if not isinstance(projector, TwoTower):
        return None
    described = run_dir.trained_on().models.get("text_encoder")
    if not described or not described.get("pooling"):
        raise ConfigError(f"two-tower run {run_dir} does not record a loadable text encoder "
                          "(its embeddings' models name none)")
    return load_text_encoder(described, device)


def _channels_last(x: torch.Tensor) -> bool:
    """(B, H, W, 3) crops on the 0-255 scale, not yet normalised."""
    return x.dtype == torch.uint8 or x.shape[-1] == 3 and x.shape[1] != 3


def _check_tensor(x: torch.Tensor, spec: PreprocessSpec) -> None:
    if (x.dtype == torch.uint8 or x.is_floating_point()) and x.ndim == 4 and \
            x.shape[1:] == (spec.crop, spec.crop, 3):
        return
    if x.is_floating_point() and x.ndim == 4 and x.shape[1:] == (3, spec.crop, spec.crop):
        return
    raise ValueError(f"image tensor must be (B, {spec.crop}, {spec.crop}, 3) cropped, or "
                     f"float (B, 3, {spec.crop}, {spec.crop}) normalised; got {x.dtype} "
                     f"{tuple(x.shape)}")


def _is_embedding(x, dim: int) -> bool:
    return isinstance(x, torch.Tensor) and x.ndim == 2 and x.shape[1] == dim
