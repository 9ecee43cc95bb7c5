"""The ssh_unet bundle, run end to end as a user runs it: ``python -m monai.bundle ...`` in a child process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_ext.bundles import bundle_dir
from monai_ext.data import write_msd_dataset

pytestmark = pytest.mark.slow

BUNDLE = bundle_dir("ssh_unet")
CONFIGS = BUNDLE / "configs"
# a tiny network and one short epoch, so each run takes seconds on a CPU
TINY = {
    "num_classes": 3,
    "pixdim": "[1.5,1.5,1.5]",
    "roi_size": "[32,32,32]",
    "network_def#filters": "[8,16,32,64,128]",
    "epochs": 1,
    "val_interval": 1,
    "batch_size": 1,
    "num_workers": 0,
    "val_fraction": 0.5,
}


def bundle_cmd(*args: str, **overrides) -> list[str]:
    cmd = [sys.executable, "-m", "monai.bundle", *args]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    return cmd


def run(cmd: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=BUNDLE, capture_output=True, text=True, timeout=timeout)


def configs(*names: str) -> str:
    return "[" + ",".join(repr(str(CONFIGS / n)) for n in names) + "]"


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ssh_unet_data") / "data"
    write_msd_dataset(root, num_train=4, num_test=2, shape=(32, 32, 32), seed=1)
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory, dataset) -> Path:
    """bundle_root after one tiny training epoch (models/model.pt written by the key-metric checkpoint)."""
    root = tmp_path_factory.mktemp("ssh_unet_bundle")
    ok(run(bundle_cmd("run", config_file=configs("train.json"), bundle_root=root, dataset_dir=dataset, **TINY)))
    return root


def test_metadata_is_valid_against_the_local_schema(meta_schema):
    ok(run(bundle_cmd("verify_metadata", meta_file=CONFIGS / "metadata.json", filepath=meta_schema)))
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    assert "monai-ext" in meta["required_packages_version"]


def test_configs_are_formatted_with_indent_4():
    for path in CONFIGS.glob("*.json"):
        text = path.read_text()
        assert text == json.dumps(json.loads(text), indent=4) + "\n", path.name


def test_net_in_out_and_spatial_shape():
    ok(
        run(
            bundle_cmd(
                "verify_net_in_out",
                net_id="network_def",
                meta_file=CONFIGS / "metadata.json",
                config_file=CONFIGS / "inference.json",
            )
        )
    )
    # verify_net_in_out checks only channels and dtype: check the spatial shape here
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(CONFIGS / "inference.json")
    meta = json.loads((CONFIGS / "metadata.json").read_text())["network_data_format"]
    image, pred = meta["inputs"]["image"], meta["outputs"]["pred"]
    net = parser.get_parsed_content("network_def").eval()
    with torch.no_grad():
        out = net(torch.rand(1, image["num_channels"], *image["spatial_shape"]))
    assert tuple(out.shape) == (1, pred["num_channels"], *pred["spatial_shape"])


def test_train_writes_a_plain_state_dict(trained):
    state = torch.load(trained / "models" / "model.pt", weights_only=True)
    assert isinstance(state, dict) and "output_block.conv.conv.weight" in state
    assert state["output_block.conv.conv.weight"].shape[0] == 3


def test_evaluate_writes_metrics(trained, dataset):
    ok(
        run(
            bundle_cmd(
                "run",
                config_file=configs("train.json", "evaluate.json"),
                bundle_root=trained,
                dataset_dir=dataset,
                **TINY,
            )
        )
    )
    summary = (trained / "eval" / "metrics.csv").read_text()
    assert "val_mean_dice" in summary


def test_inference_writes_labels_on_the_input_grid(trained, dataset, tmp_path):
    out = tmp_path / "pred"
    ok(
        run(
            bundle_cmd(
                "run",
                config_file=configs("inference.json"),
                bundle_root=trained,
                dataset_dir=dataset,
                output_dir=out,
                **TINY,
            )
        )
    )
    tests = json.loads((dataset / "dataset.json").read_text())["test"]
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(Path(t).name.replace(".nii.gz", "_seg.nii.gz") for t in tests)
    for t in tests:
        image = nib.load(dataset / t)
        pred = nib.load(out / Path(t).name.replace(".nii.gz", "_seg.nii.gz"))
        assert pred.shape == image.shape
        np.testing.assert_allclose(pred.affine, image.affine, atol=1e-5)
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}


def test_torchscript_and_onnx_export(trained, tmp_path):
    common = {
        "ckpt_file": trained / "models" / "model.pt",
        "meta_file": CONFIGS / "metadata.json",
        "config_file": CONFIGS / "inference.json",
        **TINY,
    }
    ts, onnx_path = tmp_path / "model.ts", tmp_path / "model.onnx"
    ok(run(bundle_cmd("ckpt_export", "network_def", filepath=ts, **common)))
    onnx = {"use_trace": True, "input_shape": "[1,1,32,32,32]", "converter_kwargs": "{'dynamo': False}"}
    ok(run(bundle_cmd("onnx_export", "network_def", filepath=onnx_path, **onnx, **common)))
    x = torch.rand(1, 1, 32, 32, 32)
    scripted = torch.jit.load(str(ts))
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(onnx_path))
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(out), scripted(x), atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(
    shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
    reason="torchrun not installed",
)
def test_two_process_training_on_cpu(dataset, tmp_path):
    torchrun = str(Path(sys.executable).parent / "torchrun")
    cmd = [torchrun, "--standalone", "--nproc_per_node=2"] + bundle_cmd(
        "run",
        config_file=configs("train.json", "multi_gpu_train.json"),
        bundle_root=tmp_path,
        dataset_dir=dataset,
        **TINY,
    )[1:]
    ok(run(cmd))
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # saved unwrapped from DistributedDataParallel


def _custom_datalist(tmp_path: Path, dataset: Path, key: str, images: dict[str, np.ndarray]) -> Path:
    """Write images (name -> array) as NIfTI beside a datalist listing them under ``key`` (with real labels)."""
    affine = nib.load(dataset / "imagesTr" / "case_000.nii.gz").affine
    entries = []
    for name, array in images.items():
        nib.save(nib.Nifti1Image(array, affine), tmp_path / f"{name}.nii.gz")
        entries.append({"image": f"./{name}.nii.gz", "label": str(dataset / "labelsTr" / "case_000.nii.gz")})
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({key: entries}))
    return path


def _good_image(dataset: Path) -> np.ndarray:
    return np.asarray(nib.load(dataset / "imagesTr" / "case_000.nii.gz").dataobj).astype(np.float32)


def _infer(trained: Path, datalist: Path, out: Path) -> subprocess.CompletedProcess:
    cmd = bundle_cmd(
        "run", config_file=configs("inference.json"), bundle_root=trained, datalist=datalist,
        dataset_dir=datalist.parent, data_list_key="training", output_dir=out, **TINY,
    )  # fmt: skip
    return run(cmd)


def _fails_with(proc: subprocess.CompletedProcess, message: str) -> None:
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]


def test_missing_datalist_is_reported_and_nothing_written(trained, tmp_path):
    out = tmp_path / "pred"
    _fails_with(_infer(trained, tmp_path / "nowhere" / "dataset.json", out), "not found; point the bundle at your data")
    assert not out.exists()


def test_2d_image_is_refused(trained, dataset, tmp_path):
    datalist = _custom_datalist(tmp_path, dataset, "training", {"flat": _good_image(dataset)[:, :, 0]})
    _fails_with(_infer(trained, datalist, tmp_path / "pred"), "a 3D volume (X, Y, Z) is expected")
    assert not (tmp_path / "pred").exists()


def test_wrong_channel_count_is_refused(trained, dataset, tmp_path):
    two = np.stack([_good_image(dataset)] * 2, axis=-1)
    datalist = _custom_datalist(tmp_path, dataset, "training", {"two_channels": two})
    _fails_with(_infer(trained, datalist, tmp_path / "pred"), "has 2 channels")
    assert not (tmp_path / "pred").exists()


def test_nan_voxels_fail_and_leave_no_partial_predictions(trained, dataset, tmp_path):
    bad = _good_image(dataset)
    bad[3, 4, 5] = np.nan
    # the good case is processed first: its prediction must not be published when the second case fails
    datalist = _custom_datalist(tmp_path, dataset, "training", {"a_good": _good_image(dataset), "b_nan": bad})
    out = tmp_path / "pred"
    _fails_with(_infer(trained, datalist, out), "1 voxel(s) are NaN or infinite")
    assert not out.exists() and not (tmp_path / "pred.partial").exists()


def test_image_label_size_mismatch_stops_training_before_it_starts(dataset, tmp_path):
    image = _good_image(dataset)
    datalist = _custom_datalist(tmp_path, dataset, "training", {f"c{i}": image[:, :, :24] for i in range(3)})
    cmd = bundle_cmd(
        "run", config_file=configs("train.json"), bundle_root=tmp_path / "b", datalist=datalist,
        dataset_dir=tmp_path, **TINY,
    )  # fmt: skip
    _fails_with(run(cmd), "image and label sizes differ")
    assert not (tmp_path / "b" / "models").exists()
