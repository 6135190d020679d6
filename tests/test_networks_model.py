"""MedicalMattingNet: the model API of docs/architecture.md, ablation options, config."""

import itertools
from pathlib import Path

import pytest
from conftest import TINY_NET_ARGS
import torch

from scripts.networks import MattingUNet, MedicalMattingNet, RegionAwareImplicitUpsampler
from scripts.networks.matting_unet import InterpolateConvUpsampler

TINY = dict(prob_filters=(8, 8, 8), latent_dim=3, matting_filters=(4, 8, 8, 8), implicit_hidden=8, num_samples=4)
BUNDLE_ROOT = Path(__file__).resolve().parents[1]


def _net(**kw):
    torch.manual_seed(0)
    return MedicalMattingNet(**{**TINY, **kw})


@pytest.mark.parametrize("output_size", [None, (32, 32), (48, 48), (64, 64), (40, 24), (16, 16)])
def test_forward_shapes_and_range(output_size):
    net = _net().eval()
    image = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        alpha = net(image, output_size=output_size)
    assert alpha.shape == (2, 1, *(output_size or (32, 32)))
    assert alpha.dtype == torch.float32 and (alpha >= 0).all() and (alpha <= 1).all()


def test_predict_outputs():
    net = _net().eval()
    with torch.no_grad():
        out = net.predict(torch.rand(2, 1, 32, 32), output_size=(48, 48))
        out3 = net.predict(torch.rand(2, 1, 32, 32), num_samples=3)
    assert out["alpha"].shape == (2, 1, 48, 48)
    assert out["uncertainty"].shape == (2, 1, 48, 48)
    assert out["sample_probs"].shape == (2, 4, 32, 32)
    assert out3["sample_probs"].shape == (2, 3, 32, 32) and out3["uncertainty"].shape == (2, 1, 32, 32)
    for v in out.values():
        assert (v >= 0).all() and (v <= 1).all()


def test_forward_train_outputs_and_gradients():
    net = _net().train()
    image = torch.rand(2, 1, 32, 32)
    target = (image > 0.5).float()
    out = net.forward_train(image, target)
    assert out["alpha"].shape == (2, 1, 32, 32)
    assert out["uncertainty"].shape == (2, 1, 32, 32) and not out["uncertainty"].requires_grad
    assert out["seg_logits"].shape == (2, 1, 32, 32)
    assert out["kl"].shape == (2,) and (out["kl"] >= 0).all()
    assert out["sample_probs"].shape == (2, 4, 32, 32) and not out["sample_probs"].requires_grad
    loss = (out["alpha"] - 0.3).abs().mean() + torch.nn.functional.binary_cross_entropy_with_logits(
        out["seg_logits"], target
    ) + out["kl"].mean()
    loss.backward()
    prob, mat = net.prob_unet, net.matting_unet
    for name, module in [("prob encoder", prob.encoder), ("prior", prob.prior_net), ("posterior", prob.posterior_net),
                         ("fcomb", prob.fcomb), ("matting encoder", mat.encoder), ("up3 mlp", mat.up3.mlp),
                         ("up3 offsets", mat.up3.offset_conv), ("up2 offsets", mat.up2.offset_conv)]:
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0, name


def test_matting_loss_reaches_prob_unet_features_unless_detached():
    image = torch.rand(1, 1, 16, 16)
    for detach in (False, True):
        net = _net(detach_latent=detach)
        net.forward_train(image, (image > 0.5).float())["alpha"].sum().backward()
        grad = net.prob_unet.decoder.blocks[0][0].conv.weight.grad
        assert (grad is None or grad.abs().sum() == 0) == detach


