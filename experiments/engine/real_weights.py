"""The fused engine on trained weights and real images: fp32 equality, and what int8 / bf16 cost (docs/engine.md).

1. fp32 equality on trained weights: max |engine − eager| of the logits at every ISA level this CPU has, (a) for
   the main job's Fashion-MNIST run over the whole test set (part 2), (b) through a timm-layout file: the trained
   weights of the main run and of the photo model (part 3) loaded into timm's own MobileNetV2 (its output checked
   against ours), written as safetensors, imported with ``convert_file`` (``mobilenets convert --from timm``) and
   reloaded; engine against timm's eager model. Required: ≤ 1e-4.
2. Fashion-MNIST, the full test set (10,000 images) in the run's eval transform, the main run's weights: top-1 of
   eager fp32, the engine in fp32 and int8 at every level (int8 calibrated on the first 512 training images) and
   bf16 (amx, or avx512 with AVX512-BF16). Required: each loses ≤ 0.5 point against eager.
3. Real photo crops: MobileNetV2 trained here (one thread) to tell which of 14 photographs (scikit-image's
   bundled ones, matplotlib's Grace Hopper) a crop comes from. Training crops come from the left 70 % of each
   photo's columns (random scale, flip, colour jitter), evaluation crops from the right 30 % (disjoint pixels, no
   augmentation). On the evaluation crops: of the confident eager fp32 predictions (probability > 0.5), the
   fraction whose top-1 each int8 level and bf16 keep (int8 calibrated on 256 training crops without augmentation,
   ``--augmented-calibration`` with). Required: ≥ 99 %. Beside it, the fake-quantised PyTorch twin of each int8
   grid (7-bit activation codes with ±63 weights, 8-bit codes with ±63, AVX2's 8-bit codes with ±127 and each
   pair of same-signed weights within 128, VNNI's 8-bit codes with ±127, 7-bit codes with ±127, and, to show
   where the rest of the loss lies, 10-bit codes and unrounded activations with ±127) and each engine's top-1
   against its grid's twin: what a change of grid would gain, and that the kernels add no loss.
   The model is written to ``--out``/photo_model.safetensors and reused by later runs (``--retrain`` redoes it).

    python experiments/engine/real_weights.py --json /tmp/real_weights.json --out /tmp/real_weights
    # the first time: 600 training steps on one thread (about 6 CPU minutes); then about two minutes

Exit status 1 when a requirement fails. Imports ``tests/timm_util.py`` (timm needs two torchvision operator
schemas declared first), so run it from a source checkout.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import matplotlib.cbook
import numpy as np
import torch
from PIL import Image, ImageEnhance
from torch import nn

from mobilenets import create_model
from mobilenets.bench.host import host_record
from mobilenets.checkpoint import save_weights
from mobilenets.classification.sources import load_data
from mobilenets.convert import convert_file, timm_key_map
from mobilenets.data import fashion_mnist
from mobilenets.data.transforms import IMAGENET_MEAN, IMAGENET_STD, TransformConfig, to_tensor
from mobilenets.deploy import fused
from mobilenets.deploy.calibration import calibration_batches
from mobilenets.engine.checkpoints import Trained, load_trained
from mobilenets.models.mobilenet import MobileNet

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from timm_util import import_timm  # declares torchvision's operator schemas, which importing timm needs here

ATOL = 1e-4  # fp32 engine against eager: float rounding in another summation order
MAX_LOSS = 0.005  # reduced precision: at most half a point of Fashion-MNIST top-1 below eager fp32
MIN_AGREEMENT = 0.99  # reduced precision: top-1 kept on ≥ 99 % of the confident fp32 photo predictions
CONFIDENT = 0.5  # fp32 softmax probability above which a prediction counts as confident

# scikit-image's bundled photographs (skimage.data; ``cat`` is ``chelsea`` again, so it is left out) and
# matplotlib's sample portrait: one class each.
PHOTOS = ("astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel", "hubble_deep_field",
          "immunohistochemistry", "retina", "rocket", "stereo_motorcycle", "grace_hopper")  # fmt: skip
HELD_OUT = 0.3  # the right-most 30 % of every photo's columns give the evaluation crops, the rest the training ones


# -- real photo crops ----------------------------------------------------------------------------------------------
def load_photos() -> list[Image.Image]:
    from skimage import data

    photos = []
    for name in PHOTOS:
        if name == "grace_hopper":
            with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
                photos.append(Image.open(f).convert("RGB"))
            continue
        array = getattr(data, name)()
        array = array[0] if isinstance(array, tuple) else array  # stereo_motorcycle: (left, right, disparity)
        photos.append(Image.fromarray(array).convert("RGB"))  # the grey ones as three equal channels
    # A short side of at most 512 px (retina's is 1,411): crops of a similar scale, and quick to resample.
    return [p.reduce(-(-min(p.size) // 512)) for p in photos]


def photo_crops(
    photos: list[Image.Image], count: int, resolution: int, seed: int, held_out: bool, augment: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` square crops (classes in turn) and their photo index. Training crops (``held_out=False``) lie in
    the left 70 % of a photo, held-out ones in the right 30 %; ``augment``: random flip and colour jitter."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(count):
        label = i % len(photos)
        photo = photos[label]
        w, h = photo.size
        split = round(w * (1 - HELD_OUT))
        x0, x1 = (split, w) if held_out else (0, split)
        side = min(h, w) * rng.uniform(0.2, 0.4 if held_out else 0.6)
        side = min(side, x1 - x0, h)
        left, top = rng.uniform(x0, x1 - side), rng.uniform(0, h - side)
        crop = photo.resize((resolution, resolution), Image.BILINEAR, box=(left, top, left + side, top + side))
        if augment:
            if rng.random() < 0.5:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
                crop = enhance(crop).enhance(rng.uniform(0.7, 1.3))
        images.append(to_tensor(crop, IMAGENET_MEAN, IMAGENET_STD))
        labels.append(label)
    return torch.stack(images), torch.tensor(labels)


def train_photo_model(
    photos: list[Image.Image], steps: int, batch: int, resolution: int, width: float
) -> tuple[MobileNet, float]:
    """MobileNetV2 trained from scratch on augmented training crops (AdamW, one-cycle); (model, CPU seconds)."""
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", width=width, num_classes=len(photos))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps, pct_start=0.15)
    start, cpu = time.perf_counter(), time.process_time()
    model.train()
    for step in range(steps):
        x, y = photo_crops(photos, batch, resolution, seed=10_000 + step, held_out=False, augment=True)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            print(
                f"  step {step:4d}/{steps}  loss {loss.item():.3f}  {time.perf_counter() - start:5.0f} s wall",
                flush=True,
            )
    return model.eval(), time.process_time() - cpu


# -- engines -------------------------------------------------------------------------------------------------------
def engines(model: nn.Module, calibration: list[torch.Tensor], threads: int) -> dict[str, fused.FusedEngine]:
    """fp32 and int8 at every ISA level this CPU has, and bf16 at each that runs it (``fused.bf16_supported``).
    Where the amx level's int8 runs its depthwise on fp16 rows (``half_depthwise``, its default there), also that
    level with the fp32 depthwise."""
    out = {f"fp32 [{isa}]": fused.FusedEngine(model, threads=threads, isa=isa) for isa in fused.supported_isas()}
    for isa in fused.supported_isas():
        out[f"int8 [{isa}]"] = engine = fused.FusedEngine(model, threads=threads, calibration=calibration, isa=isa)
        if engine.half_depthwise:
            out[f"int8 [{isa}, fp32 depthwise]"] = fused.FusedEngine(
                model, threads=threads, calibration=calibration, isa=isa, half_depthwise=False
            )
    for isa in fused.bf16_isas():
        out[f"bf16 [{isa}]"] = fused.FusedEngine(model, threads=threads, precision="bf16", isa=isa)
    return out


@torch.no_grad()
def logits(run: nn.Module | fused.FusedEngine, x: torch.Tensor, batch: int = 100) -> torch.Tensor:
    return torch.cat([run(b) for b in x.split(batch)])


def agreement(reference: torch.Tensor, got: torch.Tensor) -> dict[str, float | int]:
    """Top-1 agreement with ``reference`` over all inputs and over its confident ones."""
    confident = reference.softmax(1).amax(1) > CONFIDENT
    same = got.argmax(1) == reference.argmax(1)
    return {
        "all": float(same.float().mean()),
        "confident_n": int(confident.sum()),
        "confident_agreeing_n": int(same[confident].sum()),
        "confident": float(same[confident].float().mean()) if confident.any() else None,
    }


# -- 1 (b): trained weights through a timm-layout file ---------------------------------------------------------------
def timm_twin(model: MobileNet) -> nn.Module:
    """timm's own MobileNetV2 at ``model``'s width holding ``model``'s weights (timm's ``blocks.s.j`` layout)."""
    timm = import_timm()
    name = f"mobilenetv2_{round(100 * model.config.width):03d}"
    twin = timm.create_model(name, pretrained=False, num_classes=model.config.num_classes)
    blocks = sorted(
        {(int(m[1]), int(m[2])) for k in twin.state_dict() if (m := re.match(r"blocks\.(\d+)\.(\d+)\.", k))}
    )
    keys = timm_key_map(model.spec, [f"blocks.{s}.{j}" for s, j in blocks], model.config.num_classes)
    own = model.state_dict()
    twin.load_state_dict({theirs: own[ours] for ours, theirs in keys.items()})
    return twin.eval()


@torch.no_grad()
def through_timm_file(model: MobileNet, x: torch.Tensor, folder: Path, tag: str, threads: int) -> dict[str, object]:
    """timm's model with the trained weights → a safetensors file → ``convert_file`` → the engine at every level,
    against timm's eager output."""
    from safetensors.torch import save_file

    twin = timm_twin(model)
    reference = twin(x)
    src, dst = folder / f"{tag}_timm_layout.safetensors", folder / f"{tag}_converted.safetensors"
    save_file({k: v.contiguous() for k, v in twin.state_dict().items()}, str(src))
    convert_file(src, dst, "timm", overwrite=True)
    converted = create_model("mobilenet_v2", weights=dst).eval()
    out: dict[str, object] = {
        "images": len(x),
        "timm_vs_ours_eager": float((reference - model(x)).abs().max()),  # timm's architecture reads the weights
        "converted_vs_timm_eager": float((converted(x) - reference).abs().max()),
    }
    for isa in fused.supported_isas():
        engine = fused.FusedEngine(converted, threads=threads, isa=isa)
        out[f"fp32 [{isa}]"] = float((logits(engine, x) - reference).abs().max())
    return out


