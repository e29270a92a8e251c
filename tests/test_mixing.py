"""train.mixup: training windows mixed in pairs, cos(theta) x_a + sin(theta) x_b; train.flip:
windows negated."""

from __future__ import annotations

import math

import pytest
import torch

from faextract.config import ConfigError, load_config
from faextract.data.batch import WindowBatch
from faextract.train import train
from faextract.train.mixing import flip_windows, mix_windows


def _batch(B=6, T=4, C=2, H=5, W=7, seed=0) -> WindowBatch:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, T, C, H, W, generator=g) > 0.2
    x = torch.randn(B, T, C, H, W, generator=g) * mask
    time = torch.arange(T).repeat(B, 1) + torch.arange(B)[:, None]
    return WindowBatch(x=x, mask=mask, phase=torch.rand(B, T, generator=g), time=time,
                       lat=torch.linspace(-60, 60, H).repeat(B, 1), index=torch.arange(B))  # fmt: skip


def _coefficients(out: WindowBatch, batch: WindowBatch, a: int, b: int) -> tuple[float, float]:
    """Least-squares ``(c, s)`` with ``out.x[a] = c x[a] + s x[b]`` on the cells valid in both."""
    both = (batch.mask[a] & batch.mask[b]).flatten()
    A = torch.stack([batch.x[a].flatten()[both], batch.x[b].flatten()[both]], dim=1).double()
    coef = torch.linalg.lstsq(A, out.x[a].flatten()[both].double()[:, None]).solution.flatten()
    return float(coef[0]), float(coef[1])


def test_every_window_becomes_a_unit_rotation_of_itself_and_another_window():
    torch.manual_seed(1)
    batch = _batch()
    out = mix_windows(batch, 1.0)
    for a in range(len(batch)):
        fits = []
        for b in range(len(batch)):
            if b == a:
                continue
            c, s = _coefficients(out, batch, a, b)
            resid = out.x[a] - (c * batch.x[a] + s * batch.x[b]) * out.mask[a]
            fits.append((float(resid.abs().max()), b, c, s))
        err, b, c, s = min(fits)
        assert err < 1e-5, "not a combination of two windows"
        assert math.isclose(c * c + s * s, 1.0, abs_tol=1e-5) and c >= 0 and s > 0
        # valid where both windows are, zero elsewhere; the calendar phase is the window's own
        assert torch.equal(out.mask[a], batch.mask[a] & batch.mask[b])
        assert not out.x[a][~out.mask[a]].any()
        torch.testing.assert_close(out.phase[a], batch.phase[a])


def test_mixing_keeps_the_variance_of_independent_anomalies():
    torch.manual_seed(2)
    B, T, C, H, W = 64, 3, 1, 16, 16
    batch = WindowBatch(x=torch.randn(B, T, C, H, W) * 2.0, mask=torch.ones(B, T, C, H, W, dtype=torch.bool),
                        phase=torch.zeros(B, T), time=torch.zeros(B, T, dtype=torch.long),
                        lat=torch.zeros(B, H), index=torch.arange(B))  # fmt: skip
    out = mix_windows(batch, 1.0)
    assert math.isclose(float(out.x.var()), 4.0, rel_tol=0.05)
    assert not torch.allclose(out.x, batch.x)


def test_windows_mix_only_within_their_spatial_tile_and_probability_zero_is_identity():
    torch.manual_seed(3)
    batch = _batch(B=6)
    tiles = torch.tensor([0, 1, 0, 1, 0, 2])  # window 5 is alone in its tile
    out = mix_windows(batch, 1.0, tiles)
    for a in range(5):
        partners = [b for b in range(6) if b != a and tiles[b] == tiles[a]]
        err = min(
            float((out.x[a] - (c * batch.x[a] + s * batch.x[b]) * out.mask[a]).abs().max())
            for b in partners
            for c, s in [_coefficients(out, batch, a, b)]
        )
        assert err < 1e-5
    torch.testing.assert_close(out.x[5], batch.x[5])
    assert mix_windows(batch, 0.0, tiles) is batch


def test_a_step_padded_in_the_partner_becomes_padding():
    torch.manual_seed(4)
    batch = _batch(B=2, T=4)
    batch.time[1, 3] = -1
    batch.x[1, 3] = 0
    batch.mask[1, 3] = False
    out = mix_windows(batch, 1.0)
    assert out.time[0, 3] == -1 and not out.mask[0, 3].any() and not out.x[0, 3].any()
    assert (out.time[0, :3] >= 0).all()


def test_mixup_outside_zero_to_one_or_with_the_compressor_is_a_config_error():
    with pytest.raises(ConfigError, match=r"train.mixup: expected a probability in \[0, 1\]"):
        load_config(None, ["train.mixup=1.5"])
    with pytest.raises(ConfigError, match=r"train.mixup: expected 0 with job: compressor"):
        load_config(None, ["job=compressor", "train.mixup=0.5"])


@pytest.mark.parametrize("augment", ["train.mixup=1.0", "train.flip=0.5"])
def test_training_with_an_augmentation_changes_the_run_and_resumes_exactly(tmp_path, tiny_config, augment):
    args = (augment, "train.deterministic=true")
    plain = tmp_path / "plain"
    train(tiny_config("train.epochs=1", "train.deterministic=true"), plain, plain_progress=True)
    full = tmp_path / "full"
    train(tiny_config("train.epochs=2", *args), full, plain_progress=True)
    part = tmp_path / "part"
    train(tiny_config("train.epochs=1", *args), part, plain_progress=True)
    from faextract.checkpoint import load_checkpoint

    one = load_checkpoint(part / "last.pt").state_dict
    ref = load_checkpoint(plain / "last.pt").state_dict
    assert any(not torch.allclose(one[k], ref[k]) for k in ref if ref[k].is_floating_point())
    train(tiny_config("train.epochs=2", *args), part, resume=True, plain_progress=True)
    a, b = load_checkpoint(full / "last.pt").state_dict, load_checkpoint(part / "last.pt").state_dict
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_flipping_negates_whole_windows_with_its_probability_and_keeps_the_rest():
    torch.manual_seed(3)
    batch = _batch(B=400, T=2, H=3, W=3)
    out = flip_windows(batch, 0.3)
    signs = []
    for a in range(len(batch)):
        if torch.equal(out.x[a], batch.x[a]):
            signs.append(1)
        else:
            torch.testing.assert_close(out.x[a], -batch.x[a])
            signs.append(-1)
    assert 0.22 < signs.count(-1) / len(signs) < 0.38
    for key in ("mask", "phase", "time", "lat", "index"):
        assert torch.equal(getattr(out, key), getattr(batch, key))
    assert flip_windows(batch, 0.0) is batch
    assert torch.equal(flip_windows(batch, 1.0).x, -batch.x)


def test_flip_outside_zero_to_one_or_with_the_compressor_is_a_config_error():
    with pytest.raises(ConfigError, match=r"train.flip: expected a probability in \[0, 1\]"):
        load_config(None, ["train.flip=-0.1"])
    with pytest.raises(ConfigError, match=r"train.flip: expected 0 with job: compressor"):
        load_config(None, ["job=compressor", "train.flip=0.5"])

