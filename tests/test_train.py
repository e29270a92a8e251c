"""Training: it learns, checkpoints are complete and atomic, resume continues exactly."""

from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

from faextract.checkpoint import Checkpoint, load_checkpoint, write_atomic
from faextract.cli import app
from faextract.errors import FaextractError
from faextract.train import read_metrics, train

runner = CliRunner()


def test_train_writes_a_self_describing_checkpoint(tmp_path, tiny_config):
    result = train(tiny_config("train.epochs=2"), tmp_path / "run", plain_progress=True)
    assert result.status == "finished" and result.epoch == 2
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert isinstance(ckpt, Checkpoint)
    assert ckpt.channels == ("sst", "t2m", "sp") and ckpt.variables == ("sst", "t2m", "sp")
    assert ckpt.grid["calendar"] == "noleap" and ckpt.grid["periodic"] is True
    assert ckpt.faextract_version and ckpt.config["model"]["filters"] == 8
    assert ckpt.tiles.window == 6 and ckpt.tiles.multiple == 2**ckpt.model_args["downsample"]
    assert ckpt.training.epoch == 2 and ckpt.training.optimizer and ckpt.training.rng
    assert ckpt.model_args["causal_embedding"] is True  # z_t from steps <= t
    # a checkpoint written before that was recorded keeps the model it was trained as
    payload = ckpt.to_payload()
    del payload["model"]["args"]["causal_embedding"]
    assert Checkpoint.from_payload(payload).model_args["causal_embedding"] is False
    model = ckpt.build_model()  # rebuilds without the config file
    assert isinstance(model, torch.nn.Module)
    assert list(ckpt.stats["channel"].values) == ["sst", "t2m", "sp"]
    rows = read_metrics(tmp_path / "run")
    assert {r["kind"] for r in rows} == {"train", "val"}
    val = [r for r in rows if r["kind"] == "val"]
    assert all(float(r["persistence"]) > 0 and float(r["climatology"]) > 0 for r in val)
    assert all(math.isfinite(float(r["embedding"])) and float(r["embedding"]) > 0 for r in val)
    assert (tmp_path / "run" / "config.yaml").exists() and (tmp_path / "run" / "best.pt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["faconvlstm", "convlstm", "minconvgru", "minconvlstm"])
def test_loss_decreases_for_every_cell(tmp_path, tiny_config, cell):
    options = [] if cell == "faconvlstm" else ["model.cell_options={}"]  # TINY's are FA's
    cfg = tiny_config(
        "train.epochs=4", f"model.cell={cell}", "train.lr=0.01", "model.objective=reconstruct",
        *options,
    )  # fmt: skip
    train(cfg, tmp_path / cell, plain_progress=True)
    losses = [float(r["recon"]) for r in read_metrics(tmp_path / cell) if r["kind"] == "train"]
    assert losses[-1] < 0.8 * losses[0]


def test_resume_continues_the_same_curve(tmp_path, tiny_config):
    full = tmp_path / "full"
    train(tiny_config("train.epochs=2", "train.deterministic=true"), full, plain_progress=True)
    part = tmp_path / "part"
    train(tiny_config("train.epochs=1", "train.deterministic=true"), part, plain_progress=True)
    result = train(
        tiny_config("train.epochs=2", "train.deterministic=true"),
        part,
        resume=True,
        plain_progress=True,
    )
    assert result.epoch == 2
    a = [r for r in read_metrics(full) if r["kind"] == "train"]
    b = [r for r in read_metrics(part) if r["kind"] == "train"]
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert math.isclose(float(ra["loss"]), float(rb["loss"]), rel_tol=1e-4), (ra, rb)
    wa = load_checkpoint(full / "last.pt").state_dict
    wb = load_checkpoint(part / "last.pt").state_dict
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)


def _signal_at_step(monkeypatch, n: int):
    """Send this process SIGUSR1 (SLURM's warning) during the n-th training step; returns the
    real step function, to put back before resuming."""
    import os
    import signal

    import faextract.train.losses as tr

    real, calls = tr.compute_losses, {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), signal.SIGUSR1)
        return real(*a, **k)

    monkeypatch.setattr(tr, "compute_losses", flaky)
    return real


