"""Find the monai_ext bundles to serve, check each one, and prepare a writable working copy of it.

A bundle that cannot be served (a half-written folder, a config that does not parse, a network that does not build)
is reported with the reason and skipped; the others are served.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from monai_ext.bundles import bundles_root, list_bundles
from monai_ext.handlers import save_atomic

__all__ = [
    "INITIAL_WEIGHTS_RECORD",
    "BundleCheck",
    "apply_overrides",
    "default_bundle_names",
    "discover_bundles",
    "is_initial_weights",
    "parse_overrides",
    "prepare_bundle",
    "record_initial_weights",
    "weights_digest",
]

logger = logging.getLogger(__name__)

REQUIRED_CONFIGS = ("metadata.json", "inference.json", "train.json")
# beside models/model.pt: the digest of the freshly initialised weights the server saved there at its first start
INITIAL_WEIGHTS_RECORD = "initial_weights.json"


@dataclass
class BundleCheck:
    """Outcome of preparing one bundle: ``path`` (the working copy) when it can be served, else ``error``."""

    name: str
    path: Path | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)


def parse_overrides(value: str | Mapping | None) -> dict[str, dict]:
    """Per-bundle config overrides ``{bundle: {config_id: value}}`` from a dict, a JSON string or a JSON file path.

    String values that are JSON (``"[8,16,32]"``, ``"1"``) are decoded, as ``python -m monai.bundle`` does with
    ``--key value`` arguments; a ``"*"`` entry applies to every bundle.
    """
    if not value:
        return {}
    if isinstance(value, str):
        text = Path(value).read_text() if not value.lstrip().startswith("{") else value
        value = json.loads(text)
    if not isinstance(value, Mapping) or not all(isinstance(v, Mapping) for v in value.values()):
        raise ValueError("bundle overrides must be a JSON object {bundle_name: {config_id: value}}")
    out = {}
    for name, items in value.items():
        out[name] = {}
        for key, val in items.items():
            if isinstance(val, str):
                try:
                    val = json.loads(val)
                except json.JSONDecodeError:
                    pass
            out[name][key] = val
    return out


def overrides_for(name: str, overrides: Mapping[str, Mapping]) -> dict:
    """The overrides that apply to bundle ``name``: the ``"*"`` entry updated by the bundle's own entry."""
    return {**overrides.get("*", {}), **overrides.get(name, {})}


def apply_overrides(parser: ConfigParser, overrides: Mapping[str, object]) -> None:
    """Set ``overrides`` on a parsed config; nested ids (``network_def#filters``) only where their parent exists."""
    for key, value in overrides.items():
        parent = key.rsplit("#", 1)[0] if "#" in key else None
        if parent is None or parent in parser:
            parser[key] = value


def weights_digest(state: Mapping[str, object]) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and values: the same for the same weights however they were
    saved (plain state dict or a checkpoint file written by another torch version)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{key}|{tensor.dtype}|{tuple(value.shape)}|".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes())
        else:
            digest.update(f"{key}|{value!r}|".encode())
    return digest.hexdigest()


def record_initial_weights(models: Path, state: Mapping[str, object]) -> None:
    """Write ``models/initial_weights.json``: the digest of freshly initialised weights, before they are saved as
    ``model.pt``, so that the server can tell them from trained weights (:func:`is_initial_weights`).

    Written first and atomically (:func:`monai_ext.handlers.save_atomic`): a crash before ``model.pt`` is saved leaves
    a record of weights that are not there, which the next start overwrites.
    """
    text = (json.dumps({"sha256": weights_digest(state)}, indent=4) + "\n").encode()
    save_atomic(text, models / INITIAL_WEIGHTS_RECORD, save=lambda data, f: f.write(data))


