"""Blocks (``monai_ext.networks.blocks``), networks (``monai_ext.networks.nets``) and the registry that builds
every network by name (:func:`create_network`, :func:`list_networks`)."""

from monai_ext.networks.capture import capturing, compile_network
from monai_ext.networks.dropin import attach_block
from monai_ext.networks.registry import (
    KINDS,
    NetworkEntry,
    create_network,
    get_network_entry,
    list_networks,
    network_table,
    register_network,
)

__all__ = [
    "KINDS",
    "attach_block",
    "capturing",
    "compile_network",
    "NetworkEntry",
    "create_network",
    "get_network_entry",
    "list_networks",
    "network_table",
    "register_network",
]
