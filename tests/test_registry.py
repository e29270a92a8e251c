"""Every registered cell, through the same contract, forward and backward."""

from __future__ import annotations

import pytest
import torch

from faextract.models import CELLS, create_cell


@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_every_cell_forward_backward(name, data_format):
    cell = create_cell(
        name,
        filters=4,
        kernel_size=3,
        padding="same",
        data_format=data_format,
        return_sequences=True,
    )
    x = torch.randn(2, 5, 6, 7, 3) if data_format == "channels_last" else torch.randn(2, 5, 3, 6, 7)
    out = cell(x)
    expect = (2, 5, 6, 7, 4) if data_format == "channels_last" else (2, 5, 4, 6, 7)
    assert out.shape == expect
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    used = [p for n, p in cell.named_parameters() if not n.startswith(("head.", "temporal."))]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in used)


def test_unknown_cell_lists_choices():
    with pytest.raises(
        ValueError, match="choose from convlstm, faconvlstm, minconvgru, minconvlstm"
    ):
        create_cell("lstm", filters=4, kernel_size=3)


@pytest.mark.parametrize("name", sorted(CELLS))
def test_lazily_built_cells_honour_a_dtype_set_before_the_first_call(name):
    """``Cell(5, 3, padding="same").double()`` then a float64 call: the parameters are built
    in float64 (as torch's lazy modules do), for every registered cell."""
    cell = create_cell(name, filters=5, kernel_size=3, padding="same").double()
    x = torch.randn(2, 3, 6, 7, 4, dtype=torch.float64)
    out = cell(x)
    assert out.dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in cell.parameters())
    out.sum().backward()
    # a module moved nowhere builds where its input is, in the default dtype
    plain = create_cell(name, filters=5, kernel_size=3, padding="same")
    assert plain(torch.randn(2, 3, 6, 7, 4)).dtype == torch.float32
