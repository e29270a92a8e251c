"""The CUDA path: cells in bf16 autocast, and embed on the GPU. Skips cleanly without a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from faextract.models import create_cell

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("name", ["convlstm", "faconvlstm", "minconvgru", "minconvlstm"])
def test_cells_on_cuda_bf16_match_cpu(name):
    torch.manual_seed(0)
    cell = create_cell(
        name, filters=8, kernel_size=3, padding="same", return_sequences=True, in_channels=3
    )
    x = torch.randn(2, 10, 12, 16, 3)
    ref = cell(x)
    gpu = cell.cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = gpu(x.cuda())
    out.float().square().mean().backward()
    assert torch.isfinite(out.float()).all()
    np.testing.assert_allclose(out.float().cpu().detach().numpy(), ref.detach().numpy(), atol=0.1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_lstm_step_on_cuda_matches_the_reference(dtype, monkeypatch):
    """The compiled Triton kernels (not the interpreter) on the GPU, forward and backward."""
    pytest.importorskip("triton")
    monkeypatch.setenv("FAEXTRACT_TRITON", "1")
    from faextract.models.fused import lstm_pointwise, lstm_pointwise_reference
    from faextract.models.triton_step import covers

    torch.manual_seed(0)
    z = torch.randn(2, 4 * 8, 33, 47, device="cuda", dtype=dtype, requires_grad=True)
    c = torch.randn(2, 8, 33, 47, device="cuda", dtype=dtype, requires_grad=True)
    peep = torch.randn(3, 8, 1, 1, device="cuda", requires_grad=True)
    bias = torch.randn(32, device="cuda", requires_grad=True)
    assert covers(z, c)
    h, cn = lstm_pointwise(z, c, peep, bias)
    zf, cf = z.detach().float().requires_grad_(), c.detach().float().requires_grad_()
    h_r, cn_r = lstm_pointwise_reference(zf, cf, peep, bias)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(h.float(), h_r, **tol)
    torch.testing.assert_close(cn.float(), cn_r, **tol)
    g = torch.autograd.grad((h.float() + cn.float()).sum(), [z, c, peep, bias])
    g_r = torch.autograd.grad((h_r + cn_r).sum(), [zf, cf, peep, bias])
    for a, b in zip(g, g_r, strict=True):
        if a.dtype == dtype:
            torch.testing.assert_close(a.float(), b, **tol)
        else:  # float32 parameter grads: sums over the grid of per-cell bf16-rounded terms
            assert (a - b).norm() / b.norm() < (1e-5 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("periodic", [False, True])
def test_triton_cell_kernels_on_cuda_match_the_pytorch_path(periodic):
    """The compiled mixing and gate-path kernels (not the interpreter) in a whole FAConvLSTM2D
    on the GPU: outputs and gradients equal the PyTorch path's (``FAEXTRACT_TRITON=0``)."""
    pytest.importorskip("triton")
    import os

    from faextract.models import FAConvLSTM2D

    torch.manual_seed(0)
    cell = FAConvLSTM2D(16, 3, padding="same", data_format="channels_first", in_channels=4,
                        return_sequences=True, embedding_dim=0, periodic=periodic).cuda()  # fmt: skip
    x = torch.randn(2, 5, 4, 33, 47, device="cuda")
    results, tf32 = [], torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # cuDNN's depthwise convolutions in full fp32
    try:
        for flag in ("1", "0"):
            os.environ["FAEXTRACT_TRITON"] = flag
            xx = x.clone().requires_grad_()
            y = cell(xx)
            grads = torch.autograd.grad(y.square().mean(), [xx, *cell.parameters()],
                                        allow_unused=True)  # fmt: skip
            results.append((y, grads))
    finally:
        os.environ.pop("FAEXTRACT_TRITON", None)
        torch.backends.cudnn.allow_tf32 = tf32
    (y1, g1), (y0, g0) = results
    torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-5)
    for a, b in zip(g1, g0, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_embed_on_cuda_matches_cpu(tmp_path):
    from faextract.embed import EmbedOptions, embed
    from faextract.paths import SAMPLE_CHECKPOINT, SAMPLE_CUBE
    from faextract.store import open_embeddings

    cpu = embed(
        [str(SAMPLE_CUBE)],
        str(SAMPLE_CHECKPOINT),
        str(tmp_path / "cpu.zarr"),
        EmbedOptions(device="cpu"),
    )
    gpu = embed(
        [str(SAMPLE_CUBE)],
        str(SAMPLE_CHECKPOINT),
        str(tmp_path / "gpu.zarr"),
        EmbedOptions(device="cuda"),
    )
    assert cpu.status == gpu.status == "complete"
    a = open_embeddings(tmp_path / "cpu.zarr")["embedding"].values
    b = open_embeddings(tmp_path / "gpu.zarr")["embedding"].values
    # cuDNN convolutions run in TF32 by default (10-bit mantissa): ~1e-3 relative, not 1e-6.
    assert np.linalg.norm(b - a) / np.linalg.norm(a) < 2e-3
    np.testing.assert_allclose(b, a, atol=1e-2)


def test_train_on_cuda_bf16_and_the_checkpoint_loads_on_cpu(tmp_path, tiny_config):
    from faextract.checkpoint import load_checkpoint
    from faextract.train import read_metrics, train

    cfg = tiny_config("train.epochs=2", "train.device=cuda", "train.bf16=true")
    result = train(cfg, tmp_path / "run", plain_progress=True)
    assert result.status == "finished" and np.isfinite(result.best_val)
    losses = [float(r["loss"]) for r in read_metrics(tmp_path / "run") if r["kind"] == "train"]
    assert np.isfinite(losses).all()
    # Saved as CPU tensors: a plain torch.load on a machine without CUDA can read it.
    raw = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    tensors = list(raw["model"]["state_dict"].values())
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    load_checkpoint(tmp_path / "run" / "last.pt").build_model()
