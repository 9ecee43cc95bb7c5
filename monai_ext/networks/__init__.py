"""Blocks (``monai_ext.networks.blocks``) and networks (``monai_ext.networks.nets``)."""
