"""``client`` in a process of its own, its Globus backend answered by the offline harness.

For tests that signal a real client process group (Ctrl-C) on the endpoint
engine: ``python tests/offline_client.py submit --dir SECTION ...`` runs the
``client`` command with ``MHD_EXECUTOR=globus`` against
:class:`globus_offline.OfflineCompute` (the real SDK ``Executor``, its HTTP
answered offline, tasks run on a local endpoint engine whose workers, like
a remote endpoint's, do not see the terminal's SIGINT).

When the command ends, the harness's engine is stopped without waiting for
its tasks (a real endpoint is on another machine) and the process then
exits normally, so that anything of the client's that would keep it alive
(threads of the SDK) still would.
"""

from __future__ import annotations

import multiprocessing
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    from mhd.client.interrupt import install_early_handler

    install_early_handler()
    from globus_offline import OfflineCompute
    from mhd.client import cli
    from mhd.client.registration import register_score_tiles

    cloud = OfflineCompute(workers=int(os.environ.get("OFFLINE_WORKERS", "2"))).__enter__()
    os.environ.update(MHD_EXECUTOR="globus", MHD_ENDPOINT=cloud.endpoint_id, MHD_FUNCTION=register_score_tiles(cloud.client()))
    cli._compute_client = cloud.client
    code: object = 0
    try:
        cli.main(sys.argv[1:], prog_name="client")
    except SystemExit as exc:
        code = exc.code
    cloud._engine.executor.shutdown(wait=False, cancel_futures=True)
    for child in multiprocessing.active_children():
        child.terminate()
    sys.exit(code)


if __name__ == "__main__":
    main()
