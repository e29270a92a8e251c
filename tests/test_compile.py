"""torch.compile sees each cell as one graph: no graph breaks in any registered cell."""

from __future__ import annotations

import shutil

import pytest
import torch

from faextract.models.registry import CELLS, create_cell

FA_VARIANTS = {
    "faconvlstm": {},
    "faconvlstm-embedding": dict(embedding_dim=8, temporal_heads=2, temporal_causal=True),
    "faconvlstm-no-attention": dict(attention=False),
    "faconvlstm-plain": dict(se=False, multiscale=False, peephole=False),
    "faconvlstm-dense": dict(factorized=False),
}
CASES = {name: (name, {}) for name in CELLS if name != "faconvlstm"}
CASES.update({k: ("faconvlstm", {"embedding_dim": 0, **v}) for k, v in FA_VARIANTS.items()})
CASES["faconvlstm-embedding"] = ("faconvlstm", FA_VARIANTS["faconvlstm-embedding"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_cell_is_one_graph(case):
    """Forward (and, through its autograd Functions, backward) traced without a break: the
    C kernels step aside while tracing, and no op writes into a non-contiguous view."""
    name, options = CASES[case]
    torch.manual_seed(0)
    cell = create_cell(
        name, filters=8, kernel_size=3, padding="same", data_format="channels_first",
        return_sequences=True, in_channels=4, **options,
    )  # fmt: skip
    x = torch.randn(2, 3, 4, 8, 8, requires_grad=True)

    def step(x):
        if hasattr(cell, "forward_features") and options.get("embedding_dim"):
            return cell.forward_features(x).embeddings.sum()
        return cell(x).sum()

    torch._dynamo.reset()
    explained = torch._dynamo.explain(step)(x)
    reasons = [str(b.reason).splitlines()[0] for b in explained.break_reasons]
    assert explained.graph_break_count == 0, reasons


#: torch.compile's CPU backend compiles C++; without a compiler only tracing can be tested.
needs_cxx = pytest.mark.skipif(
    not (shutil.which("g++") or shutil.which("c++")), reason="torch.compile on CPU needs a C++ compiler"
)


@pytest.mark.slow
@needs_cxx
@pytest.mark.parametrize("mode", ["default", "max-autotune-no-cudagraphs"])
def test_training_with_compiled_cells_matches_eager(tmp_path, tiny_config, mode):
    """``train.compile`` compiles what the encoder runs (each cell's forward_features) and
    trains to the same losses as eager execution."""
    from torch._dynamo.utils import counters

    from faextract.train import train

    eager = train(tiny_config("train.epochs=1", "train.deterministic=true"), tmp_path / "e")
    torch._dynamo.reset()
    counters.clear()
    compiled = train(
        tiny_config("train.epochs=1", "train.deterministic=true", "train.compile=true",
                    f"train.compile_mode={mode}"),
        tmp_path / "c",
    )  # fmt: skip
    assert counters["stats"]["unique_graphs"] >= 1, "nothing was compiled"
    for key, value in eager.val_metrics.items():
        assert compiled.val_metrics[key] == pytest.approx(value, rel=1e-3), key


@pytest.mark.slow
@needs_cxx
def test_embed_with_compiled_cells_matches_eager(tmp_path, tiny_checkpoint):
    """``embed --compile``: the same embeddings as eager (to rounding), recorded as another
    compute path, so a resume cannot mix the two."""
    import json

    import numpy as np

    from faextract.embed import EmbedOptions, embed
    from faextract.errors import FaextractError
    from faextract.store import open_embeddings

    cube, ckpt, _ = tiny_checkpoint
    embed([str(cube)], str(ckpt), str(tmp_path / "e.zarr"), EmbedOptions(device="cpu", block=4))
    torch._dynamo.reset()
    out = tmp_path / "c.zarr"
    half = dict(device="cpu", block=4, compile=True)
    embed([str(cube)], str(ckpt), str(out), EmbedOptions(shard=(0, 2), **half))
    with pytest.raises(FaextractError, match="compute='cpu\\+compiled'"):  # eager may not finish it
        embed([str(cube)], str(ckpt), str(out), EmbedOptions(device="cpu", block=4, shard=(1, 2)))
    embed([str(cube)], str(ckpt), str(out), EmbedOptions(shard=(1, 2), **half))
    a = open_embeddings(tmp_path / "e.zarr")["embedding"].values
    b = open_embeddings(out)
    assert b.attrs["complete"] == 1
    np.testing.assert_allclose(b["embedding"].values, a, rtol=1e-3, atol=1e-4)
    assert json.loads(b.attrs["faextract_layout"])["compute"] == "cpu+compiled"
