"""mhd: ultrafast out-of-focus detection for electron microscopy.

Subpackages
-----------
mhd.functions
    Pure computation: image in, numbers out (NumPy/SciPy or CuPy).
mhd.endpoint
    Globus Compute endpoint configuration and the remote worker's environment.
mhd.client
    Files, transport, scheduling and reporting at the instrument.
"""

__version__ = "0.1.0"
