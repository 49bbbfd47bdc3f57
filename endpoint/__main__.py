"""``python -m mhd.endpoint``: see :mod:`mhd.endpoint.cli`."""

from .cli import main

main(prog_name="python -m mhd.endpoint")
