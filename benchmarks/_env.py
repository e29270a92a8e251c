"""Imported first by every benchmark script: the process settings the faextract CLI uses.

``THP_MEM_ALLOC_ENABLE=1`` (2 MB pages for large CPU tensors; see ``faextract.cli.main``) must
be set before torch is imported, and child processes inherit it.
"""

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
