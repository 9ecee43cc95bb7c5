import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer

from monai_ext.inferers import PadInferer
from monai_ext.networks.checks import check_input


def _divisible_net(divisor):
    def net(x):
        check_input(x, "net", divisor=divisor)
        return torch.cat([x, 2 * x], dim=1)

    return net


def test_pads_to_the_divisor_and_crops_back():
    x = torch.randn(2, 1, 20, 33, 7)
    out = PadInferer(divisor=(16, 16, 8))(x, _divisible_net((16, 16, 8)))
    assert out.shape == (2, 2, 20, 33, 7)
    assert torch.equal(out[:, 1], 2 * x[:, 0])


def test_min_size_and_padded_size():
    inferer = PadInferer(divisor=32, min_size=(64, 64, 1))
    assert inferer.padded_size([20, 70, 5]) == [64, 96, 32]


def test_padding_is_zero_at_the_far_end():
    seen = {}

    def net(x):
        seen["x"] = x
        return x

    x = torch.ones(1, 1, 3, 3, 3)
    PadInferer(divisor=4)(x, net)
    padded = seen["x"]
    assert padded.shape == (1, 1, 4, 4, 4)
    assert torch.equal(padded[..., :3, :3, :3], x) and padded.sum() == 27


def test_replicate_mode_and_inner_inferer():
    x = torch.randn(1, 1, 10, 12, 6)
    inner = SlidingWindowInferer(roi_size=(8, 8, 8), overlap=0.5)
    out = PadInferer(divisor=8, inferer=inner, mode="replicate")(x, _divisible_net(8))
    assert torch.allclose(out[:, 0], x[:, 0], atol=1e-6)


def test_meta_tensor_keeps_its_meta():
    x = MetaTensor(torch.randn(1, 1, 5, 6, 7), meta={"filename_or_obj": "case.nii.gz"})
    out = PadInferer(divisor=4)(x, lambda t: t)
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "case.nii.gz"


def test_bad_arguments_and_outputs():
    with pytest.raises(ValueError, match="mode"):
        PadInferer(mode="wrap")
    with pytest.raises(ValueError, match="divisor must be positive"):
        PadInferer(divisor=0)
    with pytest.raises(ValueError, match="spatial size"):
        PadInferer(divisor=4)(torch.zeros(1, 1, 3, 3, 3), lambda t: t[..., :2])


def test_valid_size_reaches_only_inferers_and_networks_that_take_it():
    seen = []

    def plain(x):  # a network without valid_size
        return x

    def taking(x, valid_size=None):
        seen.append(valid_size)
        return x

    x = torch.rand(1, 1, 5, 6, 7)
    torch.testing.assert_close(PadInferer(4)(x, plain), x)
    PadInferer(4)(x, taking)
    assert seen == [[5, 6, 7]]
    PadInferer(4, pass_valid_size=False)(x, taking)
    assert seen[-1] is None
    with pytest.raises(TypeError):
        PadInferer(4, pass_valid_size=True)(x, plain)
