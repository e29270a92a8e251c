"""The promises the README makes: its two commands, CI running the same test command, the sample."""

from __future__ import annotations

import re

from faextract.paths import PROJECT_ROOT, SAMPLE_CHECKPOINT, SAMPLE_CUBE


def _readme_commands() -> list[str]:
    text = (PROJECT_ROOT / "README.md").read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)


def test_readme_has_the_two_commands_and_ci_runs_the_test_one():
    main_cmd, test_cmd = _readme_commands()
    assert "faextract embed" in main_cmd and "torch==2.13.0" in main_cmd
    assert "pytest" in test_cmd
    ci = (PROJECT_ROOT / ".ci" / "run").read_text()
    assert test_cmd.strip() in ci, "the README's test command must be what CI runs"


def test_bundled_sample_is_small_and_present():
    assert SAMPLE_CUBE.exists() and SAMPLE_CUBE.stat().st_size <= 5 * 2**20
    assert SAMPLE_CHECKPOINT.exists() and SAMPLE_CHECKPOINT.stat().st_size <= 5 * 2**20


def test_bundled_checkpoint_matches_the_sample_cube():
    from faextract.checkpoint import load_checkpoint
    from faextract.data import open_cube
    from faextract.embed import check_compatible

    ckpt = load_checkpoint(SAMPLE_CHECKPOINT)
    check_compatible(ckpt, open_cube(SAMPLE_CUBE), str(SAMPLE_CUBE))
    assert ckpt.training is None or ckpt.training.optimizer is None, "exported for inference"


def test_bundled_compressor_is_a_small_inference_only_compressor(tmp_path):
    """`faextract compress --checkpoint bundled` uses it; decompress finds it by itself."""
    import json

    from typer.testing import CliRunner

    from faextract.checkpoint import load_checkpoint, sha256
    from faextract.cli import app
    from faextract.outputs import zarr_attrs
    from faextract.paths import SAMPLE_COMPRESSOR
    from faextract.testing import synthetic_cube, write_netcdf

    assert SAMPLE_COMPRESSOR.exists() and SAMPLE_COMPRESSOR.stat().st_size <= 5 * 2**20
    ckpt = load_checkpoint(SAMPLE_COMPRESSOR)
    assert ckpt.kind == "compressor" and ckpt.training is None
    src = tmp_path / "in.nc"
    write_netcdf(synthetic_cube(nt=8, nlat=16, nlon=32, variables=("t2m",), seed=9), src)
    out = tmp_path / "c.zarr"
    res = CliRunner().invoke(app, ["compress", str(src), "--out", str(out), "--rel-error", "0.01",
                                   "--checkpoint", "bundled"])  # fmt: skip
    assert res.exit_code == 0, res.output
    meta = json.loads(zarr_attrs(out)["faextract_compressed"])
    assert meta["predictor"] == "learned" and meta["model_sha256"] == sha256(SAMPLE_COMPRESSOR)
    res = CliRunner().invoke(app, ["decompress", str(out), "--out", str(tmp_path / "d.nc")])
    assert res.exit_code == 0, res.output


def test_a_wheel_carries_what_an_installed_faextract_needs(tmp_path):
    """`pip install .` (not editable) must work too: the kernels' C sources, and the sample,
    configs and SLURM templates as data files under share/faextract."""
    import subprocess
    import sys
    import zipfile

    import pytest

    pytest.importorskip("setuptools")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(PROJECT_ROOT)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert build.returncode == 0, f"the wheel does not build: {build.stderr.strip()[-2000:]}"
    (wheel,) = tmp_path.glob("faextract-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for package in sorted((PROJECT_ROOT / "faextract").rglob("__init__.py")):
        assert str(package.relative_to(PROJECT_ROOT)) in names, "every subpackage is in the wheel"
    kernels = PROJECT_ROOT / "faextract" / "models" / "kernels"
    for source in [*kernels.glob("*.c"), *kernels.glob("*.h")]:
        assert f"faextract/models/kernels/{source.name}" in names
    shared = [
        n.split("/data/share/faextract/", 1)[1] for n in names if "/data/share/faextract/" in n
    ]
    for folder, pattern in (("configs", "*.yaml"), ("slurm", "*.sbatch")):
        for path in (PROJECT_ROOT / folder).glob(pattern):
            assert f"{folder}/{path.name}" in shared
    assert {"sample_data/sample_cube.nc", "sample_data/sample_model.pt",
            "sample_data/sample_compressor.pt"} <= set(shared)


def test_installed_data_folders_are_found_without_a_source_tree(tmp_path, monkeypatch):
    import sys

    from faextract import paths

    prefix = tmp_path / "venv"
    (prefix / "share" / "faextract" / "configs").mkdir(parents=True)
    (prefix / "share" / "faextract" / "configs" / "default.yaml").write_text("{}\n")
    monkeypatch.setattr(paths, "PROJECT_ROOT", tmp_path / "site-packages")
    monkeypatch.setattr(sys, "prefix", str(prefix))
    assert paths.shared_folder("configs", "default.yaml") == prefix / "share/faextract/configs"
    missing = paths.shared_folder("slurm", "embed.sbatch")
    assert missing == tmp_path / "site-packages" / "slurm"  # the error names the checkout path
