"""The convolution self-check (issue 20): shape listing, the float64 comparison, the guard's switch
and its single warning, the command's user errors. CPU only; the full-size GPU run is in
test_gpu_convolutions at the end (skipped without CUDA)."""
from __future__ import annotations

import sys
import warnings

import pytest
import torch
from torch import nn

from conftest import ROOT
from sgm.common import conv_check as cc
from sgm.common.conv_check import ConvShape

sys.path.insert(0, str(ROOT / "scripts"))
import check_gpu_convolutions  # noqa: E402


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch, tmp_path):
    monkeypatch.setenv(cc.CACHE_ENV, str(tmp_path / "cache"))
    cc.forget_checks()
    with cc.cudnn_state(enabled=torch.backends.cudnn.enabled, tf32=cc.conv_tf32_enabled()):
        yield  # flags a guard switched are restored
    cc.forget_checks()


def two_layer_net(device=None) -> nn.Sequential:
    with torch.device(device or "cpu"):
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 4, 3, stride=2, padding=1),
                             nn.Conv2d(4, 4, 1))


def conv(cin, cout, size, batch=2, k=3, stride=1, pad=1) -> ConvShape:
    return ConvShape(batch=batch, in_channels=cin, out_channels=cout, spatial=(size, size), kernel=(k, k),
                     stride=(stride, stride), padding=(pad, pad), dilation=(1, 1))


def test_records_each_distinct_convolution_once():
    net = two_layer_net("meta")
    shapes = cc.record_conv_shapes(lambda: [net(torch.empty(2, 3, 16, 16, device="meta")) for _ in range(2)])
    # by hand: 3->8 at 16x16, 8->4 stride 2 at 16x16, the 1x1 at 8x8; the second pass adds nothing
    assert shapes == [conv(3, 8, 16), conv(8, 4, 16, stride=2), conv(4, 4, 8, k=1, pad=0)]
    assert str(shapes[1]) == "Conv2d 8->4 k3x3 s2x2 p1x1 on (2, 8, 16, 16)"
    net3 = nn.Conv3d(4, 4, (3, 1, 1), padding=(1, 0, 0), device="meta")
    (shape,) = cc.record_conv_shapes(lambda: net3(torch.empty(1, 4, 16, 8, 8, device="meta")))
    assert (shape.kernel, shape.spatial, shape.fan_in) == ((3, 1, 1), (16, 8, 8), 12)


def test_tiny_config_lists_the_unet_vae_and_clip_convolutions():
    from sgm.pipelines.conv_shapes import inference_conv_shapes, meta_model

    model = meta_model(ROOT / "configs" / "tiny-train-v01.yaml")
    shapes = inference_conv_shapes(model)
    names = {str(s) for s in shapes}
    assert len(names) == len(shapes)  # distinct
    expected = {
        "Conv2d 3->64 k32x32 s32x32 on (1, 3, 224, 224)",  # CLIP patch embedding (tiny ViT, patch 32)
        "Conv2d 3->32 k3x3 p1x1 on (1, 3, 64, 64)",  # VAE encoder of the condition frame
        "Conv2d 8->32 k3x3 p1x1 on (32, 8, 8, 8)",  # UNet input conv, guidance batch 2 x 16 frames
        "Conv2d 8->32 k3x3 p1x1 on (16, 8, 8, 8)",  # the same, --low_memory halves
        "Conv3d 32->32 k3x1x1 p1x0x0 on (2, 32, 16, 8, 8)",  # temporal conv of the VideoResBlocks
        "Conv2d 32->4 k3x3 p1x1 on (32, 32, 8, 8)",  # UNet output conv
        "Conv2d 32->3 k3x3 p1x1 on (16, 32, 64, 64)",  # VAE decoder output, 16 frames a chunk
        "Conv2d 32->3 k3x3 p1x1 on (1, 32, 64, 64)",  # one frame at a time (--low_memory)
    }
    assert expected <= names, sorted(expected - names)


