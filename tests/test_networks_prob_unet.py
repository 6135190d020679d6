"""Probabilistic U-Net: shapes, fcomb, KL, prior samples, uncertainty map."""

import math

import pytest
import torch

from scripts.networks import FComb, ProbabilisticUNet, binary_entropy_uncertainty

TINY = dict(filters=(4, 8, 8), latent_dim=3, num_fcomb_layers=3)


def _net(in_channels=1, seed=0):
    torch.manual_seed(seed)
    return ProbabilisticUNet(in_channels, **TINY)


def test_shapes_with_and_without_target():
    net = _net()
    image = torch.rand(2, 1, 32, 32)
    out = net(image, num_samples=5)
    assert set(out) == {"features", "sample_logits"}
    assert out["features"].shape == (2, 4, 32, 32)
    assert out["sample_logits"].shape == (2, 5, 32, 32)
    out = net(image, seg_target=(image > 0.5).float(), num_samples=2)
    assert out["posterior_logits"].shape == (2, 1, 32, 32)
    assert out["kl"].shape == (2,)


def test_odd_input_size_is_supported():
    out = _net()(torch.rand(1, 1, 30, 26), num_samples=2)
    assert out["features"].shape[-2:] == (30, 26) and out["sample_logits"].shape[-2:] == (30, 26)


def test_fcomb_equals_1x1_conv_on_concatenated_tiled_latent():
    torch.manual_seed(0)
    fcomb = FComb(feature_channels=5, latent_dim=3, num_layers=3)
    feats, z = torch.randn(2, 5, 6, 7), torch.randn(2, 4, 3)
    # the first layer as one 1x1 conv on [features; tile(z)], as in Kohl et al.
    conv = torch.nn.Conv2d(8, 5, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.cat([fcomb.feature_proj.weight[..., 0, 0], fcomb.latent_proj.weight], 1)[..., None, None])
        conv.bias.copy_(fcomb.latent_proj.bias)
    expected = []
    for n in range(4):
        tiled = z[:, n, :, None, None].expand(-1, -1, 6, 7)
        h = torch.relu(conv(torch.cat([feats, tiled], 1)))
        expected.append(fcomb.layers(h)[:, 0])
    assert torch.allclose(fcomb(feats, z), torch.stack(expected, 1), atol=1e-5)


def test_kl_non_negative_and_zero_for_identical_distributions():
    net = _net()
    image = torch.rand(3, 1, 16, 16)
    prior = net.prior(image)
    posterior = net.posterior(image, (image > 0.5).float())
    kl = net.kl(posterior, prior)
    assert kl.shape == (3,) and (kl >= 0).all() and (kl > 0).any()
    assert torch.allclose(net.kl(prior, prior), torch.zeros(3), atol=1e-6)
    assert prior.event_shape == (3,) and prior.batch_shape == (3,)


def test_prior_samples_differ_from_each_other():
    torch.manual_seed(0)
    net = ProbabilisticUNet(1, filters=(8, 8, 8), latent_dim=3)  # 4-channel nets can start with dead ReLUs
    logits = net(torch.rand(1, 1, 16, 16), num_samples=6)["sample_logits"][0]
    for i in range(6):
        for j in range(i + 1, 6):
            assert (logits[i] - logits[j]).abs().max() > 1e-4


def test_sample_latents_generator_is_repeatable_and_reparameterised():
    net = _net()
    prior = net.prior(torch.rand(2, 1, 16, 16))
    a = net.sample_latents(prior, 4, torch.Generator().manual_seed(7))
    b = net.sample_latents(prior, 4, torch.Generator().manual_seed(7))
    assert a.shape == (2, 4, 3) and torch.equal(a, b)
    a.sum().backward()
    assert net.prior_net.to_params.weight.grad.abs().sum() > 0


def test_gradients_reach_all_parts():
    net = _net()
    image = torch.rand(2, 1, 16, 16)
    out = net(image, seg_target=(image > 0.5).float(), num_samples=2)
    (out["posterior_logits"].mean() + out["kl"].mean() + out["sample_logits"].mean()).backward()
    for name, module in [("encoder", net.encoder), ("decoder", net.decoder), ("prior", net.prior_net),
                         ("posterior", net.posterior_net), ("fcomb", net.fcomb)]:
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, name


def test_rgb_input():
    out = _net(in_channels=3)(torch.rand(1, 3, 16, 16), seg_target=torch.ones(1, 1, 16, 16))
    assert out["posterior_logits"].shape == (1, 1, 16, 16)


def test_uncertainty_zero_where_samples_agree_and_one_where_they_split():
    probs = torch.zeros(1, 4, 2, 3)
    probs[0, :, 0, 0] = 1.0  # all agree: foreground
    probs[0, :, 0, 1] = 0.0  # all agree: background
    probs[0, :2, 0, 2] = 1.0  # split evenly
    probs[0, :, 1, 0] = 0.5  # every sample unsure
    probs[0, :, 1, 1] = torch.tensor([0.9, 0.8, 0.9, 1.0])
    probs[0, :, 1, 2] = 0.25
    u = binary_entropy_uncertainty(probs)
    assert u.shape == (1, 1, 2, 3)
    assert u[0, 0, 0, 0] == 0 and u[0, 0, 0, 1] == 0
    assert torch.isclose(u[0, 0, 0, 2], torch.tensor(1.0)) and torch.isclose(u[0, 0, 1, 0], torch.tensor(1.0))
    p = 0.25
    assert torch.isclose(u[0, 0, 1, 2], torch.tensor(-(p * math.log(p) + (1 - p) * math.log(1 - p)) / math.log(2)))
    assert 0 < u[0, 0, 1, 1] < u[0, 0, 1, 2] < 1


def test_uncertainty_is_numerically_safe():
    probs = torch.tensor([0.0, 1e-30, 1e-8, 0.5, 1 - 1e-7, 1.0]).view(1, 6, 1, 1).expand(1, 6, 2, 2)
    probs = probs.permute(1, 0, 2, 3).contiguous().requires_grad_(True)  # 6 images, 1 sample each
    u = binary_entropy_uncertainty(probs)
    assert torch.isfinite(u).all() and (u >= 0).all() and (u <= 1).all()
    u.sum().backward()
    assert torch.isfinite(probs.grad).all()
    assert u[0].max() == 0 and u[-1].max() == 0


def test_bad_fcomb_layers():
    with pytest.raises(ValueError, match="num_layers"):
        FComb(4, 2, num_layers=1)


def test_dense_gradient_is_an_identity_that_makes_the_gradient_dense():
    from scripts.networks.blocks import dense_gradient

    x = torch.randn(2, 4, 5, 6).to(memory_format=torch.channels_last).requires_grad_(True)
    y = dense_gradient(x)
    assert torch.equal(y, x)
    grads = []
    y.register_hook(lambda g: grads.append(g.is_contiguous(memory_format=torch.channels_last)))
    out = torch.cat([y, torch.randn(2, 3, 5, 6).to(memory_format=torch.channels_last)], dim=1)
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
    assert not grads[0]  # the slice autograd hands over is dense in no layout ...
    plain = torch.randn(3, 2)
    assert dense_gradient(plain) is plain  # ... and without autograd nothing happens
