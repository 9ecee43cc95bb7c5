"""The slice-group inferer: MONAI's sliding window equals an explicit group loop for any k, stride, size and axis;
stride-1 averaging, probability averaging by hand, thin volumes, batching, meta data, errors."""

from __future__ import annotations

import math

import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer
from torch import nn

from monai_ext.inferers import SliceGroupInferer
from monai_ext.networks.nets import Thickened2DNet


class SlabNet(nn.Module):
    """A slab network whose output tells slices and groups apart: channel 0 = input + the slice's position in its
    group + the group's mean (so a slice's value depends on the whole group), channel 1 = the input scaled; it
    records every slab it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x)
        position = torch.arange(x.shape[-1], dtype=x.dtype).expand_as(x)
        return torch.cat([x + position + x.mean(-1, keepdim=True), 2 * x], dim=1)


def _reference(x, net, k, stride, spatial_dim, padding_mode):
    """The definition, by hand: slices last, a thin volume padded at the far end, groups at 0, stride, ... plus one
    ending at the last slice, each slice's outputs averaged over its groups, cropped, the axis moved back."""
    v = x.movedim(2 + spatial_dim, -1)
    depth = v.shape[-1]
    if depth < k:
        tail = v[..., -1:].expand(*v.shape[:-1], k - depth)
        v = torch.cat([v, tail if padding_mode == "replicate" else torch.zeros_like(tail)], dim=-1)
    d = v.shape[-1]
    starts = list(range(0, d - k + 1, stride))
    if starts[-1] != d - k:
        starts.append(d - k)
    total, count = None, torch.zeros(d)
    for s in starts:
        out = net(v[..., s : s + k])
        total = torch.zeros(*out.shape[:-1], d) if total is None else total
        total[..., s : s + k] += out
        count[s : s + k] += 1
    return (total / count)[..., :depth].movedim(-1, 2 + spatial_dim)


@pytest.mark.parametrize("spatial_dim", [0, 1, 2])
@pytest.mark.parametrize(
    "k, stride, depth",
    [
        (3, 1, 10),
        (4, 1, 4),
        (5, 1, 23),
        (4, 3, 10),
        (4, 4, 10),
        (12, 2, 30),  # (k - stride) / k in floats would give MONAI a scan interval of 1
        (10, 2, 17),
        (12, 7, 20),
        (5, 2, 2),  # thinner than a group
        (6, 1, 1),
    ],
)
@pytest.mark.parametrize("padding_mode", ["replicate", "constant"])
def test_equals_an_explicit_group_loop(spatial_dim, k, stride, depth, padding_mode):
    shape = [2, 1, 5, 6, 7]
    shape[2 + spatial_dim] = depth
    x = torch.randn(*shape)
    inferer = SliceGroupInferer(k, spatial_dim=spatial_dim, stride=stride, padding_mode=padding_mode)
    out = inferer(x, SlabNet())
    assert out.shape == (2, 2, *shape[2:])
    assert torch.equal(out, _reference(x, SlabNet(), k, stride, spatial_dim, padding_mode))


def test_is_monai_sliding_window_on_the_slices_last_view():
    inferer = SliceGroupInferer(12, stride=2, sw_batch_size=3)
    assert isinstance(inferer.sliding, SlidingWindowInferer)
    assert inferer.sliding.roi_size == (-1, -1, 12) and inferer.sliding.sw_batch_size == 3
    assert inferer.sliding.mode == "constant" and inferer.sliding.overlap[:2] == (0.0, 0.0)
    assert inferer.sliding.overlap[2] == pytest.approx(10 / 12)


def test_share_early_stage_is_the_same_sliding_window_with_window_locations():
    """The shared path (tests/inferers/test_shared_early_stage.py) slides, blends and pads with the same settings."""
    inferer = SliceGroupInferer(12, stride=2, sw_batch_size=3, share_early_stage=True)
    assert not SliceGroupInferer(12).share_early_stage and inferer.share_early_stage
    shared, plain = inferer.shared_inferer, inferer.inferer
    assert (shared.min_size, shared.mode) == (plain.min_size, plain.mode)
    assert shared.inferer.with_coord and not plain.inferer.with_coord
    settings = ("roi_size", "sw_batch_size", "overlap", "mode", "padding_mode", "sw_device", "device")
    assert [getattr(shared.inferer, a) for a in settings] == [getattr(inferer.sliding, a) for a in settings]


def test_stride_one_averages_each_slice_over_its_groups():
    """Slice z lies in groups starting at max(0, z-k+1) .. min(z, D-k), at position z - start in each: the
    average of the positions is known in closed form."""
    d, k = 9, 4
    x = torch.randn(1, 1, 3, 5, d)
    out = SliceGroupInferer(k, stride=1)(x, lambda t: t + torch.arange(t.shape[-1], dtype=t.dtype))
    for z in range(d):
        starts = range(max(0, z - k + 1), min(z, d - k) + 1)
        mean_position = sum(z - s for s in starts) / len(starts)
        torch.testing.assert_close(out[0, 0, :, :, z], x[0, 0, :, :, z] + mean_position)


