import pytest
import torch
from torch import nn

from monai_ext.networks.nets import SCAA, SpatialContextAwareNet
from monai_ext.networks.nets.scaa import CONFIGURATIONS, take_slices

TINY = {"filters": (4, 8, 8, 16, 16), "context_channels": (4, 4, 8, 8), "global_channels": 4}
PAPER_PARAMS = 7.82e6


def _net(configuration="SCAA*", **kwargs):
    torch.manual_seed(0)
    return SCAA(1, 3, configuration=configuration, **{**TINY, **kwargs})


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_parameter_count_beside_the_paper():
    counts = {c: _count(SCAA(1, 14, configuration=c)) for c in CONFIGURATIONS}
    print({c: f"{n / 1e6:.2f} M" for c, n in counts.items()}, f"paper: {PAPER_PARAMS / 1e6:.2f} M")
    net = SCAA(1, 14)
    parts = {"3D context encoder": net.context_encoder, "2D encoder": net.encoders, "MSFA": net.msfa}
    parts.update({"2D decoder": net.decoders, "heads": [net.head, net.aux_head]})
    print({k: f"{_count(nn.ModuleList(v) if isinstance(v, list) else v):,}" for k, v in parts.items()})
    assert counts["SCAA*"] == 7_750_948  # our reading of the paper's layout, see docs/scaa.md
    assert abs(counts["SCAA*"] / PAPER_PARAMS - 1) < 0.02
    assert counts["CA"] < counts["C-CA"] < counts["SCAA*"] < counts["SCAA"]  # C-CA has no query/key/merge


def test_decoder_channels_option():
    filters = (64, 96, 128, 192, 256)
    assert [d.conv_block.conv2.conv.out_channels for d in SCAA(1, 14).decoders] == [192, 128, 96, 64, 64]
    classic = SCAA(1, 14, decoder_channels=filters)  # decoder levels as wide as their skips (the earlier default)
    assert _count(classic) == 9_425_188
    net = _net(decoder_channels=(4, 4, 8, 8, 16)).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 1, 20, 33, 30)).shape == (1, 3, 20, 33, 30)


@pytest.mark.parametrize("configuration", list(CONFIGURATIONS))
def test_whole_volume_output_shape_any_size(configuration):
    net = _net(configuration).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 1, 20, 33, 30)).shape == (1, 3, 20, 33, 30)


@pytest.mark.parametrize("configuration", ["C-CA", "SCAA*"])
def test_chunked_forward_equals_unchunked(configuration):
    x = torch.rand(2, 1, 32, 32, 19)
    net = _net(configuration, slice_chunk=19).eval()
    with torch.no_grad():
        whole = net(x)
        net.slice_chunk = 4
        chunked = net(x)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("slice_dim", [2, 4])
def test_training_forward_equals_whole_volume_at_the_given_slices(slice_dim):
    net = _net("SCAA", slice_dim=slice_dim).eval()
    x = torch.rand(2, 1, 24, 32, 24)
    idx = torch.tensor([[0, 7, 23], [3, 4, 20]])
    with torch.no_grad():
        whole = net(x)
        slices, aux = net(x, idx)
    torch.testing.assert_close(slices, take_slices(whole, idx, slice_dim), atol=1e-5, rtol=1e-5)
    assert slices.shape[slice_dim] == 3
    assert aux.shape == (2, 3, 12, 16, 12)


def test_one_index_vector_serves_every_volume():
    net = _net().eval()
    x = torch.rand(2, 1, 32, 32, 32)
    with torch.no_grad():
        a, _ = net(x, torch.tensor([1, 9]))
        b, _ = net(x, torch.tensor([[1, 9], [1, 9]]))
    torch.testing.assert_close(a, b)


def test_attention_over_depth_is_returned_per_scale():
    net = _net("SCAA").eval()
    with torch.no_grad():
        logits, attention = net.forward_with_attention(torch.rand(1, 1, 32, 32, 40))
    assert logits.shape == (1, 3, 32, 32, 40)
    # padded depth 64: F3D_i has 64 / 2^i slices; heads 2, 2, 4, 4
    assert [tuple(a.shape) for a in attention] == [(1, 40, 2, 16), (1, 40, 2, 8), (1, 40, 4, 4), (1, 40, 4, 2)]
    for a in attention:
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]))
    _, none = _net("CA").eval().forward_with_attention(torch.rand(1, 1, 32, 32, 32))
    assert none == []


def test_training_step_reaches_every_parameter():
    net = _net("SCAA")
    # 64 slices: F3D_5 has 2 depth slices, so even the deepest attention has something to choose
    slices, aux = net(torch.rand(1, 1, 32, 32, 64), torch.tensor([2, 50]))
    (slices.square().mean() + aux.square().mean()).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_traced_whole_volume_forward_matches():
    net = _net("SCAA*").eval()
    x = torch.rand(1, 1, 32, 32, 32)
    traced = torch.jit.trace(net, x)
    torch.testing.assert_close(traced(x), net(x), atol=1e-5, rtol=1e-5)


def test_alias():
    assert SCAA is SpatialContextAwareNet


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"configuration": "SCAA**"}, "configuration must be one of"),
        ({"num_heads": (2, 2, 4)}, "one entry per MSFA scale"),
        ({"slice_dim": 1}, "slice_dim must be"),
        ({"slice_chunk": 0}, "slice_chunk must be"),
        ({"decoder_channels": (4, 8, 8, 16)}, "decoder_channels needs one positive width per level"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _net(**kwargs)


def test_bad_inputs():
    net = _net()
    with pytest.raises(ValueError, match="expects a whole volume"):
        net(torch.rand(1, 2, 32, 32, 32))
    with pytest.raises(ValueError, match="expects a whole volume"):
        net(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"must lie in \[0, 32\)"):
        net(torch.rand(1, 1, 32, 32, 32), torch.tensor([0, 32]))
    with pytest.raises(ValueError, match="slice_indices must be"):
        net(torch.rand(2, 1, 32, 32, 32), torch.zeros(3, 2, dtype=torch.long))
