import numpy as np
import pytest
import torch
from torch.nn import functional as F

from monai_ext.bundles import bundle_dir
from monai_ext.data import write_msd_dataset
from monai_ext.networks.nets import SCAA
from monai_ext.visualize import bundle_depth_attention_png, depth_attention, save_depth_attention_png

TINY = {"filters": (4, 8, 8, 16, 16), "context_channels": (4, 4, 8, 8), "global_channels": 4}


def test_depth_attention_rows_sum_to_one_and_png_is_written(tmp_path):
    net = SCAA(1, 3, **TINY).train()
    image = torch.rand(1, 32, 32, 40)
    maps = depth_attention(net, image, slice_chunk=16)
    assert net.training  # mode restored
    # the volume is padded to 64^3 as the bundle's inferer pads it: F3D_i has 64 / 2^i slices
    assert [m.shape for m in maps] == [(40, 16), (40, 8), (40, 4), (40, 2)]
    for m in maps:
        np.testing.assert_allclose(m.sum(1), 1.0, rtol=1e-5)
    with torch.no_grad():
        padded = F.pad(image, (0, 24, 0, 32, 0, 32))[None]
        context = net.eval().encode_context(padded)
        _, attention = net.forward_slices(padded, context, range(40), return_attention=True, valid_size=(32, 32, 40))
    for m, a in zip(maps, attention):
        np.testing.assert_allclose(m, a[0].mean(dim=1).numpy(), rtol=1e-5, atol=1e-6)
        depth = m.shape[1]  # F3D_i of the padded 64 slices: the padded ones (past 40 of 64) get no attention
        valid = -(-40 * depth // 64)
        assert m[:, valid:].max(initial=0.0) == 0.0 and m[:, :valid].min() > 0.0
    label = np.zeros((40, 32, 32), dtype=np.uint8)  # slices first: spatial_dim=0
    label[5:15, 10:20, 10:20] = 1
    path = save_depth_attention_png(maps, tmp_path / "fig" / "a.png", label=label, title="t", spatial_dim=0)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_networks_without_attention_are_refused():
    with pytest.raises(ValueError, match="needs an SCAA with attention"):
        depth_attention(SCAA(1, 3, configuration="C-CA", **TINY), torch.rand(1, 32, 32, 32))


def test_bundle_picture_from_a_checkpoint(tmp_path):
    data = tmp_path / "data"
    write_msd_dataset(data, num_train=1, num_test=1, shape=(32, 32, 32), seed=0)
    overrides = {"network_def#filters": [4, 8, 8, 16, 16], "network_def#context_channels": [4, 4, 8, 8]}
    torch.manual_seed(0)
    net = SCAA(1, 3, **TINY)  # the demo override's SCAA* with the tiny sizes
    torch.save(net.state_dict(), tmp_path / "model.pt")
    path = bundle_depth_attention_png(
        bundle_dir("scaa"), data, tmp_path / "model.pt", tmp_path / "a.png", overrides=overrides
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