# -- 2: Fashion-MNIST -------------------------------------------------------------------------------------------
@torch.no_grad()
def fashion_mnist_test(trained: Trained, threads: int, calibration_count: int) -> tuple[dict, torch.Tensor]:
    """Every path's top-1 on the full test set (and fp32's max |Δ| from eager); also returns 256 test images."""
    root = str(fashion_mnist.SYSTEM_ROOT)
    transform = TransformConfig.from_dict(trained.metadata["transform"])
    test = load_data(root, transform).val
    calibration = calibration_batches(trained, root, calibration_count, transform)
    paths = engines(trained.model, calibration, threads)
    labels = torch.tensor([int(y) for y in test.labels])
    predictions: dict[str, list[torch.Tensor]] = {name: [] for name in ["eager fp32", *paths]}
    worst = dict.fromkeys((name for name in paths if name.startswith("fp32")), 0.0)
    for start in range(0, len(test), 500):
        x = torch.stack([test[i][0] for i in range(start, min(start + 500, len(test)))])
        eager = logits(trained.model, x)
        predictions["eager fp32"].append(eager)
        for name, engine in paths.items():
            got = logits(engine, x)
            predictions[name].append(got)
            if name in worst:
                worst[name] = max(worst[name], float((got - eager).abs().max()))
    eager = torch.cat(predictions["eager fp32"])
    top1 = {name: float((torch.cat(p).argmax(1) == labels).float().mean()) for name, p in predictions.items()}
    result: dict[str, object] = {
        "images": len(labels),
        "calibration_images": calibration_count,
        "top1": top1,
        "loss_points": {name: 100 * (top1["eager fp32"] - t) for name, t in top1.items() if name != "eager fp32"},
        "agreement_with_eager": {name: agreement(eager, torch.cat(p)) for name, p in predictions.items()},
        "fp32_max_abs_diff": worst,
    }
    return result, torch.stack([test[i][0] for i in range(256)])


