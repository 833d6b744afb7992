"""Every compiled retryPolicy, read the way the KFP 2.17.0 compiler and Argo v4.0.5 read it.

The model is :mod:`tests.pipelines.kfp_backend` (source lines cited there). What it guards:
a factor Argo cannot parse as an integer fails the step instead of retrying it; a retry
window counted from the first attempt's start that is shorter than training means a spot
preemption late in a run is never retried; and the Argo controller's templateDefaults, which
decide WHICH failures are retried (KFP compiles no retryPolicy), must retry a preempted pod.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines import placement
from tests.pipelines.compiled import Compiled
from tests.pipelines.kfp_backend import (
    Attempt,
    argo_int32,
    argo_parse_duration,
    argo_retry_strategy,
    effective_retry_strategy,
    go_format_v,
    replay_preemptions,
    retry_decision,
)

HOUR = 3600.0
DAY = 24 * HOUR
PREEMPTION_STEPS = {"train", "launch-trainjob"}
KFP_OVERLAY = Path(__file__).resolve().parents[2] / "manifests" / "overlays" / "kfp" / "kustomization.yaml"

# What a stock KFP 2.17.0 install gives Argo (kubeflow/pipelines 2.17.0,
# manifests/kustomize/third-party/argo/base/workflow-controller-configmap-patch.yaml:50-59).
STOCK_KFP_WORKFLOW_DEFAULTS = yaml.safe_load(
    """
spec:
  ttlStrategy:
    secondsAfterCompletion: 3600
    secondsAfterSuccess: 3600
    secondsAfterFailure: 3600
  templateDefaults:
    retryStrategy:
      limit: '2'
      retryPolicy: OnError
"""
)


def overlay_workflow_defaults() -> dict[str, Any]:
    """The workflowDefaults our KFP overlay patches into workflow-controller-configmap, parsed
    as Argo's controller parses that key (config/config.go:86-87: a Workflow in YAML)."""
    kustomization = yaml.safe_load(KFP_OVERLAY.read_text())
    (patch,) = [p for p in kustomization["patches"] if p["target"]["name"] == "workflow-controller-configmap"]
    configmap = yaml.safe_load(patch["patch"])
    return yaml.safe_load(configmap["data"]["workflowDefaults"])


def container_tasks(c: Compiled) -> dict[str, dict]:
    return {
        name: task
        for name, task in c.tasks.items()
        if "dag" not in c.spec["components"][task["componentRef"]["name"]]
    }


def effective(c: Compiled, step: str, defaults: dict[str, Any] | None = None) -> dict[str, str]:
    compiled_strategy = argo_retry_strategy(c.tasks[step]["retryPolicy"])
    return effective_retry_strategy(compiled_strategy, defaults or overlay_workflow_defaults())


def test_go_formatting_and_parsing_as_the_backend_does() -> None:
    assert [go_format_v(x) for x in (2.0, 1.0, 1.5, 1e6, 3, 120)] == ["2", "1", "1.5", "1e+06", "3", "120"]
    assert argo_parse_duration("120") == 120 and argo_parse_duration("1h30m") == 5400
    with pytest.raises(ValueError, match="cannot be resolved to an int"):
        argo_int32("1.5")


def test_every_retry_strategy_parses_as_argo_parses_it(compiled) -> None:
    _, c = compiled
    for name in container_tasks(c):
        strategy = effective(c, name)
        assert argo_int32(strategy["limit"]) >= 1, name
        assert argo_int32(strategy["factor"]) >= 1, name  # operator.go:1055: Int32 of the factor
        assert argo_parse_duration(strategy["duration"]) > 0, name
        assert argo_parse_duration(strategy["maxDuration"]) >= 7 * DAY, name
        assert strategy["retryPolicy"] == placement.ARGO_RETRY_POLICY, name


def test_the_old_policy_is_what_this_model_rejects() -> None:
    """The policy train had before (factor 1.5, 600 s window): Argo errors on the factor,
    and even with a whole factor a preemption after 10 minutes would not be retried."""
    old = {"maxRetryCount": 10, "backoffDuration": "60s", "backoffFactor": 1.5, "backoffMaxDuration": "600s"}
    strategy = effective_retry_strategy(argo_retry_strategy(old), overlay_workflow_defaults())
    with pytest.raises(ValueError, match="cannot be resolved to an int"):
        retry_decision(strategy, [Attempt(0, 60)], now=60)
    whole = effective_retry_strategy(
        argo_retry_strategy({**old, "backoffFactor": 2.0}), overlay_workflow_defaults()
    )
    assert retry_decision(whole, [Attempt(0, 11 * 60)], now=11 * 60) == ("fail", 0.0)


