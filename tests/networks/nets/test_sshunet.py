"""SSHUNet: the released configuration, views, shapes, deep supervision, export, errors, and its registry entries."""

import copy
import threading

import pytest
import torch
from monai.data import MetaTensor, list_data_collate
from monai.losses import DeepSupervisionLoss, DiceCELoss
from monai.networks.nets import DynUNet

from monai_ext.networks import create_network, get_network_entry, list_networks
from monai_ext.networks.blocks import SliceShift, folded, to_view
from monai_ext.networks.compat import load_sshunet_release
from monai_ext.networks.nets import SSH_UNET_PATCH, SSHUNet, sshunet_inferer

SMALL = {"out_channels": 3, "filters": [8, 16, 32, 64], "strides": [1, 2, 2, 2]}


def _shifting(block) -> bool:
    return isinstance(block.shift, SliceShift)


def test_released_configuration_parameter_count():
    assert sum(p.numel() for p in SSHUNet(in_channels=1, out_channels=14).parameters()) == 6_487_822
    assert sum(p.numel() for p in create_network("ssh_unet").parameters()) == 6_487_822


def test_2d_kernels_and_shifts_along_the_last_axis():
    net = SSHUNet(**SMALL)
    assert net.input_block.conv1.conv.kernel_size == (3, 3, 1)
    assert all(m.spatial_dim == 2 for m in net.modules() if isinstance(m, SliceShift))


def test_released_shift_placement():
    net = SSHUNet(**SMALL)
    assert _shifting(net.input_block) and all(_shifting(b) for b in net.downsamples) and _shifting(net.bottleneck)
    # the release's decoder rule: the block above the top encoder level never shifts
    assert [_shifting(up.conv_block) for up in net.upsamples] == [True, True, False]
    partial = SSHUNet(**SMALL, shift_levels=[1], shift_input=False, shift_bottleneck=False)
    assert not _shifting(partial.input_block) and [_shifting(b) for b in partial.downsamples] == [False, True]
    assert [_shifting(up.conv_block) for up in partial.upsamples] == [True, False, False]


def test_composes_monai_blocks_with_dynunet_key_names():
    ours = SSHUNet(**SMALL)
    assert not isinstance(ours, DynUNet) and not hasattr(ours, "skip_layers")
    monai = DynUNet(3, 1, 3, [(3, 3, 1)] * 4, [1, 2, 2, 2], [2, 2, 2], filters=[8, 16, 32, 64], res_block=True)
    monai_keys = {k for k in monai.state_dict() if not k.startswith("skip_layers.")}
    assert monai_keys <= set(ours.state_dict())
    extra = set(ours.state_dict()) - monai_keys
    assert {"output_block.conv1.conv.weight", "upsamples.0.transp_conv.conv.bias"} <= extra
    assert not any(k.startswith("skip_layers.") for k in ours.state_dict())


@pytest.mark.parametrize("shape", [(16, 16, 16), (16, 32, 24), (8, 16, 32)])
def test_shapes_cubic_and_non_cubic(shape):
    net = SSHUNet(**SMALL).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 1, *shape)).shape == (2, 3, *shape)


def test_per_view_path_equals_stacked_path():
    net = SSHUNet(**SMALL).eval()
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        per_view = net.output_block.fuse_views([net._trunk(to_view(x, s))[-1] for s in net.spatial_dims_order])
        torch.testing.assert_close(net(x), per_view, atol=1e-5, rtol=1e-4)


def test_views_are_summed_so_their_order_does_not_matter():
    a = SSHUNet(**SMALL).eval()
    b = SSHUNet(**SMALL, spatial_dims_order=(2, 0, 1)).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=1e-5, rtol=1e-4)


def test_one_axial_view():
    net = SSHUNet(**SMALL, spatial_dims_order=(2,)).eval()
    x = torch.randn(1, 1, 16, 24, 8)
    with torch.no_grad():
        y = net(x)
        expected = net.output_block.fuse_views([net._trunk(x)[-1]])  # the volume as it is, by the 3D modules
        torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-4)  # the folded path: fp32 round-off
    assert y.shape == (1, 3, 16, 24, 8)


