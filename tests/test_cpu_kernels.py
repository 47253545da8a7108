"""The CPU kernels: every dtype against the float64 oracle, also when the scratch budget cuts the
batch and the output rows into blocks; determinism; 1 against 2 threads; the memory bound; and
LC_CUDA_BACKEND on the CPU."""

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from random_cases import family_case, family_reference, family_results, make_case
from test_backward import check_gradients
from test_forward import check

import lc_cuda
from lc_cuda.reference import allowed_error, reference_local_conv2d, relative_error

# n, c_in, (h, w), c_out, kernel, stride, padding, dilation
GEOMETRIES = {
    "strided_dilated_uneven": (5, 3, (9, 7), 4, (3, 2), (2, 1), (1, 2), (1, 2)),
    "padded_wide_kernel": (7, 2, (8, 11), 3, (4, 3), (1, 2), (0, 1), (2, 1)),
    "one_by_one": (3, 4, (6, 6), 5, (1, 1), (1, 1), (0, 0), (1, 1)),
    # The forward and grad_weight read the input in place in float32 (K = 72, 16 filters, 13
    # samples: under the small budgets grad_weight sums block after block).
    "in_place_padded": (13, 8, (6, 7), 16, (3, 3), (1, 1), (1, 1), (1, 1)),
}
# The default (one block); about 4 samples per block in float32 (with a last, partial block); one
# sample and one location at a time.
BUDGETS_MB = {"default": None, "few_samples": "0.002", "one_sample": "0.00001"}
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture
def budget(monkeypatch, request):
    if BUDGETS_MB[request.param] is not None:
        monkeypatch.setenv("LC_CUDA_CPU_SCRATCH_MB", BUDGETS_MB[request.param])
    else:
        monkeypatch.delenv("LC_CUDA_CPU_SCRATCH_MB", raising=False)
    monkeypatch.delenv("LC_CUDA_BACKEND", raising=False)


