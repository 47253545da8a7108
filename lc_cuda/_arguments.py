"""The Python arguments of lc_cuda's functions and layers, turned into the operators' arguments.

Every function and layer takes sizes as an int or one int per spatial dimension, padding also as
(before, after) pairs, 'valid' or 'same', and weight sharing as share_block or share_period. This
module checks them (errors name the argument, with the value got and the one expected) and
computes what follows from them: the operators' flat padding (before, after per dimension), the
output size, and the weight's region sizes.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

IntOrSeq = int | Sequence[int]
# An int (both sides of every dimension), one per dimension, or a (before, after) pair per
# dimension, or 'valid' / 'same'.
Padding = int | Sequence[int] | Sequence[Sequence[int]] | str

DIM_NAMES = {1: ("length",), 2: ("height", "width"), 3: ("depth", "height", "width")}


def as_int(value, name: str) -> int:
    """An int-like value (int, numpy integer, 0-d integer tensor) as an int; bools are refused."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {value!r}") from None


def ntuple(value: IntOrSeq, n: int, name: str) -> tuple[int, ...]:
    """An int, or a sequence of n ints, as an n-tuple; `name` goes into the error message."""
    if not isinstance(value, Sequence) or isinstance(value, str):
        try:
            return (as_int(value, name),) * n
        except TypeError:
            pass
    elif len(value) == n:
        try:
            return tuple(as_int(v, name) for v in value)
        except TypeError:
            pass
    expected = "an int" if n == 1 else f"an int or a sequence of {n} ints"
    raise TypeError(f"{name} must be {expected}, got {value!r}")


def same_padding(kernel_size: int, dilation: int) -> tuple[int, int]:
    """(before, after) padding that keeps the size at stride 1. For an even span the extra
    element goes after, as Conv2d does."""
    total = dilation * (kernel_size - 1)
    return total // 2, total - total // 2


def padding_pairs(
    padding: Padding, n: int, kernel_size: Sequence[int], dilation: Sequence[int]
) -> tuple[tuple[int, int], ...]:
    """(before, after) per spatial dimension, from any accepted form of padding."""
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * n
        if padding == "same":
            return tuple(same_padding(k, d) for k, d in zip(kernel_size, dilation))
        forms = "an int, a sequence, (before, after) pairs, 'valid' or 'same'"
        raise ValueError(f"padding must be {forms}, got {padding!r}")
    if (
        isinstance(padding, Sequence)
        and len(padding) == n
        and all(isinstance(p, Sequence) and not isinstance(p, str) for p in padding)
    ):
        pairs = []
        for pair in padding:
            if len(pair) != 2:
                raise TypeError(
                    f"padding must give (before, after) for each of the {n} spatial dimensions, "
                    f"got {padding!r}"
                )
            pairs.append(tuple(as_int(v, "padding") for v in pair))
        pairs = tuple(pairs)
    else:
        try:
            pairs = tuple((p, p) for p in ntuple(padding, n, "padding"))
        except TypeError:
            hint = ""
            if n == 1 and isinstance(padding, Sequence) and len(padding) == 2:
                hint = f"; for (before, after) of the one dimension write ({tuple(padding)},)"
            plural = "s" if n > 1 else ""
            raise TypeError(
                f"padding must be an int, {n} int{plural}, {n} (before, after) pair{plural}, "
                f"'valid' or 'same', got {padding!r}{hint}"
            ) from None
    if min(min(pair) for pair in pairs) < 0:
        raise ValueError(f"padding must be non-negative, got {padding!r}")
    return pairs


def flat_padding(pairs: Sequence[Sequence[int]]) -> list[int]:
    """The operators' padding: before and after for each dimension in turn."""
    return [value for pair in pairs for value in pair]


def extent(size: int, kernel: int, stride: int, before: int, after: int, dilation: int) -> int:
    """The output size along one dimension (may be < 1 where the kernel does not fit)."""
    return (size + before + after - dilation * (kernel - 1) - 1) // stride + 1


def transposed_extent(
    size: int, kernel: int, stride: int, before: int, after: int, output_padding: int, dilation: int
) -> int:
    """The transposed op's output size along one dimension: ConvTranspose's formula."""
    return (size - 1) * stride - before - after + dilation * (kernel - 1) + 1 + output_padding


