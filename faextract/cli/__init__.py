"""The ``faextract`` command line: a thin shell over the library.

Each command parses its options, builds options or a config, calls one library function and
prints a summary. Heavy imports happen inside the commands so that ``--help`` is instant. User
errors (:class:`~faextract.errors.FaextractError`) become one line on stderr and exit status 2.
Command functions are long only where typer declares their options in the signature.

- :mod:`~faextract.cli.common`: the app, error handling, shared options;
- :mod:`~faextract.cli.data`: ``inspect``, ``stats``;
- :mod:`~faextract.cli.jobs`: ``train``, ``embed``, ``evaluate``;
- :mod:`~faextract.cli.products`: ``plot``, ``export``;
- :mod:`~faextract.cli.compress`: ``compress``, ``decompress``;
- :mod:`~faextract.cli.slurm`: ``slurm embed``, ``slurm train``.
"""

from __future__ import annotations

import sys

from faextract.cli import compress, data, jobs, products, slurm  # noqa: F401  (registers the commands)
from faextract.cli.common import app

#: The order of ``faextract --help``: data, jobs, products, storage.
ORDER = ["inspect", "stats", "train", "embed", "evaluate", "plot", "export", "compress", "decompress"]
app.registered_commands.sort(key=lambda c: ORDER.index(c.name or c.callback.__name__))

__all__ = ["app", "main"]


def main() -> None:
    import warnings

    # Library chatter that is not the user's business: zarr says on every v3 store that
    # consolidated metadata is outside its spec (faextract writes it for faster opening).
    warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
    warnings.filterwarnings("ignore", message=".*consolidated metadata.*", module="zarr")
    shown = warnings.showwarning

    def one_line(message, category, *args, **kwargs):
        from faextract.errors import FaextractWarning

        if issubclass(category, FaextractWarning):
            print(f"warning: {message}", file=sys.stderr)
        else:
            shown(message, category, *args, **kwargs)

    warnings.showwarning = one_line
    try:
        code = app(prog_name="faextract", standalone_mode=False)
    except Exception as err:  # noqa: BLE001 - click's exceptions (typer vendors its own click)
        kinds = {c.__name__ for c in type(err).__mro__}
        ctx = getattr(err, "ctx", None)
        if "NoArgsIsHelpError" in kinds:  # bare `faextract`: the help, as asked
            print(ctx.get_help() if ctx is not None else "", file=sys.stderr)
            code = 2
        elif "UsageError" in kinds:  # a missing or malformed option: one line, as every error
            where = ctx.command_path if ctx is not None else "faextract"
            print(f"error: {err.format_message()} (see '{where} --help')", file=sys.stderr)
            code = 2
        elif "Abort" in kinds:
            print("interrupted", file=sys.stderr)
            code = 130
        else:
            raise
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
