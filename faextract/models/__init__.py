"""Models: the Keras-exact ConvLSTM2D baseline, FAConvLSTM2D, the parallel-scan minimal cells,
and the encoder/decoder network that train and embed use.
"""

from faextract.models.convlstm import ConvLSTM2D
from faextract.models.faconvlstm import FAConvLSTM2D, FAFeatures
from faextract.models.minconv import MinConvGRU, MinConvLSTM
from faextract.models.registry import CELLS, create_cell

__all__ = [
    "CELLS",
    "ConvLSTM2D",
    "FAConvLSTM2D",
    "FAFeatures",
    "MinConvGRU",
    "MinConvLSTM",
    "create_cell",
]
