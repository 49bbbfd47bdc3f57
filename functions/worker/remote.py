"""The function registered with Globus Compute: :func:`score_tiles`.

It is registered **by source** (``PureSourceTextInspect`` /
``Client.register_source_code``): the service stores the text of
:func:`score_tiles` below, and an endpoint worker executes that text. Its body
therefore imports everything it needs from the ``mhd`` package that the
endpoint's environment has installed (``worker_init`` activates it); it
refers to nothing else in this module. Keep it tiny: the implementation
lives in :mod:`mhd.functions.worker.scoring`, versioned with the package
(functions registered before it moved there import :mod:`mhd.functions._score`,
which is kept for them).

Warm workers: a worker process imports the package once; filter banks and
FFT plans (and on a GPU the CUDA context) are cached in the process, so only
the first task of a worker pays for them.
"""

__all__ = ["score_tiles", "FUNCTION_NAME"]

#: Name under which the function is registered.
FUNCTION_NAME = "score_tiles"


def score_tiles(tiles, params=None):
    """Score electron-microscopy tiles for focus (MHD feature counts).

    Parameters
    ----------
    tiles : list
        Each a path relative to the endpoint's MHD_DATA_ROOT, or an inline
        tile {"name": str, "data": bytes or base64 str} holding an encoded
        PNG, TIFF, BMP or JPEG file.
    params : dict, optional
        Any of mhd.params.PARAMS (the detector's parameters), plus backend.

    Returns
    -------
    list of dict
        One per tile, in order: the fields of
        mhd.contracts.record.RESULT_KEYS (tile, features, density,
        blur, grid, shape, ..., ms, detect_ms, error: None, or a message
        naming the tile); TileRecord.from_json reads one.
    """
    from mhd.functions.worker.scoring import score_batch

    return score_batch(tiles, params)
