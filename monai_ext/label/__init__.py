"""MONAI Label plug-in: serve every monai_ext bundle (inference and training) from a local MONAI Label server.

Import :mod:`monai_ext.label.serve` without MONAI Label installed; the app and tasks need the label extra
(``pip install "monai-ext[label]"``).
"""

from monai_ext.label.serve import APP_DIR, serve, server_command

__all__ = ["APP_DIR", "serve", "server_command"]
