"""monai_ext.networks.compat: the authors' released weights in our networks (key names, kernel layouts, axes).

CoTr: the release's key names, kernel layout and sampling axes. SSH-UNet: the release's weights in SSHUNet,
checked against its golden output. (RSANet's layout helpers are checked with its golden block in
tests/networks/nets/test_rsanet.py.)
"""

import re

import pytest
import torch

from monai_ext.networks import create_network
from monai_ext.networks.blocks import DeTransEncoder, MSDeformableAttention, deformable_reference_points
from monai_ext.networks.compat import (
    convert_cotr_release_state_dict,
    convert_detrans_release_state_dict,
    convert_sshunet_release_state_dict,
    cotr_release_axes,
    load_cotr_release,
    load_sshunet_release,
    use_cotr_release_axes,
)
from monai_ext.networks.nets import CoTr, SSHUNet

TINY = {"encoder_channels": (8, 16, 24, 24), "num_layers": 1, "mlp_dim": 32, "num_heads": 2, "num_points": 2}


def _release_name(key: str, num_stages: int = 3) -> str:
    """Our parameter name -> the released ResTranUnet's (written out independently of the loader's rules)."""
    rules = [
        (r"^stem\.0\.", lambda m: "backbone.conv1."),
        (r"^stem\.1\.", lambda m: "backbone.norm1."),
        (r"^encoder_stages\.(\d)\.(\d)\.conv\.", lambda m: f"backbone.layer{int(m[1]) + 1}.{m[2]}.conv1."),
        (r"^encoder_stages\.(\d)\.(\d)\.norm\.", lambda m: f"backbone.layer{int(m[1]) + 1}.{m[2]}.norm1."),
        (r"^encoder_stages\.(\d)\.(\d)\.downsample\.", lambda m: f"backbone.layer{int(m[1]) + 1}.{m[2]}.downsample."),
        (r"^detrans\.layers\.", lambda m: "encoder_Detrans.encoder.layers."),
        (r"^detrans\.level_embed", lambda m: "encoder_Detrans.level_embed"),
        (r"^upsamples\.(\d)\.", lambda m: f"transposeconv_stage{num_stages - 1 - int(m[1])}."),
        (r"^decoder_blocks\.(\d)\.conv(\d)\.", lambda m: f"stage{num_stages - 1 - int(m[1])}_de.resconv{m[2]}.conv."),
        (r"^decoder_blocks\.(\d)\.norm(\d)\.", lambda m: f"stage{num_stages - 1 - int(m[1])}_de.resconv{m[2]}.norm."),
        (r"^deep_heads\.(\d)\.", lambda m: f"ds{num_stages - 1 - int(m[1])}_cls_conv."),
        (r"^out_conv\.", lambda m: "cls_conv."),
    ]
    for pattern, target in rules:
        m = re.match(pattern, key)
        if m:
            return "module.U_ResTran3D." + target(m) + key[m.end() :]
    raise AssertionError(f"unmapped key {key}")


def _release_network(seed: int = 0) -> CoTr:
    """A stand-in for the released ResTranUnet: slices first (its layout) with its sampling axes, norm parameters
    perturbed so that a wrong norm mapping shows in the output."""
    torch.manual_seed(seed)
    net = use_cotr_release_axes(CoTr(out_channels=3, spatial_dim=0, dropout_rate=0.0, **TINY)).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return net


def test_release_axes_put_the_slices_first():
    assert [cotr_release_axes(s) for s in (2, 0, 1)] == [(2, 0, 1), (0, 1, 2), (1, 0, 2)]
    with pytest.raises(ValueError, match="spatial_dim"):
        cotr_release_axes(3)


def test_release_key_names():
    release_keys = {_release_name(k) for k in CoTr().state_dict()}
    assert len(release_keys) == 162  # as many tensors as the released ResTranUnet (instance norm)
    for key in (  # spot checks against the release's module names
        "module.U_ResTran3D.backbone.layer1.0.downsample.0.weight",
        "module.U_ResTran3D.backbone.layer3.1.norm1.bias",
        "module.U_ResTran3D.transposeconv_stage2.weight",
        "module.U_ResTran3D.stage0_de.resconv2.norm.weight",
        "module.U_ResTran3D.ds1_cls_conv.bias",
        "module.U_ResTran3D.encoder_Detrans.encoder.layers.5.self_attn.sampling_offsets.bias",
    ):
        assert key in release_keys


