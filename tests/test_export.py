"""Export of the whole model: ``torch.jit.script`` / ``monai.bundle ckpt_export``, and the fixed prior noise.

The exported model must give the eager model's matte at any size (the network is resolution-free),
and eval-mode predictions must be the ones the model gave when its prior samples came from a
``torch.Generator`` seeded with ``sample_seed`` on every call (:func:`_seeded_generator_predict`
below is that implementation, frozen).
"""

import json
import subprocess
import sys
from typing import Dict, Optional, Sequence

import pytest
import torch

from conftest import BUNDLE_ROOT, TINY_NET_ARGS
from scripts.networks import MedicalMattingNet
from scripts.networks.medical_matting_net import prior_noise
from scripts.networks.uncertainty import uncertainty_map

SIZES = [(1, 32, 32), (2, 24, 40), (1, 136, 144)]  # square, non-square and batched, larger than the training 128 x 128


def _tiny(**kw) -> MedicalMattingNet:
    torch.manual_seed(0)
    kw = {**TINY_NET_ARGS, "latent_dim": 3, "num_samples": 4, "sample_seed": 5, **kw}
    net = MedicalMattingNet(**kw).eval()
    with torch.no_grad():  # non-zero offsets so the learned deformable sampling is exercised
        for module in net.modules():
            if getattr(module, "offset_conv", None) is not None:
                module.offset_conv.weight.normal_(0, 0.1)
    return net


# ------------------------------------------------------------- the previous implementation, frozen
def _seeded_generator_view(net, image, output_size, num_samples) -> Dict[str, torch.Tensor]:
    """One view as predicted before export support: the prior ``Independent(Normal)`` and a CPU
    ``torch.Generator`` seeded with ``sample_seed`` on every call drawing eps of shape (B, N, L)."""
    from torch.distributions import Independent, Normal

    prob, prior_net = net.prob_unet, net.prob_unet.prior_net
    features = prob.decoder(prob.encoder(image))
    params = prior_net.to_params(prior_net.encoder(image)[-1].mean(dim=(-2, -1), keepdim=True)).flatten(1)
    dist = Independent(Normal(loc=params[:, : prob.latent_dim], scale=torch.exp(params[:, prob.latent_dim :])), 1)
    generator = torch.Generator(device=image.device)
    generator.manual_seed(int(net.sample_seed))
    mean, std = dist.base_dist.loc, dist.base_dist.scale
    eps = torch.randn((mean.shape[0], num_samples, mean.shape[1]), generator=generator, dtype=mean.dtype)
    z = mean.unsqueeze(1) + std.unsqueeze(1) * eps
    sample_probs = torch.sigmoid(prob.fcomb(features, z))
    uncertainty = uncertainty_map(sample_probs, net.uncertainty)
    alpha = net.matting_unet(image, features, uncertainty, output_size)
    if alpha.shape[-2:] != uncertainty.shape[-2:]:
        uncertainty = torch.nn.functional.interpolate(uncertainty, size=alpha.shape[-2:], mode="bilinear",
                                                      align_corners=False)
    return {"alpha": alpha, "uncertainty": uncertainty.clamp(0.0, 1.0), "sample_probs": sample_probs}


def _seeded_generator_predict(net, image, output_size: Optional[Sequence[int]] = None, num_samples=None):
    num_samples = num_samples or net.num_samples
    views = {"none": [()], "h": [(), (3,)], "hv": [(), (3,), (2,), (2, 3)]}[net.test_time_flips]
    outs = []
    for dims in views:
        out = _seeded_generator_view(net, image.flip(dims) if dims else image, output_size, num_samples)
        outs.append({k: v.flip(dims) if dims else v for k, v in out.items()})
    if len(outs) == 1:
        return outs[0]
    sample_probs = torch.cat([o["sample_probs"] for o in outs], dim=1)
    if output_size is None or tuple(output_size) == tuple(image.shape[-2:]):
        uncertainty = uncertainty_map(sample_probs, net.uncertainty)
    else:
        uncertainty = torch.stack([o["uncertainty"] for o in outs]).mean(0)
    return {"alpha": torch.stack([o["alpha"] for o in outs]).mean(0), "uncertainty": uncertainty,
            "sample_probs": sample_probs}


