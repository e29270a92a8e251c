"""One block of one variable to bytes and back, within an error bound: the mask, then the
correction of a prediction (pointwise or patch-wise guarantee), entropy coded and sealed.

The prediction ``x_hat`` is what the decoder can rebuild before any correction: the learned
network's reconstruction from its coded latents (:class:`LearnedPredictor`), or, without a
model, the block's mean: the correction then carries the whole block, quantized in bins of 2E
and entropy coded (a plain error-bounded quantizer, the codec's floor). Stream
(little-endian; counts and lengths as LEB128 varints)::

    magic "FXB2" | kind u8 (0 data, 1 constant, 2 missing) | mode u8 (0 pointwise, 1 patches)
    | predictor u8 (0 mean, 1 learned, 2 interpolation) | bound f64 | value f64
    | t, h, w, n_parts | n_parts x length | the parts' bytes | crc32 u32

The block's checksum covers its parts, which are bodies without checksums of their own (the
mask's kind byte and bits, :func:`~faextract.compress.entropy.encode_bare` integer streams;
an empty one is zero bytes). Blocks of the first format (``"FXB1"``: u32 sizes, u64 lengths,
each part sealed) still decode.

With the learned predictor the parts after the mask are: the latents' shapes and the
normalization, the hyper-latent, the latent, a crc32 of ``x_hat``, then the correction. With
the interpolation predictor (:mod:`~faextract.compress.interpolation`: closed loop, each point
predicted from reconstructed ones) they are its codes (one stream, or six by level and axis)
and exceptions, within E; in patch mode the interpolation works within :data:`PATCH_SLACK` E
(that bound comes first, f64) and the parts end with the pointwise fix of the few patches left
over E (:func:`~faextract.compress.patches.patch_fix_encode`: their indices, codes and
exceptions). The decoder side of the network (hyper-decoder and decoder) runs in float64 on the CPU, which
gave the same ``x_hat`` for any thread count; a decoder that computes another ``x_hat``
(other arithmetic) stops with an error instead of applying the correction to it.

``decode_block(encode_block(x, ...))`` equals ``x`` within the bound on every valid point (on
every patch's RMSE in patch mode) and is NaN exactly where ``x`` is; a damaged stream is a
one-line error.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

from faextract.compress.entropy import (
    decode_bare,
    decode_integers,
    encode_bare,
    read_varints,
    seal,
    unseal,
    varints,
)
from faextract.compress.guarantee import PointwiseCodes, pointwise_decode, pointwise_encode
from faextract.compress.interpolation import (
    interpolation_decode,
    interpolation_encode,
    join_codes,
    split_codes,
)
from faextract.compress.mask import decode_mask, encode_mask
from faextract.compress.patches import (
    PatchCodes,
    patch_decode,
    patch_encode,
    patch_fix_decode,
    patch_fix_encode,
)
from faextract.errors import DataError

MAGIC = b"FXB2"
MAGIC_V1 = b"FXB1"
_HEAD = struct.Struct("<4sBBBdd")  # then varints t, h, w, n_parts and the parts' lengths
_HEAD_V1 = struct.Struct("<4sBBBddIIII")
KINDS = ("data", "constant", "missing")
MODES = ("pointwise", "patches")
#: The predictor byte of a stream.
MEAN, LEARNED, INTERPOLATION = 0, 1, 2
#: In patch mode the interpolation codes pointwise within this many E, and the few patches
#: whose RMSE then exceeds E are corrected pointwise: uniform errors within 1.5 E give patch
#: RMSEs of ~0.87 E, over E for 0.2-0.4% of the patches (1.3: none, 1.7: a quarter); on the
#: sample this stored 23.6 against 17.9 (within E everywhere) at 1e-2 of the range.
PATCH_SLACK = 1.5


@dataclass
class _Block:
    """A parsed block: its head's fields and its parts (``v1``: the first format's sealed
    parts, else bodies)."""

    kind: int
    mode: int
    predictor: int
    bound: float
    value: float
    shape: tuple[int, int, int]
    parts: list[bytes]
    v1: bool

    def integers(self, part: bytes) -> np.ndarray:
        return decode_integers(part) if self.v1 else decode_bare(part)

    def mask(self) -> np.ndarray:
        return decode_mask(self.parts[0], self.shape, sealed=self.v1)


def _write(kind, mode, predictor, bound, value, shape, parts: list[bytes]) -> bytes:
    head = _HEAD.pack(MAGIC, kind, mode, predictor, float(bound), float(value))
    sizes = varints([*shape, len(parts), *map(len, parts)])
    return seal(b"".join([head, sizes, *parts]))


def _parse(data: bytes) -> _Block:
    data = unseal(data, "a compressed block")
    try:
        if data[:4] == MAGIC_V1:
            magic, kind, mode, pred, bound, value, t, h, w, n = _HEAD_V1.unpack_from(data, 0)
            at, starts, lengths = _HEAD_V1.size, [], []
            for _ in range(n):
                lengths.append(struct.unpack_from("<Q", data, at)[0])
                starts.append(at + 8)
                at += 8 + lengths[-1]
        else:
            magic, kind, mode, pred, bound, value = _HEAD.unpack_from(data, 0)
            (t, h, w, n), at = read_varints(data, _HEAD.size, 4)
            n = int(n)
            lengths, at = read_varints(data, at, n)
            lengths = [int(v) for v in lengths]
            starts = [int(at + sum(lengths[:i])) for i in range(n)]
    except (struct.error, ValueError):
        raise DataError("a compressed block does not decode (too short)") from None
    if magic not in (MAGIC, MAGIC_V1) or kind >= len(KINDS) or mode >= len(MODES) or pred > INTERPOLATION:
        raise DataError("not a faextract compressed block")
    end = starts[-1] + lengths[-1] if n else len(data)
    if end != len(data):
        raise DataError("a compressed block does not decode (its parts do not add up)")
    parts = [data[a : a + k] for a, k in zip(starts, lengths, strict=True)]
    return _Block(kind, mode, pred, bound, value, (int(t), int(h), int(w)), parts, magic == MAGIC_V1)


class LearnedPredictor:
    """A trained :class:`~faextract.compress.model.BlockCodec` as the prediction: encodes a
    prepared block into latent streams and rebuilds ``x_hat`` from them (float64 decoder side,
    integer tables for the hyper-latent made once from the model's prior)."""

    def __init__(self, model, sha256: str = ""):
        import copy

        from faextract.compress.latent import prior_tables

        self.model = model.eval()
        self.exact = copy.deepcopy(model).double().eval()  # the decoder's side, float64
        self.sha256 = sha256
        self.tables = prior_tables(self.exact.prior)

    @classmethod
    def load(cls, path, needed_by: str = "faextract compress") -> LearnedPredictor:
        """The compressor of a checkpoint file (a one-line error for any other file)."""
        from faextract.checkpoint import Checkpoint, sha256

        ckpt = Checkpoint.load(path).require("compressor", path, needed_by)
        return cls(ckpt.build_model(), sha256(path))

    def encode(self, values: np.ndarray, periodic: bool = False) -> tuple[list[bytes], np.ndarray]:
        """``(parts, x_hat)`` for ``values (t, h, w)`` with at least two distinct valid values;
        ``periodic``: the block spans the whole width of a periodic longitude axis."""
        import torch

        from faextract.compress.blocks import prepare
        from faextract.compress.latent import encode_y, encode_z

        prep = prepare(values, periodic)
        with torch.inference_mode():
            y = self.model.encode(torch.from_numpy(prep.x)[None])
            z = self.model.hyper_encode(y)
        z_bytes, z_hat = encode_z(z[0].double().numpy(), self.tables)
        mean, scale = self._params(z_hat, y.shape[-2:])
        y_bytes, y_hat = encode_y(y[0].double().numpy(), mean, scale)
        x_hat = self._reconstruct(y_hat, prep)
        meta = struct.pack("<5I5Idd", *y.shape[1:], 0, *z.shape[1:], 0, prep.offset, prep.scale)
        digest = struct.pack("<I", zlib.crc32(x_hat.tobytes()))
        return [meta, z_bytes, y_bytes, digest], x_hat

    def decode(self, parts: list[bytes], valid: np.ndarray) -> np.ndarray:
        from faextract.compress.blocks import Prepared
        from faextract.compress.latent import decode_y, decode_z

        meta, z_bytes, y_bytes, digest = parts
        f = struct.unpack("<5I5Idd", meta)
        y_shape, z_shape, offset, scale = f[0:4], f[5:9], f[10], f[11]
        z_hat = decode_z(z_bytes, z_shape, self.tables)
        mean, sc = self._params(z_hat, y_shape[-2:])
        y_hat = decode_y(y_bytes, mean, sc)
        x_hat = self._reconstruct(y_hat, Prepared("data", None, valid, offset, scale))
        if struct.pack("<I", zlib.crc32(x_hat.tobytes())) != digest:
            raise DataError(
                "this machine reconstructs the block differently from the one that wrote it "
                "(other arithmetic); decode on the CPU with the same faextract and model"
            )
        return x_hat

    def _params(self, z_hat: np.ndarray, grid) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode():
            mean, scale = self.exact.prior_params(torch.from_numpy(z_hat)[None], tuple(grid))
        return mean[0].numpy(), scale[0].numpy()

    def _reconstruct(self, y_hat: np.ndarray, prep) -> np.ndarray:
        import torch

        from faextract.compress.blocks import restore

        with torch.inference_mode():
            x = self.exact.decode(torch.from_numpy(np.ascontiguousarray(y_hat))[None])[0]
        return restore(x.numpy(), prep)


def encode_block(
    values: np.ndarray,
    bound: float,
    mode: str = "pointwise",
    what: str = "block",
    predictor: LearnedPredictor | None = None,
    basis: np.ndarray | None = None,
    periodic: bool = False,
    always_model: bool = False,
    interpolation: bool = True,
) -> bytes:
    """``values (t, h, w)`` float32 (NaN = missing) -> bytes within ``bound`` (absolute, data
    units; ``mode="patches"``: the RMSE of every 8x8 patch instead of every point). With a
    ``predictor``, the block is coded both ways (its prediction, and the block mean) and the
    shorter stream kept: a model never makes a block larger than the plain quantizer would.
    ``basis``: the patch mode's shared basis (:func:`~faextract.compress.patches.fit_basis`),
    which the decoder must be given too; ``periodic``: the block spans the whole width of a
    periodic longitude axis (the network's padding wraps around); ``always_model``: keep the
    prediction's stream even when another is shorter (to measure the model); ``interpolation``:
    False leaves that predictor out (to measure the others)."""
    if mode not in MODES:
        raise DataError(f"unknown error-bound mode {mode!r}; choose from {', '.join(MODES)}")
    values = np.asarray(values, dtype=np.float32)
    mask_bytes, valid = encode_mask(values, what, sealed=False)
    t, h, w = values.shape
    learned = 0
    if not valid.any():
        kind, value, parts = 2, 0.0, [mask_bytes]
    elif np.ptp(values[valid]) == 0:
        kind, value, parts = 1, float(values[valid][0]), [mask_bytes]
    else:
        kind, value = 0, float(values[valid].astype(np.float64).mean())
        x_mean = np.full(values.shape, value, dtype=np.float32)
        candidates = [(MEAN, [mask_bytes, *_correction(values, x_mean, valid, bound, mode, basis)])]
        if interpolation:
            candidates.append((INTERPOLATION, [mask_bytes, *_interpolated(values, valid, bound, mode, value)]))
        if predictor is not None:
            extra, x_hat = predictor.encode(values, periodic)
            with_model = [mask_bytes, *extra, *_correction(values, x_hat, valid, bound, mode, basis)]
            candidates.append((LEARNED, with_model))
        if always_model and predictor is not None:
            learned, parts = candidates[-1]
        else:
            learned, parts = min(candidates, key=lambda c: sum(map(len, c[1])))
    return _write(kind, MODES.index(mode), learned, bound, value, (t, h, w), parts)


def _interpolated(values, valid, bound: float, mode: str, fill: float) -> list[bytes]:
    """The interpolation predictor's parts: its codes and exceptions within ``bound``
    (pointwise), or (patches) its coding within :data:`PATCH_SLACK` ``bound`` (that bound
    first, f64) and the pointwise fix of the patches it leaves over ``bound``."""
    loose = bound if mode == "pointwise" else PATCH_SLACK * bound
    q, index, exact, recon = interpolation_encode(values, valid, loose, fill)
    parts = [_interpolation_codes(q, valid), encode_bare(np.diff(index, prepend=0)),
             exact.astype("<f4").tobytes()]  # fmt: skip
    if mode == "pointwise":
        return parts
    over, fix, _ = patch_fix_encode(values, recon, valid, bound)
    return [struct.pack("<d", loose), *parts, encode_bare(np.diff(over, prepend=0)),
            *_pointwise_parts(fix)]  # fmt: skip


def _pointwise_parts(c: PointwiseCodes) -> list[bytes]:
    """A pointwise correction's three parts: codes, exception index steps, exception values."""
    return [encode_bare(c.q), encode_bare(np.diff(c.exception_index, prepend=0)),
            c.exception_value.astype("<f4").tobytes()]  # fmt: skip


def _pointwise_codes(block: _Block, parts: list[bytes]) -> PointwiseCodes:
    """The correction :func:`_pointwise_parts` wrote, from those three parts of ``block``."""
    q, idx, vals = parts
    return PointwiseCodes(block.integers(q), np.cumsum(block.integers(idx)),
                          np.frombuffer(vals, "<f4"))  # fmt: skip


def _interpolation_codes(q: np.ndarray, valid: np.ndarray) -> bytes:
    """The interpolation's codes as one stream or dealt into their groups
    (:func:`~faextract.compress.interpolation.split_codes`), whichever is shorter:
    ``G | G lengths | G streams`` (varints)."""
    options = [[encode_bare(q)], [encode_bare(g) for g in split_codes(q, valid)]]
    streams = min(options, key=lambda o: sum(map(len, o)))
    return varints([len(streams), *map(len, streams)]) + b"".join(streams)


def _interpolation_uncodes(data: bytes, valid: np.ndarray) -> np.ndarray:
    try:
        (g,), pos = read_varints(data, 0, 1)
        lengths, pos = read_varints(data, pos, int(g))
        streams = []
        for n in lengths.tolist():
            streams.append(decode_bare(data[pos : pos + n]))
            pos += n
        if pos != len(data):
            raise ValueError("trailing bytes")
        return streams[0] if len(streams) == 1 else join_codes(streams, valid)
    except ValueError as err:
        raise DataError(f"a compressed block does not decode ({err})") from None


def _correction(x, x_hat, valid, bound, mode, basis=None) -> list[bytes]:
    if mode == "pointwise":
        return _pointwise_parts(pointwise_encode(x, x_hat, valid, bound)[0])
    c, _ = patch_encode(x, x_hat, valid, bound, basis)
    return [
        encode_bare(np.diff(c.patches, prepend=0)), encode_bare(c.keep),
        encode_bare(c.coefficients), c.basis.astype("<f4").tobytes(),
        encode_bare(c.exact), encode_bare(c.exact_q),
        encode_bare(np.diff(c.lossless, prepend=0)), c.values.astype("<f4").tobytes(),
    ]  # fmt: skip


def needs_shared_basis(data: bytes) -> bool:
    """Whether the block :func:`encode_block` wrote decodes only with its variable's shared
    patch basis (a patch-coded block without a basis of its own)."""
    block = _parse(data)
    if block.kind != 0 or MODES[block.mode] != "patches" or block.predictor == INTERPOLATION:
        return False
    parts = block.parts[1:]
    if block.predictor == LEARNED:
        parts = parts[4:]
    return len(parts[3]) == 0  # the block's own basis: empty when it used the shared one


def decode_block(
    data: bytes, predictor: LearnedPredictor | None = None, basis: np.ndarray | None = None
) -> np.ndarray:
    """The ``(t, h, w)`` float32 block :func:`encode_block` wrote (with the same predictor and
    shared basis), in either block format."""
    block = _parse(data)
    shape, ints = block.shape, block.integers
    valid = block.mask()
    if block.kind == 2:
        return np.full(shape, np.nan, dtype=np.float32)
    x_hat = np.full(shape, block.value, dtype=np.float32)
    if block.kind == 1:
        return np.where(valid, x_hat, np.nan).astype(np.float32)
    parts = block.parts[1:]
    if block.predictor == INTERPOLATION:
        patches = MODES[block.mode] == "patches" and not block.v1
        loose = struct.unpack("<d", parts[0])[0] if patches else block.bound
        q, idx, vals = parts[1:4] if patches else parts[:3]
        codes = ints(q) if block.v1 else _interpolation_uncodes(q, valid)
        recon = interpolation_decode(codes, np.cumsum(ints(idx)), np.frombuffer(vals, "<f4"),
                                     valid, loose, block.value)  # fmt: skip
        if patches:
            fix = _pointwise_codes(block, parts[5:8])
            return patch_fix_decode(recon, valid, np.cumsum(ints(parts[4])), fix, block.bound)
        return np.where(valid, recon, np.nan).astype(np.float32)
    if block.predictor == LEARNED:
        if predictor is None:
            raise DataError("this block was compressed with a model: give the compressor's checkpoint")
        x_hat, parts = predictor.decode(parts[:4], valid), parts[4:]
    if MODES[block.mode] == "pointwise":
        return pointwise_decode(x_hat, valid, _pointwise_codes(block, parts[:3]), block.bound)
    pi, keep, coef, own, exact, exact_q, lossless, lvals = parts[:8]
    own = np.frombuffer(own, "<f4")  # the block's own basis (empty: the variable's shared one)
    codes = PatchCodes(
        np.cumsum(ints(pi)), ints(keep), ints(coef),
        own.reshape(64, 64) if own.size else np.zeros((0, 0), np.float32),
        ints(exact), ints(exact_q), np.cumsum(ints(lossless)), np.frombuffer(lvals, "<f4"),
    )  # fmt: skip
    if not codes.basis.size and codes.patches.size and basis is None:
        raise DataError("this block was coded with its variable's shared basis: it is missing")
    return patch_decode(x_hat, valid, codes, block.bound, basis)
