"""FLOP counts of the layers as written."""

import torch
from torch import nn

from monai_ext.bench.flops import counting_flops
from monai_ext.networks.blocks.cpu_conv import fast_cpu_convs


def test_fast_cpu_layers_count_as_the_convolutions_they_compute():
    net = fast_cpu_convs(nn.Sequential(nn.Conv3d(4, 8, 3, padding=1)))  # a small single-sample map: oneDNN's call
    image_net = fast_cpu_convs(nn.Sequential(nn.Conv2d(1, 8, 3, padding=1)))  # one channel: a zero channel added
    with torch.no_grad(), counting_flops() as counter:
        net(torch.randn(1, 4, 6, 6, 6))
        image_net(torch.randn(2, 1, 8, 8))
    assert counter.get_total_flops() == 2 * 6**3 * 27 * 4 * 8 + 2 * 2 * 8 * 8 * 9 * 8


def test_a_custom_mapping_reaches_the_counter():
    formula = {torch.ops.aten.mm: lambda *args, **kwargs: 7}
    with counting_flops(formula) as counter:
        torch.randn(2, 3) @ torch.randn(3, 4)
    assert counter.get_total_flops() == 7
