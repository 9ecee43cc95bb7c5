"""Inference on the user's own files: ``input`` may be one image (NIfTI, NRRD, ...), a folder of images or a
datalist; the output options (``output_postfix``, ``output_dtype``, ``separate_folder``, ``save_probabilities``) are
top-level ids; bad input is refused up front, with nothing written.

Every bundle's wiring is checked in-process on its parsed configs (milliseconds); full inference runs use a tiny
SSH-UNet with random weights (the outputs' names, grids and types are checked, not their quality), in-process, and
once through ``python -m monai.bundle run`` as a user runs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import LoadImage

from monai_ext.bundles import bundle_dir
from tests.volume_files import write_dicom_series, write_itk

BUNDLES = ["cotr", "rsanet", "scaa", "ssh_unet", "thick2d"]
SHAPE = (24, 24, 16)
SPACING = (1.5, 1.5, 1.5)
NUM_CLASSES = 3
# a tiny SSH-UNet that runs a 24 x 24 x 16 volume in about a second on a CPU
TINY = {
    "num_classes": NUM_CLASSES,
    "pixdim": list(SPACING),
    "roi_size": [32, 32, 32],
    "network_def#filters": [8, 16, 32, 64, 128],
    "num_workers": 0,
}


def config(bundle: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(bundle_dir(bundle) / "configs" / "inference.json"))
    for key, value in overrides.items():
        parser[key] = value
    return parser


def in_channels(bundle: str) -> int:
    return json.loads((bundle_dir(bundle) / "configs" / "inference.json").read_text())["in_channels"]


def volume(channels: int = 1, seed: int = 0) -> np.ndarray:
    """Noise, ``SHAPE`` (+ channels last when several), float32."""
    shape = SHAPE + ((channels,) if channels > 1 else ())
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def affine() -> np.ndarray:
    a = np.diag([*SPACING, 1.0])
    a[:3, 3] = [-10.0, 5.0, 20.0]
    return a


def write_nifti(path: Path, channels: int = 1, seed: int = 0) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume(channels, seed), affine()), str(path))
    return str(path)


def write_nrrd(path: Path, channels: int = 1, seed: int = 0) -> str:
    """An NRRD (.nrrd, gzip) or MetaImage (.mha) file on the NIfTI files' grid (origin in LPS)."""
    return write_itk(path, volume(channels, seed), SPACING, origin=[10.0, -5.0, 20.0], vector=channels > 1)


def write_dicom(folder: Path, channels: int = 1, seed: int = 0) -> str:
    """A DICOM series (int16, one file per slice); ``folder`` is the series."""
    return write_dicom_series(folder, 100 * volume(channels, seed))


def truncate(path: str) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    """A bundle_root whose models/model.pt holds the tiny SSH-UNet's (random) weights."""
    root = tmp_path_factory.mktemp("ssh_unet_tiny")
    torch.manual_seed(0)
    net = config("ssh_unet", **TINY).get_parsed_content("network_def")
    (root / "models").mkdir()
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return root


def infer(root: Path, out: Path, **overrides) -> None:
    """Run ssh_unet's inference.json in-process, as ``monai.bundle run`` does: initialize, then run."""
    parser = config(
        "ssh_unet", **TINY, bundle_root=str(root), output_dir=str(out), device=torch.device("cpu"), **overrides
    )
    parser.get_parsed_content("initialize")
    parser.get_parsed_content("run")


def loaded(path: str):
    return LoadImage(image_only=True)(path)


# ---------------------------------------------------------------- every bundle: what `input` resolves to


@pytest.mark.parametrize("bundle", BUNDLES)
def test_input_may_be_one_nifti_or_nrrd_file_or_a_folder_in_every_bundle(bundle, tmp_path):
    channels = in_channels(bundle)
    nii = write_nifti(tmp_path / "a.nii.gz", channels)
    nrrd = write_nrrd(tmp_path / "b.nrrd", channels)
    (tmp_path / "notes.txt").write_text("not an image")
    for source, expected in [(nii, [nii]), (nrrd, [nrrd]), (str(tmp_path), [nii, nrrd])]:
        data = config(bundle, input=source).get_parsed_content("dataset#data")
        assert [item["image"] for item in data] == expected


@pytest.mark.parametrize("bundle", BUNDLES)
def test_the_default_datalist_and_dataset_dir_are_read_as_before(bundle, tmp_path):
    nii = write_nifti(tmp_path / "images" / "a.nii.gz", in_channels(bundle))
    (tmp_path / "dataset.json").write_text(json.dumps({"test": ["images/a.nii.gz"]}))
    data = config(bundle, dataset_dir=str(tmp_path)).get_parsed_content("dataset#data")
    assert [item["image"] for item in data] == [nii]
    # a datalist given as input reads its relative paths from its own folder
    other = tmp_path / "lists"
    other.mkdir()
    (other / "mine.json").write_text(json.dumps({"test": ["../images/a.nii.gz"]}))
    data = config(bundle, input=str(other / "mine.json")).get_parsed_content("dataset#data")
    assert [Path(item["image"]).resolve() for item in data] == [Path(nii).resolve()]


@pytest.mark.parametrize("bundle", BUNDLES)
def test_output_options_reach_the_writers_and_probabilities_are_off_by_default(bundle):
    default = [type(t).__name__ for t in config(bundle).get_parsed_content("postprocessing").transforms]
    assert default.count("SaveImaged") == 1 and "CopyItemsd" not in default
    post = config(bundle, save_probabilities=True, separate_folder=True, output_postfix="label").get_parsed_content(
        "postprocessing"
    )
    names = [type(t).__name__ for t in post.transforms]
    assert names[-2:] == ["SaveImaged", "SaveImaged"]
    assert names.index("CopyItemsd") == names.index("AsDiscreted") - 1  # the probabilities, before the argmax
    labels, probabilities = post.transforms[-2:]
    assert labels.keys == ("pred",) and probabilities.keys == ("probabilities",)
    assert labels.saver.folder_layout.postfix == "label" and probabilities.saver.folder_layout.postfix == "prob"
    assert labels.saver.folder_layout.makedirs and probabilities.saver.folder_layout.makedirs  # separate_folder


