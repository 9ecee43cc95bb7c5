"""The slice-group inferer: group starts, stride-1 averaging, edges, axes, batching, equality with a hand loop."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor
from torch import nn

from monai_ext.inferers import SliceGroupInferer, slice_group_starts
from monai_ext.networks.nets import Thickened2DNet


class SlabNet(nn.Module):
    """A slab network whose output tells slices apart: channel 0 = input + the slice's position in its group,
    channel 1 = the input scaled; it records every slab it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x)
        position = torch.arange(x.shape[-1], dtype=x.dtype).expand_as(x)
        return torch.cat([x + position, 2 * x], dim=1)


@pytest.mark.parametrize(
    "depth, k, stride, starts",
    [
        (10, 4, 1, [0, 1, 2, 3, 4, 5, 6]),
        (10, 4, 3, [0, 3, 6]),
        (10, 4, 4, [0, 4, 6]),
        (4, 4, 2, [0]),
        (5, 1, 1, [0, 1, 2, 3, 4]),
    ],
)
def test_group_starts_cover_every_slice(depth, k, stride, starts):
    assert slice_group_starts(depth, k, stride) == starts
    covered = {s + i for s in starts for i in range(k)}
    assert covered == set(range(depth))


def test_group_starts_refuse_bad_sizes():
    with pytest.raises(ValueError, match="depth >= num_slices"):
        slice_group_starts(3, 4)
    with pytest.raises(ValueError, match="stride >= 1"):
        slice_group_starts(8, 4, 0)
    with pytest.raises(ValueError, match="must be at most num_slices"):
        slice_group_starts(8, 2, 3)


def test_stride_one_averages_each_slice_over_its_groups():
    """Slice z lies in groups starting at max(0, z-k+1) .. min(z, D-k), at position z - start in each: the
    average of the positions is known in closed form."""
    d, k = 9, 4
    x = torch.randn(1, 1, 3, 5, d)
    out = SliceGroupInferer(k, stride=1)(x, SlabNet())
    assert out.shape == (1, 2, 3, 5, d)
    for z in range(d):
        starts = range(max(0, z - k + 1), min(z, d - k) + 1)
        mean_position = sum(z - s for s in starts) / len(starts)
        torch.testing.assert_close(out[0, 0, :, :, z], x[0, 0, :, :, z] + mean_position)
    torch.testing.assert_close(out[:, 1:], 2 * x)  # a slice's own prediction, averaged, is unchanged


def test_equals_a_hand_loop_with_a_real_network_along_each_axis():
    torch.set_num_threads(1)
    net = Thickened2DNet(num_slices=3, config="esm_ssa", layers=(1, 1, 1, 1), block_inplanes=(8, 16, 32, 64),
                         decoder_channels=16, low_level_channels=8).eval()  # fmt: skip
    x = torch.randn(2, 1, 32, 34, 36)
    with torch.no_grad():
        for axis in (0, 1, 2):
            inferer = SliceGroupInferer(3, spatial_axis=axis, stride=2, sw_batch_size=3)
            out = inferer(x, net)
            moved = x.movedim(axis + 2, -1)
            d = moved.shape[-1]
            total, count = torch.zeros(2, 2, *moved.shape[2:]), torch.zeros(d)
            for s in [*range(0, d - 3 + 1, 2)] + ([d - 3] if (d - 3) % 2 else []):
                total[..., s : s + 3] += net(moved[..., s : s + 3])
                count[s : s + 3] += 1
            assert out.shape == (2, 2, 32, 34, 36)
            torch.testing.assert_close(out, (total / count).movedim(-1, axis + 2), rtol=1e-4, atol=1e-5)


def test_batches_groups_and_moves_the_slice_axis_last():
    net = SlabNet()
    x = torch.randn(2, 1, 7, 3, 5)  # slide along X (spatial axis 0)
    out = SliceGroupInferer(3, spatial_axis=0, sw_batch_size=2)(x, net)
    assert [tuple(s.shape) for s in net.seen] == [(4, 1, 3, 5, 3), (4, 1, 3, 5, 3), (2, 1, 3, 5, 3)]  # 5 groups x B=2
    torch.testing.assert_close(net.seen[0][2:], x[:, :, 1:4].movedim(2, -1))  # second group of the first batch
    torch.testing.assert_close(out[:, 1:], 2 * x)


@pytest.mark.parametrize("mode, fill", [("replicate", "last"), ("constant", 0.0)])
def test_a_volume_shorter_than_a_group_is_padded_and_cropped(mode, fill):
    net = SlabNet()
    x = torch.randn(1, 1, 3, 4, 2)
    out = SliceGroupInferer(5, padding_mode=mode)(x, net)
    assert out.shape == (1, 2, 3, 4, 2)
    slab = net.seen[0]
    assert slab.shape[-1] == 5
    pad = slab[..., 2:]
    torch.testing.assert_close(pad, x[..., -1:].expand_as(pad) if fill == "last" else torch.zeros_like(pad))
    torch.testing.assert_close(out[:, 0], x[:, 0] + torch.arange(2.0))


def test_keeps_meta_data():
    x = MetaTensor(torch.randn(1, 1, 3, 4, 6), meta={"filename_or_obj": "case.nii.gz"})
    out = SliceGroupInferer(3)(x, SlabNet())
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "case.nii.gz"


def test_bad_arguments_and_outputs():
    with pytest.raises(ValueError, match="must be positive"):
        SliceGroupInferer(0)
    with pytest.raises(ValueError, match="stride \\(4\\) must be at most num_slices \\(3\\)"):
        SliceGroupInferer(3, stride=4)
    with pytest.raises(ValueError, match="spatial_axis must be 0, 1 or 2"):
        SliceGroupInferer(3, spatial_axis=3)
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        SliceGroupInferer(3, padding_mode="reflect")
    with pytest.raises(ValueError, match=r"expects a \(B, C, X, Y, Z\) volume"):
        SliceGroupInferer(3)(torch.randn(1, 4, 4, 4), SlabNet())
    with pytest.raises(ValueError, match="the network must map slabs"):
        SliceGroupInferer(3)(torch.randn(1, 1, 4, 4, 6), lambda x: x[..., :2])
