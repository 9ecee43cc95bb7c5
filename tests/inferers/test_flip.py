from functools import partial

import pytest
import torch
from monai.inferers import SimpleInferer, SlidingWindowInferer

from monai_ext.inferers import FlipInferer, flip_combinations


def test_flip_combinations_are_every_non_empty_subset():
    assert flip_combinations((0, 1, 2)) == [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    assert flip_combinations(()) == []


def test_equivariant_network_is_unchanged_and_no_axes_is_the_plain_inferer():
    net = torch.nn.Conv3d(1, 2, 1)  # pointwise: commutes with flips
    x = torch.randn(1, 1, 6, 5, 4)
    with torch.no_grad():
        assert torch.allclose(FlipInferer(SimpleInferer())(x, net), net(x), atol=1e-6)
        assert torch.equal(FlipInferer(SimpleInferer(), spatial_axes=())(x, net), net(x))


def test_average_of_mirrored_passes_by_hand():
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 2, 3, padding=1)  # not symmetric: flips change its output
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        by_hand = (net(x) + net(x.flip(2)).flip(2) + net(x.flip(4)).flip(4) + net(x.flip(2, 4)).flip(2, 4)) / 4
        out = FlipInferer(SlidingWindowInferer((8, 8, 8)), spatial_axes=(0, 2))(x, net)
        assert torch.allclose(out, by_hand, atol=1e-5)
        assert not torch.allclose(out, net(x), atol=1e-3)
        soft = FlipInferer(SimpleInferer(), spatial_axes=(1,), activation=partial(torch.softmax, dim=1))(x, net)
        expected = (torch.softmax(net(x), 1) + torch.softmax(net(x.flip(3)), 1).flip(3)) / 2
        assert torch.allclose(soft, expected, atol=1e-6)


def test_bad_axes_and_list_outputs_are_refused():
    with pytest.raises(ValueError, match="count from 0"):
        FlipInferer(SimpleInferer(), spatial_axes=(-1,))
    with pytest.raises(ValueError, match="must be below 2"):
        FlipInferer(SimpleInferer(), spatial_axes=(2,))(torch.zeros(1, 1, 4, 4), torch.nn.Identity())
    with pytest.raises(ValueError, match="returned several"):
        FlipInferer(SimpleInferer(), spatial_axes=(0,))(torch.zeros(1, 1, 4, 4), lambda t: [t, t])
