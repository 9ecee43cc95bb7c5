"""Prepare-batch step that samples random axial slices of whole volumes for slice-wise training (SCAA)."""

from __future__ import annotations

from typing import Any

import torch
from monai.engines.utils import PrepareBatch
from monai.utils import CommonKeys

from monai_ext.networks.nets.scaa import take_slices

__all__ = ["RandomSlicesPrepareBatch"]


class RandomSlicesPrepareBatch(PrepareBatch):
    """``prepare_batch`` for :class:`monai.engines.SupervisedTrainer`: whole volumes in, ``num_slices`` random
    slices per volume trained.

    SCAA (Tang et al., WACV 2021) trains on one whole volume per step: the 3D encoder sees the volume, the 2D path
    only 16 random axial slices. This step draws ``min(num_slices, D)`` distinct slice indices per volume (sorted;
    torch's global generator, so ``monai.utils.set_determinism`` fixes them) and returns what the trainer passes on:

    - inputs: the image ``(B, C, *spatial)``;
    - targets: ``(label_slices, label)``, the label at the drawn slices ``(B, 1, *spatial with S slices)`` and the
      whole label ``(B, 1, *spatial)`` (for the auxiliary 3D loss), as :class:`~monai_ext.losses.SCAALoss` takes them;
    - network keyword ``slice_indices`` ``(B, S)``, so the trainer calls ``network(image, slice_indices=...)``
      (:class:`~monai_ext.networks.nets.SCAA` returns ``(slice_logits, aux_logits)``).

    Set the trainer's ``decollate=False`` and no train-time postprocessing / key metric: the prediction is a pair.

    Args:
        num_slices: slices per volume (paper: 16).
        slice_dim: tensor dimension of the slice axis in ``(B, C, *spatial)``, as the network's ``slice_dim``.
        image_key, label_key: keys of the batch dictionary.

    Raises:
        ValueError: for ``num_slices < 1`` or a bad ``slice_dim``; when called, for a missing key or image and label
            of different batch or spatial sizes.
    """

    def __init__(
        self,
        num_slices: int = 16,
        slice_dim: int = 4,
        image_key: str = CommonKeys.IMAGE,
        label_key: str = CommonKeys.LABEL,
    ) -> None:
        if num_slices < 1:
            raise ValueError(f"num_slices must be a positive integer, got {num_slices}.")
        if slice_dim not in (2, 3, 4, -1, -2, -3):
            raise ValueError(
                f"slice_dim must be a spatial dimension of (B, C, *3 spatial): 2, 3 or 4, got {slice_dim}."
            )
        self.num_slices = num_slices
        self.slice_dim = slice_dim % 5
        self.image_key = image_key
        self.label_key = label_key

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], tuple, dict[str, torch.Tensor]]:
        missing = [k for k in (self.image_key, self.label_key) if k not in batchdata]
        if missing:
            raise ValueError(f"RandomSlicesPrepareBatch needs batch keys {missing}; the batch has {list(batchdata)}.")
        image = batchdata[self.image_key].to(device=device, non_blocking=non_blocking, **kwargs)
        label = batchdata[self.label_key].to(device=device, non_blocking=non_blocking, **kwargs)
        if (
            image.dim() != 5
            or label.dim() != 5
            or image.shape[0] != label.shape[0]
            or image.shape[2:] != label.shape[2:]
        ):
            raise ValueError(
                f"image and label must be (B, C, *3 spatial) of the same batch and spatial size, got "
                f"{list(image.shape)} and {list(label.shape)}."
            )
        depth = image.shape[self.slice_dim]
        s = min(self.num_slices, depth)
        indices = torch.stack([torch.randperm(depth)[:s].sort().values for _ in range(image.shape[0])])  # (B, S)
        indices = indices.to(image.device)
        return image, (take_slices(label, indices, self.slice_dim), label), (), {"slice_indices": indices}
