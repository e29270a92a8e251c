"""Finding and opening input files: paths, globs and URLs resolved, NetCDF or Zarr told apart,
remote stores opened through fsspec, netCDF-C's chunk cache bounded, missing Zarr chunks
reported; one ``xr.Dataset`` per source, undecoded, for :mod:`faextract.data.standardize`."""

from __future__ import annotations

import glob as globmod
import os
import re
from collections.abc import Sequence
from pathlib import Path

import xarray as xr

from faextract.data.standardize import data_variables
from faextract.errors import DataError, FaextractWarning, first_line


def env_number(
    name: str, default: float, minimum: float = 0, maximum: float = float("inf")
) -> float:
    """A numeric setting from the environment; a bad value is a one-line error naming it."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not minimum <= value <= maximum:
        upper = f" and <= {maximum:g}" if maximum < float("inf") else ""
        raise DataError(f"{name}={raw!r}: expected a number >= {minimum:g}{upper}")
    return value


def resolve_paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Expand globs and check existence; a Zarr store counts as one path."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise DataError("no input given: pass a NetCDF file, a glob, or a Zarr store")
    out: list[str] = []
    for item in items:
        item = os.fspath(item)
        if item.startswith("file://"):
            item = item[len("file://") :]
        if is_url(item):  # a remote store or an OPeNDAP endpoint: checked when opened
            out.append(item)
        elif any(ch in item for ch in "*?[") and not os.path.exists(item):
            # A path that exists is taken literally ('data[1].nc'), never as a pattern.
            matches = sorted(globmod.glob(item))
            if not matches:
                raise DataError(f"{item}: the pattern matches no file")
            out.extend(matches)
        elif not os.path.exists(item):
            if os.path.islink(item):
                raise DataError(
                    f"{item}: a symbolic link that leads nowhere (a loop, or its target is gone)"
                )
            raise DataError(f"{item}: no such file or directory")
        else:
            out.append(item)
    return out


def is_url(path: str) -> bool:
    """``gs://bucket/era5.zarr``, ``s3://...``, ``https://.../dodsC/...``: not a local path."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", path) is not None


def _remote_is_zarr(url: str) -> bool:
    """A URL names a Zarr store unless it is http(s) without ``.zarr`` in it (OPeNDAP/THREDDS
    endpoints, which netCDF-C reads itself)."""
    scheme = url.split("://", 1)[0].lower()
    return scheme not in ("http", "https") or ".zarr" in url.lower()


def _open_remote(url: str) -> xr.Dataset:
    scheme = url.split("://", 1)[0].lower()
    try:
        if _remote_is_zarr(url):
            return xr.open_zarr(url, decode_times=False, chunks=None)
        return xr.open_dataset(url, engine="netcdf4", decode_times=False, chunks=None)
    except ImportError as err:  # fsspec lacks the protocol's package (gcsfs, s3fs, ...)
        hint = {"gs": "gcsfs", "gcs": "gcsfs", "s3": "s3fs", "az": "adlfs", "abfs": "adlfs"}
        package = hint.get(scheme)
        need = f"pip install {package}" if package else first_line(err)
        raise DataError(f"{url}: reading {scheme}:// needs another package ({need})") from None
    except Exception as err:  # noqa: BLE001 - fsspec, zarr and netCDF-C raise many types
        raise DataError(f"{url}: cannot open the remote dataset: {first_line(err)}") from err


def _is_zarr(path: str) -> bool:
    p = Path(path)
    return p.is_dir() and any(
        (p / m).exists() for m in ("zarr.json", ".zgroup", ".zarray", ".zattrs")
    )


#: Per-variable HDF5 chunk cache (MB) for files faextract opens; ``FAEXTRACT_NETCDF_CACHE_MB``
#: overrides it. netCDF-C's default, 64 MB for every variable of every open file, fills with
#: each chunk read and stays while the file is open: a streaming pass over many variables and
#: files grew by hundreds of MB to GBs. Blocks are read in time order, so a cache that holds
#: the chunks straddling one read and the next is all that pays.
NETCDF_CHUNK_CACHE_MB = 8


def limit_netcdf_chunk_cache() -> None:
    """Set netCDF-C's chunk cache for files opened from now on (a process-wide default)."""
    import netCDF4

    mb = env_number("FAEXTRACT_NETCDF_CACHE_MB", NETCDF_CHUNK_CACHE_MB, maximum=1 << 20)
    size, nelems, preemption = netCDF4.get_chunk_cache()
    if size != int(mb * 2**20):
        netCDF4.set_chunk_cache(int(mb * 2**20), nelems, preemption)


def open_one(path: str) -> xr.Dataset:
    if is_url(path):
        return _open_remote(path)
    try:
        if _is_zarr(path):
            ds = xr.open_zarr(path, decode_times=False, chunks=None)
            _check_chunks(path, ds)
            return ds
        if os.path.isdir(path):
            files = sorted(p for p in os.listdir(path) if p.endswith((".nc", ".nc4", ".netcdf")))
            hint = f" (for its {len(files)} NetCDF files, give a glob: '{path.rstrip('/')}/*.nc')" if files else ""
            raise DataError(f"{path}: a directory that is not a Zarr store{hint}")
        with open(path, "rb") as fh:
            magic = fh.read(8)
        if not (magic[:3] == b"CDF" or magic[:8] == b"\x89HDF\r\n\x1a\n"):
            raise DataError(f"{path}: not a NetCDF file (unrecognized header {magic[:4]!r})")
        limit_netcdf_chunk_cache()
        return xr.open_dataset(path, engine="netcdf4", decode_times=False, chunks=None)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - netCDF4/zarr raise many types for bad files
        raise DataError(
            f"{path}: cannot read as NetCDF or Zarr (corrupt or truncated?): {first_line(err)}"
        ) from err


def _check_chunks(path: str, ds: xr.Dataset) -> None:
    """Chunks absent from a Zarr store read as the fill value (NaN: missing data). zarr
    leaves out chunks that hold only the fill value (an all-land tile of SST), but a copy or
    download that did not finish looks the same: say so, once per variable, or refuse with
    ``FAEXTRACT_MISSING_CHUNKS=error``."""
    import warnings

    import zarr

    policy = os.environ.get("FAEXTRACT_MISSING_CHUNKS", "warn").strip().lower()
    if policy not in ("warn", "error", "ignore"):
        raise DataError(f"FAEXTRACT_MISSING_CHUNKS={policy!r}: expected warn, error or ignore")
    if policy == "ignore":
        return
    try:
        group = zarr.open_group(path, mode="r")
    except Exception:  # noqa: BLE001 - a store zarr cannot list: xarray read it, so go on
        return
    for name in data_variables(ds):
        try:
            arr = group[name]
            missing = int(arr.nchunks) - int(arr.nchunks_initialized)
        except Exception:  # noqa: BLE001
            continue
        if missing <= 0:
            continue
        text = (
            f"{path}: variable {name!r} lacks {missing} of {arr.nchunks} chunks in the store; they "
            "read as missing values (zarr skips chunks holding only fill values, but an "
            "unfinished copy looks the same)"
        )
        if policy == "error":
            raise DataError(text + "; FAEXTRACT_MISSING_CHUNKS=warn reads them as missing")
        warnings.warn(text, FaextractWarning, stacklevel=2)
