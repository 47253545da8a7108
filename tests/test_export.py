"""Deployment: ONNX (run in onnxruntime), TorchScript, torch.export and AOTInductor.

One model, `Zoo`, holds a layer for every geometry option (1D, 2D and 3D; padding int, pair,
per side, 'valid' and 'same' with odd and even kernels, and every padding mode; strides;
dilations; the three bias kinds; groups; weight shared in blocks and periodically; the
transposed layers), seeded random 2D layers and a small DeepFace, each fed its own input. Every
path exports or compiles Zoo once, with a dynamic batch, and runs it at two batch sizes in a
fresh process (ONNX: onnxruntime, without torch or lc_cuda). Outputs are
compared with the float64 oracle of lc_cuda/reference.py (DeepFace: with the model in float64).
"""

import copy
import io
import random
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES, needs_torch
from torch import nn

import lc_cuda
from lc_cuda._arguments import flat_padding, padding_pairs
from lc_cuda.models import DeepFace
from lc_cuda.modules import _LocallyConnectedTransposeNd
from lc_cuda.reference import (
    RELATIVE_TOLERANCE,
    reference_local_conv,
    reference_local_conv_transpose,
    relative_error,
)

pytestmark = pytest.mark.slow  # processes of their own, exports, compiles: minutes in all

BATCH_SIZES = (2, 5)


def fixed_layers():
    """Each geometry option of the layers at least once: 1D, 2D and 3D, every padding form and
    mode, groups, both kinds of weight sharing, and the transposed layers."""
    lc1d, lc2d, lc3d = (
        lc_cuda.LocallyConnected1d,
        lc_cuda.LocallyConnected2d,
        lc_cuda.LocallyConnected3d,
    )
    t1d, t2d = lc_cuda.LocallyConnectedTranspose1d, lc_cuda.LocallyConnectedTranspose2d
    t3d = lc_cuda.LocallyConnectedTranspose3d
    return [
        lc2d(3, 4, 7, 3),
        lc2d(2, 3, (8, 7), (3, 2), stride=(2, 1), padding=(1, 2), shared_bias=True),
        lc2d(2, 3, 9, 3, stride=2, padding=1, dilation=2, bias=False),
        lc2d(3, 2, (6, 7), 3, padding="same", dilation=(1, 2)),
        lc2d(2, 3, 6, (2, 4), padding="same"),  # even kernels: the extra row/column after
        lc2d(2, 2, 8, 1, stride=3, padding="valid"),
        lc2d(2, 3, 8, 3, padding=((2, 0), (1, 3))),
        lc2d(2, 3, 8, 3, padding=1, padding_mode="circular"),
        lc2d(2, 3, (7, 8), 3, padding=(2, 1), padding_mode="reflect", shared_bias=True),
        lc2d(4, 6, 7, 3, padding=1, groups=2),
        lc2d(4, 8, 6, 3, padding=1, groups=4),  # depthwise
        lc2d(3, 4, 9, 3, padding=(1, 0), share_block=(4, 3)),  # partial last blocks
        lc2d(2, 4, 8, 3, share_period=(2, 3), groups=2, shared_bias=True),
        lc1d(3, 4, 10, 4, padding="same", shared_bias=True),
        lc1d(2, 3, 11, 3, stride=2, padding=1, dilation=2),
        lc1d(2, 3, 9, 2, bias=False),
        lc1d(1, 2, 12, 3, padding=((2, 0),), padding_mode="replicate"),  # causal
        lc3d(2, 3, (5, 6, 4), (3, 2, 3), stride=(1, 2, 1), padding=((1, 0), (0, 1), (1, 1))),
        lc3d(2, 2, 4, 2, share_block=2, groups=2),
        t2d(3, 2, 5, 3, stride=2, padding=1, output_padding=1),
        t2d(4, 2, (4, 3), 2, stride=(2, 1), groups=2, share_block=2, shared_bias=True),
        t1d(2, 3, 6, 4, stride=2, padding=1),
        t3d(2, 2, (3, 3, 2), 2, stride=2, share_period=(1, 3, 2), bias=False),
    ]


def random_layers(count, seed=13):
    """Seeded random LocallyConnected2d geometries whose kernel fits the padded input."""
    rng = random.Random(seed)
    layers = []
    while len(layers) < count:
        kernel, stride, dilation = ((rng.randint(1, 4), rng.randint(1, 4)) for _ in range(3))
        padding = rng.choice([(rng.randint(0, 2), rng.randint(0, 2)), "same", "valid"])
        size = (rng.randint(1, 9), rng.randint(1, 9))
        if padding == "same":
            stride = (1, 1)
        pads = (0, 0) if isinstance(padding, str) else padding
        if any(d * (k - 1) + 1 > n + 2 * p for d, k, n, p in zip(dilation, kernel, size, pads)):
            continue
        layers.append(
            lc_cuda.LocallyConnected2d(
                rng.randint(1, 3),
                rng.randint(1, 3),
                size,
                kernel,
                stride,
                padding,
                dilation,
                bias=rng.random() < 0.7,
                shared_bias=rng.random() < 0.5,
            )
        )
    return layers