def test_eval_forward_deterministic_for_fixed_seed():
    net = _net().eval()
    image = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.manual_seed(5)
        a = net(image)
        torch.manual_seed(5)
        b = net(image)
        c = net(image)  # the global RNG has moved on: other prior samples
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_sample_seed_makes_eval_independent_of_global_rng():
    net = _net(sample_seed=3).eval()
    image = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        a = net.predict(image)
        torch.manual_seed(123)
        b = net.predict(image)
    assert torch.equal(a["alpha"], b["alpha"]) and torch.equal(a["sample_probs"], b["sample_probs"])
    # training mode keeps drawing fresh samples
    net.train()
    with torch.no_grad():
        s1 = net.forward_train(image, torch.ones(1, 1, 32, 32))["sample_probs"]
        s2 = net.forward_train(image, torch.ones(1, 1, 32, 32))["sample_probs"]
    assert not torch.equal(s1, s2)


@pytest.mark.parametrize("in_channels", [1, 3])
def test_grey_and_rgb(in_channels):
    net = _net(in_channels=in_channels)
    image = torch.rand(2, in_channels, 32, 32)
    out = net.forward_train(image, torch.zeros(2, 1, 32, 32))
    assert out["alpha"].shape == (2, 1, 32, 32)
    with torch.no_grad():
        assert net.eval()(image, output_size=(48, 48)).shape == (2, 1, 48, 48)


@pytest.mark.parametrize("upsampling,scales,k", list(itertools.product(["region_aware", "local_ensemble", "bilinear"], [1, 2, 3], [1, 2, 3])))
def test_ablation_options_build_and_run(upsampling, scales, k):
    net = _net(upsampling=upsampling, scales=scales, kernel_size=k)
    implicit = net.matting_unet.implicit_upsamplers()
    if upsampling == "bilinear":
        assert implicit == {}
    else:
        expected = {1: {"up1"}, 2: {"up2"}, 3: {"up3", "up2"}}[scales]
        assert set(implicit) == expected
        assert all(m.kernel_size == k and m.mode == upsampling for m in implicit.values())
    image = torch.rand(1, 1, 16, 16)
    out = net.forward_train(image, torch.ones(1, 1, 16, 16))
    out["alpha"].mean().backward()
    with torch.no_grad():
        assert net.eval()(image, output_size=(24, 20)).shape == (1, 1, 24, 20)


def test_bilinear_option_uses_interpolate_conv():
    mat = MattingUNet(1, 4, filters=(4, 8, 8), upsampling="bilinear")
    assert isinstance(mat.up3, InterpolateConvUpsampler) and isinstance(mat.up2, InterpolateConvUpsampler)
    mat = MattingUNet(1, 4, filters=(4, 8, 8), upsampling="region_aware", scales=3)
    assert isinstance(mat.up3, RegionAwareImplicitUpsampler)


def test_bad_inputs_raise_clear_errors():
    net = _net()
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        net(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="seg_target"):
        net.forward_train(torch.rand(1, 1, 16, 16), torch.ones(1, 16, 16))
    with pytest.raises(ValueError, match="output_size"):
        net(torch.rand(1, 1, 16, 16), output_size=(0, 16))
    with pytest.raises(ValueError, match="output_size"):
        net(torch.rand(1, 1, 16, 16), output_size=(16, 16, 2))
    with pytest.raises(ValueError, match="upsampling"):
        MedicalMattingNet(upsampling="nearest")
    with pytest.raises(ValueError, match="scales"):
        MedicalMattingNet(scales=4)


def test_train_config_network_def_and_ablation_keys():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE_ROOT / "configs" / "train.yaml"))
    parser["upsampling"] = "local_ensemble"
    parser["scales"] = 2
    parser["kernel_size"] = 3
    parser["in_channels"] = 3
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, MedicalMattingNet) and net.in_channels == 3
    implicit = net.matting_unet.implicit_upsamplers()
    assert set(implicit) == {"up2"} and implicit["up2"].kernel_size == 3 and implicit["up2"].mode == "local_ensemble"


