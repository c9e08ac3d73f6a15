"""A local worker process: Beam's SDK worker, sending its data in messages of about the size it is given.

The local runner (pipeline.local_runner) starts its multi_processing workers as

    python -m pipeline.local_worker TRANSFER_BYTES

instead of ``python -m apache_beam.runners.worker.sdk_worker_main``. The worker is Beam's own; this only
applies set_transfer_bytes in the worker's process first, so its output streams flush at TRANSFER_BYTES
(1 MB by default) instead of Beam's 10 MB. Each flush is copied three or four times on its way out (the
stream, the Data message, the coalesced Elements message, its serialization) and a worker has an output stream
per output of the stage, so 10 MB flushes cost a worker ~60 MB more at its peak.
"""
from __future__ import annotations

import sys


def main(argv: list[str]) -> None:
    from apache_beam.runners.worker import sdk_worker_main

    from pipeline.local_runner import set_transfer_bytes

    if len(argv) != 2 or not argv[1].isdigit():
        raise SystemExit(f"usage: python -m pipeline.local_worker TRANSFER_BYTES (got {argv[1:]})")
    set_transfer_bytes(int(argv[1]))
    sdk_worker_main.main(argv)


if __name__ == "__main__":
    main(sys.argv)
