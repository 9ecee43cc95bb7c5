"""Data utilities: synthetic CT-like vessel/nodule phantoms, an MSD-layout demo dataset, checked datalists."""

from .datalist import check_datalist, load_datalist, split_datalist
from .synthetic import LABELS, make_phantom, write_msd_dataset

__all__ = ["LABELS", "check_datalist", "load_datalist", "make_phantom", "split_datalist", "write_msd_dataset"]
