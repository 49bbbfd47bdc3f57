"""Score tiles on the mhd-gpu endpoint from a notebook, by function UUID.

Copy the ``score_by_uuid`` body into a notebook cell, or run this file::

    MHD_ENDPOINT=<endpoint UUID> MHD_FUNCTION=<function UUID> \\
        python examples/score_by_uuid.py section_042/tile_r0_c0.png section_042/tile_r0_c2.png

Paths are relative to the endpoint's data root (``MHD_DATA_ROOT``); to send a
local file instead, pass ``{"name": ..., "data": base64 text}`` (see
``inline_tile``). The endpoint deserializes only source text and JSON
(``allowed_serializers``), so the executor must send JSON arguments: the
default (dill) serializer is refused there. Only the Globus Compute SDK is
needed on the notebook side, not this project.
"""

from __future__ import annotations

import base64
import os
import sys
from pathlib import Path


def inline_tile(path: str) -> dict:
    """An inline tile: the encoded image file as base64 text."""
    return {"name": Path(path).name, "data": base64.b64encode(Path(path).read_bytes()).decode("ascii")}


def score_by_uuid(endpoint_id: str, function_id: str, tiles: list, params: dict | None = None, client=None) -> list[dict]:
    """Run the registered ``score_tiles`` on ``tiles`` and return one dict per tile."""
    from globus_compute_sdk import Executor
    from globus_compute_sdk.serialize import ComputeSerializer, JSONData, PureSourceTextInspect

    serializer = ComputeSerializer(strategy_code=PureSourceTextInspect(), strategy_data=JSONData())
    with Executor(endpoint_id=endpoint_id, client=client, serializer=serializer, result_serializers=[JSONData()]) as gce:
        future = gce.submit_to_registered_function(function_id, args=(tiles,), kwargs={"params": params})
        return future.result()


if __name__ == "__main__":
    if not (os.environ.get("MHD_ENDPOINT") and os.environ.get("MHD_FUNCTION")):
        sys.exit("set MHD_ENDPOINT and MHD_FUNCTION to the endpoint's and the registered function's UUIDs (client config shows them)")
    entries = score_by_uuid(os.environ["MHD_ENDPOINT"], os.environ["MHD_FUNCTION"], sys.argv[1:])
    for entry in entries:
        verdict = entry["error"] or f"{entry['density']:.0f} features/Mpx on {entry['backend']}"
        print(f"{entry['tile']}: {verdict}")
