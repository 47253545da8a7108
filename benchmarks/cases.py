"""The benchmark's layers, taken from real models, and their roofline counts."""

from __future__ import annotations

from dataclasses import dataclass

DIRECTIONS = ("forward", "forward+backward", "grad_input", "grad_weight")


@dataclass(frozen=True)
class Case:
    name: str
    batch: int
    in_channels: int
    size: int
    out_channels: int
    kernel: int
    stride: int
    padding: int
    source: str

    @property
    def out_size(self) -> int:
        return (self.size + 2 * self.padding - self.kernel) // self.stride + 1

    @property
    def locations(self) -> int:
        return self.out_size**2

    @property
    def patch_size(self) -> int:
        return self.in_channels * self.kernel**2

    def counts(self, direction: str, batch: int, element_size: int) -> tuple[int, int]:
        """(fewest bytes, flops) of one call: every tensor a call needs is read or written
        exactly once, and each GEMM (N x K by K x C_out per location) costs 2*N*K*C_out flops
        per location.
        """
        input = batch * self.in_channels * self.size**2
        weight = self.locations * self.out_channels * self.patch_size
        bias = self.out_channels * self.locations
        output = batch * self.out_channels * self.locations
        gemm = 2 * batch * self.locations * self.out_channels * self.patch_size
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
QUICK_CASES = ("deepface_L6", "convnet_local3", "cunn232_c1", "wide_16x16_c128_k1")
CASES_BY_NAME = {case.name: case for case in CASES}

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
