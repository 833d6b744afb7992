"""What the KFP 2.17.0 backend and Argo Workflows v4.0.5 do with a compiled pipeline, in Python.

No KFP backend or Argo controller runs here, so the tests that read the compiled YAML do it
the way their code does, line by line, with the source cited. Sources: kubeflow/pipelines
at tag 2.17.0 and argoproj/argo-workflows at tag v4.0.5.

Two models:

- retries: :func:`argo_retry_strategy` turns a task's ``retryPolicy`` into the strings the
  KFP compiler hands Argo, :func:`retry_decision` applies Argo's ``processNodeRetries``.
- caching: :class:`CacheReplay` runs a compiled DAG's tasks in dependency order as the KFP
  driver and launcher decide them: the cache key, the look-up, a hit's reused outputs and
  the entry a successful miss leaves. Tasks are not executed; a miss makes outputs that
  depend only on the task and its inputs' contents, as a deterministic step's do.
"""

from __future__ import annotations

import dataclasses
import decimal
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

# --- Go's formatting and parsing, as far as the backend uses them ---------------------------


def go_format_v(value: int | float) -> str:
    """Go's ``fmt.Sprintf("%v", value)`` for an int or a float64.

    The backend turns retry fields into Argo parameters with ``wfapi.AnyStringPtr``
    (argo-workflows pkg/apis/workflow/v1alpha1/anystring.go:14-21: ``fmt.Sprintf("%v")``).
    For a float64, ``%v`` is ``%g`` with the shortest digits (fmt/print.go ``fmtFloat``:
    ``case 'v': p.fmt.fmtFloat(v, size, 'g', -1)``), in exponent form when the decimal
    exponent is below -4 or at least 6 (strconv/ftoa.go: "if precision was the shortest
    possible, use precision 6 for this decision"): 2.0 → ``2``, 1.5 → ``1.5``, 1e6 → ``1e+06``.
    """
    if isinstance(value, bool):
        raise TypeError("not a number")
    if isinstance(value, int):
        return str(value)
    if value == 0:
        return "0"
    digits = decimal.Decimal(repr(value)).normalize()
    sign, figures, exponent = digits.as_tuple()
    mantissa = "".join(map(str, figures))
    point = len(mantissa) + exponent  # where the decimal point falls in the digits
    decimal_exponent = point - 1
    prefix = "-" if sign else ""
    if decimal_exponent < -4 or decimal_exponent >= 6:
        tail = f".{mantissa[1:]}" if len(mantissa) > 1 else ""
        return (
            f"{prefix}{mantissa[0]}{tail}e{'-' if decimal_exponent < 0 else '+'}{abs(decimal_exponent):02d}"
        )
    if point <= 0:
        return f"{prefix}0.{'0' * -point}{mantissa}"
    if point >= len(mantissa):
        return f"{prefix}{mantissa}{'0' * (point - len(mantissa))}"
    return f"{prefix}{mantissa[:point]}.{mantissa[point:]}"


def go_atoi(text: str) -> int:
    """Go's ``strconv.Atoi``: optional sign and decimal digits only, else an error."""
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise ValueError(f"strconv.Atoi: parsing {text!r}: invalid syntax")
    return int(text)


_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_parse_duration(text: str) -> float:
    """Go's ``time.ParseDuration`` in seconds (``1h30m``, ``90s``, ``1.5h``)."""
    match = re.fullmatch(r"([+-]?)((?:[0-9]*\.?[0-9]+(?:ns|us|µs|μs|ms|s|m|h))+)", text)
    if not match:
        raise ValueError(f"time: invalid duration {text!r}")
    seconds = sum(
        float(number) * _GO_UNITS[unit]
        for number, unit in re.findall(r"([0-9]*\.?[0-9]+)(ns|us|µs|μs|ms|s|m|h)", match.group(2))
    )
    return -seconds if match.group(1) == "-" else seconds


def argo_parse_duration(text: str) -> float:
    """Argo's ``ParseStringToDuration`` (pkg/apis/workflow/v1alpha1/utils.go:9-20): a bare
    integer is seconds, anything else goes to ``time.ParseDuration``."""
    try:
        return float(go_atoi(text))
    except ValueError:
        return go_parse_duration(text)


def argo_int32(text: str) -> int:
    """Argo's ``intstr.Int32`` of an ``intstr.String`` (util/intstr/parametrizable.go:12-33)."""
    try:
        return go_atoi(text)
    except ValueError:
        raise ValueError(f"value '{text}' cannot be resolved to an int") from None


