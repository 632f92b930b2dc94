"""A synthetic dense task with known structure: the check that the segmentation protocol is
implemented right, where random tiny models only show that it runs.

Each class has its own colour and its own fixed random text embedding. Pictures hold a few
shapes of different classes on a background colour, with a label map drawn by the same
geometry. The task's "backbone" cuts a window into patch x patch cells and gives each cell a
feature that encodes the class under it: the class embeddings weighted by how close the cell's
mean colour is to each class colour (a cell on an edge mixes its classes, as real patch tokens
do). Background cells point elsewhere, so they score below a threshold on every class. Run
through the real protocol (short side, windows, upsampling, background channel, metric), a
correct implementation scores a high mIoU; a flipped or misplaced window does not.
"""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from dinov2clip.data.synthetic import SHAPES, paint


class DenseTask:
    def __init__(self, n_classes: int = 5, dim: int = 64, patch: int = 14, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.n_classes, self.patch = n_classes, patch
        # Row 0 is the background, rows 1.. the classes: colours far apart in [0, 1]^3.
        self.colours = torch.rand((n_classes + 1, 3), generator=g) * 0.8 + 0.1
        self.embeddings = F.normalize(torch.randn((n_classes + 1, dim), generator=g), dim=-1)
        self.seed = seed

    @property
    def text(self) -> torch.Tensor:
        """(n_classes, dim) the classes' "text" embeddings (background has none)."""
        return self.embeddings[1:]

    def features(self, window: torch.Tensor) -> torch.Tensor:
        """(h', w', dim) per-patch features of a (1, 3, h, w) window of colours in [0, 1]."""
        cells = F.avg_pool2d(window, self.patch)[0].permute(1, 2, 0)  # (h', w', 3)
        dist = torch.cdist(cells.reshape(-1, 3), self.colours)  # (h' w', n_classes + 1)
        weights = torch.softmax(-dist / 0.02, dim=-1)
        return (weights @ self.embeddings).reshape(*cells.shape[:2], -1)

    def sample(self, index: int) -> tuple[torch.Tensor, np.ndarray]:
        """((1, 3, H, W) float colours in [0, 1], (H, W) uint8 labels: 0 background, class c
        as c, 255 on a 1-pixel band the shapes' edges may leave unlabelled)."""
        rng = random.Random(self.seed * 100_003 + index)
        w, h = rng.randint(180, 360), rng.randint(180, 360)
        colours = (self.colours * 255).round().to(torch.uint8).tolist()
        image = Image.new("RGB", (w, h), tuple(colours[0]))
        label = Image.new("L", (w, h), 0)
        for _ in range(rng.randint(1, 3)):
            c = rng.randint(1, self.n_classes)
            r = rng.uniform(0.15, 0.3) * min(w, h)
            cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
            shape = rng.choice(SHAPES)
            for canvas, fill in ((image, tuple(colours[c])), (label, c)):
                paint(ImageDraw.Draw(canvas), shape, cx, cy, r, fill)
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return x[None], np.asarray(label).copy()
