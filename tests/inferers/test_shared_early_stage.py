"""Each mini-group's early stage once: SliceGroupInferer(share_early_stage=True) equals the plain path for every ESM
configuration, k, stride, depth (thin volumes too), axis, activation and batch size; the early stage runs once per
distinct mini-group; the cache stays bounded and tolerates windows out of order; other networks and training mode
take the plain path."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SlidingWindowInferer
from torch import nn

from monai_ext.inferers import SharedEarlyStage, SliceGroupInferer
from monai_ext.networks.nets import Thickened2DNet

TINY = {"layers": (1, 1, 1, 1), "block_inplanes": (8, 16, 32, 64), "decoder_channels": 16, "low_level_channels": 8}
ESM_CONFIGS = ("esm_ssa", "esm", "esm_concat", "esm_dot")


pytestmark = pytest.mark.usefixtures("one_thread")


def _net(config: str, k: int, seed: int = 0) -> Thickened2DNet:
    """A tiny network in eval mode with random norm statistics and affines (the zero-initialised link norms too,
    so the link is not the identity and the mini-group terms matter)."""
    torch.manual_seed(seed)
    net = Thickened2DNet(num_slices=k, config=config, **TINY)
    with torch.no_grad():
        for m in net.modules():
            if getattr(m, "running_var", None) is not None:
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
            weight = getattr(m, "weight", None)
            if isinstance(weight, nn.Parameter) and weight.dim() == 1:
                nn.init.uniform_(weight, 0.5, 1.5)
    return net.eval()


def _assert_same(out: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to fp32 round-off: 1e-6 of the output's scale (at least 1). Convolutions give other last bits for
    other batch sizes (measured: the plain path alone moves by up to 4.8e-7 between sw_batch_size 1 and 3 on an
    output of magnitude 2), and the shared path batches the early stage differently."""
    assert (out - expected).abs().max().item() <= 1e-6 * max(1.0, expected.abs().max().item())


def _count_rows(module: nn.Module) -> list[int]:
    """Rows (batch entries) of every input ``module`` sees."""
    rows: list[int] = []
    module.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    return rows


# (k, stride, depth, spatial_dim, activation, batch, sw_batch_size); k in 3, 6, 12, 15, strides 1 and others, the
# last group not on the stride (6/4/13: groups at 0, 4, 7), thin volumes (depth < k: padded, one group)
CASES = [
    (3, 1, 7, 2, None, 1, 4),
    (6, 1, 11, 0, "softmax", 2, 3),
    (6, 4, 13, 1, None, 1, 2),
    (6, 2, 4, 2, "sigmoid", 2, 4),
    (12, 1, 17, 2, "softmax", 1, 4),
    (12, 5, 5, 0, None, 2, 1),
    (15, 3, 20, 1, "softmax", 1, 3),
    (15, 1, 16, 2, None, 2, 4),
]


@pytest.mark.parametrize("config", ESM_CONFIGS)
@pytest.mark.parametrize("k, stride, depth, spatial_dim, activation, batch, sw", CASES)
def test_shared_path_equals_the_plain_path(config, k, stride, depth, spatial_dim, activation, batch, sw):
    net = _net(config, k)
    shape = [batch, 1, 32, 33, 34]
    shape[2 + spatial_dim] = depth
    x = torch.randn(*shape)
    settings = {"spatial_dim": spatial_dim, "stride": stride, "sw_batch_size": sw, "activation": activation}
    with torch.inference_mode():
        plain = SliceGroupInferer(k, **settings)(x, net)
        shared = SliceGroupInferer(k, share_early_stage=True, **settings)(x, net)
    assert shared.shape == plain.shape == (batch, 2, *shape[2:])
    _assert_same(shared, plain)


