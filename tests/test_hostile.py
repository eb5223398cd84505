"""Hostile and faulty input, tried the way an attacker or an unlucky user would: nothing executes, nothing is
lost, nothing blocks, and every refusal is one line naming the bad entry (docs/safety.md)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import run_util
from mobilenets.cli import main
from mobilenets.data.datasets import FolderDataset, Skipped, scan_folder
from mobilenets.data.images import MAX_PIXELS_ENV, OutsideRoot, UnreadableImage, inside, load_rgb
from mobilenets.detection.boxes import box_iou
from mobilenets.detection.data import CocoDetection, find_sources, find_split
from mobilenets.detection.loss import match_anchors
from mobilenets.engine import checkpoints, runs
from mobilenets.errors import CheckpointError, InputError, MobilenetsError
from mobilenets.registry import create_model
from run_util import CLASSES, write_image_folder

NAN = float("nan")


# -- fixtures and helpers -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("imgs"))


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return run_util.train_args(data, out, *extra, epochs=1)


@pytest.fixture(scope="module")
def run(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch run (checkpoints every 2 steps, so it keeps two)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(train_args(folder, out, "--checkpoint-every", "2")) == 0
    return out


def digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (the lock excepted) → its SHA-256."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != runs.LOCK
    }


class Payload:
    """A pickle that runs ``touch MARKER`` when loaded by an unrestricted unpickler."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def write_payload(path: Path, marker: Path, wrap: bool = True) -> Path:
    obj = {"epoch": 1, "step": 4, "rows": [], "optimizer": Payload(marker)} if wrap else Payload(marker)
    torch.save(obj, path)
    return path


