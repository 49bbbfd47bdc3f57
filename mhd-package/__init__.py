"""mhd: ultrafast out-of-focus detection for electron microscopy.

Subpackages and modules
-----------------------
mhd.params
    The detector's parameters: defaults and limits, read by the detector,
    the worker's validation and the command line.
mhd.contracts
    What the worker, the client and the endpoint share: the tile record,
    verdicts and kinds, the section's own file names, image formats, limits.
mhd.functions
    Pure computation: image in, numbers out (NumPy/SciPy or CuPy).
mhd.functions.worker
    The worker side: the registered function (score_tiles), tile decoding,
    confinement to the data root, limits.
mhd.endpoint
    Globus Compute endpoint configuration and the remote worker's environment.
mhd.endpoint.templates
    The endpoint's configuration templates (data, rendered by mhd.endpoint.configure).
mhd.client
    Files, transport, scheduling and reporting at the instrument.
"""

__version__ = "0.1.0"
