"""LocallyConnected1d / LocallyConnected2d: shapes, init, state_dict, from_conv2d, repr."""

import math

import pytest
import torch
from conftest import DEVICES
from torch import nn

import lc_cuda


def test_shapes_and_output_size():
    layer = lc_cuda.LocallyConnected2d(
        3, 8, (32, 30), (5, 3), stride=(2, 1), padding=(1, 0), dilation=(1, 2)
    )
    assert layer.output_size == (15, 26)
    assert layer.weight.shape == (15, 26, 8, 3, 5, 3)
    assert layer.bias.shape == (8, 15, 26)
    assert layer(torch.randn(2, 3, 32, 30)).shape == (2, 8, 15, 26)
    shared = lc_cuda.LocallyConnected2d(3, 8, 10, 3, shared_bias=True)
    assert shared.bias.shape == (8,)
    assert lc_cuda.LocallyConnected2d(3, 8, 10, 3, bias=False).bias is None
    same = lc_cuda.LocallyConnected2d(3, 8, (9, 8), 4, padding="same")
    assert same.output_size == (9, 8)
    assert same(torch.randn(1, 3, 9, 8)).shape == (1, 8, 9, 8)


def test_1d_shapes():
    layer = lc_cuda.LocallyConnected1d(4, 6, 20, 5, stride=3, padding=2)
    assert layer.output_size == (7,)
    assert layer.weight.shape == (7, 6, 4, 5)
    assert layer.bias.shape == (6, 7)
    assert layer(torch.randn(2, 4, 20)).shape == (2, 6, 7)


def test_init_matches_conv_bounds_per_location():
    torch.manual_seed(0)
    layer = lc_cuda.LocallyConnected2d(4, 16, 12, 3)
    bound = 1 / math.sqrt(4 * 3 * 3)
    for tensor in (layer.weight, layer.bias):
        assert tensor.abs().max() <= bound
        # uniform on [-bound, bound]: the largest draw of thousands is close to the bound
        assert tensor.abs().max() > 0.95 * bound
        assert abs(tensor.std().item() - bound / math.sqrt(3)) < 0.05 * bound
    # The same bound as nn.Conv2d's default init of a filter bank of that fan-in.
    conv = nn.Conv2d(4, 16, 3)
    assert conv.weight.abs().max() <= bound
    assert conv.weight.abs().max() > 0.9 * bound


@pytest.mark.parametrize("layer_type", ["2d", "1d"])
def test_state_dict_round_trip(layer_type):
    if layer_type == "2d":
        make = lambda: lc_cuda.LocallyConnected2d(3, 4, (7, 6), 3, padding=1)  # noqa: E731
        input = torch.randn(2, 3, 7, 6)
    else:
        make = lambda: lc_cuda.LocallyConnected1d(3, 4, 9, 3, padding=1)  # noqa: E731
        input = torch.randn(2, 3, 9)
    source, target = make(), make()
    assert not torch.equal(source(input), target(input))
    state = source.state_dict()
    assert set(state) == {"weight", "bias"}
    target.load_state_dict(state)
    torch.testing.assert_close(target(input), source(input), rtol=0, atol=0)


def test_state_dict_of_another_input_size_is_refused():
    small = lc_cuda.LocallyConnected2d(3, 4, (7, 6), 3)
    with pytest.raises(RuntimeError, match="size mismatch for weight"):
        lc_cuda.LocallyConnected2d(3, 4, (8, 6), 3).load_state_dict(small.state_dict())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "conv_args",
    [
        dict(kernel_size=3),
        dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
        dict(kernel_size=4, padding="same"),
        dict(kernel_size=3, padding="valid", bias=False),
        dict(kernel_size=3, padding=1, groups=2),
    ],
    ids=["plain", "strided_dilated", "same_even", "valid_no_bias", "grouped"],
)
@pytest.mark.parametrize("shared_bias", [False, True])
def test_from_conv2d_equals_conv2d(device, conv_args, shared_bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, **conv_args).to(device=device, dtype=torch.float64)
    input = torch.randn(3, 4, 11, 9, dtype=torch.float64, device=device)
    layer = lc_cuda.LocallyConnected2d.from_conv2d(conv, (11, 9), shared_bias=shared_bias)
    assert layer.weight.dtype == torch.float64 and layer.weight.device == input.device
    if conv.bias is not None:
        assert layer.bias.dim() == (1 if shared_bias else 3)
    torch.testing.assert_close(layer(input), conv(input))


