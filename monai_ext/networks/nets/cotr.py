"""CoTr: a 3D CNN encoder-decoder whose two deepest encoder levels pass a deformable Transformer (DeTrans)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.inferers import SlidingWindowInferer
from monai.networks.layers.factories import Conv
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import nn

from monai_ext.networks.blocks.cpu_conv import fast_cpu_convs
from monai_ext.networks.blocks.detrans import DeTransEncoder
from monai_ext.networks.checks import check_input
from monai_ext.networks.compat import load_cotr_release
from monai_ext.networks.layout import DEFAULT_SPATIAL_DIM, check_spatial_dim
from monai_ext.networks.registry import NetworkEntry, register_network

__all__ = ["CoTr", "cotr_inferer"]

_NORM = ("instance", {"affine": True})
_ACT = ("leakyrelu", {"negative_slope": 0.01, "inplace": True})


class _EncoderBlock(nn.Module):
    """The release's backbone residual block: ``act(norm(conv3(x)) + shortcut(x))``, shortcut a strided
    ``1^3`` convolution + norm in the first block of a stage."""

    def __init__(self, spatial_dims, in_channels, out_channels, stride, norm_name, act_name) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.conv = conv(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.norm = get_norm_layer(norm_name, spatial_dims, out_channels)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                conv(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                get_norm_layer(norm_name, spatial_dims, out_channels),
            )
        self.act = get_act_layer(act_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)) + self.downsample(x))


class _DecoderBlock(nn.Module):
    """The release's decoder residual block: ``x + act(norm(conv3(act(norm(conv3(x))))))``."""

    def __init__(self, spatial_dims, channels, norm_name, act_name) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.conv1 = conv(channels, channels, kernel_size=3, padding=1, bias=False)
        self.norm1 = get_norm_layer(norm_name, spatial_dims, channels)
        self.conv2 = conv(channels, channels, kernel_size=3, padding=1, bias=False)
        self.norm2 = get_norm_layer(norm_name, spatial_dims, channels)
        self.act = get_act_layer(act_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.norm1(self.conv1(x)))
        return x + self.act(self.norm2(self.conv2(out)))