@pytest.mark.parametrize("budget", list(BUDGETS_MB), indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", ["shared", "per_location"])
@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_matches_reference_under_blocking(budget, dtype, bias, name):
    n, c_in, size, c_out, kernel, stride, padding, dilation = GEOMETRIES[name]
    tensors = make_case(n, c_in, size, c_out, kernel, stride, padding, dilation, bias, dtype, "cpu")
    check(*tensors, stride, padding, dilation)
    check_gradients(*tensors, stride, padding, dilation)


# Geometries that reach every branch of the vector kernels: a patch whose last vector is partial
# (K = 255, 333, odd for vdpbf16ps' pairs), more kernel columns than one vector holds (17), C_out
# not a multiple of the forward's 4 filters nor of the row tiles' filter blocks (7, 17, 6, 5),
# sample counts that split into uneven blocks (13, 9, 33), padding on every side, and a tiny patch
# (K = 9, the forward by row tiles where the input is contiguous) with a power-of-two plane,
# more samples than vdpbf16ps' grad_filters gathers grad_output pairs for at a time (128), odd,
# and rows of a quarter and of half an AVX-512 vector (4 and 8 columns, strided so that they are
# packed and scattered per location), cut by the padding at both ends; and a forward read in
# place (C_out of 7 AVX-512 vectors: blocks of 4, 2 and 1 of them, 14 AVX2 vectors in blocks of 2;
# 43 samples, which leave a last block of 1 or 3; dilated columns, rows cut by the padding); and
# bfloat16's forward in place by pairs of kernel columns (neighbouring columns; K > 64, past the
# row tiles): rows of 5 (an odd last column; rows starting at odd k), cut by the padding at either
# end (a pair's first or second column alone), C_out of 3 vectors (blocks of 2 and 1), 37 samples
# (last blocks of 5 and 1); and rows of 4 (the pairs as the filters' words), strided, a pair's
# second column alone; and row tiles whose outputs go as whole cache lines (16-bit outputs and
# AVX2's floats: runs of two tiles or more at up to 8 threads, 32-location lines over a plane of
# 2048; C_out of 14 and 7 samples: a partial filter block of 2 filters, its samples in partial
# blocks, 5 and 2 on AVX2, 4, 2 and 1 on AVX-512), bfloat16's row tiles by pairs of an odd kernel
# width (the last column with zeros) and of an even one; and grad_input's sums by sources (16
# filters): an input row of two chunks (the second of 6 columns), dilated kernel columns whose
# first sources fall on the padding and last past the output row, K in blocks of 6 and of 3
# (AVX2) and samples left over after blocks of 4; and the same through the one-pass backward (an
# input row of one chunk, K = 27 in uneven blocks, no padding: sources before the output row);
# and patch rows longer than a 16-bit line (67 columns, over three lines of 32 16-bit elements or
# five of 16 floats, cut by the padding at either end) and rows cut at both ends (a kernel wider
# than the input), packed per location (K > 64, 6 filters, 7 and 3 samples: blocks of 4 and 3);
# and grad_input's runs of locations over two vectors (AVX2: rows of 14, runs of 2 spanning 15 of
# the 16 columns, a run of 4 would not fit), cut by the padding at either end.
# n, c_in, (h, w), c_out, kernel, stride, padding, dilation
VECTOR_PATH_GEOMETRIES = {
    "whole_lines": (7, 2, (32, 64), 14, (3, 3), (1, 1), (1, 1), (1, 1)),
    "even_row_tiles": (5, 3, (6, 40), 6, (2, 4), (1, 1), (1, 1), (1, 1)),
    "in_place": (43, 5, (9, 8), 112, (5, 3), (1, 2), (2, 1), (1, 2)),
    "pairs_in_place": (37, 5, (9, 10), 48, (3, 5), (1, 1), (1, 2), (1, 1)),
    "pairs_in_place_even": (21, 2, (8, 11), 32, (2, 4), (2, 2), (1, 1), (1, 1)),
    "quarter_rows": (7, 3, (9, 20), 5, (3, 4), (1, 2), (1, 2), (1, 1)),
    "half_rows": (6, 2, (8, 23), 6, (2, 8), (2, 2), (1, 3), (1, 1)),
    "many_samples": (131, 2, (5, 4), 3, (2, 2), (1, 1), (0, 1), (1, 1)),
    "wide_kernel": (13, 5, (7, 21), 7, (3, 17), (1, 1), (1, 2), (1, 1)),
    "long_patch": (9, 37, (6, 6), 6, (3, 3), (1, 1), (1, 1), (1, 1)),
    "tiny_patch": (33, 1, (16, 16), 17, (3, 3), (1, 1), (1, 1), (1, 1)),
    "strided_dilated": (6, 4, (11, 10), 5, (3, 3), (2, 1), (2, 1), (2, 2)),
    "source_sums_chunks": (10, 2, (5, 70), 16, (2, 3), (1, 1), (0, 2), (1, 2)),
    "source_sums_dilated": (9, 3, (6, 21), 16, (3, 3), (1, 1), (1, 0), (1, 2)),
    "rows_over_lines": (7, 2, (3, 70), 6, (2, 67), (1, 1), (0, 1), (1, 1)),
    "rows_cut_both_ends": (3, 5, (4, 5), 6, (2, 7), (1, 1), (0, 3), (1, 1)),
    "two_vector_runs": (5, 3, (4, 30), 6, (2, 14), (1, 1), (0, 3), (1, 1)),
}
# (LC_CUDA_CPU_ISA, dtype): every product path of the CPU kernels. float32 on AVX-512 and AVX2;
# bfloat16 by vdpbf16ps (avx512_bf16) and widened to float (avx512, avx2); float16 widened to
# float; the BLAS for each (blas, and LC_CUDA_BACKEND=ffma, which keeps it).
PRODUCT_PATHS = [
    ("avx512", torch.float32),
    ("avx2", torch.float32),
    ("blas", torch.float32),
    ("ffma", torch.float32),
    ("avx512_bf16", torch.bfloat16),
    ("avx512", torch.bfloat16),
    ("avx2", torch.bfloat16),
    ("blas", torch.bfloat16),
    ("avx512", torch.float16),
    ("avx2", torch.float16),
    ("blas", torch.float16),
]


@functools.cache
def cpu_runs(isa):
    """Whether LC_CUDA_CPU_ISA=isa runs on this CPU (forcing an ISA the CPU lacks is an error)."""
    input, weight, _ = make_case(
        1, 1, (4, 4), 1, (2, 2), (1, 1), (0, 0), (1, 1), "none", torch.float32, "cpu"
    )
    previous = os.environ.get("LC_CUDA_CPU_ISA")
    os.environ["LC_CUDA_CPU_ISA"] = isa
    try:
        lc_cuda.local_conv2d(input, weight)
        return True
    except RuntimeError as error:
        if "needs a CPU with" in str(error):
            return False
        raise
    finally:
        if previous is None:
            os.environ.pop("LC_CUDA_CPU_ISA", None)
        else:
            os.environ["LC_CUDA_CPU_ISA"] = previous


def use_product_path(monkeypatch, isa):
    """LC_CUDA_CPU_ISA=isa (skipped where this CPU lacks it), or LC_CUDA_BACKEND=ffma; the
    default scratch budget."""
    if isa == "ffma":
        monkeypatch.setenv("LC_CUDA_BACKEND", "ffma")
        monkeypatch.delenv("LC_CUDA_CPU_ISA", raising=False)
    elif not cpu_runs(isa):
        pytest.skip(f"this CPU does not run LC_CUDA_CPU_ISA={isa}")
    else:
        monkeypatch.setenv("LC_CUDA_CPU_ISA", isa)
        monkeypatch.delenv("LC_CUDA_BACKEND", raising=False)
    monkeypatch.delenv("LC_CUDA_CPU_SCRATCH_MB", raising=False)


def assert_within_allowed_error(got, expected, fallback, dtype):
    """Output and gradients (got) against the oracle's (expected): in dtype, of the same shape,
    within allowed_error (against the fallback's error, where given, in float16 and bfloat16)."""
    for what, g, e, f in zip(("output", "input", "weight", "bias"), got, expected, fallback):
        assert g.dtype == dtype and g.shape == e.shape, what
        allowed = allowed_error(dtype, None if f is None else relative_error(f, e))
        error = relative_error(g, e)
        assert error <= allowed, f"{what}: relative error {error:.3g} > {allowed:.3g}"


def outputs_and_gradients(function, input, weight, bias, grad_output, args):
    leaves = [t.detach().requires_grad_() for t in (input, weight, bias)]
    out = function(*leaves, *args)
    return [out.detach(), *torch.autograd.grad(out, leaves, grad_output.to(out.dtype))]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("name", sorted(VECTOR_PATH_GEOMETRIES))
@pytest.mark.parametrize("isa, dtype", PRODUCT_PATHS, ids=lambda v: str(v).replace("torch.", ""))
def test_product_paths_match_reference(monkeypatch, isa, dtype, layout, name):
    """Each ISA and dtype against the float64 oracle, output and the three gradients: float32
    within RELATIVE_TOLERANCE, bfloat16 and float16 within allowed_error (twice the unfold
    fallback's error at the same precision, at least a rounding step). The vectorised packing runs
    on contiguous rows (dilation_w 1), the portable one on channels-last input."""
    use_product_path(monkeypatch, isa)
    n, c_in, size, c_out, kernel, stride, padding, dilation = VECTOR_PATH_GEOMETRIES[name]
    input, weight, bias = make_case(
        n, c_in, size, c_out, kernel, stride, padding, dilation, "per_location", dtype, "cpu"
    )
    if layout == "channels_last":
        input = input.contiguous(memory_format=torch.channels_last)
    out_h, out_w = weight.shape[:2]
    grad_output = torch.randn(
        (n, c_out, out_h, out_w), generator=torch.Generator().manual_seed(1), dtype=torch.float64
    ).to(dtype)
    args = (stride, padding, dilation)
    pads = (padding[0], padding[0], padding[1], padding[1])
    expected = outputs_and_gradients(
        reference_local_conv2d,
        input.double(),
        weight.double(),
        bias.double(),
        grad_output.double(),
        (stride, pads, dilation),
    )
    got = outputs_and_gradients(lc_cuda.local_conv2d, input, weight, bias, grad_output, args)
    fallback = (
        outputs_and_gradients(lc_cuda.unfold_local_conv2d, input, weight, bias, grad_output, args)
        if dtype in (torch.bfloat16, torch.float16)
        else [None] * 4
    )
    assert_within_allowed_error(got, expected, fallback, dtype)


# The rest of the operator family on the same kernels, each geometry reaching its branches: 3D
# windows that cross the padding in depth, with a patch short enough for the row tiles (54) and
# one too long (135) over more than one tile per row; channel groups with blocks of shared
# weights whose last block is partial and wider than a tile (18 > 16 locations); depthwise
# (a channel multiplier of 2) with a period; one region over the whole output (grad_weight in
# chunks of member rows); a long 1D patch shared in partial blocks; a 3D period with groups; a
# long patch (108) with 2 filters, which the row tiles take several samples at a time (7: 4, 2
# and 1 on AVX-512, 5 and 2 on AVX2).
# dims: n, c_in, size, c_out, kernel, stride, padding (before, after), dilation, groups, sharing
FAMILY_PATH_GEOMETRIES = {
    "volume_padded": (5, 3, (6, 7, 9), 4, (3, 2, 3), (1, 1, 1), ((1, 1), (0, 1), (1, 0)),
                      (2, 1, 1), 1, {}),
    "volume_long_patch": (7, 5, (5, 6, 20), 6, (3, 3, 3), (2, 1, 1), ((1, 1),) * 3, (1, 1, 1),
                          1, {}),
    "groups_shared_blocks": (9, 6, (11, 22), 6, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 3,
                             {"share_block": (4, 18)}),
    "depthwise_period": (13, 4, (9, 19), 8, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 4,
                         {"share_period": (2, 3)}),
    "one_region": (17, 5, (12, 10), 7, (3, 3), (1, 1), ((0, 0), (0, 0)), (1, 1), 1,
                   {"share_block": (10, 8)}),
    "long_patch_1d_blocks": (6, 9, (40,), 5, (9,), (1,), ((2, 0),), (1,), 1,
                             {"share_block": (7,)}),
    "volume_groups_period": (4, 4, (5, 5, 18), 2, (3, 3, 3), (1, 1, 2), ((1, 1),) * 3,
                             (1, 1, 1), 2, {"share_period": (1, 2, 3)}),
    "volume_few_filters": (7, 4, (4, 5, 19), 2, (3, 3, 3), (1, 1, 1), ((1, 1),) * 3, (1, 1, 1),
                           1, {}),
    # Rows long enough that the forward takes them in runs of several row tiles (4 at 2
    # threads, the last run a single partial tile), padded and dilated at both ends, and a batch
    # that leaves partial sample blocks.
    "long_row_1d_runs": (19, 2, (1100,), 2, (5,), (1,), ((3, 2),), (2,), 1, {}),
    "wide_rows_2d_runs": (6, 2, (24, 50), 3, (3, 3), (1, 1), ((1, 1), (2, 0)), (1, 2), 1, {}),
    # Runs of tiles over grouped and shared weights (each tile's regions and channel groups).
    "long_row_1d_runs_groups_blocks": (9, 4, (900,), 4, (3,), (1,), ((1, 1),), (1,), 2,
                                       {"share_block": (5,)}),
    "long_row_1d_runs_period": (7, 2, (700,), 2, (5,), (1,), ((2, 2),), (1,), 1,
                                {"share_period": (3,)}),
    # One filter per group and 27 patch rows: grad_input holds grad_output in registers
    # (grad_input_rows_held) on AVX-512, two samples then one, two vectors of columns then a
    # partial one, over kernel columns read 2 apart.
    "volume_one_filter_held": (5, 6, (4, 5, 37), 2, (3, 3, 3), (1, 1, 1), ((1, 1),) * 3,
                               (1, 1, 2), 2, {}),
    # The same with a batch that 2 threads split by samples (8 or more each), not by phases.
    "volume_one_filter_held_samples": (17, 2, (3, 4, 20), 1, (3, 3, 3), (1, 1, 1),
                                       ((1, 1),) * 3, (1, 1, 1), 1, {}),
    # The forward read in place with channel groups (16 filters each) and blocks of shared
    # weights, the last partial.
    "in_place_groups_blocks": (18, 16, (7, 9), 32, (3, 3), (1, 1), ((1, 1), (0, 1)), (1, 1), 2,
                               {"share_block": (2, 4)}),
    # ...and without sharing in 3D (grad_weight in place too).
    "in_place_volume_groups": (10, 8, (3, 4, 6), 32, (2, 3, 3), (1, 1, 1),
                               ((1, 0), (1, 1), (1, 1)), (1, 1, 1), 2, {}),
    # The backward in one pass (csrc/cpu/backward_rows.cpp: a grad_output at least twice the
    # input, input rows of at most 64): a batch of 17 (a block of 16 samples and one), three row
    # tiles the last partial (cunn232_c1's shape, smaller)...
    "one_pass_planes": (17, 1, (9, 37), 4, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 1, {}),
    # ...padding wider than the kernel's span (the staged row starts at output column 0)...
    "one_pass_wide_padding_1d": (5, 1, (20,), 3, (3,), (1,), ((4, 3),), (1,), 1, {}),
    # ...channel groups, dilated kernel columns, 3D...
    "one_pass_groups_dilated_3d": (3, 2, (3, 4, 21), 8, (2, 2, 3), (1, 1, 1),
                                   ((1, 0), (1, 1), (2, 2)), (1, 1, 2), 2, {}),
    # ...and one filter with 18 patch rows (grad_input holds grad_output in registers), planes
    # of 5 rows in blocks of two planes (a plane's last row never paired with the next plane's
    # first)...
    "one_pass_held": (5, 2, (1, 3, 10), 1, (3, 3, 3), (1, 1, 1), ((2, 2), (2, 2), (1, 1)),
                      (1, 1, 1), 1, {}),
    # ...and grad_input's sums by sources (16 filters a group) with two groups in 3D, padding
    # wider than the kernel's span before the row, and samples left after a block of 4.
    "one_pass_sources_groups_3d": (6, 2, (3, 4, 21), 32, (2, 2, 3), (1, 1, 1),
                                   ((1, 0), (1, 1), (4, 3)), (1, 1, 1), 2, {}),
}  # fmt: skip
ONE_PASS = [name for name in FAMILY_PATH_GEOMETRIES if name.startswith("one_pass")]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("name", sorted(FAMILY_PATH_GEOMETRIES))
@pytest.mark.parametrize("isa, dtype", PRODUCT_PATHS, ids=lambda v: str(v).replace("torch.", ""))
def test_family_product_paths_match_reference(monkeypatch, isa, dtype, layout, name):
    """3D, groups and shared weights on each ISA and dtype against the float64 oracle, output and
    the three gradients, as test_product_paths_match_reference."""
    use_product_path(monkeypatch, isa)
    tensors, call, unfold, oracle = family_case(FAMILY_PATH_GEOMETRIES[name], dtype, "cpu", 3)
    if layout == "channels_last":  # channels innermost, in any number of dimensions
        tensors[0] = tensors[0].movedim(1, -1).contiguous().movedim(-1, 1)
    got, expected = family_results(tensors, call), family_reference(tensors, oracle)
    half = dtype in (torch.bfloat16, torch.float16)
    fallback = family_results(tensors, unfold) if half else [None] * 4
    assert_within_allowed_error(got, expected, fallback, dtype)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(
    "layout", ["contiguous", "channels_last", "rows_apart", "nan_between_rows"]
)
@pytest.mark.parametrize("name", ONE_PASS)
@pytest.mark.parametrize(
    "isa, dtype",
    [("avx512", torch.float32), ("avx2", torch.float32), ("avx512_bf16", torch.bfloat16)],
    ids=lambda v: str(v).replace("torch.", ""),
)
def test_backward_in_one_pass_matches_the_separate_passes(
    monkeypatch, isa, dtype, name, layout, threads
):
    """The three gradients in one pass over grad_output equal, to the bit, each gradient asked
    for alone (its own pass), shared and per-location bias alike; grad_output contiguous (two
    rows of a plane staged together), channels-last (staged element by element), with its
    channels between its rows (where there are several, each row's runs a row of every channel
    apart: a row at a time), or with a NaN before and after each row (a read outside a row, even
    one multiplied by a zero filter, makes a NaN that no result may hold)."""
    use_product_path(monkeypatch, isa)
    tensors, *_ = family_case(FAMILY_PATH_GEOMETRIES[name], dtype, "cpu", 4)
    n, _, size, c_out, _, stride, pairs, dilation, groups, _ = FAMILY_PATH_GEOMETRIES[name]
    input, weight = tensors[0], tensors[1]
    dims = len(size)
    generator = torch.Generator().manual_seed(8)
    grad_output = torch.randn((n, c_out, *weight.shape[:dims]), generator=generator).to(dtype)
    if layout == "channels_last":
        grad_output = grad_output.movedim(1, -1).contiguous().movedim(-1, 1)
    elif layout == "rows_apart":  # (N, ..., H, C_out, W) in memory
        grad_output = grad_output.movedim(1, -2).contiguous().movedim(-2, 1)
    elif layout == "nan_between_rows":
        padded = torch.full((*grad_output.shape[:-1], grad_output.shape[-1] + 2), float("nan"))
        padded = padded.to(dtype)
        padded[..., 1:-1] = grad_output
        grad_output = padded[..., 1:-1]
    padding = [side for pair in pairs for side in pair]
    args = (stride, padding, dilation, groups, [1] * dims, "block")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for shared_bias in (False, True):
            backward = functools.partial(
                torch.ops.lc_cuda.local_conv_backward, grad_output, input, weight, *args,
                shared_bias,
            )  # fmt: skip
            together = backward([True, True, True])
            for k, what in enumerate(("grad_input", "grad_weight", "grad_bias")):
                alone = backward([k == 0, k == 1, k == 2])[k]
                assert torch.equal(together[k], alone), f"{what}, shared_bias={shared_bias}"
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("budget", ["few_samples", "one_sample"], indirect=True)
@pytest.mark.parametrize("name", sorted(FAMILY_PATH_GEOMETRIES))
def test_family_in_blocks_matches_reference(budget, name):
    """The family's geometries with the batch cut into sample blocks (and one location at a
    time), float32, against the oracle."""
    tensors, call, _, oracle = family_case(FAMILY_PATH_GEOMETRIES[name], torch.float32, "cpu", 3)
    got, expected = family_results(tensors, call), family_reference(tensors, oracle)
    for what, g, e in zip(("output", "input", "weight", "bias"), got, expected):
        error = relative_error(g, e)
        assert error <= allowed_error(torch.float32), f"{what}: relative error {error:.3g}"


# A geometry the backward takes by output rows (K = 36, 16 filters), with budgets (for 2 threads)
# that fit a row tile's grad_weight sums and a few samples per thread (grad_weight's sums carried
# across sample blocks; grad_input per location), and grad_input's staged filters of a row chunk
# and a few samples (grad_input by rows in sample blocks; grad_weight in one block).
ROW_TILES_IN_BLOCKS = (13, 4, (5, 20), 16, (3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), 1, {})


@pytest.mark.parametrize("budget_mb", ["0.1", "0.19"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_row_tiles_in_sample_blocks_match_reference(monkeypatch, dtype, budget_mb):
    monkeypatch.setenv("LC_CUDA_CPU_SCRATCH_MB", budget_mb)
    monkeypatch.delenv("LC_CUDA_BACKEND", raising=False)
    tensors, call, unfold, oracle = family_case(ROW_TILES_IN_BLOCKS, dtype, "cpu", 5)
    got, expected = family_results(tensors, call), family_reference(tensors, oracle)
    half = dtype == torch.bfloat16
    fallback = family_results(tensors, unfold) if half else [None] * 4
    assert_within_allowed_error(got, expected, fallback, dtype)


@pytest.mark.parametrize("budget", ["few_samples", "one_sample"], indirect=True)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fallback_in_sample_blocks_matches_reference(budget, monkeypatch, dtype):
    """The unfold fallback keeps its patches within the same budget by taking the batch in
    blocks of samples."""
    monkeypatch.setenv("LC_CUDA_BACKEND", "unfold")
    n, c_in, size, c_out, kernel, stride, padding, dilation = GEOMETRIES["padded_wide_kernel"]
    tensors = make_case(
        n, c_in, size, c_out, kernel, stride, padding, dilation, "per_location", dtype, "cpu"
    )
    check(*tensors, stride, padding, dilation)
    check_gradients(*tensors, stride, padding, dilation)


# n, c_in, (h, w), c_out: the row tiles' (K = 27) and, in float32, the input read in place (K =
# 72, 16 filters).
THREAD_GEOMETRIES = {"row_tiles": (3, (12, 10), 6), "in_place": (8, (7, 6), 16)}


def thread_case(n, dtype, geometry, seed=0):
    """Input, weight and per-location bias of a THREAD_GEOMETRIES layer (3x3 kernel, padding 1)."""
    c_in, size, c_out = THREAD_GEOMETRIES[geometry]
    return make_case(
        n, c_in, size, c_out, (3, 3), (1, 1), (1, 1), (1, 1), "per_location", dtype, "cpu", seed
    )


def forward_and_gradients(seed=0, n=9, dtype=torch.float32, geometry="row_tiles"):
    leaves = [t.requires_grad_() for t in thread_case(n, dtype, geometry, seed)]
    out = lc_cuda.local_conv2d(*leaves, 1, 1)
    grad_output = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1))
    return (out.detach(), *torch.autograd.grad(out, leaves, grad_output.to(dtype)))


@pytest.mark.parametrize("budget", ["default", "one_sample"], indirect=True)
def test_deterministic_from_run_to_run(budget):
    first, second = forward_and_gradients(), forward_and_gradients()
    for name, a, b in zip(("output", "input", "weight", "bias"), first, second):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("geometry", sorted(THREAD_GEOMETRIES))
@pytest.mark.parametrize("n", [9, 40])
@pytest.mark.parametrize("budget", ["default", "few_samples"], indirect=True)
def test_one_and_two_threads_agree(budget, n, geometry):
    """Every sum runs in an order fixed by the geometry and the sample block, and threads split
    the work without sharing sums: bitwise equal where the batch is one block at both thread
    counts. A smaller budget gives each of 2 threads half of it, so smaller sample blocks, which
    changes the BLAS's rounding: equal up to float32 rounding there. At 40 samples in one block,
    2 threads split grad_input's samples between them, 1 thread takes its rows in phases."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = forward_and_gradients(n=n, geometry=geometry)
        torch.set_num_threads(2)
        two = forward_and_gradients(n=n, geometry=geometry)
    finally:
        torch.set_num_threads(threads)
    for name, a, b in zip(("output", "input", "weight", "bias"), one, two):
        if os.environ.get("LC_CUDA_CPU_SCRATCH_MB") is None:
            assert torch.equal(a, b), name
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("isa", ["avx512", "avx2"])
def test_grad_input_by_runs_is_the_same_at_any_budget_and_thread_count(monkeypatch, isa):
    """grad_input adds the patch gradients of runs of neighbouring locations at once (4 on
    AVX-512, 2 on AVX2 at this stride), summed first: the runs must start at the same output
    columns whatever the tile, which a tight budget shrinks (to one run) and which the thread
    count changes (each thread takes its share of the budget). One sample, one block: bitwise
    equal at 1 and 2 threads, at the default budget and at ones that shrink the tile."""
    use_product_path(monkeypatch, isa)
    gen = torch.Generator().manual_seed(0)
    # K = 72 and 32 filters at stride_w 2: per location, by runs; a 3 x 19 output.
    input = torch.randn(1, 8, 5, 40, generator=gen)
    weight = torch.randn(3, 19, 32, 8, 3, 3, generator=gen)
    grad_output = torch.randn(1, 32, 3, 19, generator=gen)

    def grad_input():
        leaf = input.clone().requires_grad_()
        out = lc_cuda.local_conv2d(leaf, weight, None, stride=(1, 2))
        return torch.autograd.grad(out, leaf, grad_output)[0]

    threads = torch.get_num_threads()
    results = {}
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            for budget in (None, "0.006", "0.003"):
                if budget is None:
                    monkeypatch.delenv("LC_CUDA_CPU_SCRATCH_MB", raising=False)
                else:
                    monkeypatch.setenv("LC_CUDA_CPU_SCRATCH_MB", budget)
                results[(count, budget)] = grad_input()
    finally:
        torch.set_num_threads(threads)
    first = results[(1, None)]
    for key, result in results.items():
        assert torch.equal(result, first), key
    leaf = input.double().requires_grad_()
    out = reference_local_conv2d(leaf, weight.double(), None, (1, 2), (0, 0, 0, 0), (1, 1))
    expected = torch.autograd.grad(out, leaf, grad_output.double())[0]
    assert relative_error(first, expected) <= allowed_error(torch.float32)


def test_grad_weight_in_place_in_sample_blocks_is_bitwise_the_same(monkeypatch):
    """grad_weight read in place sums sample after sample: where a budget cuts the batch into
    sample blocks (each block's sums transposed back in and summed on), the result is the one
    block's to the bit, and within float32 rounding of the float64 oracle."""
    one_block = forward_and_gradients(n=40, geometry="in_place")
    # 0.04 MiB: the transposed filters (4.5 KiB) within an eighth; each of 2 threads holds a tile
    # of 6 locations' staged grad_output for 36 samples, so the batch goes as 36 and 4.
    monkeypatch.setenv("LC_CUDA_CPU_SCRATCH_MB", "0.04")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        in_blocks = forward_and_gradients(n=40, geometry="in_place")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one_block[2], in_blocks[2])
    leaves = [t.double().requires_grad_() for t in thread_case(40, torch.float32, "in_place")]
    out = reference_local_conv2d(*leaves, (1, 1), (1, 1, 1, 1), (1, 1))
    grad_output = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).double()
    expected = torch.autograd.grad(out, leaves[1], grad_output)[0]
    assert relative_error(in_blocks[2], expected) <= allowed_error(torch.float32)


