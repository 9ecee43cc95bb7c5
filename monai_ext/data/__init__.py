"""Data utilities: synthetic CT-like vessel/nodule and brain-MRI-like lesion phantoms, an MSD-layout demo dataset,
checked datalists.

Modules: :mod:`.vessels` and :mod:`.lesions` (the phantoms), built from :mod:`.geometry` (shapes and smooth fields)
and :mod:`.checks` (argument checks); :mod:`.tasks` (task name -> case generator, ``dataset.json`` header);
:mod:`.decathlon` (the MSD-layout writer); :mod:`.datalist` (loading, checking and splitting datalists, and the
:class:`Datalist` that bundles read when the data are used); :mod:`.volume_checks` (reading volume files through
MONAI's readers, and the checks of a volume's grid, label values and size that the datalist check and
``ValidateImaged`` share).
"""

from .datalist import Datalist, check_datalist, load_datalist, split_datalist
from .decathlon import write_msd_dataset
from .lesions import LESION_LABELS, MODALITIES, make_lesion_phantom
from .vessels import LABELS, make_phantom

__all__ = [
    "Datalist",
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
