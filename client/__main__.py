"""``python -m mhd.client`` and the ``client`` program.

Ctrl-C is handled from the first instant (before the heavier imports), so
that even a very early one ends the program quietly with status 130.
"""


def run() -> None:
    """Entry point of the ``client`` program."""
    from .interrupt import install_early_handler

    install_early_handler()
    from .cli import main

    main(prog_name="client")


if __name__ == "__main__":
    run()
