"""The real MONAI Label server with the monai_ext app, on 127.0.0.1: info, inference, uploads, concurrency, training,
the rule that only datastore images and uploads are read, the HTTP status of each failure, untrained weights, and
weights saved while requests run. Needs the label extra: skipped without MONAI Label, except under ``make test``
(``MONAI_EXT_REQUIRE_LABEL=1``), where a missing MONAI Label is an error."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from io import BytesIO

import nibabel as nib
import numpy as np
import pytest
import torch

if os.environ.get("MONAI_EXT_REQUIRE_LABEL") == "1":
    import monailabel  # noqa: F401
    import requests
else:
    pytest.importorskip("monailabel")
    requests = pytest.importorskip("requests")

from monai_ext.bundles import bundle_dir  # noqa: E402
from monai_ext.data import write_msd_dataset  # noqa: E402
from monai_ext.label import server_command  # noqa: E402
from monai_ext.label.app import UNKNOWN_IMAGE  # noqa: E402

pytestmark = pytest.mark.slow

# tiny networks and one short epoch, as in tests/bundles/test_bundles.py
TINY = {
    "ssh_unet": {
        "num_classes": 3,
        "pixdim": [1.5, 1.5, 1.5],
        "roi_size": [32, 32, 32],
        "network_def#filters": [8, 16, 32, 64, 128],
        "epochs": 1,
        "warmup_epochs": 0,  # the LR warm-up starts at 0: a 1-epoch run would not change the weights
        "val_interval": 1,
        "batch_size": 1,
        "num_workers": 0,
    },
    "rsanet": {
        "roi_size": [32, 32, 16],
        "network_def#filters": [8, 16, 32, 64, 128],
        "epochs": 1,
        "warmup_epochs": 0,  # the LR warm-up starts at 0: a 1-epoch run would not change the weights
        "val_interval": 1,
        "batch_size": 1,
        "num_workers": 0,
    },
}
TINY |= {
    "cotr": {
        "num_classes": 3,
        "pixdim": [1.5, 1.5, 1.5],
        "roi_size": [32, 32, 32],
        "network_def#encoder_channels": [8, 16, 24, 24],
        "network_def#encoder_blocks": [1, 1, 1],
        "network_def#num_layers": 1,
        "network_def#mlp_dim": 32,
        "network_def#num_heads": 2,
        "network_def#num_points": 2,
        "epochs": 1,
        "num_workers": 0,
    },
    "scaa": {
        "num_classes": 3,
        "network_def#filters": [4, 8, 8, 16, 16],
        "network_def#context_channels": [4, 4, 8, 8],
        "network_def#pool_sizes": [4, 2, 2, 2],
        "num_slices": 4,
        "epochs": 1,
        "num_workers": 0,
    },
    "thick2d": {
        "num_classes": 3,
        "num_slices": 6,
        "slice_size": [32, 32],
        "network_def#layers": [1, 1, 1, 1],
        "network_def#block_inplanes": [8, 16, 32, 64],
        "network_def#decoder_channels": 16,
        "network_def#low_level_channels": 8,
        "epochs": 1,
        "batch_size": 1,
        "num_workers": 0,
    },
}
NUM_CLASSES = {"ssh_unet": 3, "rsanet": 2, "cotr": 3, "scaa": 3, "thick2d": 3}
IMAGE = {"ssh_unet": "ct_000", "rsanet": "mri_000", "cotr": "ct_000", "scaa": "ct_000", "thick2d": "ct_000"}
# ssh_unet served under two more names with server-side faults: a window its network cannot take (an exception
# inside the network), and a window whose padding the allocator refuses (out of memory, without touching memory)
FAULTY = {
    "faulty_net": {**TINY["ssh_unet"], "roi_size": [33, 33, 33]},
    "faulty_oom": {**TINY["ssh_unet"], "roi_size": [2**20] * 3},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("label")
    # bundles root: the real bundles plus a half-written one
    root = tmp / "bundles"
    root.mkdir()
    for name in TINY:
        (root / name).symlink_to(bundle_dir(name))
    for name in FAULTY:
        (root / name).symlink_to(bundle_dir("ssh_unet"))
    broken = root / "half_written" / "configs"
    broken.mkdir(parents=True)
    shutil.copy2(bundle_dir("ssh_unet") / "configs" / "metadata.json", broken / "metadata.json")
    (broken / "inference.json").write_text('{"network_def": {"_target_": "monai_ext.networks')  # cut short
    # studies: two small CT volumes with labels (for training) and one 3-channel MRI volume
    studies = tmp / "studies"
    studies.mkdir()
    ct = write_msd_dataset(tmp / "ct", num_train=2, num_test=0, shape=(32, 32, 32), seed=1).parent
    cases = sorted((ct / "imagesTr").glob("*.nii.gz"))
    assert len(cases) == 2
    for i, path in enumerate(cases):
        shutil.copy2(path, studies / f"ct_{i:03d}.nii.gz")
        shutil.copy2(ct / "labelsTr" / path.name, tmp / f"ct_{i:03d}_label.nii.gz")
    mri = write_msd_dataset(tmp / "mri", num_train=1, num_test=0, shape=(32, 32, 24), seed=2, task="lesions").parent
    shutil.copy2(next((mri / "imagesTr").glob("*.nii.gz")), studies / "mri_000.nii.gz")

    port = _free_port()
    workdir = tmp / "work"
    names = ",".join([*TINY, *FAULTY, "half_written"])
    cmd = server_command(studies, names, port=port, overrides=TINY | FAULTY, workdir=workdir)
    scratch = tmp / "scratch"  # the server's TMPDIR: its private upload folder is made here, and removed at exit
    scratch.mkdir()
    env = dict(os.environ, MONAI_EXT_BUNDLES=str(root), OMP_NUM_THREADS="1", TMPDIR=str(scratch))
    env["MONAI_LABEL_SESSION_PATH"] = str(tmp / "sessions")
    log_path = tmp / "server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, f"server exited ({proc.returncode}):\n{log_path.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"server not up after 240 s:\n{log_path.read_text()[-4000:]}"
            try:
                if requests.get(f"{url}/info/", timeout=5).ok:
                    break
            except requests.ConnectionError:
                time.sleep(1)
        uploads = list(scratch.glob("monai_ext_label_*"))
        assert len(uploads) == 1, uploads
        yield {"url": url, "tmp": tmp, "studies": studies, "workdir": workdir, "log": log_path, "proc": proc}
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        # nothing of the server's process group is left, nor its upload folder
        with pytest.raises(ProcessLookupError):
            os.killpg(proc.pid, 0)
        assert not list(scratch.glob("monai_ext_label_*"))


def _infer(server, model, image=None, file=None, timeout=180, output="image", allow_untrained=True, **params):
    """POST /infer/<model>; ``params`` go to the request's JSON params (the models here are untrained: allowed)."""
    query = {"output": output}
    if image:
        query["image"] = image
    if allow_untrained is not None:
        params["allow_untrained"] = allow_untrained
    files = {"file": file} if file else None
    url = f"{server['url']}/infer/{model}"
    return requests.post(url, params=query, data={"params": json.dumps(params)}, files=files, timeout=timeout)


