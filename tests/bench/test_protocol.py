import pytest
import torch

from monai_ext.bench.protocol import forward, infer_volume, main_output, slices_of, stack_slices, training_loss
from monai_ext.bench.registry import BenchNetwork


def _row(kind, net=None):
    if kind == "custom":
        return BenchNetwork("c", lambda i, o, r: net, kind, infer=lambda n, v, roi: n(v) * 2, train_loss=lambda *a: 7)
    return BenchNetwork(kind, lambda i, o, r: net, kind)


def test_slices_round_trip_and_order():
    x = torch.arange(2 * 1 * 2 * 2 * 3, dtype=torch.float).reshape(2, 1, 2, 2, 3)
    s = slices_of(x)
    assert s.shape == (6, 1, 2, 2)
    assert torch.equal(s[4], x[1, :, :, :, 1])  # case 1, slice 1
    assert torch.equal(stack_slices(s, 2), x)


def test_neighbour_channels_repeat_the_end_slices():
    x = torch.arange(4, dtype=torch.float).reshape(1, 1, 1, 1, 4)  # slice values 0 1 2 3
    s = slices_of(x, neighbours=True)
    assert s.shape == (4, 3, 1, 1)
    assert s.flatten(1).tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]]


def test_main_output_takes_the_full_resolution_head():
    t = torch.ones(1)
    assert main_output(t) is t and main_output([t, torch.zeros(2)]) is t and main_output((t,)) is t


def test_2d_rows_see_every_slice_and_chunks_do_not_change_the_result():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 3, 3, padding=1)
    row = _row("2d", net)
    x = torch.randn(1, 1, 8, 8, 5)
    by_hand = torch.stack([net(x[..., d]) for d in range(5)], dim=-1)
    with torch.no_grad():
        assert torch.allclose(forward(row, net, x), by_hand, atol=1e-6)
        assert torch.allclose(infer_volume(row, net, x, (8, 8, 5), slice_batch=2), by_hand, atol=1e-6)


def test_3d_rows_slide_windows_over_the_volume():
    net = torch.nn.Conv3d(1, 2, 1)
    row = _row("3d", net)
    x = torch.randn(1, 1, 12, 10, 8)
    with torch.no_grad():
        assert torch.allclose(infer_volume(row, net, x, (8, 8, 8)), net(x), atol=1e-5)


def test_training_loss_for_2d_rows_uses_the_patch_slices_and_custom_rows_their_own():
    net = torch.nn.Conv2d(3, 2, 1)
    seen = []
    loss = training_loss(
        _row("2.5d", net),
        net,
        torch.randn(1, 1, 4, 4, 6),
        torch.zeros(1, 1, 4, 4, 6),
        lambda y, t: seen.append((y.shape, t.shape)) or y.sum(),
    )
    assert seen == [((6, 2, 4, 4), (6, 1, 4, 4))] and loss.requires_grad
    custom = _row("custom", torch.nn.Identity())
    assert training_loss(custom, None, None, None, None) == 7
    assert torch.equal(infer_volume(custom, torch.nn.Identity(), torch.ones(1), (1,)), torch.full((1,), 2.0))


def test_custom_rows_need_both_callables_and_kinds_are_checked():
    with pytest.raises(ValueError, match="needs both infer and train_loss"):
        BenchNetwork("x", lambda i, o, r: None, "custom", infer=lambda *a: None)
    with pytest.raises(ValueError, match="kind must be one of"):
        BenchNetwork("x", lambda i, o, r: None, "4d")