# -- 3: photo crops ---------------------------------------------------------------------------------------------
@torch.no_grad()
def photo_agreement(
    model: MobileNet, photos: list[Image.Image], count: int, resolution: int, threads: int, augmented: bool
) -> tuple[dict, torch.Tensor]:
    """Every path's top-1 on ``count`` held-out crops, against the truth and against eager fp32; also returns
    256 of the crops. int8 is calibrated on 256 training crops, as the model saw them in training when
    ``augmented``, else as evaluation draws them (the library's rule: training images in the eval transform)."""
    crops, labels = photo_crops(photos, count, resolution, seed=1, held_out=True)
    calibration = list(photo_crops(photos, 256, resolution, seed=2, held_out=False, augment=augmented)[0].split(32))
    eager = logits(model, crops)
    result: dict = {
        "crops": count,
        "calibration": "256 training crops, " + ("augmented" if augmented else "without augmentation"),
        "top1_vs_truth": {"eager fp32": float((eager.argmax(1) == labels).float().mean())},
        "agreement_with_eager": {},
        "fp32_max_abs_diff": {},
    }
    int8: dict[str, torch.Tensor] = {}
    for name, engine in engines(model, calibration, threads).items():
        got = logits(engine, crops)
        result["top1_vs_truth"][name] = float((got.argmax(1) == labels).float().mean())
        result["agreement_with_eager"][name] = agreement(eager, got)
        if name.startswith("fp32"):
            result["fp32_max_abs_diff"][name] = float((got - eager).abs().max())
        if name.startswith("int8"):
            int8[name] = (engine.isa, got)
    result["int8_grids"] = int8_grids(model, crops, calibration, eager, int8)
    return result, crops[:256]


