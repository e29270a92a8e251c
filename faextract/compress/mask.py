"""Missing-value masks, stored losslessly: where a field is NaN (land, sea ice, a mask that
changes in time) is data too, and a decompressed field must have NaN exactly there.

A mask is bit-packed and deflated: land masks are long runs, and a mask that does not change
from one step to the next costs almost nothing once deflated. ``inf`` is not a missing value:
:func:`encode_mask` refuses it (a codec cannot bound an error against infinity).
"""

from __future__ import annotations

import zlib

import numpy as np

from faextract.compress.entropy import seal, unseal
from faextract.errors import DataError

MAGIC = b"FXM1"


def encode_mask(
    values: np.ndarray, what: str = "the input", sealed: bool = True
) -> tuple[bytes, np.ndarray]:
    """``(bytes, valid)``: the mask of finite values of ``values`` (any shape) and the bytes
    that :func:`decode_mask` turns back into it; ``sealed=False``: the body alone (kind byte
    and deflated bits, inside a stream with a checksum of its own)."""
    if np.isinf(values).any():
        raise DataError(f"{what} holds infinite values; replace them (e.g. by NaN) first")
    valid = ~np.isnan(values)
    if valid.all():
        body = bytes([1])
    elif not valid.any():
        body = bytes([2])
    else:
        body = bytes([0]) + zlib.compress(np.packbits(valid, axis=None).tobytes(), 6)
    return (seal(MAGIC + body) if sealed else body), valid


def decode_mask(data: bytes, shape: tuple[int, ...], sealed: bool = True) -> np.ndarray:
    """The boolean mask (True = valid) of ``shape`` that :func:`encode_mask` wrote (with the
    same ``sealed``)."""
    if sealed:
        data = unseal(data, "a compressed mask")
    try:
        if sealed:
            if data[:4] != MAGIC:
                raise ValueError("not a mask stream")
            data = data[4:]
        kind = data[0]
        if kind in (1, 2):
            return np.full(shape, kind == 1, dtype=bool)
        if kind != 0:
            raise ValueError("unknown mask kind")
        bits = np.frombuffer(zlib.decompress(data[1:]), dtype=np.uint8)
        n = int(np.prod(shape))
        if bits.size != -(-n // 8):
            raise ValueError("wrong size")
        return np.unpackbits(bits, count=n).astype(bool).reshape(shape)
    except (ValueError, IndexError, zlib.error) as err:
        raise DataError(f"a compressed mask does not decode ({err})") from None
