"""``faextract inspect`` and ``faextract stats``: what a dataset holds, and its statistics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from faextract.cli.common import (
    DimsOpt,
    Inputs,
    LevelsOpt,
    SelectOpt,
    SortOpt,
    VarsOpt,
    _dask_client,
    _open,
    app,
    user_errors,
)


@app.command()
@user_errors
def inspect(
    inputs: Inputs,
    variables: VarsOpt = None,
    levels: LevelsOpt = None,
    dims: DimsOpt = None,
    select: SelectOpt = None,
    sort_time: SortOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
):
    """Report variables, axes, calendar, grid and chunking of a cube (metadata + a small sample)."""
    from faextract.data.report import describe

    info = describe(_open(inputs, variables, levels, dims, sort_time, select))
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    size = info["size_on_disk_bytes"]
    where = "remote" if size is None else f"{size / 1e6:.1f} MB on disk"
    console.print(f"[bold]{', '.join(info['sources'])}[/bold]  ({where})")
    t = info["time"]
    console.print(
        f"time: {t['start']} .. {t['end']}, {t['steps']} steps of {t['step']}, calendar {t['calendar']}"
    )
    if t["gaps"]:
        gaps = t["gaps"]
        console.print(
            f"[yellow]time gaps: {gaps['count']} (largest {gaps['largest']} after {gaps['after']}): "
            "windows spanning one see steps that are not consecutive[/yellow]"
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
    select: SelectOpt = None,
    sort_time: SortOpt = False,
    climatology: Annotated[
        str,
        typer.Option(
            help="Per-gridpoint climatology: none, auto, monthly, dayofyear or harmonic (see "
            "data.climatology); fitted on all the steps given."
        ),
    ] = "none",
    area_weighted: Annotated[bool, typer.Option(help="Weight by cos(latitude).")] = True,
    scheduler: Annotated[
        str | None, typer.Option(help="Address of a dask.distributed scheduler to compute on.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
):
    """Compute normalization statistics (mean, std, optional climatology) out-of-core."""
    from faextract.data.sources import resolve_paths
    from faextract.data.stats import StatsOptions, compute_stats, save_stats
    from faextract.outputs import claim_output, is_stats_file
    from faextract.runtime.progress import Progress

    claim_output(
        out,
        inputs=resolve_paths(inputs),
        overwrite=overwrite,
        ours=is_stats_file,
        what="statistics file",
    )
    cube = _open(inputs, variables, levels, dims, sort_time, select)
    options = StatsOptions(area_weighted=area_weighted, climatology=climatology)
    with _dask_client(scheduler), Progress(unit="tasks") as progress:
        result = compute_stats(cube, options, progress=None if scheduler else progress)
    save_stats(result, out, overwrite=overwrite)
    for ch, m, s in zip(
        result["channel"].values, result["mean"].values, result["std"].values, strict=True
    ):
        typer.echo(f"{ch:>16}  mean {m:12.5g}  std {s:12.5g}")
    typer.echo(f"wrote {out}")
