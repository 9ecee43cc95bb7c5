"""How a benchmark row trains: MONAI's SupervisedTrainer, the row's training batch and loss, as the bundles train.

Every row trains through the components the bundles use: :class:`monai.engines.SupervisedTrainer`, a
``prepare_batch`` step, :class:`monai.losses.DeepSupervisionLoss` around Dice + cross-entropy (one tensor, or the
deep-supervision list of the output convention), and the optimizer the caller gives. The training batch is what
the row's inferer (from the registry, :meth:`~monai_ext.networks.NetworkEntry.make_inferer`) feeds the network,
cut from one patch ``(B, C, H, W, D)``:

- a 2D network (its inferer is MONAI's :class:`~monai.inferers.SliceInferer`, possibly inside a
  :class:`~monai_ext.inferers.PadInferer`): the patch's slices along the inferer's ``spatial_dim``, as one batch,
  with the neighbours as channels for a :class:`~monai_ext.inferers.NeighbourSliceInferer` (2.5D);
- a slice-group network (:class:`~monai_ext.inferers.SliceGroupInferer`, thickened 2D): the patch cut into
  consecutive groups of the inferer's ``num_slices`` slices, as one batch (a remainder of fewer slices is left out);
- a context network (kind ``"context"``, SCAA): its bundle's ``prepare_batch`` and ``loss`` (``configs/train.json``):
  the whole patch goes to the 3D context encoder and a few sampled slices to the 2D path, scored by the method's
  two-term loss. This is the one kind whose step cannot be told from its inferer;
- any other network: the patch.

So every row sees the voxels of the same patch in one step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.engines import SupervisedTrainer
from monai.engines.utils import PrepareBatch, PrepareBatchDefault, default_prepare_batch
from monai.inferers import Inferer, SliceInferer
from monai.losses import DeepSupervisionLoss, DiceCELoss
from torch import nn

from monai_ext.bundles import bundle_dir
from monai_ext.inferers import SliceGroupInferer, neighbour_channels
from monai_ext.networks import NetworkEntry, get_network_entry
from monai_ext.networks.layout import DEFAULT_SPATIAL_DIM, check_spatial_dim, slices_last

__all__ = [
    "SlabBatch",
    "SliceBatch",
    "bundle_part",
    "make_trainer",
    "recipe_optimizer",
    "step_times",
    "training_batch",
    "training_loss",
]


def _slices(x: torch.Tensor, spatial_dim: int) -> torch.Tensor:
    """``(B, C, H, W, D)`` -> ``(B * S, C, P, Q)``: the ``S`` slices along ``spatial_dim``, volume by volume."""
    x = slices_last(x, spatial_dim)  # (B, C, P, Q, S)
    b, c, p, q, s = x.shape
    return x.permute(0, 4, 1, 2, 3).reshape(b * s, c, p, q)


def _slabs(x: torch.Tensor, num_slices: int, spatial_dim: int) -> torch.Tensor:
    """``(B, C, H, W, D)`` -> ``(B * n, C, P, Q, k)``: ``n`` consecutive groups of ``k`` slices along
    ``spatial_dim`` (moved last), volume by volume."""
    x = slices_last(x, spatial_dim)  # (B, C, P, Q, S)
    b, c, p, q, s = x.shape
    depth = s // num_slices * num_slices
    if depth == 0:
        raise ValueError(f"the patch has {s} slices, fewer than one group of {num_slices}; give a thicker patch.")
    groups = x[..., :depth].reshape(b, c, p, q, depth // num_slices, num_slices)  # (B, C, P, Q, n, k)
    return groups.permute(0, 4, 1, 2, 3, 5).reshape(-1, c, p, q, num_slices)


class SliceBatch(PrepareBatch):
    """``prepare_batch`` of a 2D network: the ``(B, C, H, W, D)`` image and label become the batch of their slices
    along ``spatial_dim``, ``(B * S, C', P, Q)``, the image slices with ``neighbours`` slices on either side as extra
    channels (``C' = (2 * neighbours + 1) * C``, as :class:`~monai_ext.inferers.NeighbourSliceInferer`
    feeds them).

    Raises:
        ValueError: for a bad ``spatial_dim`` or ``neighbours < 0``.
    """

    def __init__(self, spatial_dim: int = DEFAULT_SPATIAL_DIM, neighbours: int = 0) -> None:
        if neighbours < 0:
            raise ValueError(f"neighbours must be >= 0, got {neighbours}.")
        self.spatial_dim = check_spatial_dim(spatial_dim)
        self.neighbours = neighbours

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs: Any):
        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        image = neighbour_channels(image, self.spatial_dim, self.neighbours)
        return _slices(image, self.spatial_dim), _slices(label, self.spatial_dim)


class SlabBatch(PrepareBatch):
    """``prepare_batch`` of a slice-group network: the ``(B, C, H, W, D)`` image and label become the batch of their
    consecutive ``num_slices``-slice groups along ``spatial_dim`` (moved last, as
    :class:`~monai_ext.inferers.SliceGroupInferer` feeds them): ``(B * n, C, P, Q, num_slices)``.

    Raises:
        ValueError: for ``num_slices < 1`` or a bad ``spatial_dim``; when called, for a patch thinner than a group.
    """

    def __init__(self, num_slices: int, spatial_dim: int = DEFAULT_SPATIAL_DIM) -> None:
        if num_slices < 1:
            raise ValueError(f"num_slices must be positive, got {num_slices}.")
        self.num_slices = num_slices
        self.spatial_dim = check_spatial_dim(spatial_dim)

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs: Any):
        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        return _slabs(image, self.num_slices, self.spatial_dim), _slabs(label, self.num_slices, self.spatial_dim)


def _bundle_name(entry: NetworkEntry) -> str | None:
    """The bundle that trains ``entry``: its own, or its main entry's for a paper variant; None for a baseline."""
    return entry.bundle or (get_network_entry(entry.variant_of).bundle if entry.variant_of else None)


def bundle_part(entry: NetworkEntry, key: str, overrides: Mapping[str, Any] | None = None) -> Any:
    """Component ``key`` (e.g. ``"loss"``) of the ``configs/train.json`` of the bundle that trains ``entry`` (a
    paper variant: its method's bundle), instantiated after ``overrides`` of the config's entries.

    Raises:
        ValueError: when neither the entry nor its main entry names a bundle.
    """
    name = _bundle_name(entry)
    if name is None:
        raise ValueError(f"{entry.name!r} (kind {entry.kind!r}) trains with its bundle's {key!r}, but names no bundle.")
    parser = ConfigParser()
    parser.read_config(bundle_dir(name) / "configs" / "train.json")
    parser.update(dict(overrides or {}))
    return parser.get_parsed_content(key)


def recipe_optimizer(
    entry: NetworkEntry, network: nn.Module, learning_rate: float = 1e-3
) -> tuple[torch.optim.Optimizer, str]:
    """The optimizer of row ``entry``'s own recipe, over ``network``'s parameters, and where it came from.

    A method row (or a paper variant of one) takes its bundle's ``optimizer`` as its demo runs it:
    ``configs/train.json`` with ``configs/demo.json`` on top (type, learning rate, momentum, weight decay; the
    schedule is left out, a budget has no epochs). A row without a bundle (MONAI's baselines) takes Adam at
    ``learning_rate``.
    """
    name = _bundle_name(entry)
    if name is None:
        return torch.optim.Adam(network.parameters(), learning_rate), f"Adam, lr {learning_rate:g}"
    configs = bundle_dir(name) / "configs"
    parser = ConfigParser()
    parser.read_config([configs / "train.json", configs / "demo.json"])
    parser["network"] = network  # "$@network.parameters()" then reads this network
    optimizer = parser.get_parsed_content("optimizer")
    return optimizer, f"{name} bundle: {type(optimizer).__name__}, lr {optimizer.defaults['lr']:g}"


def _inferer_chain(inferer: Inferer) -> Iterator[Inferer]:
    """``inferer`` and the inferers it wraps (PadInferer, FlipInferer, ... keep theirs in ``inferer``)."""
    while inferer is not None:
        yield inferer
        inferer = getattr(inferer, "inferer", None)


def training_batch(entry: NetworkEntry, bundle_overrides: Mapping[str, Any] | None = None) -> PrepareBatch:
    """The ``prepare_batch`` of row ``entry`` (see the module's rule); ``bundle_overrides`` change a context
    network's bundle config (e.g. ``{"num_slices": 4}``)."""
    if entry.kind == "context":
        return bundle_part(entry, "prepare_batch", bundle_overrides)
    for inferer in _inferer_chain(entry.make_inferer()):
        if isinstance(inferer, SliceGroupInferer):
            return SlabBatch(inferer.num_slices, inferer.spatial_dim)
        if isinstance(inferer, SliceInferer):
            return SliceBatch(inferer.spatial_dim, getattr(inferer, "neighbours", 0))
    return PrepareBatchDefault()


def training_loss(entry: NetworkEntry, bundle_overrides: Mapping[str, Any] | None = None) -> nn.Module:
    """Dice + cross-entropy (softmax, one-hot labels) in :class:`~monai.losses.DeepSupervisionLoss`, which scores a
    network's one output or its deep-supervision list; a context network's bundle ``loss``."""
    if entry.kind == "context":
        return bundle_part(entry, "loss", bundle_overrides)
    return DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True))