@pytest.mark.parametrize("prefix", ["module.U_ResTran3D.", "U_ResTran3D.", ""])
def test_loader_reproduces_a_renamed_checkpoint(prefix):
    source = _release_network()
    release = {_release_name(k).replace("module.U_ResTran3D.", prefix): v for k, v in source.state_dict().items()}
    loaded = load_cotr_release(CoTr(out_channels=3, spatial_dim=0, dropout_rate=0.0, **TINY), {"state_dict": release})
    assert loaded.detrans.layers[0].self_attn.reference_axes is not None  # switched to the release's sampling
    x = torch.randn(1, 1, 8, 32, 32)  # the release's (B, C, D, H, W)
    torch.testing.assert_close(loaded.eval()(x), source(x))


@pytest.mark.parametrize("spatial_dim", [2, 1])
def test_loaded_network_computes_the_same_with_the_slices_elsewhere(spatial_dim, tmp_path):
    source = _release_network()
    path = tmp_path / "model_final_checkpoint.model"
    torch.save({"state_dict": {_release_name(k): v for k, v in source.state_dict().items()}}, path)
    net = load_cotr_release(CoTr(out_channels=3, spatial_dim=spatial_dim, dropout_rate=0.0, **TINY), path).eval()
    assert net.stem[0].weight.shape[2 + spatial_dim] == 7 and net.stem[0].stride[spatial_dim] == 1
    x = torch.randn(1, 1, 8, 32, 48)  # slices first
    axes = cotr_release_axes(spatial_dim)  # where our volume holds the release's D, H, W
    ours = x.permute(0, 1, *(2 + axes.index(a) for a in range(3)))
    torch.testing.assert_close(net(ours).permute(0, 1, *(2 + a for a in axes)), source(x))


def test_kernels_are_permuted_to_the_slice_axis():
    kernel = torch.arange(4 * 5 * 6.0).view(1, 1, 4, 5, 6)  # (out, in, kD, kH, kW)
    release = {"backbone.conv1.weight": kernel, "encoder_Detrans.level_embed": torch.zeros(2, 3)}
    assert convert_cotr_release_state_dict(release, spatial_dim=0)["stem.0.weight"] is kernel
    converted = convert_cotr_release_state_dict(release, spatial_dim=2)
    torch.testing.assert_close(converted["stem.0.weight"], kernel.permute(0, 1, 3, 4, 2))  # (kH, kW, kD)
    assert converted["detrans.level_embed"].shape == (2, 3)


def test_loader_errors():
    release = {_release_name(k): v for k, v in CoTr(out_channels=3, **TINY).state_dict().items()}
    with pytest.raises(ValueError, match="3 classes.*out_channels=3"):
        load_cotr_release(CoTr(out_channels=5, **TINY), release)
    with pytest.raises(TypeError, match="CoTr network"):
        load_cotr_release(DeTransEncoder(24, num_layers=1, num_heads=2, mlp_dim=8), release)
    with pytest.raises(KeyError, match="no CoTr parameter"):
        convert_cotr_release_state_dict({"U_ResTran3D.something.weight": torch.zeros(1)})


def test_detrans_key_names():
    release = {"level_embed": 0, "encoder.layers.3.self_attn.value_proj.weight": 1, "encoder.layers.0.norm1.bias": 2}
    mapped = set(convert_detrans_release_state_dict(release))
    assert mapped == {"level_embed", "layers.3.self_attn.value_proj.weight", "layers.0.norm1.bias"}
    assert mapped <= set(DeTransEncoder(24, num_layers=4, num_heads=2, mlp_dim=8).state_dict())
    with pytest.raises(KeyError, match="no DeTransEncoder parameter"):
        convert_detrans_release_state_dict({"input_proj.weight": 0})


def _identity_attention() -> MSDeformableAttention:
    """One head and point, zero offsets, identity projections: the block outputs the sample it reads."""
    block = MSDeformableAttention(8, num_levels=1, num_heads=2, num_points=1)
    with torch.no_grad():
        block.sampling_offsets.weight.zero_()
        block.sampling_offsets.bias.zero_()
        for proj in (block.value_proj, block.output_proj):
            proj.weight.copy_(torch.eye(8))
            proj.bias.zero_()
    return block


