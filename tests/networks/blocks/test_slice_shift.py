import pytest
import torch

from monai_ext.networks.blocks import SliceShift, folded, shift_along, slice_shift
from monai_ext.networks.blocks.folded import to_folded, unfold
from monai_ext.networks.blocks.slice_shift import slice_shift_folded


def test_matches_sshunet_release(golden):
    g = golden("ssh_unet_slice_shift")
    assert g["dim"] == 2 and g["channels_fraction"] == 0.25
    # the release shifts along tensor dim 2 of (B, C, S, H, W): spatial axis 0; with the slices moved last, axis 2
    torch.testing.assert_close(SliceShift(spatial_dim=0)(g["x"]), g["y"], atol=0, rtol=0)
    y = SliceShift()(g["x"].movedim(2, -1)).movedim(-1, 2)
    torch.testing.assert_close(y, g["y"], atol=0, rtol=0)


def test_matches_tsm_release(golden):
    g = golden("tsm_shift")
    x, t = g["x"], g["n_segment"]
    nt, c, h, w = x.shape
    # TSM folds time into the batch: (N*T, C, H, W) -> (N, C, H, W, T) with T as the slice axis, last
    video = x.view(nt // t, t, c, h, w).permute(0, 2, 3, 4, 1)
    y = SliceShift.tsm()(video).permute(0, 4, 1, 2, 3).reshape(nt, c, h, w)
    torch.testing.assert_close(y, g["y"], atol=0, rtol=0)


def test_semantics_on_a_ramp():
    s = torch.arange(5.0).view(1, 1, 1, 1, 5).expand(1, 8, 2, 2, 5)  # slice index on the last axis
    y = SliceShift(fold_div=4)(s)
    assert torch.equal(y[0, 0, 0, 0], torch.tensor([0.0, 0, 1, 2, 3]))  # first fold: out[s] = x[s-1]
    assert torch.equal(y[0, 7, 0, 0], torch.tensor([1.0, 2, 3, 4, 0]))  # last fold: out[s] = x[s+1]
    assert torch.equal(y[:, 2:6], s[:, 2:6])


@pytest.mark.parametrize("spatial_dim", [0, 1, 2])
def test_any_slice_axis_and_no_in_place(spatial_dim):
    x = torch.randn(2, 8, 4, 5, 6)
    before = x.clone()
    y = SliceShift(spatial_dim=spatial_dim)(x)
    assert y.shape == x.shape
    assert torch.equal(x, before)
    assert torch.equal(y[:, :2], shift_along(x[:, :2], spatial_dim, 1))
    assert torch.equal(y[:, -2:], shift_along(x[:, -2:], spatial_dim, -1))
    torch.testing.assert_close(y, slice_shift(x, spatial_dim), atol=0, rtol=0)


def test_shift_along_counts_spatial_axes():
    x = torch.arange(4.0).view(1, 1, 1, 4)  # (B, C, H, W): W is spatial axis 1
    assert torch.equal(shift_along(x, 1, 1).flatten(), torch.tensor([0.0, 0, 1, 2]))
    assert torch.equal(shift_along(x, 1, -1).flatten(), torch.tensor([1.0, 2, 3, 0]))
    assert shift_along(x, 1, 0) is x


def test_2d_input_along_its_second_spatial_axis():
    x = torch.randn(1, 8, 5, 6)
    y = SliceShift(spatial_dim=1)(x)
    assert torch.equal(y[:, :2, :, 1:], x[:, :2, :, :-1]) and torch.count_nonzero(y[:, :2, :, 0]) == 0


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_small_channel_counts_pass_through(channels):
    # fold = C // 4 = 0: nothing moves (the release would shift every channel backwards here)
    x = torch.randn(1, channels, 3, 3, 4)
    assert torch.equal(SliceShift()(x), x)


def test_single_slice_gives_zeros_in_moving_channels():
    x = torch.randn(1, 8, 3, 3, 1)
    y = SliceShift()(x)
    assert torch.count_nonzero(y[:, :2]) == 0 and torch.equal(y[:, 2:6], x[:, 2:6])


def test_gradient_flows():
    x = torch.randn(1, 8, 3, 3, 4, requires_grad=True)
    SliceShift()(x).sum().backward()
    # the moved slices lose their last (or first) slice: those inputs get no gradient
    assert x.grad[0, 0, ..., -1].abs().sum() == 0 and x.grad[0, 0, ..., 0].abs().sum() > 0


def test_script_and_trace():
    x = torch.randn(1, 8, 3, 3, 4)
    ref = SliceShift()(x)
    torch.testing.assert_close(torch.jit.script(SliceShift())(x), ref)
    torch.testing.assert_close(torch.jit.trace(SliceShift(), x)(x), ref)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"spatial_dim": 3}, "spatial_dim counts spatial axes"),
        ({"spatial_dim": -1}, "spatial_dim counts spatial axes"),
        ({"fold_div": 1}, "fold_div must be an integer >= 2"),
        ({"placement": "middle"}, "placement must be one of"),
        ({"directions": (1, 2)}, "each \\+1 or -1"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SliceShift(**kwargs)


def test_input_without_the_slice_axis():
    with pytest.raises(ValueError, match="needs an input"):
        SliceShift(spatial_dim=2)(torch.randn(1, 8, 4, 4))


@pytest.mark.parametrize(
    "shift", [SliceShift(), SliceShift(fold_div=3), SliceShift.tsm(), SliceShift(placement="leading")], ids=repr
)
def test_folded_shift_equals_the_shift_along_the_last_axis(shift):
    x = torch.randn(2, 9, 4, 5, 6)  # (N, C, A, B, S), slices last
    folded = to_folded(x)
    before = folded.clone()
    out = shift.forward_folded(folded, 2)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(unfold(out, 2), shift(x), atol=0, rtol=0)
    assert torch.equal(folded, before)  # not in place
    functional = slice_shift_folded(folded, 2, shift.fold_div, shift.placement, shift.directions)
    torch.testing.assert_close(functional, out, atol=0, rtol=0)


@pytest.mark.parametrize("slices", [1, 2, 7])
@pytest.mark.parametrize("shift", [SliceShift(), SliceShift.tsm(), SliceShift(placement="leading")], ids=repr)
def test_folded_shift_gradient_is_that_of_the_shift(shift, slices):
    # the hand-written backward (the opposite shift) against autograd through the 3D shift
    x = torch.randn(2, 9, 4, 5, slices, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 9, 4, 5, slices, dtype=torch.float64)
    (want,) = torch.autograd.grad((shift(x) * upstream).sum(), x)
    (got,) = torch.autograd.grad((unfold(shift.forward_folded(to_folded(x), 2), 2) * upstream).sum(), x)
    torch.testing.assert_close(got, want, atol=0, rtol=0)


@pytest.mark.parametrize("slices", [1, 2, 7])
@pytest.mark.parametrize(
    "shift", [SliceShift(), SliceShift.tsm(), SliceShift(placement="leading", directions=(-1, 1))], ids=repr
)
def test_in_place_folded_shift_equals_the_copying_one(shift, slices, monkeypatch):
    monkeypatch.setattr(folded, "CHUNK_BYTES", 200)  # chunks of a few slices: the chunk order is exercised
    x = torch.randn(2, 9, 4, 5, slices)
    expected = shift.forward_folded(to_folded(x), 2)
    work = to_folded(x.clone())
    out = shift.forward_folded(work, 2, inplace=True)
    assert out.data_ptr() == work.data_ptr()
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
