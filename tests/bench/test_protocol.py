"""How a bench row trains: its batch follows its registry inferer, its step goes through SupervisedTrainer."""

from __future__ import annotations

import pytest
import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import PrepareBatchDefault
from monai.inferers import SliceInferer
from monai.losses import DeepSupervisionLoss
from torch import nn

from monai_ext.bench import protocol
from monai_ext.bench.protocol import SlabBatch, SliceBatch, make_trainer, step_times, training_batch
from monai_ext.engines import RandomSlicesPrepareBatch
from monai_ext.networks import NetworkEntry, get_network_entry
from monai_ext.networks import registry as network_registry


def _batch(shape=(2, 1, 4, 5, 6)) -> dict[str, torch.Tensor]:
    image = torch.arange(float(torch.Size(shape).numel())).view(shape)
    return {"image": image, "label": image.remainder(3)}


@pytest.mark.parametrize("spatial_dim", [0, 1, 2])
def test_slice_batch_cuts_every_slice_along_the_axis(spatial_dim):
    batch = _batch()
    image, label = SliceBatch(spatial_dim)(batch)
    depth = batch["image"].shape[2 + spatial_dim]
    assert image.shape[0] == label.shape[0] == 2 * depth and image.dim() == 4
    # case 1, slice 2
    torch.testing.assert_close(image[depth + 2], batch["image"][1].select(1 + spatial_dim, 2))
    torch.testing.assert_close(label[depth + 2], batch["label"][1].select(1 + spatial_dim, 2))


def test_slice_batch_with_neighbours_stacks_them_on_the_image_only():
    batch = _batch((1, 1, 2, 2, 4))
    image, label = SliceBatch(2, neighbours=1)(batch)
    assert image.shape == (4, 3, 2, 2) and label.shape == (4, 1, 2, 2)
    slice_value = image[:, :, 0, 0].tolist()  # voxel (0, 0) of slices 0..3 holds 0, 1, 2, 3
    assert slice_value == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]]


def test_slab_batch_cuts_consecutive_groups_and_leaves_the_remainder_out():
    batch = _batch((2, 1, 4, 5, 7))
    image, label = SlabBatch(3)(batch)
    assert image.shape == label.shape[:1] + (1, 4, 5, 3) and image.shape[0] == 2 * 2
    torch.testing.assert_close(image[3], batch["image"][1, ..., 3:6])  # case 1, second group
    across = SlabBatch(2, spatial_dim=0)(batch)[0]
    assert across.shape == (2 * 2, 1, 5, 7, 2)  # the slice axis moved last, as SliceGroupInferer feeds it
    torch.testing.assert_close(across[1], batch["image"][0, :, 2:4].movedim(1, -1))
    with pytest.raises(ValueError, match="fewer than one group of 8"):
        SlabBatch(8)(batch)


def test_each_registry_entry_trains_on_what_its_inferer_feeds_it():
    kinds = {n: training_batch(get_network_entry(n)) for n in ("dynunet_3d", "dynunet_2d", "dynunet_2_5d", "thick2d")}
    assert isinstance(kinds["dynunet_3d"], PrepareBatchDefault)
    assert type(kinds["dynunet_2d"]) is SliceBatch and kinds["dynunet_2d"].neighbours == 0
    assert type(kinds["dynunet_2_5d"]) is SliceBatch and kinds["dynunet_2_5d"].neighbours == 1
    assert type(kinds["thick2d"]) is SlabBatch and kinds["thick2d"].num_slices == 12
    axial = NetworkEntry("x", nn.Identity, "2d", "X", inferer=lambda **kw: SliceInferer(0, roi_size=(-1, -1)))
    assert training_batch(axial).spatial_dim == 0


def test_a_context_network_trains_with_its_bundles_slice_sampling_and_loss():
    entry = get_network_entry("scaa_star")
    prepare = training_batch(entry, {"num_slices": 3})
    assert isinstance(prepare, RandomSlicesPrepareBatch) and prepare.num_slices == 3
    assert type(protocol.training_loss(entry)).__name__ == "SCAALoss"
    variant = NetworkEntry("v", nn.Identity, "context", "V", variant_of="scaa_star")
    assert isinstance(training_batch(variant), RandomSlicesPrepareBatch)  # a variant trains with its method's bundle
    with pytest.raises(ValueError, match="names no bundle"):
        training_batch(NetworkEntry("orphan", nn.Identity, "context", "Orphan"))


def test_the_loss_scores_one_output_or_a_deep_supervision_list():
    loss = protocol.training_loss(get_network_entry("dynunet_3d"))
    assert isinstance(loss, DeepSupervisionLoss)
    logits, label = torch.randn(1, 3, 4, 4, 4), torch.randint(0, 3, (1, 1, 4, 4, 4)).float()
    coarse = torch.randn(1, 3, 2, 2, 2)
    single, deep = loss(logits, label), loss([logits, coarse], label)
    assert single > 0 and deep > 0 and not torch.isclose(single, deep)


class _SliceRecorder(nn.Conv2d):
    """A 2D network that records the inputs it trains on."""

    def __init__(self, in_channels: int = 1, out_channels: int = 3) -> None:
        super().__init__(in_channels, out_channels, 3, padding=1)
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(x.shape))
        return super().forward(x)


def test_trainer_runs_the_steps_through_supervised_trainer_on_slices(monkeypatch):
    entry = NetworkEntry(
        "toy_2d", _SliceRecorder, "2d", "Toy 2D", inferer=lambda **kw: SliceInferer(2, roi_size=(-1, -1))
    )
    monkeypatch.setitem(network_registry._REGISTRY, entry.name, entry)
    torch.manual_seed(0)
    net = entry.build()
    before = net.weight.detach().clone()
    data = [{"image": torch.randn(1, 1, 8, 8, 5), "label": torch.randint(0, 3, (1, 1, 8, 8, 5)).float()}] * 3
    trainer = make_trainer(entry, net, data, torch.optim.Adam(net.parameters(), 1e-2))
    assert isinstance(trainer, SupervisedTrainer)
    times = step_times(trainer, before_step=lambda i: net.seen.append(("step", i)))
    assert len(times) == 3 and all(t > 0 for t in times) and trainer.state.iteration == 3
    assert net.seen == [x for i in (1, 2, 3) for x in (("step", i), (5, 1, 8, 8))]  # all 5 slices, one batch per step
    assert not torch.equal(net.weight, before)


@pytest.mark.parametrize(
    "name, optimizer, lr",
    [
        ("thick2d", torch.optim.SGD, 0.01),
        ("ssh_unet_2d", torch.optim.AdamW, 0.002),
        ("dynunet_3d", torch.optim.Adam, 3e-4),
    ],
)
def test_recipe_optimizer_is_the_bundles_as_its_demo_runs_it(name, optimizer, lr):
    import json

    from monai_ext.bundles import bundle_dir

    net = nn.Conv3d(1, 2, 3)
    opt, label = protocol.recipe_optimizer(get_network_entry(name), net, learning_rate=3e-4)
    assert type(opt) is optimizer and opt.defaults["lr"] == pytest.approx(lr)
    assert {id(p) for group in opt.param_groups for p in group["params"]} == {id(p) for p in net.parameters()}
    if name == "thick2d":  # the rest of the bundle's optimizer comes along
        train = json.loads((bundle_dir("thick2d") / "configs" / "train.json").read_text())["optimizer"]
        assert opt.defaults["momentum"] == train["momentum"] and opt.defaults["weight_decay"] == train["weight_decay"]
    assert type(opt).__name__ in label