def _mtime(path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime_ns / 1e9, tz=timezone.utc).isoformat(timespec="milliseconds")


def _load(content: bytes) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(content) if content[:2] == b"\x1f\x8b" else content)


def _check_label(server, model, image_id, content):
    src = nib.load(server["studies"] / f"{image_id}.nii.gz")
    out = _load(content)
    values = np.unique(np.asarray(out.dataobj))
    assert out.shape == src.shape[:3], (out.shape, src.shape)
    np.testing.assert_allclose(out.affine, src.affine, atol=1e-4)
    assert set(values.tolist()) <= set(range(NUM_CLASSES[model])), values


def test_info_lists_bundles_and_reports_broken(server):
    info = requests.get(f"{server['url']}/info/", timeout=30).json()
    assert set(info["models"]) == set(TINY) | set(FAULTY)
    assert set(info["trainers"]) == set(TINY) | set(FAULTY)
    assert info["models"]["rsanet"]["labels"] == {"lesion": 1}
    assert "half_written" in info["broken_bundles"]
    assert "inference.json is not valid JSON" in info["broken_bundles"]["half_written"]
    assert "bundle half_written is not served" in server["log"].read_text()


@pytest.mark.parametrize("model", sorted(TINY))
def test_infer_each_bundle(server, model):
    r = _infer(server, model, image=IMAGE[model])
    assert r.status_code == 200, r.text[:2000]
    _check_label(server, model, IMAGE[model], r.content)


def test_infer_upload(server):
    path = server["studies"] / "ct_001.nii.gz"
    r = _infer(server, "ssh_unet", file=("upload.nii.gz", path.read_bytes()))
    assert r.status_code == 200, r.text[:2000]
    _check_label(server, "ssh_unet", "ct_001", r.content)


def test_concurrent_infer(server):
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: _infer(server, "ssh_unet", image=f"ct_{i % 2:03d}", timeout=600), range(8)))
    assert [r.status_code for r in results] == [200] * 8
    for i, r in enumerate(results):
        _check_label(server, "ssh_unet", f"ct_{i % 2:03d}", r.content)


def _nifti_bytes(array: np.ndarray) -> bytes:
    return nib.Nifti1Image(array, np.eye(4)).to_bytes()


def _still_serving(server):
    r = _infer(server, "ssh_unet", image="ct_000")
    assert r.status_code == 200, r.text[:2000]