def test_from_conv2d_rejects_other_layer_types():
    with pytest.raises(TypeError, match=r"conv must be an nn\.Conv2d, got Conv1d"):
        lc_cuda.LocallyConnected2d.from_conv2d(nn.Conv1d(2, 2, 3), 8)
    with pytest.raises(TypeError, match=r"conv must be an nn\.ConvTranspose2d, got Conv2d"):
        lc_cuda.LocallyConnectedTranspose2d.from_conv_transpose2d(nn.Conv2d(2, 2, 3), 8)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_from_conv_equals_conv_for_every_padding_mode(dims, padding_mode):
    """Conv1d/2d/3d with groups, padding per mode: the layer computes the same."""
    torch.manual_seed(0)
    conv_type = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    conv = conv_type(4, 6, 3, padding=1, groups=2, padding_mode=padding_mode).double()
    size = (7, 6, 5)[:dims]
    layer_type = {1: lc_cuda.LocallyConnected1d, 2: lc_cuda.LocallyConnected2d}.get(
        dims, lc_cuda.LocallyConnected3d
    )
    layer = getattr(layer_type, f"from_conv{dims}d")(conv, size)
    assert layer.groups == 2 and layer.padding_mode == padding_mode
    input = torch.randn(2, 4, *size, dtype=torch.float64)
    torch.testing.assert_close(layer(input), conv(input))


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_from_conv_transpose_equals_conv_transpose(dims):
    torch.manual_seed(0)
    convt_type = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[dims]
    convt = convt_type(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, dilation=1)
    convt = convt.double()
    size = (5, 4, 3)[:dims]
    layer_type = (
        lc_cuda.LocallyConnectedTranspose1d,
        lc_cuda.LocallyConnectedTranspose2d,
        lc_cuda.LocallyConnectedTranspose3d,
    )[dims - 1]
    layer = getattr(layer_type, f"from_conv_transpose{dims}d")(convt, size)
    input = torch.randn(3, 4, *size, dtype=torch.float64)
    torch.testing.assert_close(layer(input), convt(input))
    assert layer.output_size == tuple(convt(input).shape[2:])


def test_circular_padding_matches_conv2d_and_f_pad():
    """The circular layer equals F.pad(circular) + the zero-padded op, and Conv2d's circular
    mode on a layer converted with from_conv2d."""
    torch.manual_seed(0)
    layer = lc_cuda.LocallyConnected2d(2, 3, (6, 7), 3, padding=(1, 2), padding_mode="circular")
    input = torch.randn(2, 2, 6, 7)
    padded = torch.nn.functional.pad(input, (2, 2, 1, 1), mode="circular")
    torch.testing.assert_close(layer(input), lc_cuda.local_conv2d(padded, layer.weight, layer.bias))


def test_causal_1d_layer_keeps_the_length():
    layer = lc_cuda.LocallyConnected1d(1, 4, 50, kernel_size=5, padding=((4, 0),))
    input = torch.randn(3, 1, 50)
    out = layer(input)
    assert out.shape == (3, 4, 50)
    # causal: output position i reads inputs up to i only
    changed = input.clone()
    changed[..., 30:] += 1
    torch.testing.assert_close(layer(changed)[..., :30], out[..., :30])


def test_groups_equal_split_and_concatenate():
    """A grouped layer is its groups' separate layers side by side."""
    torch.manual_seed(0)
    layer = lc_cuda.LocallyConnected2d(6, 4, 7, 3, padding=1, groups=2, dtype=torch.float64)
    input = torch.randn(2, 6, 7, 7, dtype=torch.float64)
    halves = []
    for g in range(2):
        part = lc_cuda.LocallyConnected2d(3, 2, 7, 3, padding=1, dtype=torch.float64)
        with torch.no_grad():
            part.weight.copy_(layer.weight[:, :, 2 * g : 2 * g + 2])
            part.bias.copy_(layer.bias[2 * g : 2 * g + 2])
        halves.append(part(input[:, 3 * g : 3 * g + 3]))
    torch.testing.assert_close(layer(input), torch.cat(halves, 1), rtol=0, atol=1e-12)


def test_a_block_over_the_whole_output_is_a_convolution():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2)
    layer = lc_cuda.LocallyConnected2d.from_conv2d(conv, (9, 8), share_block=(9, 8))
    assert layer.weight.shape == (1, 1, 6, 2, 3, 3)
    input = torch.randn(2, 4, 9, 8)
    torch.testing.assert_close(layer(input), conv(input))
    one_period = lc_cuda.LocallyConnected2d.from_conv2d(conv, (9, 8), share_period=1)
    torch.testing.assert_close(one_period(input), conv(input))


