"""Region-aware implicit upsampler: coordinates, equivalences, gradients, sampled positions."""

import pytest
import torch
import torch.nn.functional as F

from scripts.networks import RegionAwareImplicitUpsampler


def _feat(b=2, c=4, h=6, w=7, seed=0, positive=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, c, h, w, generator=g) if positive else torch.randn(b, c, h, w, generator=g)
    return x + 0.1 if positive else x


def decode_literal(up: RegionAwareImplicitUpsampler, feat: torch.Tensor, output_size) -> torch.Tensor:
    """Equation (2) read literally, the reference of the upsampler's fast ``forward``: sample each of the
    k x k codes at its (moved) position, run ``f_theta`` on ``[z_i, x_q - x_i]``, sum (or weight by
    LIIF's areas: the area between the query and the diagonally opposite code). (B, C, h, w) -> (B, out, Hq, Wq)."""
    hq, wq = output_size
    b, kk = feat.shape[0], up.kernel_size * up.kernel_size
    h, w = feat.shape[-2:]
    query, pos = up.positions(feat, [hq, wq])  # (Hq, Wq, 2), (B, K, Hq, Wq, 2) in source-cell units
    grid = torch.stack([(2 * pos[..., 1] + 1) / w - 1, (2 * pos[..., 0] + 1) / h - 1], dim=-1)
    codes = F.grid_sample(feat, grid.reshape(b, kk * hq, wq, 2).to(feat.dtype), mode="bilinear",
                          padding_mode="border", align_corners=False)  # (B, C, K*Hq, Wq)
    rel = query - pos  # (B, K, Hq, Wq, 2)
    rel_map = rel.permute(0, 4, 1, 2, 3).reshape(b, 2, kk * hq, wq).to(feat.dtype)
    pred = up.mlp(torch.cat([codes, rel_map], dim=1)).view(b, up.out_channels, kk, hq, wq)
    if not up.area_weighting:
        return pred.sum(dim=2)
    area = (rel[..., 0].abs() + 1e-6) * (rel[..., 1].abs() + 1e-6)  # (B, 4, Hq, Wq), order 00, 01, 10, 11
    weights = area.flip(1) / area.sum(dim=1, keepdim=True)
    return (pred * weights.unsqueeze(1).to(pred.dtype)).sum(dim=2)


def _identity_mlp(up: RegionAwareImplicitUpsampler, shift: float = 10.0) -> None:
    """MLP that outputs [code; x_q - x_i] exactly (ReLU made harmless by a constant shift)."""
    c = up.in_channels
    assert up.out_channels == c + 2 and up.mlp[0].out_channels == c + 2
    with torch.no_grad():
        up.mlp[0].weight.copy_(torch.eye(c + 2).view(c + 2, c + 2, 1, 1))
        up.mlp[0].bias.fill_(shift)
        up.mlp[2].weight.copy_(torch.eye(c + 2).view(c + 2, c + 2, 1, 1))
        up.mlp[2].bias.fill_(-shift)


@pytest.mark.parametrize("mode", ["region_aware", "local_ensemble"])
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("out_size", [(6, 7), (12, 14), (9, 10), (20, 16), (4, 4)])
def test_output_shapes_any_grid(mode, k, out_size):
    up = RegionAwareImplicitUpsampler(4, 5, hidden_channels=8, kernel_size=k, mode=mode)
    y = up(_feat(), out_size)
    assert y.shape == (2, 5, *out_size)
    assert torch.isfinite(y).all()


def test_non_integer_scale_from_32_to_48():
    up = RegionAwareImplicitUpsampler(3, 2, hidden_channels=8)
    assert up(torch.randn(1, 3, 32, 32), (48, 48)).shape == (1, 2, 48, 48)
    assert up(torch.randn(1, 3, 32, 32), (64, 64)).shape == (1, 2, 64, 64)


def test_zero_offsets_reproduce_local_ensemble():
    torch.manual_seed(1)
    ra = RegionAwareImplicitUpsampler(4, 3, hidden_channels=8, kernel_size=2, mode="region_aware")
    le = RegionAwareImplicitUpsampler(4, 3, hidden_channels=8, kernel_size=2, mode="local_ensemble")
    le.mlp.load_state_dict(ra.mlp.state_dict())
    feat = _feat()
    for size in [(12, 14), (9, 10)]:
        assert torch.allclose(ra(feat, size), le(feat, size), atol=1e-6)
    # once the offset layer is non-zero the two differ
    with torch.no_grad():
        ra.offset_conv.bias.fill_(0.3)
    assert not torch.allclose(ra(feat, (12, 14)), le(feat, (12, 14)), atol=1e-4)


