"""The synthetic segmentation tasks :func:`monai_ext.data.write_msd_dataset` can write, by name.

``TASKS`` maps a task name to a :class:`TaskSpec`: how to make case ``index`` of a dataset (the phantom, with the
object counts drawn per case), the ``dataset.json`` header and the default shape and spacing.

- ``"vessels"``: :func:`monai_ext.data.make_phantom` (CT, vessels and nodules), stored as int16 HU;
- ``"vessels_oblique"``: the same with vessels at 15-45 degrees from the slice normal and nodules whose axial
  sections match theirs (``make_phantom(..., tilt=OBLIQUE_TILT)``);
- ``"lesions"``: :func:`monai_ext.data.make_lesion_phantom` (T1, T2, FLAIR with MS-like lesions), float32 channels
  last.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from .lesions import LESION_LABELS, MODALITIES, make_lesion_phantom
from .vessels import LABELS, make_phantom

__all__ = ["OBLIQUE_TILT", "TASKS", "TaskSpec", "case_seed", "get_task"]

OBLIQUE_TILT = (15.0, 45.0)  # degrees between the vessels and the slice normal in the "vessels_oblique" task


@dataclass(frozen=True)
class TaskSpec:
    """What :func:`monai_ext.data.write_msd_dataset` needs to know about one task.

    Args:
        make_case: ``make_case(shape, seed, index) -> (image, label, note)`` for case ``index`` of a dataset with base
            seed ``seed``: the image as it is stored (dtype included; 3D, or 4D channels last), the label, and a short
            note for the progress line.
        shape: the default spatial size ``(X, Y, Z)``.
        spacing: the default voxel size in mm.
        header: the leading ``dataset.json`` keys (``name`` to ``labels``).
    """

    make_case: Callable[[tuple[int, int, int], int, int], tuple[np.ndarray, np.ndarray, str]]
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    header: dict


def case_seed(seed: int, index: int, stream: int = 0) -> int:
    """Deterministic, well-mixed seed for case ``index`` of a dataset with base ``seed``.

    Args:
        seed: the dataset's base seed, >= 0.
        index: the case's index, >= 0.
        stream: separates independent uses within one case (0: the phantom, 1: its object counts).

    Returns:
        a 32-bit seed from ``np.random.SeedSequence(entropy=seed, spawn_key=(index, stream))``.
    """
    return int(np.random.SeedSequence(entropy=seed, spawn_key=(index, stream)).generate_state(1)[0])


def _fewer_until_fits(
    make: Callable[..., tuple[np.ndarray, np.ndarray]], counts: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """``make(*counts)``; while it raises RuntimeError (objects do not fit), again with one object fewer.

    The largest count (the first of equal ones) loses one object each time, so every count stays at least 1 when
    it started at 1 or more.

    Returns:
        ``(image, label, counts)``, the counts that fitted.

    Raises:
        RuntimeError: when even every count at 1 (or less) does not fit.
    """
    counts = list(counts)
    while True:
        try:
            image, label = make(*counts)
            return image, label, tuple(counts)
        except RuntimeError:
            if max(counts) <= 1:
                raise
            counts[counts.index(max(counts))] -= 1


def _vessel_case(
    shape: tuple[int, int, int], seed: int, index: int, tilt: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray, str]:
    """One case of the vessel task: 2-4 vessels and 2-4 nodules (fewer, at least one of each, when they do not fit),
    the image rounded to int16 HU; ``tilt`` is :func:`make_phantom`'s (None: vessels along z)."""
    drawn = np.random.default_rng(case_seed(seed, index, stream=1)).integers(2, 5, size=2)
    image, label, (vessels, nodules) = _fewer_until_fits(
        lambda v, n: make_phantom(shape, case_seed(seed, index), v, n, tilt=tilt), (int(drawn[0]), int(drawn[1]))
    )
    hu = np.clip(np.rint(image), -1024, 3071).astype(np.int16)
    return hu, label, f"{vessels} vessels, {nodules} nodules"


def _lesion_case(shape: tuple[int, int, int], seed: int, index: int) -> tuple[np.ndarray, np.ndarray, str]:
    """One case of the lesion task: 4-8 lesions (fewer, at least one, when they do not fit), float32 channels last."""
    drawn = int(np.random.default_rng(case_seed(seed, index, stream=1)).integers(4, 9))
    image, label, (lesions,) = _fewer_until_fits(
        lambda n: make_lesion_phantom(shape, case_seed(seed, index), n), (drawn,)
    )
    return image, label, f"{lesions} lesions"


# what the two vessel tasks' dataset.json headers share
_VESSEL_HEADER = {
    "reference": "monai_ext.data.vessels (generated data, no patient data)",
    "licence": "CC0-1.0",
    "release": "1.0",
    "tensorImageSize": "3D",
    "modality": {"0": "CT"},
    "labels": {str(k): v for k, v in LABELS.items()},
}

TASKS: dict[str, TaskSpec] = {
    "vessels": TaskSpec(
        make_case=_vessel_case,
        shape=(64, 64, 64),
        spacing=(1.5, 1.5, 1.5),
        header={
            "name": "SyntheticVesselNodule",
            "description": "Synthetic CT-like phantoms: tubular vessels and spherical nodules of matching size and "
            "intensity, only separable with 3D context. labelsTs (not in MSD) holds the test ground truth.",
            **_VESSEL_HEADER,
        },
    ),
    "vessels_oblique": TaskSpec(
        make_case=partial(_vessel_case, tilt=OBLIQUE_TILT),
        shape=(64, 64, 64),
        spacing=(1.5, 1.5, 1.5),
        header={
            "name": "SyntheticObliqueVesselNodule",
            "description": "Synthetic CT-like phantoms: straight tubular vessels running 15-45 degrees from the slice "
            "normal and ellipsoidal nodules whose axial sections match the vessels' (ellipses of semi-axes r and "
            "r / cos(angle)), of the same intensity, only separable with 3D context. labelsTs (not in MSD) holds the "
            "test ground truth.",
            **_VESSEL_HEADER,
        },
    ),
    "lesions": TaskSpec(
        make_case=_lesion_case,
        shape=(64, 64, 32),
        spacing=(1.0, 1.0, 3.0),
        header={
            "name": "SyntheticMSLesion",
            "description": "Synthetic brain-MRI-like phantoms (T1, T2, FLAIR) with small MS-like white-matter "
            "lesions: iso/hypo-intense on T1, bright on T2 and FLAIR; CSF is bright on T2 and dark on FLAIR, so only "
            "the channels together separate lesions from CSF. Images are float32 in [0, 1], channels last. labelsTs "
            "(not in MSD) holds the test ground truth.",
            "reference": "monai_ext.data.lesions (generated data, no patient data)",
            "licence": "CC0-1.0",
            "release": "1.0",
            "tensorImageSize": "4D",
            "modality": {str(i): m for i, m in enumerate(MODALITIES)},
            "labels": {str(k): v for k, v in LESION_LABELS.items()},
        },
    ),
}


def get_task(task: str) -> TaskSpec:
    """The :class:`TaskSpec` of ``task``.

    Raises:
        ValueError: when ``task`` is not a key of ``TASKS``.
    """
    if not isinstance(task, str) or task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(map(repr, TASKS))}, got {task!r}.")
    return TASKS[task]
