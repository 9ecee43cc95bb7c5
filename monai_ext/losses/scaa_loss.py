"""SCAA's training loss: Dice (Tversky, alpha = beta = 0.5) on the sampled slices plus an auxiliary 3D Dice."""

from __future__ import annotations

import torch
from monai.losses import DiceLoss, TverskyLoss
from torch.nn import functional as F
from torch.nn.modules.loss import _Loss

__all__ = ["SCAALoss"]


class SCAALoss(_Loss):
    """Loss of SCAA (Tang et al., WACV 2021, https://arxiv.org/abs/2012.09279): ``Tversky(slices) + aux_weight *
    Dice(aux)``.

    The 2D term is MONAI's :class:`~monai.losses.TverskyLoss` with ``alpha = beta = 0.5`` (the soft Dice) on the
    slice predictions; the 3D term is :class:`~monai.losses.DiceLoss` on the auxiliary head's output against the
    label resized (nearest) to that output's size (half resolution). Both use softmax and one-hot targets, with
    the background included.

    Args:
        aux_weight: weight of the auxiliary 3D term (our reading: 1, the paper gives none).
        alpha, beta: Tversky weights of false positives / negatives (paper: 0.5, 0.5).
        include_background: whether the background channel counts in both terms.

    Shapes:
        ``input``: ``[slice_logits, aux_logits]`` as :class:`~monai_ext.networks.nets.SCAA` returns them for given
        slice indices (the main output first): ``(B, K, *spatial_s)`` and ``(B, K, *spatial_a)``.
        ``target``: ``(label_slices, label)`` as :class:`~monai_ext.engines.RandomSlicesPrepareBatch` returns them:
        ``(B, 1, *spatial_s)`` and ``(B, 1, *spatial)`` with class indices.

    Raises:
        ValueError: for ``aux_weight < 0``; in ``forward`` when input or target is not two 5D tensors (input a list
            ``[slice_logits, aux_logits]``), or the slice label does not match the slice logits.
    """

    def __init__(
        self, aux_weight: float = 1.0, alpha: float = 0.5, beta: float = 0.5, include_background: bool = True
    ) -> None:
        super().__init__()
        if aux_weight < 0:
            raise ValueError(f"aux_weight must be >= 0, got {aux_weight}.")
        self.aux_weight = aux_weight
        self.slice_loss = TverskyLoss(
            include_background=include_background, to_onehot_y=True, softmax=True, alpha=alpha, beta=beta
        )
        self.aux_loss = DiceLoss(include_background=include_background, to_onehot_y=True, softmax=True)

    def forward(self, input: list[torch.Tensor], target: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        for name, pair in (("input", input), ("target", target)):
            if not (
                isinstance(pair, (tuple, list))
                and len(pair) == 2
                and all(torch.is_tensor(t) and t.dim() == 5 for t in pair)
            ):
                raise ValueError(
                    f"SCAALoss takes {name} as two 5D tensors: input [slice_logits, aux_logits] from "
                    f"SCAA(x, slice_indices), target (label_slices, label) from RandomSlicesPrepareBatch; got "
                    f"{type(pair).__name__}."
                )
        slices, aux = input
        label_slices, label = target
        if label_slices.shape[0] != slices.shape[0] or label_slices.shape[2:] != slices.shape[2:]:
            raise ValueError(
                f"label_slices {list(label_slices.shape)} does not match slice_logits {list(slices.shape)}: "
                f"both must hold the same slices."
            )
        aux_label = F.interpolate(label.float(), size=aux.shape[2:], mode="nearest")
        return self.slice_loss(slices, label_slices) + self.aux_weight * self.aux_loss(aux, aux_label)