def test_grad_weight_pairs_in_sample_blocks_is_bitwise_the_same(monkeypatch):
    """bfloat16's grad_weight by pairs of samples (AVX512-BF16) sums two samples at a time,
    paired across the whole batch: where a budget cuts the batch into sample blocks, each block
    takes an even count (the pass's 9 cut to 8 here), so every pair stays whole and the result
    is the one block's to the bit; and within bfloat16's error of the float64 oracle (an even
    batch: the last pair has both samples). K = 72, past the row tiles."""
    use_product_path(monkeypatch, "avx512_bf16")

    def grad_weight(input, weight, grad_output):
        leaf = weight.detach().requires_grad_()
        out = lc_cuda.local_conv2d(input, leaf, None, 1, 1)
        return torch.autograd.grad(out, leaf, grad_output)[0]

    input, weight, _ = make_case(
        60, 8, (8, 8), 64, (3, 3), (1, 1), (1, 1), (1, 1), "none", torch.bfloat16, "cpu"
    )
    grad_output = torch.randn((60, 64, 8, 8), generator=torch.Generator().manual_seed(1)).to(
        torch.bfloat16
    )
    one_block = grad_weight(input, weight, grad_output)
    # 0.4 MiB at 2 threads: the paired input (60 KiB) within a quarter; blocks of 8 samples.
    monkeypatch.setenv("LC_CUDA_CPU_SCRATCH_MB", "0.4")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        in_blocks = grad_weight(input, weight, grad_output)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one_block, in_blocks)
    leaf = weight.double().requires_grad_()
    out = reference_local_conv2d(input.double(), leaf, None, (1, 1), (1, 1, 1, 1), (1, 1))
    expected = torch.autograd.grad(out, leaf, grad_output.double())[0]
    fallback_weight = weight.detach().requires_grad_()
    fallback_out = lc_cuda.unfold_local_conv2d(input, fallback_weight, None, 1, 1)
    fallback = torch.autograd.grad(fallback_out, fallback_weight, grad_output)
    allowed = allowed_error(torch.bfloat16, relative_error(fallback[0], expected))
    assert relative_error(in_blocks, expected) <= allowed


