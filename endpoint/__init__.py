"""Globus Compute endpoint configuration for the ``mhd-gpu`` GPU endpoint.

The templates in ``templates/`` are rendered and validated by
:mod:`mhd.endpoint.configure`; ``python -m mhd.endpoint configure --help``
(or ``client endpoint configure``) installs them.
"""

from .configure import EndpointSpec, install_endpoint, render_endpoint, validate_dir

__all__ = ["EndpointSpec", "install_endpoint", "render_endpoint", "validate_dir"]
