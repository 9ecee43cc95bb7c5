"""The Medical Segmentation Decathlon (MSD) layout writer for the synthetic tasks of :mod:`monai_ext.data.tasks`.

:func:`write_msd_dataset` writes ``imagesTr/``, ``labelsTr/``, ``imagesTs/``, ``labelsTs/`` and ``dataset.json`` as the
MSD releases do (plus the test labels, which MSD withholds), atomically: a failure leaves no partial dataset behind.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from .checks import check_count, check_seed, check_shape, check_spacing
from .tasks import get_task

__all__ = ["write_msd_dataset"]


def _affine(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """RAS affine with the given spacing, centred on the volume (world origin at the volume centre)."""
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.asarray(shape, dtype=float) - 1) * np.asarray(spacing) / 2
    return affine


def _to_nifti(array: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units(xyz="mm")
    return img


def _write_case(image_path: Path, label_path: Path, image: np.ndarray, label: np.ndarray, affine: np.ndarray) -> None:
    """Write one case: the image with its dtype and shape as given (3D, or 4D channels last), the label as uint8."""
    nib.save(_to_nifti(image, affine), str(image_path))
    nib.save(_to_nifti(label.astype(np.uint8), affine), str(label_path))


def _move_into_place(src: Path, dst: Path) -> None:
    """Rename directory ``src`` to ``dst``, replacing ``dst`` if it exists; ``dst`` is restored if the rename fails."""
    if not dst.exists():
        os.replace(src, dst)
        return
    if not any(dst.iterdir()):
        dst.rmdir()
        os.replace(src, dst)
        return
    backup = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:12]}"
    os.replace(dst, backup)
    try:
        os.replace(src, dst)
    except BaseException:
        os.replace(backup, dst)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def write_msd_dataset(
    output_dir: str | os.PathLike,
    num_train: int = 8,
    num_test: int = 4,
    shape: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = False,
    task: str = "vessels",
) -> Path:
    """Write a synthetic dataset in the Medical Segmentation Decathlon (MSD) layout.

    Three tasks:

    - ``"vessels"``: CT-like vessel/nodule volumes (:func:`monai_ext.data.make_phantom`), labels ``LABELS``,
      ``modality`` ``{"0": "CT"}``; default shape ``(64, 64, 64)``, spacing 1.5 mm.
    - ``"vessels_oblique"``: the same with vessels 15-45 degrees from the slice normal and nodules whose axial
      sections match theirs (``make_phantom(..., tilt=(15, 45))``); ``generator`` records the task.
    - ``"lesions"``: brain-MRI-like volumes with MS-like lesions (:func:`monai_ext.data.make_lesion_phantom`),
      4D images ``(X, Y, Z, 3)`` (float32 in [0, 1], channels last, ``tensorImageSize`` ``"4D"``), ``modality``
      ``{"0": "T1", "1": "T2", "2": "FLAIR"}``, labels ``{"0": "background", "1": "lesion"}``; default shape
      ``(64, 64, 32)``, spacing ``(1.0, 1.0, 3.0)`` mm (thick slices). ``generator`` in ``dataset.json`` records
      ``"task": "lesions"``.

    Layout under ``output_dir``::

        dataset.json
        imagesTr/case_000.nii.gz ...   labelsTr/case_000.nii.gz ...
        imagesTs/case_008.nii.gz ...   labelsTs/case_008.nii.gz ...

    ``labelsTs`` is not part of MSD: it holds the ground truth of the test cases for evaluation, listed in the extra
    ``dataset.json`` key ``test_labeled`` (``[{"image": ..., "label": ...}]``); ``test`` lists image paths only, as in
    MSD. Cases are numbered consecutively, training first, each with a seed derived from ``seed`` and the case index.
    Vessel cases are :func:`monai_ext.data.make_phantom` volumes with 2-4 vessels and 2-4 nodules (fewer, but at
    least one of each, when they do not fit: small shapes), stored as int16 HU (rounded); lesion cases have 4-8 lesions
    (fewer, at least one, when they do not fit). Labels are stored as uint8; the affine is RAS with ``spacing`` on the
    diagonal and the origin at the volume centre (``-(shape - 1) * spacing / 2``), qform and sform codes 1 (scanner).

    The dataset is written into a temporary sibling directory and renamed into place, so a failure leaves no partial
    dataset behind.

    Args:
        output_dir: dataset directory to create (parents are created as needed).
        num_train: number of training cases, >= 0.
        num_test: number of test cases, >= 0; ``num_train + num_test`` must be >= 1.
        shape: spatial size ``(X, Y, Z)`` of every volume, each >= 24; z is the axial slice axis. None: the task's
            default.
        spacing: voxel size in mm along ``(x, y, z)``, positive. None: the task's default.
        seed: base seed; the same arguments give identical arrays and an identical ``dataset.json``.
        overwrite: replace ``output_dir`` if it exists and is not empty.
        progress: print one line per written case.
        task: a key of :data:`monai_ext.data.tasks.TASKS`: ``"vessels"``, ``"vessels_oblique"`` or ``"lesions"``.

    Returns:
        Path of the written ``dataset.json``.

    Raises:
        ValueError: when an argument is out of range or of the wrong type.
        FileExistsError: when ``output_dir`` exists and is not empty and ``overwrite`` is False, or is not a directory.
    """
    num_train = check_count("num_train", num_train)
    num_test = check_count("num_test", num_test)
    if num_train + num_test < 1:
        raise ValueError(f"num_train + num_test must be >= 1, got num_train={num_train}, num_test={num_test}.")
    spec = get_task(task)
    shape_ = spec.shape if shape is None else check_shape(shape)
    spacing_ = spec.spacing if spacing is None else check_spacing(spacing)
    seed = check_seed(seed)

    out = Path(output_dir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output_dir {str(out)!r} exists and is not a directory.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"output_dir {str(out)!r} exists and is not empty; pass overwrite=True to replace it or pick another "
            "directory."
        )
    out.parent.mkdir(parents=True, exist_ok=True)

    affine = _affine(shape_, spacing_)
    total = num_train + num_test
    training, test, test_labeled = [], [], []
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()  # unlike tempfile.mkdtemp, honours the umask
    try:
        for split in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            (tmp / split).mkdir()
        for index in range(total):
            name = f"case_{index:03d}.nii.gz"
            images, labels = ("imagesTr", "labelsTr") if index < num_train else ("imagesTs", "labelsTs")
            image, label, note = spec.make_case(shape_, seed, index)
            _write_case(tmp / images / name, tmp / labels / name, image, label, affine)
            pair = {"image": f"./{images}/{name}", "label": f"./{labels}/{name}"}
            if index < num_train:
                training.append(pair)
            else:
                test.append(pair["image"])
                test_labeled.append(pair)
            if progress:
                print(f"[{index + 1}/{total}] {pair['image']} ({note})")

        generator = {"seed": seed, "shape": list(shape_), "spacing": list(spacing_)}
        if task != "vessels":  # the vessel dataset.json predates tasks and stays as it was
            generator = {"task": task, **generator}
        dataset = {
            **spec.header,
            "numTraining": num_train,
            "numTest": num_test,
            "training": training,
            "test": test,
            "test_labeled": test_labeled,
            "generator": generator,
        }
        json_path = tmp / "dataset.json"
        json_path.write_text(json.dumps(dataset, indent=4) + "\n", encoding="utf-8")
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "dataset.json"
