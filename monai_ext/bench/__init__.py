"""The benchmark harness: the registry's methods beside MONAI's own networks, measured on the same machine in one run.

Rows come from the network registry (:mod:`monai_ext.bench.rows`), training goes through MONAI's SupervisedTrainer
(:mod:`monai_ext.bench.protocol`), and every suite reports with one set of statistics (:mod:`monai_ext.bench.stats`).
"""

from monai_ext.bench.accuracy import run_accuracy, train_and_score
from monai_ext.bench.attention import NonLocalBlock, run_attention
from monai_ext.bench.deformable import run_deformable
from monai_ext.bench.efficiency import measure, measure_row, run_efficiency
from monai_ext.bench.rows import REFERENCE, bench_rows
from monai_ext.bench.slice_groups import run_slice_groups
from monai_ext.bench.stats import mean_range, ratio, spread
from monai_ext.bench.whole_volume import run_whole_volume

__all__ = [
    "REFERENCE",
    "NonLocalBlock",
    "bench_rows",
    "mean_range",
    "measure",
    "measure_row",
    "ratio",
    "run_accuracy",
    "run_attention",
    "run_deformable",
    "run_efficiency",
    "run_slice_groups",
    "run_whole_volume",
    "spread",
    "train_and_score",
]
