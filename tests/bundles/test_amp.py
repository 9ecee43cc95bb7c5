"""``--amp true`` runs every bundle's inference under autocast (bf16 on this CPU) and writes what fp32 writes: a
uint8 label map and float32 probabilities, close to the fp32 run's.

The weights are the tiny network's random initialisation (no training: the comparison needs no skill, only the same
weights in both runs). Such a network's class probabilities lie close together, so its argmax flips wherever two
classes nearly tie: the label maps must agree on most voxels, not all.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from monai_ext.data import write_msd_dataset
from tests.bundles.test_bundles import CASES, Case, ok

pytestmark = pytest.mark.slow

# bf16 keeps 8 significant bits (relative step 2^-8 = 0.004), and the rounding adds up through the layers. Measured
# on this CPU (one case each): the largest change of a probability 0.0002 (thick2d), 0.008 (rsanet), 0.025 (cotr),
# 0.048 (ssh_unet), 0.058 (scaa); labels equal on 99.0-100 % of the voxels. The bounds leave room for other CPUs'
# kernels. A run that ignored --amp fails the first check (nothing changed).
PROB_ATOL = 0.1
MIN_LABEL_AGREEMENT = 0.97


def _literal(value):
    """A command-line override (``"[8,16]"``, ``3``) as the config value it stands for."""
    return json.loads(value) if isinstance(value, str) and value[:1] in "[{" else value


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c.name)
def case(request) -> Case:
    return request.param


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, case) -> tuple[Path, Path]:
    return tiny_bundle(tmp_path_factory, case)


def tiny_bundle(tmp_path_factory, case: Case) -> tuple[Path, Path]:
    """(bundle_root holding the tiny network's random weights as models/model.pt, dataset folder)."""
    tmp = tmp_path_factory.mktemp(f"{case.name}_bundle")
    write_msd_dataset(tmp / "data", num_train=1, num_test=1, shape=(32, 32, 32), seed=1, **case.data)
    parser = ConfigParser()
    parser.read_config(str(case.configs_dir / "inference.json"))
    for key, value in case.tiny.items():
        parser[key] = _literal(value)
    torch.manual_seed(0)
    (tmp / "bundle" / "models").mkdir(parents=True)
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp / "bundle" / "models" / "model.pt")
    return tmp / "bundle", tmp / "data"


def infer(case: Case, root: Path, data: Path, **overrides) -> tuple[np.ndarray, np.ndarray]:
    """(labels, probabilities) of the one test case with the inference ``overrides`` (``amp="true"``, ...), checked to
    be saved as uint8 and float32."""
    out = root.parent / ("pred_" + "_".join(f"{k}_{v}" for k, v in overrides.items()))
    ok(
        case.run(
            "run",
            config_file=case.configs("inference.json"),
            bundle_root=root,
            dataset_dir=data,
            output_dir=out,
            save_probabilities=True,
            **overrides,
        )
    )
    (seg,), (prob,) = sorted(out.glob("*_seg.nii.gz")), sorted(out.glob("*_prob.nii.gz"))
    seg, prob = nib.load(seg), nib.load(prob)
    assert seg.get_data_dtype() == np.uint8 and prob.get_data_dtype() == np.float32
    return np.asarray(seg.dataobj), np.asarray(prob.dataobj)


def test_amp_inference_writes_what_fp32_writes(case, bundle):
    labels, probs = infer(case, *bundle, amp="false")
    labels_amp, probs_amp = infer(case, *bundle, amp="true")
    assert probs_amp.shape == probs.shape and labels_amp.shape == labels.shape
    diff = np.abs(probs_amp - probs)
    assert diff.max() > 0, "amp changed nothing: autocast did not run"
    assert diff.max() < PROB_ATOL, f"probabilities moved by up to {diff.max():.4f} under autocast"
    agreement = np.mean(labels_amp == labels)
    assert agreement >= MIN_LABEL_AGREEMENT, f"labels equal on {100 * agreement:.1f} % of the voxels only"