@pytest.mark.parametrize(
    "kw, output_size, num_samples",
    [({}, None, None), ({"test_time_flips": "hv"}, None, None), ({"test_time_flips": "h"}, (37, 29), None),
     ({"upsampling": "local_ensemble", "scales": 1, "kernel_size": 3}, (30, 44), 3),
     ({"upsampling": "bilinear", "scales": 2, "area_weighting": False}, None, 6)],
)
def test_eval_predictions_equal_the_seeded_generator_ones(kw, output_size, num_samples):
    net = _tiny(**kw)
    image = torch.rand(1, 1, 24, 20, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        new = net.predict(image, output_size, num_samples=num_samples)
        old = _seeded_generator_predict(net, image, output_size, num_samples)
    for key in ("alpha", "uncertainty", "sample_probs"):
        assert new[key].shape == old[key].shape, key
        assert (new[key] - old[key]).abs().max() <= 1e-6, key


def test_every_image_of_a_batch_gets_the_single_image_prediction():
    net = _tiny(test_time_flips="h")
    images = torch.rand(3, 1, 24, 20, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        batch = net.predict(images)
        for i in range(3):
            alone = _seeded_generator_predict(net, images[i : i + 1])
            assert (batch["alpha"][i : i + 1] - alone["alpha"]).abs().max() <= 1e-6
            assert (batch["sample_probs"][i : i + 1] - alone["sample_probs"]).abs().max() <= 1e-6


def test_prior_noise_is_a_non_persistent_buffer_of_the_seeded_draw():
    net = _tiny()
    expected = torch.randn((1, 4, 3), generator=torch.Generator().manual_seed(5))[0]
    assert torch.equal(net.prior_eps, expected) and torch.equal(prior_noise(5, 4, 3), expected)
    assert "prior_eps" not in net.state_dict()
    assert _tiny(sample_seed=None).prior_eps.numel() == 0


def test_training_and_unseeded_eval_use_the_global_rng():
    net = _tiny(sample_seed=None)
    image = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        torch.manual_seed(3)
        a = net.predict(image)["sample_probs"]
        b = net.predict(image)["sample_probs"]
        torch.manual_seed(3)
        c = net.predict(image)["sample_probs"]
    assert not torch.equal(a, b) and torch.equal(a, c)


# --------------------------------------------------------------------------------------- scripting
@pytest.mark.parametrize("kw", [{"test_time_flips": "hv"},
                                {"upsampling": "local_ensemble", "scales": 1, "kernel_size": 3},
                                {"upsampling": "bilinear", "scales": 2}, {"area_weighting": True, "scales": 2}])
def test_scripted_model_equals_eager_at_any_size(kw):
    net = _tiny(**kw)
    scripted = torch.jit.script(net)
    for b, h, w in SIZES if kw.get("test_time_flips") else SIZES[1:2]:  # each new shape costs oneDNN set-up
        image = torch.rand(b, 1, h, w)
        with torch.no_grad():
            assert (scripted(image) - net(image)).abs().max() <= 1e-5, (h, w)
    image = torch.rand(1, 1, 40, 40)
    with torch.no_grad():
        eager, script = net.predict(image, [64, 50]), scripted.predict(image, [64, 50])
        assert (scripted(image, [64, 50]) - eager["alpha"]).abs().max() <= 1e-5
    for key in ("alpha", "uncertainty", "sample_probs"):
        assert (script[key] - eager[key]).abs().max() <= 1e-5, key


def test_scripted_model_names_a_num_samples_it_was_not_exported_with():
    scripted = torch.jit.script(_tiny())
    with pytest.raises(Exception, match="num_samples=4"):
        scripted.predict(torch.rand(1, 1, 16, 16), None, 3)


_LOAD_AND_RUN = r"""
import sys, torch
torch.set_num_threads(int(sys.argv[4]))  # the test process's: float rounding of the reductions depends on it
model = torch.jit.load(sys.argv[1])
inputs = torch.load(sys.argv[2], weights_only=True)
out = {"alpha": [model(x) for x in inputs], "predict": [model.predict(x) for x in inputs],
       "resized": model(inputs[0], [48, 70])}
assert not any(name == "scripts" or name.startswith("scripts.") for name in sys.modules), "imported scripts"
torch.save(out, sys.argv[3])
"""


def test_ckpt_export_loads_without_the_bundle_code_and_equals_eager(tiny_torchscript, tmp_path):
    ts, net = tiny_torchscript
    inputs = [torch.rand(b, 1, h, w) for b, h, w in SIZES]
    torch.save(inputs, tmp_path / "inputs.pt")
    # -I: isolated mode, the bundle root is not on sys.path; cwd elsewhere: `import scripts` cannot succeed
    result = subprocess.run([sys.executable, "-I", "-c", _LOAD_AND_RUN, str(ts), str(tmp_path / "inputs.pt"),
                             str(tmp_path / "out.pt"), str(torch.get_num_threads())], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    with torch.no_grad():
        for x, alpha, pred in zip(inputs, out["alpha"], out["predict"]):
            eager = net.predict(x)
            assert alpha.shape == x.shape and (alpha - eager["alpha"]).abs().max() <= 1e-5, tuple(x.shape)
            assert (pred["uncertainty"] - eager["uncertainty"]).abs().max() <= 1e-5
        assert (out["resized"] - net(inputs[0], (48, 70))).abs().max() <= 1e-5
    extra = {"metadata.json": ""}
    torch.jit.load(str(ts), _extra_files=extra)  # ckpt_export stores the bundle metadata in the file
    meta = json.loads((BUNDLE_ROOT / "configs" / "metadata.json").read_text())
    assert json.loads(extra["metadata.json"])["version"] == meta["version"]
