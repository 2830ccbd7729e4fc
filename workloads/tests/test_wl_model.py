"""Model variants: shapes, sizes, reproducible init, DP-SGD compatibility."""

import pytest
import torch
from fedcare_workloads.model import ModelSpec, build_model, count_parameters
from opacus.validators import ModuleValidator


@pytest.mark.parametrize("size", [32, 64, 128])
def test_small_model_accepts_configured_sizes(size):
    model = build_model(ModelSpec("small", 3, size))
    assert model(torch.rand(2, 1, size, size)).shape == (2, 3)


def test_large_model_is_larger_and_works():
    small = count_parameters(build_model(ModelSpec("small", 3, 64)))
    large_model = build_model(ModelSpec("large", 3, 64))
    assert count_parameters(large_model) > 50 * small
    assert large_model(torch.rand(2, 1, 64, 64)).shape == (2, 3)


def test_seeded_init_is_reproducible_and_does_not_touch_global_rng():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model(ModelSpec("small", 3, 64), seed=5)
    after = torch.rand(1)
    b = build_model(ModelSpec("small", 3, 64), seed=5)
    assert before == after
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


@pytest.mark.parametrize("variant", ["small", "large"])
def test_models_are_dp_sgd_compatible(variant):
    model = build_model(ModelSpec(variant, 3, 64))
    assert ModuleValidator.validate(model, strict=False) == []
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_invalid_specs_are_refused():
    with pytest.raises(ValueError, match="minimum"):
        build_model(ModelSpec("small", 3, 8))
    with pytest.raises(ValueError, match="unknown model variant"):
        build_model(ModelSpec("huge", 3, 64))


def test_describe_reports_architecture():
    spec = ModelSpec("small", 3, 64)
    desc = spec.describe(build_model(spec))
    assert desc["name"] == "UltrasoundCNN-small" and desc["input"] == [1, 64, 64] and desc["parameters"] > 0
