"""The monai>=1.6 ``Spacingd`` vs MONAI Label ``image_path`` workaround."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Spacingd

from monai_ext.label.transforms import HideNonDictEntries, shield_transforms


def _data():
    affine = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0]))
    # monai updates every "image_*" entry only for images loaded from NIfTI
    image = MetaTensor(torch.rand(1, 8, 8, 8), affine=affine, meta={"filename_or_obj": "/studies/case.nii.gz"})
    return {"image": image, "image_path": "/studies/case.nii.gz", "image_meta_dict": {"k": 1}}


def test_spacingd_fails_on_image_path_without_the_workaround():
    # the incompatibility this module exists for; if monai fixes it, this test says so
    with pytest.raises(Exception, match="update"):
        Spacingd(keys="image", pixdim=(1.0, 1.0, 1.0))(_data())


def test_hidden_entries_restored():
    out = HideNonDictEntries(Spacingd(keys="image", pixdim=(1.0, 1.0, 1.0)))(_data())
    assert out["image"].shape == (1, 15, 15, 15)  # 8 voxels of 2 mm span 14 mm: 15 samples at 1 mm
    assert out["image_path"] == "/studies/case.nii.gz"
    assert out["image_meta_dict"]["filename_or_obj"] == "/studies/case.nii.gz"  # dict entries still updated
    np.testing.assert_allclose(np.diag(out["image"].affine.numpy())[:3], 1.0)


def test_shield_transforms_wraps_only_spacing():
    other = object()
    wrapped = shield_transforms([Spacingd(keys="image", pixdim=1.0), other], (Spacingd,))
    assert isinstance(wrapped[0], HideNonDictEntries) and wrapped[1] is other
