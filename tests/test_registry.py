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
