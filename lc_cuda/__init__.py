"""lc_cuda: locally-connected (unshared-weight) convolution for PyTorch.

Public API:
  local_conv1d, local_conv2d, local_conv3d        the functional op (autograd, torch.func,
                                                  torch.compile, autocast)
  local_conv_transpose1d/2d/3d                    their transposes (adjoints)
  unfold_local_conv1d/2d/3d                       the same op computed by the unfold + bmm fallback
  LocallyConnected1d/2d/3d                        layers (from_conv1d/2d/3d)
  LocallyConnectedTranspose1d/2d/3d               transposed layers (from_conv_transpose1d/2d/3d)
  build_info()                                    what the installed extension was built with
  lc_cuda.convert (needs numpy)                   Keras, neurite, JAX and Flax weights; whole
                                                  models: conv_to_local, share_weights,
                                                  average_filter_banks

Every op and layer takes channel groups (groups) and weight shared by regions of output
positions (share_block: locally-shared convolution; share_period: tiled convolution).
"""

from . import _onnx
from ._extension import build_info
from .modules import (
    LocallyConnected1d,
    LocallyConnected2d,
    LocallyConnected3d,
    LocallyConnectedTranspose1d,
    LocallyConnectedTranspose2d,
    LocallyConnectedTranspose3d,
)
from .ops import (
    local_conv1d,
    local_conv2d,
    local_conv3d,
    local_conv_transpose1d,
    local_conv_transpose2d,
    local_conv_transpose3d,
    unfold_local_conv1d,
    unfold_local_conv2d,
    unfold_local_conv3d,
)

_onnx.register()

__version__ = "0.2.0"

__all__ = [
    "LocallyConnected1d",
    "LocallyConnected2d",
    "LocallyConnected3d",
    "LocallyConnectedTranspose1d",
    "LocallyConnectedTranspose2d",
    "LocallyConnectedTranspose3d",
    "build_info",
    "local_conv1d",
    "local_conv2d",
    "local_conv3d",
    "local_conv_transpose1d",
    "local_conv_transpose2d",
    "local_conv_transpose3d",
    "unfold_local_conv1d",
    "unfold_local_conv2d",
    "unfold_local_conv3d",
]
