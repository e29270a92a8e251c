"""Embedding a cube with a trained encoder (``faextract embed``).

- :mod:`~faextract.embed.run`: :func:`embed`, the job (input -> model -> store), resumable,
  shardable, stoppable;
- :mod:`~faextract.embed.plan`: options, the input opened as in training, compatibility with
  the checkpoint, windows and blocks, and what a resume must match;
- :mod:`~faextract.embed.attention_maps`: axial attention weights turned into maps;
- :mod:`~faextract.embed.writer`: the store made or reopened, block arrays, the writer thread.
"""

from faextract.embed.attention_maps import AttentionMaps
from faextract.embed.plan import (
    EmbedOptions,
    EmbedPlan,
    EmbedResult,
    check_compatible,
    check_queries,
    input_fingerprint,
    parse_query,
    parse_shard,
    window_spec,
)
from faextract.embed.run import embed

__all__ = [
    "AttentionMaps", "EmbedOptions", "EmbedPlan", "EmbedResult", "check_compatible",
    "check_queries", "embed", "input_fingerprint", "parse_query", "parse_shard", "window_spec",
]  # fmt: skip
