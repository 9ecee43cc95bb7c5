"""The folded layout: each op equals its 3D module on the unfolded view."""

import pytest
import torch
from monai.networks.blocks.dynunet_block import get_conv_layer
from torch import nn

from monai_ext.networks.blocks import SliceShift, folded
from monai_ext.networks.blocks.folded import (
    add_projection,
    conv_folded,
    conv_transpose_folded,
    foldable_conv,
    foldable_norm,
    instance_norm_folded,
    one_channel_projection,
    release_buffer,
    take_buffer,
    to_folded,
    unfold,
    unfold_contiguous,
)

TOL = {"atol": 1e-5, "rtol": 1e-5}


def _channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last)


def test_fold_puts_each_slice_in_the_batch_channels_last():
    x = torch.randn(2, 3, 4, 5, 6)  # (N, C, A, B, S)
    folded = to_folded(x)
    assert folded.shape == (12, 3, 4, 5) and _channels_last(folded)
    torch.testing.assert_close(folded[1 * 6 + 4], x[1, :, :, :, 4], atol=0, rtol=0)  # sample 1, slice 4
    assert torch.equal(unfold(folded, 2), x)
    assert to_folded(unfold(folded, 2)).data_ptr() == folded.data_ptr()  # back and forth without a copy
    assert _channels_last(to_folded(x[:1]))  # also where a reshape alone would give another layout


@pytest.mark.parametrize("kernel, stride", [((3, 3, 1), (1, 1, 1)), ((3, 3, 1), (2, 2, 2)), ((1, 1, 1), (2, 1, 1))])
def test_conv_equals_conv3d(kernel, stride):
    conv = get_conv_layer(3, 4, 6, kernel, stride, conv_only=True, bias=True)
    assert foldable_conv(conv)
    x = torch.randn(2, 4, 8, 12, 6)
    layer = conv.conv
    out = conv_folded(to_folded(x), 2, layer.weight, layer.bias, layer.stride, layer.padding)
    torch.testing.assert_close(unfold(out, 2), conv(x), **TOL)


@pytest.mark.parametrize("up", [(2, 2, 2), (2, 2, 1), (1, 2, 3)])
def test_transposed_conv_equals_conv_transpose3d(up):
    conv = get_conv_layer(3, 6, 4, up, up, conv_only=True, is_transposed=True, bias=True)
    assert foldable_conv(conv, transposed=True)
    x = torch.randn(2, 6, 4, 6, 3)
    layer = conv.conv
    out = conv_transpose_folded(
        to_folded(x), 2, layer.weight, layer.bias, layer.stride, layer.padding, layer.output_padding
    )
    assert _channels_last(out)
    torch.testing.assert_close(unfold(out, 2), conv(x), **TOL)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("inplace", [True, False])
@pytest.mark.parametrize("size", [(6, 7, 8), (5, 7, 9), (8, 8, 4)])  # the affine views 16, 1 and 64 voxels as a row
def test_instance_norm_is_over_the_whole_volume(affine, inplace, size):
    norm = nn.InstanceNorm3d(5, affine=affine)
    if affine:
        nn.init.normal_(norm.weight)
        nn.init.normal_(norm.bias)
    x = torch.randn(2, 5, *size) * 3 + torch.arange(5.0).view(1, 5, 1, 1, 1)  # a mean per channel
    expected = norm(x)
    with torch.set_grad_enabled(not inplace):  # in place only where autograd does not need the input
        out = instance_norm_folded(to_folded(x), 2, norm.weight, norm.bias, norm.eps, inplace)
    assert _channels_last(out)
    torch.testing.assert_close(unfold(out, 2), expected, **TOL)


