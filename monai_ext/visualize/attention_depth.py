"""SCAA's attention over depth (the paper's Fig. 2): for every axial slice, its MSFA weights over the 3D slices."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Compose, DivisiblePad, SpatialPad
from monai.utils import convert_to_tensor

from monai_ext.networks.layout import DEFAULT_SPATIAL_DIM, tensor_dim
from monai_ext.networks.nets.scaa import SpatialContextAwareNet
from monai_ext.visualize.figures import pyplot, save_png

__all__ = ["bundle_depth_attention_png", "depth_attention", "save_depth_attention_png"]


def depth_attention(net: SpatialContextAwareNet, image: torch.Tensor, slice_chunk: int = 16) -> list[np.ndarray]:
    """MSFA weights of ``net`` on one volume, averaged over the heads.

    The volume is zero-padded at its far ends to a size the network takes (as the bundle's
    :class:`~monai_ext.inferers.PadInferer` pads it), the 3D context is encoded once, and the slices go through the
    2D path ``slice_chunk`` at a time (:meth:`~monai_ext.networks.nets.SCAA.forward_slices` with
    ``return_attention=True``).

    Args:
        net: a :class:`~monai_ext.networks.nets.SCAA` with attention (configuration ``"SCAA"`` or ``"SCAA*"``).
        image: ``(C, *spatial)`` or ``(1, C, *spatial)``, slices on the network's ``spatial_dim``; any size.
        slice_chunk: slices per pass through the 2D path.

    Returns:
        one array per MSFA scale ``2 .. L``: ``(D, d_i)``, row ``z`` = the weights of slice ``z`` over the ``d_i``
        depth slices of ``F3D_i`` of the padded volume (rows sum to 1).

    Raises:
        ValueError: for a network without attention (CA, C-CA).
    """
    if net.msfa_mode != "attention":
        raise ValueError(f"depth_attention needs an SCAA with attention (SCAA or SCAA*), got {net.configuration!r}.")
    volume = image[0] if image.dim() == 5 else image  # (C, *spatial)
    pad = Compose([SpatialPad(net.min_size, method="end"), DivisiblePad(net.divisor, method="end")])
    x = convert_to_tensor(pad(volume), track_meta=False).unsqueeze(0)  # (1, C, *padded spatial)
    slices = torch.arange(volume.shape[tensor_dim(net.spatial_dim, batched=False)], device=x.device)
    valid = list(volume.shape[1:])  # the padded depth slices get no attention
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            context = net.encode_context(x)
            chunks = [
                net.forward_slices(x, context, idx, return_attention=True, valid_size=valid)[1]
                for idx in slices.split(slice_chunk)
            ]
    finally:
        net.train(was_training)
    return [torch.cat(scale, dim=1)[0].mean(dim=1).cpu().numpy() for scale in zip(*chunks)]  # (D, d_i) per scale


def save_depth_attention_png(
    attention: list[np.ndarray],
    path: str | Path,
    label: np.ndarray | None = None,
    title: str = "",
    spatial_dim: int = DEFAULT_SPATIAL_DIM,
) -> Path:
    """Plot :func:`depth_attention`'s maps side by side (x: 3D slice of ``F3D_i`` in image-slice units, y: axial
    slice), with the diagonal where the 3D slice holds the axial slice, and optionally the label's foreground
    fraction per axial slice beside them.

    Args:
        attention: ``(D, d_i)`` arrays, scales 2, 3, ...
        path: PNG to write (folders are created).
        label: optional label map ``(*spatial)`` (the three spatial axes) for the per-slice foreground profile.
        title: figure title.
        spatial_dim: the slice axis of ``label``, 0-2 (default 2, the last).
    """
    plt = pyplot()

    n = len(attention) + (label is not None)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.6), squeeze=False)
    for i, a in enumerate(attention):
        ax = axes[0, i]
        depth, slices = a.shape
        step = 2 ** (i + 2)  # F3D_i slice j covers axial slices j * 2^i .. (j + 1) * 2^i - 1
        shown = ax.imshow(a, aspect="auto", origin="lower", cmap="viridis", vmin=0, extent=(0, slices * step, 0, depth))
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
        ax.plot([0, depth], [0, depth], "w--", lw=0.8)
        ax.set_xlim(0, slices * step)
        ax.set_title(f"scale {i + 2}: {slices} 3D slices")
        ax.set_xlabel("3D slice (in axial slices)")
        if i == 0:
            ax.set_ylabel("axial slice z")
    if label is not None:
        ax = axes[0, -1]
        fractions = (np.moveaxis(label, spatial_dim, 0) > 0).reshape(label.shape[spatial_dim], -1).mean(axis=1)
        ax.plot(fractions, np.arange(len(fractions)))
        ax.set_ylim(0, len(fractions))
        ax.set_title("label foreground")
        ax.set_xlabel("fraction of the slice")
    fig.suptitle(title)
    fig.tight_layout()
    return save_png(fig, path, dpi=100)


def bundle_depth_attention_png(
    bundle_root: str | Path,
    dataset_dir: str | Path,
    ckpt_path: str | Path,
    path: str | Path,
    config_files: Sequence[str] = ("inference.json", "demo.json"),
    overrides: dict | None = None,
    case: int = 0,
) -> Path:
    """The attention-over-depth picture of a trained SCAA bundle on one ``test`` case of its datalist.

    The bundle's ``network_def`` and ``preprocessing`` come from ``config_files`` (in ``bundle_root/configs``, with
    ``overrides`` applied), the weights from ``ckpt_path``; the label beside the maps is the case's
    ``labelsTs`` file when there is one (MSD layout).
    """
    import nibabel as nib
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(Path(bundle_root) / "configs" / f) for f in config_files])
    for key, value in {"dataset_dir": str(dataset_dir), **(overrides or {})}.items():
        parser[key] = value
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(ckpt_path, weights_only=True))
    name = json.loads((Path(dataset_dir) / "dataset.json").read_text())["test"][case]
    image = parser.get_parsed_content("preprocessing")({"image": str(Path(dataset_dir) / name)})["image"]
    label_file = Path(dataset_dir) / name.replace("imagesTs", "labelsTs")
    label = np.asarray(nib.load(label_file).dataobj) if label_file.is_file() else None
    title = f"{net.configuration} on {Path(name).name}: MSFA weights of each axial slice (mean over heads)"
    maps = depth_attention(net, image)
    return save_depth_attention_png(maps, path, label=label, title=title, spatial_dim=net.spatial_dim)
