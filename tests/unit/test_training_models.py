"""Model registry: shapes, penultimate features, classifier, standardisation inside the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.models import ModelError, create_model


@pytest.mark.parametrize("name, shape, dim", [
    ("mlp", (40,), 256), ("cnn1d", (40,), 128), ("cnn1d", (2, 33), 128),
    ("mlp", (1, 8, 8), 256), ("cnn", (1, 8, 8), 128), ("resnet18", (3, 32, 32), 512),
])
def test_forward_features_and_classifier(name: str, shape: tuple[int, ...], dim: int) -> None:
    torch.manual_seed(0)
    m = create_model(name, shape, 10).eval()
    x = torch.randn(3, *shape)
    with torch.no_grad():
        h, z = m.features(x), m(x)
    assert h.shape == (3, dim) and z.shape == (3, 10)
    assert m.classifier.weight.shape == (10, dim)
    torch.testing.assert_close(m.classifier(h), z)


def test_standardisation_is_a_buffer_fitted_on_training_data() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 3.0, size=(500, 40)).astype(np.float32)
    m = create_model("mlp", (40,), 4)
    m.norm.fit(x)
    assert {"norm.mean", "norm.std"} <= set(m.state_dict())
    out = m.norm(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(out.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(out.std(0), 1.0, atol=1e-3)
    img = rng.uniform(0, 255, size=(50, 3, 4, 4)).astype(np.float32)
    c = create_model("cnn", (3, 4, 4), 2)
    c.norm.fit(img)
    assert c.norm.mean.shape == (3, 1, 1)
    np.testing.assert_allclose(c.norm.mean.flatten().numpy(), img.mean(axis=(0, 2, 3)), rtol=1e-5)


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(ModelError, match="valid: mlp, cnn1d, cnn, resnet18"):
        create_model("vgg", (40,), 10)


@pytest.mark.parametrize("name, shape", [("cnn1d", (1, 8, 8)), ("cnn", (40,)), ("resnet18", (40,))])
def test_model_that_does_not_fit_the_data_says_so(name: str, shape: tuple[int, ...]) -> None:
    with pytest.raises(ModelError, match="needs"):
        create_model(name, shape, 10)


def test_timm_without_timm_is_a_clear_error() -> None:
    import importlib.util
    if importlib.util.find_spec("timm") is not None:
        pytest.skip("timm is installed here")
    with pytest.raises(ModelError, match="needs timm"):
        create_model("timm:resnet18", (3, 32, 32), 10)
