import pytest
import torch

from monai_ext.networks.checks import check_input


def test_valid_input_passes():
    check_input(torch.zeros(1, 2, 32, 16, 8), "Net", in_channels=2, divisor=(16, 16, 8), min_size=8)


def test_rank_is_checked():
    with pytest.raises(ValueError, match=r"Net expects a 5D input \(B, C, H, W, D\)"):
        check_input(torch.zeros(1, 2, 32, 16), "Net")


def test_channels_are_checked_and_the_fix_named():
    with pytest.raises(ValueError, match="built for 1 input channel.*in_channels=3"):
        check_input(torch.zeros(1, 3, 8, 8, 8), "Net", in_channels=1)


def test_divisibility_names_the_padding():
    with pytest.raises(ValueError, match=r"divisible by \[16, 16, 8\], got \[32, 16, 12\].*DivisiblePad"):
        check_input(torch.zeros(1, 1, 32, 16, 12), "Net", divisor=(16, 16, 8))


def test_minimum_size():
    with pytest.raises(ValueError, match=r"at least \[64, 64, 1\]"):
        check_input(torch.zeros(1, 1, 32, 64, 4), "Net", min_size=(64, 64, 1))


def test_two_spatial_dims():
    check_input(torch.zeros(2, 1, 32, 32), "Net2D", in_channels=1, spatial_dims=2, divisor=16)
