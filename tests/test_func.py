"""torch.func through the functions and layers: jvp against finite differences, grad and jacrev
against autograd, vmap against a loop, and per-sample gradients (vmap(grad)) against a loop of
ordinary backward passes, as DP-SGD computes them. No transform may return a silent zero."""

import pytest
import torch
from torch.func import functional_call, grad, jacrev, jvp, vmap

import lc_cuda

LAYERS = {
    "plain_2d": lambda: lc_cuda.LocallyConnected2d(2, 3, 5, 3, padding=1),
    "shared_grouped_2d": lambda: lc_cuda.LocallyConnected2d(
        4, 4, 6, 3, groups=2, share_block=(2, 3), shared_bias=True
    ),
    "tiled_1d": lambda: lc_cuda.LocallyConnected1d(2, 3, 9, 3, share_period=2, padding=((2, 0),)),
    "volume_3d": lambda: lc_cuda.LocallyConnected3d(1, 2, (3, 4, 3), 2),
    "transpose_2d": lambda: lc_cuda.LocallyConnectedTranspose2d(
        3, 2, 4, 3, stride=2, output_padding=1, share_block=2
    ),
}


def layer_and_input(name, batch=4):
    torch.manual_seed(0)
    layer = LAYERS[name]().double()
    shape = (batch, layer.in_channels, *layer.input_size)
    return layer, torch.randn(shape, dtype=torch.float64)


def finite_difference(function, point, direction, eps=1e-6):
    return (function(point + eps * direction) - function(point - eps * direction)) / (2 * eps)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_jvp_in_the_input_matches_finite_differences(name):
    layer, input = layer_and_input(name)
    direction = torch.randn_like(input)
    output, tangent = jvp(layer, (input,), (direction,))
    torch.testing.assert_close(output, layer(input))
    expected = finite_difference(layer, input, direction)
    assert expected.abs().max() > 0.1  # the check below would pass a silent zero otherwise
    torch.testing.assert_close(tangent, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_jvp_in_the_parameters_matches_finite_differences(name):
    layer, input = layer_and_input(name)
    params = {k: v.detach() for k, v in layer.named_parameters()}
    directions = {k: torch.randn_like(v) for k, v in params.items()}

    def of_params(p):
        return functional_call(layer, p, (input,))

    _, tangent = jvp(of_params, (params,), (directions,))
    eps = 1e-6
    plus = of_params({k: v + eps * directions[k] for k, v in params.items()})
    minus = of_params({k: v - eps * directions[k] for k, v in params.items()})
    torch.testing.assert_close(tangent, (plus - minus) / (2 * eps), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("no_grad", [False, True], ids=["grad", "no_grad"])
@pytest.mark.parametrize("name", ["shared_grouped_2d", "transpose_2d"])
def test_forward_mode_ad_directly(name, no_grad):
    """Forward mode is untouched by no_grad: there too the tangent must come through the
    Functions' jvp, not be dropped as by an operator called without its Function."""
    layer, input = layer_and_input(name)
    import torch.autograd.forward_ad as fwAD

    direction = torch.randn_like(input)
    with fwAD.dual_level(), torch.set_grad_enabled(not no_grad):
        tangent = fwAD.unpack_dual(layer(fwAD.make_dual(input, direction))).tangent
    assert tangent is not None
    torch.testing.assert_close(
        tangent, finite_difference(layer, input, direction), rtol=1e-6, atol=1e-6
    )


def count_vmap_rule_calls(name, monkeypatch) -> list:
    """A list that gets an entry each time the layer's Function's vmap rule runs. (The batching
    fallback's "performance drop" warning is a C++ log line, which warnings filters miss, so
    the check that vmap took no fallback is that the rule ran.)"""
    functions = lc_cuda._autograd
    function = functions.LocalConvTranspose if "transpose" in name else functions.LocalConv
    rule, calls = function.vmap, []

    def counted(*args):
        calls.append(1)
        return rule(*args)

    monkeypatch.setattr(function, "vmap", staticmethod(counted))
    return calls


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_grad_and_jacrev_match_autograd(name):
    layer, input = layer_and_input(name, batch=2)
    got = grad(lambda x: layer(x).pow(2).sum())(input)
    leaf = input.clone().requires_grad_()
    (expected,) = torch.autograd.grad(layer(leaf).pow(2).sum(), leaf)
    torch.testing.assert_close(got, expected)
    small = input[:1]
    torch.testing.assert_close(
        jacrev(layer)(small), torch.autograd.functional.jacobian(layer, small)
    )


def test_hessian_through_jacrev_of_grad():
    layer, input = layer_and_input("tiled_1d", batch=1)

    def loss(x):
        return layer(x).pow(3).sum()

    torch.testing.assert_close(
        jacrev(grad(loss))(input), torch.autograd.functional.hessian(loss, input)
    )


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_vmap_over_inputs_runs_one_call_without_the_slow_fallback(name, monkeypatch):
    layer, input = layer_and_input(name)
    batches = torch.stack([input, 2 * input, -input])
    calls = count_vmap_rule_calls(name, monkeypatch)
    got = vmap(layer)(batches)
    assert calls == [1]
    torch.testing.assert_close(got, torch.stack([layer(x) for x in batches]))


def test_vmap_over_weights_gives_per_sample_filters():
    torch.manual_seed(0)
    input = torch.randn(3, 4, 6, 6, dtype=torch.float64)
    weights = torch.randn(5, 2, 2, 4, 2, 3, 3, dtype=torch.float64)
    biases = torch.randn(5, 4, dtype=torch.float64)

    def layer(weight, bias):
        return lc_cuda.local_conv2d(input, weight, bias, groups=2, share_block=2)

    got = vmap(layer)(weights, biases)
    expected = torch.stack([layer(w, b) for w, b in zip(weights, biases)])
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_per_sample_gradients_match_a_loop_of_backward_passes(name):
    layer, input = layer_and_input(name, batch=5)
    params = {k: v.detach() for k, v in layer.named_parameters()}

    def loss(p, sample):
        return functional_call(layer, p, (sample.unsqueeze(0),)).pow(2).sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0))(params, input)
    for index in range(input.shape[0]):
        layer.zero_grad()
        layer(input[index : index + 1]).pow(2).sum().backward()
        for key, parameter in layer.named_parameters():
            torch.testing.assert_close(per_sample[key][index], parameter.grad)


