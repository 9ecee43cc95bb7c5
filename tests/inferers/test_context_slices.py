import pytest
import torch
from monai.inferers import SimpleInferer
from torch import nn
from torch.nn import functional as F

from monai_ext.inferers import ContextSliceInferer, PadInferer, SliceTrainingPadInferer, context_slices
from monai_ext.inferers.context_slices import context_slice_chunk
from monai_ext.networks.nets import SCAA

TINY = {"filters": (4, 8, 8, 16, 16), "context_channels": (4, 4, 8, 8), "global_channels": 4}


def _net(configuration="SCAA*", **kwargs):
    torch.manual_seed(0)
    return SCAA(1, 3, configuration=configuration, **{**TINY, **kwargs}).eval()


def _pad_far_end(x, sizes):
    """Zeros at the far end of each spatial axis of ``x`` up to ``sizes``."""
    padding = []
    for have, want in zip(reversed(x.shape[2:]), reversed(sizes)):
        padding += [0, want - have]
    return F.pad(x, padding)


@pytest.mark.parametrize("configuration", ["C-CA", "SCAA*"])
@pytest.mark.parametrize("spatial_dim", [0, 2])
def test_chunked_slices_equal_the_network_on_all_slices_at_once(configuration, spatial_dim):
    net = _net(configuration, spatial_dim=spatial_dim)
    sizes = [64, 64, 64]
    sizes[spatial_dim] = 32
    x = torch.rand(2, 1, *sizes)
    with torch.no_grad():
        whole = net(x)
        for chunk in (1, 5, 32, 100):
            torch.testing.assert_close(ContextSliceInferer(slice_chunk=chunk)(x, net), whole, atol=1e-5, rtol=1e-5)