# The int8 grids (activation codes 0..levels, weights within ±weight_max): the two the AVX2 level used before (7-bit
# and 8-bit codes with ±63), AVX2's (8-bit codes, ±127, same-signed pairs within 128), 7-bit codes with ±127, VNNI's.
# Beside them, where the rest of the loss lies: 10-bit activation codes, and activations left unrounded (weights only).
GRIDS = (
    fused.Int8Grid(127, 63),
    fused.Int8Grid(255, 63),
    fused.AVX2_GRID,
    fused.Int8Grid(127, 127),
    fused.VNNI_GRID,
    fused.Int8Grid(1023, 127),
    fused.Int8Grid(2**24 - 1, 127),
)


def grid_label(grid: fused.Int8Grid) -> str:
    pairs = f", same-signed pairs ≤ {grid.pair_sum}" if grid.pair_sum else ""
    levels = "unrounded (0..2^24 - 1)" if grid.levels == 2**24 - 1 else f"0..{grid.levels}"
    return f"activations {levels}, weights ±{grid.weight_max}{pairs}"


@torch.no_grad()
def int8_grids(
    model: MobileNet, crops: torch.Tensor, calibration: list[torch.Tensor], eager: torch.Tensor, int8: dict
) -> dict[str, dict]:
    """Where int8's top-1 changes come from: each grid's fake-quantised PyTorch twin (``fused.fake_quantized``)
    against eager, and each int8 engine's top-1 against its own grid's twin (equal: the loss is the grid's,
    not the kernels')."""
    out: dict[str, dict] = {}
    for grid in GRIDS:
        twin = logits(fused.fake_quantized(model, calibration, grid).eval(), crops)
        row: dict = {"twin_vs_eager": agreement(eager, twin)}
        for name, (isa, got) in int8.items():
            if fused.int8_grid(isa) == grid:
                label = name.removeprefix("int8 ")
                row[f"engine {label} top-1 = twin"] = float((got.argmax(1) == twin.argmax(1)).float().mean())
        out[grid_label(grid)] = row
    return out


# -- report ---------------------------------------------------------------------------------------------------
def checks(report: dict) -> list[tuple[str, float | None, bool]]:
    """(what, measured, passed) for every requirement."""
    out = []
    for name, diff in report["fashion_mnist"]["fp32_max_abs_diff"].items():
        out.append((f"fp32 = eager, main run, 10k test images, {name}", diff, diff <= ATOL))
    for name, diff in report["photos"]["fp32_max_abs_diff"].items():
        out.append((f"fp32 = eager, photo model, held-out crops, {name}", diff, diff <= ATOL))
    for tag, part in report["timm_layout"].items():
        for name, diff in part.items():
            if name.startswith("fp32"):
                out.append((f"fp32 = timm eager, {tag} via timm-layout file, {name}", diff, diff <= ATOL))
    for name, loss in report["fashion_mnist"]["loss_points"].items():
        if not name.startswith("fp32"):
            out.append((f"Fashion-MNIST loss (points), {name}", loss, loss <= 100 * MAX_LOSS))
    for name, agree in report["photos"]["agreement_with_eager"].items():
        if not name.startswith("fp32"):
            kept = agree["confident"]
            out.append((f"confident photo top-1 kept, {name}", kept, kept is not None and kept >= MIN_AGREEMENT))
    return out