def one_line_error(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: "), err
    assert "Traceback" not in "\n".join(err)
    for needle in needles:
        assert needle in err[-1], (needle, err[-1])
    return err[-1]


def png_declaring(width: int, height: int) -> bytes:
    """A valid-looking 8-bit grey PNG whose header declares ``width × height`` (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def finishes_within(seconds: float, fn) -> None:  # type: ignore[no-untyped-def]
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it has not returned in ``seconds``."""
    box: dict[str, BaseException | None] = {"error": None}

    def target() -> None:
        try:
            fn()
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still blocked after {seconds} s"
    if box["error"] is not None:
        raise box["error"]


# -- payload pickles: every loading path refuses them, nothing runs --------------------------------------------
def _legacy_pointer(out: Path, state_name: str) -> None:
    info = json.loads((out / checkpoints.POINTER).read_text())
    info.update(state=state_name, checkpoints=[])
    (out / checkpoints.POINTER).write_text(json.dumps(info))


def test_payload_pickles_are_refused_by_every_loading_path(run: Path, tmp_path: Path, capsys) -> None:
    marker = tmp_path / "pwned"
    victim = tmp_path / "victim"
    (victim / "checkpoints").mkdir(parents=True)
    weights, _ = checkpoints.find_last(run)
    (victim / "checkpoints" / weights.name).write_bytes(weights.read_bytes())
    write_payload(victim / "checkpoints" / weights.name.replace(".safetensors", ".state.pt"), marker)
    (victim / checkpoints.POINTER).write_text((run / checkpoints.POINTER).read_text())
    _legacy_pointer(victim, weights.name.replace(".safetensors", ".state.pt"))

    # train --resume
    assert main(["train", "--resume", str(victim), "--workers", "0", "--threads", "1", "--no-progress"]) == 2
    one_line_error(capsys, "refusing to read training state", "pickle")
    # the ablation's "is this variant finished?" check
    from mobilenets.classification.ablate import _finished_rows

    with pytest.raises(CheckpointError, match="refusing"):
        _finished_rows(victim, 1)
    # the checkpoint loaders: a pickle named as weights, as a run's state, as an --init
    bare = write_payload(tmp_path / "model.pt", marker, wrap=False)
    for load in (checkpoints.load_trained, checkpoints.read_state, checkpoints.task_of):
        with pytest.raises(MobilenetsError) if load is not checkpoints.task_of else _no_error():
            load(bare)
    with pytest.raises(CheckpointError):
        create_model("mobilenet_v2", weights=bare)
    # convert (torch.load with weights_only=True)
    assert main(["convert", "--from", "torchvision", str(bare), str(tmp_path / "out.safetensors")]) == 2
    one_line_error(capsys, "model.pt")
    assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists()


class _no_error:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return False


def test_new_runs_hold_no_pickle_and_old_plain_state_files_still_resume(run: Path, tmp_path: Path) -> None:
    states = list((run / "checkpoints").glob("*"))
    assert states and not [p for p in states if p.suffix == ".pt"]
    for p in (run / "checkpoints").glob("*.state.safetensors"):
        assert b"\x80\x02" not in p.read_bytes()[:16]  # safetensors: a JSON header, not a pickle stream
    # a run written before the format change: its .state.pt holds tensors, numbers and numpy's RNG array only
    old = tmp_path / "old"
    (old / "checkpoints").mkdir(parents=True)
    weights, state = checkpoints.find_last(run)
    (old / "checkpoints" / weights.name).write_bytes(weights.read_bytes())
    torch.save(checkpoints.read_state(state), old / "checkpoints" / "legacy.state.pt")
    (old / checkpoints.POINTER).write_text((run / checkpoints.POINTER).read_text())
    _legacy_pointer(old, "legacy.state.pt")
    resumed = checkpoints.load_resume(old)
    assert resumed.state["step"] == checkpoints.read_state(state)["step"]
    assert isinstance(resumed.state["rng"][0]["numpy"][1], np.ndarray)


def test_state_round_trip_is_exact() -> None:
    state = {
        "optimizer": {"state": {0: {"step": torch.tensor(3.0), "momentum_buffer": torch.randn(4)}}, "groups": [1]},
        "rng": [{"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}],
        "best": -float("inf"), "rows": [{"epoch": 1, "val_top1": 0.1 + 0.2}], "epoch": 1, "step": 4, "sums": [{}],
    }  # fmt: skip
    tensors, text = checkpoints.encode_state(state)
    back = checkpoints.decode_state(tensors, text, "test")
    assert back["optimizer"]["state"][0]["momentum_buffer"].equal(state["optimizer"]["state"][0]["momentum_buffer"])
    assert list(back["optimizer"]["state"]) == [0]  # integer parameter ids stay integers
    np_a, np_b = back["rng"][0]["numpy"], state["rng"][0]["numpy"]
    assert np_a[0] == np_b[0] and np.array_equal(np_a[1], np_b[1]) and np_a[1].dtype == np_b[1].dtype
    assert back["rng"][0]["python"] == state["rng"][0]["python"]
    assert back["best"] == -float("inf") and back["rows"] == state["rows"]


# -- paths from data files stay inside the dataset --------------------------------------------------------------
def _coco(root: Path, images: list[dict], anns: list[dict] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "annotations.json"
    cats = [{"id": 1, "name": "thing"}]
    path.write_text(json.dumps({"images": images, "annotations": anns or [], "categories": cats}))
    return path


def test_coco_file_names_leading_outside_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(secret)
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "images" / "link.png").symlink_to(secret)
    for name in ("../secret.png", str(secret), "images/../../secret.png", "images/link.png"):
        path = _coco(root, [{"id": 7, "file_name": name, "width": 8, "height": 8}])
        with pytest.raises(OutsideRoot, match=r"image id 7: .* leads outside the dataset folder"):
            CocoDetection(path)
    assert inside(root, "images/ok.png", "x") == root.resolve() / "images" / "ok.png"


def test_mask_paths_leading_outside_are_refused(tmp_path: Path) -> None:
    from mobilenets.segmentation.data import folder_pairs, voc_pairs

    voc = tmp_path / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("../../../etc/passwd\n")
    with pytest.raises(OutsideRoot, match=r"train\.txt: '\.\./\.\./\.\./etc/passwd'"):
        voc_pairs(tmp_path, "train")
    pairs = tmp_path / "pairs"
    (pairs / "images").mkdir(parents=True)
    (pairs / "masks").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(pairs / "images" / "a.png")
    outside = tmp_path / "elsewhere.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(outside)
    (pairs / "masks" / "a.png").symlink_to(outside)
    with pytest.raises(OutsideRoot, match=r"a\.png"):
        folder_pairs(pairs / "images", pairs / "masks")


def test_checkpoint_pointer_cannot_name_files_outside_the_run(run: Path, tmp_path: Path, capsys) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / checkpoints.POINTER).write_text(json.dumps({"weights": "../../x.safetensors", "state": "y"}))
    assert main(["train", "--resume", str(victim), "--workers", "0", "--no-progress"]) == 2
    one_line_error(capsys, "not a file name in checkpoints/")


# -- decompression bombs and files that are not regular --------------------------------------------------------
def test_decompression_bomb_is_refused_from_its_header(tmp_path: Path, monkeypatch) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_declaring(100_000, 100_000))
    assert bomb.stat().st_size < 200
    with pytest.raises(UnreadableImage, match=r"bomb\.png declares .* over the limit of 40,000,000"):
        load_rgb(bomb)
    bomb.write_bytes(png_declaring(10_000, 10_000))  # under PIL's own bar, over ours: our check, with the size
    with pytest.raises(UnreadableImage, match=r"declares 10000×10000 = 100,000,000 pixels, over the limit"):
        load_rgb(bomb)
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(small)
    assert load_rgb(small).size == (20, 20)
    monkeypatch.setenv(MAX_PIXELS_ENV, "100")  # configurable
    with pytest.raises(UnreadableImage, match="over the limit of 100"):
        load_rgb(small)
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(InputError, match=MAX_PIXELS_ENV):
        load_rgb(small)


def test_bombs_and_fifos_are_skipped_in_training_and_reported_in_predict(folder: Path, run: Path, tmp_path, capsys):
    data = tmp_path / "data"
    for split in ("train", "val"):
        for c in CLASSES:
            src = folder / split / f"c{c}"
            (data / split / f"c{c}").mkdir(parents=True)
            for p in sorted(src.iterdir()):
                (data / split / f"c{c}" / p.name).write_bytes(p.read_bytes())
    # two training images replaced by a bomb and by garbage (36 images, batch 9: every image is seen per epoch)
    first = sorted((data / "train" / "c0").iterdir())
    first[0].write_bytes(png_declaring(12_000, 12_000))
    first[1].write_bytes(b"not an image")
    os.mkfifo(data / "train" / "c1" / "fifo.png")  # not a regular file: never listed, never opened
    assert main(train_args(data, tmp_path / "out")) == 0
    err = capsys.readouterr().err
    assert f"{first[0]} declares 12000×12000" in err and f"{first[1]}: not an image" in err
    header, row = (tmp_path / "out" / "metrics.csv").read_text().splitlines()[:2]
    assert float(dict(zip(header.split(","), row.split(","), strict=True))["train_skipped"]) == 2.0  # a count
    # predict: the bomb and a FIFO are reported, the good image still predicted, exit status 1
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    good = sorted((data / "val" / "c0").iterdir())[0]

    def predict() -> None:
        assert main(["predict", "--checkpoint", str(run), str(first[0]), str(fifo), str(good), "--json"]) == 1

    finishes_within(60, predict)
    out = capsys.readouterr()
    results = json.loads(out.out)
    assert [("error" in r) for r in results] == [True, True, False]
    assert "not a regular file" in results[1]["error"] and "declares" in results[0]["error"]
    assert "Traceback" not in out.err


def test_fifo_and_device_never_block(tmp_path: Path) -> None:
    fifo = tmp_path / "a.png"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        with pytest.raises(UnreadableImage, match="not a regular file"):
            finishes_within(10, lambda p=path: load_rgb(p))
    from mobilenets.segmentation.data import read_mask

    with pytest.raises(UnreadableImage, match="not a regular file"):
        finishes_within(10, lambda: read_mask(fifo, 3))
    # a COCO entry naming a FIFO counts as a missing image
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "ok.png")
    path = _coco(tmp_path, [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "ok.png"}])
    ds = CocoDetection(path)
    assert len(ds) == 1 and ds.problems["images_missing"] == 1


