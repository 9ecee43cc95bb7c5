"""Argument checks shared by the phantom generators and the Decathlon writer.

Each check returns the value in its plain Python form (``int``, ``float``, tuples of them) or raises a ``ValueError``
that names the argument, what was given and what is expected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["MIN_SIZE", "check_count", "check_noise", "check_seed", "check_shape", "check_spacing"]

MIN_SIZE = 24  # smallest allowed extent along each axis of a phantom, in voxels


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    """Check a phantom's spatial size ``(X, Y, Z)``.

    Args:
        shape: three integers, each at least ``MIN_SIZE`` (24).

    Returns:
        the shape as a tuple of three ``int``.

    Raises:
        ValueError: when ``shape`` is not a sequence of three integers >= ``MIN_SIZE``.
    """
    msg = f"shape must be a sequence of 3 integers, each >= {MIN_SIZE}, got {shape!r}."
    try:
        items = tuple(shape)
    except TypeError:
        raise ValueError(msg) from None
    if len(items) != 3 or not all(_is_int(s) for s in items) or min(items) < MIN_SIZE:
        raise ValueError(msg)
    return int(items[0]), int(items[1]), int(items[2])


def check_count(name: str, value: int, minimum: int = 0) -> int:
    """Check a count (cases, objects, ...) called ``name``.

    Args:
        name: the argument's name, for the error message.
        value: an integer (``bool`` is refused).
        minimum: smallest allowed value. Defaults to 0.

    Returns:
        ``value`` as ``int``.

    Raises:
        ValueError: when ``value`` is not an integer >= ``minimum``.
    """
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def check_seed(seed: int) -> int:
    """Check a seed for ``np.random.default_rng``.

    Raises:
        ValueError: when ``seed`` is not a non-negative integer.
    """
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    return int(seed)


def check_noise(noise_std: float, unit: str = "") -> float:
    """Check a noise standard deviation.

    Args:
        noise_std: a finite number >= 0.
        unit: text shown after the bound in the error message, e.g. ``" (HU)"``.

    Returns:
        ``noise_std`` unchanged.

    Raises:
        ValueError: when ``noise_std`` is not a finite number >= 0 (strings and ``bool`` are refused).
    """
    bad_type = isinstance(noise_std, bool) or not isinstance(noise_std, (int, float, np.number))
    if bad_type or not math.isfinite(noise_std) or noise_std < 0:
        raise ValueError(f"noise_std must be a finite number >= 0{unit}, got {noise_std!r}.")
    return noise_std


def check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    """Check a voxel size ``(x, y, z)`` in mm.

    Returns:
        the spacing as a tuple of three ``float``.

    Raises:
        ValueError: when ``spacing`` is not a sequence of three positive finite numbers.
    """
    msg = f"spacing must be a sequence of 3 positive finite numbers (mm), got {spacing!r}."
    try:
        items = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise ValueError(msg) from None
    if len(items) != 3 or not all(math.isfinite(s) and s > 0 for s in items):
        raise ValueError(msg)
    return items[0], items[1], items[2]
