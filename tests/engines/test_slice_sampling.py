import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer

from monai_ext.engines import RandomSlicesPrepareBatch
from monai_ext.inferers import SliceTrainingPadInferer
from monai_ext.losses import SCAALoss
from monai_ext.networks.nets import SCAA


def _batch(b=2, depth=12):
    label = torch.randint(0, 3, (b, 1, 8, 6, depth))
    return {"image": torch.rand(b, 1, 8, 6, depth), "label": label}


def test_draws_distinct_sorted_slices_and_takes_the_label_there():
    batch = _batch()
    torch.manual_seed(0)
    image, (label_slices, label), args, kwargs = RandomSlicesPrepareBatch(num_slices=5)(batch)
    idx = kwargs["slice_indices"]
    assert image is not None and args == ()
    assert idx.shape == (2, 5)
    for row in idx:
        assert row.unique().numel() == 5 and (row.diff() > 0).all() and row.max() < 12
    assert label_slices.shape == (2, 1, 8, 6, 5)
    for b in range(2):
        torch.testing.assert_close(label_slices[b], batch["label"][b][..., idx[b]])
    torch.testing.assert_close(label, batch["label"])


def test_fewer_slices_than_asked_takes_them_all_and_other_spatial_dim():
    batch = _batch(b=1, depth=3)
    _, (label_slices, _), _, kwargs = RandomSlicesPrepareBatch(num_slices=16)(batch)
    assert kwargs["slice_indices"].tolist() == [[0, 1, 2]]
    _, (label_slices, _), _, kwargs = RandomSlicesPrepareBatch(num_slices=4, spatial_dim=0)(batch)
    assert label_slices.shape == (1, 1, 4, 6, 3)
    assert kwargs["slice_indices"].max() < 8


def test_seeded_draws_repeat():
    draws = []
    for _ in range(2):
        torch.manual_seed(3)
        draws.append(RandomSlicesPrepareBatch(4)(_batch())[3]["slice_indices"])
    torch.testing.assert_close(draws[0], draws[1])


def test_class_balanced_draw_takes_the_rare_classes_slices():
    label = torch.zeros(2, 1, 6, 5, 40, dtype=torch.long)
    label[:, :, 2, 2, 3] = 2  # class 2 in slice 3 only
    label[:, :, 1, 1, 7:9] = 1  # class 1 in slices 7, 8
    sampler = RandomSlicesPrepareBatch(num_slices=4, class_fraction=0.5)
    uniform_hits = 0
    for seed in range(20):
        torch.manual_seed(seed)
        idx = sampler({"image": torch.rand(2, 1, 6, 5, 40), "label": label})[3]["slice_indices"]
        for row in idx.tolist():
            assert len(set(row)) == 4 and row == sorted(row)
            assert 3 in row and {7, 8} & set(row)
        torch.manual_seed(seed)
        plain = RandomSlicesPrepareBatch(num_slices=4)({"image": torch.rand(2, 1, 6, 5, 40), "label": label})
        uniform_hits += sum(3 in row for row in plain[3]["slice_indices"].tolist())
    assert uniform_hits < 20  # uniform draws miss slice 3 most of the time (4 of 40 slices: 10 %)


def test_class_balanced_draw_fills_up_when_a_class_has_too_few_slices():
    label = torch.zeros(1, 1, 4, 4, 10, dtype=torch.long)
    label[..., 5] = 1
    torch.manual_seed(0)
    idx = RandomSlicesPrepareBatch(num_slices=6, class_fraction=1.0).draw(label[0])
    assert idx.numel() == 6 and idx.unique().numel() == 6 and 5 in idx.tolist()
    empty = RandomSlicesPrepareBatch(num_slices=3, class_fraction=1.0).draw(torch.zeros(1, 4, 4, 10))
    assert empty.numel() == 3  # no foreground: all uniform


def test_supervised_trainer_runs_scaa_with_the_loss_and_learns():
    torch.manual_seed(0)
    net = SCAA(1, 2, filters=(4, 8, 8, 16, 16), context_channels=(4, 4, 8, 8), global_channels=4)
    image = torch.rand(1, 1, 32, 32, 24)  # not a size SCAA takes: the training inferer pads it
    label = (image > 0.5).long()
    data = [{"image": image[0], "label": label[0]}] * 2
    loader = torch.utils.data.DataLoader(data, batch_size=1)
    losses = []
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=6,
        train_data_loader=loader,
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), 1e-2),
        loss_function=SCAALoss(),
        prepare_batch=RandomSlicesPrepareBatch(num_slices=4),
        inferer=SliceTrainingPadInferer(net.divisor, net.min_size),
        decollate=False,
    )
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"].item()))
    trainer.run()
    assert len(losses) == 12
    assert min(losses[-3:]) < losses[0]


def test_bad_arguments_and_batches():
    with pytest.raises(ValueError, match="num_slices"):
        RandomSlicesPrepareBatch(0)
    with pytest.raises(ValueError, match="spatial_dim counts spatial axes"):
        RandomSlicesPrepareBatch(4, spatial_dim=4)
    with pytest.raises(ValueError, match="class_fraction"):
        RandomSlicesPrepareBatch(4, class_fraction=1.5)
    with pytest.raises(ValueError, match="needs batch keys"):
        RandomSlicesPrepareBatch()({"image": torch.rand(1, 1, 4, 4, 4)})
    with pytest.raises(ValueError, match="same batch and spatial size"):
        RandomSlicesPrepareBatch()({"image": torch.rand(1, 1, 4, 4, 4), "label": torch.rand(1, 1, 4, 4, 3)})
