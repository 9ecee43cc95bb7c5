"""Test volumes in the formats MONAI's ITK reader takes: NRRD and MetaImage files, and DICOM series."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

itk = pytest.importorskip("itk")


def write_itk(
    path: Path,
    array: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    origin: Sequence[float] | None = None,
    vector: bool = False,
) -> str:
    """``array`` ``(X, Y, Z[, C])`` (C with ``vector``) written gzip-compressed through ITK, in the format its file
    name says; ``origin`` in ITK's LPS. Returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    order = list(range(array.ndim - (1 if vector else 0)))
    img = itk.image_from_array(np.ascontiguousarray(np.moveaxis(array, order, order[::-1])), is_vector=vector)
    img.SetSpacing(list(spacing)[: len(order)])
    if origin is not None:
        img.SetOrigin(list(origin))
    itk.imwrite(img, str(path), compression=True)
    return str(path)


def write_dicom_series(folder: Path, array: np.ndarray, suffix: str = ".dcm") -> str:
    """``array`` ``(X, Y, Z)`` as int16, one DICOM file per slice ``slice<i:03d><suffix>`` in ``folder`` (made
    here). Returns the folder."""
    folder.mkdir(parents=True)
    img = itk.image_from_array(np.ascontiguousarray(np.moveaxis(array.astype(np.int16), [0, 1, 2], [2, 1, 0])))
    writer = itk.ImageSeriesWriter[type(img), itk.Image[itk.SS, 2]].New()
    writer.SetInput(img)
    writer.SetImageIO(itk.GDCMImageIO.New())
    writer.SetFileNames([str(folder / f"slice{i:03d}{suffix}") for i in range(array.shape[2])])
    writer.Update()
    return str(folder)
