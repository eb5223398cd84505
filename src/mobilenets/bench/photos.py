"""Real inputs for timing: crops of bundled photographs, and BatchNorm statistics re-estimated on them.

Random initialisation leaves BatchNorm as the identity and activations that shrink layer after layer into denormal
floats (outputs ~1e-9), which CPUs process tens of times slower; so, unless trained weights are given, the
benchmarks re-estimate BatchNorm's statistics on real photographs (scikit-image's CC0 images) before timing.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mobilenets.data.transforms import IMAGENET_MEAN, IMAGENET_STD


def real_images(resolution: int, count: int = 32, seed: int = 0) -> torch.Tensor:
    """``count`` random crops of scikit-image's bundled photographs (or matplotlib's sample), ImageNet-normalised."""
    photos = _photos()
    g = torch.Generator().manual_seed(seed)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    out = []
    for i in range(count):
        img = photos[i % len(photos)]
        h, w = img.shape[1:]
        side = int(min(h, w) * (0.5 + 0.5 * torch.rand(1, generator=g).item()))
        top = int(torch.randint(0, h - side + 1, (1,), generator=g))
        left = int(torch.randint(0, w - side + 1, (1,), generator=g))
        crop = img[:, top : top + side, left : left + side].unsqueeze(0)
        crop = nn.functional.interpolate(crop, size=(resolution, resolution), mode="bilinear", antialias=True)
        out.append((crop[0] - mean) / std)
    return torch.stack(out)


def _photos() -> list[torch.Tensor]:
    arrays: list[np.ndarray] = []
    try:
        from skimage import data

        arrays = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    except ImportError:
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
            from PIL import Image

            arrays = [np.asarray(Image.open(f).convert("RGB"))]
    return [torch.from_numpy(np.ascontiguousarray(a[..., :3])).permute(2, 0, 1).float() / 255 for a in arrays]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, batch: int = 8) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics on ``images`` (cumulative average), then eval mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    for chunk in images.split(batch):
        model(chunk)
    for bn in bns:
        bn.momentum = 0.1
    return model.eval()
