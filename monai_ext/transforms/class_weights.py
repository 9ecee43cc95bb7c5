"""Undo a class-weighted loss at inference: turn the weighted posterior a network learned back into the true one.

A network trained with cross-entropy whose class ``c`` is weighted ``w_c`` learns probabilities proportional to
``w_c * p(c | x)``, so ``argmax`` favours the heavily weighted classes. Dividing each probability by its class
weight and renormalising recovers ``p(c | x)`` (Bayes' rule with the weights as a changed prior); ``argmax`` of the
result is then the minimum-error decision. For two classes this is thresholding the foreground probability at
``w_1 / (w_0 + w_1)`` instead of 0.5.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

__all__ = ["ClassWeightCorrection", "ClassWeightCorrectiond"]


class ClassWeightCorrection(Transform):
    """Divide class probabilities by the training loss's class weights and renormalise over the classes.

    Args:
        weights: one positive weight per class, in channel order (floats, 0-d tensors or a 1-D tensor), the
            training loss's: for RSANet's loss ``monai_ext.losses.exponential_class_weights(fractions)`` with the
            class fractions of the training labels (``class_fractions(labels, C)``; a lesion fraction for two
            classes). Equal weights change nothing.
        eps: floor of the per-voxel normaliser.

    Shapes:
        input: probabilities ``(C, *spatial)`` (e.g. after ``Activations(softmax=True)``), any float dtype;
        output: the same shape, dtype and type (MetaTensor metadata kept); channels sum to 1.

    Raises:
        ValueError: when a weight is not positive and finite, or when the input does not have ``C`` channels.
    """

    def __init__(self, weights: Sequence[float | torch.Tensor], eps: float = 1e-12) -> None:
        w = torch.stack([torch.as_tensor(v, dtype=torch.float64).reshape(()) for v in weights])
        if w.numel() < 2 or not bool(torch.all(torch.isfinite(w) & (w > 0))):
            raise ValueError(f"weights must be two or more positive finite numbers (one per class), got {w.tolist()}.")
        self.weights = w
        self.eps = eps

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if img.dim() < 2 or img.shape[0] != self.weights.numel():
            raise ValueError(
                f"expected probabilities (C, *spatial) with C = {self.weights.numel()} classes (one per weight), "
                f"got shape {list(img.shape)}; apply this after the softmax, before any argmax."
            )
        w = self.weights.to(device=img.device, dtype=img.dtype).reshape(-1, *([1] * (img.dim() - 1)))
        scaled = img / w
        return scaled / scaled.sum(dim=0, keepdim=True).clamp_min(self.eps)


class ClassWeightCorrectiond(MapTransform):
    """Dictionary version of :class:`ClassWeightCorrection`; ``keys`` name probability maps ``(C, *spatial)``."""

    def __init__(
        self,
        keys: KeysCollection,
        weights: Sequence[float | torch.Tensor],
        eps: float = 1e-12,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.correct = ClassWeightCorrection(weights, eps)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.correct(d[key])
        return d
