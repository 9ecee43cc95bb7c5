from monai_ext.networks.nets.rsanet import RSANet
from monai_ext.networks.nets.sshunet import SliceShiftUNet, SSHUNet

__all__ = ["RSANet", "SSHUNet", "SliceShiftUNet"]