PEAK_SCRIPT = """
import sys, torch
sys.path.insert(0, {benchmarks!r})
import host_memory, lc_cuda
torch.manual_seed(0)
x = torch.randn(64, 16, 25, 25, requires_grad=True)
w = torch.randn(21, 21, 16, 16, 5, 5, requires_grad=True)
b = torch.randn(16, 21, 21, requires_grad=True)
g = torch.randn(64, 16, 21, 21)
function = lc_cuda.unfold_local_conv2d if sys.argv[1] == "unfold" else lc_cuda.local_conv2d
def call():
    return torch.autograd.grad(function(x, w, b), (x, w, b), g)
call()
print(min(host_memory.peak_extra_bytes(call) for _ in range(3)))
"""


def peak_extra_bytes(method, budget_mb):
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", LC_CUDA_CPU_SCRATCH_MB=str(budget_mb))
    benchmarks = str(Path(__file__).resolve().parents[1] / "benchmarks")
    run = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT.format(benchmarks=benchmarks), method],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    return int(run.stdout.split()[-1])


def test_packed_scratch_stays_within_a_one_location_budget(monkeypatch):
    """The forward and grad_weight pack up to kPackLocations neighbouring locations at once;
    under a budget that holds one sample at one location on each of 2 threads, the scratch they
    take stays within it (packing one location at a time), as LC_CUDA_CPU_SCRATCH_MB promises.
    float32, K = 72 (past the row tiles), 4 filters (too few to read the input in place): the
    packed path. Every allocation of the call but its output (or gradient) is the scratch."""
    input, weight, _ = make_case(
        5, 8, (10, 10), 4, (3, 3), (1, 1), (0, 0), (1, 1), "none", torch.float32, "cpu"
    )
    budget_mb = 0.003  # 3145 bytes; one sample at one location takes 1024 a thread
    monkeypatch.setenv("LC_CUDA_CPU_SCRATCH_MB", str(budget_mb))

    def allocations(call):
        activities = [torch.profiler.ProfilerActivity.CPU]
        with torch.profiler.profile(activities=activities, profile_memory=True) as profile:
            result = call()
        sizes = {e.cpu_memory_usage for e in profile.events() if e.name == "aten::empty"}
        return result, {size for size in sizes if size > 0}

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with torch.no_grad():
            out, forward_sizes = allocations(lambda: lc_cuda.local_conv2d(input, weight, None))
        leaf = weight.detach().requires_grad_()
        grad_output = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        grad, backward_sizes = allocations(
            lambda: torch.autograd.grad(lc_cuda.local_conv2d(input, leaf, None), leaf, grad_output)
        )
    finally:
        torch.set_num_threads(threads)
    budget = int(budget_mb * 2**20)
    results = {out.numel() * 4, grad[0].numel() * 4}
    assert forward_sizes - results and backward_sizes - results  # the scratch was seen
    assert max(forward_sizes - results) <= budget, sorted(forward_sizes)
    assert max(backward_sizes - results) <= budget, sorted(backward_sizes)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_extra_memory_stays_within_the_budget():
    """Forward + backward of a DeepFace L6 layer at N=64: with a budget larger than the layer
    needs, the fallback's patches and their gradient take ~40 MB; under a 2 MB budget the CPU
    kernels and the fallback (in blocks of samples) both stay within it plus what the call
    returns and keeps (output, the three gradients: ~15 MB)."""
    outputs = 4 * (64 * 16 * 21 * 21 + 64 * 16 * 25 * 25 + 21 * 21 * 16 * 16 * 25 + 16 * 21 * 21)
    budget = 2 * 2**20
    slack = 2 * 2**20  # the allocator's and the profiler-free bookkeeping's own pages
    for method in ("kernels", "unfold"):
        peak = peak_extra_bytes(method, 2)
        assert peak <= outputs + budget + slack, (method, peak, outputs)
    unbounded = peak_extra_bytes("unfold", 4096)
    assert unbounded > outputs + 30 * 2**20, unbounded  # the measurement sees the patches


