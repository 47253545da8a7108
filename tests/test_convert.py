"""Weight conversion checked against the real layers: tf-keras LocallyConnected1D/2D, JAX's
lax.conv_general_dilated_local and flax.linen.ConvLocal, all on the CPU.

These tests need the `keras` and `jax` extras (tf-keras, h5py; jax, flax); each one
skips where its framework is absent."""

import os

import numpy as np
import pytest
import torch

import lc_cuda
from lc_cuda import convert

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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
    with pytest.raises(ValueError, match="match neither Keras 'valid' nor Keras 'same'"):
        convert.to_keras(lc_cuda.LocallyConnected2d(2, 2, 6, 3, padding=2))


JAX_CASES = [
    # filter, strides, padding, rhs_dilation, dimension_numbers
    ((3, 2), (1, 2), ((1, 1), (2, 2)), (1, 1), None),
    ((2, 3), (2, 1), ((0, 0), (1, 1)), (2, 1), ("NHWC", "HWIO", "NHWC")),
    ((3, 3), (1, 1), ((1, 1), (1, 1)), (1, 2), ("NCHW", "IOWH", "NCHW")),
    ((3,), (2,), ((1, 1),), (2,), None),
    ((4,), (1,), ((2, 2),), (1,), ("NHC", "HIO", "NHC")),
]


@pytest.mark.parametrize("filter_shape, strides, padding, dilation, dimension_numbers", JAX_CASES)
def test_from_jax_matches_lax(filter_shape, strides, padding, dilation, dimension_numbers):
    jax = pytest.importorskip("jax")
    jax.config.update("jax_platforms", "cpu")
    from jax import lax

    dims = len(filter_shape)
    c_in, c_out, size = 3, 4, (9, 8)[:dims]
    lhs_spec, rhs_spec = (dimension_numbers or ("NC" + "HW"[:dims], "OI" + "HW"[:dims]))[:2]
    x = np.random.default_rng(1).standard_normal((2, c_in, *size)).astype(np.float32)
    out_size = tuple(
        (n + sum(p) - d * (k - 1) - 1) // s + 1
        for n, p, d, k, s in zip(size, padding, dilation, filter_shape, strides)
    )
    weight = torch.randn(*out_size, c_out, c_in, *filter_shape)
    rhs = convert.to_jax(weight, dimension_numbers)
    spatial = "HW"[:dims]
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
    function = lc_cuda.local_conv2d if dims == 2 else lc_cuda.local_conv1d
    symmetric = tuple(p[0] for p in padding)
    assert all(p[0] == p[1] for p in padding)
    got = function(torch.from_numpy(x), weight, None, strides, symmetric, dilation)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        convert.from_jax(rhs, lax_order(filter_shape), dimension_numbers), weight, rtol=0, atol=0
    )


@pytest.mark.parametrize("dims", [1, 2])
def test_from_flax_matches_conv_local(dims):
    jax = pytest.importorskip("jax")
    jax.config.update("jax_platforms", "cpu")
    nn = pytest.importorskip("flax.linen")

    kernel_size, strides, size = ((3, 2), (2, 1), (9, 7)) if dims == 2 else ((3,), (2,), (11,))
    layer = nn.ConvLocal(features=4, kernel_size=kernel_size, strides=strides, padding="VALID")
    x = np.random.default_rng(2).standard_normal((2, *size, 3)).astype(np.float32)
    params = layer.init(jax.random.PRNGKey(0), x)["params"]
    params = {**params, "bias": jax.random.normal(jax.random.PRNGKey(1), params["bias"].shape)}
    expected = torch.movedim(torch.tensor(np.asarray(layer.apply({"params": params}, x))), -1, 1)
    weight, bias = convert.from_flax(params["kernel"], params["bias"], kernel_size)
    function = lc_cuda.local_conv2d if dims == 2 else lc_cuda.local_conv1d
    got = function(torch.movedim(torch.from_numpy(x), -1, 1), weight, bias, strides)
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