def test_area_weighted_local_ensemble_with_identity_mlp_is_bilinear_interpolation():
    # LIIF convention check: with f_theta returning the code, LIIF area weights give bilinear
    # interpolation with align_corners=False (border-clamped), at integer and non-integer scales.
    feat = _feat(c=3, positive=True)
    up = RegionAwareImplicitUpsampler(3, 5, hidden_channels=5, kernel_size=2, mode="region_aware", area_weighting=True)
    _identity_mlp(up)
    for size in [(12, 14), (20, 16), (6, 7)]:
        y = up(feat, size)[:, :3]
        ref = F.interpolate(feat, size=size, mode="bilinear", align_corners=False)
        assert torch.allclose(y, ref, atol=1e-5), size


def test_k1_zero_offsets_decode_nearest_code_with_relative_coordinate():
    feat = _feat(c=3, h=6, w=7, positive=True)
    up = RegionAwareImplicitUpsampler(3, 5, hidden_channels=5, kernel_size=1, mode="region_aware")
    _identity_mlp(up)
    hq, wq = 20, 16  # non-integer scales, no ties between two nearest codes
    y = up(feat, (hq, wq))
    codes = F.interpolate(feat, size=(hq, wq), mode="nearest-exact")  # nearest pixel centre
    assert torch.allclose(y[:, :3], codes, atol=1e-5)
    # relative coordinate x_q - x_nearest in source-cell units, computed independently
    uy = (torch.arange(hq) + 0.5) * 6 / hq - 0.5
    ux = (torch.arange(wq) + 0.5) * 7 / wq - 0.5
    ry = (uy - torch.round(uy)).view(hq, 1).expand(hq, wq)
    rx = (ux - torch.round(ux)).view(1, wq).expand(hq, wq)
    assert torch.allclose(y[0, 3], ry, atol=1e-5)
    assert torch.allclose(y[0, 4], rx, atol=1e-5)
    assert ry.abs().max() <= 0.5 + 1e-6


def test_k1_decodes_mlp_of_nearest_code_with_random_mlp():
    torch.manual_seed(3)
    feat = _feat(c=4, h=6, w=7)
    up = RegionAwareImplicitUpsampler(4, 2, hidden_channels=8, kernel_size=1, mode="region_aware")
    hq, wq = 20, 16
    codes = F.interpolate(feat, size=(hq, wq), mode="nearest-exact")
    uy = (torch.arange(hq) + 0.5) * 6 / hq - 0.5
    ux = (torch.arange(wq) + 0.5) * 7 / wq - 0.5
    rel = torch.stack(torch.meshgrid(uy - torch.round(uy), ux - torch.round(ux), indexing="ij"))
    expected = up.mlp(torch.cat([codes, rel.expand(2, -1, -1, -1)], dim=1))
    assert torch.allclose(up(feat, (hq, wq)), expected, atol=1e-5)


@pytest.mark.parametrize("k,area", [(1, False), (2, False), (2, True), (3, False)])
@pytest.mark.parametrize("mode", ["region_aware", "local_ensemble"])
@pytest.mark.parametrize("hidden", [3, 6])  # narrower / wider than the 4 input channels: both code paths
def test_fast_forward_equals_literal_equation_2(k, area, mode, hidden):
    torch.manual_seed(2)
    up = RegionAwareImplicitUpsampler(4, 3, hidden_channels=hidden, kernel_size=k, mode=mode, area_weighting=area)
    if up.offset_conv is not None:
        with torch.no_grad():
            up.offset_conv.weight.normal_(0, 0.5)  # offsets of about a cell, some clamped at borders
            up.offset_conv.bias.normal_(0, 0.5)
    feat = _feat().requires_grad_(True)
    for size in [(6, 7), (12, 14), (9, 10), (4, 3)]:
        fast, ref = up(feat, size), decode_literal(up, feat, size)
        assert torch.allclose(fast, ref, atol=1e-5), size
        with torch.no_grad():  # the inference path (no autograd function) gives the same values
            assert torch.allclose(up(feat, size), ref, atol=1e-5), size
    g_fast = torch.autograd.grad(up(feat, (9, 10)).square().sum(), [feat] + list(up.parameters()))
    g_ref = torch.autograd.grad(decode_literal(up, feat, (9, 10)).square().sum(), [feat] + list(up.parameters()))
    for a, b in zip(g_fast, g_ref):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_gradients_reach_offset_layer_and_mlp_and_offsets_move():
    torch.manual_seed(0)
    up = RegionAwareImplicitUpsampler(4, 3, hidden_channels=8, kernel_size=2)
    feat = _feat()
    target = torch.randn(2, 3, 12, 14)
    assert up.offsets(feat, (12, 14)).abs().max() == 0  # zero-initialised
    opt = torch.optim.SGD(up.parameters(), lr=0.1)
    loss = F.mse_loss(up(feat, (12, 14)), target)
    loss.backward()
    for p in [up.offset_conv.weight, up.offset_conv.bias, up.mlp[0].weight, up.mlp[2].weight]:
        assert p.grad is not None and p.grad.abs().sum() > 0
    opt.step()
    assert up.offsets(feat, (12, 14)).abs().max() > 0