def test_unreadable_detection_image_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "bomb.png").write_bytes(png_declaring(50_000, 50_000))
    path = _coco(tmp_path, [{"id": 1, "file_name": "bomb.png", "width": 50_000, "height": 50_000}])
    item = CocoDetection(path)[0]
    assert isinstance(item, Skipped) and "declares" in item.reason and "image id 1" in item.reason


# -- run folders: nothing lost, one writer ---------------------------------------------------------------------
def test_existing_run_is_never_overwritten_unasked(folder: Path, run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(run), str(out)], check=True)
    before = digest(out)
    assert main(train_args(folder, out)) == 2
    one_line_error(capsys, "already holds a run", "--resume", "--overwrite")
    assert digest(out) == before
    (out / "checkpoints" / "mine.safetensors").write_bytes(b"the user's own file")
    (out / "notes.txt").write_text("keep me")
    assert main(train_args(folder, out, "--overwrite", "--checkpoint-every", "1")) == 0
    after = digest(out)
    assert after["notes.txt"] == before.get("notes.txt", after["notes.txt"])
    assert (out / "checkpoints" / "mine.safetensors").read_bytes() == b"the user's own file"  # never pruned
    # --resume into a finished run with more epochs continues it
    assert main(["train", "--resume", str(out), "--epochs", "2", "--workers", "0", "--threads", "1",
                 "--no-progress"]) == 0  # fmt: skip
    assert checkpoints.read_state(checkpoints.find_last(out)[1])["epoch"] == 2