def test_model_sampling_positions_hand_computed_at_init():
    net = _net().eval()  # scales 3, k 2: up3 (8x8 -> 16x16), up2 (16x16 -> 32x32)
    pos = net.sampling_positions(torch.rand(2, 1, 32, 32), torch.tensor([[3, 3], [31, 0]]))
    assert set(pos) == {"up3", "up2"}
    assert pos["up2"].shape == (2, 2, 4, 2) and pos["up3"].shape == (2, 2, 4, 2)
    # up2: output pixel 3 is 1.25 cells of the 16-grid -> codes 1, 2 -> output pixels 2.5, 4.5
    assert torch.allclose(pos["up2"][0, 0], torch.tensor([[2.5, 2.5], [2.5, 4.5], [4.5, 2.5], [4.5, 4.5]]))
    # up3: output pixel 3 lies in 16-grid pixel 1 = 0.25 cells of the 8-grid -> codes 0, 1
    #      -> 16-grid pixels 0.5, 2.5 -> output pixels 1.5, 5.5
    assert torch.allclose(pos["up3"][1, 0], torch.tensor([[1.5, 1.5], [1.5, 5.5], [5.5, 1.5], [5.5, 5.5]]))
    # a bottom-left query (15.25, -0.25 cells): codes clamped to the last row and the first column
    assert torch.allclose(pos["up2"][0, 1, :, 0], torch.full((4,), 30.5))
    assert torch.allclose(pos["up2"][0, 1, :, 1], torch.full((4,), 0.5))
    with pytest.raises(ValueError, match="bilinear"):
        _net(upsampling="bilinear").sampling_positions(torch.rand(1, 1, 32, 32), torch.tensor([[0, 0]]))
    with pytest.raises(ValueError, match="inside the output grid"):
        net.sampling_positions(torch.rand(1, 1, 32, 32), torch.tensor([[32, 0]]))


def test_model_sampling_positions_other_output_size_and_scales_1():
    net = _net(scales=1).eval()
    pos = net.sampling_positions(torch.rand(1, 1, 32, 32), torch.tensor([[10, 20]]), output_size=(48, 48))
    assert set(pos) == {"up1"} and pos["up1"].shape == (1, 1, 4, 2)
    assert (pos["up1"] >= -0.5).all() and (pos["up1"] <= 47.5).all()
    # learned offsets move the samples
    with torch.no_grad():
        net.matting_unet.up1.offset_conv.bias.fill_(1.0)
    moved = net.sampling_positions(torch.rand(1, 1, 32, 32), torch.tensor([[10, 20]]), output_size=(48, 48))
    assert torch.allclose(moved["up1"], pos["up1"] + 1.5)  # 1 source cell = 1.5 output pixels


def test_network_cost_benchmark_smoke(tmp_path):
    import json

    from tools.benchmarks import network_cost

    override = json.dumps({"prob_filters": [4, 8, 8], "matting_filters": [4, 8, 8], "implicit_hidden": 4, "num_samples": 2})
    rows = network_cost.main(
        ["--size", "16", "--batch", "1", "--runs", "1", "--warmup", "0", "--variants", "default,kernel_size=1",
         "--override", override, "--json", str(tmp_path / "cost.json")]
    )
    assert [r["variant"] for r in rows] == ["default", "kernel_size=1"]
    for r in rows:
        f = r["gflops_forward"]
        assert f["MattingUNet"] > 0 and f["ProbabilisticUNet"] > 0
        assert abs(f["ProbabilisticUNet"] + f["MattingUNet"] - f["total"]) < 1e-12
        assert r["gflops_train_forward"]["total"] > f["total"]  # adds the posterior net
        assert r["params"] == r["params_prob_unet"] + r["params_matting_unet"]
        assert r["time"]["wall_median_s"] > 0
    assert rows[1]["params"] < rows[0]["params"]  # k = 1: fewer offset channels
    assert json.loads((tmp_path / "cost.json").read_text())["results"][0]["variant"] == "default"