def print_report(report: dict) -> None:
    fm, ph = report["fashion_mnist"], report["photos"]
    print(f"\nFashion-MNIST test set ({fm['images']} images), main run {report['main_run']}")
    for name, top1 in fm["top1"].items():
        loss = f"{-fm['loss_points'][name]:+.2f} points" if name in fm["loss_points"] else ""
        agree = fm["agreement_with_eager"][name]
        diff = f"max |Δ| {fm['fp32_max_abs_diff'][name]:.1e}" if name in fm["fp32_max_abs_diff"] else ""
        print(f"  {name:13s} top-1 {top1:7.2%} {loss:>13s}   = eager {agree['all']:7.2%}  {diff}")
    model = report["photo_model"]
    print(f"\nphoto crops ({ph['crops']} held-out), MobileNetV2 α {model['width']} @ {model['resolution']} trained "
          f"{model['steps']} steps of {model['batch']} ({model['train_cpu_seconds']:.0f} CPU s)")  # fmt: skip
    print(f"  int8 calibrated on {ph['calibration']}")
    for name, top1 in ph["top1_vs_truth"].items():
        line = f"  {name:13s} top-1 vs truth {top1:7.2%}"
        if name in ph["agreement_with_eager"]:
            a = ph["agreement_with_eager"][name]
            line += (f"   top-1 = eager: all {a['all']:7.2%}, confident {a['confident_agreeing_n']}/{a['confident_n']}"
                     f" = {a['confident'] or 0:7.2%}")  # fmt: skip
        if name in ph["fp32_max_abs_diff"]:
            line += f"  max |Δ| {ph['fp32_max_abs_diff'][name]:.1e}"
        print(line)
    print("  int8 grids: fake-quantised PyTorch twins, confident top-1 kept (and each engine's top-1 = its twin's)")
    for grid, row in ph["int8_grids"].items():
        a = row["twin_vs_eager"]
        same = ", ".join(f"{k} {v:.2%}" for k, v in row.items() if k != "twin_vs_eager")
        print(f"    {grid:58s} {a['confident_agreeing_n']}/{a['confident_n']} = {a['confident'] or 0:7.2%}   {same}")
    print("\ntrained weights through a timm-layout safetensors file (mobilenets convert --from timm)")
    for tag, part in report["timm_layout"].items():
        diffs = ", ".join(f"{k} {v:.1e}" for k, v in part.items() if k != "images")
        print(f"  {tag} ({part['images']} images): {diffs}")
    print("\nrequirements")
    for what, value, passed in report["checks"]:
        print(f"  {'PASS' if passed else 'FAIL'}  {what}: {'none' if value is None else f'{value:.3g}'}")


def photo_model_in(folder: Path, photos: list[Image.Image], args: argparse.Namespace) -> tuple[MobileNet, dict]:
    """The photo model ``folder`` holds (and how it was trained, from the JSON beside it), else one trained now."""
    path, about = folder / "photo_model.safetensors", folder / "photo_model.json"
    if path.is_file() and about.is_file() and not args.retrain:
        print(f"photo model: {path} (trained before; --retrain trains it again)")
        return create_model("mobilenet_v2", weights=path).eval(), json.loads(about.read_text())
    print(f"training the photo model: {args.steps} steps of {args.batch} at {args.resolution} px, 1 thread")
    model, seconds = train_photo_model(photos, args.steps, args.batch, args.resolution, args.width)
    save_weights(model, path)
    record = {"path": str(path), "width": args.width, "resolution": args.resolution, "steps": args.steps,
              "batch": args.batch, "train_cpu_seconds": seconds, "photos": list(PHOTOS)}  # fmt: skip
    about.write_text(json.dumps(record, indent=2) + "\n")
    return model, record


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, required=True, help="where to write the figures")
    parser.add_argument("--out", type=Path, required=True, help="folder for the photo model and converted files")
    parser.add_argument("--run", type=Path, default=Path("/tmp/fresh/runs/main"), help="the main job's run folder")
    parser.add_argument("--threads", type=int, default=2, help="engine threads (training and eager use one)")
    parser.add_argument("--crops", type=int, default=1400, help="held-out photo crops")
    parser.add_argument(
        "--augmented-calibration", action="store_true", help="calibrate int8 on augmented training crops"
    )
    parser.add_argument("--steps", type=int, default=600, help="photo-model training steps")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--retrain", action="store_true", help="train the photo model even if --out holds one")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"host": host_record(), "threads": args.threads, "main_run": str(args.run)}

    photos = load_photos()
    photo_model, record = photo_model_in(args.out, photos, args)
    report["photo_model"] = record

    trained = load_trained(args.run)
    report["fashion_mnist"], fashion_sample = fashion_mnist_test(trained, args.threads, 512)
    report["photos"], photo_sample = photo_agreement(
        photo_model, photos, args.crops, record["resolution"], args.threads, args.augmented_calibration
    )
    report["timm_layout"] = {
        "main run": through_timm_file(trained.model, fashion_sample, args.out, "main", args.threads),
        "photo model": through_timm_file(photo_model, photo_sample, args.out, "photo", args.threads),
    }
    report["checks"] = checks(report)
    print_report(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    return 0 if all(passed for _, _, passed in report["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
