"""The cells that plug into faextract's encoder, by name.

A plain dict: ``create_cell("faconvlstm", filters=32, kernel_size=3, ...)``. Every cell takes
the ConvLSTM2D constructor arguments; cell-specific options pass through ``**kwargs``.
"""

from __future__ import annotations

from faextract.models.convlstm import ConvLSTM2D
from faextract.models.faconvlstm import FAConvLSTM2D
from faextract.models.minconv import MinConvGRU, MinConvLSTM
from faextract.models.recurrent import RecurrentConv2D

CELLS: dict[str, type[RecurrentConv2D]] = {
    "convlstm": ConvLSTM2D,
    "faconvlstm": FAConvLSTM2D,
    "minconvgru": MinConvGRU,
    "minconvlstm": MinConvLSTM,
}


def cell_class(name: str) -> type[RecurrentConv2D]:
    """The registered cell class; an unknown name lists the valid ones."""
    try:
        return CELLS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown cell {name!r}; choose from {', '.join(CELLS)}") from None


def create_cell(name: str, **kwargs) -> RecurrentConv2D:
    """Instantiate a registered cell."""
    return cell_class(name)(**kwargs)
