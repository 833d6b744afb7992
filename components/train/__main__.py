"""``python -m components.train train …``: the ``asrflow`` command line without its script.

KFP tasks start training this way (see ``core.run_asrflow``); Lightning re-runs the same
``-m`` command for the other DDP ranks.
"""

from pipelines.cli import main

if __name__ == "__main__":
    main()