class Zoo(nn.Module):
    """Runs layer i on inputs[i]; scriptable, exportable, one artifact per path."""

    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        outputs = []
        for index, layer in enumerate(self.layers):
            outputs.append(layer(inputs[index]))
        return outputs


def input_shape(layer):
    if isinstance(layer, DeepFace):
        return (3, layer.input_size, layer.input_size)
    return (layer.in_channels, *layer.input_size)


def make_zoo(dtype=torch.float32, device="cpu", with_deepface=True):
    torch.manual_seed(0)
    layers = [*fixed_layers(), *random_layers(6)]
    if with_deepface:
        layers.append(DeepFace(num_classes=10, input_size=72, hidden=32))
    return Zoo(layers).to(device, dtype).eval()


def make_inputs(zoo, batch, dtype=torch.float32, device="cpu", seed=0):
    generator = torch.Generator().manual_seed(seed + batch)
    return [
        torch.randn(batch, *input_shape(layer), generator=generator).to(device, dtype)
        for layer in zoo.layers
    ]


def oracle(layer, input):
    """float64 output of one layer: lc_cuda/reference.py for the locally-connected layers."""
    layer, input = copy.deepcopy(layer).cpu(), input.cpu()
    if isinstance(layer, DeepFace):
        with torch.no_grad():
            return layer.double()(input.double())
    n = layer.spatial_dims
    pairs = padding_pairs(layer.padding, n, layer.kernel_size, layer.dilation)
    geometry = dict(
        stride=layer.stride, dilation=layer.dilation, groups=layer.groups,
        share=layer.share_block or layer.share_period, share_mode="block",
    )  # fmt: skip
    if layer.share_period is not None:
        geometry["share_mode"] = "tile"
    with torch.no_grad():
        if isinstance(layer, _LocallyConnectedTransposeNd):
            return reference_local_conv_transpose(
                input, layer.weight, layer.bias, padding=flat_padding(pairs),
                output_padding=layer.output_padding, **geometry,
            )  # fmt: skip
        if layer.padding_mode != "zeros":
            sides = [side for pair in reversed(pairs) for side in pair]
            input, pairs = F.pad(input.double(), sides, mode=layer.padding_mode), [(0, 0)] * n
        return reference_local_conv(
            input, layer.weight, layer.bias, padding=flat_padding(pairs), **geometry
        )


def assert_outputs_match(zoo, inputs, outputs, dtype=torch.float32):
    assert len(outputs) == len(zoo.layers)
    for layer, input, output in zip(zoo.layers, inputs, outputs):
        output = torch.as_tensor(np.asarray(output)) if not torch.is_tensor(output) else output
        expected = oracle(layer, input)
        assert tuple(output.shape) == tuple(expected.shape), layer
        error = relative_error(output.cpu(), expected)
        assert error <= RELATIVE_TOLERANCE[dtype], f"relative error {error:.3g} in {layer}"


# ------------------------------------------------------------------------------------------ ONNX


def needs_export_extra():
    for module in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(module)


ONNXRUNTIME_PROCESS = """
import sys
import numpy as np
import onnxruntime
model_file, inputs_file, outputs_prefix = sys.argv[1:]
session = onnxruntime.InferenceSession(model_file, providers=["CPUExecutionProvider"])
names = [arg.name for arg in session.get_inputs()]
with np.load(inputs_file) as inputs:
    for batch in range(int(inputs["batches"])):
        feed = {name: inputs[f"{batch}_{i}"] for i, name in enumerate(names)}
        np.savez(f"{outputs_prefix}{batch}.npz", *session.run(None, feed))
assert "torch" not in sys.modules and "lc_cuda" not in sys.modules
"""


def run_onnxruntime(model_bytes, batches, tmp_path):
    """Runs the model in onnxruntime in a fresh process without torch or lc_cuda, on each list
    of inputs in `batches`; returns the lists of outputs."""
    model_file, inputs_file = tmp_path / "model.onnx", tmp_path / "inputs.npz"
    model_file.write_bytes(model_bytes)
    arrays = {
        f"{batch}_{i}": x.numpy()
        for batch, inputs in enumerate(batches)
        for i, x in enumerate(inputs)
    }
    np.savez(inputs_file, batches=len(batches), **arrays)
    prefix = tmp_path / "outputs"
    command = [sys.executable, "-c", ONNXRUNTIME_PROCESS, model_file, inputs_file, prefix]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-5000:]
    results = []
    for batch in range(len(batches)):
        with np.load(f"{prefix}{batch}.npz") as outputs:
            results.append([outputs[f"arr_{j}"] for j in range(len(outputs.files))])
    return results


def assert_standard_onnx(model_bytes):
    """Only nodes of the default ONNX domain, no functions, so any runtime runs the graph."""
    import onnx

    model = onnx.load_from_string(model_bytes)
    onnx.checker.check_model(model, full_check=True)
    assert not model.functions
    domains = {node.domain for node in model.graph.node}
    assert domains <= {"", "ai.onnx"}, domains
    assert {opset.domain for opset in model.opset_import} <= {"", "ai.onnx"}
    return {node.op_type for node in model.graph.node}