# ------------------------------------------------------------------ the checkpoint carries its network
def _small(**kw):
    args = dict(TINY_NET_ARGS, latent_dim=2)
    args.update(kw)
    return MedicalMattingNet(**args)


def test_state_dict_carries_the_constructor_arguments(tmp_path):
    net = _small(norm="INSTANCE", test_time_flips="h")
    path = tmp_path / "model.pt"
    torch.save(net.state_dict(), path)
    state = torch.load(path, weights_only=True)
    config = MedicalMattingNet.checkpoint_config(state)
    assert config == net.config and config["norm"] == "INSTANCE" and config["prob_filters"] == [4, 8, 8, 8]
    rebuilt = MedicalMattingNet(**config)
    rebuilt.load_state_dict(state)
    image = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(image), net.eval()(image))


def test_loading_into_another_architecture_names_every_differing_key():
    state = _small(norm="INSTANCE").state_dict()
    with pytest.raises(ValueError, match=r"norm='INSTANCE' \(this network: None\)") as err:
        _small(prob_filters=(4, 8, 8, 16)).load_state_dict(state)
    assert "prob_filters" in str(err.value) and "\n" not in str(err.value)


def test_prediction_settings_may_differ_and_the_loading_network_keeps_its_own():
    state = _small(num_samples=2, test_time_flips="none").state_dict()
    other = _small(num_samples=5, test_time_flips="hv", sample_seed=3)
    other.load_state_dict(state)
    assert other.num_samples == 5 and other.test_time_flips == "hv"


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("channels_last", [True, False])
def test_instance_norm_keeps_the_layout_and_the_values(channels_last, batch, affine):
    """The U-Nets' instance normalisation returns its input's layout (PyTorch's returns NCHW) with
    the values and gradients of ``nn.InstanceNorm2d``; a channels-last model stays channels-last."""
    from scripts.networks.blocks import LayoutKeepingInstanceNorm2d, conv_block

    torch.manual_seed(0)
    x = torch.randn(batch, 6, 9, 7) * 3 + torch.arange(6.0).view(1, 6, 1, 1)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    ours, ref = LayoutKeepingInstanceNorm2d(6, affine=affine), torch.nn.InstanceNorm2d(6, affine=affine)
    if affine:
        with torch.no_grad():
            ref.weight.uniform_(0.5, 2.0)
            ref.bias.uniform_(-1.0, 1.0)
        ours.load_state_dict(ref.state_dict())
    # the reference runs on NCHW: PyTorch 2.13's instance norm gets the input gradient of a batch of one
    # image wrong when the input or the upstream gradient is channels-last (errors ~2; see the next test)
    a, b = x.clone().requires_grad_(True), x.contiguous().requires_grad_(True)
    ya, yb = ours(a), ref(b)
    # channels-last inputs are normalised image by image on their own layout: another reduction order
    torch.testing.assert_close(ya, yb, rtol=0, atol=1e-5)
    assert ya.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    weight = torch.randn(ya.shape)  # NCHW: the reference's gradient is right for this layout only
    (ya * weight.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)).sum().backward()
    (yb * weight).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-5)
    if affine:
        torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=1e-5, atol=1e-5)
    # bfloat16 (the training pass): the same values as PyTorch's kernel
    xb = x.bfloat16()
    torch.testing.assert_close(ours(xb).float(), ref(xb).float(), rtol=0, atol=2e-2)
    block = conv_block(3, 6, norm="INSTANCE")
    assert all(type(layer.adn.N) is LayoutKeepingInstanceNorm2d for layer in block)
    net = _net(norm="INSTANCE", channels_last=True).eval()
    feats = net.prob_unet.encoder(torch.rand(1, 1, 32, 32).to(memory_format=torch.channels_last))
    assert all(f.is_contiguous(memory_format=torch.channels_last) for f in feats)


