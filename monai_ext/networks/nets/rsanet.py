"""RSANet: a U-Net with recurrent slice-wise attention (RSA) blocks for multiple sclerosis lesion segmentation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.inferers import SlidingWindowInferer
from monai.networks.blocks import Convolution
from monai.networks.blocks.dynunet_block import UnetBasicBlock
from monai.networks.layers.utils import get_dropout_layer
from torch import nn

from monai_ext.networks.blocks.cpu_conv import fast_cpu_convs
from monai_ext.networks.blocks.slice_attention import RecurrentSliceAttention
from monai_ext.networks.checks import check_input
from monai_ext.networks.registry import NetworkEntry, register_network

__all__ = ["RSANET_PATCH", "RSANet", "rsanet_inferer"]

_PLACEMENT_CHARS = ("0", "1")


class RSANet(nn.Module):
    """Recurrent slice-wise attention network (Zhang et al., MICCAI 2019, https://arxiv.org/abs/2002.12470).

    "RSANet: Recurrent Slice-wise Attention Network for Multiple Sclerosis Lesion Segmentation"; code:
    github.com/tinymilky/RSANet. A plain U-Net with :class:`~monai_ext.networks.blocks.RecurrentSliceAttention`
    blocks, laid out as the release:

    - input convolution ``3^n`` (``in_channels -> filters[0]``, no bias), then channel dropout (``dropout``);
    - encoder level ``i``: (conv ``3^n`` + norm + act) x 2 (:class:`monai.networks.blocks.UnetBasicBlock`),
      ``filters[i-1] -> filters[i]`` (``filters[0] -> filters[0]`` at the top), then a ``3^n`` stride-2
      convolution keeping the channels;
    - bottleneck: (conv + norm + act) x 2, ``filters[-2] -> filters[-1]``;
    - decoder level ``i``: ``1^n`` convolution ``filters[i+1] -> filters[i]`` and nearest upsampling x2,
      concatenation ``[skip, upsampled]``, (conv + norm + act) x 2, ``2 * filters[i] -> filters[i]``;
    - head: ``3^n`` convolution ``filters[0] -> filters[0]`` then ``1^n`` to ``out_channels`` (no bias, no norm).

    All convolutions are bias-free except those inside the RSA blocks. ``rsa_placement`` is the paper's
    three-digit code: RSA after the encoder block of the second-lowest level, after the bottleneck, after
    the decoder block of the second-lowest level. ``"010"`` is the release; ``"101"`` and ``"111"`` are the
    paper's other variants and ``"000"`` is its 3D U-Net baseline. With the defaults (3 modalities,
    2 classes, RSA-010) the network has 24,554,339 parameters, as the release.

    The network takes spatial sizes that are multiples of ``2 ** (len(filters) - 1)`` (16 by default) and raises
    otherwise: a whole volume reaches it through an inferer whose windows are divisible, as the bundle's
    :func:`rsanet_inferer` (or :class:`monai_ext.inferers.PadInferer`). The release instead zero-pads the
    upsampled decoder features at the near end; for divisible sizes the two agree.

    The network scripts (``torch.jit.script``, as the Model Zoo's ``ckpt_export``) and traces. A scripted network
    skips the input checks, as a traced one does.

    Args:
        spatial_dims: 3 (the release) or 2.
        in_channels: input channels (the release: T1, T2, FLAIR).
        out_channels: output channels (classes, background included).
        filters: channels per level, top to bottom; at least 2 levels. Default ``(32, 64, 128, 256, 512)``.
        rsa_placement: three characters from ``"01"`` (encoder, bottleneck, decoder), see above.
        rsa_spatial_dims_order: spatial axes every RSA block attends along, in order (0 = H, 1 = W, 2 = D of
            ``(B, C, H, W, D)``), see :class:`~monai_ext.networks.blocks.RecurrentSliceAttention`. Default: the
            paper's sagittal, coronal, then axial on RAS-oriented volumes
            (:data:`~monai_ext.networks.blocks.RSA_PAPER_ORDER`, ``(0, 1, 2)``; ``(0, 1)`` in 2D). The release's
            coronal, sagittal, axial is :data:`~monai_ext.networks.compat.RSA_RELEASE_ORDER`, ``(1, 0, 2)``; for
            other orientations see :func:`~monai_ext.networks.blocks.plane_axes`.
        rsa_scaled: scale the RSA attention logits by ``1 / sqrt(L)`` (off in the release).
        norm_name: normalisation, MONAI factory name and arguments. Default ``("group", {"num_groups": 8})``.
        act_name: activation, MONAI factory name and arguments. Default ``("relu", {"inplace": True})``.
        dropout: channel-dropout probability after the input convolution (0.2 in the release; 0 or None
            for none).

    Shapes:
        input ``(B, in_channels, *spatial)`` (``(B, C, H, W, D)`` in 3D), every spatial size a multiple of
        ``2 ** (len(filters) - 1)``; output ``(B, out_channels, *spatial)`` (logits).

    Raises:
        ValueError: for ``spatial_dims`` not 2 or 3, non-positive channel counts, fewer than two levels,
            a malformed ``rsa_placement`` or ``rsa_spatial_dims_order``; in ``forward`` (eager, not scripted) for
            an input of the wrong rank or channel count, or with a spatial size that is not a multiple of
            ``2 ** (len(filters) - 1)``.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 3,
        out_channels: int = 2,
        filters: Sequence[int] = (32, 64, 128, 256, 512),
        rsa_placement: str = "010",
        rsa_spatial_dims_order: Sequence[int] | None = None,
        rsa_scaled: bool = False,
        norm_name: tuple | str = ("group", {"num_groups": 8}),
        act_name: tuple | str = ("relu", {"inplace": True}),
        dropout: float | None = 0.2,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        filters = list(filters)
        if min(in_channels, out_channels) < 1:
            raise ValueError(f"in_channels and out_channels must be positive, got {in_channels}, {out_channels}.")
        if len(filters) < 2 or min(filters) < 1:
            raise ValueError(f"filters needs at least 2 positive channel counts (one per level), got {filters}.")
        if not (
            isinstance(rsa_placement, str) and len(rsa_placement) == 3 and set(rsa_placement) <= set(_PLACEMENT_CHARS)
        ):
            raise ValueError(
                f"rsa_placement must be three characters from {_PLACEMENT_CHARS} (encoder, bottleneck, decoder), "
                f"e.g. '010' or '101', got {rsa_placement!r}."
            )
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.filters = filters
        self.rsa_placement = rsa_placement
        self.divisor = 2 ** (len(filters) - 1)

        def conv(in_c: int, out_c: int, kernel_size: int, strides: int = 1) -> Convolution:
            return Convolution(
                spatial_dims, in_c, out_c, strides=strides, kernel_size=kernel_size, bias=False, conv_only=True
            )

        def double_conv(in_c: int, out_c: int) -> UnetBasicBlock:
            return UnetBasicBlock(
                spatial_dims, in_c, out_c, kernel_size=3, stride=1, norm_name=norm_name, act_name=act_name
            )

        def rsa(channels: int, enabled: str) -> nn.Module:
            if enabled == "1":
                return RecurrentSliceAttention(
                    spatial_dims, channels, spatial_dims_order=rsa_spatial_dims_order, scaled=rsa_scaled
                )
            return nn.Identity()

        self.init_conv = conv(in_channels, filters[0], 3)
        self.dropout = get_dropout_layer(dropout, dropout_dim=spatial_dims) if dropout else nn.Identity()
        # encoder levels 0 .. L-2, top to bottom; level i maps filters[i-1] (filters[0] at the top) to filters[i]
        self.encoders = nn.ModuleList(double_conv(filters[max(i - 1, 0)], filters[i]) for i in range(len(filters) - 1))
        self.downsamples = nn.ModuleList(conv(f, f, 3, strides=2) for f in filters[:-1])
        self.bottleneck = double_conv(filters[-2], filters[-1])
        # decoder levels L-2 .. 0, bottom to top
        self.upsamples = nn.ModuleList(
            nn.Sequential(conv(filters[i + 1], filters[i], 1), nn.Upsample(scale_factor=2, mode="nearest"))
            for i in reversed(range(len(filters) - 1))
        )
        self.decoders = nn.ModuleList(
            double_conv(2 * filters[i], filters[i]) for i in reversed(range(len(filters) - 1))
        )
        self.final = nn.Sequential(conv(filters[0], filters[0], 3), conv(filters[0], out_channels, 1))
        self.rsa_encoder = rsa(filters[-2], rsa_placement[0])
        self.rsa_bottleneck = rsa(filters[-1], rsa_placement[1])
        self.rsa_decoder = rsa(filters[-2], rsa_placement[2])
        fast_cpu_convs(self)  # small deep maps on oneDNN (same layers, keys and values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # the checks are plain Python; a scripted network skips them
            check_input(x, "RSANet", self.in_channels, self.spatial_dims, divisor=self.divisor)
        x = self.dropout(self.init_conv(x))
        skips: list[torch.Tensor] = []
        last = len(self.encoders) - 1
        for i, (encoder, down) in enumerate(zip(self.encoders, self.downsamples)):
            x = encoder(x)
            if i == last:
                x = self.rsa_encoder(x)
            skips.append(x)
            x = down(x)
        x = self.rsa_bottleneck(self.bottleneck(x))
        for j, (up, decoder) in enumerate(zip(self.upsamples, self.decoders)):
            x = decoder(torch.cat([skips[last - j], up(x)], dim=1))  # channels: [skip, upsampled]
            if j == 0:
                x = self.rsa_decoder(x)
        return self.final(x)


RSANET_PATCH = (128, 128, 32)
"""The rsanet bundle's training patch and sliding window ``(H, W, D)`` (``roi_size`` in its configs)."""


def rsanet_inferer(**overrides: Any) -> SlidingWindowInferer:
    """The rsanet bundle's whole-volume inferer (``configs/inference.json``): MONAI's
    :class:`~monai.inferers.SlidingWindowInferer` with :data:`RSANET_PATCH` windows, ``sw_batch_size=1``,
    ``overlap=0.5``, ``mode="gaussian"``.

    Its windows are multiples of 16 (smaller volumes are padded to a window by MONAI), so every window is a size
    :class:`RSANet` takes. ``overrides`` replace any of these settings (any other SlidingWindowInferer argument too).
    """
    settings: dict[str, Any] = {"roi_size": RSANET_PATCH, "sw_batch_size": 1, "overlap": 0.5, "mode": "gaussian"}
    return SlidingWindowInferer(**{**settings, **overrides})


def _register(name: str, placement: str, title: str, row: str) -> None:
    """Register the RSANet of ``rsa_placement=placement``, the paper's Table 1 row ``row``."""
    main = name == "rsanet"
    register_network(
        NetworkEntry(
            name=name,
            builder=RSANet,
            kind="3d",
            title=title,
            paper=f"Zhang et al. 2019, Table 1: {row}",
            defaults={"rsa_placement": placement},
            inferer=rsanet_inferer,
            bundle="rsanet",
            variant_of=None if main else "rsanet",
            patch=RSANET_PATCH,
            method=5,
        )
    )


_register("rsanet", "010", "RSANet (RSA-010)", "RSA-010")  # the release and the bundle
_register("rsanet_101", "101", "RSANet (RSA-101)", "RSA-101")
_register("rsanet_111", "111", "RSANet (RSA-111)", "RSA-111")
_register("rsanet_000", "000", "3D U-Net (RSANet without RSA)", "3D U-Net")
