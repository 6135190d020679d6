"""Flip test-time augmentation (scripts/workflows/tta.py)."""

import pytest
import torch

from scripts.networks import MedicalMattingNet
from scripts.networks.uncertainty import binary_entropy_uncertainty
from scripts.workflows.tta import predict_with_flips


def _net():
    torch.manual_seed(0)
    return MedicalMattingNet(prob_filters=(4, 8, 8, 8), matting_filters=(4, 8, 8), implicit_hidden=8,
                             num_samples=3, sample_seed=1).eval()


def test_none_is_plain_predict():
    net, image = _net(), torch.rand(2, 1, 16, 16)
    a, b = predict_with_flips(net, image, "none"), net.predict(image)
    for key in ("alpha", "uncertainty", "sample_probs"):
        assert torch.equal(a[key], b[key])


def test_hv_is_the_mean_of_the_unflipped_views():
    net, image = _net(), torch.rand(2, 1, 16, 12)
    out = predict_with_flips(net, image, "hv")
    views = [((), net.predict(image))] + [(d, net.predict(image.flip(d))) for d in [(3,), (2,), (2, 3)]]
    expected = torch.stack([o["alpha"].flip(d) if d else o["alpha"] for d, o in views]).mean(0)
    assert torch.allclose(out["alpha"], expected, atol=1e-6)
    assert out["sample_probs"].shape == (2, 12, 16, 12)
    assert torch.allclose(out["uncertainty"], binary_entropy_uncertainty(out["sample_probs"]))
    assert out["alpha"].min() >= 0 and out["alpha"].max() <= 1


def test_flip_equivariant_model_is_unchanged_by_tta():
    class Mean(torch.nn.Module):  # predict() of a model that is exactly flip-equivariant
        def predict(self, image, output_size=None, num_samples=None):
            probs = image.repeat(1, 2, 1, 1)
            return {"alpha": image, "uncertainty": binary_entropy_uncertainty(probs), "sample_probs": probs}

    image = torch.rand(1, 1, 8, 8)
    out = predict_with_flips(Mean(), image, "hv")
    assert torch.allclose(out["alpha"], image)


def test_output_size_and_bad_option():
    net, image = _net(), torch.rand(1, 1, 16, 16)
    out = predict_with_flips(net, image, "h", output_size=(24, 20))
    assert out["alpha"].shape == (1, 1, 24, 20) and out["uncertainty"].shape == (1, 1, 24, 20)
    with pytest.raises(ValueError, match="flips"):
        predict_with_flips(net, image, "diagonal")
