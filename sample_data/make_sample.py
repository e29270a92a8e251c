"""Regenerate the bundled sample cube: ``python sample_data/make_sample.py``; with
``--codec-cube PATH``, write the generated cube the bundled compressor is trained on instead.

Two years of daily data (noleap calendar) on a global 7.5 degree grid (24 x 48), four
variables with different units and magnitudes (sst with land NaNs, t2m, sp, u10), stored as
packed int16 with scale_factor/add_offset like many archive files. See
:func:`faextract.testing.synthetic_cube` for the planted structure (seasonal cycle, an
ENSO-like oscillation teleconnected to a distant box, red noise).

The bundled checkpoint ``sample_model.pt`` is then trained with::

    faextract train --config configs/sample.yaml --out runs/sample
    python -c "from faextract.checkpoint import export_for_inference as e; e('runs/sample/best.pt', 'sample_data/sample_model.pt')"
"""

import argparse
from pathlib import Path

from faextract.testing import synthetic_cube, write_netcdf

HERE = Path(__file__).parent


def codec_cube(path: str) -> None:
    """Two years of daily fields on a 2.5 degree grid (72 x 144), another seed than the
    benchmarks' cubes: what ``sample_compressor.pt`` learned from."""
    ds = synthetic_cube(nt=730, nlat=72, nlon=144, calendar="noleap", seed=11)
    write_netcdf(ds, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--codec-cube", metavar="PATH", help="write the compressor's training cube")
    args = ap.parse_args()
    if args.codec_cube:
        codec_cube(args.codec_cube)
        raise SystemExit(0)
    ds = synthetic_cube(
        nt=730, nlat=24, nlon=48, variables=("sst", "t2m", "sp", "u10"), calendar="noleap", seed=0
    )
    out = HERE / "sample_cube.nc"
    write_netcdf(ds, out, packed=True)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
