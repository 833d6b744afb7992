"""The compiled pipeline YAML as the tests read it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class Compiled:
    """The two YAML documents KFP writes: the pipeline spec and the Kubernetes platform spec."""

    def __init__(self, path: Path) -> None:
        docs = list(yaml.safe_load_all(path.read_text()))
        self.spec, self.platform = docs[0], docs[1]
        self.executors = self.spec["deploymentSpec"]["executors"]
        self.k8s = self.platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        self.tasks = dict(self._walk_tasks())

    def _walk_tasks(self):
        """(task name, task spec) for every task in the root DAG and nested DAGs."""
        dags = [self.spec["root"]["dag"]] + [c["dag"] for c in self.spec["components"].values() if "dag" in c]
        for dag in dags:
            yield from dag["tasks"].items()

    def executor_of(self, task: dict[str, Any]) -> str:
        return self.spec["components"][task["componentRef"]["name"]]["executorLabel"]

    def container(self, task_name: str) -> dict[str, Any]:
        return self.executors[self.executor_of(self.tasks[task_name])]["container"]

    def kubernetes(self, task_name: str) -> dict[str, Any]:
        return self.k8s[self.executor_of(self.tasks[task_name])]
