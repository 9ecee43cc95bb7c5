"""The MONAI Model Zoo's checks of a bundle, run on every monai_ext bundle as the zoo's CI runs them.

The zoo's ``ci/verify_bundle.py`` validates ``metadata.json`` against the schema, runs ``verify_net_in_out`` and
``ckpt_export`` (TorchScript by scripting, no ``--use_trace``) on weights it makes up for ``network_def``, and checks
the inference workflow's properties (``create_workflow(workflow_type="inference")`` then ``check_properties()``),
with no data. Its unit tests (``ci/unit_tests``) build the train and evaluation workflows on dummy data, check their
properties and run one epoch. The ONNX export is the one the bundles' READMEs give (``onnx_export --use_trace True``
with ``metadata.json``'s input shape). The networks are the bundles' own, made tiny by the same overrides the
commands take; the input shapes are those in ``metadata.json``.
"""

from __future__ import annotations

import ast
import json
import logging
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, create_workflow

from monai_ext.data import write_msd_dataset
from tests.bundles.test_bundles import CASES, Case, ok, run_in

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c.name)
def case(request) -> Case:
    return request.param


def _network_overrides(case: Case) -> dict:
    """The overrides that make ``network_def`` tiny (the architecture keeps the bundle's other settings)."""
    return {k: v for k, v in case.tiny.items() if k.startswith("network_def#")}


def _literal(value):
    """A command-line override as the parsed config receives it (``"[8,16]"`` -> ``[8, 16]``)."""
    return ast.literal_eval(value) if isinstance(value, str) else value


def _input(case: Case) -> tuple[int, ...]:
    image = json.loads((case.configs_dir / "metadata.json").read_text())["network_data_format"]["inputs"]["image"]
    return (1, image["num_channels"], *image["spatial_shape"])


@pytest.fixture(scope="module")
def fake_weights(tmp_path_factory, case) -> tuple[Path, torch.nn.Module]:
    """``models/model.pt`` under a fresh bundle root, made as the zoo CI makes it: ``network_def``'s state dict."""
    root = tmp_path_factory.mktemp(f"{case.name}_zoo")
    parser = ConfigParser()
    parser.read_config(case.configs_dir / "inference.json")
    for key, value in _network_overrides(case).items():
        parser[key] = _literal(value)
    network = parser.get_parsed_content("network_def").eval()
    (root / "models").mkdir()
    torch.save(network.state_dict(), root / "models" / "model.pt")
    return root, network


def _bundle_command(case: Case, *args: str, **overrides):
    """``python -m monai.bundle ARGS --key value ...`` in the bundle folder, with only the given overrides."""
    return ok(run_in(case.root, [sys.executable, "-m", "monai.bundle", *args], overrides))


def test_verify_metadata(case, meta_schema):
    meta_file = case.configs_dir / "metadata.json"
    _bundle_command(case, "verify_metadata", meta_file=meta_file, filepath=meta_schema)
    meta = json.loads(meta_file.read_text())
    assert meta["version"] in meta["changelog"]
    assert "monai-ext" in meta["required_packages_version"]


def test_verify_net_in_out_and_the_spatial_shape(case):
    meta_file, config_file = case.configs_dir / "metadata.json", case.configs_dir / "inference.json"
    _bundle_command(case, "verify_net_in_out", net_id="network_def", meta_file=meta_file, config_file=config_file)
    # verify_net_in_out checks only channels and dtype: check the spatial shape here (full-size network)
    parser = ConfigParser()
    parser.read_config(config_file)
    meta = json.loads(meta_file.read_text())["network_data_format"]
    pred = meta["outputs"]["pred"]
    net = parser.get_parsed_content("network_def").eval()
    with torch.no_grad():
        out = net(torch.rand(*_input(case)))
    assert tuple(out.shape) == (1, pred["num_channels"], *pred["spatial_shape"])


def _export_args(case: Case, root: Path) -> dict:
    return {
        "ckpt_file": root / "models" / "model.pt",
        "meta_file": case.configs_dir / "metadata.json",
        "config_file": case.configs_dir / "inference.json",
        "bundle_root": root,
        **_network_overrides(case),
    }


def test_ckpt_export_scripts_the_network(case, fake_weights):
    root, network = fake_weights
    path = root / "models" / "model.ts"
    _bundle_command(case, "ckpt_export", "network_def", filepath=path, **_export_args(case, root))  # no --use_trace
    x = torch.rand(*_input(case))
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(path))(x), network(x), atol=1e-4, rtol=1e-4)


def test_onnx_export_traces_at_the_metadata_shape(case, fake_weights):
    ort = pytest.importorskip("onnxruntime")
    root, network = fake_weights
    path = root / "models" / "model.onnx"
    shape = list(_input(case))
    _bundle_command(
        case,
        "onnx_export",
        "network_def",
        filepath=path,
        use_trace=True,
        input_shape=str(shape).replace(" ", ""),
        converter_kwargs="{'dynamo': False}",
        **_export_args(case, root),
    )
    x = torch.rand(*shape)
    session = ort.InferenceSession(str(path))
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), network(x), atol=1e-4, rtol=1e-4)


def _workflow_args(case: Case) -> dict:
    # logging_file=False: the bundle's logging.conf would reconfigure the test process's loggers
    return {"meta_file": str(case.configs_dir / "metadata.json"), "logging_file": False}


def test_inference_properties_without_data(case, fake_weights, tmp_path):
    root, _ = fake_weights
    workflow = create_workflow(
        workflow_type="inference",
        config_file=str(case.configs_dir / "inference.json"),
        bundle_root=str(root),
        dataset_dir=str(tmp_path / "no_data"),
        **_workflow_args(case),
        **{k: _literal(v) for k, v in _network_overrides(case).items()},
    )
    assert workflow.check_properties() == []


def test_one_epoch_train_and_evaluate_workflows_on_dummy_data(case, tmp_path):
    data = tmp_path / "data"
    write_msd_dataset(data, num_train=4, num_test=0, shape=(32, 32, 32), seed=0, **case.data)
    overrides = {k: _literal(v) for k, v in case.tiny.items()}
    overrides.update(bundle_root=str(tmp_path / "bundle"), dataset_dir=str(data), epochs=1)
    train_file, eval_file = str(case.configs_dir / "train.json"), str(case.configs_dir / "evaluate.json")
    level = logging.getLogger().level
    try:
        trainer = ConfigWorkflow(workflow_type="train", config_file=train_file, **_workflow_args(case), **overrides)
        trainer.initialize()
        assert trainer.check_properties() == []
        trainer.run()
        trainer.finalize()
        assert (tmp_path / "bundle" / "models" / "model.pt").is_file()
        evaluator = ConfigWorkflow(
            workflow_type="eval", config_file=[train_file, eval_file], **_workflow_args(case), **overrides
        )
        evaluator.initialize()
        evaluator.run()
        evaluator.finalize()
    finally:
        logging.getLogger().setLevel(level)
    assert (tmp_path / "bundle" / "eval" / "metrics.csv").is_file()