def make_trainer(
    entry: NetworkEntry,
    network: nn.Module,
    data: Iterable[dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    device: str | torch.device = "cpu",
    bundle_overrides: Mapping[str, Any] | None = None,
) -> SupervisedTrainer:
    """A one-epoch :class:`~monai.engines.SupervisedTrainer` of ``network`` (row ``entry``) over ``data``, batches
    ``{"image": (B, C, H, W, D), "label": (B, 1, H, W, D)}``, with :func:`training_batch` and :func:`training_loss`;
    an epoch ends when ``data`` does (a generator may stop on a budget). ``trainer.run()`` trains."""
    return SupervisedTrainer(
        device=torch.device(device),
        max_epochs=1,
        train_data_loader=data,
        network=network,
        optimizer=optimizer,
        loss_function=training_loss(entry, bundle_overrides),
        prepare_batch=training_batch(entry, bundle_overrides),
        decollate=False,  # predictions stay batched (a context network's are a pair)
    )


def _sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def step_times(
    trainer: SupervisedTrainer, device: str | torch.device = "cpu", before_step: Callable[[int], Any] | None = None
) -> list[float]:
    """Run ``trainer`` and return the wall time of each iteration (synchronised on CUDA); ``before_step(i)`` runs
    before iteration ``i`` (from 1) starts its clock, e.g. to reset a memory peak."""
    times: list[float] = []
    starts: list[float] = []

    def started(engine) -> None:
        if before_step is not None:
            before_step(engine.state.iteration)
        _sync(device)
        starts.append(time.perf_counter())

    def completed(engine) -> None:
        _sync(device)
        times.append(time.perf_counter() - starts[-1])

    trainer.add_event_handler(Events.ITERATION_STARTED, started)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, completed)
    trainer.run()
    return times
