from monai_ext.handlers.staged_output import StagedOutput

__all__ = ["StagedOutput"]
