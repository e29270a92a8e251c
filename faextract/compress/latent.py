"""Coding the network's latents so that a stream decodes bit-identically on another machine.

``y`` (the latent) is coded as ``round(y - mean)`` under a zero-mean Gaussian whose scale is
snapped to a fixed table of :data:`SCALES` (128 log-spaced values, 0.11 .. 20): both sides
model a symbol with one of 128 exact float64 numbers, never with a network output. The mean
and scale come from the hyper-decoder, which another machine may compute a few ulps apart, so
the table index of a scale that falls on a boundary could differ: the stream carries a crc32
of the indices, and a decoder whose indices differ stops with a one-line error instead of
decoding other numbers.

``z`` (the hyper-latent) is coded with integer tables per channel, made once from the model's
factorized prior (:func:`prior_tables`) and stored with the compressed file, so decoding
depends on the stored integers only.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from faextract.compress.entropy import seal, unseal
from faextract.errors import DataError

#: The scales a latent symbol can be coded with (as CAESAR's 128-entry table).
SCALES = np.exp(np.linspace(np.log(0.11), np.log(20.0), 128))
_EDGES = np.sqrt(SCALES[1:] * SCALES[:-1])  # geometric midpoints: snap to the nearest in log
#: Symbols beyond +-RANGE are clamped (their distance is then left to the error correction).
RANGE = 255
_HEAD = struct.Struct("<4sQI")


def scale_indices(scale: np.ndarray) -> np.ndarray:
    """The table index (int32) of each scale, nearest in log; below/above the table: its ends."""
    return np.searchsorted(_EDGES, np.asarray(scale, dtype=np.float64)).astype(np.int32)


def _gaussian():
    import constriction

    return constriction.stream.model.QuantizedGaussian(-RANGE, RANGE)


def encode_y(y: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> tuple[bytes, np.ndarray]:
    """``(bytes, y_hat)``: ``y`` coded given the hyper-decoder's ``mean`` and ``scale`` (same
    shape); ``y_hat = symbols + mean`` is what the decoder will reconstruct."""
    import constriction

    mean = np.asarray(mean, dtype=np.float64).ravel()
    sym = np.clip(np.rint(np.asarray(y, dtype=np.float64).ravel() - mean), -RANGE, RANGE)
    sym = sym.astype(np.int32)
    idx = scale_indices(np.asarray(scale).ravel())
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(sym, _gaussian(), np.zeros(sym.size), SCALES[idx])
    words = coder.get_compressed().astype("<u4")
    head = _HEAD.pack(b"FXY1", sym.size, zlib.crc32(idx.astype("<i4").tobytes()))
    y_hat = (sym + mean).reshape(np.shape(y))
    return seal(head + words.tobytes()), y_hat


def decode_y(data: bytes, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``y_hat`` from :func:`encode_y`'s bytes and this machine's ``mean`` and ``scale``."""
    import constriction

    data = unseal(data, "a latent stream")
    magic, n, crc = _HEAD.unpack_from(data, 0)
    mean = np.asarray(mean, dtype=np.float64).ravel()
    idx = scale_indices(np.asarray(scale).ravel())
    if magic != b"FXY1" or n != idx.size:
        raise DataError("not a latent stream of this block's shape")
    if zlib.crc32(idx.astype("<i4").tobytes()) != crc:
        raise DataError(
            "the latent stream was written with scales this machine computes differently "
            "(another model file or arithmetic); decode where it was written, or on the CPU"
        )
    words = np.frombuffer(data, dtype="<u4", offset=_HEAD.size).astype(np.uint32)
    sym = constriction.stream.stack.AnsCoder(words).decode(_gaussian(), np.zeros(n), SCALES[idx])
    return (np.asarray(sym, dtype=np.float64) + mean).reshape(np.shape(scale))


def prior_tables(prior, total: int = 1 << 16) -> np.ndarray:
    """Integer tables ``(channels, 2 * RANGE + 1)`` for the hyper-latent from ``prior`` (the
    model's :class:`~faextract.compress.model.FactorizedPrior`): each row sums to about
    ``total``, every symbol at least 1 (decodable)."""
    import torch

    weights = next(prior.parameters())
    channels = weights.shape[0]
    grid = torch.arange(-RANGE, RANGE + 1, dtype=weights.dtype)
    with torch.no_grad():
        p = prior.likelihood(grid.view(1, 1, -1).expand(1, channels, -1).contiguous())[0]
    p = p.double().numpy()
    p = p / p.sum(axis=1, keepdims=True)
    return np.maximum(np.rint(p * total), 1).astype(np.uint32)


def _channel_model(tables: np.ndarray, c: int):
    """Channel ``c``'s distribution, from its stored integer counts (the same on every machine)."""
    import constriction

    return constriction.stream.model.Categorical(tables[c] / tables[c].sum(), perfect=False)


def encode_z(z: np.ndarray, tables: np.ndarray) -> tuple[bytes, np.ndarray]:
    """``(bytes, z_hat)``: the hyper-latent ``z (C, ...)`` rounded and coded with ``tables``."""
    import constriction

    C = z.shape[0]
    sym = np.clip(np.rint(np.asarray(z, dtype=np.float64)), -RANGE, RANGE).astype(np.int32)
    coder = constriction.stream.stack.AnsCoder()
    for c in reversed(range(C)):  # a stack: the last channel first
        coder.encode_reverse(sym[c].ravel() + RANGE, _channel_model(tables, c))
    words = coder.get_compressed().astype("<u4")
    return seal(_HEAD.pack(b"FXZ1", sym.size, C) + words.tobytes()), sym.astype(np.float64)


def decode_z(data: bytes, shape: tuple[int, ...], tables: np.ndarray) -> np.ndarray:
    import constriction

    data = unseal(data, "a hyper-latent stream")
    magic, n, C = _HEAD.unpack_from(data, 0)
    if magic != b"FXZ1" or n != int(np.prod(shape)) or C != shape[0]:
        raise DataError("not a hyper-latent stream of this block's shape")
    coder = constriction.stream.stack.AnsCoder(
        np.frombuffer(data, dtype="<u4", offset=_HEAD.size).astype(np.uint32)
    )
    per = n // C
    out = np.empty((C, per), dtype=np.float64)
    for c in range(C):
        out[c] = np.asarray(coder.decode(_channel_model(tables, c), per), dtype=np.float64) - RANGE
    return out.reshape(shape)