@pytest.mark.parametrize("batch", [1, 3])
def test_every_convolution_of_the_training_pass_gets_a_channels_last_input(batch):
    """In the bfloat16 training pass of the bundle network (configs/train.yaml), every convolution of
    more than two input channels gets a channels-last input. ``torch.cat`` returns NCHW for a
    one-channel map among its inputs, or, at batch 1, for an upsampled map with a non-canonical batch
    stride; the concatenations before the decoders' convolutions must not (each convolution would copy
    its input to channels-last, and its backward again)."""
    from monai.bundle import ConfigParser

    from scripts.workflows.engines import forward_train

    parser = ConfigParser()
    parser.read_config(str(BUNDLE_ROOT / "configs" / "train.yaml"))
    net = parser.get_parsed_content("network_def").train()
    seen = []

    def check(module, inputs, name=""):
        x = inputs[0]
        if x.shape[1] > 2:
            seen.append((name, x.dtype, x.is_contiguous(memory_format=torch.channels_last)))

    for name, module in net.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_pre_hook(lambda m, i, name=name: check(m, i, name))
    torch.manual_seed(0)
    image, target = torch.rand(batch, 1, 32, 32), (torch.rand(batch, 1, 32, 32) > 0.5).float()
    forward_train(net, image.to(memory_format=torch.channels_last), target, True)
    names = {n for n, _, _ in seen}
    assert {"prob_unet.decoder.blocks.0.0.conv", "matting_unet.encoder.blocks.0.0.conv", "matting_unet.prop1.0.conv"} <= names
    assert [n for n, _, cl in seen if not cl] == []
    assert [n for n, dtype, _ in seen if dtype != torch.bfloat16] == []  # the image joins the features in their dtype


def test_concat_channels_is_torch_cat_in_the_channels_last_layout():
    """Values, dtype and gradients of ``torch.cat(dim=1)``; channels-last when an input is, NCHW otherwise."""
    from scripts.networks.blocks import concat_channels

    torch.manual_seed(0)
    up = torch.nn.functional.interpolate(torch.rand(1, 4, 4, 5).to(memory_format=torch.channels_last), size=[8, 10],
                                         mode="bilinear", align_corners=False)  # batch 1: non-canonical batch stride
    parts = [up, torch.rand(1, 3, 8, 10).to(memory_format=torch.channels_last), torch.rand(1, 1, 8, 10).double()]
    ours_in = [t.clone().requires_grad_(i < 2) for i, t in enumerate(parts)]  # the one-channel map: no gradient
    ref_in = [t.clone().requires_grad_(i < 2) for i, t in enumerate(parts)]
    ours, ref = concat_channels(ours_in), torch.cat(ref_in, dim=1)
    assert not ref.is_contiguous(memory_format=torch.channels_last)  # what torch.cat does with these inputs
    assert ours.is_contiguous(memory_format=torch.channels_last) and ours.dtype == ref.dtype == torch.float64
    assert torch.equal(ours, ref)
    weight = torch.randn(ref.shape, dtype=torch.float64)
    (ours * weight).sum().backward()
    (ref * weight).sum().backward()
    for a, b in zip(ours_in[:2], ref_in[:2]):
        assert a.grad.dtype == b.grad.dtype and torch.equal(a.grad, b.grad)
    assert ours_in[2].grad is None
    nchw = [torch.rand(2, 3, 4, 4), torch.rand(2, 1, 4, 4)]
    out = concat_channels(nchw)
    assert out.is_contiguous() and torch.equal(out, torch.cat(nchw, dim=1))
    scripted = torch.jit.script(concat_channels)  # TorchScript export takes torch.cat
    assert torch.equal(scripted(nchw), out)