@pytest.mark.parametrize("affine", [True, False])
def test_instance_norm_gradients_equal_those_of_instance_norm_3d(affine, threads):
    # the hand-written backward against autograd through InstanceNorm3d, in float64, with an in-place activation
    # after the norm (as in SSH-UNet's blocks) and an upstream gradient that is not channels-last
    torch.manual_seed(0)
    x = (torch.randn(2, 5, 6, 7, 8, dtype=torch.float64) * 3 + torch.arange(5.0).view(1, 5, 1, 1, 1)).requires_grad_()
    weight = torch.randn(5, dtype=torch.float64, requires_grad=True) if affine else None
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True) if affine else None
    upstream = torch.randn(2, 5, 6, 7, 8, dtype=torch.float64)
    expected = nn.functional.instance_norm(x, weight=weight, bias=bias)
    params = [x] + ([weight, bias] if affine else [])
    want = torch.autograd.grad((nn.functional.leaky_relu(expected, 0.01) * upstream).sum(), params)
    out = instance_norm_folded(to_folded(x), 2, weight, bias, 1e-5)
    assert _channels_last(out) and out._base is None  # not a view: an in-place activation may follow
    got = torch.autograd.grad((unfold(nn.functional.leaky_relu_(out, 0.01), 2) * upstream).sum(), params)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-10)
    start = to_folded(x.detach()).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: instance_norm_folded(t, 2, weight, bias, 1e-5), start)


def test_instance_norm_keeps_fp32_accuracy_on_a_large_volume():
    # one-pass variance (PyTorch's channels-last batch norm) loses ~1e-4 here; two passes stay at round-off
    x = torch.randn(1, 4, 64, 64, 64) * 3 + 2
    expected = nn.functional.instance_norm(x.double())
    out = unfold(instance_norm_folded(to_folded(x), 1, None, None, 1e-5), 1)
    assert (out.double() - expected).abs().max() < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mean", [2.0, 100.0])
def test_statistics_are_float32_accurate_for_every_dtype(dtype, mean, threads):
    # bf16 takes one pass about the mean of a bf16 sum (within 2^-9 of the mean): exact in float32 even far from zero
    torch.manual_seed(0)
    rows = (torch.randn(2, 70000, 8) * (torch.rand(1, 1, 8) + 0.5) * 3 + mean).to(dtype)  # bf16: c from every 4th row
    got_mean, got_var = folded._moments(rows)
    exact = rows.double()
    sd = exact.std(1, correction=0, keepdim=True)
    assert got_mean.dtype == got_var.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert ((got_mean.double() - exact.mean(1, keepdim=True)).abs() / sd).max() < 1e-5
    assert ((got_var.double() / sd.square() - 1).abs()).max() < 1e-5


