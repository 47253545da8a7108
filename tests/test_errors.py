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
    with raises(
        RuntimeError, "local_conv2d: input must be 4-D (N, C_in, H, W) or 3-D without the batch, "
        "got 2-D of shape (8, 8)",
    ):  # fmt: skip
        lc_cuda.local_conv2d(input[0, 0], weight)
    with raises(
        RuntimeError, "local_conv2d: weight must be 6-D (OH, OW, C_out, C_in / groups, KH, KW), "
        "got 4-D",
    ):  # fmt: skip
        lc_cuda.local_conv2d(input, weight[0, 0])
    with raises(
        RuntimeError, "local_conv1d: input must be 3-D (N, C_in, L) or 2-D without the batch"
    ):
        lc_cuda.local_conv1d(input, weight[0, :, :, :, 0])
    with raises(
        RuntimeError, "local_conv1d: weight must be 4-D (OL, C_out, C_in / groups, K), got 6-D"
    ):
        lc_cuda.local_conv1d(input[:, :, 0], weight)
    with raises(RuntimeError, "weight must be 8-D (OD, OH, OW, C_out, C_in / groups, KD, KH, KW)"):
        torch.ops.lc_cuda.local_conv(
            input.unsqueeze(2), weight, None, [1] * 3, [0] * 6, [1] * 3, 1, [1] * 3, "block"
        )


def test_unbatched_input_is_a_batch_of_one():
    input, weight = tensors()
    torch.testing.assert_close(
        lc_cuda.local_conv2d(input[0], weight), lc_cuda.local_conv2d(input[:1], weight)[0]
    )
    layer = lc_cuda.LocallyConnected1d(3, 2, 8, 3)
    torch.testing.assert_close(layer(input[0, :, 0]), layer(input[:1, :, 0])[0])


def test_weight_shape_mismatch_says_expected_shape():
    input, weight = tensors()
    with raises(
        RuntimeError,
        "weight.shape is not valid: got [6, 6, 4, 3, 3, 3], expected "
        "[8, 8, 4, 3, 3, 3] (OH, OW, C_out, C_in / groups, KH, KW) for input of "
        "shape [2, 3, 8, 8] with stride [1, 1], padding [1, 1, 1, 1], dilation [1, 1], groups 1",
    ):
        lc_cuda.local_conv2d(input, weight, padding=1)
    with raises(
        RuntimeError,
        "weight.shape is not valid: got [6, 6, 4, 3, 3, 3], expected [2, 2, 4, 3, 3, 3] "
        "(RH, RW, C_out, C_in / groups, KH, KW)",
    ):
        lc_cuda.local_conv2d(input, weight, share_block=3)


def test_channel_mismatch_names_the_input_channels_the_same_way_everywhere():
    """The function and the layer raise the same exception with the same wording."""
    input, weight = tensors()
    message = "input.shape[1] is not valid: got 2, expected 3 input channels"
    with raises(RuntimeError, message + " (C_in: weight.shape[3])"):
        lc_cuda.local_conv2d(input[:, :2], weight)
    with raises(RuntimeError, message):
        lc_cuda.local_conv2d(input[:, :2].to("meta"), weight.to("meta"))
    with raises(RuntimeError, message + " (in_channels of LocallyConnected2d)"):
        lc_cuda.LocallyConnected2d(3, 4, 8, 3)(input[:, :2])


def test_channels_last_1d_input_is_blamed_on_the_channels():
    """(N, L, C) given to local_conv1d: the hint says channels-last, not a kernel-size error."""
    input = torch.randn(2, 10, 3)
    weight = torch.randn(8, 4, 3, 3)
    with raises(
        RuntimeError,
        "input.shape[1] is not valid: got 10, expected 3 input channels (C_in: weight.shape[2]); "
        "input of shape [2, 10, 3], weight of shape [8, 4, 3, 3]. The input looks channels-last: "
        "pass input.movedim(-1, 1)",
    ):
        lc_cuda.local_conv1d(input, weight)


def test_bias_shape():
    input, weight = tensors()
    with raises(
        RuntimeError,
        "bias.shape is not valid: got [4, 6], expected [4, 6, 6] (C_out, one per location) or "
        "[4] (C_out,)",
    ):
        lc_cuda.local_conv2d(input, weight, torch.randn(4, 6))
    with raises(RuntimeError, "bias.shape is not valid: got [5]"):
        lc_cuda.local_conv2d(input, weight, torch.randn(5))
    with raises(
        RuntimeError,
        "bias.shape is not valid: got [4, 6, 6], expected [4, 2, 2] (C_out, one per weight "
        "region) or [4] (C_out,)",
    ):
        lc_cuda.local_conv2d(input, weight[:2, :2], torch.randn(4, 6, 6), share_block=3)


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
    "arguments, message",
    [
        (([0, 0], [0] * 4, [1, 1]), "stride must be positive, got [0, 0]"),
        (([1, -1], [0] * 4, [1, 1]), "stride must be positive, got [1, -1]"),
        (([1, 1], [0] * 4, [0, 1]), "dilation must be positive, got [0, 1]"),
        (([1, 1], [0, -1, 0, 0], [1, 1]), "padding must be non-negative, got [0, -1, 0, 0]"),
        (
            ([1, 1], [0, 0], [1, 1]),
            "padding must have 4 values (top, bottom, left, right), got [0, 0]",
        ),
    ],
)
def test_geometry_out_of_range(arguments, message):
    """The operator's own checks, for callers that bypass the functions' argument checks."""
    input, weight = tensors()
    with raises(RuntimeError, message):
        torch.ops.lc_cuda.local_conv(input, weight, None, *arguments, 1, [1, 1], "block")


