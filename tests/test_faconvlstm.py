"""FAConvLSTM2D: drop-in contract, every component and ablation, attention, seasonal code."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from faextract.models import ConvLSTM2D, FAConvLSTM2D
from faextract.models.seasonal import seasonal_encoding

COMPONENTS = ["factorized", "multiscale", "se", "peephole", "attention", "temporal_attention"]


@pytest.mark.parametrize(
    "padding,strides,data_format,return_sequences,return_state,go_backwards",
    list(
        itertools.product(
            ["valid", "same"],
            [1, 2],
            ["channels_last", "channels_first"],
            [False, True],
            [False, True],
            [False, True],
        )
    ),
)
def test_drop_in_shapes_equal_convlstm(
    padding, strides, data_format, return_sequences, return_state, go_backwards
):
    args = dict(
        filters=6,
        kernel_size=(3, 2),
        strides=strides,
        padding=padding,
        data_format=data_format,
        return_sequences=return_sequences,
        return_state=return_state,
        go_backwards=go_backwards,
    )
    x = (
        torch.randn(2, 5, 11, 9, 3)
        if data_format == "channels_last"
        else torch.randn(2, 5, 3, 11, 9)
    )
    base = ConvLSTM2D(**args)(x)
    fa = FAConvLSTM2D(**args)(x)
    base = base if isinstance(base, list) else [base]
    fa = fa if isinstance(fa, list) else [fa]
    assert [tuple(t.shape) for t in fa] == [tuple(t.shape) for t in base]


@pytest.mark.parametrize("off", [None, *COMPONENTS])
def test_forward_backward_every_ablation(off):
    kwargs = {off: False} if off else {}
    layer = FAConvLSTM2D(8, 3, padding="same", return_sequences=True, attention_every=2, **kwargs)
    x = torch.randn(2, 5, 8, 10, 3)
    feats = layer.forward_features(x, times=torch.rand(5))
    assert feats.embeddings.shape == (2, 5, 32)
    assert torch.isfinite(feats.hidden).all() and torch.isfinite(feats.embeddings).all()
    # A loss that is not invariant under the LayerNorm ends of the head.
    probe = torch.randn_like(feats.embeddings)
    loss = (feats.embeddings * probe).sum() + feats.output.pow(2).mean()
    loss.backward()
    silent = [
        n for n, p in layer.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert not silent, f"parameters without gradient: {silent}"
    names = {n.split(".")[0] for n, _ in layer.named_parameters()}
    if off == "attention":
        assert "axial" not in names
    if off == "peephole":
        assert "peep" not in names
    if off == "se":
        assert "se_block" not in names
    if off == "multiscale":
        assert "branches" not in names
    if off == "factorized":
        assert "kernel" in names and "b_to_gates" not in names


@pytest.mark.parametrize("T,k", [(1, 3), (6, 3), (7, 3), (12, 5), (5, 1)])
def test_attention_runs_ceil_t_over_k_times(T, k):
    layer = FAConvLSTM2D(4, 3, padding="same", attention_every=k, in_channels=2)
    calls = []
    layer.axial.register_forward_hook(lambda *a: calls.append(1))
    feats = layer.forward_features(torch.randn(1, T, 6, 6, 2))
    assert len(calls) == math.ceil(T / k)
    assert [s for s, _ in feats.attention] == list(range(0, T, k))


def test_effective_attention_is_a_distribution_over_the_grid():
    layer = FAConvLSTM2D(
        4, 3, padding="same", attention_heads=2, attention_dim=8, in_channels=2, periodic=True
    )
    feats = layer.forward_features(torch.randn(2, 3, 5, 7, 2))
    _, w = feats.attention[0]
    assert w.row.shape == (2, 2, 5, 7, 7) and w.col.shape == (2, 2, 7, 5, 5)
    eff = w.effective()
    assert eff.shape == (2, 2, 5, 7, 5, 7)
    torch.testing.assert_close(eff.sum(dim=(-1, -2)), torch.ones(2, 2, 5, 7))


def test_a_position_code_lets_attention_express_a_fixed_relation_between_places():
    """With ``attention_position``, where a cell looks can depend on where it is: starting from
    zero it equals content-only attention; once its map is trained, two identical inputs at
    different places attend differently (content-only attention cannot tell them apart)."""
    from faextract.models.attention import AxialAttention

    torch.manual_seed(0)
    plain = AxialAttention(6, 8, 2, periodic=True)
    placed = AxialAttention(6, 8, 2, periodic=True, position=3)
    placed.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(1, 6, 4, 8).expand(1, 6, 4, 8).contiguous()
    torch.testing.assert_close(placed(x)[0], plain(x)[0])
    x = torch.randn(1, 6, 1, 1).expand(1, 6, 4, 8).contiguous()  # the same content everywhere
    with torch.no_grad():
        placed.pos_qk.weight.normal_()
    row_plain = plain(x, need_weights=True)[1].row[0, 0]  # (H, W, W): per row, query x -> key x'
    row_placed = placed(x, need_weights=True)[1].row[0, 0]
    # content-only: every query in a row sees the same logits up to the distance penalty,
    # which is symmetric on a periodic axis; with positions the rows' patterns differ
    assert torch.allclose(row_plain[0], row_plain[1])
    assert not torch.allclose(row_placed[0], row_placed[1], atol=1e-3)
    with pytest.raises(ValueError, match="position frequencies"):
        AxialAttention(6, 8, 2, position=-1)


def test_attention_without_locality_has_no_distance_penalty():
    """``locality=False``: identical content everywhere gives uniform attention (no distance
    term); with the penalty, nearer keys get more weight."""
    from faextract.models.attention import AxialAttention

    torch.manual_seed(0)
    x = torch.randn(1, 6, 1, 1).expand(1, 6, 5, 8).contiguous()
    flat = AxialAttention(6, 8, 2, locality=False)
    near = AxialAttention(6, 8, 2)
    assert flat.distance_scale is None
    w = flat(x, need_weights=True)[1]
    torch.testing.assert_close(w.row, torch.full_like(w.row, 1 / 8))
    r = near(x, need_weights=True)[1].row[0, 0, 0, 0]  # query x=0 of row 0
    assert r[0] > r[1] > r[2]


def test_causal_temporal_attention_keeps_the_future_out_of_each_steps_embedding():
    """With ``temporal_causal``, z_t is the same whatever follows t in the window (padded
    leading steps included); without it, later steps change earlier embeddings."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 3, 8, 8)
    later = x.clone()
    later[:, 4:] = torch.randn(2, 2, 3, 8, 8)
    step_valid = torch.ones(2, 6, dtype=torch.bool)
    step_valid[1, :2] = False
    for causal in (True, False):
        torch.manual_seed(1)
        layer = FAConvLSTM2D(
            4, 3, padding="same", data_format="channels_first", in_channels=3, embedding_dim=8,
            temporal_heads=2, temporal_causal=causal, attention=False,
        ).eval()  # fmt: skip
        a = layer.forward_features(x, step_valid=step_valid).embeddings
        b = layer.forward_features(later, step_valid=step_valid).embeddings
        assert torch.isfinite(a).all()
        assert torch.allclose(a[:, :4], b[:, :4]) == causal


