"""``model.eof_components``: the leading EOFs of the input as the first components of z."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from faextract.checkpoint import load_checkpoint
from faextract.train import train


def _planted(n=200, size=24, seed=0):
    """Rows with two planted patterns of std ~3 and ~2 over unit-weighted cells, plus noise."""
    g = torch.Generator().manual_seed(seed)
    p1, p2 = torch.zeros(size), torch.zeros(size)
    p1[:6], p2[6:12] = 1 / 6**0.5, 1 / 6**0.5
    a = torch.randn(n, generator=g) * 3
    b = torch.randn(n, generator=g) * 2
    a, b = a - a.mean(), b - b.mean()
    b = b - (a @ b) / (a @ a) * a  # uncorrelated in the sample: each is one PC exactly
    rows = a[:, None] * p1 + b[:, None] * p2 + 0.05 * torch.randn(n, size, generator=g) + 5.0
    return rows, a, b


def test_the_fit_recovers_planted_patterns_as_unit_variance_components():
    from faextract.models.eof import EOFProjection

    rows, a, b = _planted()
    eof = EOFProjection(2, rows.shape[1])
    assert not eof.is_fitted
    eof.fit(rows, torch.ones(rows.shape[1]), (4, 6))
    pcs = eof(rows)
    assert pcs.shape == (200, 2)
    torch.testing.assert_close(pcs.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(pcs.std(0), torch.ones(2), atol=1e-5, rtol=0)
    # the leading component is the larger pattern's amplitude, the second the other's
    assert abs(np.corrcoef(pcs[:, 0], a)[0, 1]) > 0.999
    assert abs(np.corrcoef(pcs[:, 1], b)[0, 1]) > 0.999
    assert float(eof.explained.sum()) > 0.95
    with torch.autocast("cpu", dtype=torch.bfloat16):  # (CUDA runs bf16 autocast)
        assert eof(rows).dtype == torch.float32
        torch.testing.assert_close(eof(rows), pcs)
    # signs fixed: each pattern's largest loading is positive (a refit of a negated copy agrees)
    again = EOFProjection(2, rows.shape[1])
    again.fit(10.0 - rows, torch.ones(rows.shape[1]), (4, 6))
    torch.testing.assert_close(again(10.0 - rows).abs(), pcs.abs(), atol=1e-4, rtol=0)
    assert (eof.patterns.gather(1, eof.patterns.abs().argmax(1, keepdim=True)) > 0).all()


def test_north_rule_tells_a_separated_leading_subspace_from_one_sampling_picked():
    from faextract.models.eof import EOFProjection, separated_gaps
    from faextract.train.eofs import unseparated_notice

    rows, _, _ = _planted()  # variances ~9 and ~4, then noise 0.0025 in 24 cells
    spectrum = EOFProjection(2, rows.shape[1]).fit(rows, torch.ones(rows.shape[1]), (4, 6))
    assert spectrum.shape == (24,) and float(spectrum.sum()) == pytest.approx(1.0)
    assert bool((spectrum[:-1] >= spectrum[1:]).all())
    assert separated_gaps(spectrum, 200, 8)[:2] == [1, 2]  # the noise EOFs are not apart
    assert unseparated_notice(spectrum, 200, 2) is None
    # shares 40, 20, 19, 10 %: gap 2-3 is below EOF 2's sampling error with 200 steps
    # (0.20 * sqrt(2 / 200) = 2 %), above it with 20,000
    flat = torch.tensor([0.40, 0.20, 0.19, 0.10, 0.06, 0.057])
    assert separated_gaps(flat, 200, 8) == [1, 3, 4]
    assert separated_gaps(flat, 20_000, 8) == [1, 2, 3, 4, 5]
    assert separated_gaps(flat, 200, 2) == [1]
    text = unseparated_notice(flat, 200, 2)
    assert "EOF 2 (20.0% of the variance) and EOF 3 (19.0%)" in text and "+-2.0%" in text
    assert "after EOF 1, 3, 4" in text and "\n" not in text
    assert unseparated_notice(flat, 200, 3) is None
    assert "none of the first 8" in unseparated_notice(torch.full((12,), 1 / 12), 100, 4)


def test_cell_weights_make_the_fit_area_weighted():
    from faextract.models.eof import EOFProjection
    from faextract.train.eofs import cell_weights

    # two coarse rows, one at the equator, one at 80N; the 80N cells carry more raw variance
    w = cell_weights(torch.tensor([0.0, 0.0, 80.0, 80.0]), channels=1, grid=(2, 3))
    torch.testing.assert_close(w, torch.tensor([1.0] * 3 + [np.sqrt(np.cos(np.deg2rad(80)))] * 3,
                                               dtype=torch.float64))  # fmt: skip
    g = torch.Generator().manual_seed(1)
    tropics = torch.randn(300, generator=g)
    polar = torch.randn(300, generator=g) * 1.5
    rows = torch.cat([tropics[:, None].expand(300, 3), polar[:, None].expand(300, 3)], 1)
    plain, weighted = EOFProjection(1, 6), EOFProjection(1, 6)
    plain.fit(rows, torch.ones(6), (4, 3))
    weighted.fit(rows, w, (4, 3))
    # unweighted, the polar pattern leads (std 1.5 > 1); area-weighted (1.5^2 cos 80 < 1), the tropics
    assert abs(np.corrcoef(plain(rows)[:, 0], polar)[0, 1]) > 0.99
    assert abs(np.corrcoef(weighted(rows)[:, 0], tropics)[0, 1]) > 0.99
    # padded rows (NaN latitude) weigh nothing
    assert cell_weights(torch.tensor([0.0, float("nan")]), 1, (2, 1))[1] == 0


def _net(k: int):
    from faextract.models.autoencoder import ClimateAutoencoder

    torch.manual_seed(0)
    return ClimateAutoencoder(2, embedding_dim=6, head_grid=(2, 2), filters=8, stem_channels=4,
                              embedding_grid=(4, 4), embedding_horizon=1, eof_components=k,
                              eof_grid=(8, 8))  # fmt: skip


def test_z_starts_with_the_principal_components_and_only_the_rest_is_learned():
    net = _net(2)
    x = torch.randn(3, 5, 2, 16, 16)
    mask = torch.rand(3, 5, 2, 16, 16) > 0.2
    x = x * mask
    with pytest.raises(RuntimeError, match="not fitted"):
        net(x, mask)
    rows = net.pooled_input(x, mask, (8, 8)).reshape(15, -1)  # the EOFs' own grid
    net.eof.fit(rows, torch.ones(rows.shape[1]), (16, 16))
    out = net(x, mask)
    assert out.embeddings.shape == (3, 5, 6)
    torch.testing.assert_close(out.embeddings[..., :2], net.eof(net.pooled_input(x, mask, (8, 8))))
    # the head makes the other 4; the EOFs are buffers, so no gradient reaches them
    assert not any(n.startswith("eof") for n, _ in net.named_parameters())
    out.embeddings[..., :2].sum().backward(retain_graph=True)
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in net.parameters())
    out.embeddings[..., 2:].sum().backward()
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in net.parameters())
    # saved and loaded with the weights, fitted state included
    again = _net(2)
    again.load_state_dict(net.state_dict())
    assert again.eof.is_fitted and again.eof.input_grid == (16, 16)
    torch.testing.assert_close(again(x, mask).embeddings, out.embeddings)
    with pytest.raises(ValueError, match="fitted on the whole 16x16 grid; got 8x16"):
        again(x[..., :8, :], mask[..., :8, :])


def test_embedding_noise_leaves_the_eof_components_clean():
    net = _net(2)
    net.embedding_noise = 0.5
    z = torch.randn(4, 6, 6)
    heard = torch.stack([net.train().noisy(z) for _ in range(50)])
    torch.testing.assert_close(heard[..., :2], z[..., :2].expand(50, 4, 6, 2))  # fixed: clean
    ratio = (heard - z)[..., 2:].std(dim=(0, 1, 2)) / z[..., 2:].reshape(-1, 4).std(dim=0)
    torch.testing.assert_close(ratio, torch.full((4,), 0.5), rtol=0.15, atol=0)


def test_the_model_refuses_impossible_component_counts():
    with pytest.raises(ValueError, match=r"eof_components must be in \[0, 5\]"):
        _net(6)
    from faextract.models.autoencoder import ClimateAutoencoder

    with pytest.raises(ValueError, match="cannot be combined"):
        ClimateAutoencoder(2, embedding_dim=6, eof_components=2, input_skip="linear")


def test_config_checks_eof_components():
    from faextract.config import ConfigError, load_config

    assert load_config(None, []).model.eof_components == 0
    with pytest.raises(ConfigError, match=r"model.eof_components: expected an integer in \[0, "):
        load_config(None, ["model.embedding_dim=8", "model.eof_components=8"])
    with pytest.raises(ConfigError, match="model.eof_components: expected 0 with model.input_skip"):
        load_config(None, ["model.eof_components=4", "model.input_skip=tied"])
    with pytest.raises(ConfigError, match="model.eof_components: expected 0 with spatial tiles"):
        load_config(None, ["model.eof_components=4", "tiles.tile=[8,8]"])
    # FAConvLSTM's temporal attention splits the learned components among its heads
    with pytest.raises(ConfigError, match=r"embedding_dim - eof_components - eof_lag_components "
                       r"\(the components the head makes: 13\) to be a multiple of the "
                       r"faconvlstm cell's temporal_heads \(4\)"):
        load_config(None, ["model.embedding_dim=16", "model.eof_components=3"])
    with pytest.raises(ConfigError, match=r"the head makes: 7\)"):
        load_config(None, ["model.embedding_dim=16", "model.eof_components=8",
                           "model.eof_lag_components=1", "model.eof_lag=11"])
    load_config(None, ["model.embedding_dim=16", "model.eof_components=3", "model.cell=convlstm"])
    with pytest.raises(ConfigError, match=r"multiple of the faconvlstm cell's temporal_heads \(4\), got 10"):
        load_config(None, ["model.embedding_dim=10"])
    load_config(None, ["model.embedding_dim=10", "model.cell_options={temporal_attention: false}"])


def test_training_fits_the_eofs_on_the_training_range_once(tmp_path, tiny_config, capsys):
    cfg = tiny_config("train.epochs=1", "model.eof_components=2")
    run = tmp_path / "run"
    train(cfg, run, plain_progress=True)
    err = capsys.readouterr().err
    assert "model.eof_components: the 2 leading EOFs of the 48 training steps" in err
    assert "notice" not in err  # (two planted modes: EOF 2 stands apart from EOF 3)
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt.model_args["eof_components"] == 2
    net = ckpt.build_model()
    assert net.eof.is_fitted
    # the components are the training range's PCs: unit variance, zero mean over its steps
    x, mask = _training_steps(cfg, ckpt, net.multiple)
    assert x.shape[:2] == (1, 48)
    with torch.no_grad():
        pcs = net.eof(net.pooled_input(x, mask, net.eof_grid))[0].double()
    torch.testing.assert_close(pcs.mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(pcs.std(0), torch.ones(2, dtype=torch.float64), atol=1e-3, rtol=0)
    # embed writes them as the store's first components, and says so
    from faextract.embed import EmbedOptions, embed
    from faextract.store import open_embeddings

    store = tmp_path / "z.zarr"
    embed([str(cfg.data.paths[0])], str(run / "last.pt"), str(store), EmbedOptions(device="cpu"))
    z = open_embeddings(str(store))["embedding"]
    assert z.attrs["eof_components"] == 2 and "components 0-1: the leading principal" in z.attrs["comment"]
    # the grid they were averaged onto: eof_grid's 36 x 72 capped at the data's 12 x 24
    assert list(z.attrs["eof_grid"]) == [12, 24] and "onto 12 x 24 cells" in z.attrs["comment"]
    torch.testing.assert_close(torch.from_numpy(z.values[:48, :2]).double(), pcs, atol=1e-4, rtol=0)
    # a resumed run keeps the checkpoint's EOFs and says nothing of fitting them
    fitted = net.eof.patterns.clone()
    train(tiny_config("train.epochs=2", "model.eof_components=2"), run, resume=True,
          plain_progress=True)  # fmt: skip
    assert "model.eof_components" not in capsys.readouterr().err
    torch.testing.assert_close(load_checkpoint(run / "last.pt").build_model().eof.patterns, fitted)


def test_training_on_fields_without_leading_modes_says_the_eofs_are_not_separated(tmp_path, tiny_config, capsys):
    from faextract.testing import synthetic_cube, write_netcdf

    ds = synthetic_cube(nt=60, nlat=12, nlon=24, variables=("sst", "t2m", "sp"), seed=1)
    rng = np.random.default_rng(0)
    for name in ds.data_vars:  # white noise: no EOF stands apart from the next
        ds[name].values[...] = rng.standard_normal(ds[name].shape).astype(ds[name].dtype)
    write_netcdf(ds, tmp_path / "noise.nc")
    cfg = tiny_config("train.epochs=1", "model.eof_components=2", f"data.paths=[{tmp_path / 'noise.nc'}]")
    train(cfg, tmp_path / "run", plain_progress=True)
    err = capsys.readouterr().err
    assert "model.eof_components: notice: EOF 2 (" in err and "(North's rule, 48 steps" in err


def test_a_long_training_range_is_fitted_on_every_nth_step(tmp_path, tiny_config, capsys, monkeypatch):
    import faextract.train.eofs as eofs

    # 48 steps of 3 channels x 12 x 24 cells: 41,472 values; at most 15,000 -> one step in 3
    monkeypatch.setattr(eofs, "MAX_FIT_VALUES", 15_000)
    train(tiny_config("train.epochs=1", "model.eof_components=2"), tmp_path / "run",
          plain_progress=True)  # fmt: skip
    assert "EOFs of the 16 training steps (one in 3)' pooled input" in capsys.readouterr().err


def test_more_components_than_training_steps_is_a_one_line_error(tmp_path, small_nc):
    from typer.testing import CliRunner

    from faextract.cli import app

    result = CliRunner().invoke(app, [
        "train", "--out", str(tmp_path / "run"), "--set", f"data.paths=[{small_nc}]",
        "--set", "model.embedding_dim=64", "--set", "model.eof_components=62",
        "--set", "model.cell_options={temporal_heads: 2}", "--set", "data.val_fraction=0.2",
    ])  # fmt: skip
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and "model.eof_components=62: EOF fit: 62 components need more" in lines[0]
    assert "48" in lines[0] and "Traceback" not in result.output


def _training_steps(cfg, ckpt, multiple):
    """The run's 48 training steps, normalized as training does: ``(1, 48, C, H, W)``, mask."""
    from faextract.data.dataset import CubeSource, WindowDataset
    from faextract.data.tiling import TileSpec

    source = CubeSource(paths=tuple(str(p) for p in cfg.data.paths), time_range=(0, 48))
    ds = WindowDataset(source, ckpt.stats, TileSpec(window=48, stride=48, multiple=multiple))
    batch = next(iter(ds))
    return batch.x, batch.mask


