"""Loaders for the authors' released checkpoints: key maps and axis switches.

The authors' code orders axes its own way; monai_ext networks follow the slice-axis rule of
:mod:`monai_ext.networks.layout` (``(B, C, H, W, D)``, slices on spatial axis ``spatial_dim``). Every translation
between the two, state-dict keys and tensor axes, lives in this module and nowhere else.
"""

from __future__ import annotations

__all__: list[str] = []

# --- SSH-UNet (github.com/cugwu/ssh-unet) ---

# --- CoTr (github.com/YtongXie/CoTr) ---

# --- RSANet (github.com/tinymilky/RSANet) ---