def dynamo_onnx(zoo, inputs):
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            zoo, (inputs,), dynamo=True, dynamic_shapes=([{0: batch}] * len(inputs),)
        )
    return program.model_proto.SerializeToString()


@needs_torch(2, 6, "ONNX export with dynamo=True")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
def test_onnx_dynamo_export_runs_in_onnxruntime(dtype, tmp_path):
    needs_export_extra()
    # onnxruntime's CPU Conv has no float64 kernel: DeepFace's first layer is a Conv2d.
    zoo = make_zoo(dtype, with_deepface=dtype != torch.float64)
    model_bytes = dynamo_onnx(zoo, make_inputs(zoo, 3, dtype))
    op_types = assert_standard_onnx(model_bytes)
    assert {"Gather", "MatMul"} <= op_types
    batches = [make_inputs(zoo, batch, dtype) for batch in BATCH_SIZES]
    for inputs, outputs in zip(batches, run_onnxruntime(model_bytes, batches, tmp_path)):
        assert_outputs_match(zoo, inputs, outputs, dtype)


def test_onnx_legacy_torchscript_exporter(tmp_path):
    needs_export_extra()
    zoo = make_zoo()
    inputs = make_inputs(zoo, 3)
    names = [f"input{i}" for i in range(len(inputs))]
    file = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            zoo,
            (inputs,),
            file,
            dynamo=False,
            input_names=names,
            dynamic_axes={name: {0: "batch"} for name in names},
        )
    assert_standard_onnx(file.getvalue())
    batches = [make_inputs(zoo, batch) for batch in BATCH_SIZES]
    for inputs, outputs in zip(batches, run_onnxruntime(file.getvalue(), batches, tmp_path)):
        assert_outputs_match(zoo, inputs, outputs)


@needs_torch(2, 6, "torch.onnx that imports onnxscript only on demand")
def test_import_does_not_import_onnxscript():
    """onnxscript costs about 2 s to import: lc_cuda registers its translation lazily."""
    code = "import sys, lc_cuda; print('onnxscript' in sys.modules, 'onnx' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["False", "False"]


def test_onnx_registration_when_onnxscript_was_imported_first():
    needs_export_extra()
    code = (
        "import onnxscript.function_libs.torch_lib.registration as r, lc_cuda\n"
        "print('lc_cuda::local_conv' in r.default_registry)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["True"]


# ------------------------------------- TorchScript, torch.export, AOTInductor: fresh-process loads

FRESH_PROCESS = """
import sys, torch, lc_cuda
kind, artifact, inputs_file, outputs_file = sys.argv[1:]
if kind == "torchscript":
    model = torch.jit.load(artifact)
elif kind == "export":
    model = torch.export.load(artifact).module()
else:
    model = torch._inductor.aoti_load_package(artifact)
batches = torch.load(inputs_file)
with torch.no_grad():
    torch.save([list(model(inputs)) for inputs in batches], outputs_file)
"""


def run_fresh(kind, artifact, batches, tmp_path):
    inputs_file, outputs_file = tmp_path / f"{kind}_in.pt", tmp_path / f"{kind}_out.pt"
    torch.save(batches, inputs_file)
    run = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, kind, str(artifact), str(inputs_file), outputs_file],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-5000:]
    return torch.load(outputs_file)


def check_fresh_process(kind, artifact, zoo, tmp_path, device="cpu"):
    batches = [make_inputs(zoo, batch, device=device) for batch in BATCH_SIZES]
    for inputs, outputs in zip(batches, run_fresh(kind, artifact, batches, tmp_path)):
        assert_outputs_match(zoo, inputs, outputs)


def test_torchscript_script_save_load_fresh_process(tmp_path):
    zoo = make_zoo()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script's deprecation warning
        scripted = torch.jit.script(zoo)
        # Standalone layers script too (the first failure used to break the second).
        for layer in fixed_layers():
            torch.jit.script(layer)
    scripted.save(tmp_path / "zoo.ts")
    check_fresh_process("torchscript", tmp_path / "zoo.ts", zoo, tmp_path)


def exported_zoo(zoo, device="cpu"):
    batch = torch.export.Dim("batch")
    inputs = make_inputs(zoo, 3, device=device)
    return torch.export.export(zoo, (inputs,), dynamic_shapes=([{0: batch}] * len(inputs),))


@pytest.mark.parametrize("device", DEVICES)
def test_torch_export_save_load_fresh_process(tmp_path, device):
    zoo = make_zoo(device=device)
    torch.export.save(exported_zoo(zoo, device), tmp_path / "zoo.pt2")
    check_fresh_process("export", tmp_path / "zoo.pt2", zoo, tmp_path, device)


@needs_torch(2, 6, "AOTInductor's aoti_compile_and_package")
@pytest.mark.parametrize("device", DEVICES)
def test_aoti_compile_and_package_fresh_process(tmp_path, device):
    zoo = make_zoo(device=device)
    package = torch._inductor.aoti_compile_and_package(
        exported_zoo(zoo, device), package_path=str(tmp_path / "zoo.pt2")
    )
    check_fresh_process("aoti", package, zoo, tmp_path, device)