def test_lagged_components_are_the_leading_ones_steps_back_within_the_window():
    """``eof_lag_components``: z's next m components are the first m EOF components ``eof_lag``
    steps back; before the window's first valid step holds them, that step's."""
    from faextract.models.autoencoder import ClimateAutoencoder

    torch.manual_seed(0)
    net = ClimateAutoencoder(2, cell="convlstm", embedding_dim=6, head_grid=(2, 2), filters=8,
                             stem_channels=4, embedding_grid=(4, 4), embedding_horizon=1,
                             eof_components=2, eof_grid=(8, 8), eof_lag=2,
                             eof_lag_components=1)  # fmt: skip
    x = torch.randn(2, 6, 2, 16, 16)
    mask = torch.ones_like(x, dtype=torch.bool)
    rows = net.pooled_input(x, mask, (8, 8)).reshape(12, -1)
    net.eof.fit(rows, torch.ones(rows.shape[1]), (16, 16))
    step_valid = torch.ones(2, 6, dtype=torch.bool)
    step_valid[1, :3] = False  # the second window starts with 3 padded steps
    z = net(x, mask, step_valid=step_valid).embeddings
    assert z.shape == (2, 6, 6) and net.fixed_components == 3
    pcs = z[..., :2]
    torch.testing.assert_close(pcs, net.eof(net.pooled_input(x, mask, (8, 8))))
    lagged = z[..., 2]
    torch.testing.assert_close(lagged[0], pcs[0, [0, 0, 0, 1, 2, 3], 0])
    torch.testing.assert_close(lagged[1, 3:], pcs[1, [3, 3, 3], 0])
    # fixed, like the components at t: no gradient, and heard clean under embedding noise
    z[..., 2].sum().backward(retain_graph=True)
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in net.parameters())
    net.embedding_noise = 0.5
    heard = net.train().noisy(z.detach())
    torch.testing.assert_close(heard[..., :3], z.detach()[..., :3])
    with pytest.raises(ValueError, match="eof_lag_components must be in"):
        ClimateAutoencoder(2, embedding_dim=6, eof_components=2, eof_lag=2, eof_lag_components=3)