def test_second_writer_is_refused_and_a_killed_holder_does_not_block(folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "busy"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom mobilenets.engine.runs import claim\n"
         f"with claim({str(out)!r}, resuming=False):\n    print('held', flush=True)\n    time.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert main(train_args(folder, out)) == 2
        one_line_error(capsys, "being written by another mobilenets process", f"pid {holder.pid}")
    finally:
        holder.send_signal(signal.SIGKILL)  # a kill -9 releases the lock with the process
        holder.wait()
    with runs.claim(out, resuming=False):
        pass


def test_stale_temporaries_are_removed_and_foreign_files_kept(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    subprocess.run(["cp", "-r", str(run), str(out)], check=True)
    stale = [out / ".last.json.ab12cd34.tmp", out / "checkpoints" / ".e0001-s000000004.safetensors.x_y9z8w7.tmp"]
    for p in stale:
        p.write_bytes(b"half a file")
    keep = [out / "checkpoints" / ".hidden-note", out / "checkpoints" / "a.safetensors"]
    for p in keep:
        p.write_bytes(b"mine")
    with runs.claim(out, resuming=True):
        pass
    assert not any(p.exists() for p in stale) and all(p.read_bytes() == b"mine" for p in keep)


# -- non-finite values and corrupt checkpoints -----------------------------------------------------------------
def test_non_finite_loss_names_a_checkpoint_whose_weights_are_finite(folder: Path, tmp_path, monkeypatch, capsys):
    from mobilenets.classification.task import ClassifyTask

    real = ClassifyTask.loss
    calls = {"n": 0}

    def nan_at_3(self, model, batch):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        loss, scalars = real(self, model, batch)
        return (loss * float("nan") if calls["n"] == 3 else loss), scalars

    monkeypatch.setattr(ClassifyTask, "loss", nan_at_3)
    out = tmp_path / "nan"
    assert main(train_args(out.parent / "x" if False else folder, out, "--checkpoint-every", "1")) == 2
    line = one_line_error(capsys, "non-finite loss", "last good checkpoint")
    named = Path(line.split("last good checkpoint: ")[1].split(" (")[0])
    _, _, state = checkpoints.read_weights(named)
    assert checkpoints.finite(state) is None
    # a checkpoint whose weights are not finite is never written, and the message names the last good one
    model = create_model("mobilenet_v2", width=0.35, num_classes=3)
    with torch.no_grad():
        model.classifier.weight[0, 0] = float("inf")
    loop = {"epoch": 0, "step": 99, "rows": []}
    with pytest.raises(checkpoints.NonFiniteWeights, match=rf"last good checkpoint: {named}"):
        checkpoints.save_checkpoint(out, "e0000-s000000099", model, {}, loop)
    assert not (out / "checkpoints" / "e0000-s000000099.safetensors").exists()


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "r"
    subprocess.run(["cp", "-r", str(run), str(out)], check=True)
    newest, _ = checkpoints.find_last(out)
    previous = checkpoints.own_checkpoints(out)[1][0]
    newest.write_bytes(newest.read_bytes()[:1000])  # a torn write / a disk fault
    resumed = checkpoints.load_resume(out)
    assert resumed.weights_path == previous and "unreadable" in resumed.note and newest.name in resumed.note
    assert main(["train", "--resume", str(out), "--workers", "0", "--threads", "1", "--no-progress"]) == 0
    assert "resuming from" in capsys.readouterr().err


def test_checkpoint_metadata_is_checked_before_allocation(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from mobilenets.checkpoint import META_KEY

    model = create_model("mobilenet_v2", width=0.35, num_classes=3)
    for change, pattern in (({"num_classes": 10**9}, r"\(1000000000, "), ({"width": 1e4}, "shape")):
        config = {**model.config.to_dict(), **change}
        path = tmp_path / "liar.safetensors"
        meta = {META_KEY: json.dumps({"model": "mobilenet_v2", "config": config})}
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=meta)
        with pytest.raises(CheckpointError, match=pattern):
            create_model("mobilenet_v2", weights=path)
        with pytest.raises(CheckpointError):
            checkpoints.load_trained(path)


# -- COCO entries ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("images", "anns", "message"),
    [
        ([{"id": 1, "file_name": "a.png"}, {"id": 1, "file_name": "b.png"}], [], r"images\[1\]: duplicate image id 1"),
        ([{"id": "1", "file_name": "a.png"}], [], r"images\[0\]: id must be an integer, got '1'"),
        ([{"id": 1.5, "file_name": "a.png"}], [], r"id must be an integer, got 1.5"),
        ([{"id": True, "file_name": "a.png"}], [], r"id must be an integer, got True"),
        ([{"id": 1, "file_name": "a.png", "width": 0, "height": 8}], [], r"\(id 1\): width must be a positive"),
        ([{"id": 1, "file_name": "a.png", "width": 8, "height": -3}], [], r"height must be a positive"),
        ([{"id": 1, "file_name": "a.png"}], [{"id": 4, "image_id": 1, "category_id": 1, "bbox": [1, NAN, 2, 2]}],
         r"annotations\[0\] \(id 4\): bbox has a non-finite value"),
        ([{"id": 1, "file_name": "a.png"}], [{"id": 5, "image_id": "1", "category_id": 1, "bbox": [1, 1, 2, 2]}],
         r"annotations\[0\] \(id 5\): image_id must be an integer"),
        ([{"id": 1, "file_name": 3}], [], r"file_name must be a non-empty string"),
    ],
)  # fmt: skip
def test_coco_id_faults_name_the_entry(tmp_path: Path, images: list, anns: list, message: str) -> None:
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / name)
    with pytest.raises(InputError, match=message):
        CocoDetection(_coco(tmp_path, images, anns))