def test_negative_padding_in_the_functions():
    input, weight = tensors()
    with raises(ValueError, "padding must be non-negative, got -1"):
        lc_cuda.local_conv2d(input, weight, padding=-1)
    with raises(ValueError, "padding must be non-negative, got ((0, -1), (0, 0))"):
        lc_cuda.local_conv2d(input, weight, padding=((0, -1), (0, 0)))


def test_kernel_larger_than_padded_input():
    input = torch.randn(1, 2, 4, 9)
    weight = torch.randn(1, 1, 3, 2, 5, 5)
    with raises(
        RuntimeError,
        "kernel height does not fit the padded input: dilated kernel height "
        "5 (dilation * (kernel - 1) + 1) > padded input height 4 "
        "(input 4 + padding 0 + 0)",
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
            "padding must be an int, a sequence, (before, after) pairs, 'valid' or 'same', "
            "got 'full'",
        ),
        (
            dict(stride=(1, 2, 3)),
            TypeError,
            "stride must be an int or a sequence of 2 ints, got (1, 2, 3)",
        ),
        (dict(dilation=1.5), TypeError, "dilation must be an int or a sequence of 2 ints"),
        (dict(padding=True), TypeError, "padding must be an int, 2 ints, 2 (before, after) pairs"),
        (dict(padding=((1, 0), 1)), TypeError, "padding must be an int, 2 ints, 2 (before, after)"),
        (dict(stride=True), TypeError, "stride must be an int or a sequence of 2 ints, got True"),
        (
            dict(share_block=2, share_period=2),
            ValueError,
            "give share_block or share_period, not both",
        ),
        (dict(share_block=0), ValueError, "share_block must be positive, got 0"),
    ],
)
def test_argument_types(kwargs, exception, message):
    input, weight = tensors()
    with raises(exception, message):
        lc_cuda.local_conv2d(input, weight, **kwargs)


def test_numpy_and_tensor_integers_are_ints():
    np = pytest.importorskip("numpy")
    input, weight = tensors()
    expected = lc_cuda.local_conv2d(input, weight[:3, :3], stride=2)
    torch.testing.assert_close(
        lc_cuda.local_conv2d(input, weight[:3, :3], stride=np.int64(2)), expected
    )
    torch.testing.assert_close(
        lc_cuda.local_conv2d(input, weight[:3, :3], stride=(torch.tensor(2), np.int32(2))),
        expected,
    )
    layer = lc_cuda.LocallyConnected2d(3, 4, np.int64(8), np.int64(3), stride=np.int64(2))
    assert layer.output_size == (3, 3)


def test_groups_and_sharing_errors():
    input, weight = tensors()
    with raises(RuntimeError, "groups must divide both C_in and C_out: got groups 2, C_in 3"):
        lc_cuda.local_conv2d(input, torch.randn(6, 6, 4, 1, 3, 3), groups=2)
    with raises(
        RuntimeError,
        "input.shape[1] is not valid: got 4, expected 2 input channels (C_in: weight.shape[3] * "
        "groups)",
    ):
        lc_cuda.local_conv2d(torch.randn(2, 4, 8, 8), torch.randn(6, 6, 4, 1, 3, 3), groups=2)
    with raises(
        ValueError,
        "share_period must be at most the output size along each dimension: got share_period "
        "(7, 2), output size (6, 6)",
    ):
        lc_cuda.LocallyConnected2d(3, 4, 8, 3, share_period=(7, 2))
    with raises(ValueError, "groups must divide in_channels and out_channels: got groups 2"):
        lc_cuda.LocallyConnected2d(3, 4, 8, 3, groups=2)
    with raises(RuntimeError, "share_mode must be 'block' or 'tile', got 'grid'"):
        torch.ops.lc_cuda.local_conv(
            input, weight, None, [1] * 2, [0] * 4, [1] * 2, 1, [1] * 2, "grid"
        )


