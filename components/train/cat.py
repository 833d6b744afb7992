"""``python -m components.train.cat URI``: write one file (local or gs://) to stdout.

The ``pipe:`` command through which NeMo's Lhotse tarred reader streams shards from GCS:
it reads in chunks with google-cloud-storage (Workload Identity on GKE,
``STORAGE_EMULATOR_HOST`` in tests), so the training image needs no gcloud CLI.

The URI is one argument: :func:`components.train.data.pipe_command` shell-quotes it, and
the shell ``exec``-s this module, so its parent is the process reading the shard. A reader
that dies (SIGTERM, a crash) cannot close the pipe for a read that hangs on the network, so
a thread here watches the parent and ends the process when the parent is gone.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time

from components import storage

PARENT_CHECK_S = 1.0


def _exit_with_parent(parent: int) -> None:
    while True:
        time.sleep(PARENT_CHECK_S)
        if os.getppid() != parent:
            os._exit(1)  # nobody reads the pipe any more


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m components.train.cat URI", file=sys.stderr)
        return 2
    if argv is None:
        threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    try:
        with storage.open_read(args[0]) as src:
            shutil.copyfileobj(src, sys.stdout.buffer, storage.CHUNK_BYTES)
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        return 0  # the reader stopped early (a sliced or finished shard)
    except Exception as err:  # noqa: BLE001 - one line for the training log, then a failed pipe
        print(f"components.train.cat: cannot read {args[0]!r}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
