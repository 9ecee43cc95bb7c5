"""The thickened-2D bundle's paper configurations, run in process on tiny data: configs/paper.json (Dice loss,
learning rate x0.1 at given *iterations*, the view axis ``spatial_dim`` with one checkpoint folder per view) and
configs/paper_inference.json (three views, one network each, averaged probabilities, majority vote)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser

from monai_ext.bundles import bundle_dir
from monai_ext.data import write_msd_dataset
from monai_ext.inferers import MultiViewInferer, SliceGroupInferer

pytestmark = pytest.mark.slow

CONFIGS = bundle_dir("thick2d") / "configs"
TINY = {
    "num_classes": 3,
    "num_slices": 6,
    "slice_size": [32, 32],
    "network_def#layers": [1, 1, 1, 1],
    "network_def#block_inplanes": [8, 16, 32, 64],
    "network_def#decoder_channels": 16,
    "network_def#low_level_channels": 8,
    "batch_size": 1,
    "num_samples": 2,
    "num_workers": 0,
    "val_fraction": 0.5,
}
# 2 training volumes at batch 1: 2 iterations per epoch; 4 iterations = 2 epochs. Per-iteration steps give
# 0.1 -> 0.01 after iteration 1 and -> 0.001 after iteration 3; per-epoch steps would give 0.01 after epoch 1 only.
SCHEDULE = {"learning_rate": 0.1, "max_iterations": 4, "lr_milestones": [1, 3], "val_interval": 2}
SHAPE = (32, 40, 36)  # three sizes: a crop or slab on the wrong axes changes the shapes


def _parser(files: list[str], **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in files])
    for key, value in overrides.items():
        parser[key] = value
    return parser


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("t2d_paper") / "data"
    write_msd_dataset(root, num_train=4, num_test=2, shape=SHAPE)
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory, dataset) -> dict:
    """bundle_root with one tiny model per view, trained with train.json + paper.json; the learning rate after each
    iteration and the first training slab's shape, per view."""
    root = tmp_path_factory.mktemp("t2d_paper_root")
    runs = {}
    for view in (0, 1, 2):
        parser = _parser(
            ["train.json", "paper.json"],
            bundle_root=str(root),
            dataset_dir=str(dataset),
            spatial_dim=view,
            **TINY,
            **SCHEDULE,
        )
        parser.get_parsed_content("initialize")
        trainer = parser.get_parsed_content("train#trainer")
        optimizer = parser.get_parsed_content("optimizer")
        lrs: list[float] = []

        def record(_, lrs=lrs, optimizer=optimizer) -> None:
            lrs.append(optimizer.param_groups[0]["lr"])

        trainer.add_event_handler(Events.ITERATION_COMPLETED, record)
        slab = parser.get_parsed_content("train#dataset")[0][0]["image"].shape
        parser.get_parsed_content("run")
        runs[view] = {"lrs": lrs, "iterations": trainer.state.iteration, "slab": tuple(slab)}
    return {"root": root, "runs": runs}


def test_overrides_by_position_still_hit_their_targets():
    """paper.json and paper_inference.json override list items by position: fail here if the lists change."""
    train = _parser(["train.json"])
    assert train["train#random_transforms#0#_target_"] == "ResizeWithPadOrCropd"
    assert train["train#random_transforms#1#_target_"] == "monai_ext.transforms.RandSliceGroupd"
    assert train["train#handlers#0#_target_"] == "LrScheduleHandler"
    assert _parser(["inference.json"])["postprocessing#transforms#0#_target_"] == "Activationsd"
    paper = _parser(["train.json", "paper.json"])
    assert paper["train#handlers#0#epoch_level"] is False
    assert type(paper.get_parsed_content("loss")).__name__ == "DiceLoss"
    assert paper.get_parsed_content("lr_scheduler").milestones == {70000: 1, 90000: 1}


def test_the_learning_rate_steps_per_iteration(trained):
    for view, run in trained["runs"].items():
        assert run["iterations"] == 4, view
        np.testing.assert_allclose(run["lrs"], [0.01, 0.01, 0.001, 0.001], rtol=1e-6)


def test_each_view_trains_on_slabs_along_its_axis_into_its_own_folder(trained):
    # the in-plane crop (slice_size 32 x 32) on the two axes other than the view's; slices last
    for view, run in trained["runs"].items():
        assert run["slab"] == (1, 32, 32, 6), view
        state = torch.load(trained["root"] / "models" / f"view{view}" / "model.pt", weights_only=True)
        assert isinstance(state, dict) and state


def test_paper_inference_runs_three_networks_and_votes(trained, dataset, tmp_path):
    out = tmp_path / "pred"
    overrides = {**TINY, "bundle_root": str(trained["root"]), "dataset_dir": str(dataset), "output_dir": str(out)}
    parser = _parser(["inference.json", "paper_inference.json"], **overrides)
    inferer = parser.get_parsed_content("inferer")
    assert isinstance(inferer, MultiViewInferer) and inferer.spatial_dims_order == [2, 1, 0]
    assert inferer.fusion == "vote" and isinstance(inferer.inferer, SliceGroupInferer)
    assert (inferer.inferer.num_slices, inferer.inferer.stride, inferer.inferer.activation) == (6, 1, "softmax")
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("run")
    networks = parser.get_parsed_content("evaluator#network")
    for net, view in zip(networks, (2, 1, 0)):  # each view's network holds that view's weights
        state = torch.load(trained["root"] / "models" / f"view{view}" / "model.pt", weights_only=True)
        for key, value in net.state_dict().items():
            torch.testing.assert_close(value, state[key])
    for item in json.loads((dataset / "dataset.json").read_text())["test"]:
        pred = nib.load(out / Path(item).name.replace(".nii.gz", "_seg.nii.gz"))
        assert pred.shape == SHAPE
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}


def test_paper_inference_names_a_missing_view(trained, dataset, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(trained["root"], root)
    (root / "models" / "view1" / "model.pt").unlink()
    parser = _parser(
        ["inference.json", "paper_inference.json"], **TINY, bundle_root=str(root), dataset_dir=str(dataset)
    )
    with pytest.raises(RuntimeError) as raised:  # MONAI wraps the error of a config expression
        parser.get_parsed_content("initialize")
    cause = raised.value
    while cause.__cause__ is not None:
        cause = cause.__cause__
    assert isinstance(cause, FileNotFoundError)
    assert re.search(r"view1/model.pt not found .*--spatial_dim 1", str(cause)), cause
