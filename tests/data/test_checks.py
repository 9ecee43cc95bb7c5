"""Tests of the argument checks shared by the phantoms and the Decathlon writer (``monai_ext.data.checks``)."""

from __future__ import annotations

import numpy as np
import pytest

from monai_ext.data.checks import MIN_SIZE, check_count, check_noise, check_seed, check_shape, check_spacing


def test_valid_values_come_back_as_plain_python_numbers():
    shape = check_shape([np.int64(24), 30, 40])
    assert shape == (24, 30, 40) and all(type(s) is int for s in shape)
    assert check_count("n", np.int32(3)) == 3 and type(check_count("n", np.int32(3))) is int
    assert check_count("n", 5, minimum=5) == 5
    assert check_seed(np.uint8(7)) == 7 and type(check_seed(np.uint8(7))) is int
    assert check_noise(0) == 0 and check_noise(2.5) == 2.5
    spacing = check_spacing([1, 0.5, np.float32(3.0)])
    assert spacing == (1.0, 0.5, 3.0) and all(type(s) is float for s in spacing)
    assert MIN_SIZE == 24


@pytest.mark.parametrize("shape", [(64, 64), (64, 64, 64, 1), (64, 23, 64), (64.0, 64, 64), (True, 64, 64), 64, None])
def test_check_shape_refuses(shape):
    with pytest.raises(ValueError, match=rf"shape must be a sequence of 3 integers, each >= {MIN_SIZE}, got"):
        check_shape(shape)


@pytest.mark.parametrize("value", [-1, 1.0, True, "2", None])
def test_check_count_refuses_and_names_the_argument(value):
    with pytest.raises(ValueError, match=rf"num_things must be an integer >= 0, got {value!r}"):
        check_count("num_things", value)


def test_check_count_minimum():
    with pytest.raises(ValueError, match=r"k must be an integer >= 2, got 1"):
        check_count("k", 1, minimum=2)


@pytest.mark.parametrize("seed", [-1, 0.5, False])
def test_check_seed_refuses(seed):
    with pytest.raises(ValueError, match=rf"seed must be a non-negative integer, got {seed!r}"):
        check_seed(seed)


@pytest.mark.parametrize("noise", [-0.1, float("nan"), float("inf"), "0.1", True, None])
def test_check_noise_refuses_with_unit(noise):
    with pytest.raises(ValueError, match=r"noise_std must be a finite number >= 0 \(HU\), got"):
        check_noise(noise, " (HU)")


@pytest.mark.parametrize(
    "spacing", [(1.0, 1.0), (1.0, 0.0, 1.0), (1.0, -1.0, 1.0), (1.0, float("nan"), 1.0), 1.0, ("a", 1, 1)]
)
def test_check_spacing_refuses(spacing):
    with pytest.raises(ValueError, match=r"spacing must be a sequence of 3 positive finite numbers \(mm\), got"):
        check_spacing(spacing)