def test_resume_mid_epoch_after_a_signal(tmp_path, tiny_config, monkeypatch):
    """A preempted job (SIGUSR1) checkpoints mid-epoch; the resumed job ends where an uninterrupted one does."""
    import faextract.train.losses as tr

    full = tmp_path / "full"
    train(tiny_config("train.epochs=2"), full, plain_progress=True)

    real = _signal_at_step(monkeypatch, 3)
    part = tmp_path / "part"
    r1 = train(tiny_config("train.epochs=2"), part, plain_progress=True)
    assert r1.status == "preempted" and (part / "PREEMPTED").exists()
    assert load_checkpoint(part / "last.pt").training.step == 3
    monkeypatch.setattr(tr, "compute_losses", real)
    r2 = train(tiny_config("train.epochs=2"), part, resume=True, plain_progress=True)
    assert r2.status == "finished" and r2.step == load_checkpoint(full / "last.pt").training.step
    assert not (part / "PREEMPTED").exists()


def test_resume_with_incompatible_config_is_refused(tmp_path, tiny_config):
    train(tiny_config("train.epochs=1"), tmp_path / "run", plain_progress=True)
    with pytest.raises(FaextractError, match="model filters is 8 in the checkpoint, 16 now"):
        train(tiny_config("train.epochs=2", "model.filters=16"), tmp_path / "run", resume=True)


def test_resume_with_another_member_is_refused(tmp_path, small_ds):
    import xarray as xr

    from faextract.config import load_config
    from faextract.testing import TINY_RUN

    ens = xr.concat([small_ds, small_ds + 1.0], dim="number", data_vars="all")
    ens.assign_coords(number=[0, 1]).to_netcdf(tmp_path / "ens.nc")

    def config(*extra):
        return load_config(None, [*TINY_RUN, f"data.paths=[{tmp_path / 'ens.nc'}]", *extra])

    train(config("train.epochs=1", "data.select={number: 0}"), tmp_path / "run")
    with pytest.raises(
        FaextractError, match=r"data.select \{'number': '0'\}.*now has \{'number': '1'\}"
    ):
        train(config("train.epochs=2", "data.select={number: 1}"), tmp_path / "run", resume=True)


def test_too_short_a_cube_is_named(tmp_path, small_ds):
    from faextract.config import load_config
    from faextract.testing import TINY_RUN, write_netcdf

    write_netcdf(small_ds.isel(time=slice(0, 8)), tmp_path / "short.nc")
    config = load_config(None, [*TINY_RUN, f"data.paths=[{tmp_path / 'short.nc'}]"])
    with pytest.raises(FaextractError, match=r"short.nc: the cube has 8 time steps: too few"):
        train(config, tmp_path / "run")


def test_run_dir_not_overwritten_without_flag(tmp_path, tiny_config):
    run = tmp_path / "run"
    train(tiny_config("train.epochs=1"), run, plain_progress=True)
    before = (run / "last.pt").read_bytes()
    with pytest.raises(FaextractError, match="not empty"):
        train(tiny_config("train.epochs=1"), run)
    assert (run / "last.pt").read_bytes() == before


def test_atomic_checkpoint_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    write_atomic({"model": {"args": {}, "state_dict": {}}, "x": 1}, path)
    before = path.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError):
        write_atomic({"model": {}, "x": 2}, path)
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path], "no temporary file is left behind"


def test_cli_train_errors_are_one_line(tmp_path, small_nc):
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "r"), "--set", "train.epoch=1"])
    assert result.exit_code == 2 and "unknown config key 'train.epoch'" in result.output
    result = runner.invoke(
        app,
        [
            "train",
            "--out",
            str(tmp_path / "r"),
            "--set",
            f"data.paths=[{small_nc}]",
            "--set",
            "data.variables=[msl]",
        ],
    )
    assert result.exit_code == 2 and "unknown variable 'msl'" in result.output
    assert "Traceback" not in result.output


def test_train_says_what_it_does_and_clips_a_warmup_longer_than_the_run(
    tmp_path, tiny_config, capsys
):
    result = train(
        tiny_config("train.epochs=1", "train.warmup_steps=500", "model.embedding_horizon=2",
                    "model.embedding_grid=[3,6]", "model.embedding_norm=false"),
        tmp_path / "run",
        plain_progress=True,
    )  # fmt: skip
    err = capsys.readouterr().err
    assert "warmup_steps=500 is longer than the" in err
    assert "opened " in err and "climatology" in err
    assert "epoch 1/1: validation recon" in err
    assert result.status == "finished"
    args = load_checkpoint(tmp_path / "run" / "last.pt").model_args
    assert args["embedding_horizon"] == 2 and tuple(args["embedding_grid"]) == (3, 6)
    assert args["embedding_norm"] is False


