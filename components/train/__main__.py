"""``python -m components.train train …``: the training commands without the ``asrflow`` script.

KFP tasks start training this way (:func:`components.train.launch.run_training_process`);
Lightning re-runs the same ``-m`` command for the other DDP ranks.
"""

from components.train.cli import main

if __name__ == "__main__":
    main()
