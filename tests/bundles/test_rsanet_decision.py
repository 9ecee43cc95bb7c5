"""The RSANet bundle decides on the true posterior: softmax, class-weight correction, then argmax (docs/rsanet.md)."""

import pytest
import torch
from monai.bundle import ConfigParser

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
