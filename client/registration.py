"""Register :func:`mhd.functions.worker.remote.score_tiles` with Globus Compute, by source.

The function is sent as source text (``PureSourceTextInspect``), not pickled
by reference: an endpoint worker rebuilds it from that text, and its body
imports the ``mhd`` package installed in the endpoint's environment. Task
arguments travel as JSON (``JSONData``); the ``mhd-gpu`` endpoint accepts
only these two strategies (``allowed_serializers``), so no pickled data is
ever unpickled on the GPU host.

>>> from mhd.client.registration import register_score_tiles
>>> function_id = register_score_tiles(compute_client)  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import textwrap
from typing import Any

from globus_compute_sdk.sdk.client import FunctionRegistrationData
from globus_compute_sdk.serialize import ComputeSerializer, JSONData, PureSourceTextInspect

from mhd.contracts.limits import ALLOWED_SERIALIZERS, RESULT_SERIALIZERS
from mhd.functions.worker.remote import FUNCTION_NAME, score_tiles

__all__ = [
    "ALLOWED_SERIALIZERS",
    "RESULT_SERIALIZERS",
    "function_code",
    "function_source",
    "register_score_tiles",
    "score_serializer",
]


def score_serializer() -> ComputeSerializer:
    """The serializer for ``score_tiles`` tasks: code by source text, data as JSON."""
    return ComputeSerializer(strategy_code=PureSourceTextInspect(), strategy_data=JSONData())


def function_source() -> str:
    """Source text of ``score_tiles`` exactly as registered (dedented)."""
    return textwrap.dedent(inspect.getsource(score_tiles))


def function_code(serializer: ComputeSerializer | None = None) -> str:
    """The serialized function as the service hands it to an endpoint.

    This is the ``function_code`` buffer that precedes each task's arguments
    in the task body an endpoint executes.
    """
    serde = serializer or score_serializer()
    return FunctionRegistrationData(function=score_tiles, serializer=serde).to_dict()["function_code"]


def register_score_tiles(client: Any, *, description: str | None = None, public: bool = False, group: str | None = None) -> str:
    """Register ``score_tiles`` by source and return its function UUID.

    Parameters
    ----------
    client : globus_compute_sdk.Client
        An authenticated Compute client (see :func:`mhd.client.auth.compute_client`).
    description : str, optional
        Default: the function's docstring summary.
    public : bool
        Let anyone run the function (on endpoints that allow it).
    group : str, optional
        Globus group UUID to share the function with.

    Returns
    -------
    str
        The function UUID; store it in the client config and in the endpoint's
        ``allowed_functions``.
    """
    summary = inspect.getdoc(score_tiles).splitlines()[0]
    return client.register_source_code(
        function_source(),
        FUNCTION_NAME,
        description=description or summary,
        public=public,
        group=group,
    )