def test_seasonal_code_is_periodic_across_years_and_calendars():
    from faextract.data.time import season_phase

    for cal, start in [("noleap", 2001), ("360_day", 2001), ("standard", 2003), ("julian", 2001)]:
        import cftime

        a = season_phase(np.array([cftime.datetime(start, 3, 15, calendar=cal)]), cal)
        b = season_phase(np.array([cftime.datetime(start + 6, 3, 15, calendar=cal)]), cal)
        assert a == pytest.approx(b, abs=1e-12)
        pa, pb = (seasonal_encoding(torch.tensor(p), 16) for p in (a, b))
        torch.testing.assert_close(pa, pb)
    # In a leap year the same *day of year* (not the same date) has the same phase.
    leap = season_phase(np.array([cftime.datetime(2004, 3, 14, calendar="standard")]), "standard")
    plain = season_phase(np.array([cftime.datetime(2003, 3, 15, calendar="standard")]), "standard")
    assert leap[0] * 366 == pytest.approx(plain[0] * 365)
    # Different days differ; New Year's day has phase 0; December 31 is just below 1.
    jan1 = season_phase(np.array([cftime.datetime(2001, 1, 1, calendar="360_day")]), "360_day")
    dec30 = season_phase(np.array([cftime.datetime(2001, 12, 30, calendar="360_day")]), "360_day")
    assert jan1[0] == 0.0 and dec30[0] == pytest.approx(359 / 360)