@pytest.mark.parametrize("step", sorted(PREEMPTION_STEPS))
@pytest.mark.parametrize("phase, exit_code", [("Failed", 143), ("Failed", 137), ("Error", None)])
def test_training_survives_a_preemption_every_few_hours_for_days(
    compiled, step: str, phase: str, exit_code: int | None
) -> None:
    """Preempted as GKE does it: SIGTERM then exit (143), killed (137), or the pod deleted
    with its node (Argo: Error)."""
    _, c = compiled
    strategy = effective(c, step)
    # 10 preemptions, 8 h apart, then 12 more hours: 4.3 days in all
    assert replay_preemptions(strategy, [8 * HOUR] * 10, 12 * HOUR, phase, exit_code)
    # the budget is the retry limit: one preemption more than that fails the step
    limit = argo_int32(strategy["limit"])
    assert limit >= 10
    assert not replay_preemptions(strategy, [HOUR] * (limit + 1), HOUR, phase, exit_code)


def test_a_stock_kfp_install_would_not_retry_a_preempted_pod(compiled) -> None:
    """Why the overlay sets Argo's templateDefaults: under KFP's own (retryPolicy OnError) a
    preempted trainer that exits 143 is Failed, and Failed is not retried."""
    _, c = compiled
    stock = effective(c, "train", STOCK_KFP_WORKFLOW_DEFAULTS)
    assert stock["retryPolicy"] == "OnError"
    assert not replay_preemptions(stock, [8 * HOUR], 12 * HOUR, "Failed", 143)
    assert replay_preemptions(effective(c, "train"), [8 * HOUR], 12 * HOUR, "Failed", 143)


def test_a_failed_dag_is_not_rerun_and_a_crash_is_retried() -> None:
    """The overlay's defaults also reach DAG templates (a limit of 2): a DAG that failed
    because a task in it did has no exit code and is not retried, else a failed training
    would run again from the top; a data step's crash (exit 1, e.g. GCS unreachable) is."""
    defaults = overlay_workflow_defaults()
    dag = effective_retry_strategy({}, defaults)
    assert retry_decision(dag, [Attempt(0, HOUR, "Failed", None)], now=HOUR) == ("fail", 0.0)
    assert retry_decision(dag, [Attempt(0, HOUR, "Error", None)], now=HOUR)[0] == "retry"
    data = effective_retry_strategy(argo_retry_strategy(_policy(placement.DATA_RETRY)), defaults)
    attempts = [Attempt(0, 60, "Failed", 1)]
    verdict, until = retry_decision(data, attempts, now=60)
    assert verdict == "wait"
    assert retry_decision(data, attempts, now=until)[0] == "retry"


def _policy(retry: placement.RetryPolicy) -> dict[str, Any]:
    return {
        "maxRetryCount": retry.retries,
        "backoffDuration": f"{retry.backoff_s}s",
        "backoffFactor": float(retry.factor),
        "backoffMaxDuration": f"{retry.window_s}s",
    }


@pytest.mark.parametrize("step", sorted(PREEMPTION_STEPS))
def test_a_retry_waits_minutes_not_hours(compiled, step: str) -> None:
    """Argo waits duration * factor**(n-1) before retry n (operator.go:1059-1068)."""
    _, c = compiled
    strategy = effective(c, step)
    attempts: list[Attempt] = []
    for n in range(argo_int32(strategy["limit"])):
        attempts.append(Attempt(n * HOUR, n * HOUR + 30 * 60))
        verdict, until = retry_decision(strategy, attempts, now=attempts[-1].finished)
        assert verdict == "wait"
        assert until - attempts[-1].finished <= 10 * 60, n


def test_the_overlay_declares_what_placement_says() -> None:
    defaults = overlay_workflow_defaults()["spec"]
    retry = defaults["templateDefaults"]["retryStrategy"]
    assert retry["retryPolicy"] == placement.ARGO_RETRY_POLICY
    assert retry["expression"] == placement.ARGO_RETRY_EXPRESSION
    assert retry["limit"] == STOCK_KFP_WORKFLOW_DEFAULTS["spec"]["templateDefaults"]["retryStrategy"]["limit"]
    assert defaults["ttlStrategy"] == STOCK_KFP_WORKFLOW_DEFAULTS["spec"]["ttlStrategy"]  # KFP's, kept
    # Argo gives every pod the workflow's class when its template names none
    # (workflow/controller/workflowpod.go:966-971); KFP 2.17 templates name none.
    assert defaults["podPriorityClassName"] == placement.PRIORITY_CLASS


def test_placement_policies_are_whole_numbers_with_long_windows() -> None:
    for policy in (placement.DATA_RETRY, placement.TRAIN_RETRY, placement.EVALUATE_RETRY):
        assert isinstance(policy.factor, int) and policy.factor >= 1
        assert policy.window_s >= 7 * DAY
    assert placement.TRAIN_RETRY.factor == 1  # a constant wait: preemptions are not a failing service