@pytest.mark.parametrize(
    "kwargs, status, text",
    [
        ({"model": "nope", "image": "ct_000"}, 404, "unknown model 'nope'"),
        ({"model": "half_written", "image": "ct_000"}, 404, "not valid JSON"),
        ({"model": "ssh_unet", "image": "no_such_case"}, 404, "unknown image: give the id of an image"),
        ({"model": "ssh_unet", "file": ("bad.nii.gz", b"not an image at all")}, 422, "cannot use the uploaded image"),
        ({"model": "ssh_unet", "file": ("flat.nii", "2d")}, 422, "expected a 3D volume"),
        ({"model": "rsanet", "image": "ct_000"}, 422, "got 1 channel(s), the network expects 3"),
        ({"model": "ssh_unet", "image": "ct_000", "model_filename": "../../../ct_000.nii.gz"}, 422, "model_filename"),
        ({"model": "ssh_unet", "image": "ct_000", "allow_untrained": "maybe"}, 422, "allow_untrained must be"),
        ({"model": "faulty_net", "image": "ct_000"}, 500, "failed inside the server (ValueError"),
        ({"model": "faulty_oom", "image": "ct_000"}, 503, "ran out of memory on image 'ct_000'"),
    ],
)
def test_status_codes(server, kwargs, status, text):
    """Bad input is 4xx with the reason, a server-side failure 5xx; no server path in the reason; serving goes on."""
    if kwargs.get("file") and kwargs["file"][1] == "2d":
        kwargs["file"] = ("flat.nii", _nifti_bytes(np.random.rand(32, 32).astype(np.float32)))
    r = _infer(server, **kwargs)
    assert r.status_code == status, (r.status_code, r.text[:2000])
    detail = r.json()["detail"]
    assert text in detail, detail
    assert str(server["tmp"]) not in detail and "/tmp" not in detail, detail
    _still_serving(server)


def test_only_datastore_images_and_uploads_are_read(server):
    """A path (of a study, of any file, of nothing) is the same 404 as an unknown id: it names neither the path nor
    whether it exists; a path in the params of an upload does not replace the upload."""
    study = server["studies"] / "ct_000.nii.gz"
    assert study.is_file()
    refused = [str(study), "/etc/hostname", "/no/such/file.nii.gz", "../studies/ct_000", str(server["log"])]
    for image in refused:
        r = _infer(server, "ssh_unet", image=image)
        assert r.status_code == 404, (image, r.status_code, r.text[:2000])
        assert r.json()["detail"] == UNKNOWN_IMAGE
    assert not any(image in UNKNOWN_IMAGE for image in refused)
    r = requests.post(f"{server['url']}/infer/wsi/ssh_unet", params={"image": str(study)}, json={}, timeout=60)
    assert r.status_code == 404 and r.json()["detail"] == UNKNOWN_IMAGE, r.text[:2000]
    with open(study, "rb") as f:
        r = _infer(server, "ssh_unet", file=("upload.nii.gz", f), image=str(study))
    assert r.status_code == 200, r.text[:2000]
    with open(study, "rb") as f:  # the params of the request are applied after the upload: still only uploads
        r = requests.post(
            f"{server['url']}/infer/ssh_unet",
            params={"output": "image"},
            data={"params": json.dumps({"image": str(study), "allow_untrained": True})},
            files={"file": ("upload.nii.gz", f)},
            timeout=180,
        )
    assert r.status_code == 404 and r.json()["detail"] == UNKNOWN_IMAGE, r.text[:2000]


def test_session_upload_is_served(server):
    with open(server["studies"] / "ct_001.nii.gz", "rb") as f:
        r = requests.put(f"{server['url']}/session/", files={"files": ("ct.nii.gz", f)}, timeout=60)
    assert r.status_code == 200, r.text[:2000]
    session_id = r.json()["session_id"]
    r = requests.post(
        f"{server['url']}/infer/ssh_unet",
        params={"output": "image", "session_id": session_id},
        data={"params": json.dumps({"allow_untrained": True})},
        timeout=180,
    )
    assert r.status_code == 200, r.text[:2000]
    _check_label(server, "ssh_unet", "ct_001", r.content)


def test_untrained_weights_reported_and_refused_unless_allowed(server):
    info = requests.get(f"{server['url']}/info/", timeout=30).json()
    model = server["workdir"] / "thick2d" / "models" / "model.pt"
    assert info["models"]["thick2d"]["weights"] == {"trained": False, "modified": _mtime(model)}
    assert info["models"]["thick2d"]["config"]["allow_untrained"] is False
    r = _infer(server, "thick2d", image="ct_000", allow_untrained=None)
    assert r.status_code == 409, r.text[:2000]
    assert "thick2d has untrained (freshly initialised) weights" in r.json()["detail"]
    assert "allow_untrained" in r.json()["detail"]
    r = _infer(server, "thick2d", image="ct_000", output="json")
    assert r.status_code == 200, r.text[:2000]
    assert r.json()["weights"] == {"trained": False, "modified": _mtime(model)}


