"""Datalists in the Medical Segmentation Decathlon form, loaded with checks that name the problem and the fix."""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from monai.data import load_decathlon_datalist, partition_dataset
from monai.data.utils import create_file_basename

from .checks import check_count
from .volume_checks import (
    FORMATS_TEXT,
    GRID_TOLERANCE,
    check_label_values,
    check_same_grid,
    check_volume_data,
    check_volume_paths,
    check_voxel_budget,
    is_dicom_series,
    read_volume_header,
    read_volume_values,
    volume_format,
)

__all__ = ["Datalist", "check_datalist", "find_volumes", "load_datalist", "split_datalist"]

_MISSING_FIX = (
    "not found; point the bundle at your data with --dataset_dir <folder holding dataset.json>, --datalist <file> "
    "or --input <an image file, a folder of images or a datalist JSON>."
)


def find_volumes(folder: str | os.PathLike) -> list[str]:
    """The volumes of a folder, one case each, in name order.

    A folder that holds a DICOM series is one case. Otherwise each file directly inside in a format of
    :data:`~monai_ext.data.volume_checks.VOLUME_FORMATS` is a case, and so is each subfolder that holds a DICOM
    series; other files (a ``dataset.json``, a MetaImage's ``.raw``, notes) are passed over, with a log line.

    Args:
        folder: the folder.

    Returns:
        the paths, as strings.

    Raises:
        FileNotFoundError: ``folder`` is not a folder.
        ValueError: the folder holds no volume, naming what it holds and the formats taken.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder.")
    if is_dicom_series(folder):
        return [str(folder)]
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    found = [p for p in entries if volume_format(p) is not None]
    skipped = sorted({p.name for p in entries} - {p.name for p in found})
    if not found:
        held = ", ".join(skipped[:10]) + (", ..." if len(skipped) > 10 else "") if skipped else "nothing"
        raise ValueError(
            f"no volume found in the folder {folder} (it holds: {held}); give a folder of {FORMATS_TEXT}, one image "
            "file, or a datalist JSON."
        )
    if skipped:
        logging.getLogger(__name__).info("%s: passed over %d entries, not volumes: %s", folder, len(skipped), skipped)
    return [str(p) for p in found]


def load_datalist(
    source: str | os.PathLike,
    key: str = "training",
    base_dir: str | os.PathLike | None = None,
    check: bool = True,
    num_channels: int | None = None,
    num_classes: int | None = None,
    max_voxels: int | None = None,
    pixdim: float | Sequence[float] | None = None,
    bytes_per_voxel: float | None = None,
    unique_names: bool = False,
    grid_tolerance: float = GRID_TOLERANCE,
) -> list[dict]:
    """Load the cases of a datalist, a folder of images or one image, checked up front.

    ``source`` is either

    - a Decathlon-style datalist (a ``.json`` file): its list ``key`` (``training``, ``validation``, ``test``, ...)
      is loaded, with relative paths resolved against ``base_dir`` (default: the datalist's folder);
    - a folder: each volume in it is a case (see :func:`find_volumes`), ``{"image": path}``;
    - an image file (NIfTI, NRRD, MetaImage, DICOM) or a DICOM series folder: one case, ``{"image": path}``.

    Unlike ``monai.data.load_decathlon_datalist`` alone, a missing source, a missing list key and every kind of bad
    file that :func:`check_datalist` knows are reported up front, before any work starts. A bundle builds a
    :class:`Datalist` instead, which calls this function when the data are first used.

    Args:
        source: datalist JSON, folder of images, or image file.
        key: which list of a datalist to load (not used for a folder or an image).
        base_dir: folder a datalist's paths are relative to.
        check: run :func:`check_datalist` on the entries.
        num_channels, num_classes, max_voxels, pixdim, bytes_per_voxel, unique_names, grid_tolerance: passed to
            :func:`check_datalist`.

    Returns:
        a list of dicts with absolute ``image`` (and ``label``) paths (for a folder or an image: as given).

    Raises:
        FileNotFoundError: ``source`` or a referenced file does not exist.
        ValueError: the key is missing or empty, a folder holds no volume, a file is not in a format the bundles
            read, or a file fails a check of :func:`check_datalist`.
    """
    source = Path(source)
    is_json = source.suffix.lower() == ".json"
    if not source.exists() or (is_json and not source.is_file()):
        raise FileNotFoundError(f"{'datalist file' if is_json else 'input'} {source} {_MISSING_FIX}")
    if is_json:
        base = Path(base_dir) if base_dir is not None else source.parent
        try:
            items = load_decathlon_datalist(str(source), is_segmentation=True, data_list_key=key, base_dir=str(base))
        except ValueError as e:
            raise ValueError(f"datalist {source} has no usable list {key!r}: {e}") from e
        if not items:
            raise ValueError(f"datalist {source} has an empty list {key!r}; add cases or choose another key.")
    elif source.is_dir() and not is_dicom_series(source):
        items = [{"image": path} for path in find_volumes(source)]
    else:
        check_volume_paths([str(source)], "given as input")
        items = [{"image": str(source)}]
    if check:
        check_datalist(
            items,
            num_channels=num_channels,
            num_classes=num_classes,
            max_voxels=max_voxels,
            pixdim=pixdim,
            bytes_per_voxel=bytes_per_voxel,
            unique_names=unique_names,
            grid_tolerance=grid_tolerance,
        )
    return items


class Datalist(Sequence):
    """A checked datalist that is read when it is first used, so that a bundle's configs parse without any data.

    ``Datalist(source, key, base_dir, **checks)`` only stores its arguments (and checks that
    :func:`load_datalist` takes them). The first ``len()``, index or iteration calls :func:`load_datalist`, which
    loads the list and runs every check of :func:`check_datalist`, once; the items are kept. A bundle config builds
    it in place of a loaded list::

        "all_training": "$monai_ext.data.Datalist(@datalist, 'training', @dataset_dir, num_classes=@num_classes)",
        "data_split": "$@all_training.split(@val_fraction)",

    so that only what holds the data needs it: the datalists, their split and an inference ``Dataset`` over them
    resolve with no dataset present, like ``network_def``, the inferers, the transforms and the optimizer, and the
    checks run when a ``CacheDataset``, an engine or a loss computed from the labels first asks for the cases: when
    the bundle runs. A missing dataset is then reported by :func:`load_datalist`, with the option that points the
    bundle at the data.

    Args:
        source, key, base_dir, **checks: as for :func:`load_datalist` (a datalist JSON, a folder of images or an
            image file).
        missing_as_empty: ``len()`` is 0 while ``source`` does not exist, instead of reading it. An engine takes
            ``len()`` of its data when it is built, and MONAI's property checks build a bundle's engines with no
            data present; a bundle that sets this calls :meth:`check` at the start of its ``run``, which reports
            the missing data (a shuffling training loader refuses 0 cases with a less clear error, so the training
            configs leave it off).

    Raises:
        TypeError: at construction, for an argument :func:`load_datalist` does not take.
    """

    _missing_as_empty = False

    def __init__(
        self,
        source: str | os.PathLike,
        key: str = "training",
        base_dir: str | os.PathLike | None = None,
        missing_as_empty: bool = False,
        **checks,
    ) -> None:
        self._arguments = inspect.signature(load_datalist).bind(source, key, base_dir, **checks).arguments
        self._missing_as_empty = bool(missing_as_empty)
        self._items: list[dict] | None = None

    def _load(self) -> list[dict]:
        return load_datalist(**self._arguments)

    @property
    def loaded(self) -> bool:
        """Whether the items have been read (and checked) yet."""
        return self._items is not None

    @property
    def items(self) -> list[dict]:
        """The checked items, read on first use."""
        if self._items is None:
            self._items = self._load()
        return self._items

    def __len__(self) -> int:
        if self._missing_as_empty and self._items is None and not Path(self._arguments["source"]).exists():
            return 0
        return len(self.items)

    def check(self) -> Datalist:
        """Read and check the items now (what the first use does), and return ``self``.

        With ``missing_as_empty``, a bundle's ``run`` calls it before its engine, so that missing data are reported
        instead of an empty run.

        Raises:
            FileNotFoundError, ValueError: as :func:`load_datalist`.
        """
        _ = self.items
        return self

    def __getitem__(self, index):
        return self.items[index]

    def __iter__(self) -> Iterator[dict]:
        return iter(self.items)

    def __repr__(self) -> str:
        state = f"{len(self._items)} items" if self._items is not None else "not read yet"
        return f"{type(self).__name__}({self._describe()}, {state})"

    def _describe(self) -> str:
        return f"{str(self._arguments['source'])!r}, key={self._arguments['key']!r}"

    def split(self, val_fraction: float = 0.2, min_val: int = 1) -> tuple[Datalist, Datalist]:
        """``(train, validation)`` as :func:`split_datalist` gives them, each a Datalist read on first use.

        Raises:
            ValueError: at once, for a ``val_fraction`` or ``min_val`` that :func:`split_datalist` refuses.
        """
        split_datalist([], val_fraction, min_val)  # check the arguments now, not when the data are read
        return _DatalistPart(self, 0, val_fraction, min_val), _DatalistPart(self, 1, val_fraction, min_val)


class _DatalistPart(Datalist):
    """One part of a :meth:`Datalist.split`, read (and split) when first used."""

    def __init__(self, parent: Datalist, part: int, val_fraction: float, min_val: int) -> None:
        self._parent, self._part = parent, part
        self._val_fraction, self._min_val = val_fraction, min_val
        self._items = None

    def _load(self) -> list[dict]:
        return split_datalist(self._parent.items, self._val_fraction, self._min_val)[self._part]

    def _describe(self) -> str:
        return f"{self._parent._describe()}, {('training', 'validation')[self._part]} part"


def _check_unique_names(items: Sequence[dict], key: str) -> None:
    """Refuse images that would write the same output file: ``SaveImaged(separate_folder=False)`` names a
    prediction after its input file only, without its folder or extension."""
    by_name: dict[str, list[str]] = {}
    for item in items:
        if key in item:
            name = create_file_basename("", str(item[key]), "", separate_folder=False, makedirs=False)
            by_name.setdefault(name, []).append(str(item[key]))
    clashes = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    if clashes:
        shown = "\n  ".join(f"{name}: {', '.join(paths)}" for name, paths in list(clashes.items())[:10])
        raise ValueError(
            f"{len(clashes)} output name(s) would be written by more than one image:\n  {shown}\n"
            "Predictions go into one folder, named after each input file without its folder or extension, so one "
            "would overwrite the other. Rename the files so that their names differ, or run each folder on its own "
            "(a datalist per folder, each with its own --output_dir)."
        )


def check_datalist(
    items: Sequence[dict],
    keys: Sequence[str] = ("image", "label"),
    num_channels: int | None = None,
    num_classes: int | None = None,
    max_voxels: int | None = None,
    pixdim: float | Sequence[float] | None = None,
    bytes_per_voxel: float | None = None,
    unique_names: bool = False,
    grid_tolerance: float = GRID_TOLERANCE,
) -> None:
    """Check every file of a datalist before any work starts; report the first problem with the file, what is wrong
    and the fix.

    The first key is the image, the second (if any) its label. In this order:

    1. every file exists (all missing files are listed), then every file is in a format the bundles read (NIfTI,
       NRRD, MetaImage, DICOM: a ``.dcm`` file or a folder holding a series; all others are listed);
    2. with ``unique_names``, no two images would write the same output (same file name in different folders, or
       ``x.nii`` beside ``x.nii.gz``);
    3. from the headers, read through the MONAI reader that ``LoadImage`` picks
       (:func:`~monai_ext.data.volume_checks.read_volume_header`): each file is a readable 3D volume (an image may
       be 4D with ``num_channels`` channels, a label may have a trailing axis of 1); a label has its image's size
       and lies on its voxel grid (see :func:`~monai_ext.data.volume_checks.check_same_grid`); with ``max_voxels``,
       the image resampled to ``pixdim`` has at most ``max_voxels`` voxels
       (:func:`~monai_ext.data.volume_checks.check_voxel_budget`);
    4. from the voxel data, for every file: a NIfTI's whole data stream is read through (decompressed, then
       dropped), so a truncated or damaged file is caught here instead of mid-run with an ``EOFError``
       (:func:`~monai_ext.data.volume_checks.check_volume_data`); with ``num_classes``, each label's values are
       class indices ``0 .. num_classes - 1`` (:func:`~monai_ext.data.volume_checks.check_label_values`).

    Step 4 reads every byte once: it costs one decompression of the dataset, about 0.6 s for a 512 x 512 x 300
    int16 CT (84 MB of gzip) on this project's CPU, as much as loading it; the NIfTI header checks take
    milliseconds. ITK reads NRRD, MetaImage and DICOM files whole, so for them step 3 already reads every voxel
    (and catches a truncated file), one file at a time, keeping only the header; a label's values are then read a
    second time when ``num_classes`` is given.

    Args:
        items: datalist entries, ``{key: path}``.
        keys: the keys to check, image first.
        num_channels: expected image channels (``None``: a 3D image only).
        num_classes: classes of the labels, background included (``None``: values not checked).
        max_voxels: the largest image accepted, in voxels after resampling to ``pixdim`` (``None``: no limit).
        pixdim: the voxel size the bundle resamples to, in mm, as ``Spacingd`` takes it.
        bytes_per_voxel: the bundle's memory per voxel, to state the memory estimate when an image is too large.
        unique_names: refuse images whose outputs would share a name.
        grid_tolerance: how far a label's grid may be from its image's, in voxels.

    Raises:
        FileNotFoundError: listing every missing file.
        ValueError: listing every file in another format; or the first name clash, unreadable or truncated file,
            non-3D volume, image/label size or grid mismatch, bad label value or too large image.
    """
    check_volume_paths([str(item[k]) for item in items for k in keys if k in item], "named in the datalist")
    if unique_names and keys:
        _check_unique_names(items, keys[0])
    opened = []
    for item in items:
        headers = {
            k: read_volume_header(str(item[k]), num_channels if i == 0 else 1, i == 0)
            for i, k in enumerate(keys)
            if k in item
        }
        shapes = {k: header.shape for k, header in headers.items()}
        if len(set(shapes.values())) > 1:
            raise ValueError(
                "image and label sizes differ: "
                + ", ".join(f"{k} {item[k]} is {s}" for k, s in shapes.items())
                + "; every label must be drawn on the voxel grid of its image."
            )
        if len(headers) > 1:
            (image_key, image), *others = headers.items()
            for k, other in others:
                check_same_grid(
                    str(item[image_key]), str(item[k]), image.shape, image.affine, other.affine, grid_tolerance
                )
        if max_voxels is not None and keys[0] in headers:
            image = headers[keys[0]]
            check_voxel_budget(str(item[keys[0]]), image.shape, image.affine, pixdim, max_voxels, bytes_per_voxel)
        opened.append((item, headers))
    for item, headers in opened:
        for i, (k, header) in enumerate(headers.items()):
            check_volume_data(header)
            if i > 0 and num_classes is not None:
                check_label_values(read_volume_values(header), num_classes, str(item[k]))


def split_datalist(items: Sequence[dict], val_fraction: float = 0.2, min_val: int = 1) -> tuple[list, list]:
    """Split a datalist into (train, validation) deterministically: the last cases, in list order, validate.

    A thin layer over ``monai.data.partition_dataset`` (unshuffled, by ratios), which does the split; on top it fixes
    the validation size to ``round(len(items) * val_fraction)`` (Python rounding), at least ``min_val`` and at most
    ``len(items) - 1``, so that training always keeps a case; a single case is used for both.

    Args:
        items: the datalist (any sequence); it is not modified.
        val_fraction: share of the cases that validate, in [0, 1). Defaults to 0.2.
        min_val: smallest number of validation cases (capped at ``len(items) - 1``), >= 0. Defaults to 1.

    Returns:
        ``(train, validation)``, new lists; both hold the single case when ``items`` has one, both are empty when it
        has none.

    Raises:
        ValueError: when ``val_fraction`` is outside [0, 1) or ``min_val`` is not an integer >= 0.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    min_val = check_count("min_val", min_val)
    items = list(items)
    if len(items) < 2:
        return items, list(items)
    num_val = min(len(items) - 1, max(min_val, round(len(items) * val_fraction)))
    train, val = partition_dataset(items, ratios=[len(items) - num_val, num_val])
    return train, val