def test_equals_the_loop_with_a_real_network_along_each_axis():
    net = Thickened2DNet(num_slices=3, config="esm_ssa", layers=(1, 1, 1, 1), block_inplanes=(8, 16, 32, 64),
                         decoder_channels=16, low_level_channels=8).eval()  # fmt: skip
    x = torch.randn(2, 1, 32, 34, 36)
    with torch.no_grad():
        for spatial_dim in (0, 1, 2):
            out = SliceGroupInferer(3, spatial_dim=spatial_dim, stride=2, sw_batch_size=3)(x, net)
            assert out.shape == (2, 2, 32, 34, 36)
            expected = _reference(x, net, 3, 2, spatial_dim, "replicate")
            torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_batches_groups_with_the_slices_moved_last():
    net = SlabNet()
    x = torch.randn(2, 1, 7, 3, 5)  # slide along H (spatial_dim 0): 5 groups of 3 per batch item
    out = SliceGroupInferer(3, spatial_dim=0, sw_batch_size=4)(x, net)
    assert [tuple(s.shape) for s in net.seen] == [(4, 1, 3, 5, 3), (4, 1, 3, 5, 3), (2, 1, 3, 5, 3)]
    torch.testing.assert_close(net.seen[0][1], x[0, :, 1:4].movedim(1, -1))  # second group of the first item
    torch.testing.assert_close(out[:, 1:], 2 * x)  # a slice's own prediction, averaged, is unchanged


@pytest.mark.parametrize("mode", ["replicate", "constant"])
def test_a_volume_thinner_than_a_group_is_padded_at_the_far_end_and_cropped(mode):
    net = SlabNet()
    x = torch.randn(1, 1, 3, 4, 2)
    out = SliceGroupInferer(5, padding_mode=mode)(x, net)
    assert out.shape == (1, 2, 3, 4, 2)
    (slab,) = net.seen
    assert slab.shape[-1] == 5
    torch.testing.assert_close(slab[..., :2], x)  # the volume first, the padding after it
    pad = slab[..., 2:]
    torch.testing.assert_close(pad, x[..., -1:].expand_as(pad) if mode == "replicate" else torch.zeros_like(pad))


def test_probability_averaging_by_hand():
    """Groups of 2 over 3 slices: groups (0, 1) and (1, 2). The network gives class logits (v + s, -v - s) for input
    value v at position s in its group, so slice 1's two groups disagree; averaging their softmax differs from
    the softmax of their averaged logits."""

    def net(t: torch.Tensor) -> torch.Tensor:
        z = t + torch.arange(t.shape[-1], dtype=t.dtype)
        return torch.cat([z, -z], dim=1)

    x = torch.tensor([0.5, -1.0, 2.0]).reshape(1, 1, 1, 1, 3)
    v = x.flatten().tolist()

    def p(logit: float) -> float:  # softmax of (logit, -logit), class 0
        return math.exp(logit) / (math.exp(logit) + math.exp(-logit))

    # slice 0: group 0 position 0; slice 1: group 0 position 1 and group 1 position 0; slice 2: group 1 position 1
    class0 = [p(v[0]), (p(v[1] + 1) + p(v[1])) / 2, p(v[2] + 1)]
    out = SliceGroupInferer(2, activation="softmax")(x, net)
    torch.testing.assert_close(out[0, 0].flatten(), torch.tensor(class0))
    torch.testing.assert_close(out.sum(1), torch.ones(1, 1, 1, 3))  # probabilities
    logits = SliceGroupInferer(2)(x, net)  # the default averages logits: slice 1 gets (v + 1 + v) / 2
    assert logits[0, 0, 0, 0, 1].item() == pytest.approx(v[1] + 0.5)
    assert torch.softmax(logits, 1)[0, 0, 0, 0, 1].item() != pytest.approx(class0[1], abs=1e-4)
    sigmoid = SliceGroupInferer(2, activation="sigmoid")(x, net)
    s1 = (torch.sigmoid(torch.tensor(v[1] + 1)) + torch.sigmoid(torch.tensor(v[1]))) / 2
    assert sigmoid[0, 0, 0, 0, 1].item() == pytest.approx(s1.item())


def test_keeps_meta_data():
    x = MetaTensor(torch.randn(1, 1, 3, 4, 6), meta={"filename_or_obj": "case.nii.gz"})
    out = SliceGroupInferer(3, spatial_dim=1)(x, SlabNet())
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "case.nii.gz"
    assert out.shape == (1, 2, 3, 4, 6)


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="must be positive"):
        SliceGroupInferer(0)
    with pytest.raises(ValueError, match=r"stride \(4\) must be at most num_slices \(3\)"):
        SliceGroupInferer(3, stride=4)
    with pytest.raises(ValueError, match="spatial_dim counts spatial axes"):
        SliceGroupInferer(3, spatial_dim=4)
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        SliceGroupInferer(3, padding_mode="reflect")
    with pytest.raises(ValueError, match="activation must be one of"):
        SliceGroupInferer(3, activation="relu")
    with pytest.raises(ValueError, match=r"expects a \(B, C, H, W, D\) volume"):
        SliceGroupInferer(3)(torch.randn(1, 4, 4, 4), SlabNet())