def test_metrics_rows_are_true_means_across_a_resume_and_a_kill(tmp_path, tiny_config, monkeypatch):
    """Rows cover log_every steps (an epoch's last row fewer, divided by its own count); a
    mid-epoch resume continues the row it interrupted; rows written after the checkpoint by a
    killed process are not duplicated."""

    import faextract.train.losses as tr

    cfg = ("train.epochs=2", "train.log_every=2", "train.deterministic=true")
    full = tmp_path / "full"
    train(tiny_config(*cfg), full, plain_progress=True)
    real = _signal_at_step(monkeypatch, 3)
    part = tmp_path / "part"
    train(tiny_config(*cfg), part, plain_progress=True)
    monkeypatch.setattr(tr, "compute_losses", real)
    with open(part / "metrics.csv", "a") as fh:  # a row the killed process wrote after saving
        fh.write("train,1,99,0.001,9.9,,,,,,,,\n")
    train(tiny_config(*cfg), part, resume=True, plain_progress=True)
    a = [r for r in read_metrics(full) if r["kind"] == "train"]
    b = [r for r in read_metrics(part) if r["kind"] == "train"]
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert math.isclose(float(ra["loss"]), float(rb["loss"]), rel_tol=1e-4), (ra, rb)
    # An epoch's last row of one step is that step's loss, not half of it.
    steps = [int(r["step"]) for r in a]
    assert len(steps) == len(set(steps))


def test_a_diverging_run_stops_with_a_clear_error(tmp_path, tiny_config):
    with pytest.raises(FaextractError, match="diverged at step"):
        train(
            tiny_config("train.epochs=3", "train.lr=1.0e+12", "train.grad_clip=0.0",
                        "train.warmup_steps=0"),
            tmp_path / "run",
            plain_progress=True,
        )  # fmt: skip
    last = tmp_path / "run" / "last.pt"
    if last.exists():  # whatever checkpoint remains holds finite weights
        state = load_checkpoint(last).state_dict
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_a_second_run_in_a_busy_run_directory_is_refused(tmp_path, tiny_config):
    import json
    import os
    import socket

    run = tmp_path / "run"
    run.mkdir()
    (run / ".faextract-lock").write_text(
        json.dumps({"host": socket.gethostname(), "pid": os.getppid(), "since": "then"})
    )
    with pytest.raises(FaextractError, match="run directory .* is in use by process"):
        train(tiny_config("train.epochs=1"), run, plain_progress=True)
    assert not (run / "metrics.csv").exists()
    (run / ".faextract-lock").write_text(json.dumps({"host": socket.gethostname(), "pid": 2**22 + 7}))
    assert train(tiny_config("train.epochs=1"), run, plain_progress=True).status == "finished"
    assert not (run / ".faextract-lock").exists()


def test_validation_embedding_loss_is_the_training_term(tiny_config):
    """The validation's ``embedding`` is the objective's embedding term on the same windows
    (what shows z memorizing a short training range while the spatial decoders improve)."""
    import contextlib

    from faextract.data.batch import WindowBatch
    from faextract.models.autoencoder import ClimateAutoencoder
    from faextract.runtime.distributed import DistInfo
    from faextract.train.evaluation import validate
    from faextract.train.losses import compute_losses

    torch.manual_seed(0)
    model = ClimateAutoencoder(2, filters=8, stem_channels=8, embedding_dim=4, downsample=1,
                               embedding_grid=(2, 4), embedding_horizon=2).eval()  # fmt: skip
    B, T, H, W = 2, 5, 8, 16
    mask = torch.rand(B, T, 2, H, W) > 0.1
    x = torch.randn(B, T, 2, H, W) * mask
    batch = WindowBatch(x=x, mask=mask, phase=torch.rand(B, T), time=torch.arange(T).repeat(B, 1),
                        lat=torch.linspace(-60, 60, H).repeat(B, 1), index=torch.arange(B))  # fmt: skip
    metrics = validate(model, [batch], torch.device("cpu"), DistInfo(), contextlib.nullcontext())
    with torch.no_grad():
        _, parts = compute_losses(model.eval(), batch, tiny_config(), cluster_on=False)
    assert metrics["embedding"] == pytest.approx(float(parts["embedding"]), rel=1e-5)
    assert 0 < metrics["embedding"] < 10


