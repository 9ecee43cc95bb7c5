"""CoTr: a 3D CNN encoder-decoder whose two deepest encoder levels pass a deformable Transformer (DeTrans)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
from monai.networks.layers.factories import Conv
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import nn

from monai_ext.networks.blocks.detrans import DeTransEncoder

__all__ = ["COTR_CONFIGS", "CoTr", "convert_cotr_release_state_dict", "load_cotr_release"]

_NORM = ("instance", {"affine": True})
_ACT = ("leakyrelu", {"negative_slope": 0.01, "inplace": True})

COTR_CONFIGS: dict[str, dict] = {
    "cotr": {},
    # our reading of the paper's smaller-encoder variants (Table 1: 27.9 M and 36.9 M); see docs/cotr.md
    "cotr_star": {"encoder_blocks": (1, 1, 1)},
    "cotr_plus": {"encoder_blocks": (2, 2, 2)},
    "without_detrans": {"use_detrans": False},
}
"""Named configurations for :class:`CoTr` (keyword overrides of its defaults): the release (``"cotr"``), the
paper's CoTr* and CoTr+ (smaller CNN encoders, our reading), and the ablation without DeTrans."""


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
    released ``ResTranUnet``:

    - stem: ``7^3`` convolution with stride ``stem_stride`` (``(1, 2, 2)``) to ``encoder_channels[0]`` (64),
      norm, act;
    - encoder stage ``i`` (stride 2): ``encoder_blocks[i]`` residual blocks (one ``3^3`` conv + norm, shortcut,
      act) to ``encoder_channels[i + 1]`` (3, 3, 2 blocks; 192, 384, 384 channels);
    - DeTrans (:class:`~monai_ext.networks.blocks.DeTransEncoder`) on the last two encoder levels jointly
      (``d = 384``, 6 heads, 6 layers, FFN 1536, 4 points, dropout 0.1);
    - decoder level ``k`` (deep to shallow): ``2^3`` stride-2 transposed convolution (no bias), sum with the
      skip (the DeTrans output on the second-deepest level, CNN features above), a residual block of two
      conv-norm-act, and a ``1^3`` deep-supervision head;
    - output: trilinear upsampling by ``stem_stride`` and a ``1^3`` convolution to ``out_channels``.

    With the defaults (1 input channel, 14 classes) the network has 41,872,504 parameters, the release's
    count (encoder 20,500,800, DeTrans 9,316,992). Named variants are in :data:`COTR_CONFIGS`.

    In training mode with ``deep_supervision`` the output is a list ``[full, level 0, level 1, level 2]`` of
    logits at decreasing resolution (the release's order); otherwise only the full-resolution logits.

    Axis order: as the release, the first spatial axis is the slice axis ``D`` (stride 1 in the stem):
    inputs ``(B, C, D, H, W)``. Each spatial size must be divisible by ``stem_stride[a] * 2 ** len(encoder_blocks)``
    (D by 8, H and W by 16 with the defaults).

    Args:
        in_channels: input channels.
        out_channels: classes, background included.
        encoder_channels: stem and stage channels; the last two must equal (DeTrans runs on both levels).
        encoder_blocks: residual blocks per encoder stage.
        stem_stride: stride of the stem convolution per spatial axis (also the final upsampling factor).
        use_detrans: False for the ablation without DeTrans (the decoder reads the CNN features directly).
        num_heads, num_layers, mlp_dim, num_points, dropout_rate: DeTrans settings.
        norm_name: MONAI norm factory name/arguments (release default: instance norm with affine).
        act_name: MONAI activation factory name/arguments (release default: LeakyReLU 0.01).
        deep_supervision: return the four outputs in training mode.
        cotr_axis_order: sample with the release's axis order (needed for released weights), see
            :class:`~monai_ext.networks.blocks.MSDeformableAttention`.
        core: DeTrans sampling core, ``"fast"`` or ``"grid_sample"``.

    Shapes:
        input ``(B, in_channels, D, H, W)``; output ``(B, out_channels, D, H, W)`` (or the deep-supervision list).

    Raises:
        ValueError: for bad settings, and in ``forward`` for a wrong rank, channel count, or sizes that are
            not divisible as above (the message names the padding to use).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 14,
        encoder_channels: Sequence[int] = (64, 192, 384, 384),
        encoder_blocks: Sequence[int] = (3, 3, 2),
        stem_stride: Sequence[int] = (1, 2, 2),
        use_detrans: bool = True,
        num_heads: int = 6,
        num_layers: int = 6,
        mlp_dim: int = 1536,
        num_points: int = 4,
        dropout_rate: float = 0.1,
        norm_name: tuple | str = _NORM,
        act_name: tuple | str = _ACT,
        deep_supervision: bool = True,
        cotr_axis_order: bool = False,
        core: str = "fast",
    ) -> None:
        super().__init__()
        spatial_dims = 3
        encoder_channels, encoder_blocks, stem_stride = list(encoder_channels), list(encoder_blocks), list(stem_stride)
        if min(in_channels, out_channels) < 1:
            raise ValueError(f"in_channels and out_channels must be positive, got {in_channels}, {out_channels}.")
        if len(encoder_channels) != len(encoder_blocks) + 1 or len(encoder_blocks) < 2:
            raise ValueError(
                f"need one more encoder channel count than stages and at least 2 stages, got channels "
                f"{encoder_channels} and blocks {encoder_blocks}."
            )
        if min(encoder_channels) < 1 or min(encoder_blocks) < 1 or len(stem_stride) != 3 or min(stem_stride) < 1:
            raise ValueError(
                f"encoder_channels, encoder_blocks and stem_stride (3 entries) must be positive, got "
                f"{encoder_channels}, {encoder_blocks}, {stem_stride}."
            )
        if use_detrans and encoder_channels[-1] != encoder_channels[-2]:
            raise ValueError(
                f"DeTrans runs on the last two encoder levels and needs them equally wide, got {encoder_channels[-2:]}."
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.deep_supervision = deep_supervision
        self.divisors = [s * 2 ** len(encoder_blocks) for s in stem_stride]
        conv = Conv[Conv.CONV, spatial_dims]
        conv_t = Conv[Conv.CONVTRANS, spatial_dims]

        self.stem = nn.Sequential(
            conv(in_channels, encoder_channels[0], kernel_size=7, stride=stem_stride, padding=3, bias=False),
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
                encoder_channels[-1], num_levels=2, num_layers=num_layers, mlp_dim=mlp_dim, num_heads=num_heads,
                num_points=num_points, dropout_rate=dropout_rate, act="gelu", spatial_dims=spatial_dims,
                cotr_axis_order=cotr_axis_order, core=core,
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
        self.final_upsample = nn.Upsample(scale_factor=tuple(float(s) for s in stem_stride), mode="trilinear")
        self.out_conv = conv(encoder_channels[0], out_channels, kernel_size=1)
        self._init_convolutions()

    def _init_convolutions(self) -> None:
        """The release's initialisation: Kaiming-normal (fan out) convolutions, norms at weight 1 and bias 0."""
        for m in self.modules():
            if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, (nn.BatchNorm3d, nn.InstanceNorm3d, nn.GroupNorm)) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError naming the fix for an input CoTr cannot take."""
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"CoTr expects an input (B, {self.in_channels}, D, H, W), got shape {list(x.shape)}.")
        sizes = list(x.shape[2:])
        if any(s % d for s, d in zip(sizes, self.divisors)):
            padded = [-(-s // d) * d for s, d in zip(sizes, self.divisors)]
            raise ValueError(
                f"CoTr needs spatial sizes divisible by {self.divisors} (D, H, W), got {sizes}: pad the input to "
                f"{padded} (e.g. monai.transforms.DivisiblePad(k={self.divisors})) or infer with a sliding window "
                f"whose roi_size is a multiple of {self.divisors}."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        self.check_input(x)
        feats = [self.stem(x)]
        for stage in self.encoder_stages:
            feats.append(stage(feats[-1]))
        if self.detrans is not None:
            feats[-2], feats[-1] = self.detrans(feats[-2:])
        x = feats[-1]
        outputs = []
        for j, (up, block, head) in enumerate(zip(self.upsamples, self.decoder_blocks, self.deep_heads)):
            x = block(up(x) + feats[-2 - j])
            outputs.append(head(x))
        result = self.out_conv(self.final_upsample(x))
        if self.training and self.deep_supervision:
            return [result, *reversed(outputs)]  # full, then levels shallow to deep
        return result


# the release's ResTranUnet keys (after an optional "module." / "U_ResTran3D." prefix) -> ours
_RELEASE_RULES = [
    (r"^backbone\.conv1\.", "stem.0."),
    (r"^backbone\.norm1\.", "stem.1."),
    (r"^backbone\.layer(\d+)\.(\d+)\.conv1\.", lambda m: f"encoder_stages.{int(m[1]) - 1}.{m[2]}.conv."),
    (r"^backbone\.layer(\d+)\.(\d+)\.norm1\.", lambda m: f"encoder_stages.{int(m[1]) - 1}.{m[2]}.norm."),
    (r"^backbone\.layer(\d+)\.(\d+)\.downsample\.", lambda m: f"encoder_stages.{int(m[1]) - 1}.{m[2]}.downsample."),
    (r"^encoder_Detrans\.encoder\.layers\.", "detrans.layers."),
    (r"^encoder_Detrans\.level_embed$", "detrans.level_embed"),
    (r"^transposeconv_stage(\d+)\.", "upsamples.{level}."),
    (r"^stage(\d+)_de\.resconv(\d)\.conv\.", "decoder_blocks.{level}.conv{1}."),
    (r"^stage(\d+)_de\.resconv(\d)\.norm\.", "decoder_blocks.{level}.norm{1}."),
    (r"^ds(\d+)_cls_conv\.", "deep_heads.{level}."),
    (r"^cls_conv\.", "out_conv."),
]


def convert_cotr_release_state_dict(state_dict: Mapping[str, torch.Tensor], num_stages: int = 3) -> dict:
    """Map a state dict saved by the released CoTr (``ResTranUnet``) onto :class:`CoTr`'s parameter names.

    Accepts keys with or without the ``module.`` (DataParallel) and ``U_ResTran3D.`` prefixes, and a checkpoint
    dict holding the weights under ``state_dict`` (nnU-Net's ``.model`` files) or ``network_weights``.
    ``num_stages`` is the number of encoder stages (3 in the release; the release's decoder stage ``k`` is our
    decoder block ``num_stages - 1 - k``).

    Raises:
        KeyError: for a key no rule maps (the message names it).
    """
    for holder in ("state_dict", "network_weights", "model"):
        if holder in state_dict and isinstance(state_dict[holder], Mapping):
            state_dict = state_dict[holder]
    converted = {}
    for key, value in state_dict.items():
        name = re.sub(r"^(module\.)?(U_ResTran3D\.)?", "", key)
        for pattern, target in _RELEASE_RULES:
            match = re.match(pattern, name)
            if match is None:
                continue
            if callable(target):
                prefix = target(match)
            else:
                groups = match.groups()
                level = num_stages - 1 - int(groups[0]) if groups else 0
                prefix = target.format(*groups, level=level)
            converted[prefix + name[match.end() :]] = value
            break
        else:
            raise KeyError(f"no CoTr parameter for the release key {key!r}.")
    return converted


def load_cotr_release(state_dict: Mapping[str, torch.Tensor], strict: bool = True, **kwargs) -> CoTr:
    """Build :class:`CoTr` with the release's sampling order (``cotr_axis_order=True``) and load a released
    checkpoint's weights (see :func:`convert_cotr_release_state_dict`). ``out_channels`` defaults to the
    checkpoint's class count; other ``kwargs`` go to :class:`CoTr`."""
    converted = convert_cotr_release_state_dict(state_dict, len(kwargs.get("encoder_blocks", (3, 3, 2))))
    kwargs.setdefault("out_channels", converted["out_conv.weight"].shape[0])
    kwargs.setdefault("in_channels", converted["stem.0.weight"].shape[1])
    kwargs.setdefault("cotr_axis_order", True)
    net = CoTr(**kwargs)
    net.load_state_dict(converted, strict=strict)
    return net
