"""``--compile true`` runs a bundle's inference with the network compiled (``monai_ext.networks.compile_network``,
weights frozen): the checkpoint must be loaded before the first compiled call, and the outputs are the eager ones.

Run for SCAA, whose inferer calls two compiled methods and hands them MONAI's ``MetaTensor``; the other bundles share
the same config line (thickened 2D's and SSH-UNet's compiled outputs are compared with their eager ones in
tests/networks/test_capture.py). The weights are the tiny network's random initialisation, as in test_amp.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.bundles.test_amp import infer, tiny_bundle
from tests.bundles.test_bundles import CASES

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("case", [c for c in CASES if c.name == "scaa"], ids=lambda c: c.name)
def test_compiled_inference_writes_what_eager_inference_writes(case, tmp_path_factory):
    root, data = tiny_bundle(tmp_path_factory, case)
    labels, probs = infer(case, root, data)
    labels_c, probs_c = infer(case, root, data, compile="true")
    assert probs_c.shape == probs.shape and labels_c.shape == labels.shape
    # frozen before the checkpoint loaded, the graph would hold other (random) weights: far beyond round-off
    assert np.abs(probs_c - probs).max() < 1e-3
    assert np.mean(labels_c == labels) >= 0.999
