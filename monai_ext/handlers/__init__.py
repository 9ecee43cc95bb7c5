from monai_ext.handlers.checkpoint import AtomicCheckpointSaver, resume_from, save_atomic
from monai_ext.handlers.distributed import shutdown_distributed
from monai_ext.handlers.output_as_list import OutputAsList
from monai_ext.handlers.staged_output import StagedOutput

__all__ = [
    "AtomicCheckpointSaver",
    "OutputAsList",
    "StagedOutput",
    "resume_from",
    "save_atomic",
    "shutdown_distributed",
]
