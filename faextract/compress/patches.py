"""The patch-wise guarantee (``--nrmse E``): cheaper than a pointwise bound, it bounds the RMSE
of every 8 x 8 patch of every frame, hence the NRMSE of the whole field.

After the predictor, residuals ``r = x - x_hat`` (0 off the valid points) are cut into 8 x 8
patches of each frame. A patch whose RMSE over its valid points already is <= E costs nothing.
For the others, a 64 x 64 PCA basis is fitted on their residuals; each patch's coefficients,
in the basis' order of energy, are quantized with bins of 2E and the shortest prefix is kept
whose reconstruction brings the patch's squared error within ``n_valid * E**2``. Every patch's
result is checked with the decoder's own arithmetic; one that still misses (the basis is stored
in float32, so it is only nearly orthonormal) falls back to the pointwise correction of
:mod:`~faextract.compress.guarantee`, which meets the bound at every point. So, for every patch,
``sqrt(mean over its valid points of (x - x')^2) <= E`` holds on the float32 result.

A prediction that already meets the bound on almost every patch (the closed-loop interpolation
coded with a pointwise bound looser than E: its errors are uniform within it, so a patch's RMSE
is ~0.58 of it) needs no basis: :func:`patch_fix_encode` lists the few patches over the bound
and corrects their points pointwise.

Decoding uses ``np.einsum`` without BLAS: the same bytes give the same float32 values on any
machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from faextract.compress.guarantee import (
    PointwiseCodes,
    check_bound,
    pointwise_decode,
    pointwise_encode,
)

P = 8  # patch side


@dataclass
class PatchCodes:
    """``patches``: flat indices of the corrected patches; ``keep``: coefficients kept per
    corrected patch; ``coefficients``: the kept quantized coefficients, patch after patch;
    ``basis``: ``(64, 64)`` float32, columns in order of energy (empty when nothing is
    corrected); ``exact``: indices (among ``patches``) corrected pointwise instead, with their
    64 quantized residuals each in ``exact_q``; ``lossless``: flat indices of patches stored as
    their float32 values (``values``, 64 each), where even that rounds past the bound (a bound
    below float32's spacing of the values)."""

    patches: np.ndarray
    keep: np.ndarray
    coefficients: np.ndarray
    basis: np.ndarray
    exact: np.ndarray
    exact_q: np.ndarray
    lossless: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    values: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))


