"""The fused engine on trained weights that arrive the way a user's do: a timm-layout file and `mobilenets convert`.

``test_fused.py`` holds the engine to eager PyTorch on random weights with randomised BatchNorm, ``test_convert.py``
holds timm's models to ours; here the two meet on weights trained (briefly) on real photographs: BatchNorm
statistics measured on photo crops, weights moved by the optimiser. They go into timm's own MobileNetV2 (whose
output is the reference), to a safetensors file, through ``mobilenets convert --from timm``, back into our model
and into the engine at every ISA level this CPU has. Tolerance as ``test_fused.py``: fp32 logits within 1e-4.
(``experiments/engine/real_weights.py`` does the same for the main job's run and a photo model trained longer.)
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from mobilenets import create_model
from mobilenets.bench.photos import recalibrate_batchnorm
from mobilenets.cli import main
from mobilenets.convert import timm_key_map
from mobilenets.data.transforms import IMAGENET_MEAN, IMAGENET_STD, to_tensor
from mobilenets.deploy import fused
from mobilenets.models.mobilenet import MobileNet
from timm_util import import_timm

ATOL = 1e-4
SUPPORTED = fused.supported_isas() if fused.cpu_supported() is None else []

try:
    fused.load_library()
    timm = import_timm()
    from skimage import data
except (fused.EngineUnavailable, ImportError) as e:  # pragma: no cover - no compiler / AVX2, or no timm / skimage
    pytest.skip(f"needs the fused engine, timm and scikit-image: {e}", allow_module_level=True)


@cache
def _photos() -> list[Image.Image]:
    return [Image.fromarray(a) for a in (data.astronaut(), data.coffee(), data.chelsea())]


def _crops(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random 64-px crops of three bundled photographs, labelled by photo."""
    photos = _photos()
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(count):
        photo = photos[i % len(photos)]
        side = min(photo.size) * rng.uniform(0.2, 0.6)
        left, top = rng.uniform(0, photo.width - side), rng.uniform(0, photo.height - side)
        crop = photo.resize((64, 64), Image.BILINEAR, box=(left, top, left + side, top + side))
        images.append(to_tensor(crop, IMAGENET_MEAN, IMAGENET_STD))
        labels.append(i % len(photos))
    return torch.stack(images), torch.tensor(labels)


@cache
def _trained() -> MobileNet:
    """MobileNetV2 α 0.5 after 10 AdamW steps of 16 photo crops, its BatchNorm statistics then measured on 48
    other crops (after so few steps the running averages still lean on their initial 0 / 1; eval mode would see
    near-constant features). About two seconds."""
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", width=0.5, num_classes=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # training on a shared machine: one thread
    try:
        with torch.enable_grad():  # the callers run under no_grad
            for step in range(10):
                x, y = _crops(16, seed=step)
                loss = nn.functional.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        recalibrate_batchnorm(model, _crops(48, seed=50)[0])
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def _timm_twin(model: MobileNet) -> nn.Module:
    """timm's mobilenetv2_050 holding ``model``'s weights (timm's ``blocks.s.j`` layout)."""
    twin = timm.create_model("mobilenetv2_050", pretrained=False, num_classes=model.config.num_classes)
    found = {(int(m[1]), int(m[2])) for k in twin.state_dict() if (m := re.match(r"blocks\.(\d+)\.(\d+)\.", k))}
    keys = timm_key_map(model.spec, [f"blocks.{s}.{j}" for s, j in sorted(found)], model.config.num_classes)
    own = model.state_dict()
    twin.load_state_dict({theirs: own[ours] for ours, theirs in keys.items()})
    return twin.eval()


@torch.no_grad()
def test_trained_weights_through_a_timm_file_run_in_the_engine_as_in_timm(tmp_path: Path, capsys) -> None:
    model = _trained()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    # Trained, not fresh: BatchNorm's statistics are the photos' (a fresh model's are mean 0, variance 1).
    assert max(float(m.running_mean.abs().max()) for m in norms) > 0.1
    x, _ = _crops(6, seed=100)  # crops the training did not draw
    twin = _timm_twin(model)
    reference = twin(x)
    assert 0.1 < reference.abs().max() < 100  # logits of a scale an absolute tolerance means something at
    assert reference.std(0).min() > 0.1  # that depend on the image
    assert (reference - model(x)).abs().max() <= 1e-5  # timm's architecture reads the weights as ours does

    src, dst = tmp_path / "trained_timm.safetensors", tmp_path / "converted.safetensors"
    save_file({k: v.contiguous() for k, v in twin.state_dict().items()}, str(src))
    assert main(["convert", "--from", "timm", str(src), str(dst)]) == 0
    capsys.readouterr()
    converted = create_model("mobilenet_v2", weights=dst)
    assert converted.config.width == 0.5 and converted.config.num_classes == 3
    for isa in SUPPORTED:
        for threads in (1, 2):
            engine = fused.FusedEngine(converted, threads=threads, isa=isa)
            assert (engine(x) - reference).abs().max() <= ATOL, (isa, threads)
