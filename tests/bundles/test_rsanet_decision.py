"""The RSANet bundle decides on the true posterior: softmax, class-weight correction, then argmax (docs/rsanet.md);
it scores with MONAI's metrics, which give the paper's sample-average and voxel-average Dice and IoU; its RSA blocks
attend in the paper's order; it trains with more than two classes."""

import re
import subprocess
import sys

import pytest
import torch
from monai.bundle import ConfigParser
from monai.metrics import ConfusionMatrixMetric, DiceMetric, MeanIoU

from monai_ext.bundles import bundle_dir
from monai_ext.data import write_msd_dataset
from monai_ext.losses import exponential_class_weights
from monai_ext.networks.blocks import RecurrentSliceAttention, plane_axes
from monai_ext.networks.compat import RSA_RELEASE_ORDER


def parsed(*names: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(bundle_dir("rsanet") / "configs" / n) for n in names])
    return parser


def decide(transforms, probs: torch.Tensor) -> torch.Tensor:
    """Run the (softmax, correction, argmax) steps of a postprocessing list on logits whose softmax is ``probs``
    (``(C, N)``, or the lesion probabilities ``(N,)`` of two classes); returns the decided class per voxel."""
    if probs.dim() == 1:
        probs = torch.stack([1 - probs, probs])
    data = {"pred": probs.log()}
    for t in transforms:
        if type(t).__name__ in ("Activationsd", "ClassWeightCorrectiond", "AsDiscreted"):
            data = t({**data, "label": torch.zeros_like(probs[:1])})
    pred = data["pred"]
    return pred.argmax(0) if pred.shape[0] > 1 else pred[0]  # validation one-hots, inference keeps the index


@pytest.mark.parametrize("fractions", [0.0, 0.02, [0.98, 0.02]])
def test_inference_thresholds_the_lesion_probability_at_the_lesion_weight(fractions):
    parser = parsed("inference.json")
    parser["class_fractions"] = fractions  # a lesion fraction, or the fractions of both classes
    transforms = parser.get_parsed_content("postprocessing").transforms
    names = [type(t).__name__ for t in transforms]
    assert names.index("Activationsd") < names.index("ClassWeightCorrectiond") < names.index("AsDiscreted")
    threshold = float(exponential_class_weights(fractions)[1])  # weights sum to 1
    probs = torch.tensor([threshold - 0.01, threshold + 0.01, 0.45])
    assert decide(transforms, probs).flatten().tolist() == [0, 1, 1]


def test_inference_default_is_a_rare_foreground_for_any_number_of_classes():
    parser = parsed("inference.json")
    torch.testing.assert_close(parser.get_parsed_content("class_weights"), exponential_class_weights(0.0))
    parser["num_classes"] = 3
    weights = parser.get_parsed_content("class_weights")
    torch.testing.assert_close(weights, exponential_class_weights([1.0, 0.0, 0.0]))


def test_training_and_validation_use_the_training_class_fractions():
    parser = parsed("train.json")
    parser["class_fractions"] = [0.99, 0.01]  # train.json computes them from the training labels
    for key in ("train#postprocessing", "validate#postprocessing"):
        transforms = parser.get_parsed_content(key).transforms
        assert any(type(t).__name__ == "ClassWeightCorrectiond" for t in transforms), key
        assert decide(transforms, torch.tensor([0.26, 0.29])).flatten().tolist() == [0, 1]


@pytest.mark.parametrize("swapped", [False, True])
def test_loss_and_decision_share_the_weights(swapped):
    parser = parsed("train.json")
    parser["num_classes"] = 3
    parser["class_fractions"] = [0.9, 0.07, 0.03]
    parser["swap_class_weights"] = swapped
    loss = parser.get_parsed_content("loss")
    assert loss.swapped is swapped and loss.fractions.tolist() == pytest.approx([0.9, 0.07, 0.03])
    expected = exponential_class_weights([0.9, 0.07, 0.03], swapped=swapped)
    torch.testing.assert_close(parser.get_parsed_content("class_weights"), expected)
    # the correction divides by those weights: a voxel at p = (0.4, 0.35, 0.25) goes to the class of largest p / w
    probs = torch.tensor([[0.4], [0.35], [0.25]])
    transforms = parser.get_parsed_content("validate#postprocessing").transforms
    assert decide(transforms, probs).tolist() == [int((probs.flatten() / expected).argmax())]


@pytest.mark.parametrize("config", ["train.json", "inference.json"])
def test_rsa_attends_in_the_papers_order(config):
    # by behaviour: the bundle's RSA gives the output of an RSA built from the paper's plane names, not the release's
    rsa = parsed(config).get_parsed_content("network_def").rsa_bottleneck
    torch.manual_seed(0)
    with torch.no_grad():
        for beta in rsa.betas:
            beta.fill_(0.5)
    paper = RecurrentSliceAttention(3, rsa.in_channels, spatial_dims_order=plane_axes(("sagittal", "coronal", "axial")))
    release = RecurrentSliceAttention(3, rsa.in_channels, spatial_dims_order=RSA_RELEASE_ORDER)
    paper.load_state_dict(rsa.state_dict())
    release.load_state_dict(rsa.state_dict())
    x = 0.05 * torch.randn(1, rsa.in_channels, 3, 4, 5)
    with torch.no_grad():
        torch.testing.assert_close(rsa(x), paper(x))
        assert not torch.allclose(rsa(x), release(x))


