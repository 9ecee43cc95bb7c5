"""Prepare-batch step that samples random slices of whole volumes for slice-wise training (SCAA)."""

from __future__ import annotations

from typing import Any

import torch
from monai.engines.utils import PrepareBatch
from monai.utils import CommonKeys

from monai_ext.networks.layout import DEFAULT_SPATIAL_DIM, check_spatial_dim, take_slices, tensor_dim

__all__ = ["RandomSlicesPrepareBatch"]


class RandomSlicesPrepareBatch(PrepareBatch):
    """``prepare_batch`` for :class:`monai.engines.SupervisedTrainer`: whole volumes in, ``num_slices`` random
    slices per volume trained.

    SCAA (Tang et al., WACV 2021) trains on one whole volume per step: the 3D encoder sees the volume, the 2D path
    only 16 random axial slices. This step draws ``min(num_slices, D)`` distinct slice indices per volume along
    ``spatial_dim`` (sorted; torch's global generator, so ``monai.utils.set_determinism`` fixes them) and returns
    what the trainer passes on:

    - inputs: the image ``(B, C, *spatial)``;
    - targets: ``(label_slices, label)``, the label at the drawn slices ``(B, 1, *spatial with S slices)`` and the
      whole label ``(B, 1, *spatial)`` (for the auxiliary 3D loss), as :class:`~monai_ext.losses.SCAALoss` takes them;
    - network keyword ``slice_indices`` ``(B, S)``, so the trainer's inferer calls ``network(image,
      slice_indices=...)`` (:class:`~monai_ext.networks.nets.SCAA` returns ``[slice_logits, aux_logits]``;
      :class:`~monai_ext.inferers.SliceTrainingPadInferer` pads volumes of any size for it).

    Set the trainer's ``decollate=False`` and no train-time postprocessing / key metric: the prediction is a list.

    With ``class_fraction > 0`` (not in the paper; for small structures that few slices hold) about that fraction
    of the ``S`` slices is drawn from the slices that hold each foreground class of the volume, shared equally
    between the classes present; the rest, and any share a class cannot fill, is drawn uniformly from the slices
    not yet drawn.

    Args:
        num_slices: slices per volume (paper: 16).
        class_fraction: fraction of the slices drawn class-balanced, in ``[0, 1]``; 0 (default) draws all of them
            uniformly, as the paper does.
        spatial_dim: the slice axis among the spatial axes, 0-2 (default 2, the last), as the network's.
        image_key, label_key: keys of the batch dictionary.

    Raises:
        ValueError: for ``num_slices < 1``, a bad ``spatial_dim`` or ``class_fraction``; when called, for a missing key
            or image and label of different batch or spatial sizes.
    """

    def __init__(
        self,
        num_slices: int = 16,
        spatial_dim: int = DEFAULT_SPATIAL_DIM,
        class_fraction: float = 0.0,
        image_key: str = CommonKeys.IMAGE,
        label_key: str = CommonKeys.LABEL,
    ) -> None:
        if num_slices < 1:
            raise ValueError(f"num_slices must be a positive integer, got {num_slices}.")
        if not 0.0 <= class_fraction <= 1.0:
            raise ValueError(f"class_fraction must lie in [0, 1], got {class_fraction}.")
        self.num_slices = num_slices
        self.class_fraction = class_fraction
        self.spatial_dim = check_spatial_dim(spatial_dim)
        self.image_key = image_key
        self.label_key = label_key

    def draw(self, label: torch.Tensor) -> torch.Tensor:
        """Sorted distinct slice indices ``(S,)`` for one label volume ``(1, *spatial)`` (class indices)."""
        axis = tensor_dim(self.spatial_dim, batched=False)
        depth = label.shape[axis]
        s = min(self.num_slices, depth)
        chosen = torch.zeros(depth, dtype=torch.bool)
        if self.class_fraction > 0:
            per_slice = label.movedim(axis, 0).reshape(depth, -1).cpu()  # (D, voxels)
            classes = [int(k) for k in per_slice.unique() if k > 0]
            budget = round(s * self.class_fraction)
            for i, k in enumerate(classes):
                quota = budget // len(classes) + (i < budget % len(classes))
                candidates = torch.nonzero((per_slice == k).any(dim=1) & ~chosen).flatten()
                chosen[candidates[torch.randperm(candidates.numel())[:quota]]] = True
        rest = torch.nonzero(~chosen).flatten()
        chosen[rest[torch.randperm(rest.numel())[: s - int(chosen.sum())]]] = True
        return torch.nonzero(chosen).flatten()

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
        indices = torch.stack([self.draw(lab) for lab in label])  # (B, S)
        indices = indices.to(image.device)
        return image, (take_slices(label, indices, self.spatial_dim), label), (), {"slice_indices": indices}
