"""Models built from lc_cuda layers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .modules import LocallyConnected2d

if TYPE_CHECKING:
    import numpy as np  # only from_keras needs it (h5py brings it): imported there


class DeepFace(nn.Module):
    """DeepFace (Taigman et al., CVPR 2014), as its Keras ports build it.

    C1 conv 32@11x11 -> M2 max-pool 3x3/2 -> C3 conv 16@9x9 -> L4 local 16@9x9 ->
    L5 local 16@7x7 stride 2 -> L6 local 16@5x5 -> F7 dense 4096 -> F8 dense num_classes,
    ReLU after every layer but F8, dropout before F8. The input is a 152x152 RGB face by
    default; F8 returns logits (the Keras ports end in a softmax).

    M2 pools like Keras' padding='same' pooling, so that the Keras weights load unchanged.
    """

    def __init__(
        self,
        num_classes: int = 8631,
        input_size: int = 152,
        in_channels: int = 3,
        hidden: int = 4096,
        dropout: float = 0.5,
    ):
        super().__init__()
        c1_size = input_size - 10
        if c1_size < 1:
            raise ValueError(f"input_size must be at least 11 for C1, got {input_size}")
        # Keras 'same' pooling pads its one or two extra cells after (even size) or on both sides
        # (odd size); ceil_mode with padding c1_size % 2 gives the same windows.
        self.C1 = nn.Conv2d(in_channels, 32, 11)
        self.M2 = nn.MaxPool2d(3, 2, padding=c1_size % 2, ceil_mode=True)
        m2_size = -(-c1_size // 2)
        self.C3 = nn.Conv2d(32, 16, 9)
        self.L4 = LocallyConnected2d(16, 16, m2_size - 8, 9)
        self.L5 = LocallyConnected2d(16, 16, self.L4.output_size, 7, stride=2)
        self.L6 = LocallyConnected2d(16, 16, self.L5.output_size, 5)
        self.F7 = nn.Linear(16 * self.L6.output_size[0] * self.L6.output_size[1], hidden)
        self.D0 = nn.Dropout(dropout)
        self.F8 = nn.Linear(hidden, num_classes)
        self.input_size = input_size

    def features(self, x: Tensor) -> Tensor:
        """The F7 representation, DeepFace's face descriptor."""
        x = torch.relu(self.C1(x))
        x = self.M2(x)
        x = torch.relu(self.C3(x))
        x = torch.relu(self.L4(x))  # written out, not looped, so that the model scripts
        x = torch.relu(self.L5(x))
        x = torch.relu(self.L6(x))
        return torch.relu(self.F7(x.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.F8(self.D0(self.features(x)))

    @classmethod
    def from_keras(cls, path, input_size: int = 152) -> DeepFace:
        """Loads the weights of a Keras DeepFace port from an .h5 file (`save_weights` or
        `save` format) whose layers are named C1, C3, L4, L5, L6, F7 and F8, channels_last.

        num_classes, hidden and the input channels are read from the file. Needs h5py.
        """
        try:
            import h5py
        except ImportError as error:
            raise ImportError("DeepFace.from_keras needs h5py: pip install h5py") from error
        from .convert import _KerasGeometry, keras_bias_to_bias, keras_kernel_to_weight

        with h5py.File(path, "r") as file:
            group = file["model_weights"] if "model_weights" in file else file
            weights = {name: _keras_layer_weights(group, name) for name in _KERAS_LAYERS}
        c1_kernel, f7_kernel, f8_kernel = weights["C1"][0], weights["F7"][0], weights["F8"][0]
        model = cls(
            num_classes=f8_kernel.shape[1],
            input_size=input_size,
            in_channels=c1_kernel.shape[2],
            hidden=f7_kernel.shape[1],
        )
        with torch.no_grad():
            for name in ("C1", "C3"):
                kernel, bias = weights[name]
                _copy(getattr(model, name).weight, kernel.transpose(3, 2, 0, 1))
                _copy(getattr(model, name).bias, bias)
            for name in ("L4", "L5", "L6"):
                layer = getattr(model, name)
                kernel, bias = weights[name]
                geometry = _KerasGeometry(
                    (*layer.input_size, layer.in_channels),
                    layer.kernel_size,
                    layer.stride,
                    "valid",
                    "channels_last",
                )
                implementation = 1 if kernel.ndim == 3 else 2
                try:
                    _copy(layer.weight, keras_kernel_to_weight(kernel, geometry, implementation))
                    _copy(layer.bias, keras_bias_to_bias(bias, geometry))
                except ValueError as error:
                    raise ValueError(
                        f"Keras layer {name}: {error}. Is input_size={input_size} the one the "
                        "Keras model was built for?"
                    ) from error
            # Keras flattens L6's output as (H, W, C); this model flattens (C, H, W).
            out_h, out_w = model.L6.output_size
            f7_kernel = f7_kernel.reshape(out_h, out_w, 16, -1).transpose(2, 0, 1, 3)
            _copy(model.F7.weight, f7_kernel.reshape(16 * out_h * out_w, -1).T)
            _copy(model.F7.bias, weights["F7"][1])
            _copy(model.F8.weight, f8_kernel.T)
            _copy(model.F8.bias, weights["F8"][1])
        return model


_KERAS_LAYERS = ("C1", "C3", "L4", "L5", "L6", "F7", "F8")


def _keras_layer_weights(group, name: str) -> list[np.ndarray]:
    """[kernel, bias] of one layer of a Keras .h5 weight file, in the file's weight order."""
    if name not in group:
        raise KeyError(f"layer {name!r} not found in the Keras file; it has {sorted(group)}")
    import numpy as np

    layer = group[name]
    names = [n.decode() if isinstance(n, bytes) else n for n in layer.attrs["weight_names"]]
    return [np.asarray(layer[n]) for n in names]


def _copy(parameter: Tensor, array) -> None:
    import numpy as np

    array = torch.as_tensor(np.ascontiguousarray(array))
    if parameter.shape != array.shape:
        raise ValueError(
            f"a Keras weight has shape {tuple(array.shape)}, expected {tuple(parameter.shape)}"
        )
    parameter.copy_(array)
