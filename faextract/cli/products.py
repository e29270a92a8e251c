"""``faextract plot`` and ``faextract export``: views and copies of an embeddings store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from faextract.cli.common import (
    app,
    user_errors,
)


@app.command()
@user_errors
def plot(
    store: Annotated[Path, typer.Argument(help="Embeddings store written by faextract embed.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the PNG files.")] = Path(
        "quicklook"
    ),
    overwrite: Annotated[
        bool, typer.Option(help="Replace the figures of an earlier plot in that directory.")
    ] = False,
):
    """Write quicklook PNGs: embedding principal components and attention maps."""
    from faextract.plot import plot_store

    written = plot_store(store, out, overwrite=overwrite)
    typer.echo(f"wrote {len(written)} figures to {out}")


@app.command()
@user_errors
def export(
    store: Annotated[Path, typer.Argument(help="Embeddings store written by faextract embed.")],
    out: Annotated[Path, typer.Argument(help="NetCDF file to write.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
):
    """Convert an embeddings store to CF-clean NetCDF4 (for Panoply and CF checkers)."""
    from faextract.outputs import claim_output, is_exported_netcdf
    from faextract.store import to_netcdf

    claim_output(
        out, inputs=[store], overwrite=overwrite, ours=is_exported_netcdf, what="NetCDF export"
    )
    to_netcdf(store, out)
    typer.echo(f"wrote {out}")
