"""Three orthogonal views of one volume through one shared network (SSH-UNet's multi-view scheme)."""

from __future__ import annotations

import torch
from monai.networks.blocks.dynunet_block import get_conv_layer
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import nn

__all__ = ["MultiViewFuse", "MultiViewStack", "from_view", "to_view", "views_stackable"]

NUM_VIEWS = 3


def to_view(x: torch.Tensor, view: int) -> torch.Tensor:
    """Permute ``(B, C, D, H, W)`` so that view ``view``'s slice axis comes first among the spatial axes.

    View 0 slices along D (identity), view 1 along H (``(B, C, H, D, W)``), view 2 along W (``(B, C, W, H, D)``).
    The permutation is its own inverse, so :func:`from_view` is the same transposition.
    """
    if view == 0:
        return x
    return x.transpose(2, 2 + view)


def from_view(x: torch.Tensor, view: int) -> torch.Tensor:
    """Undo :func:`to_view`: bring a tensor in view ``view``'s layout back to ``(B, C, D, H, W)``."""
    return to_view(x, view)


def views_stackable(x: torch.Tensor) -> bool:
    """True when the three views of ``x`` have the same shape (D == H == W), so they can share one batch."""
    return x.shape[2] == x.shape[3] and x.shape[3] == x.shape[4]


class MultiViewStack(nn.Module):
    """Put the three orthogonal views of a volume into the batch, for one shared-weight network.

    Shapes:
        input ``(B, C, D, H, W)`` with ``D == H == W``; output ``(3B, C, D, D, D)``, views in the order
        slice-along-D, slice-along-H, slice-along-W (see :func:`to_view`).

    Raises:
        ValueError: for a non-5D input or a non-cubic one (run the network once per view on
            ``to_view(x, k)`` instead, as :class:`monai_ext.networks.nets.SSHUNet` does).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"MultiViewStack expects (B, C, D, H, W), got shape {list(x.shape)}.")
        if not views_stackable(x):
            raise ValueError(
                f"MultiViewStack needs a cubic volume (D == H == W) to batch the views, got {list(x.shape[2:])}; "
                "run the shared network on each to_view(x, k) separately instead."
            )
        return torch.cat([to_view(x, 0), to_view(x, 1), to_view(x, 2)], dim=0)


class MultiViewFuse(nn.Module):
    """Bring the three views back to ``(D, H, W)`` order, sum them, and map them to logits.

    The head follows the SSH-UNet release: 1x1x1 conv (``in -> in``, bias), norm, activation,
    1x1x1 conv (``in -> out``, bias). Parameter names ``conv1.conv.*`` and ``conv.conv.*`` match it.

    Args:
        spatial_dims: must be 3.
        in_channels: feature channels of each view.
        out_channels: output channels (classes).
        norm_name: norm between the two convs (MONAI factory name); the release uses a plain instance norm.
        act_name: activation between the two convs.
        dropout: dropout of the convs.

    Shapes:
        ``forward``: ``(3B, C, S, S, S)`` (views stacked as by :class:`MultiViewStack`) -> ``(B, out, S, S, S)``.
        ``fuse_views``: a list of three ``(B, C, *view_shape)`` tensors in view layout -> ``(B, out, D, H, W)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        norm_name: tuple | str = "instance",
        act_name: tuple | str = "leakyrelu",
        dropout: tuple | str | float | None = None,
    ) -> None:
        super().__init__()
        self.num_views = NUM_VIEWS
        if spatial_dims != 3:
            raise ValueError(
                f"MultiViewFuse fuses three views of a 3D volume: spatial_dims must be 3, got {spatial_dims}."
            )
        self.conv1 = get_conv_layer(
            3, in_channels, in_channels, kernel_size=1, stride=1, dropout=dropout, bias=True, act=None, norm=None,
            conv_only=False,
        )  # fmt: skip
        self.norm = get_norm_layer(name=norm_name, spatial_dims=3, channels=in_channels)
        self.act = get_act_layer(name=act_name)
        self.conv = get_conv_layer(
            3, in_channels, out_channels, kernel_size=1, stride=1, dropout=dropout, bias=True, act=None, norm=None,
            conv_only=False,
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] % self.num_views != 0:
            raise ValueError(f"MultiViewFuse expects the three views stacked in the batch, got batch {x.shape[0]}.")
        return self.fuse_views(list(x.chunk(self.num_views, dim=0)))

    @torch.jit.export
    def fuse_views(self, views: list[torch.Tensor]) -> torch.Tensor:
        fused = from_view(views[0], 0)
        for k in range(1, self.num_views):
            fused = fused + from_view(views[k], k)
        return self.conv(self.act(self.norm(self.conv1(fused))))