def test_head_dropout_drops_pooled_features_in_training_only(tmp_path, tiny_config):
    from faextract.config import ConfigError, load_config
    from faextract.models.subspace import SubspaceHead

    torch.manual_seed(0)
    plain = SubspaceHead(6, dim=4, norm=False, grid=(2, 3))
    torch.manual_seed(0)
    dropped = SubspaceHead(6, dim=4, norm=False, grid=(2, 3), dropout=0.5)
    h = torch.randn(2, 3, 6, 8, 12)
    plain.eval(), dropped.eval()
    torch.testing.assert_close(dropped(h), plain(h))  # the same function at inference
    dropped.train()
    a, b = dropped(h), dropped(h)
    assert not torch.allclose(a, b)  # a new mask each call while training
    with pytest.raises(ConfigError, match=r"model.head_dropout.*\[0, 1\)"):
        load_config(None, ["model.head_dropout=1.0"])
    train(tiny_config("train.epochs=1", "model.head_dropout=0.3"), tmp_path / "run",
          plain_progress=True)  # fmt: skip
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    assert checkpoint.model_args["head_dropout"] == 0.3
    model = checkpoint.build_model()
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.3 for m in model.modules())


def test_embedding_noise_reaches_the_decoders_only_while_training(tmp_path, tiny_config):
    from faextract.config import ConfigError, load_config
    from faextract.models.autoencoder import ClimateAutoencoder

    torch.manual_seed(0)
    net = ClimateAutoencoder(2, embedding_dim=4, embedding_noise=0.5, head_grid=(2, 2),
                             filters=8, stem_channels=4)  # fmt: skip
    x = torch.randn(2, 3, 2, 16, 16)
    mask = torch.ones_like(x, dtype=torch.bool)
    a, b = net.train()(x, mask), net(x, mask)
    torch.testing.assert_close(a.embeddings, b.embeddings)  # z itself is clean
    assert not torch.allclose(a.coarse, b.coarse)  # the decoders hear a noisy z
    # the noise scales with each component's spread: about embedding_noise of it
    z = a.embeddings * torch.tensor([1.0, 10.0, 100.0, 1000.0])
    heard = torch.stack([net.noisy(z) for _ in range(200)])
    ratio = (heard - z).std(dim=(0, 1, 2)) / z.reshape(-1, 4).std(dim=0)
    torch.testing.assert_close(ratio, torch.full((4,), 0.5), rtol=0.1, atol=0)
    net.eval()
    torch.testing.assert_close(net(x, mask).coarse, net(x, mask).coarse)
    with pytest.raises(ConfigError, match="model.embedding_noise"):
        load_config(None, ["model.embedding_noise=-1"])
    train(tiny_config("train.epochs=1", "model.embedding_noise=0.5"), tmp_path / "run",
          plain_progress=True)  # fmt: skip
    assert load_checkpoint(tmp_path / "run" / "last.pt").model_args["embedding_noise"] == 0.5