def test_local_ensemble_has_no_offset_layer():
    up = RegionAwareImplicitUpsampler(4, 3, mode="local_ensemble")
    assert up.offset_conv is None and up.offsets(_feat(), (8, 8)) is None


def test_sampling_positions_hand_computed():
    up = RegionAwareImplicitUpsampler(2, 2, hidden_channels=4, kernel_size=2)
    feat = torch.randn(1, 2, 4, 4)
    # target pixel (3, 3) of an 8x8 grid sits at 1.25 source cells -> codes at rows/cols 1 and 2,
    # i.e. target pixels 2.5 and 4.5
    pos = up.sampling_positions(feat, (8, 8), torch.tensor([[3, 3], [0, 7]]))
    assert pos.shape == (1, 2, 4, 2)
    expected = torch.tensor([[2.5, 2.5], [2.5, 4.5], [4.5, 2.5], [4.5, 4.5]])
    assert torch.allclose(pos[0, 0], expected)
    # corner pixel (0, 7): codes clamped to row 0 and column 3 -> target 0.5 and 6.5
    assert torch.allclose(pos[0, 1, :, 0], torch.full((4,), 0.5))
    assert torch.allclose(pos[0, 1, :, 1], torch.tensor([6.5, 6.5, 6.5, 6.5]))
    # a learned offset of +0.5 source cells moves every sample by 1 target pixel (x2 upsampling)
    with torch.no_grad():
        up.offset_conv.bias.fill_(0.5)
    moved = up.sampling_positions(feat, (8, 8), torch.tensor([[3, 3]]))
    assert torch.allclose(moved[0, 0], expected + 1.0)
    with pytest.raises(ValueError, match="inside the target grid"):
        up.sampling_positions(feat, (8, 8), torch.tensor([[8, 0]]))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_sampling_positions_count_and_range(k):
    up = RegionAwareImplicitUpsampler(2, 2, kernel_size=k)
    pos = up.sampling_positions(torch.randn(2, 2, 5, 5), (11, 11), torch.tensor([[5, 5]]))
    assert pos.shape == (2, 1, k * k, 2)
    assert (pos >= -0.5).all() and (pos <= 10.5).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        RegionAwareImplicitUpsampler(2, 2, mode="nearest")
    with pytest.raises(ValueError, match="kernel_size"):
        RegionAwareImplicitUpsampler(2, 2, kernel_size=4)
    with pytest.raises(ValueError, match="area_weighting"):
        RegionAwareImplicitUpsampler(2, 2, kernel_size=3, area_weighting=True)
    with pytest.raises(ValueError, match="expected features"):
        RegionAwareImplicitUpsampler(2, 2)(torch.randn(1, 3, 4, 4), (8, 8))


@pytest.mark.parametrize("grad", [True, False])
def test_bfloat16_autocast_and_bfloat16_module_match_float32(grad):
    """The coordinate term is kept in float32 (it holds positions of the size of the grid): decoding
    under bfloat16 autocast, or with a bfloat16 module, stays within bfloat16 rounding of float32."""
    torch.manual_seed(3)
    up = RegionAwareImplicitUpsampler(8, 3, hidden_channels=4)
    with torch.no_grad():
        up.offset_conv.weight.normal_(0, 0.3)
    feat = torch.randn(2, 8, 40, 40).to(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = up(feat, (80, 80))
    with torch.set_grad_enabled(grad):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = up(feat.requires_grad_(grad), (80, 80))
        half = up.to(torch.bfloat16)(feat.detach().bfloat16(), (80, 80))
    scale = ref.abs().max()
    assert auto.shape == half.shape == ref.shape
    assert (auto.float() - ref).abs().max() < 0.05 * scale
    assert (half.float() - ref).abs().max() < 0.05 * scale
