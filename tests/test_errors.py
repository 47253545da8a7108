"""Bad input gets a clear error naming the argument, with got/expected values."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lc_cuda


def tensors(n=2, c_in=3, h=8, w=8, c_out=4, k=3, out=6, **kwargs):
    return (
        torch.randn(n, c_in, h, w, **kwargs),
        torch.randn(out, out, c_out, c_in, k, k, **kwargs),
    )


def raises(exception, message):
    return pytest.raises(exception, match=re.escape(message))


def test_wrong_ndim():
    input, weight = tensors()
    with raises(RuntimeError, "input must be 4-D (N, C_in, H, W), got 3-D of shape [3, 8, 8]"):
        lc_cuda.local_conv2d(input[0], weight)
    with raises(RuntimeError, "weight must be 6-D (OH, OW, C_out, C_in, KH, KW), got 4-D"):
        lc_cuda.local_conv2d(input, weight[0, 0])
    with raises(ValueError, "input must be 3-D (N, C_in, L), got 4-D"):
        lc_cuda.local_conv1d(input, weight)
    with raises(ValueError, "weight must be 4-D (OL, C_out, C_in, K), got 6-D"):
        lc_cuda.local_conv1d(input[:, :, 0], weight)


def test_weight_shape_mismatch_says_expected_shape():
    input, weight = tensors()
    with raises(
        RuntimeError,
        "weight.shape is not valid: got [6, 6, 4, 3, 3, 3], expected "
        "[8, 8, 4, 3, 3, 3] (OH, OW, C_out, C_in, KH, KW) for input of "
        "shape [2, 3, 8, 8] with stride [1, 1], padding [1, 1]",
    ):
        lc_cuda.local_conv2d(input, weight, padding=1)


def test_channel_mismatch_names_the_input_channels():
    input, weight = tensors()
    message = (
        "input.shape[1] is not valid: got 2, expected 3 input channels (C_in, weight.shape[3])"
    )
    with raises(RuntimeError, message):
        lc_cuda.local_conv2d(input[:, :2], weight)
    with raises(RuntimeError, message):
        lc_cuda.local_conv2d(input[:, :2].to("meta"), weight.to("meta"))


def test_bias_shape():
    input, weight = tensors()
    with raises(
        RuntimeError,
        "bias.shape is not valid: got [4, 6], expected [4, 6, 6] (C_out, OH, OW) or [4] (C_out,)",
    ):
        lc_cuda.local_conv2d(input, weight, torch.randn(4, 6))
    with raises(RuntimeError, "bias.shape is not valid: got [5]"):
        lc_cuda.local_conv2d(input, weight, torch.randn(5))
    with raises(ValueError, "bias must be (C_out, OL) or (C_out,), got 3-D"):
        lc_cuda.local_conv1d(input[:, :, 0], weight[0, :, :, :, 0], torch.randn(4, 1, 6))


def test_dtype_mismatch_and_non_floating():
    input, weight = tensors()
    with raises(RuntimeError, "weight.dtype must match input.dtype: got Double, expected Float"):
        lc_cuda.local_conv2d(input, weight.double())
    with raises(RuntimeError, "bias.dtype must match input.dtype: got Half, expected Float"):
        lc_cuda.local_conv2d(input, weight, torch.randn(4, dtype=torch.half))
    with raises(
        RuntimeError,
        "input must be a floating-point tensor (float64, float32, float16 "
        "or bfloat16), got dtype Long",
    ):
        lc_cuda.local_conv2d(input.long(), weight.long())
    with raises(RuntimeError, "weight must be a floating-point tensor"):
        lc_cuda.local_conv2d(input, weight.int())


def test_device_mismatch_with_meta_tensors():
    input, weight = tensors()
    with raises(
        RuntimeError,
        "weight dtype/device must match input and be floating-point: got torch.float32 on meta, "
        "expected torch.float32 on cpu",
    ):
        lc_cuda.local_conv2d(input, weight.to("meta"))


@pytest.mark.cuda
def test_device_mismatch_cuda():
    input, weight = tensors()
    with raises(RuntimeError, "weight.device must match input.device: got cuda:0, expected cpu"):
        lc_cuda.local_conv2d(input, weight.cuda())
    with raises(RuntimeError, "bias.device must match input.device: got cpu, expected cuda:0"):
        lc_cuda.local_conv2d(input.cuda(), weight.cuda(), torch.randn(4))


def test_meta_tensors_are_checked_like_real_ones():
    input, weight = tensors(device="meta")
    assert lc_cuda.local_conv2d(input, weight).shape == (2, 4, 6, 6)
    with raises(
        RuntimeError,
        "weight.shape is not valid: got [6, 6, 4, 3, 3, 3], expected [8, 8, 4, 3, 3, 3]",
    ):
        lc_cuda.local_conv2d(input, weight, padding=1)
    with raises(RuntimeError, "bias.shape is not valid: got [4, 6]"):
        lc_cuda.local_conv2d(input, weight, torch.randn(4, 6, device="meta"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(stride=0), "stride must be positive, got [0, 0]"),
        (dict(stride=(1, -1)), "stride must be positive, got [1, -1]"),
        (dict(dilation=(0, 1)), "dilation must be positive, got [0, 1]"),
        (dict(padding=-1), "padding must be non-negative, got [-1, -1]"),
    ],
)
def test_geometry_out_of_range(kwargs, message):
    input, weight = tensors()
    with raises(RuntimeError, message):
        lc_cuda.local_conv2d(input, weight, **kwargs)


def test_kernel_larger_than_padded_input():
    input = torch.randn(1, 2, 4, 9)
    weight = torch.randn(1, 1, 3, 2, 5, 5)
    with raises(
        RuntimeError,
        "kernel height does not fit the padded input: dilated kernel height "
        "5 (dilation * (kernel - 1) + 1) > padded input height 4 "
        "(input 4 + 2 * padding 0)",
    ):
        lc_cuda.local_conv2d(input, weight)
    with raises(
        RuntimeError, "dilated kernel width 9 (dilation * (kernel - 1) + 1) > padded input width 8"
    ):
        lc_cuda.local_conv2d(torch.randn(1, 2, 9, 8), weight, dilation=(1, 2))


def test_same_padding_needs_stride_one():
    input, weight = tensors()
    with raises(ValueError, "padding='same' needs stride 1, got stride=(2, 1)"):
        lc_cuda.local_conv2d(input, weight, stride=(2, 1), padding="same")
    with raises(ValueError, "padding='same' needs stride 1, got stride=(2, 2)"):
        lc_cuda.LocallyConnected2d(3, 4, 8, 3, stride=2, padding="same")


@pytest.mark.parametrize(
    "kwargs, exception, message",
    [
        (
            dict(padding="full"),
            ValueError,
            "padding must be an int, a pair, 'valid' or 'same', got 'full'",
        ),
        (
            dict(stride=(1, 2, 3)),
            TypeError,
            "stride must be an int or a sequence of 2 ints, got (1, 2, 3)",
        ),
        (dict(dilation=1.5), TypeError, "dilation must be an int or a sequence of 2 ints"),
        (dict(padding=True), TypeError, "padding must be an int or a sequence of 2 ints"),
    ],
)
def test_argument_types(kwargs, exception, message):
    input, weight = tensors()
    with raises(exception, message):
        lc_cuda.local_conv2d(input, weight, **kwargs)


def test_zero_sized_channels_or_spatial_dims():
    input, weight = tensors()
    with raises(
        RuntimeError,
        "input C_in, H and W (dims 1, 2, 3) must be at least 1, got input.shape [2, 0, 8, 8]",
    ):
        lc_cuda.local_conv2d(input[:, :0], weight[:, :, :, :0])
    with raises(RuntimeError, "weight C_out, KH and KW (dims 2, 4, 5) must be at least 1"):
        lc_cuda.local_conv2d(input, weight[:, :, :0])


def test_backward_op_checks_grad_output():
    input, weight = tensors()
    with raises(
        RuntimeError,
        "grad_output.shape is not valid: got [2, 4, 5, 6], expected "
        "[2, 4, 6, 6] (N, C_out, OH, OW)",
    ):
        torch.ops.lc_cuda.local_conv2d_backward(
            torch.randn(2, 4, 5, 6),
            input,
            weight,
            [1, 1],
            [0, 0],
            [1, 1],
            False,
            [True, True, True],
        )


def test_module_arguments_and_input_size():
    with raises(ValueError, "in_channels must be a positive int, got 0"):
        lc_cuda.LocallyConnected2d(0, 4, 8, 3)
    with raises(
        ValueError,
        "kernel does not fit the padded input in spatial dim 1: dilated "
        "kernel 9 (dilation * (kernel - 1) + 1) > padded input 8",
    ):
        lc_cuda.LocallyConnected2d(3, 4, 8, (3, 9))
    with raises(ValueError, "padding must be an int, 'valid' or 'same', got 'full'"):
        lc_cuda.LocallyConnected1d(3, 4, 8, 3, padding="full")
    with raises(TypeError, "input_size must be an int or a sequence of 2 ints, got (8, 8, 8)"):
        lc_cuda.LocallyConnected2d(3, 4, (8, 8, 8), 3)
    layer = lc_cuda.LocallyConnected2d(3, 4, (8, 8), 3)
    with raises(
        ValueError,
        "LocallyConnected2d was built for input size (8, 8), got input of shape (2, 3, 9, 8)",
    ):
        layer(torch.randn(2, 3, 9, 8))
    with raises(
        ValueError,
        "LocallyConnected2d expected 3 input channels (in_channels), got input of shape "
        "(2, 2, 8, 8)",
    ):
        layer(torch.randn(2, 2, 8, 8))
    with raises(
        ValueError,
        "LocallyConnected2d takes channels-first input (N, 3, 8, 8), got (2, 8, 8, 3), which is "
        "channels-last: pass input.movedim(-1, 1)",
    ):
        layer(torch.randn(2, 8, 8, 3))
    layer1d = lc_cuda.LocallyConnected1d(4, 2, 10, 3)
    with raises(ValueError, "got (5, 10, 4), which is channels-last: pass input.movedim(-1, 1)"):
        layer1d(torch.randn(5, 10, 4))
    with raises(ValueError, "LocallyConnected1d expected 4 input channels (in_channels)"):
        layer1d(torch.randn(5, 3, 10))


def test_import_from_a_source_folder_without_a_build_points_to_the_installed_package(tmp_path):
    """`python -c "import lc_cuda"` in a clone's root, after `pip install .`, finds the source
    folder first: the hint says so, instead of advising a rebuild."""
    package = Path(lc_cuda.__file__).parent
    shutil.copytree(package, tmp_path / "lc_cuda", ignore=shutil.ignore_patterns("_C*", "__py*"))
    (tmp_path / "setup.py").write_text("")
    # -S: no .pth files, so that an editable install's import hook cannot supply lc_cuda._C;
    # the installed packages stay reachable through PYTHONPATH.
    site_folders = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    result = subprocess.run(
        [sys.executable, "-S", "-c", "import lc_cuda"],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(site_folders)),
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert f"Python found the source folder {tmp_path / 'lc_cuda'}" in result.stderr
    assert "Run from another folder" in result.stderr
