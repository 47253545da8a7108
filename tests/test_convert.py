"""Weight conversion checked against the real layers: tf-keras LocallyConnected1D/2D, neurite's
TensorFlow LocallyConnected3D, JAX's lax.conv_general_dilated_local and flax.linen.ConvLocal
(1D to 3D), all on the CPU.

These tests need the `keras` and `jax` extras (tf-keras, h5py; jax, flax) and, for neurite's
layer, neurite 0.1 or 0.2 (the releases before its PyTorch port); each one skips where its
framework is absent. neurite's documented kernel layouts are checked without it, against a
float64 loop written from them."""

import importlib.metadata
import importlib.util
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lc_cuda
from lc_cuda import convert

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

NEURITE_LAYER = Path(__file__).resolve().parent / "neurite_layer.py"


def keras_layer(dims, **kwargs):
    tf_keras = pytest.importorskip("tf_keras")
    layer_type = {1: tf_keras.layers.LocallyConnected1D, 2: tf_keras.layers.LocallyConnected2D}
    return layer_type[dims](**kwargs)


def channels_first(array, data_format):
    """A Keras input or output as lc_cuda's (N, C, *spatial)."""
    array = torch.tensor(np.asarray(array))
    return array if data_format == "channels_first" else torch.movedim(array, -1, 1)


KERAS_CASES = [
    # dims, spatial input, kernel, strides, padding, implementation
    (2, (9, 7), (3, 2), (2, 1), "valid", 1),
    (2, (8, 8), (3, 3), (1, 1), "valid", 2),
    (2, (9, 7), (3, 3), (1, 1), "same", 2),
    (2, (9, 8), (2, 4), (1, 1), "same", 2),
    (2, (10, 7), (3, 2), (2, 3), "same", 2),
    (1, (11,), (3,), (2,), "valid", 1),
    (1, (10,), (4,), (1,), "same", 2),
    (1, (12,), (3,), (3,), "same", 2),
]


@pytest.mark.parametrize("dims, size, kernel, strides, padding, implementation", KERAS_CASES)
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("use_bias", [True, False])
def test_from_keras_matches_keras_layer(
    dims, size, kernel, strides, padding, implementation, data_format, use_bias
):
    c_in, c_out = 3, 4
    layer = keras_layer(
        dims,
        filters=c_out,
        kernel_size=kernel,
        strides=strides,
        padding=padding,
        data_format=data_format,
        implementation=implementation,
        use_bias=use_bias,
        kernel_initializer="random_normal",
        bias_initializer="random_normal",
    )
    input_shape = (*size, c_in) if data_format == "channels_last" else (c_in, *size)
    x = np.random.default_rng(0).standard_normal((2, *input_shape)).astype(np.float32)
    expected = channels_first(layer(x), data_format)
    weights = layer.get_weights()
    module = convert.from_keras(
        weights[0],
        weights[1] if use_bias else None,
        input_shape,
        kernel,
        strides,
        padding,
        data_format,
        implementation,
    )
    torch.testing.assert_close(
        module(channels_first(x, data_format)), expected, rtol=1e-5, atol=1e-5
    )
    # And back: the same kernel (for implementation 2, on Keras' own mask of used entries, and
    # zero elsewhere) and bias, so that a Keras layer given them computes the same.
    kernel_back, bias_back = convert.to_keras(module, data_format, implementation)
    mask = 1 if implementation == 1 else np.asarray(layer.kernel_mask)
    np.testing.assert_array_equal(kernel_back, weights[0] * mask)
    if use_bias:
        np.testing.assert_array_equal(bias_back, weights[1])
    layer.set_weights([kernel_back, bias_back] if use_bias else [kernel_back])
    torch.testing.assert_close(
        channels_first(layer(x), data_format), expected, rtol=1e-5, atol=1e-5
    )


