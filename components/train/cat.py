"""``python -m components.train.cat URI``: write one file (local or gs://) to stdout.

The ``pipe:`` command through which NeMo's Lhotse tarred reader streams shards from GCS:
it reads in chunks with google-cloud-storage (Workload Identity on GKE,
``STORAGE_EMULATOR_HOST`` in tests), so the training image needs no gcloud CLI.
"""

from __future__ import annotations

import shutil
import sys

from components import storage


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m components.train.cat URI", file=sys.stderr)
        return 2
    try:
        with storage.open_read(args[0]) as src:
            shutil.copyfileobj(src, sys.stdout.buffer, storage.CHUNK_BYTES)
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        return 0  # the reader stopped early (a sliced or finished shard)
    except Exception as err:  # noqa: BLE001 - one line for the training log, then a failed pipe
        print(f"components.train.cat: cannot read {args[0]}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