def test_transpose_errors():
    y = torch.randn(2, 4, 6, 6)
    weight = torch.randn(6, 6, 4, 3, 3, 3)
    with raises(
        RuntimeError,
        "output_padding must be smaller than stride or dilation along each dimension (as in "
        "ConvTranspose), got output_padding [1, 0], stride [1, 1], dilation [1, 1]",
    ):
        lc_cuda.local_conv_transpose2d(y, weight, output_padding=(1, 0))
    with raises(RuntimeError, "input.shape[1] is not valid: got 3, expected 4 input channels"):
        lc_cuda.local_conv_transpose2d(y[:, :3], weight)
    with raises(ValueError, "padding must be an int, 2 ints or 2 (before, after) pairs"):
        lc_cuda.local_conv_transpose2d(y, weight, padding="same")
    with raises(ValueError, "padding_mode must be 'zeros' for a transposed layer"):
        lc_cuda.LocallyConnectedTranspose2d(4, 3, 6, 3, padding_mode="circular")


def test_zero_sized_channels_or_spatial_dims():
    input, weight = tensors()
    with raises(
        RuntimeError,
        "input's channels and sizes (dims 1 to 3) must be at least 1, got input.shape [2, 0, 8, 8]",
    ):
        torch.ops.lc_cuda.local_conv(
            input[:, :0], weight[:, :, :, :0], None, [1] * 2, [0] * 4, [1] * 2, 1, [1] * 2, "block"
        )
    with raises(
        RuntimeError, "weight's channels and kernel sizes (dims 2 to 5) must be at least 1"
    ):
        lc_cuda.local_conv2d(input, weight[:, :, :0])


def test_backward_op_checks_grad_output():
    input, weight = tensors()
    with raises(
        RuntimeError,
        "grad_output.shape is not valid: got [2, 4, 5, 6], expected "
        "[2, 4, 6, 6] (N, C_out, OH, OW), the forward's output",
    ):
        torch.ops.lc_cuda.local_conv_backward(
            torch.randn(2, 4, 5, 6), input, weight, [1, 1], [0] * 4, [1, 1], 1, [1, 1], "block",
            False, [True, True, True],
        )  # fmt: skip


def test_module_arguments_and_input_size():
    with raises(ValueError, "in_channels must be a positive int, got 0"):
        lc_cuda.LocallyConnected2d(0, 4, 8, 3)
    with raises(
        ValueError,
        "kernel width does not fit the padded input: dilated kernel width 9 "
        "(dilation * (kernel - 1) + 1) > padded input width 8",
    ):
        lc_cuda.LocallyConnected2d(3, 4, 8, (3, 9))
    with raises(ValueError, "padding must be an int, a sequence, (before, after) pairs"):
        lc_cuda.LocallyConnected1d(3, 4, 8, 3, padding="full")
    with raises(TypeError, "input_size must be an int or a sequence of 2 ints, got (8, 8, 8)"):
        lc_cuda.LocallyConnected2d(3, 4, (8, 8, 8), 3)
    with raises(ValueError, "padding_mode must be one of ('zeros', 'reflect', 'replicate', "):
        lc_cuda.LocallyConnected2d(3, 4, 8, 3, padding_mode="mirror")
    layer = lc_cuda.LocallyConnected2d(3, 4, (8, 8), 3)
    with raises(
        RuntimeError,
        "LocallyConnected2d was built for input size (8, 8), got input of shape (2, 3, 9, 8)",
    ):
        layer(torch.randn(2, 3, 9, 8))
    with raises(
        RuntimeError,
        "LocallyConnected2d takes channels-first input (N, 3, 8, 8), got (2, 8, 8, 3), which is "
        "channels-last: pass input.movedim(-1, 1)",
    ):
        layer(torch.randn(2, 8, 8, 3))
    with raises(RuntimeError, "LocallyConnected2d takes input of shape (N, 3, 8, 8) or (3, 8, 8)"):
        layer(torch.randn(8, 8))
    layer1d = lc_cuda.LocallyConnected1d(4, 2, 10, 3)
    with raises(RuntimeError, "got (5, 10, 4), which is channels-last: pass input.movedim(-1, 1)"):
        layer1d(torch.randn(5, 10, 4))
    with raises(RuntimeError, "expected 4 input channels (in_channels of LocallyConnected1d)"):
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


def test_a_binary_built_for_another_torch_says_which(tmp_path, monkeypatch):
    """Where the extension cannot load, the hint names the torch it was built against, read from
    the binary itself."""
    from lc_cuda import _extension

    assert _extension.built_against(Path(lc_cuda.__file__).parent) == torch.__version__
    (tmp_path / "_C.cpython-311-x86_64-linux-gnu.so").write_bytes(
        b"\x7fELF...lc_cuda build: torch 1.2.3+other;\x00..."
    )
    monkeypatch.setattr(_extension, "__file__", str(tmp_path / "_extension.py"))
    hint = _extension._missing_extension_hint()
    assert f"built against torch 1.2.3+other, and this is torch {torch.__version__}" in hint