# -- many objects ----------------------------------------------------------------------------------------------
def _greedy_reference(gt: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """The matching as first written (full IoU matrix, one argmax per forced pick): the definition."""
    iou = box_iou(gt, anchors)
    best_iou, best_gt = iou.max(dim=0)
    matches = torch.where(best_iou >= 0.5, best_gt, torch.full_like(best_gt, -1))
    remaining = iou.clone()
    for _ in range(min(len(gt), len(anchors))):
        g, a = divmod(int(torch.argmax(remaining)), len(anchors))
        matches[a] = g
        remaining[g, :], remaining[:, a] = -1, -1
    return matches


@pytest.fixture(scope="module")
def anchors_320() -> torch.Tensor:
    model = create_model("ssdlite_mobilenet_v2", num_classes=3).eval()
    with torch.no_grad():
        return model.forward_raw(torch.zeros(1, 3, 320, 320))["anchors"]


def test_blocked_matching_equals_the_greedy_definition(anchors_320: torch.Tensor, monkeypatch) -> None:
    from mobilenets.detection import loss

    monkeypatch.setattr(loss, "IOU_BLOCK", 1 << 14)  # many blocks and prunes even for a few hundred boxes
    gen = torch.Generator().manual_seed(0)
    for n, spread, case in ((3, 0.3, ""), (40, 0.02, ""), (300, 0.3, ""), (200, 0.02, "same"), (50, 0.1, "outside")):
        c, wh = torch.rand(n, 2, generator=gen), torch.rand(n, 2, generator=gen) * spread + 0.002
        gt = torch.cat([c - wh / 2, c + wh / 2], 1).clamp(0, 1)
        if case == "same":
            gt = gt[:1].repeat(n, 1)  # every IoU tied
        if case == "outside":
            gt[:, 0], gt[:, 2] = 2.0, 2.1  # zero IoU with every anchor
        assert torch.equal(match_anchors(gt, anchors_320), _greedy_reference(gt, anchors_320)), (n, case)


_MANY_BOXES = """
import resource, sys, time, torch
from mobilenets.detection.loss import build_targets
from mobilenets.registry import create_model
torch.set_num_threads(1)
model = create_model("ssdlite_mobilenet_v2", num_classes=3)
gen = torch.Generator().manual_seed(0)
c = torch.rand(100_000, 2, generator=gen)
boxes = torch.cat([c - 1 / 320, c + 1 / 320], 1).clamp(0, 1)  # 2-pixel boxes at 320 px
images = torch.rand(2, 3, 320, 320)
t = time.perf_counter()
raw = model.forward_raw(images)
ones = torch.ones(100_000, dtype=torch.long)
labels, codes = build_targets([boxes, boxes[:3]], [ones, ones[:3]], raw["anchors"])
from mobilenets.detection.loss import ssd_loss
loss, _ = ssd_loss(raw["cls_logits"], raw["box_codes"], labels, codes)
loss.backward()
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, int((labels[0] > 0).sum()))
"""


def test_a_step_with_100000_boxes_in_one_image_is_bounded() -> None:
    r = subprocess.run([sys.executable, "-c", _MANY_BOXES], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    seconds, peak_mib, positives = r.stdout.split()
    assert positives == "2034"  # min(G, A) forced matches: every anchor takes a box
    assert float(seconds) < 180  # about 8 s of CPU; generous for a loaded 2-core machine
    assert int(peak_mib) < 2500  # about 0.9 GiB (the old matrix of 100,000 × 2034 pairs needed 9.5 GB)


# -- COCO's own layouts ----------------------------------------------------------------------------------------
def _coco_tree(root: Path, train: str, val: str) -> None:
    (root / "annotations").mkdir(parents=True)
    for split in (train, val):
        (root / split).mkdir()
        images, anns = [], []
        for i in range(4):
            arr = np.zeros((64, 64, 3), np.uint8)
            arr[8 + i : 40 + i, 10:42] = 200
            Image.fromarray(arr).save(root / split / f"{i:012d}.jpg")
            images.append({"id": i + 1, "file_name": f"{i:012d}.jpg", "width": 64, "height": 64})
            anns.append({"id": i + 1, "image_id": i + 1, "category_id": 18, "bbox": [10, 8 + i, 32, 32]})
        data = {"images": images, "annotations": anns, "categories": [{"id": 18, "name": "dog"}]}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))