def test_config_checks_the_lagged_components():
    from faextract.config import ConfigError, load_config

    ok = load_config(None, ["model.embedding_dim=16", "model.eof_components=8",
                            "model.eof_lag_components=1", "model.eof_lag=11",
                            "model.cell_options={temporal_heads: 1}"])  # fmt: skip
    assert (ok.model.eof_lag_components, ok.model.eof_lag) == (1, 11)
    bad = {
        "model.eof_lag_components: expected an integer in [0, eof_components = 2]":
            ["model.eof_components=2", "model.eof_lag_components=3", "model.eof_lag=1"],
        "model.eof_lag: expected an integer in [1, tiles.window - 1 = 11]":
            ["model.eof_components=2", "model.eof_lag_components=1", "model.eof_lag=12"],
        "model.eof_lag_components: expected fewer than embedding_dim - eof_components = 2":
            ["model.embedding_dim=4", "model.eof_components=2", "model.eof_lag_components=2",
             "model.eof_lag=1"],
    }  # fmt: skip
    for message, sets in bad.items():
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_config(None, ["tiles.window=12", "model.cell=convlstm", "model.cell_options={}",
                                   *sets])


def test_embed_warms_up_over_the_lag_and_the_store_says_which_components_are_lagged(
    tmp_path, tiny_config, capsys
):
    from faextract.embed import EmbedOptions, embed
    from faextract.errors import FaextractError
    from faextract.evaluate.stores import load_store
    from faextract.store import open_embeddings

    sets = ["train.epochs=1", "model.eof_components=2", "model.eof_lag_components=1",
            "model.eof_lag=3", "tiles.window=6", "model.cell=convlstm",
            "model.cell_options={}"]  # fmt: skip
    cfg = tiny_config(*sets)
    run = tmp_path / "run"
    train(cfg, run, plain_progress=True)
    assert "z's components 2-2 are the first 1 of them 3 steps back" in capsys.readouterr().err
    ckpt = load_checkpoint(run / "last.pt")
    net = ckpt.build_model()
    store = tmp_path / "z.zarr"
    # windows of 2 kept steps: most kept steps' lag reaches into the warm-up
    embed([str(cfg.data.paths[0])], str(run / "last.pt"), str(store),
          EmbedOptions(device="cpu", keep=2))  # fmt: skip
    z = open_embeddings(str(store))["embedding"]
    assert z.attrs["eof_lag_components"] == 1 and z.attrs["eof_lag"] == 3
    assert "components 2-2: components 0-0 3 time steps earlier" in z.attrs["comment"]
    x, mask = _training_steps(cfg, ckpt, net.multiple)
    with torch.no_grad():
        pcs = net.eof(net.pooled_input(x, mask, net.eof_grid))[0]
    values = torch.from_numpy(z.values[:48])
    torch.testing.assert_close(values[:, :2], pcs, atol=1e-4, rtol=0)
    # the record's step t - 3, whatever window t was kept from; its first step before that
    torch.testing.assert_close(values[3:, 2], pcs[:-3, 0], atol=1e-4, rtol=0)
    torch.testing.assert_close(values[:3, 2], pcs[[0, 0, 0], 0], atol=1e-4, rtol=0)
    assert load_store(str(store)).eof_components == 3  # evaluate's fixed part: both kinds
    with pytest.raises(FaextractError, match="--warmup 1 is shorter than the 3 steps back"):
        embed([str(cfg.data.paths[0])], str(run / "last.pt"), str(tmp_path / "w.zarr"),
              EmbedOptions(device="cpu", warmup=1))  # fmt: skip