def _save_slowly(data: bytes, path, chunks=8, pause=0.03):
    with open(path, "wb") as f:
        for k in range(chunks):
            f.write(data[k * len(data) // chunks : (k + 1) * len(data) // chunks])
            f.flush()
            time.sleep(pause)


@pytest.mark.parametrize("atomic", [True, False], ids=["atomic_save", "save_in_place"])
def test_infer_while_model_pt_is_saved(server, atomic):
    """A thread saves thick2d's model.pt again and again, slowly, alternating two sets of weights, while requests run:
    atomically (a temporary file, then os.replace), or in place (truncate and write, as a non-atomic save does). No
    request fails: the server loads only complete files, and serves the weights it had while a file is incomplete."""
    model = server["workdir"] / "thick2d" / "models" / "model.pt"
    partial = model.with_name("model.pt.partial")
    initial = model.read_bytes()
    state = torch.load(BytesIO(initial), weights_only=True)
    buffer = BytesIO()
    torch.save({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, buffer)
    stop = threading.Event()

    def save_again_and_again():
        k = 0
        while not stop.is_set():
            data = (buffer.getvalue(), initial)[k % 2]
            _save_slowly(data, partial if atomic else model)
            if atomic:
                os.replace(partial, model)
            k += 1
            time.sleep(0.05)

    log_before = len(server["log"].read_text())
    saver = threading.Thread(target=save_again_and_again)
    saver.start()
    try:
        responses = [_infer(server, "thick2d", image="ct_000", output="json") for _ in range(12)]
    finally:
        stop.set()
        saver.join()
    assert [r.status_code for r in responses] == [200] * 12, [r.text[:500] for r in responses if not r.ok]
    log = server["log"].read_text()[log_before:]
    if atomic:  # both sets of weights ran; no file was ever incomplete
        assert {r.json()["weights"]["trained"] for r in responses} == {False, True}
        assert "serving the weights of" not in log, log[-3000:]
    else:  # requests met half-written files and ran the weights loaded before
        assert "serving the weights of" in log, log[-3000:]
    # once the saves are over, the last file saved runs
    r = _infer(server, "thick2d", image="ct_000", output="json")
    assert r.json()["weights"]["modified"] == _mtime(model)
    partial.write_bytes(initial)
    os.replace(partial, model)


def test_label_train_then_new_weights(server):
    url = server["url"]
    for i in range(2):
        label = server["tmp"] / f"ct_{i:03d}_label.nii.gz"
        with open(label, "rb") as f:
            r = requests.put(
                f"{url}/datastore/label",
                params={"image": f"ct_{i:03d}", "tag": "final"},
                files={"label": (label.name, f)},
                timeout=60,
            )
        assert r.status_code == 200, r.text[:2000]
    model = server["workdir"] / "ssh_unet" / "models" / "model.pt"
    before = hashlib.sha256(model.read_bytes()).hexdigest(), model.stat().st_mtime_ns
    assert requests.get(f"{url}/info/", timeout=30).json()["models"]["ssh_unet"]["weights"]["trained"] is False
    r = requests.post(f"{url}/train/ssh_unet", json={"max_epochs": 1, "val_split": 0.5, "device": "cpu"}, timeout=60)
    assert r.status_code == 200, r.text[:2000]
    deadline = time.monotonic() + 300
    while True:
        status = requests.get(f"{url}/train/", timeout=30).json()
        if status.get("status") not in ("SUBMITTED", "RUNNING"):
            break
        assert time.monotonic() < deadline, "training did not finish in 300 s"
        time.sleep(2)
    assert status["status"] == "DONE", json.dumps(status)[-3000:]
    after = hashlib.sha256(model.read_bytes()).hexdigest(), model.stat().st_mtime_ns
    assert after[0] != before[0] and after[1] > before[1]
    # the run validated, so model.pt is its best-metric checkpoint and the final weights are kept beside it
    assert (model.parent / "model_final.pt").stat().st_mtime_ns >= after[1]
    weights = {"trained": True, "modified": _mtime(model)}
    assert requests.get(f"{url}/info/", timeout=30).json()["models"]["ssh_unet"]["weights"] == weights
    log_before = server["log"].read_text()
    r = _infer(server, "ssh_unet", image="ct_000", allow_untrained=None)  # trained: no need to allow untrained
    assert r.status_code == 200, r.text[:2000]
    _check_label(server, "ssh_unet", "ct_000", r.content)
    # the network is reloaded because model.pt changed, and the log says so
    new_log = server["log"].read_text()[len(log_before) :]
    assert f"loaded {model} on cpu (Weights(trained=True" in new_log, new_log[-3000:]
