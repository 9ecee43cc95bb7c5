"""Data utilities: synthetic CT-like vessel/nodule and brain-MRI-like lesion phantoms, an MSD-layout demo dataset,
checked datalists."""

from .datalist import check_datalist, load_datalist, split_datalist
from .lesions import LESION_LABELS, MODALITIES, make_lesion_phantom
from .synthetic import LABELS, make_phantom, write_msd_dataset

__all__ = [
    "LABELS",
    "LESION_LABELS",
    "MODALITIES",
    "check_datalist",
    "load_datalist",
    "make_lesion_phantom",
    "make_phantom",
    "split_datalist",
    "write_msd_dataset",
]
