"""Bad input given to the bundles: every kind is refused before any work starts, with an error that names the file,
the problem and the fix, and no output is left behind; and the configs parse with no dataset present.

In-process tests parse each bundle's own configs and use the parsed objects (datalists, transforms) on small NIfTI
files: they check every bundle's wiring in milliseconds. A few end-to-end runs (``python -m monai.bundle run``, as a
user runs it) check that a refused run leaves no output; they stop at the checks, so they run no network.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose

from monai_ext.bundles import bundle_dir

BUNDLES = ["cotr", "rsanet", "scaa", "ssh_unet", "thick2d"]
SHAPE = (24, 24, 16)
MISSING = "not found; point the bundle at your data with --dataset_dir"


def parsed(bundle: str, *files: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(bundle_dir(bundle) / "configs" / f) for f in files])
    for key, value in overrides.items():
        parser[key] = value
    return parser


def in_channels(bundle: str) -> int:
    return json.loads((bundle_dir(bundle) / "configs" / "inference.json").read_text())["in_channels"]


def pixdim(bundle: str) -> list[float]:
    return json.loads((bundle_dir(bundle) / "configs" / "inference.json").read_text())["pixdim"]


def write(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return str(path)


def image(path: Path, channels: int = 1, shape=SHAPE, affine=None) -> str:
    """A noise image (so that a cut through its gzip cuts voxels), 4D when it has several channels."""
    full = shape + ((channels,) if channels > 1 else ())
    return write(path, np.random.default_rng(0).normal(size=full).astype(np.float32), affine)


def label(path: Path, value: float = 1, dtype=np.uint8, affine=None) -> str:
    values = np.zeros(SHAPE, dtype)
    values[4:8, 4:8, 4:8] = value
    return write(path, values, affine)


def datalist(folder: Path, key: str, entries: list) -> Path:
    path = folder / "dataset.json"
    path.write_text(json.dumps({key: entries}))
    return path


def truncate(path: str) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 3])  # gzip cut to a third


# ---------------------------------------------------------------- configs parse without data (issue 15, item 7)

# RSANet's loss weights and the class-weight correction after its softmax come from the training labels' class
# fractions: they read the (checked) datalist, as the test below shows
DATA_DERIVED = {"rsanet": ("loss", "train#postprocessing", "validate#postprocessing")}

PARSE_CASES = [
    (
        ["train.json"],
        ["network_def", "train#inferer", "validate#inferer", "train#preprocessing", "validate#preprocessing"],
        "train#dataset#data",
    ),
    (["inference.json"], ["network_def", "inferer", "preprocessing", "postprocessing", "handlers"], "dataset#data"),
    (
        ["train.json", "evaluate.json"],
        ["network_def", "validate#inferer", "validate#preprocessing", "validate#postprocessing", "validate#handlers"],
        "validate#dataset#data",
    ),
]


@pytest.mark.parametrize("files, ids, data_id", PARSE_CASES, ids=["train", "inference", "evaluate"])
@pytest.mark.parametrize("bundle", BUNDLES)
def test_configs_resolve_with_no_dataset_and_the_check_runs_when_the_data_are_used(
    bundle, files, ids, data_id, tmp_path
):
    parser = parsed(bundle, *files, dataset_dir=str(tmp_path / "absent"), bundle_root=str(tmp_path))
    for id_ in ids:
        if id_ not in DATA_DERIVED.get(bundle, ()):
            assert parser.get_parsed_content(id_) is not None, id_
    assert isinstance(parser.get_parsed_content("network_def"), torch.nn.Module)
    data = parser.get_parsed_content(data_id)  # a Datalist: nothing read yet
    with pytest.raises(FileNotFoundError, match=MISSING):
        data.check()
    assert not any(tmp_path.iterdir())  # parsing wrote nothing


def root_cause(error: BaseException) -> BaseException:
    """The error at the bottom of a chain (MONAI's config parser wraps what an expression or a component raised)."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return error


@contextlib.contextmanager
def raises_from(error_type: type[BaseException], pattern: str):
    """Like ``pytest.raises(error_type, match=pattern)``, for an error that MONAI wraps (a config component or
    expression, a ``Compose`` step): the error at the bottom of the chain is checked."""
    with pytest.raises(Exception) as e:
        yield
    cause = root_cause(e.value)
    assert isinstance(cause, error_type) and re.search(pattern, str(cause)), repr(cause)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_inference_engine_is_built_without_data_and_its_run_reports_the_missing_data(bundle, tmp_path):
    parser = parsed(bundle, "inference.json", dataset_dir=str(tmp_path / "absent"), num_workers=0)
    assert parser.get_parsed_content("evaluator") is not None  # as MONAI's property checks build it
    with raises_from(FileNotFoundError, MISSING):  # the run checks the data before the engine starts
        parser.get_parsed_content("run")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("id_", DATA_DERIVED["rsanet"])
def test_rsanet_class_weights_come_from_the_training_labels_so_they_read_the_checked_datalist(id_, tmp_path):
    parser = parsed("rsanet", "train.json", dataset_dir=str(tmp_path / "absent"))
    with raises_from(FileNotFoundError, MISSING):
        parser.get_parsed_content(id_)


# ---------------------------------------------------------------- every bundle wires the checks (in-process)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_truncated_image_is_refused_up_front_by_inference(bundle, tmp_path):
    good = image(tmp_path / "a.nii.gz", in_channels(bundle))
    bad = image(tmp_path / "b.nii.gz", in_channels(bundle))
    truncate(bad)
    dl = datalist(tmp_path, "test", [good, bad])
    data = parsed(bundle, "inference.json", datalist=str(dl), dataset_dir=str(tmp_path)).get_parsed_content(
        "dataset#data"
    )
    with pytest.raises(ValueError, match=r"b\.nii\.gz is truncated or damaged: .* copy the file again from its source"):
        len(data)


@pytest.mark.parametrize("bundle", BUNDLES)
@pytest.mark.parametrize("value, message", [(7, "label values 7 are outside"), (0.5, "are not whole numbers")])
def test_label_values_are_refused_before_training(bundle, value, message, tmp_path):
    img = image(tmp_path / "c.nii.gz", in_channels(bundle))
    lab = label(tmp_path / "c_label.nii.gz", value, np.uint8 if value == 7 else np.float32)
    dl = datalist(tmp_path, "training", [{"image": img, "label": lab}])
    parser = parsed(bundle, "train.json", datalist=str(dl), dataset_dir=str(tmp_path), num_classes=3)
    expected = rf"c_label\.nii\.gz: .*{message}.* 0\.\.2"
    with pytest.raises(ValueError, match=expected):
        len(parser.get_parsed_content("all_training"))
    # the same check at load time, for data that do not come through the datalist (MONAI Label's training)
    validate = next(
        t for t in parser.get_parsed_content("train#deterministic_transforms") if type(t).__name__ == "ValidateImaged"
    )
    load = parser.get_parsed_content("train#deterministic_transforms")[:2]
    case = {"image": img, "label": lab}
    for t in load:
        case = t(case)
    with pytest.raises(ValueError, match=expected):
        validate(case)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_label_on_another_grid_is_refused_before_training(bundle, tmp_path):
    img = image(tmp_path / "c.nii.gz", in_channels(bundle))
    lab = label(tmp_path / "c_label.nii.gz", affine=np.diag([1.0, 1.0, 2.0, 1.0]))  # same size, other spacing
    dl = datalist(tmp_path, "training", [{"image": img, "label": lab}])
    parser = parsed(bundle, "train.json", datalist=str(dl), dataset_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"c_label\.nii\.gz is not on the voxel grid of its image .*c\.nii\.gz"):
        len(parser.get_parsed_content("all_training"))


@pytest.mark.parametrize("bundle", BUNDLES)
def test_too_large_image_is_refused_by_inference_and_by_its_preprocessing(bundle, tmp_path):
    img = image(tmp_path / "big.nii.gz", in_channels(bundle), affine=np.diag([*pixdim(bundle), 1.0]))
    dl = datalist(tmp_path, "test", [img])
    limit = int(np.prod(SHAPE)) - 1
    parser = parsed(bundle, "inference.json", datalist=str(dl), dataset_dir=str(tmp_path), max_voxels=limit)
    expected = rf"big\.nii\.gz is too large: .* above max_voxels={limit}, the largest .*; crop the image"
    with pytest.raises(ValueError, match=expected):
        len(parser.get_parsed_content("dataset#data"))
    with raises_from(ValueError, expected):  # the MONAI Label server runs this preprocessing on uploads
        parser.get_parsed_content("preprocessing")({"image": img})
    assert (
        len(
            parsed(bundle, "inference.json", datalist=str(dl), dataset_dir=str(tmp_path)).get_parsed_content(
                "dataset#data"
            )
        )
        == 1
    )  # the default budget takes it


@pytest.mark.parametrize("bundle", BUNDLES)
def test_same_file_name_in_two_folders_is_refused_by_inference(bundle, tmp_path):
    a = image(tmp_path / "site_a" / "case_001.nii.gz", in_channels(bundle))
    b = image(tmp_path / "site_b" / "case_001.nii.gz", in_channels(bundle))
    dl = datalist(tmp_path, "test", [a, b])
    data = parsed(bundle, "inference.json", datalist=str(dl), dataset_dir=str(tmp_path)).get_parsed_content(
        "dataset#data"
    )
    with pytest.raises(ValueError, match=rf"(?s)case_001: {a}, {b}.*Rename the files"):
        len(data)


@pytest.mark.parametrize("bundle", ["rsanet", "thick2d"])
@pytest.mark.parametrize(
    "files, key", [(["inference.json"], "preprocessing"), (["train.json"], "validate#preprocessing")]
)
def test_spacing_is_resampled_to_pixdim_and_the_demo_spacing_is_left_unchanged(bundle, files, key, tmp_path):
    default = pixdim(bundle)
    assert default == json.loads((bundle_dir(bundle) / "configs" / "train.json").read_text())["pixdim"]
    transforms = parsed(bundle, *files).get_parsed_content(key).transforms
    names = [type(t).__name__ for t in transforms]
    up_to_spacing = Compose(transforms[: names.index("Spacingd") + 1])  # load, validate, orient, resample
    assert names.index("Orientationd") < names.index("Spacingd")
    keys = ["image", "label"] if key.startswith("validate") else ["image"]

    def case(name: str, spacing: list[float]) -> dict:
        affine = np.diag([*spacing, 1.0])
        paths = {"image": image(tmp_path / f"{name}.nii.gz", in_channels(bundle), affine=affine)}
        paths["label"] = label(tmp_path / f"{name}_label.nii.gz", affine=affine)
        return {k: paths[k] for k in keys}

    demo = case("demo", default)  # the synthetic demo data's spacing: the voxels pass through untouched
    out = up_to_spacing(demo)
    for k in keys:
        loaded = np.asarray(nib.load(demo[k]).dataobj, dtype=np.float32)
        loaded = loaded[None] if loaded.ndim == 3 else np.moveaxis(loaded, -1, 0)  # channel first
        np.testing.assert_array_equal(out[k].numpy(), loaded)
    thin = up_to_spacing(case("thin", [0.5, 0.5, 0.5]))  # another spacing is resampled to pixdim
    expected = [round((s - 1) * 0.5 / p + 1) for s, p in zip(SHAPE, default)]
    for k in keys:
        np.testing.assert_allclose(thin[k].pixdim[:3], default)
        assert list(thin[k].shape[1:]) == expected


# ---------------------------------------------------------------- end to end: a refused run leaves no output


def run_bundle(bundle: str, files: list[str], **overrides) -> subprocess.CompletedProcess:
    configs = "[" + ",".join(repr(str(bundle_dir(bundle) / "configs" / f)) for f in files) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", configs]
    for key, value in {"num_workers": 0, **overrides}.items():
        cmd += [f"--{key}", str(value)]
    return subprocess.run(cmd, cwd=bundle_dir(bundle), capture_output=True, text=True, timeout=600)


def fails_with(proc: subprocess.CompletedProcess, *messages: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    for message in messages:
        assert message in out, (message, out[-3000:])


def placeholder_weights(root: Path) -> Path:
    """``models/model.pt`` for inference's up-front weights check; the input checks stop the run before it loads."""
    (root / "models").mkdir(parents=True)
    torch.save({}, root / "models" / "model.pt")
    return root


@pytest.mark.slow
def test_inference_with_a_truncated_case_after_a_good_one_writes_nothing(tmp_path):
    good, bad = image(tmp_path / "a_good.nii.gz"), image(tmp_path / "b_cut.nii.gz")
    truncate(bad)
    out = tmp_path / "pred"
    out.mkdir()
    (out / "earlier_seg.nii.gz").write_bytes(b"an earlier run's output")
    proc = run_bundle(
        "scaa",
        ["inference.json"],
        bundle_root=placeholder_weights(tmp_path / "b"),
        datalist=datalist(tmp_path, "test", [good, bad]),
        dataset_dir=tmp_path,
        output_dir=out,
    )
    fails_with(proc, f"{bad} is truncated or damaged", "copy the file again from its source")
    assert "applying transform" not in proc.stderr  # refused by the up-front check, not by LoadImaged mid-run
    assert sorted(p.name for p in out.iterdir()) == ["earlier_seg.nii.gz"]  # unchanged
    assert not (tmp_path / "pred.partial").exists()


@pytest.mark.slow
def test_inference_of_a_too_large_volume_is_refused_with_the_estimate_and_writes_nothing(tmp_path):
    img = image(tmp_path / "huge.nii.gz", affine=np.diag([0.75, 0.75, 0.75, 1.0]))  # resampled to 1.5 mm: 1/8
    out = tmp_path / "pred"
    proc = run_bundle(
        "scaa",
        ["inference.json"],
        bundle_root=placeholder_weights(tmp_path / "b"),
        datalist=datalist(tmp_path, "test", [img]),
        dataset_dir=tmp_path,
        output_dir=out,
        max_voxels=1000,
    )
    fails_with(proc, f"{img} is too large: 24 x 24 x 16 voxels of 0.75 x 0.75 x 0.75 mm, resampled to 1.5 x 1.5 x 1.5")
    fails_with(proc, "mm, make about 1,328 voxels (about", "GiB of memory), above max_voxels=1000")
    fails_with(proc, "crop the image to the region you need, or raise max_voxels (e.g. --max_voxels 1328)")
    assert not out.exists() and not (tmp_path / "pred.partial").exists()


@pytest.mark.slow
def test_inference_of_two_files_with_one_name_writes_nothing(tmp_path):
    a, b = image(tmp_path / "x" / "case.nii.gz"), image(tmp_path / "y" / "case.nii")
    out = tmp_path / "pred"
    proc = run_bundle(
        "thick2d",
        ["inference.json"],
        bundle_root=placeholder_weights(tmp_path / "b"),
        datalist=datalist(tmp_path, "test", [a, b]),
        dataset_dir=tmp_path,
        output_dir=out,
    )
    fails_with(proc, f"case: {a}, {b}", "Rename the files so that their names differ")
    assert not out.exists() and not (tmp_path / "pred.partial").exists()


@pytest.mark.slow
def test_training_on_out_of_range_labels_stops_before_it_starts(tmp_path):
    cases = [
        {"image": image(tmp_path / f"c{i}.nii.gz", 3), "label": label(tmp_path / f"c{i}_label.nii.gz", 1 + i)}
        for i in range(2)
    ]
    root = tmp_path / "b"
    proc = run_bundle(
        "rsanet", ["train.json"], bundle_root=root, datalist=datalist(tmp_path, "training", cases), dataset_dir=tmp_path
    )
    fails_with(proc, f"{cases[1]['label']}: label values 2 are outside 0..1 (num_classes=2", "relabel those voxels")
    assert not root.exists() or not any(root.iterdir())


@pytest.mark.slow
def test_training_on_a_label_with_another_orientation_stops_before_it_starts(tmp_path):
    flipped = np.diag([-1.0, 1.0, 1.0, 1.0])
    flipped[0, 3] = SHAPE[0] - 1  # the same box, the x axis running the other way
    cases = [
        {"image": image(tmp_path / "c0.nii.gz"), "label": label(tmp_path / "c0_label.nii.gz", affine=flipped)},
        {"image": image(tmp_path / "c1.nii.gz"), "label": label(tmp_path / "c1_label.nii.gz")},
    ]
    root = tmp_path / "b"
    proc = run_bundle(
        "cotr", ["train.json"], bundle_root=root, datalist=datalist(tmp_path, "training", cases), dataset_dir=tmp_path
    )
    fails_with(proc, f"{cases[0]['label']} is not on the voxel grid of its image", "orientation RAS; label:")
    fails_with(proc, "orientation LAS", "Resample the label onto its image's grid")
    assert not root.exists() or not any(root.iterdir())


@pytest.mark.slow
def test_inference_on_a_folder_with_a_truncated_nrrd_writes_nothing(tmp_path):
    itk = pytest.importorskip("itk")
    folder = tmp_path / "scans"
    image(folder / "a_good.nii.gz")
    bad = folder / "b_cut.nrrd"
    itk.imwrite(itk.image_from_array(np.random.default_rng(0).normal(size=SHAPE[::-1]).astype(np.float32)), str(bad))
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    out = tmp_path / "pred"
    proc = run_bundle(
        "ssh_unet", ["inference.json"], bundle_root=placeholder_weights(tmp_path / "b"), input=folder, output_dir=out
    )
    fails_with(proc, f"cannot read {bad} as a NRRD volume: ITKReader failed", "copy the file again from its source")
    assert "applying transform" not in proc.stderr  # refused by the up-front check, not by LoadImaged mid-run
    assert not out.exists() and not (tmp_path / "pred.partial").exists()