def test_automatic_chunks_keep_the_widest_slice_map_within_the_cpu_budget(monkeypatch):
    scaa_star = SCAA(1, 14)  # the default network: 64 channels at full resolution
    assert scaa_star.slice_channels == 64
    volume = torch.empty(1, 1, 192, 192, 96)
    assert context_slice_chunk(scaa_star, volume, 2) == 2  # 64 x 192 x 192 float32 maps: 9.4 MB a slice
    assert context_slice_chunk(scaa_star, torch.empty(2, 1, 192, 192, 96), 2) == 1  # the batch counts
    assert context_slice_chunk(scaa_star, torch.empty(1, 1, 512, 512, 40), 2) == 1  # at least one
    assert context_slice_chunk(scaa_star, torch.empty(1, 1, 96, 32, 32), 0) == 96  # slices along H: 32 x 32 maps
    assert context_slice_chunk(scaa_star, torch.empty(1, 1, 192, 192, 96, device="meta"), 2) == 16  # not a CPU
    assert context_slice_chunk(nn.Identity(), volume, 2) == 16  # no slice_channels
    net = _net()  # 4 channels at full resolution: a 64 x 64 slice is 64 KiB
    monkeypatch.setattr(context_slices, "CPU_CHUNK_BYTES", 5 * 64 * 1024)
    seen = []
    forward_slices = net.forward_slices

    def spy(x, context, idx, *args, **kwargs):
        seen.append(len(idx))
        return forward_slices(x, context, idx, *args, **kwargs)

    monkeypatch.setattr(net, "forward_slices", spy)
    x = torch.rand(1, 1, 64, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(ContextSliceInferer()(x, net), net(x), atol=1e-5, rtol=1e-5)
    assert seen == [5] * 6 + [2]


def test_encoder_runs_once_per_volume():
    net = _net()
    calls = []
    net.context_encoder.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        ContextSliceInferer(slice_chunk=4)(torch.rand(1, 1, 64, 64, 32), net)
    assert len(calls) == 1


@pytest.mark.parametrize("configuration", ["CA", "SCAA"])
def test_padded_any_size_equals_the_network_on_the_padded_volume_cropped(configuration):
    net = _net(configuration)
    x = torch.rand(2, 1, 20, 33, 30)
    with torch.no_grad():
        out = PadInferer(net.divisor, net.min_size, inferer=ContextSliceInferer(slice_chunk=7))(x, net)
        expected = net(_pad_far_end(x, [64, 64, 32]))[:, :, :20, :33, :30]
    assert out.shape == (2, 3, 20, 33, 30)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_wrapped_networks_are_unwrapped():
    net = _net()
    x = torch.rand(1, 1, 64, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(ContextSliceInferer(8)(x, nn.DataParallel(net)), net(x))


def test_training_pass_on_any_size_equals_the_padded_network_cropped():
    net = _net("SCAA")
    x = torch.rand(2, 1, 20, 33, 30)
    idx = torch.tensor([[0, 7, 29], [3, 4, 11]])
    with torch.no_grad():
        slices, aux = SliceTrainingPadInferer(net.divisor, net.min_size)(x, net, slice_indices=idx)
        padded_slices, padded_aux = net(_pad_far_end(x, [64, 64, 32]), idx)
    torch.testing.assert_close(slices, padded_slices[:, :, :20, :33])  # the slice axis holds the 3 given slices
    torch.testing.assert_close(aux, padded_aux[:, :, :10, :17, :15])  # half resolution: ceil(size / 2)
    assert slices.shape == (2, 3, 20, 33, 3) and aux.shape == (2, 3, 10, 17, 15)


def test_training_pass_on_a_size_the_network_takes_is_the_plain_call():
    net = _net()
    x = torch.rand(1, 1, 64, 64, 32)
    with torch.no_grad():
        out = SliceTrainingPadInferer(net.divisor, net.min_size)(x, net, slice_indices=torch.tensor([[5, 6]]))
        plain = SimpleInferer()(x, net, slice_indices=torch.tensor([[5, 6]]))
    assert isinstance(out, list)
    for a, b in zip(out, plain):
        assert torch.equal(a, b)


def test_training_inferer_without_indices_is_a_pad_inferer():
    net = _net()
    x = torch.rand(1, 1, 20, 33, 30)
    inner = ContextSliceInferer(16)
    with torch.no_grad():
        out = SliceTrainingPadInferer(net.divisor, net.min_size, inferer=inner)(x, net)
        expected = PadInferer(net.divisor, net.min_size, inferer=inner)(x, net)
    assert torch.equal(out, expected)


def test_bad_arguments_and_networks():
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="slice_chunk"):
            ContextSliceInferer(bad)
    with pytest.raises(TypeError, match="lacks"):
        ContextSliceInferer()(torch.rand(1, 1, 4, 4, 4), nn.Conv3d(1, 1, 1))
    training = SliceTrainingPadInferer(divisor=4)
    with pytest.raises(ValueError, match="must return a list"):
        training(torch.rand(1, 1, 4, 4, 4), lambda x, slice_indices: x, slice_indices=torch.tensor([[0]]))
    with pytest.raises(ValueError, match="not a fraction 1/f"):
        training(torch.rand(1, 1, 4, 4, 4), lambda x, slice_indices: [x, x[..., :3]], slice_indices=torch.tensor([[0]]))


def test_padded_depth_slices_are_masked_in_inference_and_training():
    """PadInferer hands the unpadded sizes on: MSFA gives the padded depth slices no attention."""
    net = _net("SCAA")
    x = torch.rand(1, 1, 64, 64, 40)  # padded to 64 slices: 24 of zeros
    padded = _pad_far_end(x, [64, 64, 64])
    with torch.no_grad():
        out = PadInferer(net.divisor, net.min_size, inferer=ContextSliceInferer(slice_chunk=16))(x, net)
        torch.testing.assert_close(out, net(padded, valid_size=[64, 64, 40])[..., :40], atol=1e-5, rtol=1e-5)
        assert (out - net(padded)[..., :40]).abs().max() > 1e-3  # unmasked, the padding takes attention
        off = PadInferer(net.divisor, net.min_size, inferer=ContextSliceInferer(16), pass_valid_size=False)(x, net)
        torch.testing.assert_close(off, net(padded)[..., :40], atol=1e-5, rtol=1e-5)
        idx = torch.tensor([[0, 39]])
        slices, aux = SliceTrainingPadInferer(net.divisor, net.min_size)(x, net, slice_indices=idx)
        masked_slices, _ = net(padded, idx, valid_size=[64, 64, 40])
    torch.testing.assert_close(slices, masked_slices)
    assert aux.shape == (1, 3, 32, 32, 20)