@pytest.mark.parametrize("rows", [70000, 70001])  # 70001 = 7 * 10001: one part for 2 or 3 threads
def test_blocks_cover_each_row_once_in_one_part_per_thread(rows, threads):
    x = torch.randn(2, rows, 8)
    parted = folded._parted(x)
    parts = 1 if rows == 70001 else {1: 1, 2: 2, 3: 2}[threads]  # the largest divisor up to the threads
    assert parted.shape == (2, parts, rows // parts, 8) and parted.data_ptr() == x.data_ptr()  # a view
    blocks = folded._blocks(parted)
    assert len(blocks) > 1 and all(block.shape[:2] == (2, parts) and block.shape[3] == 8 for block in blocks)
    torch.testing.assert_close(torch.cat(blocks, dim=2).reshape(2, rows, 8), x, atol=0, rtol=0)


def test_what_cannot_be_folded():
    assert not foldable_conv(get_conv_layer(3, 4, 4, (3, 3, 3), 1, conv_only=True))  # spans several slices
    with_dropout = get_conv_layer(3, 4, 4, (3, 3, 1), 1, dropout=0.1, act=None, norm=None, conv_only=False)
    assert not foldable_conv(with_dropout)  # as UnetResBlock builds its convs with dropout
    assert not foldable_conv(get_conv_layer(3, 4, 4, (3, 3, 1), 1, conv_only=True), transposed=True)
    assert not foldable_conv(get_conv_layer(3, 4, 4, (2, 2, 2), (2, 2, 1), conv_only=True, is_transposed=True), True)
    assert foldable_norm(nn.InstanceNorm3d(4)) and not foldable_norm(nn.InstanceNorm3d(4, track_running_stats=True))
    assert not foldable_norm(nn.BatchNorm3d(4))


def test_instance_norm_of_a_bf16_input_takes_its_statistics_in_float32():
    # under autocast the convolutions hand over bf16 maps; a norm computed in bf16 would be off by ~1e-2
    torch.manual_seed(0)
    x = (torch.randn(1, 4, 32, 32, 32) * 3 + 2).bfloat16()
    expected = nn.functional.instance_norm(x.double())
    out = unfold(instance_norm_folded(to_folded(x), 1, None, None, 1e-5), 1)
    assert out.dtype == torch.float32
    assert (out.double() - expected).abs().max() < 1e-5
    # in place (inference), the statistics are still float32 and the output stays bf16 (as the next convolution
    # takes it): off by the rounding of the output and of the scale and shift to bf16 alone
    weight, bias = torch.rand(4) + 0.5, torch.randn(4)
    expected = nn.functional.instance_norm(x.double(), weight=weight.double(), bias=bias.double())
    folded_x = to_folded(x)
    with torch.no_grad():
        out = instance_norm_folded(folded_x, 1, weight, bias, 1e-5, inplace=True)
    assert out.dtype == torch.bfloat16 and out.data_ptr() == folded_x.data_ptr()
    error = (unfold(out, 1).double() - expected).abs()
    # measured: 0.022 and 0.0019; with the statistics taken in bf16, 0.035 and 0.0039
    assert error.max() < 3e-2 and error.mean() < 2.5e-3


# --- inference in slice chunks, into pooled buffers ---


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of a few slices and a pool for every buffer, so that small tests take the paths of large volumes."""
    monkeypatch.setattr(folded, "CHUNK_BYTES", 1000)
    monkeypatch.setattr(folded, "POOL_MIN_BYTES", 1)


def test_a_released_buffer_is_handed_out_again(small_chunks):
    pool: list[torch.Tensor] = []
    a = take_buffer(pool, [6, 4, 3, 5], torch.zeros(1))
    assert a.shape == (6, 4, 3, 5) and _channels_last(a)
    release_buffer(pool, a)
    b = take_buffer(pool, [10, 4, 3, 3], torch.zeros(1))  # the same number of elements, another shape
    assert b.data_ptr() == a.data_ptr() and _channels_last(b) and pool == []
    assert take_buffer(pool, [6, 4, 3, 5], torch.zeros(1, dtype=torch.float64)).dtype == torch.float64
    release_buffer(pool, b[:, :2])  # not contiguous: left to the allocator
    release_buffer(None, b)
    assert pool == []
    small, large = take_buffer(pool, [2, 4, 3, 5], b), take_buffer(pool, [8, 4, 3, 5], b)
    release_buffer(pool, large)
    release_buffer(pool, small)
    take_buffer(pool, [7, 4, 3, 5], b)  # no buffer of that size: the smaller ones go, the larger one stays
    assert len(pool) == 1 and pool[0].data_ptr() == large.data_ptr()


@pytest.mark.parametrize(
    "kernel, stride", [((3, 3, 1), (1, 1, 1)), ((3, 3, 1), (2, 2, 1)), ((3, 3, 1), (2, 2, 2)), ((1, 1, 1), (1, 1, 1))]
)
def test_chunked_conv_into_a_buffer_or_in_place(kernel, stride, small_chunks):
    conv = get_conv_layer(3, 4, 4, kernel, stride, conv_only=True, bias=True)
    layer = conv.conv
    x = torch.randn(2, 4, 8, 12, 6)
    expected = conv(x)
    pool: list[torch.Tensor] = []
    with torch.no_grad():
        out = conv_folded(to_folded(x), 2, layer.weight, layer.bias, layer.stride, layer.padding, pool)
        torch.testing.assert_close(unfold(out, 2), expected, **TOL)
        work = to_folded(x.clone())
        over = conv_folded(work, 2, layer.weight, layer.bias, layer.stride, layer.padding, pool, True)
        torch.testing.assert_close(unfold(over, 2), expected, **TOL)
        assert (over.data_ptr() == work.data_ptr()) == (stride == (1, 1, 1))  # in place where the shapes agree
        narrowing = get_conv_layer(3, 8, 4, kernel, stride, conv_only=True, bias=True).conv
        x2 = torch.randn(2, 8, 8, 12, 6)
        wide = to_folded(x2.clone())  # the output over the first channels of its own input
        if stride == (1, 1, 1):
            conv_folded(wide, 2, narrowing.weight, narrowing.bias, stride, narrowing.padding, out=wide[:, :4])
            torch.testing.assert_close(unfold(wide[:, :4], 2), narrowing(x2), **TOL)
        with pytest.raises(ValueError, match="out has shape"):
            conv_folded(wide, 2, narrowing.weight, narrowing.bias, stride, narrowing.padding, out=wide[:, :3])


def test_chunked_conv_under_autocast_gives_the_autocast_dtype(small_chunks):
    # a float32 buffer would hold the bf16 convolutions' maps, and every map after it would stay float32
    layer = get_conv_layer(3, 4, 4, (3, 3, 1), 1, conv_only=True, bias=True).conv
    x = torch.randn(2, 4, 8, 12, 6)
    pool: list[torch.Tensor] = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = layer(x)
        out = conv_folded(to_folded(x), 2, layer.weight, layer.bias, layer.stride, layer.padding, pool)
        work = to_folded(x.clone())
        over = conv_folded(work, 2, layer.weight, layer.bias, layer.stride, layer.padding, pool, True)
    assert out.dtype == over.dtype == torch.bfloat16 and _channels_last(out)
    assert over.data_ptr() != work.data_ptr()  # a float32 input is not overwritten by a bf16 output
    torch.testing.assert_close(unfold(out, 2), expected, atol=0, rtol=0)
    torch.testing.assert_close(unfold(over, 2), expected, atol=0, rtol=0)


def test_chunked_convs_of_a_bf16_map_under_autocast(small_chunks):
    # the float32 weights are cast once for all chunks (and made channels-last), not by autocast for every chunk
    layer = get_conv_layer(3, 4, 4, (3, 3, 1), 1, conv_only=True, bias=True).conv
    up = get_conv_layer(3, 4, 3, (2, 2, 2), (2, 2, 2), conv_only=True, is_transposed=True, bias=True).conv
    x = torch.randn(2, 4, 8, 12, 6).bfloat16()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected, expected_up = layer(x), up(x)
        out = conv_folded(to_folded(x), 2, layer.weight, layer.bias, layer.stride, layer.padding, [])
        out_up = to_folded(torch.empty(2, 3, 16, 24, 12, dtype=torch.bfloat16))
        conv_transpose_folded(to_folded(x), 2, up.weight, up.bias, up.stride, up.padding, up.output_padding, out_up)
    assert out.dtype == torch.bfloat16 and layer.weight.dtype == up.weight.dtype == torch.float32
    torch.testing.assert_close(unfold(out, 2), expected, atol=0, rtol=0)
    torch.testing.assert_close(unfold(out_up, 2), expected_up, atol=0, rtol=0)
    with torch.no_grad(), pytest.raises(RuntimeError):  # without autocast, mixed dtypes stay an error
        conv_folded(to_folded(x), 2, layer.weight, layer.bias, layer.stride, layer.padding, [])


@pytest.mark.parametrize("chunk_bytes", [100, 1000, 10**6])  # 1 slice, a few slices, a whole sample per chunk
@pytest.mark.parametrize("stride", [(1, 1, 1), (2, 2, 2)])
@pytest.mark.parametrize("shift", [SliceShift(), SliceShift.tsm(), SliceShift(directions=(1, 1))], ids=repr)
def test_chunked_conv_writes_its_output_shifted(shift, stride, chunk_bytes, small_chunks, monkeypatch):
    monkeypatch.setattr(folded, "CHUNK_BYTES", chunk_bytes)
    layer = get_conv_layer(3, 8, 8, (3, 3, 1), stride, conv_only=True, bias=True).conv
    x = torch.randn(2, 8, 6, 5, 8)
    expected = shift(layer(x))
    groups = shift.groups(8)
    with torch.no_grad():
        out = conv_folded(to_folded(x), 2, layer.weight, layer.bias, stride, layer.padding, [], shift=groups)
        torch.testing.assert_close(unfold(out, 2), expected, **TOL)
        if stride == (1, 1, 1):  # over its own input: each chunk reads its slices before a neighbour's are written
            work = to_folded(x.clone())
            conv_folded(work, 2, layer.weight, layer.bias, stride, layer.padding, [], True, shift=groups)
            torch.testing.assert_close(unfold(work, 2), expected, **TOL)


def test_chunked_transposed_conv_into_the_first_channels_of_a_buffer(small_chunks):
    conv = get_conv_layer(3, 6, 4, (2, 2, 2), (2, 2, 2), conv_only=True, is_transposed=True, bias=True)
    layer = conv.conv
    x = torch.randn(2, 6, 4, 6, 3)
    both = to_folded(torch.zeros(2, 7, 8, 12, 6))
    with torch.no_grad():
        out = conv_transpose_folded(
            to_folded(x), 2, layer.weight, layer.bias, layer.stride, layer.padding, layer.output_padding, both[:, :4]
        )
        torch.testing.assert_close(unfold(both[:, :4], 2), conv(x), **TOL)
    assert out.data_ptr() == both.data_ptr() and torch.equal(both[:, 4:], torch.zeros_like(both[:, 4:]))


def test_instance_norm_in_place_on_the_first_channels_of_a_buffer():
    x = torch.randn(2, 8, 5, 6, 7)
    both = to_folded(x.clone())
    norm = nn.InstanceNorm3d(3, affine=True)
    with torch.no_grad():
        nn.init.normal_(norm.weight)
        out = instance_norm_folded(both[:, :3], 2, norm.weight, norm.bias, norm.eps, inplace=True)
        torch.testing.assert_close(unfold(both[:, :3], 2), norm(x[:, :3]), **TOL)
    assert out.data_ptr() == both.data_ptr()
    torch.testing.assert_close(unfold(both[:, 3:], 2), x[:, 3:], atol=0, rtol=0)


@pytest.mark.parametrize("norm", ["affine", "plain"])
def test_a_projection_of_one_channel_is_an_affine_map_per_channel(norm):
    conv = nn.Conv3d(1, 6, 1)
    nn.init.normal_(conv.weight)
    conv.weight.data[2] = 0.0  # a channel the convolution zeroes: its norm is the bias alone
    instance = nn.InstanceNorm3d(6, affine=norm == "affine")
    if norm == "affine":
        nn.init.normal_(instance.weight)
        nn.init.normal_(instance.bias)
    x = torch.randn(2, 1, 6, 7, 5, dtype=torch.float64) * 4 + 30  # far from zero: no cancellation allowed
    conv, instance = conv.double(), instance.double()
    residual = instance(conv(x))
    base = torch.randn(2, 6, 6, 7, 5, dtype=torch.float64)
    out = to_folded(base.clone())
    with torch.no_grad():
        scale, shift = one_channel_projection(
            to_folded(x), 2, conv.weight, instance.weight, instance.bias, instance.eps
        )
        assert scale.shape == shift.shape == (2, 1, 6)
        got = add_projection(out, to_folded(x), 2, scale, shift)
    assert got.data_ptr() == out.data_ptr() and _channels_last(got)
    torch.testing.assert_close(unfold(got, 2), base + residual)
    with torch.no_grad():  # without the shift: the same up to a constant per sample and channel
        bare = unfold(add_projection(to_folded(base.clone()), to_folded(x), 2, scale, None), 2)
    torch.testing.assert_close(
        bare - bare.mean((2, 3, 4), keepdim=True), (base + residual) - (base + residual).mean((2, 3, 4), keepdim=True)
    )


@pytest.mark.parametrize("size", [(96, 96, 7), (5, 6, 3), (40, 30, 200)])  # blocks of 8, of every slice, of 1 slice
def test_unfold_contiguous_copies_in_blocks_of_slices(size):
    folded_x = to_folded(torch.randn(2, 14, *size))
    out = unfold_contiguous(folded_x, 2)
    assert out.is_contiguous() and out.data_ptr() != folded_x.data_ptr()
    assert torch.equal(out, unfold(folded_x, 2))
    traced = torch.jit.trace(lambda t: unfold_contiguous(t, 2), folded_x)  # one recorded copy of its input
    assert torch.equal(traced(folded_x * 2), unfold(folded_x, 2) * 2)


def test_a_projection_into_a_bf16_map_stays_bf16_and_rounds_once():
    x = torch.randn(1, 1, 8, 8, 6) * 3 + 5
    conv, norm = nn.Conv3d(1, 4, 1), nn.InstanceNorm3d(4, affine=True)
    out = to_folded(torch.randn(1, 4, 8, 8, 6)).to(torch.bfloat16)
    with torch.no_grad():
        scale, _ = one_channel_projection(to_folded(x), 1, conv.weight, norm.weight, norm.bias, norm.eps)
        expected = unfold(out, 1).float() + x * scale.view(1, 4, 1, 1, 1)  # in float32
        got = add_projection(out, to_folded(x), 1, scale, None)
    assert got.dtype == torch.bfloat16 and got.data_ptr() == out.data_ptr()
    torch.testing.assert_close(unfold(got, 1).float(), expected, atol=0.02, rtol=0.02)  # bf16: 8 bits of mantissa
