"""CUDA paths of the model and the losses; skipped on machines without a GPU (CI, the CPU machines).

Run on a GPU machine with ``python -m pytest -q tests/test_cuda_paths.py``: the model must give the
same alpha matte on CUDA as on the CPU (same weights, same prior-sample seed) and train on CUDA.
"""

import pytest
import torch

from scripts.losses import MedicalMattingLoss
from scripts.networks.implicit_upsampler import RegionAwareImplicitUpsampler

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@pytest.fixture
def make_net(make_tiny_net):
    return lambda **kw: make_tiny_net(num_samples=4, sample_seed=3, **kw)


@pytest.mark.parametrize("upsampling", ["region_aware", "local_ensemble", "bilinear"])
def test_cuda_predict_matches_cpu(upsampling, monkeypatch, make_net):
    net = make_net(upsampling=upsampling).eval()
    with torch.no_grad():  # non-zero offsets so the deformable sampling is exercised
        for m in net.modules():
            if isinstance(m, RegionAwareImplicitUpsampler) and getattr(m, "offset_conv", None) is not None:
                m.offset_conv.weight.normal_(0, 0.1)
    # the CPU and CUDA generators draw different eps: use the same eps on both devices
    eps = torch.randn(2, 4, net.prob_unet.latent_dim)

    def same_eps_samples(dist, num_samples, generator=None):
        mean, std = dist.base_dist.loc, dist.base_dist.scale
        return mean.unsqueeze(1) + std.unsqueeze(1) * eps.to(mean.device)

    monkeypatch.setattr(net.prob_unet, "sample_latents", same_eps_samples)
    image = torch.rand(2, 1, 32, 32)
    for size in [None, (48, 48), (64, 40)]:
        cpu = net.predict(image, output_size=size)
        gpu = net.cuda().predict(image.cuda(), output_size=size)
        net.cpu()
        for key in ("alpha", "uncertainty", "sample_probs"):
            assert gpu[key].shape == cpu[key].shape, key
            assert torch.allclose(gpu[key].cpu(), cpu[key], atol=2e-4), (key, size)


def test_cuda_implicit_upsampler_matches_cpu():
    torch.manual_seed(0)
    up = RegionAwareImplicitUpsampler(6, 3, hidden_channels=8, kernel_size=2)
    with torch.no_grad():
        up.offset_conv.weight.normal_(0, 0.3)
    feat = torch.randn(2, 6, 8, 9)
    for size in [(16, 18), (13, 11), (8, 9)]:
        a = up(feat, size)
        b = up.cuda()(feat.cuda(), size).cpu()
        up.cpu()
        assert torch.allclose(a, b, atol=1e-4), size


def test_cuda_training_step_reduces_loss(make_net):
    net = make_net().cuda().train()
    loss_fn = MedicalMattingLoss().cuda()
    opt = torch.optim.Adam(list(net.parameters()) + list(loss_fn.parameters()), lr=1e-2)
    torch.manual_seed(1)
    image = torch.rand(4, 1, 32, 32, device="cuda")
    alpha = (image > 0.5).float()
    losses = []
    for _ in range(30):
        out = net.forward_train(image, alpha)
        loss = loss_fn(out, alpha, alpha)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
