"""What a command may write, and what ``--overwrite`` may replace.

One rule for every command that writes (embed, stats, export, train, plot):

- an output is never an input, never inside an input (a Zarr store is a directory), and never
  contains one: refused by name whatever the flags;
- an output that exists is replaced only with ``--overwrite``, and only when faextract made it
  (recognised by its own markers: a store's ``faextract_format_version``, the statistics
  file's title, a run directory's files, a plot folder's list) or it is an empty directory;
  anything else is a one-line refusal naming what is there;
- an output that is a symbolic link is refused: replacing it would act on what it points to.

Inputs that are URLs are not on this machine and cannot collide with a local output.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from faextract.errors import DataError

#: The marker of a training run stopped by a signal (it holds the step; resume to finish).
PREEMPTED_FILE = "PREEMPTED"
#: Files a training run directory holds (``faextract train`` writes them; nothing else).
RUN_FILES = ("last.pt", "best.pt", "metrics.csv", "config.yaml", "summary.json", PREEMPTED_FILE)
#: The list of figures ``faextract plot`` wrote into its folder.
PLOT_MANIFEST = ".faextract-plot.json"


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.fspath(path)))


def _local_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    from faextract.data.sources import is_url

    out = []
    for item in inputs:
        text = os.fspath(item)
        if text.startswith("file://"):
            text = text[len("file://") :]
        if not is_url(text):
            out.append(_real(text))
    return out


def check_not_input(out: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> None:
    """Refuse an output equal to, inside, or containing one of ``inputs`` (resolved paths)."""
    target = _real(out)
    for src in _local_inputs(inputs):
        if target == src:
            raise DataError(f"{out}: is an input of this command; choose another output")
        if src in target.parents:
            raise DataError(
                f"{out}: is inside the input {src}; choose an output outside it"
            )
        if target in src.parents:
            raise DataError(
                f"{out}: contains the input {src}; choose an output that holds no input"
            )


def _what_is_there(path: Path) -> str:
    if path.is_dir():
        names = sorted(p.name for p in path.iterdir())
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        return f"a directory holding {len(names)} entries ({shown})"
    return "a file"


def _article(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def zarr_attrs(path: str | os.PathLike) -> dict | None:
    """The root attributes of a local Zarr store (v2 or v3), or None if ``path`` is not one."""
    p = Path(path)
    try:
        if (p / "zarr.json").is_file():
            meta = json.loads((p / "zarr.json").read_text())
            return dict(meta.get("attributes") or {})
        if (p / ".zattrs").is_file() or (p / ".zgroup").is_file():
            attrs = p / ".zattrs"
            return json.loads(attrs.read_text()) if attrs.is_file() else {}
    except (OSError, ValueError):
        return None
    return None


def netcdf_attrs(path: str | os.PathLike) -> dict | None:
    """The global attributes of a NetCDF file, or None if ``path`` is not a readable one."""
    try:
        import netCDF4

        with netCDF4.Dataset(os.fspath(path)) as nc:
            return {k: nc.getncattr(k) for k in nc.ncattrs()}
    except Exception:  # noqa: BLE001 - anything unreadable is "not ours"
        return None


def is_embedding_store(path: Path) -> bool:
    """A Zarr store ``faextract embed`` made (whether or not complete)."""
    attrs = zarr_attrs(path)
    return attrs is not None and "faextract_format_version" in attrs


def global_attrs(path: str | os.PathLike) -> dict | None:
    """The global attributes of a Zarr store (a directory) or a NetCDF file, or None."""
    return zarr_attrs(path) if Path(path).is_dir() else netcdf_attrs(path)


def is_stats_file(path: Path) -> bool:
    """A statistics file ``faextract stats`` wrote (NetCDF or Zarr)."""
    attrs = global_attrs(path)
    return attrs is not None and attrs.get("title") == "faextract normalization statistics"


def is_exported_netcdf(path: Path) -> bool:
    """A NetCDF file ``faextract export`` wrote."""
    attrs = None if path.is_dir() else netcdf_attrs(path)
    return attrs is not None and "faextract_format_version" in attrs


def is_run_dir(path: Path) -> bool:
    """A training run directory: it holds a checkpoint or the config and metrics of a run."""
    names = {p.name for p in path.iterdir()} if path.is_dir() else set()
    return bool(names & {"last.pt", "best.pt"}) or {"config.yaml", "metrics.csv"} <= names


def is_plot_dir(path: Path) -> bool:
    return path.is_dir() and (path / PLOT_MANIFEST).is_file()


def existing_output(
    out: str | os.PathLike,
    *,
    inputs: Iterable[str | os.PathLike] = (),
    ours: Callable[[Path], bool],
    what: str,
) -> bool:
    """Check that ``out`` may be written; returns whether one of ours (or an empty directory)
    is there already. ``ours`` recognises an existing output of this command; ``what`` names
    it in messages ("embeddings store", ...). Nothing is removed here."""
    path = Path(out)
    check_not_input(path, inputs)
    if path.is_symlink():
        raise DataError(
            f"{out}: is a symbolic link; give the path it points to, or another output"
        )
    if not path.exists():
        return False
    if path.is_dir() and not any(path.iterdir()):
        return True  # an empty directory: nothing to lose
    if not ours(path):
        raise DataError(
            f"{out}: exists and is not {_article(what)} faextract made ({_what_is_there(path)}); "
            "choose another output or remove it yourself"
        )
    return True


def claim_output(
    out: str | os.PathLike,
    *,
    inputs: Iterable[str | os.PathLike] = (),
    overwrite: bool,
    ours: Callable[[Path], bool],
    what: str,
) -> bool:
    """:func:`existing_output`, and an existing non-empty output needs ``overwrite``.

    Callers validate everything else first, then :func:`remove_output`, then write.
    """
    exists = existing_output(out, inputs=inputs, ours=ours, what=what)
    path = Path(out)
    if exists and not overwrite and not (path.is_dir() and not any(path.iterdir())):
        raise DataError(f"{out}: already exists (use --overwrite to replace it)")
    return exists


def remove_output(out: str | os.PathLike) -> None:
    """Remove an output :func:`claim_output` accepted (a file or a directory tree)."""
    import shutil

    path = Path(out)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