def _decoder_size(n: int) -> int:
    """The network's logits size for slices of size ``n``: stride-2 stem (7x7, padding 3), stride-2 max pool."""
    return ((n - 1) // 2) // 2 + 1


@pytest.mark.parametrize("config", ESM_CONFIGS)
@pytest.mark.parametrize(
    "k, stride, depth, spatial_dim, batch, sw, in_plane",
    [
        (3, 1, 7, 2, 1, 4, (32, 36)),  # logits of a quarter of the size
        (6, 1, 11, 0, 2, 3, (47, 33)),  # 47: logits 12, which MONAI would size int(47 * (12 / 47)) = 11
        (12, 5, 5, 1, 2, 1, (34, 55)),  # a thin volume; 55: logits 14, MONAI 13
    ],
)
def test_logits_are_averaged_at_the_decoder_resolution_and_upsampled_once(
    config, k, stride, depth, spatial_dim, batch, sw, in_plane
):
    """Logits averaged as they are (activation None): the sliding window adds each group's logits at the decoder's
    resolution and the network upsamples the average once, equal to the plain path, for in-plane sizes whose logits
    MONAI's output arithmetic maps exactly and for those it does not; with softmax every group's slab is
    upsampled."""
    net = _net(config, k)
    calls: list[tuple[int, ...]] = []
    upsample = net.upsample
    net.upsample = lambda logits, size: calls.append(tuple(logits.shape)) or upsample(logits, size)
    shape = [batch, 1, *in_plane]
    shape.insert(2 + spatial_dim, depth)
    x = torch.randn(*shape)
    settings = {"spatial_dim": spatial_dim, "stride": stride, "sw_batch_size": sw}
    with torch.inference_mode():
        plain = SliceGroupInferer(k, **settings)(x, net)
        calls.clear()
        shared = SliceGroupInferer(k, share_early_stage=True, **settings)(x, net)
        low = (batch, 2, _decoder_size(in_plane[0]), _decoder_size(in_plane[1]), max(depth, k))
        assert calls == [low]  # once, for the whole (padded) volume
        _assert_same(shared, plain)
        calls.clear()
        SliceGroupInferer(k, share_early_stage=True, activation="softmax", **settings)(x, net)
        assert len(calls) > 1 and all(c[-1] == k for c in calls)  # each call's groups


def test_the_early_stage_runs_once_per_mini_group():
    """k = 12 (4 mini-groups of 3), stride 1, 20 slices, batch 2: groups start at 0 ... 8, mini-groups at 0 ... 17.
    The plain path runs 9 * 4 mini-groups per volume, the shared path 18."""
    net = _net("esm_ssa", 12)
    early = _count_rows(net.early_stage.early)
    x = torch.randn(2, 1, 32, 32, 20)
    with torch.inference_mode():
        SliceGroupInferer(12, sw_batch_size=4)(x, net)
        assert sum(early) == 2 * 9 * 4
        early.clear()
        SliceGroupInferer(12, sw_batch_size=4, share_early_stage=True)(x, net)
    assert sum(early) == 2 * 18
    assert max(early) <= 4 * 4  # never more mini-groups at once than the plain path's sw_batch_size groups


def test_the_cache_stays_bounded_and_windows_out_of_order_are_recomputed():
    net = _net("esm_dot", 6)
    x = torch.randn(1, 1, 32, 32, 30)
    predictor = SharedEarlyStage(net)
    sizes: list[int] = []
    stacked: list[torch.Tensor] = []  # kept alive, so no two fresh allocations could share an address

    def record(windows, locations):
        out = predictor(windows, locations)
        sizes.append(len(predictor.cache))
        stacked.append(predictor.stacked)
        return out

    def sliding(with_coord: bool) -> SlidingWindowInferer:
        return SlidingWindowInferer((-1, -1, 6), 3, overlap=(0, 0, 5 / 6), mode="constant", with_coord=with_coord)

    with torch.inference_mode():
        plain = sliding(False)(x, net)
        shared = sliding(True)(x, record)
        _assert_same(shared, plain)
        assert len(sizes) == 9 and max(sizes) == 6 - 3  # 25 groups, 3 per call; the last window's later ones kept
        assert len({t.data_ptr() for t in stacked}) == 1  # every call stacks its maps into the same storage
        # laid out as the cached maps (channels-last from the early stage's convolutions), each window's mini-groups
        # side by side around the channels: the network's (n, G * E, H, W) view of them is channels-last, no copy
        cached = next(iter(predictor.cache.values()))
        e, h, w = cached.shape
        assert cached.stride() == (1, w * e, e)
        g = net.num_slices // net.group_size  # mini-groups per window
        assert stacked[0].shape[1:] == (g, e, h, w) and stacked[0].stride()[1:] == (e, 1, w * g * e, g * e)
        assert stacked[0].flatten(1, 2).is_contiguous(memory_format=torch.channels_last)
        # the windows of one call in reverse order, then an earlier window: all recomputed as needed
        windows = torch.stack([x[0, :, :, :, s : s + 6] for s in (12, 3, 0)])
        locations = [[slice(0, 1), slice(None), slice(0, 32), slice(0, 32), slice(s, s + 6)] for s in (12, 3, 0)]
        out = predictor(windows, locations)
        _assert_same(out, net(windows))


def test_other_networks_and_training_mode_take_the_plain_path():
    def slab_net(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t + t.mean(-1, keepdim=True), 2 * t], dim=1)

    x = torch.randn(1, 1, 32, 32, 9)
    shared = SliceGroupInferer(3, share_early_stage=True)
    assert torch.equal(shared(x, slab_net), SliceGroupInferer(3)(x, slab_net))
    plain_net = _net("plain", 6)
    assert not SharedEarlyStage.supports(plain_net)
    with torch.inference_mode():
        assert torch.equal(
            SliceGroupInferer(6, share_early_stage=True)(x, plain_net), SliceGroupInferer(6)(x, plain_net)
        )
    net = _net("esm", 6).train()  # batch norm on batch statistics: the batches must stay the plain path's
    early = _count_rows(net.early_stage.early)
    assert not SharedEarlyStage.supports(net)
    with torch.no_grad():
        SliceGroupInferer(6, sw_batch_size=4, share_early_stage=True)(x, net)
    assert early == [4 * 2]  # 4 groups of 2 mini-groups in one call


def test_bad_networks_and_windows():
    with pytest.raises(ValueError, match="SharedEarlyStage needs a network in eval mode"):
        SharedEarlyStage(_net("plain", 6))
    predictor = SharedEarlyStage(_net("esm", 6))
    with pytest.raises(ValueError, match=r"expects windows \(n, C, H, W, 6\)"):
        predictor(torch.randn(1, 1, 32, 32, 5), [[slice(0, 1), slice(None), slice(0, 32), slice(0, 32), slice(0, 5)]])
