"""The ``faextract`` command line: a thin shell over the library.

Each command parses its options, builds a config, calls one library function and prints a
summary. Heavy imports happen inside the commands so that ``--help`` is instant. User errors
(:class:`~faextract.errors.FaextractError`) become one line on stderr and exit status 2.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from faextract import __version__
from faextract.errors import FaextractError

app = typer.Typer(
    name="faextract",
    help="Learned, physically meaningful features from multivariate climate data cubes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool):
    if value:
        typer.echo(f"faextract {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
):
    """faextract: train an FAConvLSTM encoder on climate cubes and extract embeddings."""


def user_errors(fn):
    """Turn FaextractError into a one-line message and exit 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FaextractError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _floats(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FaextractError(f"--levels: expected numbers like 500,850, got {text!r}") from None


def _names(text: str | None) -> list[str] | None:
    return [v.strip() for v in text.split(",") if v.strip()] if text else None


Inputs = Annotated[list[str], typer.Argument(help="NetCDF files, globs, or a Zarr store.")]
VarsOpt = Annotated[str | None, typer.Option("--variables", "-v", help="Comma-separated variable names.")]
LevelsOpt = Annotated[str | None, typer.Option("--levels", help="Keep these levels, e.g. 500,850.")]
DimsOpt = Annotated[str | None, typer.Option("--dims", help="Axis names, e.g. time=T,lat=Y,lon=X.")]
SortOpt = Annotated[bool, typer.Option("--sort-time", help="Sort unsorted times instead of failing.")]


def _open(inputs, variables, levels, dims, sort_time):
    from faextract.data.cube import open_cube

    return open_cube(inputs, _names(variables), levels=_floats(levels), dims=dims, sort_time=sort_time)


@app.command()
@user_errors
def inspect(
    inputs: Inputs,
    variables: VarsOpt = None,
    levels: LevelsOpt = None,
    dims: DimsOpt = None,
    sort_time: SortOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
):
    """Report variables, axes, calendar, grid and chunking of a cube (metadata + a small sample)."""
    from faextract.data.report import describe

    info = describe(_open(inputs, variables, levels, dims, sort_time))
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{', '.join(info['sources'])}[/bold]  ({info['size_on_disk_bytes'] / 1e6:.1f} MB on disk)")
    t = info["time"]
    console.print(
        f"time: {t['start']} .. {t['end']}, {t['steps']} steps of {t['step']}, calendar {t['calendar']}"
    )
    g = info["grid"]
    console.print(
        f"grid: {g['nlat']} x {g['nlon']} (lat x lon), resolution {g['dlat']:g} x {g['dlon']:g} deg, "
        f"lat {g['lat_range'][0]:g}..{g['lat_range'][1]:g}, lon {g['lon_range'][0]:g}..{g['lon_range'][1]:g}, "
        f"{'periodic (global)' if g['periodic'] else 'not periodic'}"
    )
    axes = ", ".join(f"{a}={v['name']} ({v['detected_by']})" for a, v in info["axes"].items())
    console.print(f"axes: {axes}")
    if info["levels"]:
        console.print(f"levels: {', '.join(f'{v:g}' for v in info['levels'])}")
    table = Table("variable", "long_name", "units", "dims", "dtype", "NaN (sample)", "chunks")
    for v in info["variables"]:
        table.add_row(
            v["name"],
            v["long_name"],
            v["units"],
            ",".join(v["dims"]),
            v["dtype"] + (" packed" if v["packed"] else ""),
            f"{100 * v['nan_fraction_sample']:.1f}%",
            "x".join(map(str, v["chunks"])) if v["chunks"] else "-",
        )
    console.print(table)


@app.command()
@user_errors
def stats(
    inputs: Inputs,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .nc or .zarr file.")],
    variables: VarsOpt = None,
    levels: LevelsOpt = None,
    dims: DimsOpt = None,
    sort_time: SortOpt = False,
    climatology: Annotated[
        str, typer.Option(help="Per-gridpoint climatology: none, monthly or dayofyear.")
    ] = "none",
    area_weighted: Annotated[bool, typer.Option(help="Weight by cos(latitude).")] = True,
    scheduler: Annotated[
        str | None, typer.Option(help="Address of a dask.distributed scheduler to compute on.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
):
    """Compute normalization statistics (mean, std, optional climatology) out-of-core."""
    from faextract.data.stats import StatsOptions, compute_stats, save_stats
    from faextract.progress import Progress

    if out.exists() and not overwrite:
        raise FaextractError(f"{out}: already exists (use --overwrite to replace it)")
    cube = _open(inputs, variables, levels, dims, sort_time)
    options = StatsOptions(area_weighted=area_weighted, climatology=climatology)
    with _dask_client(scheduler), Progress(unit="tasks") as progress:
        result = compute_stats(cube, options, progress=None if scheduler else progress)
    save_stats(result, out, overwrite=overwrite)
    for ch, m, s in zip(result["channel"].values, result["mean"].values, result["std"].values, strict=True):
        typer.echo(f"{ch:>16}  mean {m:12.5g}  std {s:12.5g}")
    typer.echo(f"wrote {out}")


class _dask_client:
    """Use an existing dask.distributed scheduler for the duration of a command."""

    def __init__(self, address: str | None):
        self.address, self.client = address, None

    def __enter__(self):
        if self.address:
            try:
                from distributed import Client
            except ImportError:
                raise FaextractError("--scheduler needs dask.distributed: pip install distributed") from None
            try:
                self.client = Client(self.address, timeout="20s")
            except Exception as err:  # noqa: BLE001
                raise FaextractError(f"--scheduler {self.address}: cannot connect ({err})") from err
        return self

    def __exit__(self, *exc):
        if self.client is not None:
            self.client.close()
        return False


def main() -> None:
    app(prog_name="faextract")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
