from monai_ext.networks.nets.sshunet import SliceShiftUNet, SSHUNet

__all__ = ["SSHUNet", "SliceShiftUNet"]