def test_paper_placement_option_changes_the_function():
    a, b = SSHUNet(**SMALL).eval(), SSHUNet(**SMALL, shift_position="before_conv").eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))


def test_deep_supervision_gives_a_list_at_each_resolution():
    net = SSHUNet(**SMALL, deep_supervision=True, deep_supr_num=2).train()
    x = torch.randn(1, 1, 16, 16, 24)
    outputs = net(x)
    assert isinstance(outputs, list) and [o.shape for o in outputs] == [
        (1, 3, 16, 16, 24), (1, 3, 8, 8, 12), (1, 3, 4, 4, 6),
    ]  # fmt: skip
    label = torch.randint(0, 3, (1, 1, 16, 16, 24)).float()  # DeepSupervisionLoss resizes it for each output
    DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True))(outputs, label).backward()
    assert all(p.grad is not None for p in net.parameters())
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (1, 3, 16, 16, 24)


def test_script_and_trace():
    net = SSHUNet(**SMALL).eval()
    x = torch.randn(1, 1, 16, 16, 24)
    with torch.no_grad():
        ref = net(x)
        torch.testing.assert_close(torch.jit.script(net)(x), ref)
        torch.testing.assert_close(torch.jit.trace(net, x)(x), ref)


def test_script_keeps_the_deep_supervision_list():
    net = SSHUNet(**SMALL, deep_supervision=True).train()
    scripted = torch.jit.script(net)
    x = torch.randn(1, 1, 16, 16, 16)
    outputs = scripted(x)
    assert isinstance(outputs, list) and len(outputs) == 2 and outputs[1].shape == (1, 3, 8, 8, 8)


def test_onnx_export_runs_in_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    net = SSHUNet(**SMALL).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    path = tmp_path / "sshunet.onnx"
    torch.onnx.export(net, x, str(path), dynamo=False, opset_version=17, input_names=["image"], output_names=["pred"])
    out = ort.InferenceSession(str(path)).run(None, {"image": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(out), net(x).detach(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.randn(1, 2, 16, 16, 16), "built for 1 input channel"),
        (torch.randn(1, 16, 16, 16), "expects a 5D input"),
        (torch.randn(1, 1, 16, 16, 12), "divisible by \\[8, 8, 8\\].*DivisiblePad"),
    ],
)
def test_bad_inputs(x, match):
    with pytest.raises(ValueError, match=match):
        SSHUNet(**SMALL)(x)


