"""Entropy coding of integer symbols (quantized residuals, latents) with constriction's ANS
coder, in a self-contained byte string that decodes bit-identically on any machine.

The model is static and travels in the stream: the histogram of the symbols inside an alphabet
of at most :data:`MAX_ALPHABET` values around the median, as integer counts. The decoder
rebuilds the same float64 probabilities from the same integers, so no floating-point result of
another machine (GPU, BLAS, thread count) enters decoding. Values outside the alphabet are coded
as an escape symbol, their values stored apart.

:func:`encode_bare` writes the body alone (what a sealed compressed block holds, whose own
checksum covers it; an empty array is zero bytes), little-endian, sizes as LEB128 varints::

    n | zigzag(base) | K | n_escaped | [escape width u8 (4 or 8), when n_escaped]
    | table format u8 (0 varints, 1 zlib of varints) | table length | counts[K + 1]
    | escaped int32 or int64[n_escaped] | ANS words uint32[...] (the rest)

:func:`encode_integers` is the standalone form: ``"FXE2" | body | crc32``. Streams of the
first format (``"FXE1"``: fixed-width header, zlib of uint32 counts) still decode. A stream
that is cut short or altered fails its checksum or its counts: an error, never other numbers.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from faextract.errors import DataError

MAGIC = b"FXE2"
MAGIC_V1 = b"FXE1"
#: Symbols inside [base, base + K): histogram-coded. 4096 bins cover the residuals of any
#: useful predictor; the rare rest are escaped.
MAX_ALPHABET = 4096
_HEADER_V1 = struct.Struct("<4sQqIQQB")


def varints(values) -> bytes:
    """Unsigned integers (< 2**63) as LEB128 varints: 7 bits a byte, high bit = more."""
    v = np.asarray(values, dtype=np.uint64).ravel()
    if v.size == 0:
        return b""
    if int(v.max()) >= 2**63:
        raise ValueError("varints: value out of range")
    nbytes = np.ones(v.size, dtype=np.int64)
    for k in range(1, 10):
        nbytes += v >= np.uint64(1) << np.uint64(7 * k)
    ends = np.cumsum(nbytes)
    out = np.empty(int(ends[-1]), dtype=np.uint8)
    starts = ends - nbytes
    owner = np.repeat(np.arange(v.size), nbytes)
    j = np.arange(out.size) - starts[owner]
    out[:] = (v[owner] >> (np.uint64(7) * j.astype(np.uint64))) & np.uint64(127)
    out[j < nbytes[owner] - 1] |= 128
    return out.tobytes()


def read_varints(data: bytes, pos: int, count: int) -> tuple[np.ndarray, int]:
    """``count`` varints from ``data[pos:]``: ``(uint64 values, position after them)``."""
    if count == 0:
        return np.zeros(0, dtype=np.uint64), pos
    b = np.frombuffer(data, dtype=np.uint8, offset=pos, count=min(len(data) - pos, 10 * count))
    ends = np.flatnonzero(b < 128)
    if ends.size < count:
        raise ValueError("truncated varints")
    ends = ends[:count]
    starts = np.concatenate([[0], ends[:-1] + 1])
    if int((ends - starts).max()) >= 10:
        raise ValueError("varint too long")
    n = int(ends[-1]) + 1
    owner = np.repeat(np.arange(count), ends - starts + 1)
    j = (np.arange(n) - starts[owner]).astype(np.uint64)
    parts = (b[:n].astype(np.uint64) & np.uint64(127)) << (np.uint64(7) * j)
    return np.add.reduceat(parts, starts), pos + n


def _read(data: bytes, pos: int) -> tuple[int, int]:
    v, pos = read_varints(data, pos, 1)
    return int(v[0]), pos


def _zigzag(v: int) -> int:
    return 2 * v if v >= 0 else -2 * v - 1


def _unzigzag(u: int) -> int:
    return u // 2 if u % 2 == 0 else -(u + 1) // 2


def _alphabet(v: np.ndarray) -> tuple[int, int]:
    """``(base, K)``: the used range, or :data:`MAX_ALPHABET` values centred on the median."""
    lo, hi = int(v.min()), int(v.max())
    if hi - lo + 1 <= MAX_ALPHABET:
        return lo, hi - lo + 1
    mid = int(np.median(v))
    base = max(lo, mid - MAX_ALPHABET // 2)
    return base, min(MAX_ALPHABET, hi - base + 1)


def _model(counts: np.ndarray):
    import constriction

    probs = counts.astype(np.float64) / float(counts.sum())
    return constriction.stream.model.Categorical(probs, perfect=False)


def _symbols(v: np.ndarray):
    """``(base, K, symbols int32 with K = escape, escaped values, counts[K + 1])``."""
    base, K = _alphabet(v)
    inside = (v >= base) & (v < base + K)
    symbols = np.where(inside, v - base, K).astype(np.int32)
    counts = np.bincount(symbols, minlength=K + 1).astype(np.uint32)
    return base, K, symbols, v[~inside], counts


def _ans(symbols: np.ndarray, counts: np.ndarray) -> np.ndarray:
    import constriction

    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(symbols, _model(counts))
    return coder.get_compressed().astype("<u4")


def _unans(words: np.ndarray, counts: np.ndarray, n: int) -> np.ndarray:
    import constriction

    return np.asarray(constriction.stream.stack.AnsCoder(words).decode(_model(counts), n), np.int64)


def _restore(symbols: np.ndarray, base: int, K: int, counts: np.ndarray, escaped: np.ndarray):
    out = symbols + base
    esc = symbols == K
    if int(esc.sum()) != escaped.size or not np.array_equal(
        np.bincount(symbols, minlength=K + 1), counts.astype(np.int64)
    ):
        raise DataError("a compressed stream does not decode (its symbols do not match its counts)")
    out[esc] = escaped
    return out


def encode_bare(values: np.ndarray) -> bytes:
    """Any integer array (flattened in C order) -> the unsealed body :func:`decode_bare`
    inverts (zero bytes for an empty array)."""
    v = np.ascontiguousarray(values, dtype=np.int64).ravel()
    if v.size == 0:
        return b""
    base, K, symbols, escaped, counts = _symbols(v)
    words = _ans(symbols, counts)
    table = varints(counts)
    packed = zlib.compress(table, 6)
    fmt, table = (1, packed) if len(packed) < len(table) else (0, table)
    small = escaped.size == 0 or (escaped.min() >= -(2**31) and escaped.max() < 2**31)
    width = 4 if small else 8
    head = varints([v.size, _zigzag(base), K, escaped.size])
    if escaped.size:
        head += bytes([width])
    return b"".join([
        head, bytes([fmt]), varints([len(table)]), table,
        escaped.astype(f"<i{width}").tobytes(), words.tobytes(),
    ])  # fmt: skip


def decode_bare(data: bytes) -> np.ndarray:
    """The int64 values :func:`encode_bare` wrote (flat)."""
    if len(data) == 0:
        return np.zeros(0, dtype=np.int64)
    try:
        (n, zbase, K, n_esc), pos = read_varints(data, 0, 4)
        n, K, n_esc, base = int(n), int(K), int(n_esc), _unzigzag(int(zbase))
        width = 8
        if n_esc:
            width, pos = data[pos], pos + 1
        fmt, pos = data[pos], pos + 1
        length, pos = _read(data, pos)
        table = data[pos : pos + length]
        pos += length
        if fmt == 1:
            table = zlib.decompress(table)
        elif fmt != 0 or width not in (4, 8) or K > MAX_ALPHABET or n_esc > n:
            raise ValueError("not an entropy-coded stream")
        counts, end = read_varints(table, 0, K + 1)
        if end != len(table) or int(counts.sum()) != n:
            raise ValueError("inconsistent symbol counts")
        escaped = np.frombuffer(data, dtype=f"<i{width}", count=n_esc, offset=pos).astype(np.int64)
        pos += width * n_esc
        if (len(data) - pos) % 4:
            raise ValueError("trailing or missing bytes")
        words = np.frombuffer(data, dtype="<u4", offset=pos).astype(np.uint32)
        symbols = _unans(words, counts, n)
    except (ValueError, IndexError, struct.error, zlib.error, BufferError) as err:
        raise DataError(f"a compressed stream does not decode ({err})") from None
    return _restore(symbols, base, K, counts, escaped)


def encode_integers(values: np.ndarray) -> bytes:
    """Any integer array (flattened in C order) -> a sealed standalone stream;
    :func:`decode_integers` inverts it."""
    return seal(MAGIC + encode_bare(values))


def seal(payload: bytes) -> bytes:
    """``payload`` with its crc32 appended (:func:`unseal` checks it)."""
    return payload + struct.pack("<I", zlib.crc32(payload))


def unseal(data: bytes, what: str) -> bytes:
    """The payload of a sealed stream, or a one-line error if its checksum fails."""
    if len(data) < 4 or struct.unpack("<I", data[-4:])[0] != zlib.crc32(data[:-4]):
        raise DataError(f"{what} is damaged (checksum mismatch)")
    return data[:-4]


def decode_integers(data: bytes) -> np.ndarray:
    """The int64 values :func:`encode_integers` wrote (flat), of either stream format."""
    data = unseal(data, "a compressed stream")
    if data[:4] == MAGIC:
        return decode_bare(data[4:])
    if data[:4] != MAGIC_V1:
        raise DataError("a compressed stream does not decode (not an entropy-coded stream)")
    return _decode_v1(data)


def _decode_v1(data: bytes) -> np.ndarray:
    try:
        magic, n, base, K, n_esc, n_words, width = _HEADER_V1.unpack_from(data, 0)
        if width not in (4, 8):
            raise ValueError("not an entropy-coded stream")
        pos = _HEADER_V1.size
        (clen,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        counts = np.frombuffer(zlib.decompress(data[pos : pos + clen]), dtype="<u4")
        pos += clen
        if counts.size != K + 1 or int(counts.sum()) != n:
            raise ValueError("inconsistent symbol counts")
        escaped = np.frombuffer(data, dtype=f"<i{width}", count=n_esc, offset=pos).astype(np.int64)
        pos += width * n_esc
        words = np.frombuffer(data, dtype="<u4", count=n_words, offset=pos).astype(np.uint32)
        if pos + 4 * n_words != len(data):
            raise ValueError("trailing or missing bytes")
        symbols = _unans(words, counts, n)
    except (ValueError, struct.error, zlib.error, BufferError) as err:
        raise DataError(f"a compressed stream does not decode ({err})") from None
    return _restore(symbols, base, K, counts, escaped)