@pytest.mark.parametrize(("train", "val"), [("train2017", "val2017"), ("train2014", "val2014"), ("train", "val")])
def test_coco_layouts_are_found(tmp_path: Path, train: str, val: str) -> None:
    _coco_tree(tmp_path / "coco", train, val)
    t, v = find_sources(tmp_path / "coco")
    assert t.annotations.name == f"instances_{train}.json" and t.images.name == train
    assert v.annotations.name == f"instances_{val}.json" and v.images.name == val
    # the explicit form, and a train JSON named alone finds its val sibling and both image folders
    t2, v2 = find_sources(t.annotations)
    assert (t2, v2) == (t, v)
    t3, v3 = find_sources(t.annotations, tmp_path / "coco" / train, v.annotations, tmp_path / "coco" / val)
    assert (t3.images, v3.images) == (t.images, v.images)
    assert len(CocoDetection(t.annotations, t.images)) == 4


def test_coco_layout_errors_say_what_was_looked_for(tmp_path: Path) -> None:
    (tmp_path / "coco" / "annotations").mkdir(parents=True)
    (tmp_path / "coco" / "README").write_text("hi")
    with pytest.raises(InputError, match=r"looked for annotations/instances_train2017\.json.*found README"):
        find_split(tmp_path / "coco", "train")
    (tmp_path / "coco" / "annotations" / "instances_train2017.json").write_text("{}")
    with pytest.raises(InputError, match=r"no image folder train2017/.*--images DIR"):
        find_split(tmp_path / "coco", "train")