class CoTr(nn.Module):
    """CoTr (Xie et al., MICCAI 2021, https://arxiv.org/abs/2103.03024; code: github.com/YtongXie/CoTr).

    "CoTr: Efficiently Bridging CNN and Transformer for 3D Medical Image Segmentation". Laid out as the
    released ``ResTranUnet``, on MONAI's ``(B, C, H, W, D)`` with the slices on spatial axis ``spatial_dim``:

    - stem: ``7^3`` convolution to ``encoder_channels[0]`` (64), norm, act; stride 1 along the slice axis and 2 on
      the two in-plane axes (``(2, 2, 1)`` for slices last);
    - encoder stage ``i`` (stride 2): ``encoder_blocks[i]`` residual blocks (one ``3^3`` conv + norm, shortcut,
      act) to ``encoder_channels[i + 1]`` (3, 3, 2 blocks; 192, 384, 384 channels);
    - DeTrans (:class:`~monai_ext.networks.blocks.DeTransEncoder`) on the last ``detrans_levels`` (2) encoder levels
      jointly
      (``d = 384``, 6 heads, 6 layers, FFN 1536, 4 points, dropout 0.1);
    - decoder level ``k`` (deep to shallow): ``2^3`` stride-2 transposed convolution (no bias), sum with the
      skip (the DeTrans output on the second-deepest level, CNN features above), a residual block of two
      conv-norm-act, and a ``1^3`` deep-supervision head;
    - output: trilinear upsampling by the stem's stride and a ``1^3`` convolution to ``out_channels``.

    With the defaults (1 input channel, 14 classes) the network has 41,872,504 parameters, the release's
    count (encoder 20,500,800, DeTrans 9,316,992). The paper's variants are registry entries
    (:func:`monai_ext.networks.create_network`): ``"cotr"``, ``"cotr_star"``, ``"cotr_plus"``,
    ``"cotr_without_detrans"``, ``"cotr_single_scale"``. Released weights load through
    :func:`monai_ext.networks.compat.load_cotr_release`.

    Output: in eval mode, or without ``deep_supervision``, one tensor of full-resolution logits. In training mode
    with ``deep_supervision`` a list ``[full, level 0, level 1, level 2]``: the full-resolution logits, then the
    decoder heads' logits from the shallowest level to the deepest, each at its own resolution (the release's
    order, and what :class:`monai.losses.DeepSupervisionLoss` takes).

    Args:
        in_channels: input channels.
        out_channels: classes, background included.
        encoder_channels: stem and stage channels; the last ``detrans_levels`` must be equal (DeTrans runs on them).
        encoder_blocks: residual blocks per encoder stage.
        spatial_dim: the slice axis, 0-2 over the spatial axes (default 2, the last, as MONAI's ``SliceInferer``);
            the stem does not stride along it.
        use_detrans: False for the ablation without DeTrans (the decoder reads the CNN features directly).
        detrans_levels: how many of the deepest encoder levels DeTrans takes jointly (released CoTr: 2; 1 is the
            single-scale DeTrans of the paper's Fig. 3, on the deepest level only).
        num_heads, num_layers, mlp_dim, num_points, dropout_rate: DeTrans settings.
        norm_name: MONAI norm factory name/arguments (release default: instance norm with affine).
        act_name: MONAI activation factory name/arguments of the CNN parts (release default: LeakyReLU 0.01; the
            paper's text writes Conv-IN-ReLU: ``"relu"``). DeTrans's FFN keeps GELU.
        deep_supervision: return the deep-supervision list in training mode.
        core: DeTrans sampling core, ``"fast"`` or ``"grid_sample"``.

    Shapes:
        input ``(B, in_channels, H, W, D)``, each spatial size divisible by ``divisors`` (the stem's stride times
        ``2 ** len(encoder_blocks)``: the slice axis by 8, the others by 16 with the defaults); output
        ``(B, out_channels, H, W, D)``. With deep supervision in training, the heads' outputs follow at the
        stem's resolution and then halved per level: ``(H / 2, W / 2, D)``, ``(H / 4, W / 4, D / 2)``,
        ``(H / 8, W / 8, D / 4)`` for slices last.

    Raises:
        ValueError: for bad settings, and in ``forward`` for a wrong rank, channel count, or sizes that are
            not divisible as above (:func:`monai_ext.networks.checks.check_input` names the padding to use).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 14,
        encoder_channels: Sequence[int] = (64, 192, 384, 384),
        encoder_blocks: Sequence[int] = (3, 3, 2),
        spatial_dim: int = DEFAULT_SPATIAL_DIM,
        use_detrans: bool = True,
        detrans_levels: int = 2,
        num_heads: int = 6,
        num_layers: int = 6,
        mlp_dim: int = 1536,
        num_points: int = 4,
        dropout_rate: float = 0.1,
        norm_name: tuple | str = _NORM,
        act_name: tuple | str = _ACT,
        deep_supervision: bool = True,
        core: str = "fast",
    ) -> None:
        super().__init__()
        spatial_dims = 3
        encoder_channels, encoder_blocks = list(encoder_channels), list(encoder_blocks)
        if min(in_channels, out_channels) < 1:
            raise ValueError(f"in_channels and out_channels must be positive, got {in_channels}, {out_channels}.")
        if len(encoder_channels) != len(encoder_blocks) + 1 or len(encoder_blocks) < 2:
            raise ValueError(
                f"need one more encoder channel count than stages and at least 2 stages, got channels "
                f"{encoder_channels} and blocks {encoder_blocks}."
            )
        if min(encoder_channels) < 1 or min(encoder_blocks) < 1:
            raise ValueError(
                f"encoder_channels and encoder_blocks must be positive, got {encoder_channels}, {encoder_blocks}."
            )
        if not 1 <= detrans_levels <= len(encoder_channels):
            raise ValueError(
                f"detrans_levels must lie in [1, {len(encoder_channels)}] (the encoder levels), got {detrans_levels}."
            )
        if use_detrans and len(set(encoder_channels[-detrans_levels:])) != 1:
            raise ValueError(
                f"DeTrans runs on the last {detrans_levels} encoder levels and needs them equally wide, got "
                f"{encoder_channels[-detrans_levels:]}; set encoder_channels or detrans_levels accordingly."
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.spatial_dim = check_spatial_dim(spatial_dim)
        self.deep_supervision = deep_supervision
        self.detrans_levels = detrans_levels
        stem_strides = [1 if a == spatial_dim else 2 for a in range(spatial_dims)]
        self.divisors = [s * 2 ** len(encoder_blocks) for s in stem_strides]  # of every input size, per axis
        conv = Conv[Conv.CONV, spatial_dims]
        conv_t = Conv[Conv.CONVTRANS, spatial_dims]

        self.stem = nn.Sequential(
            conv(in_channels, encoder_channels[0], kernel_size=7, stride=stem_strides, padding=3, bias=False),
            get_norm_layer(norm_name, spatial_dims, encoder_channels[0]),
            get_act_layer(act_name),
        )
        stages = []
        for i, blocks in enumerate(encoder_blocks):
            c_in, c_out = encoder_channels[i], encoder_channels[i + 1]
            stages.append(
                nn.Sequential(
                    *(
                        _EncoderBlock(
                            spatial_dims, c_in if b == 0 else c_out, c_out, 2 if b == 0 else 1, norm_name, act_name
                        )  # fmt: skip
                        for b in range(blocks)
                    )
                )
            )
        self.encoder_stages = nn.ModuleList(stages)
        self.detrans: DeTransEncoder | None = None
        if use_detrans:
            self.detrans = DeTransEncoder(
                encoder_channels[-1], num_levels=detrans_levels, num_layers=num_layers, mlp_dim=mlp_dim,
                num_heads=num_heads, num_points=num_points, dropout_rate=dropout_rate, act="gelu",
                spatial_dims=spatial_dims, core=core,
            )  # fmt: skip
        decoder_levels = list(reversed(range(len(encoder_blocks))))  # skip levels, deep to shallow
        self.upsamples = nn.ModuleList(
            conv_t(encoder_channels[k + 1], encoder_channels[k], kernel_size=2, stride=2, bias=False)
            for k in decoder_levels
        )
        self.decoder_blocks = nn.ModuleList(
            _DecoderBlock(spatial_dims, encoder_channels[k], norm_name, act_name) for k in decoder_levels
        )
        self.deep_heads = nn.ModuleList(conv(encoder_channels[k], out_channels, kernel_size=1) for k in decoder_levels)
        self.final_upsample = nn.Upsample(scale_factor=tuple(float(s) for s in stem_strides), mode="trilinear")
        self.out_conv = conv(encoder_channels[0], out_channels, kernel_size=1)
        self._init_convolutions()
        fast_cpu_convs(self)  # small deep maps on oneDNN (same layers, keys and values)

    def _init_convolutions(self) -> None:
        """The release's initialisation: Kaiming-normal (fan out) convolutions, norms at weight 1 and bias 0."""
        for m in self.modules():
            if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, (nn.BatchNorm3d, nn.InstanceNorm3d, nn.GroupNorm)) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if not torch.jit.is_scripting():  # plain-Python checks; a scripted network skips them
            check_input(x, "CoTr", self.in_channels, spatial_dims=3, divisor=self.divisors)
        feats = [self.stem(x)]
        for stage in self.encoder_stages:
            feats.append(stage(feats[-1]))
        if self.detrans is not None:
            first = len(feats) - self.detrans_levels
            if torch.jit.is_scripting():  # one type in, one out
                levels = self.detrans.forward_levels(feats[first:])
            else:  # through the module call, so that hooks on the encoder see it
                levels = self.detrans(feats[first:])
            feats = feats[:first] + levels
        x = feats[-1]
        outputs: list[torch.Tensor] = []
        for j, (up, block, head) in enumerate(zip(self.upsamples, self.decoder_blocks, self.deep_heads)):
            x = block(up(x) + feats[len(feats) - 2 - j])
            outputs.append(head(x))
        result = self.out_conv(self.final_upsample(x))
        if self.training and self.deep_supervision:
            outputs.reverse()  # levels shallow to deep
            return [result] + outputs
        return result


