"""``python -m monai_ext COMMAND``: the demo, the synthetic data, the benchmark and an environment report."""

from __future__ import annotations

import os
import platform
import sys

import fire


def demo(output_dir: str = "demo_output", num_train: int = 8, num_test: int = 4, size: int = 64, seed: int = 0,
         epochs: int | None = None, fast_allocator: bool = True, bundle: str = "ssh_unet",
         task: str = "vessels") -> None:  # fmt: skip
    """Train a bundle (SSH-UNet by default; also cotr, scaa, thick2d) on synthetic CT on CPU, infer on held-out
    cases, print Dice, write a PNG. ``--task vessels_oblique``: vessels 15-45 degrees from the slice normal."""
    from monai_ext.demo import run_demo

    run_demo(output_dir, num_train, num_test, size, seed, epochs, fast_allocator, bundle, task)


def phantom(
    output_dir: str,
    num_train: int = 8,
    num_test: int = 4,
    size: int | None = None,
    spacing: float | None = None,
    seed: int = 0,
    overwrite: bool = False,
    task: str = "vessels",
) -> str:
    """Write a synthetic dataset in the Medical Segmentation Decathlon layout.

    ``task="vessels"``: CT with vessels and nodules that only 3D context tells apart (cubes of 64, 1.5 mm).
    ``task="vessels_oblique"``: the same with vessels 15-45 degrees from the slice normal and nodules whose axial
    sections match theirs.
    ``task="lesions"``: T1/T2/FLAIR brain MRI with MS-like lesions (64 x 64 x 32 at 1 x 1 x 3 mm).
    ``size`` and ``spacing`` replace the task's defaults on every axis.
    """
    from monai_ext.data import write_msd_dataset

    shape = (size,) * 3 if size else None
    path = write_msd_dataset(
        output_dir, num_train, num_test, shape, (spacing,) * 3 if spacing else None, seed, overwrite, task=task
    )
    return f"wrote {num_train} training and {num_test} test cases; datalist: {path}"


def _as_list(value) -> list:
    """A comma-separated command-line value as a list (fire turns ``0,1`` into a tuple, ``a`` into a string)."""
    if isinstance(value, (list, tuple)):
        return list(value)
    return [v for v in str(value).split(",") if v.strip()]


def bench(
    suite: str = "all",
    device: str = "cpu",
    quick: bool = False,
    output_dir: str = "bench_output",
    networks: str | None = None,
    seeds: str | tuple = "0,1",
    budget_s: float = 120.0,
    threads: int | None = None,
    amp: bool = False,
    compile: bool = False,
    task: str = "vessels_oblique",
    recipe: str = "bundle",
    jobs: int = 1,
) -> None:
    """Measure the methods beside MONAI's own networks, on this machine, in one run (docs/benchmarks.md).

    SUITE:
    ``efficiency``: every registered network: parameters, FLOPs, forward / whole-volume / training-step time, peak
    memory, share of the matmul peak; each in a fresh process, with glibc's default and the tuned allocator;
    ``attention``: RSA against a naive and an sdpa non-local block (CPU);
    ``deformable``: CoTr's sampling core against grid_sample, DeTrans against a dense encoder (CPU);
    ``slice_groups``: thickened 2D whole-volume inference, one and three views, beside DynUNet 3D (CPU);
    ``whole_volume``: SCAA training and inference on a 1x1x256x256x128 volume beside DynUNet 3D;
    ``accuracy``: every network trained for ``--budget_s`` s of CPU time per seed on phantom data (``--task``
    ``vessels_oblique``, the default, or ``vessels``), each method with its bundle's optimizer (``--recipe bundle``;
    ``plain``: Adam for all), ``--jobs`` runs at once, held-out Dice;
    ``all`` (default): efficiency, attention, deformable, slice_groups and whole_volume (accuracy takes long and
    runs only when asked). ``--networks dynunet_3d,ssh_unet`` picks efficiency / accuracy rows by registry name
    (default: every main entry). When ``output_dir`` holds both efficiency.json and accuracy.json,
    ``flops_vs_dice.png`` is drawn. ``--amp``: efficiency's forward and whole-volume passes under autocast (bf16 on
    the CPU, fp16 on CUDA). ``--compile``: efficiency's forward and whole-volume passes run the network compiled
    (:func:`monai_ext.networks.compile_network`; each row takes a few minutes more). ``--device cuda`` without
    CUDA measures on the CPU, and says so.
    """
    import monai_ext.bench as b
    from monai_ext.bench.report import plot_from_dir

    cpu_only = ("attention", "deformable", "slice_groups")
    suites = {"efficiency", "accuracy", "whole_volume", "all", *cpu_only}
    if suite not in suites:
        raise ValueError(f"suite must be one of {sorted(suites)}, got {suite!r}.")
    rows = [str(n).strip() for n in _as_list(networks)] if networks else None
    if suite in ("efficiency", "all"):
        kw = {"threads": threads, "amp": amp, "compile": compile}
        b.run_efficiency(device=device, quick=quick, output_dir=output_dir, networks=rows, **kw)
    for name in cpu_only:
        if suite in (name, "all"):
            if device != "cpu":
                print(f"the {name} suite measures on the CPU, not on {device}")
            getattr(b, f"run_{name}")(quick=quick, output_dir=output_dir)
    if suite in ("whole_volume", "all"):
        b.run_whole_volume(device=device, quick=quick, output_dir=output_dir)
    if suite == "accuracy":
        seed_list = [int(s) for s in _as_list(seeds)]
        b.run_accuracy(
            output_dir, rows, seed_list, budget_s, quick, device, threads, task=task, recipe=recipe, jobs=jobs
        )
    plot = plot_from_dir(output_dir)
    if plot is not None:
        print(f"wrote {plot}")


