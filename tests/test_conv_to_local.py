"""Whole-model conversion: lc_cuda.convert.conv_to_local, share_weights and average_filter_banks.

The real architecture is torchvision's resnet18 where torchvision is installed (it is not a
dependency of lc_cuda) and, everywhere, a ResNet-style model built here with the same module
names; every output comparison runs in float64."""

import math

import pytest
import torch
from torch import nn

import lc_cuda
from lc_cuda import convert

# ----------------------------------------------------------------------------------------------
# The architectures
# ----------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock: two 3x3 convolutions and a 1x1 shortcut convolution
    where the size or the channels change."""

    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + identity)


class SmallResNet(nn.Module):
    """resnet18's stem and two of its stages, narrower: the same module names and kinds."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 16, 1))
        self.layer2 = nn.Sequential(BasicBlock(16, 32, 2), BasicBlock(32, 32, 1))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(self.avgpool(x).flatten(1))


def randomise_batch_norms(model, generator):
    """Running statistics and affine parameters away from their identity defaults, so that
    a wrong channel or position somewhere shows in the outputs."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                for tensor in (module.running_mean, module.weight, module.bias):
                    tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator))
                module.running_var.add_(0.5)
                module.weight.add_(1.0)


def resnet(kind):
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if kind == "torchvision resnet18":
        torchvision = pytest.importorskip("torchvision")
        model = torchvision.models.resnet18(num_classes=10)
    else:
        model = SmallResNet()
    randomise_batch_norms(model, generator)
    return model.double().eval()


@pytest.fixture(scope="module", params=["torchvision resnet18", "ResNet-style"])
def resnet_and_input(request):
    model = resnet(request.param)
    images = torch.randn(
        2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    return model, images


def modules_of_type(model, module_type):
    return {name: module for name, module in model.named_modules() if type(module) is module_type}


# ----------------------------------------------------------------------------------------------
# conv_to_local on a ResNet
# ----------------------------------------------------------------------------------------------


def test_resnet_converted_computes_the_same_outputs(resnet_and_input):
    model, images = resnet_and_input
    convs = modules_of_type(model, nn.Conv2d)
    local = convert.conv_to_local(model, images)
    assert modules_of_type(local, nn.Conv2d) == {}
    layers = modules_of_type(local, lc_cuda.LocallyConnected2d)
    assert layers.keys() == convs.keys()
    for name, layer in layers.items():
        conv = convs[name]
        assert layer.regions == layer.output_size
        assert (layer.stride, layer.padding, layer.bias) == (conv.stride, conv.padding, None)
        torch.testing.assert_close(
            layer.weight, conv.weight.expand_as(layer.weight), rtol=0, atol=0
        )
    with torch.no_grad():
        torch.testing.assert_close(local(images), model(images), rtol=1e-12, atol=1e-12)
    assert type(model.conv1) is nn.Conv2d  # a copy was converted, not the model


def test_resnet_training_step_runs_and_moves_the_banks_apart(resnet_and_input):
    model, images = resnet_and_input
    local = convert.conv_to_local(model, images).train()
    optimizer = torch.optim.SGD(local.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(local(images), torch.tensor([1, 7]))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    layer = local.layer1[0].conv1
    assert torch.isfinite(layer.weight.grad).all() and layer.weight.grad.abs().sum() > 0
    # Every bank got its own gradient: the copies of one filter are no longer equal.
    assert not torch.equal(layer.weight[0, 0], layer.weight[-1, -1])


def test_resnet_share_weights_round_trips(resnet_and_input):
    model, images = resnet_and_input
    back = convert.share_weights(convert.conv_to_local(model, images))
    assert modules_of_type(back, lc_cuda.LocallyConnected2d) == {}
    convs = modules_of_type(model, nn.Conv2d)
    back_convs = modules_of_type(back, nn.Conv2d)
    assert back_convs.keys() == convs.keys()
    for name, conv in back_convs.items():
        assert repr(conv) == repr(convs[name])
        torch.testing.assert_close(conv.weight, convs[name].weight, rtol=1e-15, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(back(images), model(images), rtol=1e-12, atol=1e-12)


def test_keep_first_1x1_and_by_name(resnet_and_input):
    model, images = resnet_and_input
    kept_first = convert.conv_to_local(model, images, keep_first=1)
    assert type(kept_first.conv1) is nn.Conv2d
    assert type(kept_first.layer1[0].conv1) is lc_cuda.LocallyConnected2d
    kept_1x1 = convert.conv_to_local(model, images, keep_1x1=True)
    assert type(kept_1x1.layer2[0].downsample[0]) is nn.Conv2d
    assert type(kept_1x1.layer2[0].conv1) is lc_cuda.LocallyConnected2d
    seen = []

    def in_layer2(name, module):
        seen.append((name, type(module)))
        return name.startswith("layer2")

    by_name = convert.conv_to_local(model, images, keep=in_layer2)
    assert set(modules_of_type(by_name, nn.Conv2d)) == {
        name for name in modules_of_type(model, nn.Conv2d) if name.startswith("layer2")
    }
    assert ("conv1", nn.Conv2d) in seen
    with torch.no_grad():
        for converted in (kept_first, kept_1x1, by_name):
            torch.testing.assert_close(converted(images), model(images), rtol=1e-12, atol=1e-12)


def test_sharing_for_every_layer_or_per_layer(resnet_and_input):
    model, images = resnet_and_input
    calls = {}

    def two_blocks_per_side(name, conv, positions):
        calls[name] = positions
        return tuple(math.ceil(size / 2) for size in positions)

    blocks = convert.conv_to_local(model, images, share_block=two_blocks_per_side)
    for name, layer in modules_of_type(blocks, lc_cuda.LocallyConnected2d).items():
        assert calls[name] == layer.output_size
        assert layer.regions == tuple(min(2, size) for size in layer.output_size)
    tiled = convert.conv_to_local(
        model, images, share_period=lambda name, conv, positions: 2 if min(positions) > 1 else None
    )
    assert tiled.conv1.weight.shape[:2] == (2, 2)
    with torch.no_grad():
        torch.testing.assert_close(blocks(images), model(images), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(tiled(images), model(images), rtol=1e-12, atol=1e-12)


def test_the_sizing_pass_leaves_the_model_as_it_was():
    model, images = resnet("ResNet-style").train(), torch.randn(2, 3, 32, 32, dtype=torch.float64)
    model.layer1.eval()
    statistics = {name: b.clone() for name, b in model.named_buffers()}
    local = convert.conv_to_local(model, images, inplace=True)
    assert local is model and type(model.conv1) is lc_cuda.LocallyConnected2d
    for name, buffer in model.named_buffers():  # eval mode: no batch-norm update
        assert torch.equal(buffer, statistics[name]), name
    assert model.training and model.layer2.training and not model.layer1.training


def test_call_order_decides_keep_first():
    class Backwards(nn.Module):
        def __init__(self):
            super().__init__()
            self.second = nn.Conv1d(4, 4, 3)
            self.first = nn.Conv1d(2, 4, 3)

        def forward(self, x):
            return self.second(self.first(x))

    local = convert.conv_to_local(Backwards(), torch.randn(1, 2, 20), keep_first=1)
    assert type(local.first) is nn.Conv1d and type(local.second) is lc_cuda.LocallyConnected1d


# ----------------------------------------------------------------------------------------------
# Every kind of convolution
# ----------------------------------------------------------------------------------------------


class EveryKind(nn.Module):
    """1D, 2D, 3D and transposed convolutions, groups, padding modes, with and without bias."""

    def __init__(self):
        super().__init__()
        self.conv1d = nn.Conv1d(4, 6, 3, padding=2, dilation=2, groups=2, padding_mode="reflect")
        self.conv2d = nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding="valid", bias=False)
        self.same = nn.Conv2d(4, 4, 4, padding="same", padding_mode="circular", groups=4)
        self.conv3d = nn.Conv3d(2, 4, 3, stride=2, padding=1, padding_mode="replicate")
        self.up1d = nn.ConvTranspose1d(6, 2, 4, stride=2, padding=1, groups=2)
        self.up2d = nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1, bias=False)
        self.up3d = nn.ConvTranspose3d(4, 1, 2, stride=2, dilation=1)

    def forward(self, signal, image, volume):
        return (
            self.up1d(self.conv1d(signal)),
            self.up2d(self.same(self.conv2d(image))),
            self.up3d(self.conv3d(volume)),
        )


def every_kind_inputs(dtype=torch.float64):
    generator = torch.Generator().manual_seed(2)
    return (
        torch.randn(2, 4, 11, dtype=dtype, generator=generator),
        torch.randn(2, 3, 9, 7, dtype=dtype, generator=generator),
        torch.randn(2, 2, 6, 5, 4, dtype=dtype, generator=generator),
    )


LOCAL_TYPES = {
    "conv1d": lc_cuda.LocallyConnected1d,
    "conv2d": lc_cuda.LocallyConnected2d,
    "same": lc_cuda.LocallyConnected2d,
    "conv3d": lc_cuda.LocallyConnected3d,
    "up1d": lc_cuda.LocallyConnectedTranspose1d,
    "up2d": lc_cuda.LocallyConnectedTranspose2d,
    "up3d": lc_cuda.LocallyConnectedTranspose3d,
}


@pytest.mark.parametrize("shared_bias", [False, True])
def test_every_kind_converts_and_shares_back(shared_bias):
    torch.manual_seed(3)
    model, inputs = EveryKind().double(), every_kind_inputs()
    local = convert.conv_to_local(model, inputs, shared_bias=shared_bias)
    for name, layer_type in LOCAL_TYPES.items():
        layer = getattr(local, name)
        assert type(layer) is layer_type, name
        conv = getattr(model, name)
        assert (layer.groups, layer.padding_mode) == (conv.groups, conv.padding_mode)
        if layer.bias is not None:
            assert layer.bias.dim() == (1 if shared_bias else 1 + layer.spatial_dims)
    with torch.no_grad():
        for got, expected in zip(local(*inputs), model(*inputs)):
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    back = convert.share_weights(local)
    for name in LOCAL_TYPES:
        conv, original = getattr(back, name), getattr(model, name)
        assert repr(conv) == repr(original), name
        torch.testing.assert_close(conv.weight, original.weight, rtol=1e-15, atol=0)
        if original.bias is not None:
            torch.testing.assert_close(conv.bias, original.bias, rtol=1e-15, atol=0)


def test_round_trip_is_bitwise_in_float32():
    torch.manual_seed(4)
    model, inputs = EveryKind(), every_kind_inputs(torch.float32)
    back = convert.share_weights(convert.conv_to_local(model, inputs))
    for (name, got), expected in zip(back.named_parameters(), model.parameters()):
        assert torch.equal(got, expected), name


def test_transposed_false_keeps_conv_transpose():
    model, inputs = EveryKind().double(), every_kind_inputs()
    local = convert.conv_to_local(model, inputs, transposed=False)
    assert type(local.up2d) is nn.ConvTranspose2d
    assert type(local.conv2d) is lc_cuda.LocallyConnected2d


def test_a_module_used_twice_stays_one_module():
    shared = nn.Conv2d(3, 3, 3, padding=1)
    model = nn.Sequential(shared, nn.ReLU(), shared)  # also registered under two names
    x = torch.randn(2, 3, 8, 8)
    local = convert.conv_to_local(model, x)
    assert local[0] is local[2] and type(local[0]) is lc_cuda.LocallyConnected2d
    torch.testing.assert_close(local(x), model(x), rtol=1e-5, atol=1e-6)


def test_the_model_itself_a_convolution():
    conv = nn.Conv3d(2, 3, 3)
    x = torch.randn(1, 2, 5, 5, 5)
    layer = convert.conv_to_local(conv, x)
    assert type(layer) is lc_cuda.LocallyConnected3d
    assert type(convert.share_weights(layer)) is nn.Conv3d


def test_errors_and_warnings():
    with pytest.raises(TypeError, match=r"model must be an nn\.Module, got Tensor"):
        convert.conv_to_local(torch.ones(1), torch.ones(1))
    conv, x = nn.Conv2d(1, 1, 3), torch.randn(1, 1, 8, 8)
    for arguments, message in [
        ({"keep_first": -1}, "keep_first must be a non-negative int, got -1"),
        ({"noise": -0.5}, "noise must be a non-negative number, got -0.5"),
        ({"noise": math.nan}, "noise must be a non-negative number, got nan"),
    ]:
        with pytest.raises(ValueError, match=message):
            convert.conv_to_local(conv, x, **arguments)
    with pytest.raises(TypeError, match=r"generator must be a torch\.Generator or None, got 0"):
        convert.conv_to_local(conv, x, generator=0)
    with pytest.raises(TypeError, match="keep must be a function"):
        convert.conv_to_local(conv, x, keep=True)

    class TwoSizes(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x):
            return self.conv(x), self.conv(x[..., :4])

    with pytest.raises(ValueError, match=r"conv \(Conv2d\) is called on inputs of spatial size"):
        convert.conv_to_local(TwoSizes(), x)

    class ToSize(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = nn.ConvTranspose2d(1, 1, 3, stride=2, padding=1)

        def forward(self, x):
            return self.up(x, output_size=(16, 16))

    with pytest.raises(
        ValueError, match=r"up \(ConvTranspose2d\) returned spatial size \(16, 16\)"
    ):
        convert.conv_to_local(ToSize(), x)

    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.spare = nn.Conv2d(1, 1, 3), nn.Conv2d(1, 1, 3)

        def forward(self, x):
            return self.used(x)

    with pytest.warns(UserWarning, match="did not call spare; they stay convolutions"):
        local = convert.conv_to_local(Unused(), x)
    assert type(local.spare) is nn.Conv2d and type(local.used) is lc_cuda.LocallyConnected2d


# ----------------------------------------------------------------------------------------------
# Noise
# ----------------------------------------------------------------------------------------------


def test_noise_scale_and_seed():
    torch.manual_seed(5)
    conv = nn.Conv2d(16, 16, 3, padding=1)
    x = torch.randn(1, 16, 12, 12)

    def noisy(seed):
        return convert.conv_to_local(
            conv, x, noise=0.1, generator=torch.Generator().manual_seed(seed)
        )

    layer = noisy(0)
    deviation = (layer.weight - conv.weight).detach()
    # 12 * 12 * 16 * 16 * 9 draws: the measured spread is within 1% of the asked one.
    relative = deviation.std() / conv.weight.std(correction=0)
    assert abs(relative.item() - 0.1) < 1e-3
    assert abs(deviation.mean().item()) < 1e-3 * conv.weight.std().item()
    torch.testing.assert_close(layer.bias, conv.bias.view(16, 1, 1).expand(16, 12, 12))  # no noise
    assert torch.equal(noisy(0).weight, layer.weight)
    assert not torch.equal(noisy(1).weight, layer.weight)
    # The banks' average is the convolution's filter, within the noise's standard error.
    averaged = convert.share_weights(layer)
    error = (averaged.weight - conv.weight).abs().max() / conv.weight.std()
    assert error < 0.1 * 5 / 12
    # Without a generator, torch's global one: seeded, reproducible.
    torch.manual_seed(6)
    first = convert.conv_to_local(conv, x, noise=0.1).weight
    torch.manual_seed(6)
    assert torch.equal(convert.conv_to_local(conv, x, noise=0.1).weight, first)


# ----------------------------------------------------------------------------------------------
# The averages against explicit float64 loops
# ----------------------------------------------------------------------------------------------


def as_pair(value):
    return tuple(value) if isinstance(value, tuple) else (value, value)


def region_of(position, share):
    """The region of output position (i, j) under {'share_block': ...} or {'share_period': ...}
    as the layers take them."""
    if "share_period" in share:
        return tuple(p % period for p, period in zip(position, as_pair(share["share_period"])))
    return tuple(p // block for p, block in zip(position, as_pair(share["share_block"])))


def banks_and_biases_per_position(layer, source):
    """{(i, j): (bank, bias)} of a 2D layer built with the sharing `source`, in float64."""
    out_h, out_w = layer.output_size
    per_position = {}
    for position in ((i, j) for i in range(out_h) for j in range(out_w)):
        region = region_of(position, source) if source else position
        bias = layer.bias[(slice(None), *region)]
        per_position[position] = (layer.weight[region].double(), bias.double())
    return per_position


@pytest.mark.parametrize(
    "source, target",
    [
        ({}, {"share_period": 2}),
        ({"share_block": (3, 2)}, {"share_period": (2, 3)}),
        ({"share_period": (2, 1)}, {"share_block": 4}),
        ({"share_block": (3, 2)}, {}),
    ],
)
def test_share_weights_averages_every_position_once(source, target):
    """Against the mean over each target region's positions of each position's bank: a region
    of a shared source layer counts as often as it has positions (blocks of 3 and 2 over the
    7x5 output leave partial ones)."""
    torch.manual_seed(7)
    layer = lc_cuda.LocallyConnected2d(2, 3, (9, 7), 3, **source).double()
    nn.init.normal_(layer.bias)
    shared = convert.share_weights(layer, **target)
    members = {}
    for position, bank_and_bias in banks_and_biases_per_position(layer, source).items():
        region = region_of(position, target) if target else ()
        members.setdefault(region, []).append(bank_and_bias)
    assert len(members) == (math.prod(shared.weight.shape[:2]) if target else 1)
    for region, banks_and_biases in members.items():
        banks, biases = zip(*banks_and_biases)
        weight = shared.weight[region] if target else shared.weight
        bias = shared.bias[(slice(None), *region)] if target else shared.bias
        torch.testing.assert_close(weight, torch.stack(banks).mean(0), rtol=1e-14, atol=1e-15)
        torch.testing.assert_close(bias, torch.stack(biases).mean(0), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("share", [{"share_block": (2, 3)}, {"share_period": 3}, {}])
def test_average_filter_banks_in_place(share):
    torch.manual_seed(8)
    layer = lc_cuda.LocallyConnected2d(2, 3, (8, 7), 2).double()
    nn.init.normal_(layer.bias)
    before = banks_and_biases_per_position(layer, {})
    returned = convert.average_filter_banks(nn.Sequential(layer), **share)
    assert returned[0] is layer and layer.weight.shape == (7, 6, 3, 2, 2, 2)
    members = {}
    for position in before:
        members.setdefault(region_of(position, share) if share else (), []).append(position)
    for positions in members.values():
        banks, biases = zip(*(before[position] for position in positions))
        for position in positions:
            torch.testing.assert_close(layer.weight[position], torch.stack(banks).mean(0))
            torch.testing.assert_close(
                layer.bias[:, position[0], position[1]], torch.stack(biases).mean(0)
            )


def test_average_filter_banks_leaves_a_transposed_layers_bias():
    layer = lc_cuda.LocallyConnectedTranspose1d(2, 3, input_length=6, kernel_size=3).double()
    bias = layer.bias.clone()
    convert.average_filter_banks(layer, share_period=2)
    assert torch.equal(layer.bias, bias)
    torch.testing.assert_close(layer.weight[0::2], layer.weight[0:1].expand(3, -1, -1, -1))


def test_share_weights_and_average_edge_cases():
    shared = lc_cuda.LocallyConnected2d(2, 2, 8, 3, share_block=2)
    with pytest.raises(ValueError, match=r"the model \(LocallyConnected2d\) shares its weights"):
        convert.average_filter_banks(shared)
    # Padding that differs before and after, which nn.Conv1d cannot do: one region, still local.
    causal = lc_cuda.LocallyConnected1d(1, 2, 10, 3, padding=((2, 0),))
    one_region = convert.share_weights(causal)
    assert type(one_region) is lc_cuda.LocallyConnected1d and one_region.regions == (1,)
    assert one_region.weight.shape == (1, 2, 1, 3) and one_region.bias.shape == (2, 1)
    with pytest.raises(ValueError, match="share_period must be at most the output size"):
        convert.share_weights(shared, share_period=7)
