"""Training from a KFP task: ``asrflow train`` in a child process, then the run's outputs.

A KFP task runs training as a child process, ``python -m components.train train …``
(Lightning starts DDP ranks by re-running the command line, which must be the training
command, not the KFP executor); a multi-node TrainJob runs ``asrflow train`` under torchrun
on every node (its launcher is a cluster tool, beside the DAG). Both build the arguments with
:meth:`TrainSettings.to_argv <components.train.settings.TrainSettings.to_argv>` and end with
:func:`write_run_outputs`.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from components.train.card import TrainCard

TRAIN_MODULE = "components.train"
"""``python -m`` this: the training commands (:mod:`components.train.cli`)."""


def run_training_process(argv: list[str]) -> int:
    """Run ``python -m components.train ARGV`` as a child process; its output is ours; SIGTERM is passed on.

    Returns the child's exit status (143 for a preempted training run), so a KFP task can
    exit with it.
    """
    import signal
    import subprocess

    command = [sys.executable, "-m", TRAIN_MODULE, *argv]
    # the task log is read by people debugging a failed task: keep the traceback there
    env = {**os.environ, "ASRFLOW_DEBUG": os.environ.get("ASRFLOW_DEBUG", "1")}
    child = subprocess.Popen(command, env=env)

    def forward(signum: int, frame: Any) -> None:
        child.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        return child.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)


def write_run_outputs(run_dir: str, card_path: str, curves_path: str) -> TrainCard:
    """After a finished run: its card as a JSON artifact and its curves as an HTML page.

    Both KFP training steps (one node, or a TrainJob on several) end with this; returns the
    card.
    """
    from components.train.curves import curves_html

    card = TrainCard.read(run_dir)
    with open(card_path, "w", encoding="utf-8") as out:
        json.dump(card.to_dict(), out, sort_keys=True, indent=2)
    with open(curves_path, "w", encoding="utf-8") as out:
        out.write(curves_html(run_dir))
    return card