def proto_duration_seconds(text: str) -> int:
    """``google.protobuf.Duration``'s ``Seconds`` from its JSON form (``"120s"``, ``"1.5s"``):
    the whole seconds, the fraction left in ``Nanos``, which the compiler drops."""
    match = re.fullmatch(r"(-?)([0-9]+)(?:\.[0-9]{1,9})?s", text)
    if not match:
        raise ValueError(f"not a protobuf Duration: {text!r}")
    return -int(match.group(2)) if match.group(1) else int(match.group(2))


# --- retries ---------------------------------------------------------------------------------


def argo_retry_strategy(retry_policy: Mapping[str, Any]) -> dict[str, str]:
    """The Argo ``retryStrategy`` strings the KFP 2.17.0 compiler makes of a task's retryPolicy.

    backend/src/v2/compiler/argocompiler/container.go:614-649 (getTaskRetryParametersWithValues):
    ``maxRetryCount`` and the factor through ``AnyStringPtr`` (``%v``), the durations as
    ``Duration.Seconds`` (int64). container.go:667-685 (getTaskRetryStrategyFromInput) puts
    them into ``limit``, ``backoff.duration``, ``backoff.factor`` (an ``intstr.String``) and
    ``backoff.maxDuration``; no ``retryPolicy`` field, so Argo's default applies.
    """
    strategy = {
        "limit": go_format_v(int(retry_policy.get("maxRetryCount", 0))),
        "factor": go_format_v(float(retry_policy["backoffFactor"])),
    }
    if "backoffDuration" in retry_policy:
        strategy["duration"] = go_format_v(proto_duration_seconds(retry_policy["backoffDuration"]))
    if "backoffMaxDuration" in retry_policy:
        strategy["maxDuration"] = go_format_v(proto_duration_seconds(retry_policy["backoffMaxDuration"]))
    return strategy