def test_anisotropic_strides_act_on_the_axes_of_each_view():
    strides = [1, 2, 2, (2, 2, 1)]  # no down-sampling across slices in the last level
    one_view = SSHUNet(**{**SMALL, "strides": strides, "spatial_dims_order": (2,)}).eval()
    assert one_view.divisor == [8, 8, 4]
    three_views = SSHUNet(**{**SMALL, "strides": strides}).eval()
    assert three_views.divisor == [8, 8, 8]  # every axis is a slice axis in one view, an in-slice axis in two
    with torch.no_grad():
        assert one_view(torch.randn(1, 1, 16, 16, 12)).shape == (1, 3, 16, 16, 12)
        assert three_views(torch.randn(1, 1, 16, 8, 24)).shape == (1, 3, 16, 8, 24)
    with pytest.raises(ValueError, match="divisible by \\[8, 8, 8\\]"):
        three_views(torch.randn(1, 1, 16, 16, 12))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"shift_levels": [5]}, "shift_levels must lie in"),
        ({"shift_position": "middle"}, "shift_position must be one of"),
        ({"filters": [8, 16]}, "filters needs one entry per level"),
        ({"kernel_size": [(3, 3, 1)] * 3}, "one entry per level"),
        ({"kernel_size": [(3, 3)] * 4}, "kernel_size\\[0\\] must be an int or 3 values"),
        ({"deep_supervision": True, "deep_supr_num": 3}, "deep_supr_num must lie in \\[1, 2\\]"),
        ({"spatial_dims_order": (0, 0)}, "distinct spatial axes"),
        ({"spatial_dims_order": (3,)}, "counts spatial axes"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SSHUNet(**{**SMALL, **kwargs})


# --- the folded 2D path against the 3D reference (the same weights, Conv3d modules) ---

FOLDED_TOL = {"atol": 1e-5, "rtol": 1e-5}


@pytest.mark.parametrize("position", ["after_conv", "before_conv"])
@pytest.mark.parametrize("views", [(0, 1, 2), (2,)])
@pytest.mark.parametrize("strides", [SMALL["strides"], [1, 2, 2, (2, 2, 1)]], ids=["slice_stride_2", "slice_stride_1"])
def test_folded_path_equals_the_3d_reference_in_eval(position, views, strides):
    net = SSHUNet(**{**SMALL, "strides": strides}, spatial_dims_order=views, shift_position=position).eval()
    assert net.folded
    x = torch.randn(2, 1, 16, 24, 32)  # non-cubic: the views run one after the other in both paths
    with torch.no_grad():
        out = net(x)
        torch.testing.assert_close(out, net._forward_3d(x), **FOLDED_TOL)
    assert out.is_contiguous()


@pytest.mark.parametrize("views", [(0, 1, 2), (2,), (1, 2)])
@pytest.mark.parametrize("strides", [SMALL["strides"], [1, 2, 2, (2, 2, 1)]], ids=["slice_stride_2", "slice_stride_1"])
def test_inference_in_chunks_and_pooled_buffers_equals_the_3d_reference(views, strides, monkeypatch):
    # chunks of a few slices and every buffer pooled: the paths a 96^3 window takes, on a small input
    monkeypatch.setattr(folded, "CHUNK_BYTES", 2000)
    monkeypatch.setattr(folded, "POOL_MIN_BYTES", 1)
    net = SSHUNet(**{**SMALL, "strides": strides}, spatial_dims_order=views).eval()
    x = torch.randn(2, 1, 16, 24, 32)
    before = x.clone()
    with torch.inference_mode():
        torch.testing.assert_close(net(x), net._forward_3d(x), **FOLDED_TOL)
        torch.testing.assert_close(net(x), net._forward_3d(x), **FOLDED_TOL)  # twice: nothing left over
    assert torch.equal(x, before)


def test_under_autocast_the_folded_maps_stay_bf16(monkeypatch):
    # every map after the first convolution is bf16, as on the 3D path: none is held (and normalised) in float32
    monkeypatch.setattr(folded, "CHUNK_BYTES", 2000)
    monkeypatch.setattr(folded, "POOL_MIN_BYTES", 1)
    net = SSHUNet(**SMALL).eval()
    normalised: list[torch.dtype] = []
    norm = folded.instance_norm_folded

    def recording(x, *args, **kwargs):
        normalised.append(x.dtype)
        return norm(x, *args, **kwargs)

    monkeypatch.setattr("monai_ext.networks.blocks.slice_shift_block.instance_norm_folded", recording)
    torch.manual_seed(0)
    x = torch.randn(1, 1, 16, 24, 32)
    with torch.inference_mode():
        exact = net(x)
        normalised.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, reference = net(x), net._forward_3d(x)
    assert len(normalised) > 0 and set(normalised) == {torch.bfloat16}
    assert out.dtype == reference.dtype == torch.bfloat16
    # as close to float32 as the 3D path under autocast (whose norms run in float32): bf16 round-off, no more
    error, reference_error = (out.float() - exact).abs(), (reference.float() - exact).abs()
    assert error.mean() < 1.5 * reference_error.mean() and error.max() < 2 * reference_error.max()


def _pooled(net) -> list[torch.Tensor]:
    """The free buffers of this thread's shared pool (inside ``net.shared_buffers()``)."""
    return net._shared_pools[threading.get_ident()][0]


def test_shared_buffers_reuse_one_pool_across_calls_and_free_it_on_exit(monkeypatch):
    monkeypatch.setattr(folded, "CHUNK_BYTES", 2000)
    monkeypatch.setattr(folded, "POOL_MIN_BYTES", 1)
    net = SSHUNet(**SMALL).eval()
    x = torch.randn(1, 1, 16, 24, 32)
    with torch.no_grad():
        alone = net(x)
        with net.shared_buffers():
            first = net(x)  # the first call fills the pool; the second takes what the first dropped as it went
            second = net(x)
            filled = list(_pooled(net))
            third = net(x)
            reused = list(_pooled(net))
            with net.shared_buffers():  # nested: the same pool
                assert _pooled(net) is net._shared_pools[threading.get_ident()][0] and len(_pooled(net)) > 0
            assert torch.equal(first, alone) and torch.equal(second, alone) and torch.equal(third, alone)
            # from then on every buffer comes back to the pool and the next call runs in exactly that memory: the
            # same storages, handed out and given back again (new tensor objects), none new
            assert len(filled) > 0
            assert sorted(b.data_ptr() for b in reused) == sorted(b.data_ptr() for b in filled)
            assert not {id(b) for b in reused} & {id(b) for b in filled}
            assert net(torch.randn(1, 1, 32, 16, 16)).shape == (1, 3, 32, 16, 16)  # another size empties it first:
            assert not {b.data_ptr() for b in _pooled(net)} & {b.data_ptr() for b in reused}  # (held here)
        assert net._shared_pools == {}  # freed on exit
        assert torch.equal(net(x), alone)  # and no pool is kept outside the context


def test_shared_buffers_do_not_change_training_or_scripted_builds():
    net = SSHUNet(**SMALL)
    x = torch.randn(1, 1, 16, 24, 32)
    with net.shared_buffers():
        net(x).sum().backward()  # autograd records: no pool at all
        assert _pooled(net) == []
    scripted = torch.jit.script(net.eval())
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), **FOLDED_TOL)


