"""``python -m mhd.client`` and the ``client`` and ``mhd`` programs.

Ctrl-C (and SIGTERM, SIGHUP) is handled from the first instant (before the
heavier imports), so that even a very early one ends the program quietly
with status 130 (143, 129).
"""


def run() -> None:
    """Entry point of the ``client`` and ``mhd`` programs (named as started; ``client`` under ``python -m``)."""
    from .interrupt import Abandoned, abandon, exit_code, install_early_handler, stopped_by

    install_early_handler()
    from .pipes import install

    install()  # `client submit | head` scores the whole section
    from .cli import main, prog_name

    try:
        main(prog_name=prog_name())
    except Abandoned as again:  # a second stop signal after the run was drained (its summary, the --on-oof commands)
        abandon(f"{stopped_by(again.signum)} again: stopping now", exit_code(again.signum))


if __name__ == "__main__":
    run()
