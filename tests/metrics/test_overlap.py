import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.metrics import CumulativeIterationMetric

from monai_ext.metrics import OverlapMetric

REPO = Path(__file__).resolve().parents[2]


def _masks():
    """Two 4x4 samples with hand-countable overlaps.

    Sample 0: prediction 4 voxels, truth 2, overlap 2 -> TP 2, FP 2, FN 0: Dice 4/6, IoU 2/4.
    Sample 1: prediction 1 voxel, truth 3, overlap 1 -> TP 1, FP 0, FN 2: Dice 2/4, IoU 1/3.
    Pooled: TP 3, FP 2, FN 2 -> Dice 6/10, IoU 3/7.
    """
    pred = torch.zeros(2, 1, 4, 4)
    true = torch.zeros(2, 1, 4, 4)
    pred[0, 0, 0, :4] = 1
    true[0, 0, 0, :2] = 1
    pred[1, 0, 3, 3] = 1
    true[1, 0, 3, 1:] = 1
    return pred, true


EXPECTED = {
    ("dice", "sample"): (4 / 6 + 2 / 4) / 2,
    ("iou", "sample"): (2 / 4 + 1 / 3) / 2,
    ("dice", "voxel"): 6 / 10,
    ("iou", "voxel"): 3 / 7,
}


@pytest.mark.parametrize("metric, average", list(EXPECTED))
def test_hand_computed_values(metric, average):
    pred, true = _masks()
    m = OverlapMetric(metric=metric, average=average)
    assert isinstance(m, CumulativeIterationMetric)
    counts = m(pred, true)
    assert counts.tolist() == [[2, 2, 0], [1, 0, 2]]  # per-sample TP, FP, FN
    assert m.aggregate().item() == pytest.approx(EXPECTED[metric, average], rel=1e-6)


@pytest.mark.parametrize("metric, average", list(EXPECTED))
def test_accumulates_over_calls_and_resets(metric, average):
    pred, true = _masks()
    m = OverlapMetric(metric=metric, average=average)
    m(pred[:1], true[:1])
    m(pred[1:], true[1:])
    assert m.aggregate().item() == pytest.approx(EXPECTED[metric, average], rel=1e-6)
    m.reset()
    m(pred[:1], true[:1])
    assert m.aggregate().item() == pytest.approx(4 / 6 if metric == "dice" else 2 / 4, rel=1e-6)


def test_one_hot_and_lists_of_channel_first_tensors():
    pred, true = _masks()
    one_hot = OverlapMetric(average="voxel")
    one_hot(torch.cat([1 - pred, pred], 1), torch.cat([1 - true, true], 1))
    listed = OverlapMetric(average="voxel")
    listed(list(pred), list(true))
    assert one_hot.aggregate().item() == pytest.approx(0.6) and listed.aggregate().item() == pytest.approx(0.6)


def test_empty_ground_truth():
    pred, true = _masks()
    empty = torch.zeros(1, 1, 4, 4)
    missed = empty.clone()
    missed[0, 0, 0, 0] = 1
    ignored = OverlapMetric()
    ignored(torch.cat([pred, empty]), torch.cat([true, empty]))
    assert ignored.aggregate().item() == pytest.approx(EXPECTED["dice", "sample"])  # the empty sample is left out
    counted = OverlapMetric(ignore_empty=False)
    counted(torch.cat([pred, empty, missed]), torch.cat([true, empty, empty]))
    assert counted.aggregate().item() == pytest.approx((4 / 6 + 2 / 4 + 1 + 0) / 4)
    voxel = OverlapMetric(average="voxel")
    voxel(empty, empty)
    assert torch.isnan(voxel.aggregate())
    voxel = OverlapMetric(average="voxel", ignore_empty=False)
    voxel(empty, empty)
    assert voxel.aggregate().item() == 1.0


def test_aggregate_before_any_call_raises():
    with pytest.raises(ValueError, match="no buffered data"):
        OverlapMetric().aggregate()


@pytest.mark.parametrize(
    "kwargs, message",
    [({"metric": "hausdorff"}, "metric must be one of .* got 'hausdorff'"), ({"average": "mean"}, "got 'mean'")],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OverlapMetric(**kwargs)


@pytest.mark.parametrize("pred_shape, true_shape", [((2, 1, 4), (2, 1, 5)), ((2, 3, 4), (2, 3, 4)), ((2, 4), (2, 4))])
def test_bad_shapes(pred_shape, true_shape):
    with pytest.raises(ValueError, match=r"y_pred and y must be binarised .* got \["):
        OverlapMetric()(torch.zeros(pred_shape), torch.zeros(true_shape))


_WORKER = """
import json, sys, torch, torch.distributed as dist
from monai_ext.metrics import OverlapMetric
rank, init = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
pred = torch.zeros(1, 1, 4, 4)
true = torch.zeros(1, 1, 4, 4)
if rank == 0:
    pred[0, 0, 0, :4] = 1
    true[0, 0, 0, :2] = 1
else:
    pred[0, 0, 3, 3] = 1
    true[0, 0, 3, 1:] = 1
results = []
for metric, average in [("dice", "sample"), ("iou", "sample"), ("dice", "voxel"), ("iou", "voxel")]:
    m = OverlapMetric(metric=metric, average=average)
    m(pred, true)
    results.append(m.aggregate().item())
print(json.dumps(results))
dist.destroy_process_group()
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_aggregates_across_processes(tmp_path):
    # two ranks hold one sample each; MONAI's buffers gather them, so both ranks see the pooled values
    init = f"file://{tmp_path / 'rendezvous'}"
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER, str(rank), init], stdout=subprocess.PIPE, text=True, cwd=REPO)
        for rank in range(2)
    ]
    outputs = [proc.communicate(timeout=100)[0] for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), outputs
    for out in outputs:
        assert json.loads(out.strip().splitlines()[-1]) == pytest.approx(list(EXPECTED.values()), rel=1e-6)
