"""Put a context block into an existing network (e.g. MONAI's DynUNet) at the output of one of its modules."""

from __future__ import annotations

from torch import nn

__all__ = ["attach_block"]

_WHERE = ("after", "before")


def attach_block(network: nn.Module, target: str | nn.Module, block: nn.Module, where: str = "after") -> nn.Module:
    """Run ``block`` right after (or before) the submodule ``target`` of ``network``, in place.

    ``target`` is replaced by ``nn.Sequential(target, block)`` (``where="after"``) or ``nn.Sequential(block,
    target)`` (``"before"``) under EVERY parent that holds it. This matters for MONAI's ``DynUNet``, whose
    ``forward`` runs ``skip_layers``, a second tree that holds the same blocks as ``input_block``,
    ``downsamples``, ``bottleneck`` and ``upsamples``: replacing one attribute alone would change nothing.
    The target's weights are kept; its state-dict keys gain a ``.0`` (``bottleneck.conv1.conv.weight`` becomes
    ``bottleneck.0.conv1.conv.weight``) and the block's appear under ``.1``.

    Example (RSA after DynUNet's bottleneck, slices on the last axis)::

        dyn = DynUNet(3, 1, 3, [3] * 5, [1, 2, 2, 2, 2], [2] * 4, filters=[16, 32, 64, 128, 256], res_block=True)
        attach_block(dyn, "bottleneck", RecurrentSliceAttention(3, 256))

    Args:
        network: the network to change; returned.
        target: the submodule, or its dotted name (``"bottleneck"``, ``"downsamples.1"``).
        block: a module taking and returning the target's output (``"after"``) or input (``"before"``).
        where: ``"after"`` or ``"before"``.

    Raises:
        ValueError: for an unknown ``where``, or a ``target`` that is not a submodule of ``network``.
    """
    if where not in _WHERE:
        raise ValueError(f"where must be one of {_WHERE}, got {where!r}.")
    module = network.get_submodule(target) if isinstance(target, str) else target
    holders = [
        (parent, name) for parent in network.modules() for name, child in parent.named_children() if child is module
    ]
    if not holders:
        raise ValueError(f"{type(module).__name__} is not a submodule of {type(network).__name__}.")
    wrapped = nn.Sequential(module, block) if where == "after" else nn.Sequential(block, module)
    for parent, name in holders:
        setattr(parent, name, wrapped)
    return network
