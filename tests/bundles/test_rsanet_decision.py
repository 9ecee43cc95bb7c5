"""The RSANet bundle decides on the true posterior: softmax, class-weight correction, then argmax (docs/rsanet.md);
it scores with MONAI's metrics, which give the paper's sample-average and voxel-average Dice and IoU."""

import pytest
import torch
from monai.bundle import ConfigParser
from monai.metrics import ConfusionMatrixMetric, DiceMetric, MeanIoU

from monai_ext.bundles import bundle_dir
from monai_ext.losses import exponential_class_weights


def parsed(*names: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(bundle_dir("rsanet") / "configs" / n) for n in names])
    return parser


def decide(transforms, lesion_prob: torch.Tensor) -> torch.Tensor:
    """Run the (softmax, correction, argmax) steps of a postprocessing list on logits with the given lesion prob."""
    logits = torch.stack([torch.zeros_like(lesion_prob), torch.logit(lesion_prob)])
    data = {"pred": logits}
    for t in transforms:
        if type(t).__name__ in ("Activationsd", "ClassWeightCorrectiond", "AsDiscreted"):
            data = t({**data, "label": torch.zeros_like(logits[:1])})
    pred = data["pred"]
    return pred.argmax(0) if pred.shape[0] == 2 else pred[0]  # validation one-hots, inference keeps the index


@pytest.mark.parametrize("r", [0.0, 0.02])
def test_inference_thresholds_the_lesion_probability_at_the_lesion_weight(r):
    parser = parsed("inference.json")
    parser["lesion_fraction"] = r
    transforms = parser.get_parsed_content("postprocessing").transforms
    names = [type(t).__name__ for t in transforms]
    assert names.index("Activationsd") < names.index("ClassWeightCorrectiond") < names.index("AsDiscreted")
    threshold = float(exponential_class_weights(r)[1])  # weights sum to 1
    probs = torch.tensor([threshold - 0.01, threshold + 0.01, 0.45])
    assert decide(transforms, probs).flatten().tolist() == [0, 1, 1]


def test_training_and_validation_use_the_training_lesion_fraction():
    parser = parsed("train.json")
    parser["lesion_fraction"] = 0.01  # train.json computes it from the training labels
    for key in ("train#postprocessing", "validate#postprocessing"):
        transforms = parser.get_parsed_content(key).transforms
        assert any(type(t).__name__ == "ClassWeightCorrectiond" for t in transforms), key
        assert decide(transforms, torch.tensor([0.26, 0.29])).flatten().tolist() == [0, 1]


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
