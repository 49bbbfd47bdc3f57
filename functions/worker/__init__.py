"""The worker side: what runs on an endpoint's workers around the pure detector (:mod:`mhd.functions`).

:mod:`.remote`
    ``score_tiles``, the function registered with Globus Compute (by source).
:mod:`.scoring`
    Its body: parameter checks, confinement of tile paths to the data root,
    inline tiles, and :func:`~mhd.functions.worker.scoring.measure` (detector
    and tissue contrast of one decoded tile).
:mod:`.tileio`
    Decoding PNG, TIFF, BMP and JPEG within header-checked limits.
:mod:`.settings`
    The limits, read from the worker's environment.

What the worker returns (:class:`~mhd.contracts.record.TileRecord`) and the
limits it shares with the client and the endpoint live in :mod:`mhd.contracts`.

Nothing here imports the client or the endpoint configuration.
"""