def test_coco_layout_trains_and_evaluates_from_the_cli(tmp_path: Path, capsys) -> None:
    _coco_tree(tmp_path / "coco", "train2017", "val2017")
    out = tmp_path / "det"
    args = ["train", "--task", "detect", "--model", "ssdlite_mobilenet_v3_small", "--width", "0.35",
            "--data", str(tmp_path / "coco"), "--resolution", "64", "--batch-size", "2", "--epochs", "1",
            "--workers", "0", "--threads", "1", "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out), "--data", str(tmp_path / "coco"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 4 and "instances_val2017.json" in result["data"] and result["skipped"] == 0
    # a bomb among the validation images: skipped, counted and named, the others still scored
    (tmp_path / "coco" / "val2017" / f"{0:012d}.jpg").write_bytes(png_declaring(9_000, 9_000))
    assert main(["eval", "--checkpoint", str(out), "--data", str(tmp_path / "coco"), "--json", "--workers", "0"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["skipped"] == 1 and f"{0:012d}.jpg declares 9000×9000" in captured.err


def test_missing_pycocotools_is_an_error_at_start_up(tmp_path: Path, monkeypatch, capsys) -> None:
    _coco_tree(tmp_path / "coco", "train2017", "val2017")
    monkeypatch.setitem(sys.modules, "pycocotools", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "pycocotools.cocoeval", None)
    started = time.perf_counter()
    args = ["train", "--task", "detect", "--model", "ssdlite_mobilenet_v3_small", "--data", str(tmp_path / "coco"),
            "--resolution", "64", "--batch-size", "2", "--workers", "0", "--no-progress",
            "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(args) == 2
    one_line_error(capsys, "pycocotools")
    assert time.perf_counter() - started < 60 and not (tmp_path / "o" / "last.json").exists()


# -- messages --------------------------------------------------------------------------------------------------
def test_unreadable_class_folder_is_reported_as_unreadable(folder: Path, monkeypatch) -> None:
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p).endswith("c1") else real(p, mode))
    with pytest.raises(InputError, match=r"class folder .*c1 is unreadable"):
        scan_folder(folder / "train")


def test_folder_dataset_skips_a_bomb(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png_declaring(70_000, 70_000))
    item = FolderDataset([(tmp_path / "a.png", 0)], ["x"], lambda img: img)[0]
    assert isinstance(item, Skipped) and "declares" in item.reason


def _seg_tree(root: Path) -> None:
    for split in ("train", "val"):
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(root / split / "images" / f"{i}.png")
            Image.fromarray(np.zeros((64, 64), np.uint8)).save(root / split / "masks" / f"{i}.png")
    (root / "classes.txt").write_text("background\nthing\n")


def test_segmentation_skips_a_bomb_and_worker_errors_are_one_line(tmp_path: Path, capsys) -> None:
    _seg_tree(tmp_path / "seg")
    (tmp_path / "seg" / "train" / "images" / "1.png").write_bytes(png_declaring(12_000, 12_000))
    args = ["train", "--task", "segment", "--data", str(tmp_path / "seg"), "--resolution", "64", "--epochs", "1",
            "--no-progress", "--threads", "1"]  # fmt: skip
    assert main([*args, "--batch-size", "4", "--workers", "0", "--out", str(tmp_path / "a")]) == 0
    assert "1.png declares 12000×12000" in capsys.readouterr().err
    # a batch left with one image cannot be batch-normalised: one line saying why, not a ValueError traceback
    assert main([*args, "--batch-size", "2", "--workers", "0", "--out", str(tmp_path / "b")]) == 2
    one_line_error(capsys, "batch of one image", "1 unreadable image")
    # an error raised inside a DataLoader worker is still one line (the worker's traceback is not the message)
    Image.fromarray(np.full((64, 64), 7, np.uint8)).save(tmp_path / "seg" / "train" / "masks" / "2.png")
    assert main([*args, "--batch-size", "4", "--workers", "1", "--out", str(tmp_path / "c")]) == 2
    line = one_line_error(capsys, "2.png has values [7]")
    assert "Original Traceback" not in line and not line.startswith("error: mobilenets.")
