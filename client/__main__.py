"""``python -m mhd.client``: the ``client`` command."""

from .cli import main

main(prog_name="client")
