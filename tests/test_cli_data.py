"""`faextract inspect` and `faextract stats` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from faextract.cli import app

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("faextract ")


def test_python_dash_m_works():
    out = subprocess.run(
        [sys.executable, "-m", "faextract", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "inspect" in out.stdout


def test_inspect_json(small_nc):
    result = runner.invoke(app, ["inspect", str(small_nc), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert [v["name"] for v in info["variables"]] == ["sst", "t2m", "sp"]
    assert info["time"]["calendar"] == "noleap" and info["time"]["step"] == "1 day"
    assert info["grid"]["periodic"] is True
    assert 0.1 < info["variables"][0]["nan_fraction_sample"] < 0.6


def test_inspect_rich(small_nc):
    result = runner.invoke(app, ["inspect", str(small_nc)])
    assert result.exit_code == 0
    assert "noleap" in result.output and "periodic" in result.output


def test_stats_writes_and_refuses_overwrite(tmp_path, small_nc):
    out = tmp_path / "stats.nc"
    result = runner.invoke(app, ["stats", str(small_nc), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.exists()
    again = runner.invoke(app, ["stats", str(small_nc), "--out", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output
    ok = runner.invoke(app, ["stats", str(small_nc), "--out", str(out), "--overwrite"])
    assert ok.exit_code == 0


@pytest.mark.parametrize(
    "args,message",
    [
        (["inspect", "missing.nc"], "no such file"),
        (["inspect", "{nc}", "--variables", "msl"], "unknown variable 'msl'"),
        (["inspect", "{nc}", "--dims", "height=Q"], "unknown axis 'height'"),
        (["inspect", "{nc}", "--levels", "abc"], "--levels"),
    ],
)
def test_bad_input_is_one_line_exit_2(small_nc, args, message):
    args = [a.replace("{nc}", str(small_nc)) for a in args]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_error_from_a_real_process_has_no_traceback(tmp_path):
    bad = tmp_path / "bad.nc"
    bad.write_bytes(b"CDF\x01garbage")
    out = subprocess.run(
        [sys.executable, "-m", "faextract", "inspect", str(bad)], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "bad.nc" in out.stderr


def test_train_puts_large_tensors_on_huge_pages_unless_told_not_to(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from faextract.cli import app

    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "placeholder")  # restored after the test
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE")
    bad = ["train", "--out", str(tmp_path / "run"), "--set", "no.such.key=1"]
    assert CliRunner().invoke(app, bad).exit_code == 2
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "1"
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")
    assert CliRunner().invoke(app, bad).exit_code == 2
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "0"
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE")
    CliRunner().invoke(app, ["inspect", str(tmp_path / "missing.nc")])
    assert "THP_MEM_ALLOC_ENABLE" not in os.environ  # other commands leave it alone


def test_select_a_member_on_the_command_line(tmp_path, small_ds):
    import xarray as xr

    ens = xr.concat([small_ds, small_ds + 1.0], dim="number", data_vars="all")
    path = tmp_path / "ens.nc"
    ens.assign_coords(number=[0, 1]).to_netcdf(path)
    refused = runner.invoke(app, ["inspect", str(path)])
    assert refused.exit_code == 2 and "--select number=VALUE" in refused.output
    result = runner.invoke(app, ["inspect", str(path), "--select", "number=1", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["channels"] == ["sst", "t2m", "sp"]
    out = tmp_path / "stats.nc"
    result = runner.invoke(app, ["stats", str(path), "--select", "number=1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    base = tmp_path / "base.nc"
    assert (
        runner.invoke(app, ["stats", str(path), "--select", "number=0", "-o", str(base)]).exit_code
        == 0
    )
    shifted, plain = xr.open_dataset(out), xr.open_dataset(base)
    assert abs(float(shifted["mean"][1] - plain["mean"][1]) - 1.0) < 1e-3  # t2m + 1 K


def test_usage_errors_are_one_line_from_the_command_line(tmp_path):
    """Missing or malformed options, through the real entry point (click prints three lines
    and a usage block by default)."""
    import subprocess
    import sys

    def run(*args):
        return subprocess.run(
            [sys.executable, "-c", "from faextract.cli import main; main()", *args],
            capture_output=True, text=True,
        )  # fmt: skip

    for args, words in (
        (["evaluate", "x.zarr"], "Missing option '--input'"),
        (["embed", "--workers", "-1"], "'--workers'"),
        (["bogus"], "No such command"),
    ):
        r = run(*args)
        assert r.returncode == 2, r.stderr
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and words in lines[0] and "--help" in lines[0], r.stderr
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("faextract ")