def test_forward_over_reverse_hessian_and_jacfwd():
    """Forward mode through the backward operator (hessian = jacfwd(jacrev))."""
    layer, input = layer_and_input("shared_grouped_2d", batch=1)
    params = {k: v.detach() for k, v in layer.named_parameters()}

    def loss(weight):
        return functional_call(layer, {**params, "weight": weight}, (input,)).pow(2).sum()

    expected = torch.autograd.functional.hessian(loss, params["weight"])
    torch.testing.assert_close(torch.func.hessian(loss)(params["weight"]), expected)

    def cubed(x):
        return layer(x).pow(3).sum()

    torch.testing.assert_close(
        torch.func.jacfwd(grad(cubed))(input), torch.autograd.functional.hessian(cubed, input)
    )
    direction = torch.randn_like(input)
    _, tangent = jvp(grad(cubed), (input,), (direction,))
    eps = 1e-6
    expected = (grad(cubed)(input + eps * direction) - grad(cubed)(input - eps * direction)) / (
        2 * eps
    )
    torch.testing.assert_close(tangent, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("in_dim", [1, -1])
def test_vmap_over_other_dimensions(name, in_dim):
    """The batched dimension anywhere: the rules move it first themselves."""
    layer, input = layer_and_input(name, batch=2)
    stacked = torch.stack([input, -input, 2 * input], dim=in_dim)
    got = vmap(layer, in_dims=in_dim)(stacked)
    expected = torch.stack([layer(x) for x in stacked.unbind(in_dim)])
    torch.testing.assert_close(got, expected)


def test_vmap_over_weights_of_the_transposed_op_and_nested_vmap():
    torch.manual_seed(0)
    y = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    weights = torch.randn(3, 5, 5, 4, 1, 3, 3, dtype=torch.float64)

    def decoder(weight):
        return lc_cuda.local_conv_transpose2d(y, weight, stride=2, groups=2)

    got = vmap(decoder, in_dims=-1)(weights.movedim(0, -1))
    torch.testing.assert_close(got, torch.stack([decoder(w) for w in weights]))
    inputs = torch.randn(2, 3, 2, 4, 5, 5, dtype=torch.float64)
    nested = vmap(vmap(lambda x, w: lc_cuda.local_conv_transpose2d(x, w, groups=2)))(
        inputs, weights[:2, None].expand(2, 3, *weights.shape[1:])
    )
    loop = torch.stack(
        [
            torch.stack([lc_cuda.local_conv_transpose2d(x, weights[i], groups=2) for x in row])
            for i, row in enumerate(inputs)
        ]
    )
    torch.testing.assert_close(nested, loop)
