"""The benchmark's layers, taken from real models, and their roofline counts."""

from __future__ import annotations

import math
from dataclasses import dataclass

DIRECTIONS = ("forward", "forward+backward", "grad_input", "grad_weight")


@dataclass(frozen=True)
class Case:
    """One layer. size is the input's spatial size: an int for a square 2D map, or one per
    dimension (1D, 2D, 3D); kernel, stride, padding, dilation and output_padding apply to every
    dimension. share is the region size per output dimension (share_mode 'block', DeepID's
    locally-shared layers) or the period ('tile'); None gives every location its own filters.
    A transposed case is the adjoint of the layer with the same geometry (ConvTranspose's
    convention): in_channels, out_channels and size are the transposed op's, and its filters
    sit at its input positions."""

    name: str
    batch: int
    in_channels: int
    size: int | tuple[int, ...]
    out_channels: int
    kernel: int
    stride: int
    padding: int
    source: str
    dilation: int = 1
    groups: int = 1
    share: int | tuple[int, ...] | None = None
    share_mode: str = "block"
    transposed: bool = False
    output_padding: int = 0

    @property
    def dims(self) -> int:
        return 2 if isinstance(self.size, int) else len(self.size)

    @property
    def sizes(self) -> tuple[int, ...]:
        return (self.size,) * 2 if isinstance(self.size, int) else tuple(self.size)

    @property
    def plain(self) -> bool:
        """A square 2D layer with a filter bank per location and no groups, dilation or
        transpose: the kind the 2D peers (methods.METHODS, Keras, cuDNN) take."""
        return isinstance(self.size, int) and (
            self.dilation,
            self.groups,
            self.share,
            self.transposed,
        ) == (1, 1, None, False)

    @property
    def out_sizes(self) -> tuple[int, ...]:
        span = self.dilation * (self.kernel - 1) + 1
        if self.transposed:
            return tuple(
                (n - 1) * self.stride - 2 * self.padding + span + self.output_padding
                for n in self.sizes
            )
        return tuple((n + 2 * self.padding - span) // self.stride + 1 for n in self.sizes)

    @property
    def out_size(self) -> int:
        """The side of a plain case's square output."""
        return self.out_sizes[0]

    @property
    def bank_sizes(self) -> tuple[int, ...]:
        """The positions that carry a filter bank: the forward layer's output positions, which
        for a transposed case are its input positions."""
        return self.sizes if self.transposed else self.out_sizes

    @property
    def shares(self) -> tuple[int, ...] | None:
        """share per dimension (None: no sharing)."""
        if self.share is None:
            return None
        return (self.share,) * self.dims if isinstance(self.share, int) else tuple(self.share)

    @property
    def region_sizes(self) -> tuple[int, ...]:
        """Filter banks per dimension: one per position, or per block, or the period."""
        if self.shares is None:
            return self.bank_sizes
        if self.share_mode == "tile":
            return self.shares
        return tuple(-(-n // s) for n, s in zip(self.bank_sizes, self.shares))

    @property
    def locations(self) -> int:
        return math.prod(self.bank_sizes)

    @property
    def patch_size(self) -> int:
        """K: the forward layer's inputs per output, C_in / groups * prod(kernel)."""
        forward_in = self.out_channels if self.transposed else self.in_channels
        return forward_in // self.groups * self.kernel**self.dims

    def counts(self, direction: str, batch: int, element_size: int) -> tuple[int, int]:
        """(fewest bytes, flops) of one call: every tensor a call needs is read or written
        exactly once, and each GEMM (N x K by K x C_out per location) costs 2*N*K*C_out flops
        per location. Shared weights are read once per region, not per location; the bias is
        one per region (the transposed op: one per output position).
        """
        forward_out = self.in_channels if self.transposed else self.out_channels
        filters = forward_out * self.patch_size  # one bank's weights
        regions = math.prod(self.region_sizes)
        input = batch * self.in_channels * math.prod(self.sizes)
        weight = regions * filters
        bias = self.out_channels * (math.prod(self.out_sizes) if self.transposed else regions)
        output = batch * self.out_channels * math.prod(self.out_sizes)
        gemm = 2 * batch * self.locations * filters
        elements, flops = {
            # input, weight, bias in; output out
            "forward": (input + weight + bias + output, gemm),
            # grad_output, weight in; grad_input out
            "grad_input": (output + weight + input, gemm),
            # grad_output, input in; grad_weight, grad_bias out
            "grad_weight": (output + input + weight + bias, gemm),
            # the forward call, then one backward call that reads grad_output, input and
            # weight once and writes all three gradients: the weight is read twice, since the
            # backward cannot start before the layers above have run
            "forward+backward": (3 * (input + weight) + 2 * (bias + output), 3 * gemm),
        }[direction]
        return elements * element_size, flops

    def arguments(self) -> dict:
        """The layer's keyword arguments to lc_cuda's functional op (local_conv1d/2d/3d, or
        local_conv_transpose1d/2d/3d for a transposed case)."""
        arguments = {
            "stride": self.stride,
            "padding": self.padding,
            "dilation": self.dilation,
            "groups": self.groups,
        }
        if self.share is not None:
            arguments["share_period" if self.share_mode == "tile" else "share_block"] = self.share
        if self.transposed:
            arguments["output_padding"] = self.output_padding
        return arguments


CASES = [
    Case("deepface_L4", 128, 16, 63, 16, 9, 1, 0, "DeepFace"),
    Case("deepface_L5", 128, 16, 55, 16, 7, 2, 0, "DeepFace"),
    Case("deepface_L6", 128, 16, 25, 16, 5, 1, 0, "DeepFace"),
    Case("convnet_local3", 128, 64, 6, 64, 3, 1, 1, "cuda-convnet CIFAR-10 layers-conv-local"),
    Case("yolov1_local", 64, 1024, 7, 256, 3, 1, 1, "YOLOv1 [local]"),
    Case("lc_resnet_stem", 32, 3, 224, 64, 7, 2, 3, "locally-connected ResNet stem"),
    Case("cunn232_c1", 64, 1, 64, 16, 3, 1, 1, "Torch cunn regression case, one input plane"),
    Case("mid_32x32_c64", 64, 64, 32, 64, 3, 1, 1, "mid-size map"),
    Case("wide_16x16_c128_k1", 256, 128, 16, 128, 1, 1, 0, "per-pixel linear"),
]
# The rest of the operator family (issues 21, 22, 23): lc_cuda's other ops and arguments, against
# the peers that take them (methods.FAMILY_METHODS).
FAMILY_CASES = [
    # examples/autoencoder_digits.py's decoder at its training batch: 4x4 -> 8x8, then 8x8
    Case("ae_decoder_t1", 32, 32, 4, 16, 3, 2, 1, "LocallyConnectedTranspose2d, autoencoder_digits "
         "decoder 1", transposed=True, output_padding=1),
    Case("ae_decoder_t2", 32, 16, 8, 1, 3, 1, 1, "LocallyConnectedTranspose2d, autoencoder_digits "
         "decoder 2", transposed=True),
    # DeepID2's conv3 (20 -> 40 -> 60 maps on a 55x47 face): its 10x8 output in 2x2 regions
    # of 5x4 locations sharing a filter bank; then the same geometry shared over the whole
    # output (a Conv2d) and unshared, which the shared layers must not be slower than
    Case("deepid2_conv3", 128, 40, (12, 10), 60, 3, 1, 0, "DeepID2 conv3, shared in 2x2 regions",
         share=(5, 4)),
    Case("deepid2_conv3_whole", 128, 40, (12, 10), 60, 3, 1, 0, "DeepID2 conv3 geometry, one "
         "region: a Conv2d", share=(10, 8)),
    Case("deepid2_conv3_unshared", 128, 40, (12, 10), 60, 3, 1, 0, "DeepID2 conv3 geometry, a "
         "bank per location"),
    Case("pogodin_cifar_g4", 128, 64, 16, 128, 3, 1, 1, "grouped layer of a locally-connected "
         "CIFAR-10 net (Pogodin et al. 2021 style), 4 groups", groups=4),
    Case("depthwise_32x32_c32", 128, 32, 32, 32, 3, 1, 1, "depthwise layer (groups = C_in) at "
         "CIFAR scale", groups=32),
    Case("medvol_32cube_c2", 8, 2, (32, 32, 32), 8, 3, 1, 1, "medical-imaging volume (neurite "
         "LocallyConnected3D use)"),
    Case("fmri_decoder_3d", 16, 16, (15, 32, 32), 1, 3, 1, 1, "fMRI-decoder-sized output layer: "
         "a 64x64x30 BOLD volume at half resolution"),
    Case("genomics_1d_50k", 32, 1, (50000,), 1, 5, 1, 0, "long 1D genomics layer (deepGBLUP, "
         "GpNet): one channel, 50,000 positions"),
]  # fmt: skip
QUICK_CASES = ("deepface_L6", "convnet_local3", "cunn232_c1", "wide_16x16_c128_k1")
CASES_BY_NAME = {case.name: case for case in CASES + FAMILY_CASES}

# Without a GPU: the CPU issue's cases, at batches that keep a full run to minutes on 2 cores.
CPU_BATCHES = {
    "deepface_L4": 8,
    "deepface_L5": 16,
    "deepface_L6": 32,
    "convnet_local3": 128,
    "yolov1_local": 4,
    "mid_32x32_c64": 8,
    "cunn232_c1": 64,
}
# The family's cases at the batches of a run of minutes on 2 cores (the decoder's is the
# example's own); a full run without --cases still runs CPU_BATCHES' cases only.
FAMILY_CPU_BATCHES = {
    "ae_decoder_t1": 32,
    "ae_decoder_t2": 32,
    "deepid2_conv3": 128,
    "deepid2_conv3_whole": 128,
    "deepid2_conv3_unshared": 128,
    "pogodin_cifar_g4": 32,
    "depthwise_32x32_c32": 128,
    "medvol_32cube_c2": 4,
    "fmri_decoder_3d": 8,
    "genomics_1d_50k": 32,
}
