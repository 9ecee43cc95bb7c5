"""k-slice group sampling: same slices for image and label, axis moved last, foreground bias, padding, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_ext.transforms import RandSliceGroup, RandSliceGroupd, slice_group


def _volume(shape=(1, 6, 7, 10)) -> torch.Tensor:
    return torch.arange(float(np.prod(shape))).reshape(shape)


@pytest.mark.parametrize("spatial_dim", [0, 1, 2])
def test_slice_group_moves_the_axis_last_and_keeps_the_slices(spatial_dim):
    img = _volume()
    out = slice_group(img, 2, 3, spatial_dim)
    expected = img.narrow(spatial_dim + 1, 2, 3).movedim(spatial_dim + 1, -1)
    assert torch.equal(out, expected)
    sample = RandSliceGroupd(["image", "label"], 3, spatial_dim=spatial_dim)({"image": img, "label": img})[0]
    assert sample["image"].shape == expected.shape and torch.equal(sample["image"], sample["label"])


def test_slice_group_crop_updates_the_affine_and_pads_short_volumes():
    img = MetaTensor(_volume(), affine=torch.eye(4))
    out = slice_group(img, 4, 3)
    assert out.affine[2, 3] == 4  # the crop's origin moved 4 slices along z
    short = _volume((1, 4, 4, 2))
    padded = slice_group(short, 0, 5)
    assert padded.shape == (1, 4, 4, 5)
    assert torch.equal(padded[..., 2:], short[..., 1:].expand(1, 4, 4, 3))
    with pytest.raises(ValueError, match=r"start must be in \[0, 7\]"):
        slice_group(_volume(), 8, 3)
    with pytest.raises(ValueError, match=r"channel-first volume \(C, H, W, D\)"):
        slice_group(torch.zeros(4, 4, 4), 0, 2)
    with pytest.raises(ValueError, match="spatial_dim counts spatial axes"):
        slice_group(_volume(), 0, 2, spatial_dim=3)


def test_random_group_is_uniform_and_reproducible():
    crop = RandSliceGroup(4)
    crop.set_random_state(0)
    img = _volume()
    starts = [int(crop(img)[0, 0, 0, 0].item()) % 10 for _ in range(300)]  # z index of the first slice
    assert set(starts) == set(range(7))  # every start 0 .. D - k occurs
    again = RandSliceGroup(4).set_random_state(0)
    assert torch.equal(again(img), RandSliceGroup(4).set_random_state(0)(img))
    with pytest.raises(ValueError, match="num_slices must be positive"):
        RandSliceGroup(0)
    with pytest.raises(ValueError, match="spatial_dim counts spatial axes"):
        RandSliceGroup(3, spatial_dim=3)


def test_dictionary_version_crops_image_and_label_alike_and_samples():
    img = _volume()
    label = (img % 3 == 0).float()
    t = RandSliceGroupd(["image", "label"], 3, num_samples=5).set_random_state(1)
    out = t({"image": img, "label": label, "name": "case"})
    assert isinstance(out, list) and len(out) == 5
    for sample in out:
        assert sample["image"].shape == sample["label"].shape == (1, 6, 7, 3)
        assert torch.equal(sample["label"], (sample["image"] % 3 == 0).float())
        assert sample["name"] == "case"


def test_foreground_sampling_always_contains_the_foreground():
    img = _volume((1, 5, 5, 40))
    label = torch.zeros_like(img)
    label[0, 2, 2, 30] = 1  # one foreground slice
    biased = RandSliceGroupd(["image", "label"], 4, num_samples=50, label_key="label", pos_fraction=1.0)
    for sample in biased.set_random_state(0)({"image": img, "label": label}):
        assert sample["label"].sum() == 1
    uniform = RandSliceGroupd(["image", "label"], 4, num_samples=50, label_key="label", pos_fraction=0.0)
    hits = sum(int(s["label"].sum()) for s in uniform.set_random_state(0)({"image": img, "label": label}))
    assert hits < 25  # 4 of 37 starts contain slice 30
    # an empty label falls back to uniform starts
    empty = biased({"image": img, "label": torch.zeros_like(img)})
    assert len(empty) == 50


def test_class_ratios_give_rare_classes_their_share():
    img = _volume((1, 5, 5, 60))
    label = torch.zeros_like(img)
    label[0, 1, 1, :] = 1  # class 1 in every slice
    label[0, 3, 3, 50] = 2  # class 2 in one slice
    t = RandSliceGroupd(["image", "label"], 4, num_samples=200, label_key="label", ratios=[0, 1, 1])
    samples = t.set_random_state(0)({"image": img, "label": label})
    with_rare = sum(int((s["label"] == 2).any()) for s in samples)
    assert 70 < with_rare < 130  # about half, against 4 / 57 for uniform starts
    only_rare = RandSliceGroupd(["image", "label"], 4, num_samples=20, label_key="label", ratios=[0, 0, 1])
    assert all((s["label"] == 2).any() for s in only_rare({"image": img, "label": label}))
    # no class with a weight is present: uniform starts
    absent = RandSliceGroupd(["image", "label"], 4, num_samples=5, label_key="label", ratios=[0, 0, 1])
    assert len(absent({"image": img, "label": (label == 1).float()})) == 5
    with pytest.raises(ValueError, match="ratios needs label_key"):
        RandSliceGroupd("image", 3, ratios=[1, 1])
    with pytest.raises(ValueError, match="ratios needs label_key"):
        RandSliceGroupd("image", 3, label_key="label", ratios=[0, 0])


def test_dictionary_version_errors():
    with pytest.raises(ValueError, match="pos_fraction must be in"):
        RandSliceGroupd("image", 3, pos_fraction=2)
    with pytest.raises(ValueError, match="num_samples must be positive"):
        RandSliceGroupd("image", 3, num_samples=0)
    t = RandSliceGroupd(["image", "label"], 3)
    with pytest.raises(ValueError, match="different spatial shapes"):
        t({"image": _volume(), "label": _volume((1, 6, 7, 9))})