def cotr_inferer(
    spatial_dim: int = DEFAULT_SPATIAL_DIM,
    roi_size: Sequence[int] | None = None,
    sw_batch_size: int = 1,
    overlap: float = 0.5,
    mode: str = "gaussian",
    cval: float = (-958.0 - 82.92) / 136.97,
) -> SlidingWindowInferer:
    """The whole-volume inferer of ``bundles/cotr`` (``configs/inference.json``, without mirroring).

    Gaussian-weighted sliding windows of the paper's training patch, 50 % overlap, padding with the value of air
    after the bundle's intensity normalisation (HU -958, the window's floor, as ``(x - 82.92) / 136.97``).

    Args:
        spatial_dim: the slice axis (as :class:`CoTr`'s); places the patch's 48 slices.
        roi_size: the window; default: the paper's 48 x 192 x 192 patch with the 48 on ``spatial_dim``
            (``(192, 192, 48)`` for slices last).
        sw_batch_size, overlap, mode, cval: see :class:`monai.inferers.SlidingWindowInferer`.
    """
    check_spatial_dim(spatial_dim)
    if roi_size is None:
        roi_size = tuple(48 if a == spatial_dim else 192 for a in range(3))
    return SlidingWindowInferer(roi_size, sw_batch_size, overlap, mode=mode, cval=cval)


_PAPER = "Xie et al. 2021, Table 1"
_PATCH = (192, 192, 48)  # the paper's 48 x 192 x 192, slices last
register_network(
    NetworkEntry(
        "cotr",
        CoTr,
        "3d",
        "CoTr",
        f"{_PAPER}: CoTr",
        inferer=cotr_inferer,
        bundle="cotr",
        loader=load_cotr_release,
        patch=_PATCH,
        method=4,
    )
)
for _name, _title, _defaults, _row in (
    ("cotr_star", "CoTr*", {"encoder_blocks": (1, 1, 1)}, _PAPER),  # the paper's smaller CNN encoders: our reading
    ("cotr_plus", "CoTr†", {"encoder_blocks": (2, 2, 2)}, _PAPER),
    ("cotr_without_detrans", "CoTr w/o DeTrans", {"use_detrans": False}, _PAPER),
    ("cotr_single_scale", "CoTr (single-scale DeTrans)", {"detrans_levels": 1}, "Xie et al. 2021, Fig. 3"),
):
    register_network(
        NetworkEntry(
            _name,
            CoTr,
            "3d",
            _title,
            f"{_row}: {_title}",
            defaults=_defaults,
            inferer=cotr_inferer,
            bundle="cotr",
            variant_of="cotr",
            patch=_PATCH,
            method=4,
        )
    )