def test_release_axes_read_a_transposed_voxel():
    block = use_cotr_release_axes(_identity_attention(), spatial_dim=0)  # the release's own (D, H, W) layout
    x = torch.randn(1, 64, 8)  # on a cubic level the query (d, h, w) reads the voxel (h, w, d)
    y = block(x, deformable_reference_points([(4, 4, 4)])[None], x, [(4, 4, 4)])
    torch.testing.assert_close(y, x.view(1, 4, 4, 4, 8).permute(0, 3, 1, 2, 4).reshape(1, 64, 8))
    x = torch.randn(1, 105, 8)  # on a non-cubic level not its own voxel either
    y = block(x, deformable_reference_points([(3, 5, 7)])[None], x, [(3, 5, 7)])
    assert (y - x).abs().max() > 0.1


def test_release_axes_errors():
    with pytest.raises(ValueError, match="is 3D"):
        use_cotr_release_axes(MSDeformableAttention(8, num_heads=2, spatial_dims=2))
    with pytest.raises(ValueError, match="slices on spatial axis 2, got spatial_dim=0"):
        use_cotr_release_axes(CoTr(**TINY), spatial_dim=0)


def _golden_net(cfg: dict) -> SSHUNet:
    """SSHUNet with the golden run's configuration; the release's kernels and strides ``(a, b, c)`` are ours
    ``(c, b, a)`` (its views hold the slices first, ours last)."""
    return SSHUNet(
        in_channels=cfg["in_channels"], out_channels=cfg["out_channels"],
        kernel_size=[k[::-1] for k in cfg["kernel_size"]], strides=[s[::-1] for s in cfg["strides"]],
        filters=cfg["filters"], shift_levels=cfg["gate_pos"], shift_bottleneck=cfg["gate_in_bottleneck"],
        shift_decoder=cfg["gate_dec"],
    ).eval()  # fmt: skip


def test_loads_and_reproduces_the_release(golden):
    g = golden("ssh_unet_network")
    net = load_sshunet_release(_golden_net(g["config"]), g["state_dict"])  # strict load
    # the release reads its volumes through MONAI (RAS, (B, C, H, W, D)) and gives them to the network as they are:
    # the same tensor goes into ours
    with torch.no_grad():
        torch.testing.assert_close(net(g["x"]), g["y"], atol=1e-5, rtol=1e-4)


def test_conversion_swaps_the_kernel_axes_and_drops_the_aliases(golden):
    release = golden("ssh_unet_network")["state_dict"]
    ours = convert_sshunet_release_state_dict(release)
    assert set(ours) == {k for k in release if not k.startswith("skip_layers.")}
    assert release["input_block.conv1.conv.weight"].shape[2:] == (1, 3, 3)
    assert ours["input_block.conv1.conv.weight"].shape[2:] == (3, 3, 1)
    torch.testing.assert_close(
        ours["upsamples.0.transp_conv.conv.weight"], release["upsamples.0.transp_conv.conv.weight"].transpose(2, 4)
    )
    assert ours["input_block.norm1.weight"] is release["input_block.norm1.weight"]


def test_conversion_reads_the_release_training_checkpoint(tmp_path):
    # the release's trainer saves {"epoch", "best_acc", "state_dict", "optimizer", "scheduler"}
    net = create_network("ssh_unet", out_channels=3, filters=[4, 8, 16, 32, 64])
    release = {k: v.transpose(2, 4) if v.dim() == 5 else v for k, v in net.state_dict().items()}
    path = tmp_path / "model.pt"
    torch.save({"epoch": 3, "best_acc": 0.5, "state_dict": release}, path)
    loaded = load_sshunet_release(create_network("ssh_unet", out_channels=3, filters=[4, 8, 16, 32, 64]), path)
    for key, value in net.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, atol=0, rtol=0)


def test_loader_refuses_other_networks_and_the_release_kernel_order(golden):
    with pytest.raises(TypeError, match="SSHUNet"):
        load_sshunet_release(torch.nn.Conv3d(1, 1, 1), {})
    g = golden("ssh_unet_network")
    unconverted = {**g["config"], "kernel_size": [k[::-1] for k in g["config"]["kernel_size"]]}  # (1, 3, 3) kept
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_sshunet_release(_golden_net(unconverted), g["state_dict"])
