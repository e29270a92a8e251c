"""``faextract compress`` and ``faextract decompress``: error-bounded storage of cubes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from faextract.cli.common import Inputs, _names, app, user_errors
from faextract.errors import FaextractError


@app.command()
@user_errors
def compress(
    inputs: Inputs,
    out: Annotated[Path, typer.Option("--out", "-o", help="Compressed Zarr store.")],
    max_abs_error: Annotated[
        float | None, typer.Option("--max-abs-error", help="Pointwise bound, in data units.")
    ] = None,
    rel_error: Annotated[
        float | None,
        typer.Option("--rel-error", help="Pointwise bound, times each variable's valid range."),
    ] = None,
    nrmse: Annotated[
        float | None,
        typer.Option("--nrmse", help="RMSE of every 8x8 patch, times each variable's range."),
    ] = None,
    variables: Annotated[
        str | None, typer.Option("--variables", help="Comma-separated variables (default: every one with time and a grid).")
    ] = None,
    checkpoint: Annotated[
        str | None,
        typer.Option(
            "--checkpoint",
            help="A learned compressor (faextract train, job: compressor; 'bundled': the bundled "
            "one) as one more prediction per block; default: none (the block mean and the "
            "interpolation predictor).",
        ),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard", metavar="I/N",
            help="Write blocks I, I+N, ... (job-array task I of N; the last one done completes "
            "the store).",
        ),
    ] = None,
    block_steps: Annotated[
        int | None,
        typer.Option(
            "--block-steps",
            help="Time steps per block (default 64): longer blocks store less, a --time range "
            "of shorter ones decodes with less work.",
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing store.")] = False,
):
    """Store (time, [level, ...,] y, x) variables within an error bound (every valid point, or
    every patch's RMSE); NaN masks kept exactly. Each block keeps the shortest of its codings:
    the block mean, a closed-loop interpolation, and with --checkpoint a learned compressor's
    prediction. Restartable: run it again with the same options to finish an interrupted store."""
    from faextract.compress.blocks import BlockSpec
    from faextract.compress.container import CompressOptions
    from faextract.compress.container import compress as run
    from faextract.embed import parse_shard
    from faextract.paths import SAMPLE_COMPRESSOR
    from faextract.runtime.progress import Progress

    names = _names(variables)
    if checkpoint is not None and checkpoint.lower() == "bundled":
        checkpoint = str(SAMPLE_COMPRESSOR)
    options = CompressOptions(
        max_abs_error=max_abs_error, rel_error=rel_error, nrmse=nrmse,
        variables=tuple(names) if names else None, overwrite=overwrite, checkpoint=checkpoint,
        **({"block": BlockSpec(time=block_steps)} if block_steps is not None else {}),
    )  # fmt: skip
    parts = parse_shard(shard) if shard else None
    with Progress(unit="blocks") as progress:
        result = run(list(inputs), str(out), options, progress=progress, shard=parts)
    if not result.complete:
        typer.echo(f"wrote {result.blocks_written} blocks into {result.path}; other shards still "
                   "have blocks to write (the last one done completes the store)")  # fmt: skip
        return
    typer.echo(
        f"compressed {', '.join(result.variables)} ({result.blocks_written} blocks) to "
        f"{result.path}: {result.stored_bytes / 1e6:.1f} MB, ratio {result.ratio:.2f} against "
        "float32 values and their mask"
    )


@app.command()
@user_errors
def decompress(
    store: Annotated[str, typer.Argument(help="A store written by faextract compress.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output: .nc (NetCDF4) or a Zarr store.")],
    time: Annotated[
        str | None, typer.Option("--time", help="Time steps to keep, by position: a:b.")
    ] = None,
    region: Annotated[
        str | None,
        typer.Option("--region", metavar="LAT0:LAT1,LON0:LON1", help="A box to keep, in degrees."),
    ] = None,
    checkpoint: Annotated[
        str | None,
        typer.Option(
            "--checkpoint",
            help="The compressor the store was written with (default: the bundled one, when "
            "it is that model).",
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
):
    """Decompress a store to NetCDF or Zarr with the input's variables, coordinates,
    attributes and calendar (only the blocks a time range or region touches are decoded)."""
    from faextract.compress.container import decompress as run

    window = None
    if time:
        try:
            a, b = (int(v) if v else None for v in time.split(":"))
        except ValueError:
            raise FaextractError(f"--time: expected a:b (step positions), got {time!r}") from None
        window = slice(a, b)
    box = None
    if region:
        try:
            lat_part, lon_part = region.split(",")
            box = tuple(float(v) for part in (lat_part, lon_part) for v in part.split(":"))
            if len(box) != 4:
                raise ValueError
        except ValueError:
            raise FaextractError(
                f"--region: expected lat0:lat1,lon0:lon1 like -10:10,190:270, got {region!r}"
            ) from None
    run(store, str(out), overwrite=overwrite, time=window, region=box, checkpoint=checkpoint)
    typer.echo(f"decompressed {store} to {out}")
