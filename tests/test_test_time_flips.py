"""Test-time flips inside MedicalMattingNet.predict (scripts/networks/test_time_flips.py)."""

import pytest
import torch

from scripts.networks import MedicalMattingNet
from scripts.networks.test_time_flips import flip_views, merge_views, unflip_view
from scripts.networks.uncertainty import binary_entropy_uncertainty, uncertainty_map


@pytest.fixture
def make_net(make_tiny_net):
    return lambda flips="none": make_tiny_net(num_samples=3, sample_seed=1, test_time_flips=flips).eval()


def test_none_is_one_view(make_net):
    net, image = make_net(), torch.rand(2, 1, 16, 16)
    a, b = net.predict(image, flips="none"), net._predict_view(image)
    for key in ("alpha", "uncertainty", "sample_probs"):
        assert torch.equal(a[key], b[key])


def test_hv_is_the_mean_of_the_unflipped_views(make_net):
    net, image = make_net(), torch.rand(2, 1, 16, 12)
    out = net.predict(image, flips="hv")
    views = [((), net.predict(image))] + [(d, net.predict(image.flip(d))) for d in [(3,), (2,), (2, 3)]]
    expected = torch.stack([o["alpha"].flip(d) if d else o["alpha"] for d, o in views]).mean(0)
    assert torch.allclose(out["alpha"], expected, atol=1e-6)
    assert out["sample_probs"].shape == (2, 12, 16, 12)
    assert torch.allclose(out["uncertainty"], uncertainty_map(out["sample_probs"], net.uncertainty))
    assert out["alpha"].min() >= 0 and out["alpha"].max() <= 1


def test_the_constructor_setting_is_the_default_of_predict_and_forward(make_net):
    image = torch.rand(1, 1, 16, 16)
    net_hv = make_net("hv")
    with torch.no_grad():
        assert torch.equal(net_hv.predict(image)["alpha"], net_hv.predict(image, flips="hv")["alpha"])
        assert torch.equal(net_hv(image), net_hv.predict(image, flips="hv")["alpha"])
        assert not torch.equal(net_hv(image), net_hv.predict(image, flips="none")["alpha"])


def test_flip_equivariant_model_is_unchanged_by_flips():
    def predict_view(image):  # exactly flip-equivariant
        probs = image.repeat(1, 2, 1, 1)
        return {"alpha": image, "uncertainty": binary_entropy_uncertainty(probs), "sample_probs": probs}

    image = torch.rand(1, 1, 8, 8)
    views = [unflip_view(predict_view(image.flip(dims) if dims else image), dims) for dims in flip_views("hv")]
    out = merge_views(views, image)
    assert torch.allclose(out["alpha"], image)
    assert torch.allclose(out["uncertainty"], binary_entropy_uncertainty(image.repeat(1, 8, 1, 1)))
    # on another output grid the views' own maps are averaged (the samples stay on the input grid)
    out = merge_views(views, image, [16, 16])
    assert torch.allclose(out["uncertainty"], views[0]["uncertainty"])


def test_output_size_and_bad_option(make_net):
    net, image = make_net(), torch.rand(1, 1, 16, 16)
    out = net.predict(image, output_size=(24, 20), flips="h")
    assert out["alpha"].shape == (1, 1, 24, 20) and out["uncertainty"].shape == (1, 1, 24, 20)
    with pytest.raises(ValueError, match="flips"):
        net.predict(image, flips="diagonal")
    with pytest.raises(ValueError, match="test_time_flips"):
        MedicalMattingNet(test_time_flips="diagonal")