def label(
    studies: str,
    bundles: str | None = None,
    port: int = 8000,
    host: str = "127.0.0.1",
    overrides: str | None = None,
    workdir: str | None = None,
) -> None:
    """Serve every monai_ext bundle (infer and train) with MONAI Label on HOST:PORT (docs/label.md).

    Needs ``pip install "monai-ext[label]"``. ``--bundles ssh_unet,rsanet`` picks bundles; ``--overrides`` is JSON
    text or a file of per-bundle config overrides.
    """
    from monai_ext.label import serve

    serve(studies, bundles, port, host, overrides, workdir)


def info() -> None:
    """Versions, installed bundles and compute devices."""
    import monai
    import torch

    import monai_ext
    from monai_ext.bundles import bundles_root, list_bundles
    from monai_ext.networks import list_networks

    print(f"monai_ext {monai_ext.__version__}, monai {monai.__version__}, torch {torch.__version__}")
    print(f"python {platform.python_version()} on {platform.platform()}, {os.cpu_count()} CPU(s), "
          f"{torch.get_num_threads()} torch thread(s)")  # fmt: skip
    cuda = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    print(f"CUDA devices: {', '.join(cuda) if cuda else 'none (CPU only)'}")
    print(f"bundles: {', '.join(list_bundles()) or 'none found (set MONAI_EXT_BUNDLES)'}")
    print(f"bundle folder: {bundles_root()}")
    print(f"networks: {', '.join(e.name for e in list_networks())} (python -m monai_ext list: the table)")


def networks(kind: str | None = None) -> None:
    """Print the network registry: every method, paper variant and MONAI baseline that
    ``monai_ext.networks.create_network(name)`` builds, with its kind, paper row and bundle."""
    from monai_ext.networks import KINDS, list_networks, network_table

    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
    print(network_table(list_networks(kind=kind)))


def _help_last(argv: list[str]) -> list[str]:
    """``-h`` / ``--help`` anywhere asks for the command's help. fire would call the command with the arguments
    before the flag and show the help of its result (``bench efficiency --help`` started the benchmark), so only the
    command name is kept, with fire's own ``-- --help``."""
    if "--" in argv or not any(a in ("-h", "--help") for a in argv):
        return argv
    command = argv[:1] if argv and not argv[0].startswith("-") else []
    return [*command, "--", "--help"]


def main() -> None:
    commands = {"demo": demo, "phantom": phantom, "bench": bench, "label": label, "info": info, "list": networks}
    fire.Fire(commands, command=_help_last(sys.argv[1:]))


if __name__ == "__main__":
    main()