def test_no_sharing_is_the_unshared_op_bit_for_bit():
    """share_block of 1 (and a period of the whole output) is today's op: same weight shape,
    bitwise the same output."""
    torch.manual_seed(0)
    input = torch.randn(3, 2, 8, 7)
    weight = torch.randn(6, 5, 4, 2, 3, 3)
    plain = lc_cuda.local_conv2d(input, weight)
    assert torch.equal(lc_cuda.local_conv2d(input, weight, share_block=1), plain)
    assert torch.equal(lc_cuda.local_conv2d(input, weight, share_period=(6, 5)), plain)


def test_1d_equals_2d_with_unit_height():
    torch.manual_seed(0)
    layer_1d = lc_cuda.LocallyConnected1d(3, 5, 12, 3, stride=2, padding=1, dilation=2)
    layer_2d = lc_cuda.LocallyConnected2d(
        3, 5, (1, 12), (1, 3), stride=(1, 2), padding=(0, 1), dilation=(1, 2)
    )
    with torch.no_grad():
        layer_2d.weight.copy_(layer_1d.weight.unsqueeze(0).unsqueeze(4))
        layer_2d.bias.copy_(layer_1d.bias.unsqueeze(1))
    input = torch.randn(4, 3, 12)
    torch.testing.assert_close(layer_1d(input), layer_2d(input.unsqueeze(2)).squeeze(2))


def test_extra_repr():
    text = repr(lc_cuda.LocallyConnected2d(3, 8, 32, 5, stride=2, padding=2, shared_bias=True))
    assert text == (
        "LocallyConnected2d(3, 8, input_size=(32, 32), output_size=(16, 16), kernel_size=(5, 5), "
        "stride=(2, 2), padding=(2, 2), shared_bias=True)"
    )
    assert repr(lc_cuda.LocallyConnected1d(2, 4, 10, 3, padding="same", bias=False)) == (
        "LocallyConnected1d(2, 4, input_size=(10,), output_size=(10,), kernel_size=(3,), "
        "stride=(1,), padding='same', bias=False)"
    )
    assert repr(
        lc_cuda.LocallyConnected2d(4, 4, 8, 3, groups=2, share_block=4, padding_mode="circular",
                                   padding=1)
    ) == (
        "LocallyConnected2d(4, 4, input_size=(8, 8), output_size=(8, 8), kernel_size=(3, 3), "
        "stride=(1, 1), padding=(1, 1), padding_mode='circular', groups=2, share_block=(4, 4))"
    )  # fmt: skip
    assert repr(lc_cuda.LocallyConnectedTranspose2d(3, 2, 5, 3, stride=2, output_padding=1)) == (
        "LocallyConnectedTranspose2d(3, 2, input_size=(5, 5), output_size=(12, 12), "
        "kernel_size=(3, 3), stride=(2, 2), output_padding=(1, 1))"
    )


def test_shapes_of_3d_shared_and_transposed_layers():
    layer = lc_cuda.LocallyConnected3d(2, 4, (6, 7, 8), 3, share_block=(2, 3, 4))
    assert layer.output_size == (4, 5, 6) and layer.regions == (2, 2, 2)
    assert layer.weight.shape == (2, 2, 2, 4, 2, 3, 3, 3) and layer.bias.shape == (4, 2, 2, 2)
    assert layer(torch.randn(3, 2, 6, 7, 8)).shape == (3, 4, 4, 5, 6)
    tiled = lc_cuda.LocallyConnected2d(2, 4, 9, 3, share_period=(2, 3), groups=2)
    assert tiled.weight.shape == (2, 3, 4, 1, 3, 3)
    decoder = lc_cuda.LocallyConnectedTranspose2d(4, 2, (5, 6), 3, stride=2, groups=2)
    assert decoder.weight.shape == (5, 6, 4, 1, 3, 3) and decoder.bias.shape == (2, 11, 13)
    assert decoder(torch.randn(2, 4, 5, 6)).shape == (2, 2, 11, 13)


def test_module_gradients_and_dtype_device_arguments():
    layer = lc_cuda.LocallyConnected2d(2, 3, 6, 3, dtype=torch.float64)
    assert layer.weight.dtype == layer.bias.dtype == torch.float64
    layer(torch.randn(2, 2, 6, 6, dtype=torch.float64)).sum().backward()
    assert layer.weight.grad.shape == layer.weight.shape
    assert layer.bias.grad.shape == layer.bias.shape