def test_unfold_backend_runs_the_fallback_on_the_cpu(monkeypatch):
    input, weight, bias = make_case(
        2, 3, (6, 6), 4, (3, 3), (1, 1), (1, 1), (1, 1), "per_location", torch.float32, "cpu"
    )

    def ops_run():
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            lc_cuda.local_conv2d(input, weight, bias, 1, 1)
        return {event.name for event in profile.events()}

    monkeypatch.setenv("LC_CUDA_BACKEND", "unfold")
    assert "aten::baddbmm" in ops_run()
    monkeypatch.setenv("LC_CUDA_BACKEND", "auto")
    assert not {"aten::bmm", "aten::baddbmm"} & ops_run()


# The megabyte settings (cpu_blocking.h: megabytes_setting), each with the values it refuses and
# the words of its error.
BAD_MEGABYTES = [
    *(("LC_CUDA_CPU_SCRATCH_MB", v, "a positive number") for v in ("abc", "0", "-1", "nan")),
    *(("LC_CUDA_CPU_KEEP_MB", v, "a non-negative number") for v in ("abc", "-1", "nan")),
]


@pytest.mark.parametrize("name, value, expected", BAD_MEGABYTES)
def test_bad_megabyte_setting_is_an_error(monkeypatch, name, value, expected):
    monkeypatch.setenv(name, value)
    input, weight, _ = make_case(
        1, 1, (4, 4), 1, (2, 2), (1, 1), (0, 0), (1, 1), "none", torch.float32, "cpu"
    )
    with pytest.raises(RuntimeError, match=f"{name} must be {expected}"):
        lc_cuda.local_conv2d(input, weight)


