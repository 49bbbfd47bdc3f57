"""``python -m mhd.client`` and the ``client`` and ``mhd`` programs.

Ctrl-C is handled from the first instant (before the heavier imports), so
that even a very early one ends the program quietly with status 130.
"""


def run() -> None:
    """Entry point of the ``client`` and ``mhd`` programs (named as started; ``client`` under ``python -m``)."""
    from .interrupt import install_early_handler

    install_early_handler()
    from .pipes import install

    install()  # `client submit | head` scores the whole section
    from .cli import main, prog_name

    main(prog_name=prog_name())


if __name__ == "__main__":
    run()