def is_initial_weights(models: Path, state: Mapping[str, object]) -> bool:
    """Whether ``state`` are the freshly initialised weights recorded in ``models/initial_weights.json``, i.e. the
    weights in ``models/`` were never trained. Without a record (weights shipped with the bundle) they count as trained.

    Raises:
        ValueError: the record is not the JSON this module writes (edited by hand).
    """
    record = models / INITIAL_WEIGHTS_RECORD
    if not record.is_file():
        return False
    try:
        digest = json.loads(record.read_text())["sha256"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(
            f"{record} is not a record of initial weights ({type(e).__name__}: {e}); delete it together with "
            f"{models / 'model.pt'} and restart the server to start from freshly initialised weights"
        ) from e
    return digest == weights_digest(state)


def _check_configs(src: Path) -> None:
    configs = src / "configs"
    for name in REQUIRED_CONFIGS:
        if not (configs / name).is_file():
            raise FileNotFoundError(f"configs/{name} is missing")
        try:
            json.loads((configs / name).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"configs/{name} is not valid JSON ({e})") from e
    meta = json.loads((configs / "metadata.json").read_text())
    fmt = meta.get("network_data_format", {})
    if not fmt.get("inputs") or not fmt.get("outputs"):
        raise ValueError("metadata.json lacks network_data_format.inputs/outputs")


def prepare_bundle(name: str, workdir: Path, overrides: Mapping[str, object]) -> BundleCheck:
    """Copy bundle ``name`` into ``workdir/name`` (configs refreshed, ``models/`` kept) and check it can be served.

    The network is built from ``inference.json`` with ``overrides``; when ``models/model.pt`` is absent (weights are
    not committed), the freshly initialised weights are saved there so that the model can be run and trained, and
    their digest in ``models/initial_weights.json`` so that they are reported as untrained until training replaces them.
    """
    check = BundleCheck(name)
    src = bundles_root() / name
    try:
        _check_configs(src)
        dst = workdir / name
        if (dst / "configs").exists():
            shutil.rmtree(dst / "configs")
        shutil.copytree(src / "configs", dst / "configs")
        for extra in ("LICENSE", "docs"):
            if (src / extra).is_dir():
                shutil.copytree(src / extra, dst / extra, dirs_exist_ok=True)
            elif (src / extra).is_file():
                shutil.copy2(src / extra, dst / extra)
        parser = ConfigParser()
        parser.read_config(str(dst / "configs" / "inference.json"))
        parser["bundle_root"] = str(dst)
        apply_overrides(parser, overrides)
        network = parser.get_parsed_content("network_def", instantiate=True)
        if not isinstance(network, torch.nn.Module):
            raise TypeError(f"network_def built a {type(network).__name__}, not a torch.nn.Module")
        model = dst / "models" / "model.pt"
        if (src / "models" / "model.pt").is_file() and not model.is_file():
            model.parent.mkdir(parents=True, exist_ok=True)
            save_atomic(src / "models" / "model.pt", model, save=lambda source, f: f.write(source.read_bytes()))
        if not model.is_file():
            model.parent.mkdir(parents=True, exist_ok=True)
            record_initial_weights(model.parent, network.state_dict())
            save_atomic(network.state_dict(), model)
            check.warnings.append(f"no trained weights: initialised {model}; train the model before relying on it")
        else:
            state = torch.load(model, map_location="cpu", weights_only=True)
            state = state.get("model", state)
            missing = set(network.state_dict()) ^ set(state)
            mismatched = [k for k, v in network.state_dict().items() if k in state and state[k].shape != v.shape]
            if missing or mismatched:
                raise ValueError(
                    f"{model} does not fit the network built with the current overrides "
                    f"({len(missing)} keys differ, {len(mismatched)} shapes differ); delete it or use the overrides "
                    "it was trained with"
                )
        check.path = dst
    except Exception as e:  # every failure is reported; the other bundles are still served
        check.error = f"{type(e).__name__}: {e}"
    return check


def default_bundle_names(root: Path) -> list[str]:
    """The folders under ``root`` to serve: first the bundles of the network registry's methods
    (:func:`monai_ext.networks.list_networks`), in its order, then any other folder (a user's own bundle, or a
    half-written one, which is then reported)."""
    from monai_ext.networks import list_networks

    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    registered = [b for b in dict.fromkeys(e.bundle for e in list_networks(main_only=True)) if b in folders]
    return registered + [f for f in folders if f not in registered]


def discover_bundles(
    names: Iterable[str] | None, workdir: str | Path, overrides: Mapping[str, Mapping] | None = None
) -> list[BundleCheck]:
    """Prepare the bundles ``names`` (default: :func:`default_bundle_names`) in ``workdir``.

    Folders without ``configs/metadata.json`` (half-written bundles) are reported too when ``names`` is None.
    """
    root = bundles_root()
    if names is None:
        names = default_bundle_names(root)
    names = list(names)
    overrides = overrides or {}
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    checks = []
    for name in names:
        if name not in list_bundles() and not (root / name).is_dir():
            checks.append(BundleCheck(name, error=f"no bundle folder {root / name} (found: {list_bundles()})"))
            continue
        check = prepare_bundle(name, workdir, overrides_for(name, overrides))
        for w in check.warnings:
            logger.warning("bundle %s: %s", name, w)
        if check.error:
            logger.error("bundle %s is not served: %s", name, check.error)
        checks.append(check)
    return checks
