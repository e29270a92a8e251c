"""The app, how commands report errors, and the options several commands share."""

from __future__ import annotations

import functools
import os
import sys
from typing import Annotated

import typer

from faextract import __version__
from faextract.errors import FaextractError, first_line

app = typer.Typer(
    name="faextract",
    help="Learned, physically meaningful features from multivariate climate data cubes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help wraps long formats (NAME=lat0:lat1,lon0:lon1) at any width; the rich layout
    # cut them off at 80 columns and labelled flags "<bool>".
    rich_markup_mode=None,
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
        from faextract.runtime.signals import StopFlag

        try:
            # From the first line on, SIGTERM/SIGUSR1 (a scheduler's warning) request a stop
            # at the next safe point instead of killing the process mid-write.
            with StopFlag():
                return fn(*args, **kwargs)
        except FaextractError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            typer.echo(
                "interrupted: rerun the same command to continue (finished blocks and "
                "checkpoints are kept)",
                err=True,
            )
            raise typer.Exit(130) from None
        except OSError as err:  # the environment: a full disk, a read-only folder, ...
            where = f"{err.filename}: " if err.filename else ""
            typer.echo(f"error: {where}{err.strerror or first_line(err)}", err=True)
            raise typer.Exit(1) from None
        except MemoryError:
            typer.echo(
                "error: out of memory (a grid or block too large for this machine: use "
                "spatial tiles, a smaller --batch-size, or a machine with more memory)",
                err=True,
            )
            raise typer.Exit(1) from None

    return wrapper


def _command_line(subcommand: str) -> str:
    """The command as the user typed it, for the output's ``history`` attribute."""
    import shlex

    argv0 = os.path.basename(sys.argv[0]) if sys.argv else ""
    if argv0 in ("faextract", "__main__.py") and subcommand in sys.argv[1:]:
        return shlex.join(["faextract", *sys.argv[1:]])
    return f"faextract {subcommand}"  # called as a library or from a test runner


def _floats(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FaextractError(f"--levels: expected numbers like 500,850, got {text!r}") from None


def _names(text: str | None) -> list[str] | None:
    return [v.strip() for v in text.split(",") if v.strip()] if text else None


Inputs = Annotated[
    list[str], typer.Argument(help="NetCDF files, globs, or a Zarr store (local or a URL).")
]
VarsOpt = Annotated[
    str | None, typer.Option("--variables", "-v", help="Comma-separated variable names.")
]
LevelsOpt = Annotated[str | None, typer.Option("--levels", help="Keep these levels, e.g. 500,850.")]
DimsOpt = Annotated[str | None, typer.Option("--dims", help="Axis names, e.g. time=T,lat=Y,lon=X.")]
SelectOpt = Annotated[
    str | None,
    typer.Option(
        "--select",
        help="One value of each non-grid dimension, e.g. member=3 (ERA5's expver is combined).",
    ),
]
SortOpt = Annotated[
    bool, typer.Option("--sort-time", help="Sort unsorted times instead of failing.")
]


def _open(inputs, variables, levels, dims, sort_time, select):
    from faextract.data.cube import open_cube

    return open_cube(
        inputs,
        _names(variables),
        levels=_floats(levels),
        dims=dims,
        sort_time=sort_time,
        select=select,
    )


class _dask_client:
    """Use an existing dask.distributed scheduler for the duration of a command."""

    def __init__(self, address: str | None):
        self.address, self.client = address, None

    def __enter__(self):
        if self.address:
            try:
                from distributed import Client
            except ImportError:
                raise FaextractError(
                    "--scheduler needs dask.distributed: pip install distributed"
                ) from None
            try:
                self.client = Client(self.address, timeout="20s")
            except Exception as err:  # noqa: BLE001
                raise FaextractError(f"--scheduler {self.address}: cannot connect ({err})") from err
        return self

    def __exit__(self, *exc):
        if self.client is not None:
            self.client.close()
        return False