@pytest.mark.parametrize("mode", ["linear", "tied"])
def test_input_skip_adds_a_linear_map_of_the_pooled_present_input_to_z(mode, tmp_path, tiny_config):
    from faextract.models.autoencoder import ClimateAutoencoder, coarse_target

    def net(skip: str):
        torch.manual_seed(0)
        return ClimateAutoencoder(2, embedding_dim=4, head_grid=(2, 2), filters=8, stem_channels=4,
                                  embedding_grid=(4, 4), embedding_horizon=2,
                                  input_skip=skip).eval()  # fmt: skip

    plain, skip = net("none"), net(mode)
    skip.load_state_dict({**plain.state_dict(), **{k: v for k, v in skip.state_dict().items()
                                                   if k.startswith("input_map")}})  # fmt: skip
    x = torch.randn(2, 3, 2, 16, 16)
    mask = torch.rand(2, 3, 2, 16, 16) > 0.3
    mask[:, :, 0, :4, :4] = False  # one pooled cell of channel 0 holds no valid input
    x = x * mask
    with torch.no_grad():
        extra = skip(x, mask).embeddings - plain(x, mask).embeddings
        pooled, ok = coarse_target(x, mask, (4, 4))
        assert not ok[:, :, 0, 0, 0].any()
        flat = (pooled * ok).flatten(2)
        if mode == "linear":
            expected = skip.input_map(flat)
        else:  # the decoder's present-step map, transposed: no weights of its own
            assert skip.input_map is None
            assert sum(p.numel() for p in skip.parameters()) == sum(p.numel() for p in plain.parameters())
            present = skip.coarse.weight.reshape(3, 2, 4, 4, 4)[0].reshape(32, 4)
            expected = flat @ present
            # a fresh one starts as a projection: orthonormal columns
            fresh = net("tied").coarse.weight[:32]
            torch.testing.assert_close(fresh.T @ fresh, torch.eye(4), atol=1e-5, rtol=0)
        torch.testing.assert_close(extra, expected)
        # z_t depends on the input at t only through this path's present step
        x2 = x.clone()
        x2[:, 2] += 1.0 * mask[:, 2]
        moved = skip(x2, mask).embeddings - plain(x2, mask).embeddings - extra
        torch.testing.assert_close(moved[:, :2], torch.zeros_like(moved[:, :2]))
        assert moved[:, 2].abs().max() > 1e-3
    train(tiny_config("train.epochs=1", f"model.input_skip={mode}"), tmp_path / "run",
          plain_progress=True)  # fmt: skip
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt.model_args["input_skip"] == mode
    assert ckpt.build_model().input_skip == mode


def test_input_skip_takes_none_linear_or_tied():
    from faextract.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="model.input_skip: expected none, linear or tied"):
        load_config(None, ["model.input_skip=eof"])
    assert load_config(None, []).model.input_skip == "none"


def test_best_by_embedding_keeps_the_epoch_where_z_generalizes_best(tmp_path, tiny_config):
    from faextract.config import ConfigError, load_config

    run = tmp_path / "run"
    train(tiny_config("train.epochs=4", "train.best_by=embedding"), run, plain_progress=True)
    rows = [r for r in read_metrics(run) if r["kind"] == "val"]
    emb = [float(r["embedding"]) for r in rows]
    best = load_checkpoint(run / "best.pt").training
    assert best.epoch == int(rows[emb.index(min(emb))]["epoch"])
    assert best.best_val == pytest.approx(min(emb), rel=1e-4)  # (metrics.csv rounds)
    with pytest.raises(ConfigError, match="train.best_by: expected loss or embedding"):
        load_config(None, ["train.best_by=recon"])
    with pytest.raises(ConfigError, match="train.best_by: expected loss with job: compressor"):
        load_config(None, ["job=compressor", "train.best_by=embedding"])


def test_a_factorized_head_is_a_low_rank_linear_map(tmp_path, tiny_config):
    from faextract.config import ConfigError, load_config
    from faextract.models.subspace import SubspaceHead

    torch.manual_seed(0)
    C, gh, gw, d, r = 6, 3, 4, 5, 2
    head = SubspaceHead(C, dim=d, norm=False, grid=(gh, gw), rank=r)
    full = SubspaceHead(C, dim=d, norm=False, grid=(gh, gw))
    assert sum(p.numel() for p in head.fc.parameters()) == d * r * (gh * gw + C) + d
    # the same function as a full map whose weight is the sum of the rank products
    full.proj.load_state_dict(head.proj.state_dict())
    with torch.no_grad():
        w = torch.einsum("krc,krp->kcp", head.fc.mix, head.fc.spatial).reshape(d, C * gh * gw)
        full.fc.weight.copy_(w)
        full.fc.bias.copy_(head.fc.bias)
    h = torch.randn(2, 3, C, 6, 8)
    valid = torch.rand(2, 3, 6, 8) > 0.2
    torch.testing.assert_close(head(h, valid), full(h, valid), rtol=1e-5, atol=1e-5)
    assert 0.1 < head(h, valid).std() / _full_default_std(C, gh, gw, d, h, valid) < 10
    with pytest.raises(ConfigError, match="model.head_rank"):
        load_config(None, ["model.head_rank=-1"])
    train(tiny_config("train.epochs=1", "model.head_rank=2"), tmp_path / "run", plain_progress=True)
    model = load_checkpoint(tmp_path / "run" / "last.pt").build_model()
    assert model.cells[-1].head.fc.spatial.shape[1] == 2


