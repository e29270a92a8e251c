"""Imported first by the training-step benchmarks: the process settings of ``faextract train``.

``THP_MEM_ALLOC_ENABLE=1`` (2 MB pages for large CPU tensors; see ``faextract.cli.jobs.train``) must
be set before torch is imported, and child processes inherit it. The embed and loader
benchmarks do not import this: ``faextract embed`` does not set it.
"""

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
