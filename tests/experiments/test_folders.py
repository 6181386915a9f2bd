"""Users' own image folders: layouts, image modes, sizes and the bad-input cases."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from convnorm.experiments import cli
from convnorm.experiments.data import DatasetError, image_statistics, load_dataset
from convnorm.experiments.data.folders import TEST_FRACTION, load_image_folder


def _image(path, mode, size, value):
    """A solid image whose pixel value encodes (class, index), in the given Pillow mode."""
    rgb = Image.new("RGB", size, (value, 255 - value, value // 2))
    image = {"RGB": rgb, "L": rgb.convert("L"), "RGBA": rgb.convert("RGBA"),
             "P": rgb.convert("P", palette=Image.ADAPTIVE)}[mode]
    image.save(path)
    return np.asarray(rgb.convert("RGB") if mode != "L" else rgb.convert("L").convert("RGB"))


def _folder(root, classes=("cat", "dog", "emu"), per_class=5, modes=("RGB", "L", "RGBA", "P"), size=(12, 10)):
    """root/<class>/<i>.png with mixed modes; returns {path: (label, expected RGB array)}."""
    expected = {}
    for label, name in enumerate(classes):
        os.makedirs(root / name)
        for i in range(per_class):
            path = root / name / f"{i}.png"
            expected[str(path)] = (label, _image(path, modes[i % len(modes)], size, 40 * label + 7 * i))
    return expected


def test_mixed_modes_decode_to_rgb_with_sorted_class_labels_and_a_stratified_test_part(tmp_path):
    expected = _folder(tmp_path)
    train = load_image_folder(str(tmp_path), train=True)
    test = load_image_folder(str(tmp_path), train=False)
    assert train.num_classes == test.num_classes == 3 and train.name == "imagefolder"
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (3, 10, 12)
    assert len(train) + len(test) == 15
    # A fixed fifth of every class is the test part.
    assert torch.bincount(test.labels).tolist() == [round(TEST_FRACTION * 5)] * 3
    pixels = {tuple(arr[0, 0]): label for label, arr in expected.values()}
    for images, labels in ((train.images, train.labels), (test.images, test.labels)):
        for img, label in zip(images, labels):
            assert pixels[tuple(img[:, 0, 0].tolist())] == label  # the image's own class
    again = load_image_folder(str(tmp_path), train=False)
    assert torch.equal(again.images, test.images)  # the split is the same every time


def test_train_and_test_folders_are_the_splits(tmp_path):
    _folder(tmp_path / "train", per_class=3)
    _folder(tmp_path / "test", per_class=2)
    assert len(load_image_folder(str(tmp_path), train=True)) == 9
    assert len(load_image_folder(str(tmp_path), train=False)) == 6


def test_image_size_resizes_the_shorter_side_and_crops_the_centre(tmp_path):
    os.makedirs(tmp_path / "a")
    os.makedirs(tmp_path / "b")
    for cls in ("a", "b"):
        for i in range(3):
            array = np.zeros((20, 40, 3), dtype=np.uint8)
            array[:, 10:30] = 200  # a bright centre band; the crop keeps only it
            Image.fromarray(array).save(tmp_path / cls / f"{i}.png")
    Image.new("RGB", (30, 30), (200, 200, 200)).save(tmp_path / "a" / "square.png")
    data = load_image_folder(str(tmp_path), train=True, image_size=8)
    assert data.images.shape[1:] == (3, 8, 8)
    assert int(data.images.min()) >= 150  # the dark sides were cropped away


def test_images_of_different_sizes_need_an_image_size(tmp_path):
    _folder(tmp_path, classes=("a",), per_class=3)
    Image.new("RGB", (7, 7)).save(tmp_path / "a" / "odd.png")
    with pytest.raises(DatasetError, match="give an image size"):
        load_image_folder(str(tmp_path), train=True)


def test_a_corrupt_image_is_named_or_skipped_with_a_warning(tmp_path):
    _folder(tmp_path, per_class=4)
    bad = tmp_path / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(DatasetError, match=f"{bad}: not a readable image"):
        for split in (True, False):
            load_image_folder(str(tmp_path), train=split)
    with pytest.warns(UserWarning, match="broken.png"):
        both = [load_image_folder(str(tmp_path), train=s, skip_corrupt=True) for s in (True, False)]
    assert sum(len(d) for d in both) == 12


def test_an_empty_class_folder_or_a_missing_folder_is_named(tmp_path):
    _folder(tmp_path, classes=("a", "b"), per_class=3)
    os.makedirs(tmp_path / "c")
    (tmp_path / "c" / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=f"class folder\\(s\\) without images.*{tmp_path / 'c'}"):
        load_image_folder(str(tmp_path), train=True)
    with pytest.raises(DatasetError, match="does not exist"):
        load_image_folder(str(tmp_path / "nowhere"), train=True)
    with pytest.raises(DatasetError, match="no class subfolders"):
        load_image_folder(str(tmp_path / "c"), train=True)


def test_statistics_of_the_training_images():
    images = torch.tensor([[[[0, 255]], [[51, 51]]]], dtype=torch.uint8)  # (1, 2, 1, 2)
    mean, std = image_statistics(images)
    assert mean == pytest.approx((0.5, 0.2)) and std == pytest.approx((0.5, 1e-3))  # std floored


def test_train_command_on_an_image_folder_end_to_end(tmp_path):
    _folder(tmp_path / "pets", classes=("cat", "dog"), per_class=20, size=(16, 16))
    args = ["train", "--preset", "test", "--image-folder", str(tmp_path / "pets"), "--image-size", "12",
            "--epochs", "1", "--noise-rate", "0.2", "--train-fraction", "0.5", "--out", str(tmp_path / "out"),
            "--checkpoints", str(tmp_path / "ckpt")]
    assert cli.main(args) == 0
    (path,) = [p for p in os.listdir(tmp_path / "out") if p.endswith(".json")]
    record = json.loads((tmp_path / "out" / path).read_text())
    assert record["status"] == "complete" and path.startswith("imagefolder-")
    config = record["config"]
    assert config["dataset"] == "imagefolder" and config["image_folder"] == str(tmp_path / "pets")
    assert config["image_size"] == 12 and config["noise"] == "symmetric"
    assert record["data"]["test_size"] == 2 * round(TEST_FRACTION * 20)


def test_imagefolder_and_its_folder_go_together():
    from convnorm.experiments.train import preset

    with pytest.raises(ValueError, match="imagefolder"):
        preset("test", dataset="imagefolder")
    with pytest.raises(ValueError, match="imagefolder"):
        preset("test", image_folder="somewhere")
    with pytest.raises(ValueError, match="needs its folder"):
        load_dataset("imagefolder", train=True)