def _masks() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 4x4 samples with hand-countable overlaps, one-hot (B, 2, H, W) as the bundle's postprocessing gives.

    Sample 0: prediction 4 voxels, truth 2, overlap 2 -> TP 2, FP 2, FN 0: Dice 4/6, IoU 2/4.
    Sample 1: prediction 1 voxel, truth 3, overlap 1 -> TP 1, FP 0, FN 2: Dice 2/4, IoU 1/3.
    All voxels pooled: TP 3, FP 2, FN 2 -> Dice 6/10, IoU 3/7.
    """
    pred = torch.zeros(2, 1, 4, 4)
    true = torch.zeros(2, 1, 4, 4)
    pred[0, 0, 0, :4] = 1
    true[0, 0, 0, :2] = 1
    pred[1, 0, 3, 3] = 1
    true[1, 0, 3, 1:] = 1
    return torch.cat([1 - pred, pred], 1), torch.cat([1 - true, true], 1)


# the paper's scores (Zhang et al. 2019): sample average = mean of per-case scores; voxel average = pooled voxels
SAMPLE_DICE, SAMPLE_IOU = (4 / 6 + 2 / 4) / 2, (2 / 4 + 1 / 3) / 2
VOXEL_DICE, VOXEL_IOU = 6 / 10, 3 / 7


def _score(metric, pred: torch.Tensor, true: torch.Tensor, calls: int = 1) -> list[float]:
    """``metric`` aggregated over ``calls`` calls, each on one chunk of the batch."""
    metric.reset()
    for p, t in zip(pred.chunk(calls), true.chunk(calls)):
        metric(p, t)
    result = metric.aggregate()
    return [float(r) for r in (result if isinstance(result, list) else [result])]


@pytest.mark.parametrize("calls", [1, 2])
def test_monai_metrics_give_the_papers_sample_and_voxel_averages(calls):
    pred, true = _masks()
    assert _score(DiceMetric(include_background=False), pred, true, calls) == pytest.approx([SAMPLE_DICE])
    assert _score(MeanIoU(include_background=False), pred, true, calls) == pytest.approx([SAMPLE_IOU])
    pooled = ConfusionMatrixMetric(
        include_background=False, metric_name=["f1 score", "threat score"], compute_sample=False
    )
    assert _score(pooled, pred, true, calls) == pytest.approx([VOXEL_DICE, VOXEL_IOU])
    # compute_sample=True would average per-case scores instead: the sample averages again
    per_case = ConfusionMatrixMetric(
        include_background=False, metric_name=["f1 score", "threat score"], compute_sample=True
    )
    assert _score(per_case, pred, true, calls) == pytest.approx([SAMPLE_DICE, SAMPLE_IOU])


def test_monai_sample_average_leaves_out_cases_without_lesion():
    pred, true = _masks()
    empty = torch.zeros(1, 2, 4, 4)
    empty[:, 0] = 1  # background everywhere, in prediction and truth
    dice = DiceMetric(include_background=False)  # ignore_empty=True: the empty case scores NaN, left out of the mean
    assert _score(dice, torch.cat([pred, empty]), torch.cat([true, empty])) == pytest.approx([SAMPLE_DICE])


def test_bundle_validation_scores_are_the_papers():
    parser = parsed("train.json")
    pred, true = _masks()
    scores = {
        name: _score(handler.metric_fn, pred, true)[0]
        for key in ("validate#key_metric", "validate#additional_metrics")
        for name, handler in parser.get_parsed_content(key).items()
    }
    assert scores == pytest.approx(
        {"val_mean_dice": SAMPLE_DICE, "val_voxel_dice": VOXEL_DICE, "val_mean_iou": SAMPLE_IOU}
    )


@pytest.mark.slow
def test_three_classes_train(tmp_path):
    # the paper is binary; the bundle trains a C-class task (here 1-channel CT with two foreground classes) with the
    # C-class weights computed from its training labels
    data = tmp_path / "data"
    write_msd_dataset(data, num_train=4, num_test=0, shape=(32, 32, 32), seed=1)  # labels 0, 1, 2
    overrides = {
        "in_channels": 1,
        "num_classes": 3,
        "pixdim": "[1.5,1.5,1.5]",
        "roi_size": "[32,32,16]",
        "network_def#filters": "[8,8,16]",
        "epochs": 2,
        "val_interval": 2,
        "batch_size": 1,
        "num_workers": 0,
        "val_fraction": 0.5,
        "bundle_root": tmp_path / "bundle",
        "dataset_dir": data,
    }
    config = bundle_dir("rsanet") / "configs" / "train.json"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(config)]
    cmd += [item for key, value in overrides.items() for item in (f"--{key}", str(value))]
    proc = subprocess.run(cmd, cwd=bundle_dir("rsanet"), capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    losses = [float(v) for v in re.findall(r"train_loss: (\S+)", log)]
    assert len(losses) == 4 and all(0 < v < 10 for v in losses), losses  # 2 epochs of 2 patches, finite
    assert re.search(r"val_mean_dice: \d", log), log[-3000:]
    weights = torch.load(tmp_path / "bundle" / "models" / "model.pt", weights_only=True)
    assert weights["final.1.conv.weight"].shape[0] == 3
