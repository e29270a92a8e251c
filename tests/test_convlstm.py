"""ConvLSTM2D against Keras 3 (the test oracle) and its state contract."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from faextract.models.convlstm import ConvLSTM2D


def _keras():
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("keras is not on the torch backend (set KERAS_BACKEND=torch)")
    return keras


def _np(t):
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


KERAS_CASES = [
    dict(padding=p, strides=s, dilation_rate=d, kernel_size=k, data_format=f, go_backwards=g)
    for p, s, d, k, f, g in itertools.product(
        ["valid", "same"],
        [1, 2],
        [1, 2],
        [(3, 3), (2, 3)],
        ["channels_last", "channels_first"],
        [False, True],
    )
    if not (s > 1 and d > 1)
]


@pytest.mark.keras
@pytest.mark.parametrize("case", KERAS_CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_matches_keras(case, rng):
    keras = _keras()
    x = rng.standard_normal((2, 4, 9, 11, 3)).astype("float32")
    if case["data_format"] == "channels_first":
        x = np.transpose(x, (0, 1, 4, 2, 3))
    args = dict(case, filters=5, return_sequences=True, return_state=True)
    kl = keras.layers.ConvLSTM2D(**args)
    expected = [_np(o) for o in kl(x)]
    tl = ConvLSTM2D(**args)
    tl.load_keras_weights(*[_np(w.value) for w in kl.weights])
    got = [_np(o) for o in tl(torch.from_numpy(x))]
    for e, g in zip(expected, got, strict=True):
        assert e.shape == g.shape
        np.testing.assert_allclose(g, e, atol=1e-5)
    # and back: our weights in Keras layout load into Keras
    for w, ours in zip(kl.weights, tl.keras_weights(), strict=True):
        np.testing.assert_array_equal(_np(w.value), ours)


@pytest.mark.keras
@pytest.mark.parametrize(
    "return_sequences,return_state", [(False, False), (True, False), (False, True)]
)
def test_return_modes_match_keras(return_sequences, return_state, rng):
    keras = _keras()
    x = rng.standard_normal((1, 3, 6, 6, 2)).astype("float32")
    kl = keras.layers.ConvLSTM2D(4, 3, return_sequences=return_sequences, return_state=return_state)
    expected = kl(x)
    tl = ConvLSTM2D(4, 3, return_sequences=return_sequences, return_state=return_state)
    tl.load_keras_weights(*[_np(w.value) for w in kl.weights])
    got = tl(torch.from_numpy(x))
    if return_state:
        assert len(got) == 3
        for e, g in zip(expected, got, strict=True):
            np.testing.assert_allclose(_np(g), _np(e), atol=1e-5)
    else:
        np.testing.assert_allclose(_np(got), _np(expected), atol=1e-5)


@pytest.mark.keras
def test_initial_state_matches_keras(rng):
    keras = _keras()
    x = rng.standard_normal((2, 3, 6, 6, 2)).astype("float32")
    h0 = rng.standard_normal((2, 6, 6, 4)).astype("float32")
    c0 = rng.standard_normal((2, 6, 6, 4)).astype("float32")
    kl = keras.layers.ConvLSTM2D(4, 3, padding="same", return_sequences=True)
    expected = _np(kl(x, initial_state=[h0, c0]))
    tl = ConvLSTM2D(4, 3, padding="same", return_sequences=True)
    tl.load_keras_weights(*[_np(w.value) for w in kl.weights])
    got = _np(tl(torch.from_numpy(x), initial_state=[torch.from_numpy(h0), torch.from_numpy(c0)]))
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_initializers_follow_keras():
    layer = ConvLSTM2D(8, 3, in_channels=4)
    limit = np.sqrt(6.0 / (9 * 4 + 9 * 32))
    assert layer.kernel.abs().max() <= limit
    rk = layer.keras_weights()[1].reshape(-1, 32)  # (kh*kw*F, 4F): orthogonal columns
    np.testing.assert_allclose(rk.T @ rk, np.eye(32), atol=1e-5)
    bias = layer.bias.detach().numpy()
    assert (bias[8:16] == 1).all() and (bias[:8] == 0).all() and (bias[16:] == 0).all()


@pytest.mark.parametrize("mode", ["stateful", "initial_state"])
def test_two_halves_equal_one_pass(mode, rng):
    torch.manual_seed(0)
    x = torch.from_numpy(rng.standard_normal((2, 8, 7, 7, 3)).astype("float32"))
    whole = ConvLSTM2D(
        4, 3, padding="same", return_sequences=True, return_state=True, in_channels=3
    )
    full, h, c = whole(x)
    half = ConvLSTM2D(
        4,
        3,
        padding="same",
        return_sequences=True,
        return_state=True,
        stateful=(mode == "stateful"),
        in_channels=3,
    )
    half.load_state_dict(whole.state_dict())
    a, h1, c1 = half(x[:, :4])
    b, h2, c2 = half(x[:, 4:]) if mode == "stateful" else half(x[:, 4:], initial_state=[h1, c1])
    torch.testing.assert_close(torch.cat([a, b], dim=1), full)
    torch.testing.assert_close(h2, h)


def test_dropout_only_in_training():
    layer = ConvLSTM2D(
        4, 3, dropout=0.5, recurrent_dropout=0.5, return_sequences=True, in_channels=2
    )
    x = torch.randn(1, 3, 5, 5, 2)
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x))
    layer.train()
    assert not torch.allclose(layer(x), layer(x))


def test_contract_errors():
    with pytest.raises(ValueError, match="cannot be combined"):
        ConvLSTM2D(4, 3, strides=2, dilation_rate=2)
    with pytest.raises(ValueError, match="padding"):
        ConvLSTM2D(4, 3, padding="causal")
    layer = ConvLSTM2D(4, 3, in_channels=2)
    with pytest.raises(ValueError, match="expected 2 input channels, got 3"):
        layer(torch.randn(1, 2, 5, 5, 3))
