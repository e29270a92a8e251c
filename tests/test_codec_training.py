"""The learned compressor end to end: trained by `faextract train` (job: compressor), its
checkpoint used by `compress --checkpoint`, and refused where it does not belong."""

from __future__ import annotations

import numpy as np
import pytest

from faextract.errors import DataError, FaextractError

CODEC = ["job=compressor", "codec.widths=[4,8,8,16]", "codec.sr_blocks=1", "codec.crop=16",
         "train.batch_size=4", "train.log_every=1", "train.warmup_steps=1",
         "data.val_fraction=0.3"]  # fmt: skip


@pytest.fixture(scope="module")
def codec_run(tmp_path_factory):
    """A 40-step cube and a compressor trained on it for 6 steps (returns cube, run dir)."""
    from faextract.config import load_config
    from faextract.testing import synthetic_cube, write_netcdf
    from faextract.train import train

    root = tmp_path_factory.mktemp("codec")
    cube = root / "cube.nc"
    write_netcdf(synthetic_cube(nt=40, nlat=12, nlon=24, variables=("sst", "t2m"), seed=5), cube)
    cfg = load_config(None, [*CODEC, f"data.paths=[{cube}]", "train.steps=6"])
    result = train(cfg, root / "run", plain_progress=True)
    assert result.status == "finished"
    return cube, root / "run"


def test_train_writes_a_resumable_compressor_checkpoint(codec_run, tmp_path):
    import shutil

    from faextract.checkpoint import Checkpoint
    from faextract.compress.model import BlockCodec
    from faextract.config import load_config
    from faextract.train import train
    from faextract.train.metrics import read_metrics

    cube, run = codec_run
    ckpt = Checkpoint.load(run / "last.pt")
    assert ckpt.kind == "compressor" and ckpt.tiles is None
    assert ckpt.model_args == {"widths": (4, 8, 8, 16), "sr_blocks": 1}
    assert isinstance(ckpt.build_model(), BlockCodec)
    rows = read_metrics(run)
    train_rows = [r for r in rows if r["kind"] == "train"]
    val = [r for r in rows if r["kind"] == "val"]
    assert train_rows and val
    assert float(train_rows[-1]["bits"]) > 0 and float(train_rows[-1]["mse"]) > 0
    assert float(val[-1]["loss"]) == pytest.approx(
        float(val[-1]["bits"]) + 3000.0 * float(val[-1]["mse"]), rel=1e-4
    )
    # resume with a longer budget: the run continues from its step
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    cfg = load_config(None, [*CODEC, f"data.paths=[{cube}]", "train.steps=12"])
    more = train(cfg, copy, resume=True, plain_progress=True)
    assert more.step > ckpt.training.step
    # the encoder job does not resume a compressor's run, nor another codec shape
    with pytest.raises(FaextractError, match="is a compressor, the config trains an encoder"):
        train(load_config(None, [f"data.paths=[{cube}]"]), copy, resume=True, plain_progress=True)
    wider = load_config(None, [*CODEC, f"data.paths=[{cube}]", "codec.widths=[4,8,8,8]"])
    with pytest.raises(FaextractError, match="widths"):
        train(wider, copy, resume=True, plain_progress=True)


def test_train_init_fine_tunes_from_a_checkpoint_of_the_same_kind(codec_run, tiny_checkpoint, tmp_path):
    """``train.init`` starts from a checkpoint's weights (the first logged loss is the trained
    model's, not a random one's); another kind or another architecture is refused by name."""
    import torch

    from faextract.checkpoint import Checkpoint
    from faextract.config import load_config
    from faextract.train import train
    from faextract.train.metrics import read_metrics

    cube, run = codec_run
    base = [*CODEC, f"data.paths=[{cube}]", "train.steps=1", "train.lr=1e-12", "train.seed=4"]
    fresh = train(load_config(None, base), tmp_path / "fresh", plain_progress=True)
    tuned = train(load_config(None, [*base, f"train.init={run / 'last.pt'}"]), tmp_path / "tuned",
                  plain_progress=True)  # fmt: skip
    assert tuned.best_val < fresh.best_val
    # with a vanishing learning rate the weights are the initial checkpoint's
    a = Checkpoint.load(run / "last.pt").state_dict
    b = Checkpoint.load(tmp_path / "tuned" / "last.pt").state_dict
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert read_metrics(tmp_path / "tuned")
    _, encoder, _ = tiny_checkpoint
    with pytest.raises(FaextractError, match="an encoder checkpoint; train.init needs a compressor"):
        train(load_config(None, [*base, f"train.init={encoder}"]), tmp_path / "x", plain_progress=True)
    wider = [*base, "codec.widths=[4,8,8,8]", f"train.init={run / 'last.pt'}"]
    with pytest.raises(FaextractError, match="widths"):
        train(load_config(None, wider), tmp_path / "y", plain_progress=True)


