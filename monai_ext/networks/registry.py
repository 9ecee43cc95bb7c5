"""The network registry: every method, paper variant and MONAI baseline of monai_ext, built by name.

Modelled on timm's ``create_model``: each network module registers its entries with :func:`register_network`;
:func:`create_network` builds one, :func:`list_networks` lists them. The benchmark rows, the demo's bundle list,
MONAI Label's bundle discovery and the README's method table all read this registry.

    >>> from monai_ext.networks import create_network, list_networks
    >>> net = create_network("ssh_unet", out_channels=3)
    >>> [e.name for e in list_networks(kind="context")]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from monai.inferers import Inferer, SimpleInferer
from torch import nn

__all__ = [
    "KINDS",
    "NetworkEntry",
    "create_network",
    "get_network_entry",
    "list_networks",
    "network_table",
    "register_network",
]

KINDS = ("3d", "2d", "2.5d", "context")
"""How a network sees 3D context: ``"3d"`` 3D convolutions/attention on patches; ``"2d"`` 2D convolutions on
slices (SSH-UNet's shifts and views included); ``"2.5d"`` several slices as channels; ``"context"`` a 2D network
guided by a low-resolution 3D encoder of the whole volume."""

FAMILIES = ("ours", "monai")

_REGISTRY: dict[str, NetworkEntry] = {}


@dataclass(frozen=True)
class NetworkEntry:
    """One buildable network: a method, one of its paper variants, or a MONAI baseline.

    Args:
        name: registry name (lower case, ``_`` separated), e.g. ``"ssh_unet"``, ``"scaa_star"``.
        builder: ``builder(**kwargs) -> nn.Module``; called with ``defaults`` updated by the user's overrides.
        kind: one of :data:`KINDS`.
        title: the name people use, e.g. ``"SSH-UNet"``, ``"SCAA*"``.
        paper: the reference and the table row this entry reproduces, e.g. ``"Ugwu et al. 2023, Table 5:
            2D+shift+multi-view"``; empty for MONAI baselines.
        defaults: keyword arguments given to ``builder`` before the overrides (what makes this variant).
        inferer: ``inferer(**overrides) -> monai.inferers.Inferer``, the way this network sees a whole volume
            (its bundle's inferer); default :class:`monai.inferers.SimpleInferer`.
        bundle: the bundle (folder under ``bundles/``) that trains and serves this network, or None.
        loader: ``loader(network, path) -> network``, the authors' released-checkpoint loader
            (:mod:`monai_ext.networks.compat`), or None.
        variant_of: the method's main entry for a paper variant; None for a main entry.
        family: ``"ours"`` or ``"monai"``.
        patch: the paper's training patch ``(H, W, D)`` (slices on the last axis), or None.
        method: the method's number in the README (1 SSH-UNet, 2 SCAA, 3 thickened 2D, 4 CoTr, 5 RSANet); None
            for MONAI baselines. :func:`list_networks` lists entries by method, then in registration order.
    """

    name: str
    builder: Callable[..., nn.Module]
    kind: str
    title: str
    paper: str = ""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    inferer: Callable[..., Inferer] | None = None
    bundle: str | None = None
    loader: Callable[[nn.Module, str], nn.Module] | None = None
    variant_of: str | None = None
    family: str = "ours"
    patch: tuple[int, int, int] | None = None
    method: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r} for {self.name!r}.")
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r} for {self.name!r}.")

    def build(self, **overrides: Any) -> nn.Module:
        """The network with ``defaults`` updated by ``overrides``."""
        return self.builder(**{**self.defaults, **overrides})

    def make_inferer(self, **overrides: Any) -> Inferer:
        """This network's whole-volume inferer (its bundle's), with ``overrides`` of its settings."""
        return self.inferer(**overrides) if self.inferer is not None else SimpleInferer(**overrides)


def register_network(entry: NetworkEntry) -> NetworkEntry:
    """Add ``entry`` to the registry and return it.

    Raises:
        ValueError: when another entry already has that name.
    """
    if entry.name in _REGISTRY and _REGISTRY[entry.name] is not entry:
        raise ValueError(f"a network named {entry.name!r} is already registered.")
    _REGISTRY[entry.name] = entry
    return entry


def _load_all() -> None:
    import monai_ext.networks.nets  # noqa: F401  (the network modules register their entries on import)


def list_networks(kind: str | None = None, family: str | None = None, main_only: bool = False) -> list[NetworkEntry]:
    """Registered entries in registration order, optionally of one ``kind`` / ``family``, or main entries only."""
    _load_all()
    ordered = sorted(_REGISTRY.values(), key=lambda e: e.method if e.method is not None else len(_REGISTRY) + 1)
    return [
        e
        for e in ordered
        if (kind is None or e.kind == kind)
        and (family is None or e.family == family)
        and not (main_only and e.variant_of is not None)
    ]


def get_network_entry(name: str) -> NetworkEntry:
    """The entry called ``name``.

    Raises:
        KeyError: for an unknown name; the message lists the registered names.
    """
    _load_all()
    if name not in _REGISTRY:
        raise KeyError(f"no network named {name!r}; registered: {sorted(_REGISTRY)}.")
    return _REGISTRY[name]


def create_network(name: str, **overrides: Any) -> nn.Module:
    """Build network ``name`` (see :func:`list_networks`) with keyword ``overrides`` of its defaults.

    Raises:
        KeyError: for an unknown name.
    """
    return get_network_entry(name).build(**overrides)


def network_table(entries: list[NetworkEntry] | None = None) -> str:
    """A Markdown table of ``entries`` (default: every registered network): name, title, kind, paper row, bundle.

    The README's table of networks is this text; a test keeps the two equal.
    """
    rows = [
        "| name | network | kind | paper (table: row) | bundle | variant of |",
        "|---|---|---|---|---|---|",
    ]
    for e in list_networks() if entries is None else entries:
        cells = [f"`{e.name}`", e.title, e.kind, e.paper or "MONAI", f"`{e.bundle}`" if e.bundle else "",
                 f"`{e.variant_of}`" if e.variant_of else ""]  # fmt: skip
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)