@pytest.mark.parametrize("position", ["after_conv", "before_conv"])
def test_a_collated_batch_of_meta_tensors_runs_the_folded_path(position, monkeypatch):
    # a batch from MONAI's DataLoader (what a trainer or SimpleInferer hands over): indexing its batch axis would
    # split its metadata, so the folded path must never index the folded batch (N * S) that way
    monkeypatch.setattr(folded, "CHUNK_BYTES", 2000)
    monkeypatch.setattr(folded, "POOL_MIN_BYTES", 1)
    batch = list_data_collate([{"image": MetaTensor(torch.randn(1, 16, 24, 32))} for _ in range(2)])["image"]
    assert isinstance(batch, MetaTensor) and batch.is_batch
    net = SSHUNet(**SMALL, shift_position=position)
    reference = net._forward_3d(batch.as_tensor())
    torch.testing.assert_close(torch.as_tensor(net(batch)), reference, **FOLDED_TOL)  # training mode, autograd
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(torch.as_tensor(net(batch)), net._forward_3d(batch.as_tensor()), **FOLDED_TOL)


@pytest.mark.parametrize("position", ["after_conv", "before_conv"])
@pytest.mark.parametrize("views", [(0, 1, 2), (2,)])
def test_folded_path_equals_the_3d_reference_in_training_with_deep_supervision(position, views, monkeypatch):
    torch.manual_seed(0)  # random weights and inputs can put a value at the tolerance's edge (1.5e-5 seen once)
    net = SSHUNet(**SMALL, spatial_dims_order=views, shift_position=position, deep_supervision=True, deep_supr_num=2)
    net.train()
    x = torch.randn(2, 1, 16, 24, 32)
    outputs, reference = net(x), net._forward_3d(x)
    assert len(outputs) == len(reference) == 3
    for a, b in zip(outputs, reference):
        torch.testing.assert_close(a, b, **FOLDED_TOL)
    monkeypatch.setattr(folded, "POOL_MIN_BYTES", 1)
    with torch.no_grad(), net.shared_buffers():  # training mode without autograd: the pooled path, twice
        for _ in range(2):
            for a, b in zip(net(x), reference):
                torch.testing.assert_close(a, b, **FOLDED_TOL)
    # gradients in float64: in float32 those of the convs before instance norm lose up to ~1e-2 to cancellation
    # (the 3D path more than the folded one), which would hide a wrong gradient
    net64, x64 = copy.deepcopy(net).double(), x.double()
    weights = [torch.randn_like(o).double() for o in reference]  # one random loss
    grads = []
    for forward in (net64._forward_folded, net64._forward_3d):
        net64.zero_grad()
        sum((o * w).sum() for o, w in zip(forward(x64), weights)).backward()
        grads.append([p.grad.clone() for p in net64.parameters()])
    scale = max(g.abs().max().item() for g in grads[1])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-9 * scale, rtol=1e-7)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": [(3, 3, 3)] * 4},  # kernels across slices
        {"norm_name": "batch"},
        {"dropout": 0.1},
    ],
    ids=["3d_kernels", "batch_norm", "dropout"],
)
def test_configurations_the_folded_path_does_not_cover_run_the_3d_path(kwargs):
    net = SSHUNet(**SMALL, **kwargs).eval()
    assert not net.folded
    x = torch.randn(1, 1, 16, 16, 24)
    with torch.no_grad():
        torch.testing.assert_close(net(x), net._forward_3d(x), atol=0, rtol=0)


