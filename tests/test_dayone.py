"""A user's first day: their data's class names, the weights they bring (names and input transform), backbones
started from those weights, defaults that learn on a small folder, and output that explains itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mobilenets.cli import main
from mobilenets.data.scenes import SceneConfig, write_split
from mobilenets.engine.checkpoints import load_trained
from mobilenets.segmentation.data import VOC_CLASSES, class_names_of


# -- class names of the user's data ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scenes")
    for split, count in (("train", 4), ("val", 2)):
        write_split(out, split, count, SceneConfig(size=64, max_objects=2))
    return out


def test_scenes_write_their_class_names(scenes: Path) -> None:
    expected = ["background", "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                "Bag", "Ankle boot"]  # fmt: skip
    assert (scenes / "classes.txt").read_text().splitlines() == expected
    assert class_names_of(scenes) == (expected, str(scenes / "classes.txt"))
    # The COCO categories say the same: category id i is mask value i.
    (scenes / "classes.txt").rename(scenes / "names.bak")
    try:
        names, source = class_names_of(scenes)  # type: ignore[misc]
        assert names == expected and "annotations.json" in source
    finally:
        (scenes / "names.bak").rename(scenes / "classes.txt")


def test_segmenter_trained_on_scenes_is_labelled_with_their_names(scenes: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    code = main(["train", "--task", "segment", "--model", "lraspp_mobilenet_v3_small", "--width", "0.35",
                 "--data", str(scenes), "--resolution", "64", "--batch-size", "2", "--epochs", "1", "--max-steps", "1",
                 "--workers", "0", "--out", str(run), "--no-progress"])  # fmt: skip
    assert code == 0
    classes = load_trained(run).metadata["classes"]
    assert classes[1:3] == ["T-shirt/top", "Trouser"] and classes[-1] == "Ankle boot"
    assert not set(classes) & (set(VOC_CLASSES) - {"background"})


def test_voc_names_only_for_voc_data(tmp_path: Path) -> None:
    voc = tmp_path / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "SegmentationClass").mkdir()
    assert class_names_of(tmp_path) == (list(VOC_CLASSES), "PASCAL VOC")
    folder = tmp_path / "mine"
    for split in ("train", "val"):
        (folder / split / "images").mkdir(parents=True)
        (folder / split / "masks").mkdir()
    assert class_names_of(folder) is None  # an unnamed folder gets no borrowed names
    (folder / "train" / "annotations.json").write_text(json.dumps({"categories": [{"id": 2, "name": "b"}]}))
    with pytest.raises(Exception, match=r"not 1\.\.K"):
        class_names_of(folder)


def test_unnamed_segmentation_folder_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for split in ("train", "val"):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "masks").mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / split / "images" / "a.jpg")
        Image.new("L", (8, 8)).save(tmp_path / split / "masks" / "a.png")
    code = main(["train", "--task", "segment", "--data", str(tmp_path), "--out", str(tmp_path / "run"),
                 "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "does not name its classes" in err and "classes.txt" in err and len(err.splitlines()) == 1
