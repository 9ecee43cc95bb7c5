"""The thickened 2D network: a 2D ResNet-50 + DeepLabV3+-style decoder segmenting k slices given as channels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.inferers import Inferer
from monai.networks.blocks import Convolution
from monai.networks.nets import ResNet
from torch import nn
from torch.nn.functional import interpolate

from monai_ext.networks.blocks.multiplexing import EarlyStageMultiplexing
from monai_ext.networks.blocks.slice_sensitive_attention import ConcatLink, DotLink, SliceSensitiveAttention
from monai_ext.networks.checks import check_input
from monai_ext.networks.registry import NetworkEntry, register_network

__all__ = ["CONFIGS", "Thick2DNet", "Thickened2DNet", "load_torchvision_resnet", "thick2d_inferer"]

# the paper's Table 3 rows: plain thick input, + ESM, + ESM + SSA, and two alternatives to SSA
CONFIGS = ("plain", "esm", "esm_ssa", "esm_concat", "esm_dot")


class _EarlyStage(nn.Module):
    """The stem and first stage on the whole thickened input (no multiplexing): ``(fused, fused[:, None])``."""

    def __init__(self, early: nn.Module) -> None:
        super().__init__()
        self.early = early

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.early(x)
        return y, y.unsqueeze(1)


class Thickened2DNet(nn.Module):
    """Thickened 2D network (Yu et al., "Thickened 2D Networks for Efficient 3D Medical Image Segmentation", 2019,
    https://arxiv.org/abs/1904.01150): a 2D network that segments ``k`` consecutive slices fed as channels.

    No code was published; the layout is our reading of the paper (docs/thick2d.md lists each choice):

    - backbone: MONAI's 2D :class:`~monai.networks.nets.ResNet` (bottleneck blocks, ``layers`` (3, 4, 6, 3) and
      ``block_inplanes`` (64, 128, 256, 512) = ResNet-50), 7x7 stride-2 stem and max pool; with
      ``output_stride=16`` the last stage is dilated instead of strided, as torchvision's
      ``replace_stride_with_dilation=[False, False, True]`` (DeepLabV3+); 32 keeps it strided;
    - early stage (stem + first stage): on the whole thickened input (``"plain"``), or, with early-stage
      multiplexing (``"esm*"``, :class:`~monai_ext.networks.blocks.EarlyStageMultiplexing`), on each mini-group of
      ``group_size`` slices with shared weights, the outputs concatenated and compressed to half, then to the
      first stage's width (256 for ResNet-50: the rest of the backbone runs once on the fused map);
    - decoder (DeepLabV3+ without ASPP): the last stage projected to ``decoder_channels`` by a 1x1 conv (where
      ASPP was), upsampled to the early-stage resolution (1/4), concatenated with the early-stage map projected to
      ``low_level_channels`` (48), two 3x3 convs to ``decoder_channels``;
    - head: a 1x1 conv to ``k * out_channels`` (``"plain"``, ``"esm"``); with a link block (``"esm_ssa"``:
      :class:`~monai_ext.networks.blocks.SliceSensitiveAttention`, ``"esm_concat"``, ``"esm_dot"``), the decoder
      map is linked to each mini-group's pre-fusion map and a head shared by the mini-groups predicts that
      mini-group's ``group_size`` slices; the logits are upsampled bilinearly to the input size.

    All convolutions have norm ``norm_name`` and activation ``act_name`` except the heads. Pretrained weights:
    ``pretrained_path`` names a torchvision-format ResNet state dict (``conv1.weight``, ``layer1.0.conv1.weight``,
    ...), see :func:`load_torchvision_resnet`; nothing is downloaded.

    Slab layout: the network segments ONE group of ``k = num_slices`` consecutive slices, a slab
    ``(B, in_channels, H, W, k)`` with the slices on the last axis, and returns ``(B, out_channels, H, W, k)``. That
    is the layout :class:`~monai_ext.inferers.SliceGroupInferer` gives it after moving the volume's slice axis
    (``spatial_dim``) last; the inferer slides the groups over a whole volume (stride 1 in the paper) and averages
    every slice's logits. Inside, the slices are folded into channels, slice-major (channel ``s * C + c``). With
    ESM the early stage of a mini-group depends on that mini-group alone: :meth:`early_features` and
    :meth:`forward_from_early` split ``forward`` there, so that the inferer (``share_early_stage``) computes it once
    per mini-group of a volume instead of once per overlapping group. The logits come at the decoder's resolution
    (1/4 of the slice size) and :meth:`upsample` brings them to it, slice by slice; the inferer can average the
    groups' logits first and upsample each slice once (the two commute).

    Args:
        in_channels: channels per slice (1 for CT).
        out_channels: classes, background included.
        num_slices: ``k``, slices per group (12 or 15 in the paper); a multiple of ``group_size`` with ESM.
        config: one of :data:`CONFIGS`.
        group_size: slices per mini-group (3: one RGB stem input).
        layers, block_inplanes: ResNet stages (ResNet-50 by default; smaller for tests and demos).
        output_stride: 16 (dilated last stage, DeepLabV3+) or 32.
        decoder_channels: channels of the decoder (and of the link blocks).
        low_level_channels: channels of the projected early-stage map in the decoder.
        norm_name, act_name: MONAI norm and activation of the backbone-external convolutions (the ResNet itself
            uses batch norm and ReLU).
        link_norm_name: output norm of the link block: ``"switchable"`` (the paper) or a MONAI norm name.
        ssa_pool_size: pooled size of the SSA affinity (32).
        pretrained_path: optional torchvision ResNet state dict file to initialise the backbone from.

    Shapes:
        input ``(B, in_channels, H, W, num_slices)``; output ``(B, out_channels, H, W, num_slices)`` (logits).
        ``H, W >= 32``.

    Raises:
        ValueError: for an unknown ``config``, non-positive sizes, ``num_slices`` not a multiple of ``group_size``
            with ESM, ``output_stride`` not 16 or 32; in ``forward`` for an input of the wrong rank or channel
            count, slices smaller than 32 x 32, or other than ``num_slices`` slices (a whole volume: run it
            through :class:`~monai_ext.inferers.SliceGroupInferer`).
    """

    __constants__ = ["use_link"]

    compile_methods = ("forward", "early_features", "forward_from_early")
    """What :func:`~monai_ext.networks.compile_network` compiles: ``forward`` and the two halves the sharing inferer
    calls."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        num_slices: int = 12,
        config: str = "esm_ssa",
        group_size: int = 3,
        layers: Sequence[int] = (3, 4, 6, 3),
        block_inplanes: Sequence[int] = (64, 128, 256, 512),
        output_stride: int = 16,
        decoder_channels: int = 256,
        low_level_channels: int = 48,
        norm_name: tuple | str = "batch",
        act_name: tuple | str = ("relu", {"inplace": True}),
        link_norm_name: tuple | str = "switchable",
        ssa_pool_size: int = 32,
        pretrained_path: str | None = None,
    ) -> None:
        super().__init__()
        if config not in CONFIGS:
            raise ValueError(f"config must be one of {CONFIGS}, got {config!r}.")
        sizes = [in_channels, out_channels, num_slices, group_size, decoder_channels, low_level_channels]
        if min(sizes) < 1:
            raise ValueError(
                "in_channels, out_channels, num_slices, group_size, decoder_channels and low_level_channels must be "
                f"positive, got {sizes}."
            )
        esm = config != "plain"
        if esm and num_slices % group_size:
            raise ValueError(
                f"num_slices ({num_slices}) must be a multiple of group_size ({group_size}) with early-stage "
                f"multiplexing (config {config!r}); the paper uses 12 or 15 slices in mini-groups of 3."
            )
        if output_stride not in (16, 32):
            raise ValueError(f"output_stride must be 16 (dilated last stage) or 32, got {output_stride}.")
        if len(layers) != 4 or len(block_inplanes) != 4:
            raise ValueError(
                f"layers and block_inplanes need 4 stages each, got {list(layers)}, {list(block_inplanes)}."
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_slices = num_slices
        self.config = config
        self.group_size = group_size
        self.num_groups = num_slices // group_size if esm else 1
        self.slices_per_head = group_size if config in ("esm_ssa", "esm_concat", "esm_dot") else num_slices
        self.use_link = config in ("esm_ssa", "esm_concat", "esm_dot")

        stem_in = (group_size if esm else num_slices) * in_channels
        resnet = ResNet(
            "bottleneck",
            list(layers),
            list(block_inplanes),
            spatial_dims=2,
            n_input_channels=stem_in,
            conv1_t_size=7,
            conv1_t_stride=2,
            feed_forward=False,
            bias_downsample=False,
        )
        if output_stride == 16:
            _dilate_last_stage(resnet.layer4)
        early = nn.Sequential(resnet.conv1, resnet.bn1, resnet.act, resnet.maxpool, resnet.layer1)
        early_channels = 4 * block_inplanes[0]  # bottleneck expansion 4
        if esm:
            self.early_stage: nn.Module = EarlyStageMultiplexing(
                early, num_slices * in_channels, self.num_groups, early_channels, early_channels, 2, norm_name, act_name
            )
        else:
            self.early_stage = _EarlyStage(early)
        self.layer2, self.layer3, self.layer4 = resnet.layer2, resnet.layer3, resnet.layer4

        def conv(i: int, o: int, kernel_size: int) -> Convolution:
            return Convolution(2, i, o, kernel_size=kernel_size, norm=norm_name, act=act_name, bias=False)

        self.high_proj = conv(4 * block_inplanes[3], decoder_channels, 1)  # in place of ASPP
        self.low_proj = conv(early_channels, low_level_channels, 1)
        self.decoder = nn.Sequential(
            conv(decoder_channels + low_level_channels, decoder_channels, 3),
            conv(decoder_channels, decoder_channels, 3),
        )
        link: nn.Module = nn.Identity()
        group_proj: nn.Module = nn.Identity()
        if config == "esm_ssa":
            link = SliceSensitiveAttention(2, decoder_channels, ssa_pool_size, link_norm_name)
        elif config == "esm_concat":
            link = ConcatLink(2, decoder_channels, link_norm_name)
        elif config == "esm_dot":
            link = DotLink(2, decoder_channels, link_norm_name)
        if self.use_link and early_channels != decoder_channels:
            group_proj = conv(early_channels, decoder_channels, 1)
        self.link = link
        self.group_proj = group_proj
        self.head = nn.Conv2d(decoder_channels, self.slices_per_head * out_channels, kernel_size=1)
        # the maps run channels-last (the slices stacked as channels come that way): with weights in another layout
        # every convolution converts its weight at every call
        self.to(memory_format=torch.channels_last)
        if pretrained_path is not None:
            load_torchvision_resnet(self, pretrained_path)

    def torchvision_modules(self) -> dict[str, nn.Module]:
        """This network's modules under torchvision's ResNet names (``conv1``, ``bn1``, ``layer1`` ... ``layer4``)."""
        early = self.early_stage.early
        return {
            "conv1": early[0],
            "bn1": early[1],
            "layer1": early[4],
            "layer2": self.layer2,
            "layer3": self.layer3,
            "layer4": self.layer4,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One group: ``(B, in_channels, H, W, num_slices)`` to logits ``(B, out_channels, H, W, num_slices)``."""
        if not torch.jit.is_scripting():  # the checks are plain Python; a scripted network skips them
            # the backbone downsamples 32 times
            check_input(x, "Thickened2DNet", self.in_channels, spatial_dims=3, min_size=(32, 32, 1))
            if x.shape[-1] != self.num_slices:
                raise ValueError(
                    f"Thickened2DNet segments one group of {self.num_slices} slices (B, C, H, W, {self.num_slices}), "
                    f"got {x.shape[-1]} slices (shape {list(x.shape)}); run a whole volume through "
                    f"monai_ext.inferers.SliceGroupInferer(num_slices={self.num_slices})."
                )
        b, c, h, w, k = x.shape
        t = x.permute(0, 4, 1, 2, 3).reshape(b, k * c, h, w)  # (B, k*C, H, W): channel s*C + c is slice s
        fused, groups = self.early_stage(t)  # (B, F, H/4, W/4), (B, G, E, H/4, W/4)
        feat = self._decode(fused)
        if self.use_link:
            shared = self.link.shared(feat)  # e.g. SSA's query, the same for every mini-group
            logits = torch.cat([self._head(feat, groups[:, g], shared) for g in range(self.num_groups)], dim=1)
        else:
            logits = self.head(feat)  # (B, k*O, H/4, W/4)
        return self.upsample(self._slab(logits), (h, w))

    def _decode(self, fused: torch.Tensor) -> torch.Tensor:
        """The fused map ``(B, F, H/4, W/4)`` through the backbone and decoder: ``(B, D, H/4, W/4)``."""
        high = self.high_proj(self.layer4(self.layer3(self.layer2(fused))))  # (B, D, H/16 or H/32, ...)
        high = interpolate(high, size=fused.shape[2:], mode="bilinear", align_corners=False)
        return self.decoder(torch.cat([high, self.low_proj(fused)], dim=1))

    def _head(self, feat: torch.Tensor, group: torch.Tensor, shared: torch.Tensor | None) -> torch.Tensor:
        """With a link: the decoder map linked to one mini-group's pre-fusion map ``(B, E, H/4, W/4)`` (``shared``:
        the link's :meth:`shared` of ``feat``), then the shared head: that mini-group's logits ``(B, group_size * O,
        H/4, W/4)``."""
        return self.head(self.link(feat, self.group_proj(group), shared))

    def _slab(self, logits: torch.Tensor) -> torch.Tensor:
        """Head logits ``(B, k*O, h, w)`` (slice-major) as a slab ``(B, O, h, w, k)`` (a view)."""
        b, h, w = logits.shape[0], logits.shape[2], logits.shape[3]
        return logits.reshape(b, self.num_slices, self.out_channels, h, w).permute(0, 2, 3, 4, 1)

    def upsample(self, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Logits at the decoder's resolution ``(B, O, h, w, S)`` (any number of slices ``S``, e.g. a slab or a
        whole volume's average) upsampled bilinearly, each slice and class on its own, to ``(B, O, H, W, S)``,
        ``size = (H, W)``.

        The ``S`` slices are the channels of a channels-last ``(B*O, S, h, w)``, so the result comes out with its
        slices innermost, the layout of a ``(B, O, H, W, D)`` volume."""
        b, o, h, w, s = logits.shape
        height, width = int(size[0]), int(size[1])
        small = logits.contiguous().view(b * o, h, w, s).permute(0, 3, 1, 2)  # channels-last (B*O, S, h, w)
        big = interpolate(small, size=(height, width), mode="bilinear", align_corners=False)
        return big.permute(0, 2, 3, 1).reshape(b, o, height, width, s)

    @property
    def shares_early_stage(self) -> bool:
        """Whether the early stage runs on each mini-group alone (ESM), so that a whole-volume inferer can compute
        it once per mini-group with :meth:`early_features` and reuse it in every group that holds the mini-group
        (:meth:`forward_from_early`). False for ``"plain"``: there the stem sees the whole group."""
        return self.config != "plain"

    def _check_shares_early_stage(self) -> None:
        if not self.shares_early_stage:
            raise ValueError(
                "Thickened2DNet config 'plain' runs its early stage on the whole group: there are no mini-groups to "
                "share; run each group through forward."
            )

    def early_features(self, slices: torch.Tensor) -> torch.Tensor:
        """The early stage (stem and first stage, shared by the mini-groups with ESM) of mini-groups of
        ``group_size`` slices: the part of the network that depends on one mini-group alone.

        Args:
            slices: ``(N, in_channels, H, W, group_size)``, N mini-groups (of any groups or volumes).

        Returns:
            the pre-fusion maps ``(N, E, H/4, W/4)`` (``E`` = 4 ``block_inplanes[0]``); give each group's
            mini-group maps to :meth:`forward_from_early`.

        Raises:
            ValueError: for the ``"plain"`` configuration (no mini-groups), an input of the wrong rank, channel
                count or slice count, or slices smaller than 32 x 32.
        """
        self._check_shares_early_stage()
        check_input(slices, "Thickened2DNet.early_features", self.in_channels, spatial_dims=3, min_size=(32, 32, 1))
        n, c, h, w, s = slices.shape
        if s != self.group_size:
            raise ValueError(
                f"Thickened2DNet.early_features takes mini-groups of {self.group_size} slices "
                f"(N, C, H, W, {self.group_size}), got {s} slices (shape {list(slices.shape)})."
            )
        return self.early_stage.early(slices.permute(0, 4, 1, 2, 3).reshape(n, s * c, h, w))  # (N, E, H/4, W/4)

    def forward_from_early(
        self, early: Sequence[Sequence[torch.Tensor]], size: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Groups' logits from their mini-groups' :meth:`early_features`: :meth:`forward` on the groups, whose early
        stage gives the same maps.

        Args:
            early: for each of ``B`` groups, the :meth:`early_features` ``(E, H/4, W/4)`` of its ``G = num_slices /
                group_size`` mini-groups in slice order (a tensor ``(B, G, E, H/4, W/4)`` is one, used as it is;
                separate maps, e.g. cached ones shared by several groups, are stacked here into one).
            size: ``(H, W)``, the slice size of the groups, to upsample the logits to; None: the logits at the
                decoder's resolution (to average over groups before one :meth:`upsample`).

        Returns:
            logits ``(B, out_channels, H, W, num_slices)``, or ``(B, out_channels, H/4, W/4, num_slices)`` for
            ``size=None``.

        Raises:
            ValueError: for ``"plain"``, or other than ``G`` maps of ``E`` channels per group.
        """
        self._check_shares_early_stage()
        g, e = self.num_groups, self.early_stage.early_channels
        if any(len(row) != g or any(m.dim() != 3 or m.shape[0] != e for m in row) for row in early):
            raise ValueError(
                f"Thickened2DNet.forward_from_early takes, per group, the early_features of its {g} mini-groups, "
                f"each ({e}, H/4, W/4); got {[[list(m.shape) for m in row] for row in early]}."
            )
        if isinstance(early, torch.Tensor):
            maps = early  # (B, G, E, H/4, W/4)
        else:
            maps = torch.stack([m for row in early for m in row])  # (B * G, E, H/4, W/4), group-major
            maps = maps.reshape(len(early), g, *maps.shape[1:])
        feat = self._decode(self.early_stage.fuse(maps))
        if not self.use_link:
            logits = self.head(feat)
        else:
            shared = self.link.shared(feat)
            logits = torch.cat([self._head(feat, maps[:, i], shared) for i in range(g)], dim=1)
        slab = self._slab(logits)
        return slab if size is None else self.upsample(slab, size)


def _dilate_last_stage(stage: nn.Sequential) -> None:
    """Replace the stride 2 of a bottleneck stage by dilation 2 in the 3x3 convolutions after its first block."""
    for i, block in enumerate(stage):
        if i == 0:
            block.conv2.stride = (1, 1)
            block.downsample[0].stride = (1, 1)
        else:
            block.conv2.dilation = (2, 2)
            block.conv2.padding = (2, 2)


def load_torchvision_resnet(net: Thickened2DNet, path: str) -> None:
    """Initialise ``net``'s ResNet from a torchvision-format ResNet state dict saved with ``torch.save``.

    Keys ``conv1.*``, ``bn1.*``, ``layer1.*`` ... ``layer4.*`` are loaded (strictly, so the stage sizes must match
    the network's ``layers`` and ``block_inplanes``); ``fc.*`` is ignored. The stem convolution takes
    ``group_size * in_channels`` channels with ESM (3 for CT: the RGB weights as they are) or
    ``num_slices * in_channels`` without; when this is not 3 the RGB kernels are averaged and repeated, scaled by
    ``3 / channels`` so the response to a constant input is kept.

    Raises:
        ValueError: when the file holds no ``conv1.weight`` or a stage does not match.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "conv1.weight" not in state:
        raise ValueError(f"{path} is not a torchvision ResNet state dict (no 'conv1.weight'); keys: {list(state)[:5]}.")
    modules = net.torchvision_modules()
    for name, module in modules.items():
        sub = {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(name + ".")}
        if name == "conv1":
            weight = sub["weight"]  # (64, 3, 7, 7) for RGB
            channels = module.weight.shape[1]
            if weight.shape[1] != channels:
                weight = weight.mean(1, keepdim=True).repeat(1, channels, 1, 1) * (weight.shape[1] / channels)
            sub["weight"] = weight
        try:
            module.load_state_dict(sub, strict=True)
        except RuntimeError as e:
            raise ValueError(
                f"{path}: stage {name!r} does not match the network (layers / block_inplanes must be ResNet-50's to "
                f"load ResNet-50 weights): {e}"
            ) from e


Thick2DNet = Thickened2DNet


_BUNDLE_INFERER = {"num_slices": 12, "spatial_dim": 2, "stride": 1, "sw_batch_size": 4, "share_early_stage": True}


def thick2d_inferer(**overrides: Any) -> Inferer:
    """The thick2d bundle's whole-volume inferer (``configs/inference.json``): a
    :class:`~monai_ext.inferers.SliceGroupInferer` of 12-slice groups along spatial axis 2 (the last), stride 1 (the
    paper's), 4 groups per call, each mini-group's early stage computed once (``share_early_stage``: the same output
    up to fp32 round-off; ``share_early_stage=False`` runs the whole network per group).

    Args:
        overrides: any :class:`~monai_ext.inferers.SliceGroupInferer` argument, replacing these settings; give
            ``num_slices`` when the network was built with another ``k``.
    """
    from monai_ext.inferers import SliceGroupInferer  # here, not at the top: a network module needs no inferer

    return SliceGroupInferer(**{**_BUNDLE_INFERER, **overrides})


# one entry per row of the paper's Table 3 that the code builds: (name, config, title, row)
for _name, _config, _title, _row in (
    ("thick2d", "esm_ssa", "Thickened 2D (ESM + SSA)", "ESM + SSA"),
    ("thick2d_plain", "plain", "Thickened 2D (plain)", "thickened input without ESM"),
    ("thick2d_esm", "esm", "Thickened 2D (ESM)", "ESM"),
    ("thick2d_esm_concat", "esm_concat", "Thickened 2D (ESM + Concat)", "ESM + Concat"),
    ("thick2d_esm_dot", "esm_dot", "Thickened 2D (ESM + Dot)", "ESM + Dot"),
):
    register_network(
        NetworkEntry(
            name=_name,
            builder=Thickened2DNet,
            kind="2.5d",
            title=_title,
            paper=f"Yu et al. 2019, Table 3: {_row}",
            defaults={"config": _config},
            inferer=thick2d_inferer,
            bundle="thick2d",
            variant_of=None if _name == "thick2d" else "thick2d",
            patch=(512, 512, 12),
            method=3,
        )
    )
