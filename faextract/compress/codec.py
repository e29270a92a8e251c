"""One block of one variable to bytes and back, within an error bound: the mask, then the
correction of a prediction (pointwise or patch-wise guarantee), entropy coded and sealed.

The prediction ``x_hat`` is what the decoder can rebuild before any correction: the learned
network's reconstruction once its latents are coded (not yet here), or, without a model, the
block's mean: the correction then carries the whole block, quantized in bins of 2E and
entropy coded (a plain error-bounded quantizer, the codec's floor). Stream (little-endian)::

    magic "FXB1" | kind u8 (0 data, 1 constant, 2 missing) | mode u8 (0 pointwise, 1 patches)
    | bound f64 | value f64 | t, h, w u32 | n_parts u32 | n_parts x (length u64, bytes)
    | crc32 u32

``decode_block(encode_block(x, ...))`` equals ``x`` within the bound on every valid point and
is NaN exactly where ``x`` is; a damaged stream is a one-line error.
"""

from __future__ import annotations

import struct

import numpy as np

from faextract.compress.entropy import decode_integers, encode_integers, seal, unseal
from faextract.compress.guarantee import PointwiseCodes, pointwise_decode, pointwise_encode
from faextract.compress.mask import decode_mask, encode_mask
from faextract.compress.patches import PatchCodes, patch_decode, patch_encode
from faextract.errors import DataError

MAGIC = b"FXB1"
_HEAD = struct.Struct("<4sBBddIIII")
KINDS = ("data", "constant", "missing")
MODES = ("pointwise", "patches")


def _pack(parts: list[bytes]) -> bytes:
    return b"".join(struct.pack("<Q", len(p)) + p for p in parts)


def _unpack(data: bytes, pos: int, n: int) -> list[bytes]:
    parts = []
    for _ in range(n):
        (length,) = struct.unpack_from("<Q", data, pos)
        pos += 8
        parts.append(data[pos : pos + length])
        pos += length
    if pos != len(data):
        raise DataError("a compressed block does not decode (its parts do not add up)")
    return parts


def encode_block(values: np.ndarray, bound: float, mode: str = "pointwise", what: str = "block") -> bytes:
    """``values (t, h, w)`` float32 (NaN = missing) -> bytes within ``bound`` (absolute, data
    units; ``mode="patches"``: the RMSE of every 8x8 patch instead of every point)."""
    if mode not in MODES:
        raise DataError(f"unknown error-bound mode {mode!r}; choose from {', '.join(MODES)}")
    values = np.asarray(values, dtype=np.float32)
    mask_bytes, valid = encode_mask(values, what)
    t, h, w = values.shape
    if not valid.any():
        kind, value, parts = 2, 0.0, [mask_bytes]
    elif np.ptp(values[valid]) == 0:
        kind, value, parts = 1, float(values[valid][0]), [mask_bytes]
    else:
        kind, value = 0, float(values[valid].astype(np.float64).mean())
        x_hat = np.full(values.shape, value, dtype=np.float32)
        parts = [mask_bytes, *_correction(values, x_hat, valid, bound, mode)]
    head = _HEAD.pack(MAGIC, kind, MODES.index(mode), float(bound), value, t, h, w, len(parts))
    return seal(head + _pack(parts))


def _correction(x, x_hat, valid, bound, mode) -> list[bytes]:
    if mode == "pointwise":
        c, _ = pointwise_encode(x, x_hat, valid, bound)
        return [encode_integers(c.q), encode_integers(np.diff(c.exception_index, prepend=0)),
                c.exception_value.astype("<f4").tobytes()]  # fmt: skip
    c, _ = patch_encode(x, x_hat, valid, bound)
    return [
        encode_integers(np.diff(c.patches, prepend=0)), encode_integers(c.keep),
        encode_integers(c.coefficients), c.basis.astype("<f4").tobytes(),
        encode_integers(c.exact), encode_integers(c.exact_q),
        encode_integers(np.diff(c.lossless, prepend=0)), c.values.astype("<f4").tobytes(),
    ]  # fmt: skip


def decode_block(data: bytes) -> np.ndarray:
    """The ``(t, h, w)`` float32 block :func:`encode_block` wrote."""
    data = unseal(data, "a compressed block")
    try:
        magic, kind, mode, bound, value, t, h, w, n = _HEAD.unpack_from(data, 0)
    except struct.error:
        raise DataError("a compressed block does not decode (too short)") from None
    if magic != MAGIC or kind >= len(KINDS) or mode >= len(MODES):
        raise DataError("not a faextract compressed block")
    parts = _unpack(data, _HEAD.size, n)
    valid = decode_mask(parts[0], (t, h, w))
    if kind == 2:
        return np.full((t, h, w), np.nan, dtype=np.float32)
    x_hat = np.full((t, h, w), value, dtype=np.float32)
    if kind == 1:
        return np.where(valid, x_hat, np.nan).astype(np.float32)
    if MODES[mode] == "pointwise":
        q, idx, vals = parts[1:4]
        codes = PointwiseCodes(
            decode_integers(q), np.cumsum(decode_integers(idx)), np.frombuffer(vals, "<f4")
        )
        return pointwise_decode(x_hat, valid, codes, bound)
    pi, keep, coef, basis, exact, exact_q, lossless, lvals = parts[1:9]
    basis = np.frombuffer(basis, "<f4")
    codes = PatchCodes(
        np.cumsum(decode_integers(pi)), decode_integers(keep), decode_integers(coef),
        basis.reshape(64, 64) if basis.size else np.zeros((0, 0), np.float32),
        decode_integers(exact), decode_integers(exact_q),
        np.cumsum(decode_integers(lossless)), np.frombuffer(lvals, "<f4"),
    )  # fmt: skip
    return patch_decode(x_hat, valid, codes, bound)
