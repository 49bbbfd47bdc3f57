"""Kept for ``score_tiles`` functions registered before the worker side moved to :mod:`mhd.functions.worker`.

A function registered by source keeps its text on the Globus Compute service; the text of those
registered earlier imports ``score_batch`` from here. Part of the worker side, not of the pure
detector (``tests/project/test_layout.py`` counts it there). New registrations import
:mod:`mhd.functions.worker.scoring`.

Removed in mhd 0.2.0 (the next minor release after 0.1.0): register the function again
(``client register``) before upgrading the endpoint to it.
"""

from mhd.functions.worker.scoring import score_batch

__all__ = ["score_batch"]
