"""Every monai_ext bundle, run end to end as a user runs it: ``python -m monai.bundle ...`` in child processes.

A bundle joins these tests with one entry in ``CASES``: tiny overrides that make each run take seconds on a CPU,
and the demo task whose synthetic data it trains on.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_ext.bundles import bundle_dir
from monai_ext.data import write_msd_dataset

pytestmark = pytest.mark.slow


@dataclass
class Case:
    name: str
    tiny: dict  # overrides: a tiny network and one short epoch
    data: dict = field(default_factory=dict)  # extra write_msd_dataset arguments
    in_channels: int = 1
    num_classes: int = 3
    trace_export: bool = False  # TorchScript by tracing (networks that do not script)
    export_size: tuple[int, int, int] = (32, 32, 32)  # the exported network's input (H, W, D)

    @property
    def root(self) -> Path:
        return bundle_dir(self.name)

    @property
    def configs_dir(self) -> Path:
        return self.root / "configs"

    def configs(self, *names: str) -> str:
        return "[" + ",".join(repr(str(self.configs_dir / n)) for n in names) + "]"

    def run(self, *args: str, timeout: int = 600, **overrides) -> subprocess.CompletedProcess:
        """``python -m monai.bundle ARGS --key value ...`` in the bundle folder, with the tiny overrides."""
        return run_in(self.root, [sys.executable, "-m", "monai.bundle", *args], {**self.tiny, **overrides}, timeout)


def run_in(cwd: Path, cmd: list[str], overrides: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    for key, value in overrides.items():
        cmd = [*cmd, f"--{key}", str(value)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


CASES = [
    Case(
        "cotr",
        {
            "num_classes": 3,
            "pixdim": "[1.5,1.5,1.5]",
            "roi_size": "[32,32,32]",
            "network_def#encoder_channels": "[8,16,24,24]",
            "network_def#encoder_blocks": "[1,1,1]",
            "network_def#num_layers": 1,
            "network_def#mlp_dim": 32,
            "network_def#num_heads": 2,
            "network_def#num_points": 2,
            "epochs": 1,
            "val_interval": 1,
            "batch_size": 1,
            "num_workers": 0,
            "val_fraction": 0.5,
        },
        trace_export=True,
    ),
    Case(
        "ssh_unet",
        {
            "num_classes": 3,
            "pixdim": "[1.5,1.5,1.5]",
            "roi_size": "[32,32,32]",
            "network_def#filters": "[8,16,32,64,128]",
            "epochs": 1,
            "val_interval": 1,
            "batch_size": 1,
            "num_workers": 0,
            "val_fraction": 0.5,
        },
    ),
    Case(
        "rsanet",
        {
            "roi_size": "[32,32,16]",
            "network_def#filters": "[8,16,32,64,128]",
            "epochs": 1,
            "val_interval": 1,
            "batch_size": 1,
            "num_workers": 0,
            "val_fraction": 0.5,
        },
        data={"task": "lesions"},
        in_channels=3,
        num_classes=2,
        trace_export=True,
    ),
    Case(
        "scaa",
        {
            "num_classes": 3,
            "network_def#filters": "[4,8,8,16,16]",
            "network_def#context_channels": "[4,4,8,8]",
            "network_def#pool_sizes": "[4,2,2,2]",
            "num_slices": 4,
            "epochs": 1,
            "val_interval": 1,
            "num_workers": 0,
            "val_fraction": 0.5,
        },
        trace_export=True,
        export_size=(64, 64, 32),  # a size SCAA takes (2^5 divides it, in-plane at least 2^6); the data are 32^3
    ),
    Case(
        "thick2d",
        {
            "num_classes": 3,
            "num_slices": 6,
            "slice_size": "[32,32]",
            "network_def#layers": "[1,1,1,1]",
            "network_def#block_inplanes": "[8,16,32,64]",
            "network_def#decoder_channels": 16,
            "network_def#low_level_channels": 8,
            "epochs": 1,
            "val_interval": 1,
            "batch_size": 1,
            "num_workers": 0,
            "val_fraction": 0.5,
        },
        export_size=(32, 32, 6),  # one group of num_slices: whole volumes are the inferer's job
    ),
]


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c.name)
def case(request) -> Case:
    return request.param


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, case) -> Path:
    root = tmp_path_factory.mktemp(f"{case.name}_data") / "data"
    write_msd_dataset(root, num_train=4, num_test=2, shape=(32, 32, 32), seed=1, **case.data)
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory, case, dataset) -> Path:
    """bundle_root after one tiny training epoch (models/model.pt written by the key-metric checkpoint)."""
    root = tmp_path_factory.mktemp(f"{case.name}_bundle")
    ok(case.run("run", config_file=case.configs("train.json"), bundle_root=root, dataset_dir=dataset))
    return root


def test_metadata_is_valid_against_the_local_schema(case, meta_schema):
    meta_file = case.configs_dir / "metadata.json"
    ok(
        run_in(
            case.root,
            [sys.executable, "-m", "monai.bundle", "verify_metadata"],
            {"meta_file": meta_file, "filepath": meta_schema},
        )
    )
    meta = json.loads(meta_file.read_text())
    assert meta["version"] in meta["changelog"]
    assert "monai-ext" in meta["required_packages_version"]


def test_configs_are_formatted_with_indent_4(case):
    for path in case.configs_dir.glob("*.json"):
        text = path.read_text()
        assert text == json.dumps(json.loads(text), indent=4) + "\n", path.name


@pytest.mark.parametrize(
    "files, ids",
    [
        (["inference.json", "demo.json"], ["network_def", "preprocessing", "inferer", "postprocessing"]),
        (["train.json", "demo.json"], ["network_def", "train#preprocessing", "validate#preprocessing", "optimizer"]),
        (["train.json", "evaluate.json"], ["validate#preprocessing", "validate#key_metric"]),
    ],
)
def test_demo_and_layered_configs_resolve(case, files, ids):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([case.configs_dir / f for f in files])
    for id_ in ids:
        assert parser.get_parsed_content(id_) is not None


def test_net_in_out_and_spatial_shape(case):
    meta_file, config_file = case.configs_dir / "metadata.json", case.configs_dir / "inference.json"
    ok(
        run_in(
            case.root,
            [sys.executable, "-m", "monai.bundle", "verify_net_in_out"],
            {"net_id": "network_def", "meta_file": meta_file, "config_file": config_file},
        )
    )
    # verify_net_in_out checks only channels and dtype: check the spatial shape here
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_file)
    meta = json.loads(meta_file.read_text())["network_data_format"]
    image, pred = meta["inputs"]["image"], meta["outputs"]["pred"]
    net = parser.get_parsed_content("network_def").eval()
    with torch.no_grad():
        out = net(torch.rand(1, image["num_channels"], *image["spatial_shape"]))
    assert tuple(out.shape) == (1, pred["num_channels"], *pred["spatial_shape"])


def test_train_writes_a_plain_state_dict(case, trained):
    state = torch.load(trained / "models" / "model.pt", weights_only=True)
    assert isinstance(state, dict) and all(torch.is_tensor(v) for v in state.values())
    assert not any(k.startswith("module.") for k in state)


def test_evaluate_writes_metrics(case, trained, dataset):
    ok(
        case.run(
            "run", config_file=case.configs("train.json", "evaluate.json"), bundle_root=trained, dataset_dir=dataset
        )
    )
    assert "val_mean_dice" in (trained / "eval" / "metrics.csv").read_text()


def _pred_name(image: str) -> str:
    return Path(image).name.replace(".nii.gz", "_seg.nii.gz")


def test_inference_writes_labels_on_the_input_grid(case, trained, dataset, tmp_path):
    out = tmp_path / "pred"
    ok(
        case.run(
            "run", config_file=case.configs("inference.json"), bundle_root=trained, dataset_dir=dataset, output_dir=out
        )
    )
    tests = json.loads((dataset / "dataset.json").read_text())["test"]
    assert sorted(p.name for p in out.iterdir()) == sorted(_pred_name(t) for t in tests)
    for t in tests:
        image = nib.load(dataset / t)
        pred = nib.load(out / _pred_name(t))
        assert pred.shape == image.shape[:3]
        np.testing.assert_allclose(pred.affine, image.affine, atol=1e-5)
        assert set(np.unique(np.asarray(pred.dataobj))) <= set(range(case.num_classes))


def test_torchscript_and_onnx_export(case, trained, tmp_path):
    common = {
        "ckpt_file": trained / "models" / "model.pt",
        "meta_file": case.configs_dir / "metadata.json",
        "config_file": case.configs_dir / "inference.json",
    }
    shape = [1, case.in_channels, *case.export_size]
    ts, onnx_path = tmp_path / "model.ts", tmp_path / "model.onnx"
    trace = {"use_trace": True, "input_shape": str(shape).replace(" ", "")}
    ok(case.run("ckpt_export", "network_def", filepath=ts, **common, **(trace if case.trace_export else {})))
    ok(
        case.run(
            "onnx_export", "network_def", filepath=onnx_path, converter_kwargs="{'dynamo': False}", **trace, **common
        )
    )
    x = torch.rand(*shape)
    scripted = torch.jit.load(str(ts))
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(onnx_path))
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(out), scripted(x), atol=1e-4, rtol=1e-4)


TORCHRUN = Path(sys.executable).parent / "torchrun"


@pytest.mark.skipif(not TORCHRUN.exists() and shutil.which("torchrun") is None, reason="torchrun not installed")
def test_two_process_training_on_cpu(case, dataset, tmp_path):
    torchrun = str(TORCHRUN) if TORCHRUN.exists() else shutil.which("torchrun")
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", "-m", "monai.bundle", "run"]
    overrides = {
        "config_file": case.configs("train.json", "multi_gpu_train.json"),
        "bundle_root": tmp_path,
        "dataset_dir": dataset,
        **case.tiny,
    }
    proc = run_in(case.root, cmd, overrides)
    exit_abort = "terminate called without an active exception" in proc.stdout + proc.stderr
    if proc.returncode != 0 and exit_abort and (tmp_path / "models" / "model.pt").is_file():
        # Known and intermittent: one gloo rank can abort while its interpreter exits, after training has
        # finished and the checkpoint is saved. Seen in about half of full-suite runs, never in isolation
        # (0 of 12). Retry once; a second failure is a real one.
        shutil.rmtree(tmp_path / "models")
        proc = run_in(case.root, cmd, overrides)
    ok(proc)
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # saved unwrapped from DistributedDataParallel


def _good_image(dataset: Path) -> np.ndarray:
    return np.asarray(nib.load(dataset / "imagesTr" / "case_000.nii.gz").dataobj).astype(np.float32)


def _custom_datalist(tmp_path: Path, dataset: Path, images: dict[str, np.ndarray]) -> Path:
    """Write images (name -> array) as NIfTI beside a datalist listing them under ``training`` with a real label."""
    affine = nib.load(dataset / "imagesTr" / "case_000.nii.gz").affine
    entries = []
    for name, array in images.items():
        nib.save(nib.Nifti1Image(array, affine), tmp_path / f"{name}.nii.gz")
        entries.append({"image": f"./{name}.nii.gz", "label": str(dataset / "labelsTr" / "case_000.nii.gz")})
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"training": entries}))
    return path


def _infer(case: Case, trained: Path, datalist: Path, out: Path) -> subprocess.CompletedProcess:
    return case.run(
        "run",
        config_file=case.configs("inference.json"),
        bundle_root=trained,
        datalist=datalist,
        dataset_dir=datalist.parent,
        data_list_key="training",
        output_dir=out,
    )


def _fails_with(proc: subprocess.CompletedProcess, message: str) -> None:
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]


def test_missing_datalist_is_reported_and_nothing_written(case, trained, tmp_path):
    out = tmp_path / "pred"
    proc = _infer(case, trained, tmp_path / "nowhere" / "dataset.json", out)
    _fails_with(proc, "not found; point the bundle at your data")
    assert not out.exists()


def test_2d_image_is_refused(case, trained, dataset, tmp_path):
    image = _good_image(dataset)
    flat = image[:, :, 0] if image.ndim == 3 else image[:, :, 0, 0]  # one slice of one channel
    datalist = _custom_datalist(tmp_path, dataset, {"flat": flat})
    _fails_with(_infer(case, trained, datalist, tmp_path / "pred"), "a 3D volume (X, Y, Z) is expected")
    assert not (tmp_path / "pred").exists()


def test_wrong_channel_count_is_refused(case, trained, dataset, tmp_path):
    image = _good_image(dataset)
    volume = image if image.ndim == 3 else image[..., 0]
    wrong = np.stack([volume] * (case.in_channels + 1), axis=-1)
    datalist = _custom_datalist(tmp_path, dataset, {"wrong_channels": wrong})
    _fails_with(_infer(case, trained, datalist, tmp_path / "pred"), f"has {case.in_channels + 1} channels")
    assert not (tmp_path / "pred").exists()


def test_nan_voxels_fail_and_leave_no_partial_predictions(case, trained, dataset, tmp_path):
    bad = _good_image(dataset)
    bad[(3, 4, 5) + (0,) * (bad.ndim - 3)] = np.nan  # one voxel of one channel
    # the good case is processed first: its prediction must not be published when the second case fails
    datalist = _custom_datalist(tmp_path, dataset, {"a_good": _good_image(dataset), "b_nan": bad})
    out = tmp_path / "pred"
    _fails_with(_infer(case, trained, datalist, out), "1 voxel(s) are NaN or infinite")
    assert not out.exists() and not (tmp_path / "pred.partial").exists()


def test_image_label_size_mismatch_stops_training_before_it_starts(case, dataset, tmp_path):
    image = _good_image(dataset)
    datalist = _custom_datalist(tmp_path, dataset, {f"c{i}": image[:, :, :24] for i in range(3)})
    proc = case.run(
        "run",
        config_file=case.configs("train.json"),
        bundle_root=tmp_path / "b",
        datalist=datalist,
        dataset_dir=tmp_path,
    )
    _fails_with(proc, "image and label sizes differ")
    assert not (tmp_path / "b" / "models").exists()