def region_count(out: int, share: int, mode: str) -> int:
    """The weight's regions along one dimension: ceil(out / block), or the period."""
    return share if mode == "tile" else -(-out // share)


def region_index(out: int, share: int, mode: str):
    """The weight region of every output position along one dimension (a torch tensor)."""
    import torch

    positions = torch.arange(out)
    return positions % share if mode == "tile" else positions // share


@dataclass(frozen=True)
class Sharing:
    """How output locations share filter banks: the operators' share and share_mode."""

    share: tuple[int, ...]
    mode: str  # 'block' or 'tile'

    @property
    def shares(self) -> bool:
        """Whether locations map to regions other than themselves (a period that equals the
        output size maps each to itself, which this counts as sharing: the mapping is needed)."""
        return self.mode == "tile" or any(s > 1 for s in self.share)


def sharing(share_block: IntOrSeq | None, share_period: IntOrSeq | None, n: int) -> Sharing:
    """share_block (locally-shared: blocks of neighbouring outputs share a filter bank) or
    share_period (tiled: outputs that many apart share one); neither: a bank per location."""
    if share_block is not None and share_period is not None:
        raise ValueError(
            "give share_block or share_period, not both: got share_block="
            f"{share_block!r}, share_period={share_period!r}"
        )
    if share_period is not None:
        share, mode, name = share_period, "tile", "share_period"
    else:
        share, mode, name = (1 if share_block is None else share_block), "block", "share_block"
    values = ntuple(share, n, name)
    if min(values) < 1:
        raise ValueError(f"{name} must be positive, got {share!r}")
    return Sharing(values, mode)


def regions(output_size: Sequence[int], share: Sharing) -> tuple[int, ...]:
    """The weight's region sizes: ceil(out / block) per dimension, or the period (at most the
    output size: ValueError otherwise)."""
    if share.mode == "tile" and any(p > out for out, p in zip(output_size, share.share)):
        raise ValueError(
            "share_period must be at most the output size along each dimension: got "
            f"share_period {share.share}, output size {tuple(output_size)}"
        )
    return tuple(region_count(out, s, share.mode) for out, s in zip(output_size, share.share))


def output_size(
    input_size: Sequence[int],
    kernel_size: Sequence[int],
    stride: Sequence[int],
    pairs: Sequence[Sequence[int]],
    dilation: Sequence[int],
) -> tuple[int, ...]:
    """Output extent per spatial dimension: (in + before + after - dilation*(kernel-1) - 1)
    // stride + 1. Raises ValueError, naming the dimension, where the dilated kernel is wider
    than the padded input or a value is out of range."""
    for name, values in (
        ("input_size", input_size),
        ("kernel_size", kernel_size),
        ("stride", stride),
        ("dilation", dilation),
    ):
        if min(values) < 1:
            raise ValueError(f"{name} must be at least 1, got {tuple(values)}")
    names = DIM_NAMES[len(input_size)]
    for name, n, k, (before, after), d in zip(names, input_size, kernel_size, pairs, dilation):
        span = d * (k - 1) + 1
        if span > n + before + after:
            raise ValueError(
                f"kernel {name} does not fit the padded input: dilated kernel {name} {span} "
                f"(dilation * (kernel - 1) + 1) > padded input {name} {n + before + after} "
                f"(input {n} + padding {before} + {after})"
            )
    return tuple(
        extent(n, k, s, before, after, d)
        for n, k, s, (before, after), d in zip(input_size, kernel_size, stride, pairs, dilation)
    )


def transposed_size(
    input_size: Sequence[int],
    kernel_size: Sequence[int],
    stride: Sequence[int],
    pairs: Sequence[Sequence[int]],
    output_padding: Sequence[int],
    dilation: Sequence[int],
) -> tuple[int, ...]:
    """The transposed layer's output size: (in - 1) * stride - before - after
    + dilation * (kernel - 1) + 1 + output_padding, as ConvTranspose computes it."""
    sizes = []
    for n, k, s, (before, after), extra, d in zip(
        input_size, kernel_size, stride, pairs, output_padding, dilation
    ):
        if extra >= max(s, d):
            raise ValueError(
                "output_padding must be smaller than stride or dilation along each dimension, "
                f"got output_padding {tuple(output_padding)}, stride {tuple(stride)}, "
                f"dilation {tuple(dilation)}"
            )
        size = transposed_extent(n, k, s, before, after, extra, d)
        if size < 1:
            raise ValueError(
                f"the output would be empty: size {size} = (input {n} - 1) * stride {s} - "
                f"padding {before} - {after} + dilation {d} * (kernel {k} - 1) + 1 + "
                f"output_padding {extra}"
            )
        sizes.append(size)
    return tuple(sizes)
