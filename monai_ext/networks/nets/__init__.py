from monai_ext.networks.nets import baselines  # noqa: F401  (registers MONAI's baselines: dynunet_3d, ...)
from monai_ext.networks.nets.cotr import CoTr, cotr_inferer
from monai_ext.networks.nets.rsanet import RSANet
from monai_ext.networks.nets.scaa import SCAA, SliceContext, SpatialContextAwareNet, scaa_inferer, scaa_sizes
from monai_ext.networks.nets.sshunet import SSH_UNET_PATCH, SliceShiftUNet, SSHUNet, sshunet_inferer
from monai_ext.networks.nets.thick2d import Thick2DNet, Thickened2DNet, thick2d_inferer

__all__ = [
    "CoTr",
    "cotr_inferer",
    "RSANet",
    "SCAA",
    "SliceContext",
    "SSHUNet",
    "SSH_UNET_PATCH",
    "SpatialContextAwareNet",
    "SliceShiftUNet",
    "Thick2DNet",
    "Thickened2DNet",
    "scaa_inferer",
    "scaa_sizes",
    "sshunet_inferer",
    "thick2d_inferer",
]