def _full_default_std(C, gh, gw, d, h, valid) -> float:
    """The output spread of a default-initialized full head (the factorized one starts alike)."""
    from faextract.models.subspace import SubspaceHead

    torch.manual_seed(1)
    return float(SubspaceHead(C, dim=d, norm=False, grid=(gh, gw))(h, valid).std())


def test_a_training_range_of_a_few_years_is_told_its_climatology_takes_in_slow_variability(tmp_path):
    from faextract.data.cube import open_cube
    from faextract.testing import synthetic_cube, write_netcdf
    from faextract.train.data import short_record_notice

    for days, expect in ((400, True), (4 * 365, False)):
        path = tmp_path / f"c{days}.nc"
        write_netcdf(synthetic_cube(nt=days, nlat=4, nlon=8, variables=("t2m",)), path)
        notice = short_record_notice(open_cube(path))
        assert (notice is not None) == expect
    assert "1.1 years" in short_record_notice(open_cube(tmp_path / "c400.nc"))


def test_embedding_past_asks_z_for_the_fields_at_the_lagged_steps():
    """With ``embedding_past``, the embedding decoder's extra slots are scored against the
    pooled fields ``L`` steps back (and only where the window holds them): a decoder output
    equal to those fields scores 0 on them, the same output one step off does not."""
    from faextract.models.autoencoder import ClimateAutoencoder, coarse_target
    from faextract.train.losses import embedding_loss

    model = ClimateAutoencoder(2, filters=8, stem_channels=8, embedding_dim=4, downsample=1,
                               embedding_grid=(2, 4), embedding_horizon=1,
                               embedding_past=(2, 3))  # fmt: skip
    B, T, H, W = 2, 6, 8, 16
    x, mask = torch.randn(B, T, 2, H, W), torch.ones(B, T, 2, H, W, dtype=torch.bool)
    out = model(x, mask)
    assert out.coarse.shape == (B, T, 2 + 2, 2, 2, 4)  # t, t+1, t-2, t-3
    target, _ = coarse_target(x, mask, (2, 4))
    exact = torch.zeros(B, T, 4, 2, 2, 4)
    exact[:, :, 0] = target
    exact[:, :-1, 1] = target[:, 1:]
    exact[:, 2:, 2] = target[:, :-2]
    exact[:, 3:, 3] = target[:, :-3]
    assert float(embedding_loss(exact, x, mask, (2, 3))) == pytest.approx(0.0, abs=1e-10)
    off = exact.clone()
    off[:, 3:, 3] = target[:, 1:-2]  # the field 2 steps back where 3 were asked for
    # half the mean of the two lags' errors, the other lag's 0
    wrong = float((target[:, 1:-2] - target[:, :-3]).pow(2).mean())
    assert float(embedding_loss(off, x, mask, (2, 3))) == pytest.approx(0.25 * wrong, rel=1e-5)
    # without lags the same present and future score alike, and the past slots weigh half
    assert float(embedding_loss(exact[:, :, :2], x, mask)) == pytest.approx(0.0, abs=1e-10)
    with pytest.raises(ValueError, match="embedding_past"):
        ClimateAutoencoder(2, filters=8, stem_channels=8, embedding_dim=4, embedding_past=(0,))


@pytest.mark.parametrize("lags", ["[12]", "[0]", "[3,3]", "[1.5]"])
def test_embedding_past_lags_are_checked_against_the_window(tiny_config, lags):
    from faextract.errors import ConfigError

    with pytest.raises(ConfigError, match="model.embedding_past"):
        tiny_config("tiles.window=12", f"model.embedding_past={lags}")


def test_a_run_with_embedding_past_records_it_in_the_checkpoint(tmp_path, tiny_config):
    result = train(tiny_config("train.epochs=1", "model.embedding_past=[2]"), tmp_path / "run",
                   plain_progress=True)  # fmt: skip
    assert result.status == "finished"
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert tuple(ckpt.model_args["embedding_past"]) == (2,)
    assert ckpt.build_model().embedding_past == (2,)