@pytest.mark.parametrize("bundle", BUNDLES)
def test_a_corrupt_nrrd_in_a_folder_is_refused_up_front(bundle, tmp_path):
    write_nifti(tmp_path / "a.nii.gz", in_channels(bundle))
    bad = write_nrrd(tmp_path / "b.nrrd", in_channels(bundle))
    truncate(bad)
    data = config(bundle, input=str(tmp_path)).get_parsed_content("dataset#data")
    with pytest.raises(ValueError, match=r"cannot read .*b\.nrrd as a NRRD volume: ITKReader failed .* truncated"):
        len(data)


def test_an_unsupported_file_or_an_empty_folder_is_refused_with_the_formats(tmp_path):
    png = tmp_path / "slice.png"
    png.write_bytes(b"\x89PNG")
    with pytest.raises(ValueError, match=r"(?s)slice\.png.*Give NIfTI \(\.nii, \.nii\.gz\), NRRD"):
        config("ssh_unet", input=str(png)).get_parsed_content("dataset#data").check()
    with pytest.raises(ValueError, match=r"no volume found in the folder .* \(it holds: slice\.png\)"):
        config("ssh_unet", input=str(tmp_path)).get_parsed_content("dataset#data").check()
    with pytest.raises(FileNotFoundError, match=r"input .*absent\.nrrd not found; .*--input"):
        config("ssh_unet", input=str(tmp_path / "absent.nrrd")).get_parsed_content("dataset#data").check()


# ---------------------------------------------------------------- inference runs (tiny SSH-UNet)


@pytest.mark.parametrize(
    "writer, name",
    [(write_nifti, "case.nii.gz"), (write_nrrd, "case.nrrd"), (write_dicom, "case")],
    ids=["nifti", "nrrd", "dicom"],
)
def test_inference_on_one_file_writes_its_labels_on_its_grid(tiny_root, tmp_path, writer, name):
    image = writer(tmp_path / "in" / name)
    out = tmp_path / "pred"
    infer(tiny_root, out, input=image)
    assert sorted(p.name for p in out.iterdir()) == ["case_seg.nii.gz"]
    pred, source = loaded(str(out / "case_seg.nii.gz")), loaded(image)
    assert tuple(pred.shape) == SHAPE
    np.testing.assert_allclose(pred.affine, source.affine, atol=1e-5)  # the input's grid, whatever its format
    assert nib.load(out / "case_seg.nii.gz").get_data_dtype() == np.uint8
    assert set(np.unique(pred.numpy())) <= set(range(NUM_CLASSES))


def test_inference_on_a_folder_with_the_output_options_and_probabilities(tiny_root, tmp_path):
    folder = tmp_path / "in"
    write_nifti(folder / "a.nii.gz", seed=1)
    write_nrrd(folder / "b.mha", seed=2)
    (folder / "README.txt").write_text("passed over")
    out = tmp_path / "pred"
    infer(
        tiny_root,
        out,
        input=str(folder),
        output_postfix="label",
        output_dtype="int16",
        separate_folder="true",  # as `--separate_folder true` arrives from the command line
        save_probabilities="true",
    )
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["a/a_label.nii.gz", "a/a_prob.nii.gz", "b/b_label.nii.gz", "b/b_prob.nii.gz"]
    for case in "ab":
        labels = nib.load(out / case / f"{case}_label.nii.gz")
        probabilities = nib.load(out / case / f"{case}_prob.nii.gz")
        assert labels.get_data_dtype() == np.int16 and probabilities.get_data_dtype() == np.float32
        assert labels.shape == SHAPE and probabilities.shape == (*SHAPE, NUM_CLASSES)
        p = np.asarray(probabilities.dataobj)
        np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-4)  # softmax maps, on the input grid
        np.testing.assert_array_equal(np.asarray(labels.dataobj), p.argmax(-1))  # the labels are their argmax
        np.testing.assert_allclose(probabilities.affine, labels.affine)


def test_inference_with_a_corrupt_nrrd_after_a_good_file_writes_nothing(tiny_root, tmp_path):
    folder = tmp_path / "in"
    write_nifti(folder / "a.nii.gz")
    bad = write_nrrd(folder / "b.nrrd")
    truncate(bad)
    out = tmp_path / "pred"
    with pytest.raises(Exception) as e:
        infer(tiny_root, out, input=str(folder))
    chain, error = [], e.value  # MONAI's config parser wraps the error of the check: look along the chain
    while error is not None:
        chain.append(str(error))
        error = error.__cause__ or error.__context__
    assert any(f"cannot read {bad} as a NRRD volume" in m and "copy the file again" in m for m in chain), chain
    assert not out.exists() and not (tmp_path / "pred.partial").exists()


@pytest.mark.slow
def test_command_line_inference_on_one_nrrd_file(tiny_root, tmp_path):
    image = write_nrrd(tmp_path / "scan.nrrd")
    out = tmp_path / "pred"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json"]
    for key, value in {**TINY, "bundle_root": tiny_root, "output_dir": out, "input": image}.items():
        cmd += [f"--{key}", str(value).replace(" ", "")]
    cmd += ["--save_probabilities", "true"]
    proc = subprocess.run(cmd, cwd=bundle_dir("ssh_unet"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["scan_prob.nii.gz", "scan_seg.nii.gz"]
