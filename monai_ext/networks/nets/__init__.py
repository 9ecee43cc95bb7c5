from monai_ext.networks.nets.cotr import COTR_CONFIGS, CoTr, convert_cotr_release_state_dict, load_cotr_release
from monai_ext.networks.nets.rsanet import RSANet
from monai_ext.networks.nets.scaa import SCAA, SpatialContextAwareNet
from monai_ext.networks.nets.sshunet import SliceShiftUNet, SSHUNet
from monai_ext.networks.nets.thick2d import Thick2DNet, Thickened2DNet

__all__ = [
    "COTR_CONFIGS",
    "CoTr",
    "convert_cotr_release_state_dict",
    "load_cotr_release",
    "RSANet",
    "SCAA",
    "SSHUNet",
    "SpatialContextAwareNet",
    "SliceShiftUNet",
    "Thick2DNet",
    "Thickened2DNet",
]