def test_check_passes_on_cpu_in_strict_fp32_and_half_precisions():
    shapes = [conv(3, 8, 16), conv(8, 4, 16, stride=2), ConvShape(1, 4, 4, (16, 8, 8), (3, 1, 1), (1, 1, 1),
                                                                 (1, 0, 0), (1, 1, 1))]
    for precision in ("fp32", "fp16", "bf16"):
        results = cc.check_shapes(shapes, "cpu", precision, backward=precision == "fp32")
        assert all(r.passed for r in results), cc.format_table(results)
        assert all(r.error > 0 for r in results)  # really compared, not the reference with itself


def off_by(factor: float, only: ConvShape | None = None):
    """A convolution that scales the right result (on ``only``, else every shape): a wrong kernel."""
    def bad(x, weight, bias, shape):
        out = cc.device_convolution(x, weight, bias, shape)
        return out * factor if only is None or shape == only else out
    return bad


def test_check_fails_a_wrong_convolution_and_the_table_says_so():
    shape = conv(8, 4, 16)
    assert not cc.check_shape(shape, "cpu", "fp16", conv=off_by(1.01)).passed  # 1 % is far over 5e-3
    result = cc.check_shape(shape, "cpu", "fp32", conv=off_by(1.5))
    assert result.error == pytest.approx(0.5, rel=1e-3) and not result.passed
    assert "FAIL" in cc.format_table([result])
    with pytest.raises(ValueError, match="unknown precision"):
        cc.check_shape(shape, "cpu", "fp64")


def test_guard_routes_the_failing_layers_to_native_kernels_and_warns_once():
    torch.manual_seed(0)
    net = two_layer_net()
    x = torch.randn(2, 3, 16, 16)
    expected = net(x)
    shapes = cc.record_conv_shapes(lambda: two_layer_net("meta")(torch.empty(2, 3, 16, 16, device="meta")))
    failing = shapes[1]
    with cc.cudnn_state(tf32=False), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = cc.guard_convolutions(net, "cpu", torch.float32, allow_tf32=False, shapes=shapes,
                                       conv=off_by(1.5, failing), backward=True)
        again = cc.guard_convolutions(net, "cpu", torch.float32, allow_tf32=False, shapes=shapes,
                                      conv=off_by(1.5, failing))
    assert report.precision == "fp32" and [r.shape for r in report.failing] == [failing]
    assert report.action == again.action == "native-layers" and report.routed == ["2"]
    assert torch.backends.cudnn.enabled  # scoped, not the global switch
    mine = [w for w in caught if issubclass(w.category, cc.ConvolutionKernelWarning)]
    assert len(mine) == 1
    message = str(mine[0].message)
    assert f"torch {torch.__version__}" in message and "cuDNN" in message and str(failing) in message
    out = net(x)  # the routed layer computes the same values, and its gradients flow
    torch.testing.assert_close(out, expected)
    out.square().sum().backward()
    assert net[2].weight.grad is not None and torch.isfinite(net[2].weight.grad).all()


def test_guard_turns_tf32_on_when_allowed_and_tf32_passes():
    shapes = [conv(3, 8, 16)]

    def wrong_without_tf32(x, weight, bias, shape):
        out = cc.device_convolution(x, weight, bias, shape)
        return out if cc.conv_tf32_enabled() else out * 2

    with cc.cudnn_state(tf32=False), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = cc.guard_convolutions(shapes, "cpu", torch.float32, allow_tf32=True, conv=wrong_without_tf32)
        assert report.action == "tf32" and cc.conv_tf32_enabled()
    assert len(caught) == 1 and "TF32 is now on" in str(caught[0].message)


def test_guard_without_a_model_switches_cudnn_off_globally():
    with cc.cudnn_state(enabled=True), pytest.warns(cc.ConvolutionKernelWarning, match="cuDNN is now off"):
        report = cc.guard_convolutions([conv(3, 8, 16)], "cpu", torch.float16, allow_tf32=True, conv=off_by(2.0))
        assert report.action == "native-global" and not torch.backends.cudnn.enabled