def test_keras_round_trip_from_lc_cuda_layer():
    layer = lc_cuda.LocallyConnected2d(3, 5, (7, 6), (3, 2), stride=(2, 1), shared_bias=True)
    kernel, bias = convert.to_keras(layer, "channels_last", 1)
    back = convert.from_keras(kernel, bias, (7, 6, 3), (3, 2), (2, 1), "valid", "channels_last")
    torch.testing.assert_close(back.weight, layer.weight, rtol=0, atol=0)
    per_location = layer.bias.view(5, 1, 1).expand(5, *layer.output_size)
    torch.testing.assert_close(back.bias, per_location, rtol=0, atol=0)


def test_keras_errors():
    kernel = np.zeros((4 * 5, 3 * 2 * 3, 5), np.float32)
    with pytest.raises(ValueError, match="implementation must be 1 or 2, got 3"):
        convert.from_keras(kernel, None, (6, 6, 3), (3, 2), 1, "valid", "channels_last", 3)
    with pytest.raises(
        ValueError,
        match=r"kernel.shape is not valid: got \(20, 18, 5\), expected "
        r"\(15, 18, 5\)",
    ):
        convert.from_keras(kernel, None, (5, 6, 3), (3, 2), 1, "valid", "channels_last", 1)
    with pytest.raises(ValueError, match="implementation 1 supports padding='valid' only"):
        convert.from_keras(kernel, None, (6, 6, 3), (3, 2), 1, "same", "channels_last", 1)
    with pytest.raises(ValueError, match="data_format must be 'channels_last' or"):
        convert.from_keras(kernel, None, (6, 6, 3), (3, 2), 1, "valid", "NHWC", 1)
    with pytest.raises(ValueError, match="Keras has no dilation"):
        convert.to_keras(lc_cuda.LocallyConnected2d(2, 2, 6, 3, dilation=2))
    with pytest.raises(ValueError, match="Keras has a filter bank per position, one group"):
        convert.to_keras(lc_cuda.LocallyConnected3d(2, 2, 6, 3, groups=2))
    with pytest.raises(ValueError, match=r"got groups=1, share_block=\(2,\), share_period=None"):
        convert.to_keras(lc_cuda.LocallyConnected1d(2, 2, 6, 3, share_block=2))
    with pytest.raises(ValueError, match="match neither Keras 'valid' nor Keras 'same'"):
        convert.to_keras(lc_cuda.LocallyConnected2d(2, 2, 6, 3, padding=2))


NEURITE_CASES = [
    # neurite LocallyConnected3D arguments; input_shape without the batch, in data_format
    dict(input_shape=(6, 7, 5, 3), kernel_size=(3, 2, 2), strides=(1, 2, 1), padding="valid",
         data_format="channels_last", implementation=1, use_bias=True),
    dict(input_shape=(3, 6, 5, 4), kernel_size=(2, 3, 2), strides=(2, 1, 1), padding="valid",
         data_format="channels_first", implementation=1, use_bias=True),
    dict(input_shape=(5, 6, 4, 2), kernel_size=(3, 3, 2), strides=(1, 1, 2), padding="valid",
         data_format="channels_last", implementation=2, use_bias=False),
    dict(input_shape=(5, 6, 4, 2), kernel_size=(3, 2, 3), strides=(1, 2, 1), padding="same",
         data_format="channels_last", implementation=2, use_bias=True),
    dict(input_shape=(2, 5, 6, 4), kernel_size=(3, 3, 3), strides=1, padding="same",
         data_format="channels_first", implementation=2, use_bias=True),
]  # fmt: skip
for _case in NEURITE_CASES:
    _case["filters"] = 4