# grad_bias goes in pieces of at most 4096 of a channel's locations: of its whole plane where
# grad_output's plane is dense, else of one output row.
@pytest.mark.parametrize("shared_bias", [False, True], ids=["per_location", "shared"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("spatial", [(9000,), (3, 2, 4100)], ids=["1d_9000", "3d_rows_4100"])
def test_grad_bias_in_pieces_matches_reference(spatial, layout, shared_bias):
    batch, out_channels = 3, 2
    generator = torch.Generator().manual_seed(5)
    grad_output = torch.randn(batch, out_channels, *spatial, generator=generator)
    if layout == "channels_last":
        grad_output = grad_output.movedim(1, -1).contiguous().movedim(-1, 1)
    elif layout == "strided":
        wide = torch.randn(batch, out_channels, *spatial[:-1], 2 * spatial[-1], generator=generator)
        grad_output = wide[..., ::2]
    dims = len(spatial)
    # A one-channel input with a kernel of one: the output has the input's sizes.
    input = torch.randn(batch, 1, *spatial, generator=generator)
    weight = torch.randn(*spatial, out_channels, 1, *[1] * dims, generator=generator)
    grad_bias = torch.ops.lc_cuda.local_conv_backward(
        grad_output, input, weight, [1] * dims, [0] * (2 * dims), [1] * dims, 1, [1] * dims,
        "block", shared_bias, [False, False, True],
    )[2]  # fmt: skip
    expected = grad_output.double().sum(0)
    if shared_bias:
        expected = expected.flatten(1).sum(1)
    assert grad_bias.shape == expected.shape
    assert relative_error(grad_bias, expected) <= allowed_error(torch.float32)


# Outputs of 1 MiB and more come from blocks kept when their tensors are freed
# (csrc/cpu/output_memory.h); here grad_weight, 5 floats a location: 1.2 MB (a block on a cache
# line) and 36 MB (on huge pages, and above glibc's largest mmap threshold).
KEPT_OUTPUTS = {
    "1.2MB": (1, 1, (60_004,), 1, (5,), (1,), ((0, 0),), (1,), 1, {}),
    "36MB": (1, 1, (1_800_004,), 1, (5,), (1,), ((0, 0),), (1,), 1, {}),
}


@pytest.mark.parametrize("size", sorted(KEPT_OUTPUTS))
@pytest.mark.parametrize("keep_mb", [None, "0"], ids=["default", "keep_none"])
def test_outputs_in_kept_blocks_match_reference(monkeypatch, keep_mb, size):
    """A freed grad_weight's block comes back for the next one of its size (by default) and is
    written in full; a live one's block is never handed out again."""
    monkeypatch.delenv("LC_CUDA_BACKEND", raising=False)
    monkeypatch.delenv("LC_CUDA_CPU_SCRATCH_MB", raising=False)
    if keep_mb is None:
        monkeypatch.delenv("LC_CUDA_CPU_KEEP_MB", raising=False)
    else:
        monkeypatch.setenv("LC_CUDA_CPU_KEEP_MB", keep_mb)
    first, call, _, oracle = family_case(KEPT_OUTPUTS[size], torch.float32, "cpu", 11)
    second = family_case(KEPT_OUTPUTS[size], torch.float32, "cpu", 12)[0]
    block_bytes = first[1].numel() * first[1].element_size()

    def grad_weight(tensors, function=call):
        input, weight, bias = tensors
        weight = weight.detach().requires_grad_()
        out = function(input, weight, bias)
        return torch.autograd.grad(out, weight, torch.ones_like(out))[0]

    expected = [grad_weight([t.double() for t in tensors], oracle) for tensors in (first, second)]
    grad_weight(first)  # freed at once, its block kept
    got = grad_weight(second)
    address = got.data_ptr()
    assert relative_error(got, expected[1]) <= allowed_error(torch.float32)
    del got
    got = grad_weight(first)
    if keep_mb is None:
        assert got.data_ptr() == address, "the freed grad_weight's block was not kept"
    live = grad_weight(second)
    assert live.data_ptr() != got.data_ptr()
    for result, reference in zip((got, live), expected):
        assert relative_error(result, reference) <= allowed_error(torch.float32)
    del got, live, result
    kept = lc_cuda._C.kept_output_bytes()
    # Two grad_weight blocks by default (the newest kept ones at least); none where nothing is
    # kept.
    assert kept >= 2 * block_bytes if keep_mb is None else kept == 0, (kept, block_bytes)
    # Lowering the limit frees what is kept beyond it at the next call.
    monkeypatch.setenv("LC_CUDA_CPU_KEEP_MB", "0")
    call(first[0][:, :, :100], first[1][:96], first[2][:, :96])
    assert lc_cuda._C.kept_output_bytes() == 0, "kept blocks outlived a lowered limit"


@pytest.mark.parametrize("value", ["avx", "AVX2", "avx512bf16", "amx"])
def test_bad_cpu_isa_is_an_error(monkeypatch, value):
    monkeypatch.setenv("LC_CUDA_CPU_ISA", value)
    input, weight, _ = make_case(
        1, 1, (4, 4), 1, (2, 2), (1, 1), (0, 0), (1, 1), "none", torch.float32, "cpu"
    )
    expected = (
        "LC_CUDA_CPU_ISA must be 'auto', 'avx512_bf16', 'avx512', 'avx2' or 'blas' "
        f"\\(or unset\\), got '{value}'"
    )
    with pytest.raises(RuntimeError, match=expected):
        lc_cuda.local_conv2d(input, weight)


def test_bad_backend_is_an_error_on_the_cpu(monkeypatch):
    monkeypatch.setenv("LC_CUDA_BACKEND", "cudnn")
    input, weight, _ = make_case(
        1, 1, (4, 4), 1, (2, 2), (1, 1), (0, 0), (1, 1), "none", torch.float32, "cpu"
    )
    with pytest.raises(RuntimeError, match="LC_CUDA_BACKEND must be 'auto', 'ffma' or 'unfold'"):
        lc_cuda.local_conv2d(input, weight)


@pytest.mark.skipif(
    not (sys.platform.startswith("linux") and torch.backends.openmp.is_available()),
    reason="setup.py builds with OpenMP on Linux where torch has it",
)
def test_built_with_openmp():
    """at::parallel_for is a header template: in a library built without OpenMP it runs every
    CPU kernel's loop on one thread, whatever torch.set_num_threads says."""
    assert lc_cuda.build_info()["openmp"]
