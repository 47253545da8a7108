"""Files saved by an earlier release still load and compute the same outputs.

tests/fixtures/pre_nd_* were written at commit 303ae0b, before the operator took 1 to 3 spatial
dimensions, groups and weight sharing, with torch 2.14.1: a scripted LocallyConnected2d + ReLU
and a scripted LocallyConnected1d (TorchScript), the same 2D model through torch.export with a
dynamic batch, their inputs, outputs and state dicts. The files call the operator by its old
name and schema, lc_cuda::local_conv2d, which must keep working.
"""

from pathlib import Path

import pytest
import torch

import lc_cuda

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SAVED_WITH = (2, 14)  # torch's own file formats do not load into older releases


@pytest.fixture(scope="module")
def expected():
    return torch.load(FIXTURES / "pre_nd_expected.pt")


def test_torchscript_files_load_and_run(expected):
    model = torch.jit.load(FIXTURES / "pre_nd_2d.ts")
    torch.testing.assert_close(model(expected["x2"]), expected["y2"], rtol=1e-12, atol=1e-12)
    layer = torch.jit.load(FIXTURES / "pre_nd_1d.ts")
    torch.testing.assert_close(layer(expected["x1"]), expected["y1"], rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(
    tuple(int(part) for part in torch.__version__.split(".")[:2]) < SAVED_WITH,
    reason=f"saved with torch {SAVED_WITH}, whose export format older releases cannot read",
)
def test_exported_program_loads_and_runs_with_another_batch(expected):
    program = torch.export.load(FIXTURES / "pre_nd_2d.pt2").module()
    x = expected["x2"]
    torch.testing.assert_close(program(x), expected["y2"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(program(x[:1]), expected["y2"][:1], rtol=1e-12, atol=1e-12)


def test_state_dicts_load_into_todays_modules(expected):
    model = torch.nn.Sequential(
        lc_cuda.LocallyConnected2d(
            2, 3, input_size=(6, 5), kernel_size=(3, 2), stride=(1, 2), padding=(1, 0)
        ),
        torch.nn.ReLU(),
    ).double()
    model.load_state_dict(expected["state_2d"])
    torch.testing.assert_close(model(expected["x2"]), expected["y2"], rtol=1e-12, atol=1e-12)
    layer = lc_cuda.LocallyConnected1d(
        2, 4, input_length=9, kernel_size=3, stride=2, padding=1, shared_bias=True
    ).double()
    layer.load_state_dict(expected["state_1d"])
    torch.testing.assert_close(layer(expected["x1"]), expected["y1"], rtol=1e-12, atol=1e-12)