def test_trace_does_not_depend_on_the_grad_mode():
    net = SSHUNet(**SMALL).eval()
    x = torch.randn(1, 1, 16, 16, 24)
    traced = torch.jit.trace(net, x)  # traced with autograd on, checked again by torch under no_grad
    with torch.no_grad():
        torch.testing.assert_close(traced(x), net(x))


def test_every_registry_variant_runs_folded():
    assert all(create_network(name, **SMALL).folded for name in PAPER_ROWS)


# --- registry ---

PAPER_ROWS = {
    "ssh_unet": "Table 5: 2D+shift+multi-view",
    "ssh_unet_2d_shift": "Table 5: 2D+shift",
    "ssh_unet_2d": "Table 5: 2D",
    "ssh_unet_multi_view": "Table 6: shifted fraction 0",
}


@pytest.mark.parametrize("name, row", list(PAPER_ROWS.items()))
def test_registry_entries_are_the_paper_rows(name, row):
    entry = get_network_entry(name)
    main = name == "ssh_unet"
    assert entry.kind == "2d" and entry.family == "ours" and entry.method == 1 and entry.patch == (96, 96, 96)
    assert entry.paper == f"Ugwu et al. 2023, {row}"
    assert entry.variant_of == (None if main else "ssh_unet") and entry.bundle == "ssh_unet"
    assert entry.loader is (load_sshunet_release if main else None)
    net = create_network(name, **SMALL)
    shifts = sum(isinstance(m, SliceShift) for m in net.modules())
    assert isinstance(net, SSHUNet) and net.filters == [8, 16, 32, 64]
    views_and_shifts = {
        "ssh_unet": (3, 6),
        "ssh_unet_2d_shift": (1, 6),
        "ssh_unet_2d": (1, 0),
        "ssh_unet_multi_view": (3, 0),
    }
    assert (len(net.spatial_dims_order), shifts) == views_and_shifts[name]
    assert {e.name for e in list_networks() if e.name == "ssh_unet" or e.variant_of == "ssh_unet"} == set(PAPER_ROWS)


def test_inferer_factory_takes_overrides():
    # that it equals the bundle's inferer, and the patch its window: tests/networks/test_registry.py, every method
    assert get_network_entry("ssh_unet").patch == SSH_UNET_PATCH
    assert sshunet_inferer(roi_size=(32, 32, 16), overlap=0.25).inferer.roi_size == (32, 32, 16)


@pytest.mark.parametrize("name", list(PAPER_ROWS))
def test_registry_entry_runs_a_non_cubic_volume_through_its_inferer(name):
    entry = get_network_entry(name)
    net = entry.build(in_channels=1, out_channels=2, filters=[4, 8, 8, 16, 16]).eval()
    inferer = entry.make_inferer(roi_size=(32, 32, 16))  # a smaller window keeps the test fast
    x = torch.randn(1, 1, 40, 24, 20)  # slices on the last axis; no size divisible by the window
    with torch.no_grad():
        out = inferer(x, net)
    assert out.shape == (1, 2, 40, 24, 20) and torch.isfinite(out).all()
