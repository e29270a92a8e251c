"""The CPU fast paths: C kernels for the LSTM step, the depthwise backward, 1x1 convolutions.

Each must compute the same function as its PyTorch reference, forward and backward, at every
size (odd grids, rows split across threads), and the C kernels must fall back cleanly.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings

import pytest
import torch
import torch.nn.functional as F

from faextract.models import FAConvLSTM2D, kernels
from faextract.models.fused import lstm_pointwise, lstm_pointwise_reference
from faextract.models.layers import DepthwiseConv, pointwise_conv

needs_cc = pytest.mark.skipif(
    shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler to build the kernels"
)


@pytest.fixture
def fresh_kernels():
    kernels.library.cache_clear()
    kernels.cache_dir.cache_clear()
    yield
    kernels.library.cache_clear()
    kernels.cache_dir.cache_clear()


def _step_grads(fn, z, c, peep, bias, dh, dc):
    leaves = [t for t in (z, c, peep, bias) if t is not None]
    for t in leaves:
        t.grad = None
    h, c_new = fn(z, c, peep, bias)
    outs, grads = zip(*[(o, g) for o, g in ((h, dh), (c_new, dc)) if g is not None], strict=True)
    torch.autograd.backward(outs, grads)
    return [h.detach(), c_new.detach(), *(t.grad.clone() for t in leaves)]


@needs_cc
@pytest.mark.parametrize("hw", [(5, 7), (17, 19), (64, 64)])
@pytest.mark.parametrize("with_peep,with_bias", [(True, True), (False, False), (True, False)])
@pytest.mark.parametrize("upstream", ["both", "h only", "c only"])
def test_the_c_lstm_step_equals_the_reference(hw, with_peep, with_bias, upstream):
    assert kernels.library() is not None, "the C kernels did not build on this machine"
    torch.manual_seed(0)
    B, F_ = 3, 5
    z = (2 * torch.randn(B, 4 * F_, *hw)).requires_grad_()
    c = torch.randn(B, F_, *hw).requires_grad_()
    peep = (0.5 * torch.randn(3, F_, 1, 1)).requires_grad_() if with_peep else None
    bias = torch.randn(4 * F_).requires_grad_() if with_bias else None
    dh = torch.randn(B, F_, *hw) if upstream != "c only" else None
    dc = torch.randn(B, F_, *hw) if upstream != "h only" else None
    got = _step_grads(lstm_pointwise, z, c, peep, bias, dh, dc)

    def reference(z, c, peep, bias):  # in float64, the same leaves
        d = lambda t: None if t is None else t.double()  # noqa: E731
        return [t.float() for t in lstm_pointwise_reference(d(z), d(c), d(peep), d(bias))]

    want = _step_grads(reference, z, c, peep, bias, dh, dc)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=2e-5)


@needs_cc
def test_the_c_lstm_step_splits_rows_over_threads_identically():
    torch.manual_seed(1)
    z, c = torch.randn(2, 4 * 7, 9, 11), torch.randn(2, 7, 9, 11)
    peep, bias = torch.randn(3, 7, 1, 1), torch.randn(28)
    before = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 3):
            torch.set_num_threads(n)
            outs.append(lstm_pointwise(z, c, peep, bias))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*outs, strict=True):
        assert torch.equal(a, b)


@needs_cc
def test_the_c_lstm_step_saturates_and_propagates_nan():
    F_ = 2
    z = torch.tensor([-1e4, -100.0, 0.0, 100.0, 1e4, float("nan")]).view(1, 1, 1, 6)
    z = z.repeat(1, 4 * F_, 1, 1)
    c = torch.zeros(1, F_, 1, 6)
    h, c_new = lstm_pointwise(z, c)
    want_h, want_c = lstm_pointwise_reference(z, c, None)
    torch.testing.assert_close(h[..., :5], want_h[..., :5], atol=1e-6, rtol=0)
    torch.testing.assert_close(c_new[..., :5], want_c[..., :5], atol=1e-6, rtol=0)
    assert torch.isnan(h[..., 5]).all() and torch.isnan(c_new[..., 5]).all()


def test_other_dtypes_and_disabled_kernels_take_the_pytorch_path(monkeypatch, fresh_kernels):
    z64 = torch.randn(1, 8, 3, 3, dtype=torch.float64)
    c64 = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    assert not kernels.covers(z64, c64)
    monkeypatch.setenv(kernels.ENV_SWITCH, "0")
    assert kernels.library() is None
    z, c = z64.float(), c64.float()
    assert not kernels.covers(z, c)
    for a, b in zip(lstm_pointwise(z, c), lstm_pointwise_reference(z, c, None), strict=True):
        torch.testing.assert_close(a, b)


@needs_cc
def test_disabled_blocks_hold_the_kernels_off_and_nest():
    z, c = torch.randn(1, 8, 3, 3), torch.randn(1, 2, 3, 3)
    assert kernels.covers(z, c)
    with kernels.disabled():
        with kernels.disabled():
            assert not kernels.covers(z, c)
        assert not kernels.covers(z, c)
    assert kernels.covers(z, c)


def test_a_missing_compiler_warns_once_and_falls_back(monkeypatch, tmp_path, fresh_kernels):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("FAEXTRACT_KERNEL_CACHE", str(tmp_path / "cache"))
    with pytest.warns(RuntimeWarning, match="fused CPU kernels unavailable"):
        assert kernels.library() is None
    z, c = torch.randn(1, 8, 3, 3), torch.randn(1, 2, 3, 3)
    h, _ = lstm_pointwise(z, c)  # no second warning: the result is cached
    torch.testing.assert_close(h, lstm_pointwise_reference(z, c, None)[0])
    assert not any((tmp_path / "cache").glob("*.so"))


@needs_cc
def test_flags_the_compiler_rejects_fall_back_to_portable_ones(
    monkeypatch, tmp_path, fresh_kernels
):
    # as on an aarch64 GPU node, whose GCC rejects the x86-only -mprefer-vector-width
    monkeypatch.setenv("FAEXTRACT_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(kernels, "FLAGS", [*kernels.FLAGS, "-fno-such-option-anywhere"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kernels.library() is not None
    assert len(list(tmp_path.glob("kernels-*.so"))) == 1
    z, c = torch.randn(1, 8, 3, 3), torch.randn(1, 2, 3, 3)
    h, _ = lstm_pointwise(z, c)
    torch.testing.assert_close(h, lstm_pointwise_reference(z, c, None)[0])


@needs_cc
def test_the_build_is_cached_per_source_and_reused(monkeypatch, tmp_path, fresh_kernels):
    monkeypatch.setenv("FAEXTRACT_KERNEL_CACHE", str(tmp_path))
    assert kernels.library() is not None
    built = list(tmp_path.glob("kernels-*.so"))
    assert len(built) == 1 and not list(tmp_path.glob("*.tmp*"))
    kernels.library.cache_clear()

    def no_rebuild(*args):
        raise AssertionError("rebuilt although a build for this source and CPU exists")

    monkeypatch.setattr(kernels, "_build", no_rebuild)
    assert kernels.library() is not None


@needs_cc
def test_fa_cell_is_the_same_function_with_and_without_the_c_kernels(monkeypatch, fresh_kernels):
    torch.manual_seed(0)
    layer = FAConvLSTM2D(8, 3, padding="same", in_channels=3, return_sequences=True)
    layer.peep.data.normal_(0, 0.3)
    x = torch.randn(2, 5, 9, 10, 3)

    def run():
        layer.zero_grad()
        y = layer(x)
        y.square().sum().backward()
        return [y.detach()] + [p.grad.clone() for p in layer.parameters() if p.grad is not None]

    fast = run()
    monkeypatch.setenv(kernels.ENV_SWITCH, "0")
    kernels.library.cache_clear()
    slow = run()
    assert len(fast) == len(slow)
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kernel,dilation", [(3, 1), (3, 2), (3, 4), (2, 1), (5, 1)])
@pytest.mark.parametrize("periodic", [False, True])
def test_depthwise_backward_equals_autograd_of_the_convolution(kernel, dilation, periodic):
    torch.manual_seed(0)
    layer = DepthwiseConv(3, kernel, dilation, periodic).double()
    x = torch.randn(2, 3, 7, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))
    # against PyTorch's own convolution backward on the same padded input
    y = layer(x)
    g = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, layer.conv.weight), g)
    with torch.no_grad():
        p0, p1 = layer.pad // 2, layer.pad - layer.pad // 2
    from faextract.models.layers import pad_spatial

    x2 = x.detach().clone().requires_grad_()
    w2 = layer.conv.weight.detach().clone().requires_grad_()
    y2 = F.conv2d(pad_spatial(x2, (p0, p1, p0, p1), periodic), w2, dilation=dilation, groups=3)
    torch.testing.assert_close(y, y2)
    gx2, gw2 = torch.autograd.grad(y2, (x2, w2), g)
    torch.testing.assert_close(gx, gx2)
    torch.testing.assert_close(gw, gw2)


@pytest.mark.parametrize("shape", [(1, 4, 2, 2), (2, 3, 4, 5), (1, 16, 2, 2)])
def test_the_c_weight_gradient_of_a_non_contiguous_input(shape):
    """The weight gradient read a contiguous copy of a non-contiguous input through its address
    alone: the copy was freed before the kernel ran, and the kernel's padded buffer, of the same
    size at (1, 4, 2, 2), reused it (gradients of zero). FAConvLSTM2D's unfactorized ablation
    feeds such views to its branches."""
    from faextract.models.layers import depthwise_conv2d

    torch.manual_seed(0)
    N, C, H, W = shape
    x = torch.randn(N, C, W, H).transpose(2, 3)
    assert not x.is_contiguous()
    w = torch.randn(C, 1, 3, 3, requires_grad=True)
    g = torch.randn(N, C, H, W)
    (gw,) = torch.autograd.grad((depthwise_conv2d(x, w, (1, 1), 1) * g).sum(), [w])
    (ref,) = torch.autograd.grad((F.conv2d(x, w, padding=1, groups=C) * g).sum(), [w])
    torch.testing.assert_close(gw, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_bias", [True, False])
def test_pointwise_conv_equals_a_1x1_convolution(with_bias):
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 4, 1, 1, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, dtype=torch.float64, requires_grad=True) if with_bias else None
    torch.testing.assert_close(pointwise_conv(x, w, b), F.conv2d(x, w, b))
    inputs = (x, w, b) if with_bias else (x, w)
    assert torch.autograd.gradcheck(lambda *a: pointwise_conv(*a), inputs)
    # a non-contiguous input (a time slice of a sequence) works too
    seq = torch.randn(3, 2, 4, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(pointwise_conv(seq[:, 1], w, b), F.conv2d(seq[:, 1], w, b))


@needs_cc
@pytest.mark.parametrize(
    "shape,kernel,dilation,padding",
    [
        ((4, 16, 64, 64), 3, 1, (1, 1)),
        ((2, 3, 7, 9), 3, 2, (2, 2)),
        ((2, 3, 7, 9), 3, 4, (4, 4)),
        ((2, 3, 7, 9), 2, 1, (0, 0)),
        ((2, 3, 7, 13), 3, 1, (1, 0)),  # the periodic case: longitude padded beforehand
        ((1, 2, 5, 40), 5, 1, (2, 2)),
    ],
)
def test_the_c_depthwise_convolution_equals_pytorchs(shape, kernel, dilation, padding):
    from faextract.models.layers import depthwise_conv2d

    assert kernels.library() is not None
    torch.manual_seed(0)
    x = torch.randn(*shape, requires_grad=True)
    w = torch.randn(shape[1], 1, kernel, kernel, requires_grad=True)
    y = depthwise_conv2d(x, w, padding, dilation)
    # reference in float64: PyTorch's float32 weight gradient (a sum over N*H*W terms) is
    # itself off by ~1e-4 at the largest size
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    want = F.conv2d(x64, w64, padding=padding, dilation=dilation, groups=shape[1])
    torch.testing.assert_close(y, want.float())
    g = torch.randn_like(y)
    got_grads = torch.autograd.grad(y, (x, w), g)
    want_grads = torch.autograd.grad(want, (x64, w64), g.double())
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b.float(), rtol=1e-5, atol=1e-4)
    with torch.no_grad():  # inference takes the kernel too
        torch.testing.assert_close(depthwise_conv2d(x, w, padding, dilation), want.float())


SCAN_CELLS = [
    ("minconvgru", {}),
    ("minconvlstm", {}),
    ("minconvlstm", {"exponential_gating": True}),
]


def _scan_cell(name, kw, F_):
    from faextract.models import create_cell

    return create_cell(name, filters=F_, kernel_size=1, in_channels=1, **kw)


@needs_cc
@pytest.mark.parametrize("name,kw", SCAN_CELLS)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("hw", [(3, 5), (70, 70)])  # 70 x 70 lanes split into several groups
@pytest.mark.parametrize("with_h0", [False, True])
def test_the_c_scan_equals_the_reference(name, kw, channels_last, hw, with_h0):
    from faextract.models.minconv import _FusedScan
    from faextract.models.scan import sequential_scan

    torch.manual_seed(0)
    B, T, F_ = 2, 6, 3
    cell = _scan_cell(name, kw, F_)
    G = cell.n_gates
    k = 3 * torch.randn(B, T, G * F_, *hw)
    if channels_last:
        k = k.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    k.requires_grad_()
    h0 = torch.randn(B, F_, *hw).requires_grad_() if with_h0 else None
    dh = torch.randn(B, T, F_, *hw)
    h = _FusedScan.apply(k, h0, cell.kernel_mode, F_)
    leaves = [k] + ([h0] if with_h0 else [])
    grads = torch.autograd.grad(h, leaves, dh)

    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    a, b = cell._coefficients(ref_leaves[0], log=False)
    ref = sequential_scan(a, b, ref_leaves[1] if with_h0 else None)
    ref_grads = torch.autograd.grad(ref, ref_leaves, dh.double())
    torch.testing.assert_close(h.double(), ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, ref_grads, strict=True):
        assert got.shape == want.shape
        torch.testing.assert_close(
            got.double(), want, rtol=1e-4, atol=1e-5 * want.abs().max().item()
        )


@needs_cc
@pytest.mark.parametrize("name,kw", SCAN_CELLS)
def test_the_c_scan_handles_extreme_gates_and_thread_splits(name, kw):
    from faextract.models.minconv import _FusedScan
    from faextract.models.scan import sequential_scan

    torch.manual_seed(1)
    F_ = 4
    cell = _scan_cell(name, kw, F_)
    k = 150 * torch.randn(3, 9, cell.n_gates * F_, 7, 11)  # sigmoids saturate, exps overflow
    results = []
    for threads in (1, 3):
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            kk = k.clone().requires_grad_()
            h = _FusedScan.apply(kk, None, cell.kernel_mode, F_)
            (dk,) = torch.autograd.grad(h, kk, torch.ones_like(h))
        finally:
            torch.set_num_threads(before)
        assert torch.isfinite(h).all() and torch.isfinite(dk).all()
        results.append((h, dk))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    a, b = cell._coefficients(k.double(), log=False)
    torch.testing.assert_close(results[0][0].double(), sequential_scan(a, b), rtol=1e-4, atol=1e-4)


@needs_cc
@pytest.mark.parametrize("name,kw", SCAN_CELLS)
@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
def test_min_cells_are_the_same_function_with_and_without_the_c_scan(name, kw, data_format):
    from faextract.models import create_cell

    torch.manual_seed(0)
    cell = create_cell(
        name, filters=6, kernel_size=3, padding="same", data_format=data_format,
        return_sequences=True, return_state=True, in_channels=3, **kw,
    )  # fmt: skip
    x = 3 * torch.randn(2, 7, 3, 5, 9)
    h0 = torch.randn(2, 6, 5, 9)
    if data_format == "channels_last":
        x, h0 = x.permute(0, 1, 3, 4, 2).contiguous(), h0.permute(0, 2, 3, 1).contiguous()
    h0.requires_grad_()
    runs = []
    for fast in (True, False):
        with contextlib.nullcontext() if fast else kernels.disabled():
            y, last = cell(x, initial_state=[h0])
            loss = (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum() + last.square().sum()
            runs.append([y, last, *torch.autograd.grad(loss, [h0, *cell.parameters()])])
    for got, want in zip(*runs, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_run_rows_splits_large_calls_and_keeps_small_ones_on_this_thread():
    import threading

    calls = []

    def fn(tag, row0, row1):
        calls.append((threading.get_ident(), tag, row0, row1))

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        kernels.run_rows(fn, 8, "small", work=kernels.MIN_PARALLEL_WORK - 1)
        assert calls == [(threading.get_ident(), "small", 0, 8)]
        calls.clear()
        kernels.run_rows(fn, 8, "large", work=kernels.MIN_PARALLEL_WORK)
        assert sorted(c[2:] for c in calls) == [(0, 4), (4, 8)]
        assert len({c[0] for c in calls}) == 2
    finally:
        torch.set_num_threads(before)


@needs_cc
def test_an_unwritable_cache_falls_back_to_the_temporary_folder(
    monkeypatch, tmp_path, fresh_kernels
):
    # as on a compute node whose home is read-only: ~/.cache cannot be made
    (tmp_path / "home-file").write_text("a file where the cache folder would go")
    monkeypatch.delenv("FAEXTRACT_KERNEL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-file" / "cache"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    assert kernels.cache_dir().parent == tmp_path / "tmp"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kernels.library() is not None
    assert len(list(kernels.cache_dir().glob("kernels-*.so"))) == 1


@needs_cc
def test_a_planted_cache_folder_is_never_loaded_from(monkeypatch, tmp_path, fresh_kernels):
    """Another user creates the guessable fallback folder first (mode 777) and puts a library
    under the expected name: faextract must neither load it nor build into that folder."""
    import os

    (tmp_path / "home-file").write_text("no home cache here")
    monkeypatch.delenv("FAEXTRACT_KERNEL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-file" / "cache"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)
    planted = tmp_path / "tmp" / f"faextract-kernels-{os.getuid()}"
    planted.mkdir()
    planted.chmod(0o777)
    chosen = kernels.cache_dir()
    assert chosen != planted and chosen.parent == tmp_path / "tmp"
    assert (chosen.stat().st_mode & 0o777) == 0o700
    kernels.cache_dir.cache_clear()
    # A library file others may write is refused even in a private folder.
    private = tmp_path / "private"
    monkeypatch.setenv("FAEXTRACT_KERNEL_CACHE", str(private))
    assert kernels.library() is not None  # builds into the private folder
    (built,) = private.glob("kernels-*.so")
    assert (private.stat().st_mode & 0o777) == 0o700
    built.chmod(0o666)
    before = built.stat().st_ino
    kernels.library.cache_clear()
    assert kernels.library() is not None
    assert built.stat().st_ino != before  # rebuilt over, not loaded
    assert not built.stat().st_mode & 0o022