def test_embeddings_depend_on_timestamps_not_step_index():
    torch.manual_seed(0)
    layer = FAConvLSTM2D(4, 3, padding="same", in_channels=2).eval()
    x = torch.randn(1, 6, 6, 6, 2)
    jan = layer.forward_features(x, times=torch.linspace(0.0, 0.02, 6)).embeddings
    jul = layer.forward_features(x, times=torch.linspace(0.5, 0.52, 6)).embeddings
    assert not torch.allclose(jan, jul)
    jan_again = layer.forward_features(x, times=torch.linspace(0.0, 0.02, 6) + 0.0).embeddings
    torch.testing.assert_close(jan, jan_again)


def test_stateful_halves_equal_one_pass():
    torch.manual_seed(0)
    x = torch.randn(2, 9, 7, 7, 3)
    kw = dict(padding="same", return_sequences=True, attention_every=3, in_channels=3)
    whole = FAConvLSTM2D(5, 3, **kw).eval()
    full = whole(x)
    split = FAConvLSTM2D(5, 3, stateful=True, **kw).eval()
    split.load_state_dict(whole.state_dict())
    a = split(x[:, :4])  # a split that is not a multiple of attention_every
    b = split(x[:, 4:])
    torch.testing.assert_close(torch.cat([a, b], dim=1), full)
    split.reset_states()
    torch.testing.assert_close(split(x[:, :4]), a)


def test_initial_state_halves_equal_one_pass_without_attention():
    torch.manual_seed(0)
    x = torch.randn(1, 6, 6, 6, 2)
    kw = dict(
        padding="same", return_sequences=True, return_state=True, attention=False, in_channels=2
    )
    layer = FAConvLSTM2D(4, 3, **kw).eval()
    full, h, c = layer(x)
    a, h1, c1 = layer(x[:, :3])
    b, h2, c2 = layer(x[:, 3:], initial_state=[h1, c1])
    torch.testing.assert_close(torch.cat([a, b], dim=1), full)


def test_far_fewer_parameters_than_convlstm():
    base = ConvLSTM2D(64, 3, padding="same", in_channels=8)
    fa = FAConvLSTM2D(64, 3, padding="same", in_channels=8)
    head = sum(p.numel() for n, p in fa.named_parameters() if n.startswith(("head.", "temporal.")))
    cell = sum(p.numel() for p in fa.parameters()) - head
    assert sum(p.numel() for p in base.parameters()) >= 10 * cell


def test_fused_pointwise_step_matches_reference_and_gradcheck():
    from faextract.models.fused import lstm_pointwise, lstm_pointwise_reference

    torch.manual_seed(0)
    z = torch.randn(2, 8, 3, 4, dtype=torch.float64, requires_grad=True)
    c = torch.randn(2, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    p = torch.randn(3, 2, 1, 1, dtype=torch.float64, requires_grad=True)
    for peep in (p, None):
        got = lstm_pointwise(z, c, peep)
        want = lstm_pointwise_reference(z, c, peep)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(lstm_pointwise, (z, c, p))
    assert torch.autograd.gradcheck(lambda z, c: lstm_pointwise(z, c, None), (z, c))


def test_non_default_activations_take_the_unfused_path():
    layer = FAConvLSTM2D(
        4, 3, padding="same", activation="relu", recurrent_activation="hard_sigmoid", in_channels=2
    )
    assert not layer._fused
    out = layer(torch.randn(1, 3, 5, 5, 2))
    assert torch.isfinite(out).all()


def test_forward_and_backward_under_cpu_bf16_autocast():
    """The hand-written depthwise backward runs outside autocast: it used to get a bf16
    gradient and an fp32 kernel and fail. Gradients reach the fp32 weights, finite."""
    torch.manual_seed(0)
    layer = FAConvLSTM2D(
        8, 3, padding="same", data_format="channels_first", return_sequences=True, in_channels=4
    )
    x = torch.randn(2, 4, 4, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    y.float().sum().backward()
    grads = [p.grad for n, p in layer.named_parameters() if not n.startswith(("head.", "temporal."))]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