def _to_patches(a: np.ndarray) -> tuple[np.ndarray, tuple]:
    """``(T, H, W)`` -> ``(N, 64)`` patches (zero-padded to multiples of 8), and the padding."""
    T, H, W = a.shape
    ph, pw = -H % P, -W % P
    a = np.pad(a, ((0, 0), (0, ph), (0, pw)))
    Hp, Wp = a.shape[1:]
    p = a.reshape(T, Hp // P, P, Wp // P, P).transpose(0, 1, 3, 2, 4).reshape(-1, P * P)
    return p, (T, H, W, Hp, Wp)


def _from_patches(p: np.ndarray, shape: tuple) -> np.ndarray:
    T, H, W, Hp, Wp = shape
    a = p.reshape(T, Hp // P, Wp // P, P, P).transpose(0, 1, 3, 2, 4).reshape(T, Hp, Wp)
    return a[:, :H, :W]


def _reconstruct(cq: np.ndarray, keep: np.ndarray, basis: np.ndarray, bound: float) -> np.ndarray:
    """``(n, 64)`` patch residuals from the kept quantized coefficients (deterministic)."""
    full = np.zeros((keep.size, P * P), dtype=np.float64)
    cols = np.arange(P * P)[None, :] < keep[:, None]
    full[cols] = cq * (2.0 * bound)
    return np.einsum("nk,jk->nj", full, basis.astype(np.float64), optimize=False)


def fit_basis(residuals, max_patches: int = 20000) -> np.ndarray:
    """A ``(64, 64)`` float32 PCA basis (columns by energy) of the 8x8 patches of
    ``residuals`` (``(T, H, W)`` arrays, any sizes, NaN as 0), to share across a variable's
    blocks: stored once, not with every block (16 KB a block outweighs the coefficients of
    small grids)."""
    rp = np.concatenate([_to_patches(np.nan_to_num(np.asarray(r, np.float64)))[0] for r in residuals])
    if rp.shape[0] > max_patches:
        rp = rp[np.linspace(0, rp.shape[0] - 1, max_patches).astype(int)]
    _, _, vt = np.linalg.svd(rp, full_matrices=rp.shape[0] < P * P)  # U of n x n would be huge
    return vt.T.astype(np.float32)


def patch_encode(
    x: np.ndarray, x_hat: np.ndarray, valid: np.ndarray, bound: float,
    basis: np.ndarray | None = None,
) -> tuple[PatchCodes, np.ndarray]:  # fmt: skip
    """Codes that bring every patch of ``x_hat`` (``(T, H, W)``) within RMSE ``bound`` of ``x``
    on ``valid``; returns them and the decoder's float32 result (NaN off ``valid``). ``basis``:
    a shared basis (:func:`fit_basis`; the decoder must be given the same one), else one is
    fitted on this block's residual patches and stored in the codes."""
    bound = check_bound(bound)
    rp, limit = _residual_patches(x, x_hat, valid), _allowed(valid, bound)
    sel = _over_limit(rp, limit)
    empty = np.zeros(0, dtype=np.int64)
    codes = PatchCodes(sel, empty, empty, np.zeros((0, 0), np.float32), empty, empty)
    if sel.size:
        codes = _correct(rp[sel], limit[sel], sel, bound, basis)
    out = patch_decode(x_hat, valid, codes, bound, basis)
    # the float32 result, checked: patches rounding past the bound are stored as they are
    miss = _over_limit(_residual_patches(x, out, valid), limit)
    if miss.size:
        xp, _ = _to_patches(np.where(valid, x, 0.0).astype(np.float32))
        codes.lossless, codes.values = miss, xp[miss].ravel()
        out = patch_decode(x_hat, valid, codes, bound, basis)
    return codes, out


def _correct(
    res: np.ndarray, limit: np.ndarray, sel: np.ndarray, bound: float, shared: np.ndarray | None
) -> PatchCodes:
    if shared is None:
        # PCA basis of the residual patches, columns by energy, stored (and used) in float32;
        # (with fewer than 64 patches, full_matrices completes it to 64 columns)
        _, _, vt = np.linalg.svd(res, full_matrices=res.shape[0] < P * P)
        basis = vt.T.astype(np.float32)
    else:
        basis = np.asarray(shared, dtype=np.float32)
    c = np.einsum("nj,jk->nk", res, basis.astype(np.float64), optimize=False)
    cq_all = np.rint(c / (2.0 * bound))
    # squared error of each prefix length k = 0..64 (in coefficient space)
    kept_err = (c - cq_all * 2.0 * bound) ** 2
    dropped = np.concatenate([np.cumsum(c[:, ::-1] ** 2, axis=1)[:, ::-1], np.zeros((len(c), 1))], 1)
    kept = np.concatenate([np.zeros((len(c), 1)), np.cumsum(kept_err, axis=1)], axis=1)
    # a little margin: the float32 basis is only nearly orthonormal
    ok = (dropped + kept) <= limit[:, None] * 0.98
    keep = np.where(ok.any(axis=1), ok.argmax(axis=1), P * P).astype(np.int64)
    cols = np.arange(P * P)[None, :] < keep[:, None]
    cq = cq_all[cols].astype(np.int64)
    # check with the decoder's arithmetic; patches that miss are corrected pointwise
    err = ((_reconstruct(cq, keep, basis, bound) - res) ** 2).sum(axis=1)
    miss = np.nonzero(err > limit)[0]
    exact_q = np.rint(res[miss] / (2.0 * bound)).astype(np.int64).ravel()
    stored = basis if shared is None else np.zeros((0, 0), np.float32)  # a shared one is not
    return PatchCodes(sel, keep, cq, stored, miss.astype(np.int64), exact_q)


def patch_decode(
    x_hat: np.ndarray, valid: np.ndarray, codes: PatchCodes, bound: float,
    basis: np.ndarray | None = None,
) -> np.ndarray:  # fmt: skip
    """``x_hat`` corrected by ``codes`` (and the shared ``basis`` they were made with, if any):
    float32, NaN off ``valid``."""
    base = np.where(valid, x_hat.astype(np.float64), 0.0)
    corr = np.zeros(_to_patches(base)[0].shape, dtype=np.float64)
    if codes.patches.size:
        use = codes.basis if codes.basis.size else basis
        if use is None:
            raise ValueError("these patch codes were made with a shared basis: pass it")
        fix = _reconstruct(codes.coefficients, codes.keep, use, bound)
        if codes.exact.size:
            fix[codes.exact] = codes.exact_q.reshape(-1, P * P) * (2.0 * bound)
        corr[codes.patches] = fix
    shape = _to_patches(base)[1]
    out = (base + _from_patches(corr, shape)).astype(np.float32)
    if codes.lossless.size:
        exact, _ = _to_patches(out)
        exact[codes.lossless] = codes.values.reshape(-1, P * P)
        out = _from_patches(exact, shape).astype(np.float32)
    out[~valid] = np.nan
    return out


def _residual_patches(x: np.ndarray, x_hat: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``(N, 64)`` float64 patches of ``x - x_hat`` (0 off ``valid``)."""
    return _to_patches(np.where(valid, x.astype(np.float64) - x_hat.astype(np.float64), 0.0))[0]


def _allowed(valid: np.ndarray, bound: float) -> np.ndarray:
    """``(N,)`` squared error allowed per patch: its valid points times ``bound**2``."""
    return _to_patches(valid.astype(np.float64))[0].sum(axis=1) * bound**2


def _over_limit(rp: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """Flat indices of the patches whose squared error exceeds their ``limit``."""
    return np.nonzero((rp**2).sum(axis=1) > limit)[0].astype(np.int64)


def patch_points(patches: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """The boolean ``(T, H, W)`` mask of the points in the given flat patch indices."""
    T, H, W = shape
    n = T * (-(-H // P)) * (-(-W // P))
    chosen = np.zeros(n, dtype=np.float64)
    chosen[np.asarray(patches, dtype=np.int64)] = 1.0
    padded = (T, H, W, H + -H % P, W + -W % P)
    return _from_patches(np.repeat(chosen[:, None], P * P, axis=1), padded) > 0


def patch_fix_encode(
    x: np.ndarray, x_hat: np.ndarray, valid: np.ndarray, bound: float
) -> tuple[np.ndarray, PointwiseCodes, np.ndarray]:
    """For a prediction whose patches mostly meet RMSE ``bound`` already (a pointwise coding at
    a looser bound): ``(the patches that do not, the pointwise correction of their points to
    within bound, the float32 result)``; every patch of the result meets the bound."""
    bound = check_bound(bound)
    over = _over_limit(_residual_patches(x, x_hat, valid), _allowed(valid, bound))
    fix = valid & patch_points(over, x.shape)
    codes, fixed = pointwise_encode(x, x_hat, fix, bound)
    return over, codes, np.where(fix, fixed, np.where(valid, x_hat, np.nan)).astype(np.float32)


def patch_fix_decode(
    x_hat: np.ndarray, valid: np.ndarray, over: np.ndarray, codes: PointwiseCodes, bound: float
) -> np.ndarray:
    """The result :func:`patch_fix_encode` made: float32, NaN off ``valid``."""
    fix = valid & patch_points(over, x_hat.shape)
    fixed = pointwise_decode(x_hat, fix, codes, bound)
    return np.where(fix, fixed, np.where(valid, x_hat, np.nan)).astype(np.float32)