def test_compressor_config_errors_are_one_line_before_anything_runs():
    from faextract.config import load_config
    from faextract.errors import ConfigError

    for bad, match in ((["job=other"], "job: expected encoder or compressor"),
                       (["job=compressor", "train.compile=true"], "train.compile"),
                       (["codec.widths=[8,16]"], "codec.widths"),
                       (["codec.crop=40"], "codec.crop"), (["codec.lam=0"], "codec.lam")):  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            load_config(None, bad)


def test_codec_blocks_are_prepared_crops_in_a_seeded_order(codec_run):
    from faextract.compress.training import CodecBlocks
    from faextract.data.dataset import CubeSource

    cube, _ = codec_run
    src = CubeSource(paths=(str(cube),))
    ds = CodecBlocks(src, crop=16, shuffle=True, seed=1, batch_size=4)
    batches = list(ds)
    assert len(batches) == ds.num_batches() and sum(map(len, batches)) == len(ds)
    b = batches[0]
    assert b.x.shape[1:] == (8, 16, 16) and b.valid.shape == b.x.shape
    # values normalized by each crop's range: valid points span at most 1
    for x, v in zip(b.x, b.valid, strict=True):
        if v.any():
            assert float(x[v].max() - x[v].min()) <= 1.0 + 1e-5
    assert not b.x.isnan().any()
    again = [bb.x for bb in CodecBlocks(src, crop=16, shuffle=True, seed=1, batch_size=4)]
    assert all((a == bb.x).all() for a, bb in zip(again, batches, strict=True))
    ds.set_epoch(1)
    assert not (next(iter(ds)).x == b.x).all()
    # the sst channel has land: its crops carry missing points
    assert any((~bb.valid[:, :, :12]).any() for bb in batches)


def test_compress_with_a_trained_compressor_needs_that_model(codec_run, tmp_path):
    import shutil

    import xarray as xr

    from faextract.compress.container import CompressOptions, compress, decompress, open_compressed

    cube, run = codec_run
    ckpt = str(run / "last.pt")
    out = str(tmp_path / "c.zarr")
    compress([str(cube)], out, CompressOptions(rel_error=1e-2, checkpoint=ckpt))
    back = decompress(out, str(tmp_path / "d.nc"), checkpoint=ckpt)
    a, b = xr.open_dataset(cube), xr.open_dataset(back)
    for v in ("sst", "t2m"):
        x, y = a[v].values, b[v].values
        ok = np.isfinite(x)
        assert (np.isfinite(y) == ok).all()
        E = 1e-2 * float(x[ok].max() - x[ok].min())
        assert np.abs(y[ok].astype(np.float64) - x[ok]).max() <= E
    with pytest.raises(DataError, match="give its checkpoint"):
        open_compressed(out)
    other = tmp_path / "other.pt"
    shutil.copy(run / "last.pt", other)
    with open(other, "ab") as fh:  # same weights, another file: another sha256
        fh.write(b"\0")
    with pytest.raises(DataError, match="another model"):
        open_compressed(out, str(other))


def test_each_job_refuses_the_other_jobs_checkpoint(codec_run, tiny_checkpoint, tmp_path):
    from typer.testing import CliRunner

    from faextract.cli import app
    from faextract.testing import assert_one_line_error

    cube, run = codec_run
    enc_cube, encoder, _ = tiny_checkpoint

    def cli(*args):
        return CliRunner().invoke(app, [str(a) for a in args])

    res = cli("compress", cube, "--out", tmp_path / "c.zarr", "--rel-error", "0.01",
              "--checkpoint", encoder)  # fmt: skip
    assert_one_line_error(res, "an encoder checkpoint; faextract compress needs a compressor")
    res = cli("embed", enc_cube, "--checkpoint", run / "last.pt", "--out", tmp_path / "e.zarr")
    assert_one_line_error(res, "a compressor checkpoint")
    assert not (tmp_path / "c.zarr").exists() and not (tmp_path / "e.zarr").exists()