def effective_retry_strategy(
    compiled: Mapping[str, str], workflow_defaults: Mapping[str, Any]
) -> dict[str, str]:
    """The retryStrategy Argo applies: the controller's ``templateDefaults`` merged under the
    compiled one, field by field, the template's own fields winning (Argo v4.0.5
    workflow/controller/operator.go:4447-4489, ``strategicpatch.StrategicMergePatch(defaults,
    template)``; ``RetryStrategy`` has no patch strategy, so it merges as a map)."""
    defaults = ((workflow_defaults.get("spec") or {}).get("templateDefaults") or {}).get(
        "retryStrategy"
    ) or {}
    return {**{key: str(value) for key, value in defaults.items()}, **compiled}


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One pod of a retried node: when it started and ended (seconds), its phase, its exit code.

    ``Failed``: the main container exited non-zero (a preempted trainer exits 143 after
    SIGTERM); ``Error``: Argo lost the pod (deleted with its node), so there is no exit code.
    A DAG node that failed because a task in it did is ``Failed`` without an exit code.
    """

    started: float
    finished: float
    phase: str = "Failed"
    exit_code: int | None = 143


def argo_expression(expression: str, scope: Mapping[str, str]) -> bool:
    """The retry expressions used here, in expr-lang as Argo evaluates them (``==``, ``and``,
    ``or``, ``asInt``, string literals, ``lastRetry.*`` strings: operator.go:2050-2071)."""
    python = re.sub(r"lastRetry\.(\w+)", lambda m: repr(scope[m.group(1)]), expression)
    if re.search(r"[^\w\s().=<>!\"'\-+]", python):
        raise ValueError(f"unsupported expression: {expression}")
    return bool(eval(python, {"__builtins__": {}}, {"asInt": int}))  # noqa: S307


def retry_decision(strategy: Mapping[str, str], attempts: list[Attempt], now: float) -> tuple[str, float]:
    """Argo v4.0.5's ``processNodeRetries`` (workflow/controller/operator.go:977-1151) after
    the last attempt failed: ``("retry", deadline)``, ``("wait", until)`` or ``("fail", 0)``.

    The deadline is what the next pod gets as its activeDeadline (operator.go:1094-1095,
    workflowpod.go:665-674); ``inf`` without ``maxDuration``.

    Raises:
        ValueError: where Argo's reconciliation errors out (an unparsable field).
    """
    first, last = attempts[0], attempts[-1]
    deadline = float("inf")
    if strategy.get("maxDuration"):
        deadline = first.started + argo_parse_duration(strategy["maxDuration"])  # operator.go:1029-1036
        if now > deadline:
            return "fail", 0.0  # "Max duration limit exceeded" (operator.go:1037-1040)
    limit = argo_int32(strategy["limit"])
    if "duration" in strategy or "factor" in strategy:  # Backoff != nil (operator.go:1025)
        if "duration" not in strategy:
            raise ValueError("no base duration specified for retryStrategy")  # operator.go:1045-1047
        wait = argo_parse_duration(strategy["duration"])
        factor = argo_int32(strategy["factor"])  # operator.go:1055-1058
        if factor > 0:
            wait *= factor ** (len(attempts) - 1)  # operator.go:1059-1068
        waiting_deadline = last.finished + wait
        if waiting_deadline > deadline:
            return "fail", 0.0  # "Backoff would exceed max duration limit" (operator.go:1080-1085)
        if now < waiting_deadline and len(attempts) <= limit:
            return "wait", waiting_deadline  # operator.go:1088-1092
    # RetryPolicyActual (workflow_types.go:2295-2304): the field, else Always with an
    # expression, else OnFailure; Failed and Error are retried as the policy says
    # (operator.go:1100-1125).
    policy = strategy.get("retryPolicy") or ("Always" if strategy.get("expression") else "OnFailure")
    retried_phases = {"Always": {"Failed", "Error"}, "OnFailure": {"Failed"}, "OnError": {"Error"}}[policy]
    if last.phase not in retried_phases:
        return "fail", 0.0
    if len(attempts) > limit:
        return "fail", 0.0  # "No more retries left" (operator.go:1132-1139)
    if strategy.get("expression"):  # operator.go:1141-1150
        scope = {
            "status": last.phase,
            "exitCode": "-1" if last.exit_code is None else str(last.exit_code),
        }
        if not argo_expression(strategy["expression"], scope):
            return "fail", 0.0
    return "retry", deadline


def replay_preemptions(
    strategy: Mapping[str, str],
    preempted_after: list[float],
    last_run: float,
    phase: str = "Failed",
    exit_code: int | None = 143,
) -> bool:
    """Whether a step preempted after each of ``preempted_after`` seconds of running, then
    running ``last_run`` seconds, finishes under Argo's retry rules (each retry starts as soon
    as Argo allows, and a pod is stopped at its deadline). A preempted attempt ends with
    ``phase`` and ``exit_code`` (SIGTERM honoured: Failed, 143; pod deleted: Error, None)."""
    attempts: list[Attempt] = []
    started, deadline = 0.0, float("inf")
    for run in preempted_after:
        if started + run > deadline:
            return False
        attempts.append(Attempt(started, started + run, phase, exit_code))
        now = started + run
        while True:
            verdict, when = retry_decision(strategy, attempts, now)
            if verdict == "wait":
                now = when
                continue
            if verdict == "fail":
                return False
            started, deadline = now, when
            break
    return started + last_run <= deadline


# --- caching ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Artifact:
    """An MLMD artifact: the id is what the cache key holds (metadata/converter.go:186-187
    ``Name: strconv.FormatInt(artifact.GetId(), 10)``); the content is what a step wrote."""

    id: int
    content: str


@dataclasses.dataclass
class Execution:
    task: str
    cached: bool
    inputs: dict[str, Any]
    parameters: dict[str, Any]
    artifacts: dict[str, list[Artifact]]


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _fake_value(parameter_type: str, seed: str) -> Any:
    """A deterministic stand-in for an output parameter of a step that ran on some inputs."""
    number = int(seed[:8], 16)
    if parameter_type == "LIST":
        return [round(1 + (number >> shift) % 1000 / 100, 2) for shift in (0, 4, 8)]
    if parameter_type == "NUMBER_INTEGER":
        return number % 1000
    if parameter_type == "NUMBER_DOUBLE":
        return number % 1000 / 10
    if parameter_type == "BOOLEAN":
        return bool(number % 2)
    if parameter_type == "STRUCT":
        return {"value": seed[:12]}
    return f"out-{seed[:12]}"


class CacheReplay:
    """Runs of one compiled pipeline against one KFP cache, as the 2.17.0 driver sees them.

    Args:
        spec: the pipeline spec (first YAML document ``asrflow compile`` writes).
        namespace: where the runs execute (part of the cache look-up).
    """

    def __init__(self, spec: Mapping[str, Any], namespace: str = "asrflow") -> None:
        self.spec = spec
        self.namespace = namespace
        self.pipeline_name = spec["pipelineInfo"]["name"]
        # fingerprint → execution, per (pipeline, namespace): cache.go:107-137 GetExecutionCache
        self.cache: dict[tuple[str, str, str], Execution] = {}
        self._next_artifact_id = 1

    # -- the run -----------------------------------------------------------------------

    def run(self, arguments: Mapping[str, Any], run_id: str) -> list[Execution]:
        """One run with these pipeline arguments; returns every container task it decided."""
        parameters = {
            name: definition.get("defaultValue")
            for name, definition in self.spec["root"]["inputDefinitions"]["parameters"].items()
        }
        parameters.update(arguments)
        self._run_id = run_id
        executions: list[Execution] = []
        self._run_dag(self.spec["root"]["dag"], parameters, {}, executions)
        return executions

    def _run_dag(
        self,
        dag: Mapping[str, Any],
        parameters: Mapping[str, Any],
        artifacts: Mapping[str, list[Artifact]],
        executions: list[Execution],
    ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, list[Artifact]]]]:
        """Run a DAG's tasks in dependency order; returns each task's output parameters and artifacts."""
        tasks = dag["tasks"]
        out_parameters: dict[str, dict[str, Any]] = {}
        out_artifacts: dict[str, dict[str, list[Artifact]]] = {}
        done: set[str] = set()
        while len(done) < len(tasks):
            ready = [
                name
                for name, task in sorted(tasks.items())
                if name not in done and set(self._upstream(task)) <= done
            ]
            if not ready:
                raise ValueError(f"cycle or unknown dependency among {sorted(set(tasks) - done)}")
            for name in ready:
                done.add(name)
                task = tasks[name]
                if any(upstream not in out_parameters for upstream in self._upstream(task)):
                    continue  # an upstream task was skipped by its condition
                values = self._input_parameters(task, parameters, out_parameters)
                inputs = self._input_artifacts(task, artifacts, out_artifacts)
                if "triggerPolicy" in task and not self._condition(
                    task["triggerPolicy"]["condition"], values
                ):
                    continue
                component = self.spec["components"][task["componentRef"]["name"]]
                if "dag" in component:
                    result = self._run_sub_dag(task, component, values, inputs, executions)
                else:
                    result = self._run_container(name, task, component, values, inputs, executions)
                out_parameters[name], out_artifacts[name] = result
        return out_parameters, out_artifacts

    @staticmethod
    def _upstream(task: Mapping[str, Any]) -> list[str]:
        names = set(task.get("dependentTasks", []))
        for kind in ("parameters", "artifacts"):
            for source in task.get("inputs", {}).get(kind, {}).values():
                for key in ("taskOutputParameter", "taskOutputArtifact"):
                    if key in source:
                        names.add(source[key]["producerTask"])
        return sorted(names)

    def _input_parameters(
        self, task: Mapping[str, Any], scope: Mapping[str, Any], outputs: Mapping[str, Mapping[str, Any]]
    ) -> dict[str, Any]:
        values = {}
        for name, source in task.get("inputs", {}).get("parameters", {}).items():
            if "componentInputParameter" in source:
                values[name] = scope[source["componentInputParameter"]]
            elif "taskOutputParameter" in source:
                producer = source["taskOutputParameter"]
                values[name] = outputs[producer["producerTask"]][producer["outputParameterKey"]]
            elif "runtimeValue" in source:
                constant = source["runtimeValue"]["constant"]
                values[name] = self._run_id if constant == "{{$.pipeline_job_uuid}}" else constant
            else:
                raise ValueError(f"input {name}: unsupported source {source}")
        return values

    @staticmethod
    def _input_artifacts(
        task: Mapping[str, Any],
        scope: Mapping[str, list[Artifact]],
        outputs: Mapping[str, Mapping[str, list[Artifact]]],
    ) -> dict[str, list[Artifact]]:
        found = {}
        for name, source in task.get("inputs", {}).get("artifacts", {}).items():
            if "componentInputArtifact" in source:
                found[name] = scope[source["componentInputArtifact"]]
            else:
                producer = source["taskOutputArtifact"]
                found[name] = outputs[producer["producerTask"]][producer["outputArtifactKey"]]
        return found

    @staticmethod
    def _condition(expression: str, values: Mapping[str, Any]) -> bool:
        """The CEL conditions the KFP compiler writes for ``dsl.If``/``dsl.Else`` on parameters."""
        python = re.sub(
            r"inputs\.parameter_values\['([^']+)'\]", lambda m: repr(values[m.group(1)]), expression
        )
        python = python.replace("&&", " and ").replace("||", " or ")
        python = re.sub(r"!(?!=)", " not ", python)
        return bool(eval(python, {"__builtins__": {}}, {"int": int, "double": float, "string": str}))  # noqa: S307

    def _run_sub_dag(
        self,
        task: Mapping[str, Any],
        component: Mapping[str, Any],
        values: Mapping[str, Any],
        inputs: Mapping[str, list[Artifact]],
        executions: list[Execution],
    ) -> tuple[dict[str, Any], dict[str, list[Artifact]]]:
        dag = component["dag"]
        iterator = task.get("parameterIterator")
        scopes = [dict(values)]
        if iterator:
            items = values[iterator["items"]["inputParameter"]]
            scopes = [{**values, iterator["itemInput"]: item} for item in items]
        runs = [self._run_dag(dag, scope, inputs, executions) for scope in scopes]
        parameters: dict[str, Any] = {}
        artifacts: dict[str, list[Artifact]] = {}
        for key, selector in dag.get("outputs", {}).get("parameters", {}).items():
            if "valueFromParameter" in selector:
                chosen = [selector["valueFromParameter"]]
            else:
                chosen = selector["valueFromOneof"]["parameterSelectors"]
            found = [
                run_parameters[choice["producerSubtask"]][choice["outputParameterKey"]]
                for run_parameters, _ in runs
                for choice in chosen
                if choice["producerSubtask"] in run_parameters
            ]
            if found:
                parameters[key] = found if iterator else found[0]
        for key, selector in dag.get("outputs", {}).get("artifacts", {}).items():
            artifacts[key] = [
                artifact
                for _, run_artifacts in runs
                for choice in selector["artifactSelectors"]
                if choice["producerSubtask"] in run_artifacts
                for artifact in run_artifacts[choice["producerSubtask"]][choice["outputArtifactKey"]]
            ]
        return parameters, artifacts

    def _cache_key(
        self, component: Mapping[str, Any], values: Mapping[str, Any], inputs: Mapping[str, list[Artifact]]
    ) -> dict[str, Any]:
        """backend/src/v2/cacheutils/cache.go:173-229 (GenerateCacheKey) with the arguments
        driver/cache.go:83-117 (getFingerPrint) passes: input artifact ids, input parameter
        values, output artifact specs (no URI), output parameter types, command + args, image."""
        executor = self.spec["deploymentSpec"]["executors"][component["executorLabel"]]["container"]
        outputs = component.get("outputDefinitions", {})
        return {
            "inputArtifactNames": {name: [a.id for a in found] for name, found in inputs.items()},
            "inputParameterValues": dict(values),
            "outputArtifactsSpec": {
                name: definition["artifactType"] for name, definition in outputs.get("artifacts", {}).items()
            },
            "outputParametersSpec": {
                name: definition["parameterType"]
                for name, definition in outputs.get("parameters", {}).items()
            },
            "containerSpec": {
                "image": executor["image"],
                "cmdArgs": list(executor.get("command", [])) + list(executor.get("args", [])),
                "pvcNames": [],
            },
        }

    def _run_container(
        self,
        name: str,
        task: Mapping[str, Any],
        component: Mapping[str, Any],
        values: Mapping[str, Any],
        inputs: Mapping[str, list[Artifact]],
        executions: list[Execution],
    ) -> tuple[dict[str, Any], dict[str, list[Artifact]]]:
        enable_cache = bool(task.get("cachingOptions", {}).get("enableCache"))
        fingerprint = _digest(self._cache_key(component, values, inputs)) if enable_cache else ""
        lookup = (fingerprint, f"pipeline/{self.pipeline_name}", self.namespace)
        if enable_cache and lookup in self.cache:
            # driver/container.go:215-241: a hit publishes the cached execution's output
            # parameters and the very same artifacts (driver/cache.go:56-80).
            hit = self.cache[lookup]
            execution = Execution(name, True, dict(values), hit.parameters, hit.artifacts)
        else:
            # A miss runs: a deterministic step's outputs depend on its inputs' contents,
            # while each output artifact is a new MLMD artifact with a new id.
            content = _digest(
                {
                    "component": task["componentRef"]["name"],
                    "parameters": values,
                    "artifacts": {key: [a.content for a in found] for key, found in inputs.items()},
                }
            )
            outputs = component.get("outputDefinitions", {})
            parameters = {
                key: _fake_value(definition["parameterType"], _digest([content, key]))
                for key, definition in outputs.get("parameters", {}).items()
            }
            artifacts = {}
            for key in outputs.get("artifacts", {}):
                artifacts[key] = [Artifact(self._next_artifact_id, _digest([content, key]))]
                self._next_artifact_id += 1
            execution = Execution(name, False, dict(values), parameters, artifacts)
            if fingerprint:
                # component/launcher_v2.go:298-317: a successful task with a fingerprint
                # becomes a cache entry.
                self.cache[lookup] = execution
        executions.append(execution)
        return execution.parameters, execution.artifacts
