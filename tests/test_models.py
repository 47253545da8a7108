"""lc_cuda.models.DeepFace: its shapes, and Keras DeepFace weights loading to the same outputs."""

import os

import numpy as np
import pytest
import torch

from lc_cuda.models import DeepFace

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def test_deepface_architecture_at_152():
    model = DeepFace(num_classes=10, hidden=32)
    assert model.L4.input_size == (63, 63) and model.L4.output_size == (55, 55)
    assert model.L5.output_size == (25, 25) and model.L6.output_size == (21, 21)
    assert model.L4.weight.shape == (55, 55, 16, 16, 9, 9)
    assert model.F7.in_features == 16 * 21 * 21
    assert model(torch.randn(1, 3, 152, 152)).shape == (1, 10)


def keras_deepface(input_size, num_classes, hidden, implementation):
    """The layers and names of the public Keras DeepFace port, at a small input size."""
    tf_keras = pytest.importorskip("tf_keras")
    layers = tf_keras.layers
    local = dict(activation="relu", implementation=implementation)
    model = tf_keras.Sequential(
        [
            layers.Conv2D(
                32, (11, 11), activation="relu", name="C1", input_shape=(input_size, input_size, 3)
            ),
            layers.MaxPooling2D(pool_size=3, strides=2, padding="same", name="M2"),
            layers.Conv2D(16, (9, 9), activation="relu", name="C3"),
            layers.LocallyConnected2D(16, (9, 9), name="L4", **local),
            layers.LocallyConnected2D(16, (7, 7), strides=2, name="L5", **local),
            layers.LocallyConnected2D(16, (5, 5), name="L6", **local),
            layers.Flatten(name="F0"),
            layers.Dense(hidden, activation="relu", name="F7"),
            layers.Dropout(rate=0.5, name="D0"),
            layers.Dense(num_classes, activation="softmax", name="F8"),
        ]
    )
    for weight in model.weights:  # non-zero biases, so that a misplaced bias shows
        weight.assign(np.random.default_rng(3).normal(0, 0.1, weight.shape).astype(np.float32))
    return model


@pytest.mark.parametrize("input_size", [80, 81])
@pytest.mark.parametrize("implementation", [1, 2])
@pytest.mark.parametrize("save", ["save_weights", "save"])
def test_deepface_from_keras_h5(tmp_path, input_size, implementation, save):
    pytest.importorskip("h5py")
    keras_model = keras_deepface(
        input_size, num_classes=7, hidden=24, implementation=implementation
    )
    path = tmp_path / "deepface.h5"
    getattr(keras_model, save)(str(path))
    model = DeepFace.from_keras(path, input_size=input_size).eval()
    assert model.F8.out_features == 7 and model.F7.out_features == 24
    images = np.random.default_rng(4).uniform(0, 1, (2, input_size, input_size, 3))
    images = images.astype(np.float32)
    expected = torch.tensor(keras_model(images, training=False).numpy())
    with torch.no_grad():
        got = torch.softmax(model(torch.tensor(images).permute(0, 3, 1, 2)), dim=1)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_deepface_from_keras_wrong_input_size(tmp_path):
    pytest.importorskip("h5py")
    path = tmp_path / "deepface.h5"
    keras_deepface(80, 5, 8, 1).save_weights(str(path))
    with pytest.raises(
        ValueError,
        match=r"Keras layer L4: kernel.shape is not valid: got "
        r"\(361, 1296, 16\), expected \(441, 1296, 16\).*"
        r"Is input_size=84 the one",
    ):
        DeepFace.from_keras(path, input_size=84)