def test_guard_changes_nothing_when_every_shape_passes():
    net = two_layer_net()
    shapes = cc.record_conv_shapes(lambda: two_layer_net("meta")(torch.empty(2, 3, 16, 16, device="meta")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = cc.guard_convolutions(net, "cpu", torch.float32, allow_tf32=False, shapes=shapes,
                                       conv=cc.device_convolution)
    assert report.action == "none" and not report.failing
    assert not any(hasattr(m, "_native_route") for m in net.modules())


def test_guard_is_a_no_op_on_the_cpu():
    from sgm.pipelines.conv_shapes import guard_inference_convolutions, guard_training_convolutions

    net = two_layer_net()
    never = lambda: pytest.fail("shapes listed on the CPU")  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cc.ensure_trustworthy_convolutions(net, "cpu", torch.float32, allow_tf32=False, shapes=never) is None
        assert guard_inference_convolutions(net, "no-such-config.yaml", torch.device("cpu"), torch.float32) is None
        assert guard_training_convolutions(net, {}, "32-true") is None
    assert not any(hasattr(m, "_native_route") for m in net.modules())
    assert torch.backends.cudnn.enabled


@pytest.mark.parametrize("argv, message", [
    (["--config", "configs/no-such.yaml", "--device", "cpu"], "config not found: configs/no-such.yaml"),
    (["--config", "configs/tiny-train-v01.yaml", "--dtype", "fp64", "--device", "cpu"], "unknown --dtype 'fp64'"),
    (["--config", "configs/tiny-train-v01.yaml", "--device", "cuda"], "CUDA is not available"),
])
def test_command_user_errors_exit_2_with_one_line(argv, message, capsys, monkeypatch):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.chdir(ROOT)
    from sgm.cli import run_main

    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: check_gpu_convolutions.main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err and "Traceback" not in err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp32-tf32", "fp32"])
def test_gpu_convolutions_of_the_full_size_models(precision):
    """Every distinct convolution of both full-size inference runs, in each precision; strict fp32
    may fail on some builds (issue 20), then PyTorch's own kernels, the guard's path, must pass."""
    from sgm.pipelines.conv_shapes import inference_conv_shapes, meta_model

    shapes = list(dict.fromkeys(s for name in ("inference-v01.yaml", "inference-v02.yaml")
                                for s in inference_conv_shapes(meta_model(ROOT / "configs" / name))))
    results = cc.check_shapes(shapes, "cuda", precision)
    failing = [r.shape for r in results if not r.passed]
    if precision != "fp32":
        assert not failing, cc.format_table([r for r in results if not r.passed])
    native = cc.check_shapes(failing, "cuda", precision, conv=cc.native_convolution)
    assert all(r.passed for r in native), cc.format_table(native)


def test_listed_shapes_are_kept_on_disk_and_read_back(tmp_path):
    # A run lists its model's convolutions once per machine: the second call reads the file the first
    # wrote, and does not trace the model again.
    from sgm.pipelines.conv_shapes import inference_conv_shapes, listed_once

    config = ROOT / "configs" / "tiny-train-v01.yaml"
    traced = []

    def lister(model):
        traced.append(1)
        return inference_conv_shapes(model)

    first = listed_once(config, "inference", lister)
    (kept,) = (tmp_path / "cache").glob("shapes-*.json")
    second = listed_once(config, "inference", lister)
    assert first == second and len(traced) == 1 and len(first) > 5
    assert listed_once(config, "training", lister) == first and len(traced) == 2  # another kind: listed again


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_pipeline_checks_every_convolution_of_a_model_it_loads_on_the_gpu():
    from sgm.pipelines.conv_shapes import inference_conv_shapes, meta_model
    from sgm.pipelines.hi3d import DEMO_CONFIGS, Hi3DPipeline

    pipe = Hi3DPipeline.from_configs(*DEMO_CONFIGS, device="cuda", use_rembg=False, compile="off")
    pipe.model("orbit")
    checked = {shape for device, _, _, shape in cc._CHECKED if device.startswith("cuda")}
    listed = set(inference_conv_shapes(meta_model(ROOT / DEMO_CONFIGS[0])))
    assert listed and listed <= checked
