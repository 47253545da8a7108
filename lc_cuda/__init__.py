"""lc_cuda: locally-connected (unshared-weight) convolution for PyTorch.

Public API:
  local_conv2d, local_conv1d     the functional op (autograd, torch.compile, autocast)
  unfold_local_conv2d            the same op computed by the unfold + bmm fallback
  LocallyConnected2d, LocallyConnected1d
  build_info()                   what the installed extension was built with
"""

from . import _onnx
from ._extension import build_info
from .modules import LocallyConnected1d, LocallyConnected2d
from .ops import local_conv1d, local_conv2d, unfold_local_conv2d

_onnx.register()

__version__ = "0.1.0"

__all__ = [
    "LocallyConnected1d",
    "LocallyConnected2d",
    "build_info",
    "local_conv1d",
    "local_conv2d",
    "unfold_local_conv2d",
]