@pytest.mark.parametrize("upsampling", ["bilinear", "local_ensemble", "region_aware"])
def test_every_layer_of_the_bundle_network_keeps_the_layout(upsampling):
    """Every instance norm of the bundle's network (configs/train.yaml, with each decoder) is the
    layout-keeping one and every in-place ReLU of a conv -> norm -> act layer the dtype-aware one, the
    Matting U-Net's output block included (PyTorch's instance norm would copy to NCHW forward and
    backward, and return a wrong input gradient for a channels-last one-image batch)."""
    from monai.bundle import ConfigParser

    from scripts.networks.blocks import DtypeAwareReLU, LayoutKeepingInstanceNorm2d

    parser = ConfigParser()
    parser.read_config(str(BUNDLE_ROOT / "configs" / "train.yaml"))
    parser["upsampling"] = upsampling
    net = parser.get_parsed_content("network_def")
    norms = [(n, type(m)) for n, m in net.named_modules() if isinstance(m, torch.nn.modules.instancenorm._InstanceNorm)]
    relus = [(n, type(m)) for n, m in net.named_modules() if isinstance(m, torch.nn.ReLU) and m.inplace and ".adn." in f"{n}."]
    assert norms and all(t is LayoutKeepingInstanceNorm2d for _, t in norms), [n for n, t in norms if t is not LayoutKeepingInstanceNorm2d]
    assert relus and all(t is DtypeAwareReLU for _, t in relus), [n for n, t in relus if t is not DtypeAwareReLU]
    layer = net.matting_unet.output_block[0]
    x = torch.rand(1, layer.conv.in_channels, 16, 16).to(memory_format=torch.channels_last)
    assert layer(x).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("batch", [1, 4])
def test_instance_norm_gradient_of_a_channels_last_batch_matches_the_formula(batch):
    """``F.instance_norm`` on a channels-last input returns a wrong input gradient for a batch of one
    image (PyTorch 2.13, CPU), so the layout-keeping norm must not call it on that layout. Checked against the float64
    formula of instance normalisation's gradient."""
    from scripts.networks.blocks import LayoutKeepingInstanceNorm2d

    torch.manual_seed(0)
    x = torch.randn(batch, 16, 12, 10) * 3 + 1
    upstream = torch.randn_like(x)
    ref_x = x.double().requires_grad_(True)
    mean = ref_x.mean((2, 3), keepdim=True)
    var = ref_x.var((2, 3), unbiased=False, keepdim=True)
    ((ref_x - mean) / torch.sqrt(var + 1e-5)).backward(upstream.double())
    a = x.to(memory_format=torch.channels_last).requires_grad_(True)
    LayoutKeepingInstanceNorm2d(16)(a).backward(upstream.to(memory_format=torch.channels_last))
    torch.testing.assert_close(a.grad, ref_x.grad.float(), rtol=0, atol=1e-5)


def test_instance_norm_with_running_statistics_takes_pytorchs_path():
    """``track_running_stats`` (not used by the model): the running averages are PyTorch's."""
    from scripts.networks.blocks import LayoutKeepingInstanceNorm2d

    torch.manual_seed(0)
    x = (torch.randn(3, 4, 8, 8) + 2).to(memory_format=torch.channels_last)
    ours = LayoutKeepingInstanceNorm2d(4, track_running_stats=True)
    ref = torch.nn.InstanceNorm2d(4, track_running_stats=True)
    torch.testing.assert_close(ours(x), ref(x))
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x), ref(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dtype_aware_relu_is_in_place_for_float32_only(dtype):
    from scripts.networks.blocks import DtypeAwareReLU, activation, conv_block

    x = torch.randn(3, 4, 5, 6, dtype=dtype)
    expected = torch.relu(x)
    y = DtypeAwareReLU(inplace=True)(x)
    assert torch.equal(y, expected)
    assert (y.data_ptr() == x.data_ptr()) == (dtype == torch.float32)
    assert type(activation(("RELU", {"inplace": True}))) is DtypeAwareReLU
    assert type(activation("RELU")) is torch.nn.ReLU  # out of place already: left as MONAI builds it
    assert type(activation("PRELU")) is torch.nn.PReLU
    assert all(type(layer.adn.A) is DtypeAwareReLU for layer in conv_block(2, 4))