def neurite_geometry(case):
    """(input size, C_in, kernel, strides, output size, window offset) per neurite's docstrings:
    'valid' windows start at position * stride, 'same' ones kernel // 2 earlier, and there are
    ceil(input / stride) of them."""
    channels_last = case["data_format"] == "channels_last"
    shape = case["input_shape"]
    in_size, c_in = (shape[:3], shape[3]) if channels_last else (shape[1:], shape[0])
    kernel = case["kernel_size"]
    strides = case["strides"] if isinstance(case["strides"], tuple) else (case["strides"],) * 3
    if case["padding"] == "valid":
        out_size = tuple((n - k) // s + 1 for n, k, s in zip(in_size, kernel, strides))
        offset = (0, 0, 0)
    else:
        out_size = tuple(-(-n // s) for n, s in zip(in_size, strides))
        offset = tuple(k // 2 for k in kernel)
    return in_size, c_in, kernel, strides, out_size, offset


def neurite_kernel_shape(case):
    in_size, c_in, kernel, _, out_size, _ = neurite_geometry(case)
    filters = case["filters"]
    if case["implementation"] == 1:  # (output_items, feature_dim, channels_out)
        return (int(np.prod(out_size)), int(np.prod(kernel)) * c_in, filters)
    if case["data_format"] == "channels_last":  # the dense masked kernel
        return (*in_size, c_in, *out_size, filters)
    return (c_in, *in_size, filters, *out_size)


def neurite_reference(x, kernel, bias, case):
    """neurite's LocallyConnected3D written from its docstrings, as float64 loops over output
    positions and kernel offsets: implementation 1 reads a patch flattened as (*kernel, C_in)
    (channels_last) or (C_in, *kernel) (channels_first) at row prod(out)-index of the kernel;
    implementation 2 the dense kernel's entry (input position, output position). The bias
    (*out, filters) is added to a channels_first output by a plain reshape (K.bias_add).
    Returns the channels-first output and the mask of the dense kernel entries used."""
    in_size, c_in, kernel_size, strides, out_size, offset = neurite_geometry(case)
    channels_last = case["data_format"] == "channels_last"
    x = np.asarray(x, np.float64)
    x = x if channels_last else np.moveaxis(x, 1, -1)  # (N, *in, C_in)
    output = np.zeros((x.shape[0], *out_size, case["filters"]))
    used = np.zeros(kernel.shape, bool)
    for out_position in itertools.product(*map(range, out_size)):
        for tap in itertools.product(*map(range, kernel_size)):
            in_position = tuple(
                o * s + t - b for o, s, t, b in zip(out_position, strides, tap, offset)
            )
            if not all(0 <= i < n for i, n in zip(in_position, in_size)):
                continue  # a zero of the padding
            if case["implementation"] == 1:
                row = np.ravel_multi_index(out_position, out_size)
                patch = (*kernel_size, c_in) if channels_last else (c_in, *kernel_size)
                columns = [
                    np.ravel_multi_index((*tap, c) if channels_last else (c, *tap), patch)
                    for c in range(c_in)
                ]
                index = (row, columns)
            elif channels_last:
                index = (*in_position, slice(None), *out_position, slice(None))
            else:
                index = (slice(None), *in_position, slice(None), *out_position)
            used[index] = True
            output[(slice(None), *out_position)] += x[(slice(None), *in_position)] @ kernel[index]
    output = np.moveaxis(output, -1, 1)  # (N, filters, *out)
    if bias is not None:
        output += np.moveaxis(bias, -1, 0) if channels_last else bias.reshape(output.shape[1:])
    return output, used


def neurite_module(kernel, bias, case):
    return convert.from_keras(
        kernel,
        bias,
        case["input_shape"],
        case["kernel_size"],
        case["strides"],
        case["padding"],
        case["data_format"],
        case["implementation"],
    )


@pytest.mark.parametrize("case", NEURITE_CASES, ids=range(len(NEURITE_CASES)))
def test_from_keras_3d_follows_neurites_documented_layout(case):
    rng = np.random.default_rng(3)
    kernel = rng.standard_normal(neurite_kernel_shape(case))
    _, _, _, _, out_size, _ = neurite_geometry(case)
    bias = rng.standard_normal((*out_size, case["filters"])) if case["use_bias"] else None
    x = rng.standard_normal((2, *case["input_shape"]))
    expected, used = neurite_reference(x, kernel, bias, case)
    module = neurite_module(kernel, bias, case)
    got = module(channels_first(x, case["data_format"]))
    torch.testing.assert_close(got, torch.from_numpy(expected), rtol=1e-12, atol=1e-12)
    kernel_back, bias_back = convert.to_keras(module, case["data_format"], case["implementation"])
    np.testing.assert_array_equal(kernel_back, np.where(used, kernel, 0))
    if bias is not None:
        np.testing.assert_array_equal(bias_back, bias)


@pytest.fixture(scope="module")
def neurite_results(tmp_path_factory):
    """neurite's own layer run on NEURITE_CASES, in a process of its own (neurite_layer.py)."""
    if importlib.util.find_spec("neurite") is None:
        pytest.skip("needs neurite 0.1 or 0.2, its TensorFlow releases: pip install neurite==0.2")
    version = importlib.metadata.version("neurite")
    if tuple(int(part) for part in version.split(".")[:2]) >= (0, 3):
        pytest.skip(f"neurite {version} is the PyTorch port, without LocallyConnected3D")
    pytest.importorskip("tf_keras")
    folder = tmp_path_factory.mktemp("neurite")
    (folder / "cases.json").write_text(json.dumps(NEURITE_CASES))
    run = subprocess.run(
        [sys.executable, str(NEURITE_LAYER), "cases.json", "results.npz"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return dict(np.load(folder / "results.npz"))


@pytest.mark.parametrize("index", range(len(NEURITE_CASES)))
def test_from_keras_matches_neurites_layer(neurite_results, index):
    case = NEURITE_CASES[index]
    result = {key.split("/")[1]: value for key, value in neurite_results.items()
              if key.startswith(f"{index}/")}  # fmt: skip
    module = neurite_module(result["kernel"], result.get("bias"), case)
    expected = channels_first(result["output"], case["data_format"])
    got = module(channels_first(result["x"], case["data_format"]))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    kernel_back, bias_back = convert.to_keras(module, case["data_format"], case["implementation"])
    mask = result.get("kernel_mask", 1)
    np.testing.assert_array_equal(kernel_back, result["kernel"] * mask)
    if case["use_bias"]:
        np.testing.assert_array_equal(bias_back, result["bias"])


JAX_CASES = [
    # filter, strides, padding, rhs_dilation, dimension_numbers
    ((3, 2), (1, 2), ((1, 1), (2, 2)), (1, 1), None),
    ((2, 3), (2, 1), ((0, 0), (1, 1)), (2, 1), ("NHWC", "HWIO", "NHWC")),
    ((3, 3), (1, 1), ((1, 1), (1, 1)), (1, 2), ("NCHW", "IOWH", "NCHW")),
    ((3,), (2,), ((1, 1),), (2,), None),
    ((4,), (1,), ((2, 2),), (1,), ("NHC", "HIO", "NHC")),
    # 3D, a cross-check of lc_cuda's 3D operator; padding may differ before and after
    ((3, 2, 2), (1, 2, 1), ((1, 1), (0, 1), (2, 0)), (1, 1, 2), None),
    ((2, 3, 2), (2, 1, 1), ((0, 0), (1, 1), (1, 0)), (2, 1, 1), ("NDHWC", "DHWIO", "NDHWC")),
    ((3, 2, 2), (1, 1, 2), ((1, 1), (1, 1), (0, 0)), (1, 2, 1), ("NCDHW", "OIWDH", "NCDHW")),
]
SPATIAL_LETTERS = {1: "H", 2: "HW", 3: "DHW"}
LOCAL_CONV = {1: lc_cuda.local_conv1d, 2: lc_cuda.local_conv2d, 3: lc_cuda.local_conv3d}


@pytest.mark.parametrize("filter_shape, strides, padding, dilation, dimension_numbers", JAX_CASES)
def test_from_jax_matches_lax(filter_shape, strides, padding, dilation, dimension_numbers):
    jax = pytest.importorskip("jax")
    jax.config.update("jax_platforms", "cpu")
    from jax import lax

    dims = len(filter_shape)
    c_in, c_out, size = 3, 4, (9, 8, 7)[:dims]
    spatial = SPATIAL_LETTERS[dims]
    lhs_spec, rhs_spec = (dimension_numbers or ("NC" + spatial, "OI" + spatial))[:2]
    x = np.random.default_rng(1).standard_normal((2, c_in, *size)).astype(np.float32)
    out_size = tuple(
        (n + sum(p) - d * (k - 1) - 1) // s + 1
        for n, p, d, k, s in zip(size, padding, dilation, filter_shape, strides)
    )
    weight = torch.randn(*out_size, c_out, c_in, *filter_shape)
    rhs = convert.to_jax(weight, dimension_numbers)
    sizes = dict(zip("OI" + spatial, (c_out, c_in * int(np.prod(filter_shape)), *out_size)))
    assert rhs.shape == tuple(sizes[c] for c in rhs_spec)
    lhs = x if lhs_spec.startswith("NC") else np.moveaxis(x, 1, -1)
    # lax takes the geometry in the rhs spec's spatial order; the case lists it in input order.
    rhs_order = [spatial.index(c) for c in rhs_spec if c not in "OI"]
    lax_order = lambda values: tuple(values[i] for i in rhs_order)  # noqa: E731
    expected = lax.conv_general_dilated_local(
        lhs,
        rhs,
        lax_order(strides),
        lax_order(padding),
        lax_order(filter_shape),
        rhs_dilation=lax_order(dilation),
        dimension_numbers=dimension_numbers,
    )
    expected = torch.tensor(np.asarray(expected))
    if not lhs_spec.startswith("NC"):
        expected = torch.movedim(expected, -1, 1)
    got = LOCAL_CONV[dims](torch.from_numpy(x), weight, None, strides, padding, dilation)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        convert.from_jax(rhs, lax_order(filter_shape), dimension_numbers), weight, rtol=0, atol=0
    )


FLAX_CASES = {  # kernel_size, strides, input size
    1: ((3,), (2,), (11,)),
    2: ((3, 2), (2, 1), (9, 7)),
    3: ((2, 3, 2), (1, 2, 1), (6, 7, 5)),
}


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_from_flax_matches_conv_local(dims):
    jax = pytest.importorskip("jax")
    jax.config.update("jax_platforms", "cpu")
    nn = pytest.importorskip("flax.linen")

    kernel_size, strides, size = FLAX_CASES[dims]
    layer = nn.ConvLocal(features=4, kernel_size=kernel_size, strides=strides, padding="VALID")
    x = np.random.default_rng(2).standard_normal((2, *size, 3)).astype(np.float32)
    params = layer.init(jax.random.PRNGKey(0), x)["params"]
    params = {**params, "bias": jax.random.normal(jax.random.PRNGKey(1), params["bias"].shape)}
    expected = torch.movedim(torch.tensor(np.asarray(layer.apply({"params": params}, x))), -1, 1)
    weight, bias = convert.from_flax(params["kernel"], params["bias"], kernel_size)
    got = LOCAL_CONV[dims](torch.movedim(torch.from_numpy(x), -1, 1), weight, bias, strides)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    if dims == 1:  # a 1D kernel's size follows from in_channels alone
        by_channels = convert.from_flax(params["kernel"], params["bias"], in_channels=3)
        torch.testing.assert_close(by_channels[0], weight, rtol=0, atol=0)
    kernel_back, bias_back = convert.to_flax(weight, bias)
    np.testing.assert_array_equal(kernel_back, np.asarray(params["kernel"]))
    np.testing.assert_array_equal(bias_back, np.asarray(params["bias"]))


def test_from_flax_needs_the_kernel_size_where_the_kernel_does_not_tell():
    kernel = np.zeros((4, 3, 3 * 6, 5), np.float32)  # 6 taps per channel: no square kernel
    with pytest.raises(ValueError, match="6 taps per channel make no square kernel"):
        convert.from_flax(kernel, None, in_channels=3)
    with pytest.raises(ValueError, match="from_flax needs kernel_size, or in_channels"):
        convert.from_flax(kernel, None)
    square = np.zeros((4, 3, 2 * 9, 5), np.float32)
    assert convert.from_flax(square, None, in_channels=2)[0].shape == (4, 3, 5, 2, 3, 3)
