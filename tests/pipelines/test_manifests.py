"""manifests/: every overlay builds, objects validate, and they agree with the code.

Core objects are validated with kubernetes-validate (strict) for the newest Kubernetes it
ships; custom resources against their CRDs' published schemas (tests/fixtures/crds/), with
unknown fields rejected. The node pools, RBAC rules and names are cross-checked with
pipelines/placement.py, pipelines/trainjob.py and pipelines/kubectl/cluster.py.
"""

from __future__ import annotations

import copy
import importlib.metadata
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import utils as kv_utils

from pipelines import nodepools, placement, trainjob
from pipelines.kubectl import cluster as kubectl_cluster

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
CRDS = REPO / "tests" / "fixtures" / "crds"
KUBECTL = Path(sys.executable).parent / "kubectl"
K8S_VERSION = kv_utils.latest_version()
# Overlays that pull KFP from GitHub: no network here, so they are checked statically.
REMOTE_OVERLAYS = {"overlays/kfp", "overlays/kfp/cluster-scoped"}
CUSTOM_KINDS = {
    "ContainerNodePool": "containernodepools.container.cnrm.cloud.google.com.yaml",
    "TrainingRuntime": "trainer.kubeflow.org_trainingruntimes.yaml",
    "TrainJob": "trainer.kubeflow.org_trainjobs.yaml",
}
CLUSTER_SCOPED_KINDS = {"Namespace", "PriorityClass"}


def kustomizations() -> list[str]:
    return sorted(str(p.parent.relative_to(MANIFESTS)) for p in MANIFESTS.rglob("kustomization.yaml"))


def local_kustomizations() -> list[str]:
    return [k for k in kustomizations() if k not in REMOTE_OVERLAYS]


def kustomize(path: Path) -> list[dict[str, Any]]:
    result = subprocess.run([str(KUBECTL), "kustomize", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@cache
def built(name: str) -> tuple[dict[str, Any], ...]:
    return tuple(kustomize(MANIFESTS / name))


def objects(name: str, kind: str) -> list[dict[str, Any]]:
    return [o for o in built(name) if o["kind"] == kind]


def one(name: str, kind: str, object_name: str) -> dict[str, Any]:
    found = [o for o in objects(name, kind) if o["metadata"]["name"] == object_name]
    assert len(found) == 1, f"{name}: expected one {kind} {object_name}, found {len(found)}"
    return found[0]


# --- building and validating ---------------------------------------------------------------


def test_the_overlays_this_file_knows_are_all_there() -> None:
    assert set(kustomizations()) == {"base", "overlays/gke"} | REMOTE_OVERLAYS


@pytest.mark.parametrize("name", local_kustomizations())
def test_every_local_overlay_builds(name: str) -> None:
    docs = built(name)
    assert docs, f"{name} built nothing"
    assert {o["kind"] for o in docs} >= {
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "PriorityClass",
    }


@pytest.mark.parametrize("name", local_kustomizations())
def test_core_objects_validate_strictly(name: str) -> None:
    core = [o for o in built(name) if o["kind"] not in CUSTOM_KINDS]
    assert core
    for obj in core:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_strict_core_validation_rejects_an_unknown_field() -> None:
    role = copy.deepcopy(one("base", "Role", placement.RUNNER_SERVICE_ACCOUNT))
    role["rules"][0]["verb"] = ["get"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(role, K8S_VERSION, strict=True)


def strict(schema: Any) -> Any:
    """The schema with unknown fields rejected wherever it lists the known ones."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@cache
def crd_validator(kind: str, version: str) -> jsonschema.protocols.Validator:
    crd = yaml.load((CRDS / CUSTOM_KINDS[kind]).read_text(), Loader=yaml.CSafeLoader)
    assert crd["spec"]["names"]["kind"] == kind
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = strict(served["schema"]["openAPIV3Schema"])
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def validate_custom(obj: dict[str, Any]) -> None:
    group, version = obj["apiVersion"].split("/")
    crd = yaml.load((CRDS / CUSTOM_KINDS[obj["kind"]]).read_text(), Loader=yaml.CSafeLoader)
    assert crd["spec"]["group"] == group, f"{obj['kind']} is not in API group {group}"
    errors = sorted(crd_validator(obj["kind"], version).iter_errors(obj), key=str)
    assert not errors, f"{obj['kind']} {obj['metadata']['name']}: " + "; ".join(
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
    )


def test_node_pools_validate_against_the_config_connector_crd() -> None:
    pools = objects("overlays/gke", "ContainerNodePool")
    assert len(pools) == len(placement.ALL_POOLS)
    for pool in pools:
        validate_custom(pool)


def test_crd_validation_rejects_a_misspelt_field() -> None:
    pool = copy.deepcopy(objects("overlays/gke", "ContainerNodePool")[0])
    pool["spec"]["nodeConfig"]["machinType"] = pool["spec"]["nodeConfig"].pop("machineType")
    with pytest.raises(AssertionError, match="machinType"):
        validate_custom(pool)


def test_training_runtime_validates_against_the_trainer_crd() -> None:
    validate_custom(one("base", "TrainingRuntime", placement.TRAINING_RUNTIME))


# Kubeflow Trainer v2.3.0: its controller Deployment (manifests/base/manager/manager.yaml:19, in
# the namespace of manifests/overlays/manager/kustomization.yaml:19) serves the webhooks that
# validate TrainingRuntimes and TrainJobs (manifests/base/webhook/manifests.yaml:42-106,
# failurePolicy Fail), and reports ready only once they listen
# (cmd/trainer-controller-manager/main.go:186-203).
TRAINER_INSTALL = (
    "kubectl apply --server-side -k "
    f'"github.com/kubeflow/trainer.git/manifests/overlays/manager?ref={placement.TRAINER_VERSION}"'
)
TRAINER_WEBHOOK = ("kubeflow-system", "kubeflow-trainer-controller-manager")


def readme_commands(path: Path) -> list[str]:
    """The commands of a Markdown file's ```bash blocks, in order, continuation lines joined."""
    commands: list[str] = []
    fence, current = None, ""
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fence = line[3:].strip() if fence is None else None
            continue
        if fence != "bash":
            continue
        if line.endswith("\\"):
            current += line[:-1].strip() + " "
        else:
            commands.append((current + line.strip()).strip())
            current = ""
    return commands


def test_readme_installs_kubeflow_trainer_before_applying_its_objects() -> None:
    """Kubeflow Trainer is a prerequisite, not an option: base holds a Trainer object (the
    TrainingRuntime) and runs create TrainJobs. manifests/README.md installs Trainer, waits
    for those kinds' CRDs and for the webhook that admits them, and only then applies base."""
    trainer_kinds = {o["kind"] for o in built("base") if o["apiVersion"].startswith("trainer.kubeflow.org/")}
    assert "TrainingRuntime" in trainer_kinds
    commands = readme_commands(MANIFESTS / "README.md")

    def first(matches, what: str) -> int:
        found = [i for i, command in enumerate(commands) if matches(command)]
        assert found, f"manifests/README.md has no command that {what}"
        return found[0]

    apply = first(
        lambda c: re.match(r"kubectl apply -k manifests/(base|overlays/gke)$", c),
        "applies asrflow's manifests",
    )
    install = first(lambda c: c == TRAINER_INSTALL, f"installs Kubeflow Trainer {placement.TRAINER_VERSION}")
    for kind in sorted(trainer_kinds | {"TrainJob"}):
        crd = yaml.load((CRDS / CUSTOM_KINDS[kind]).read_text(), Loader=yaml.CSafeLoader)["metadata"]["name"]
        wait = first(
            lambda c, crd=crd: (
                c.startswith("kubectl wait --for condition=established") and f"crd/{crd}" in c.split()
            ),
            f"waits for crd/{crd}",
        )
        assert install < wait < apply, f"wait for crd/{crd} after installing Trainer, before applying"
    namespace, deployment = TRAINER_WEBHOOK
    webhook = first(
        lambda c: (
            c.startswith(f"kubectl -n {namespace} wait --for condition=available")
            and f"deployment/{deployment}" in c.split()
        ),
        "waits for the Trainer webhook",
    )
    assert install < webhook < apply


@pytest.mark.parametrize("gpu", sorted(placement.GPU_POOLS))
def test_trainjob_the_pipeline_builds_validates_against_the_trainer_crd(gpu: str) -> None:
    job = trainjob.build_trainjob(
        name=trainjob.trainjob_name("run-1"),
        namespace=placement.NAMESPACE,
        image="registry.example/train:1",
        train_args=["gs://b/tarred", "--val", "gs://b/val.json"],
        num_nodes=2,
        gpu=gpu,
        run_id="run-1",
        dataset="peoples_speech",
    )
    validate_custom(job.to_dict())


def test_crd_validation_covers_the_failure_policy() -> None:
    runtime = copy.deepcopy(one("base", "TrainingRuntime", placement.TRAINING_RUNTIME))
    policy = runtime["spec"]["template"]["spec"]["failurePolicy"]
    policy["maxRestart"] = policy.pop("maxRestarts")
    with pytest.raises(AssertionError, match="maxRestart"):
        validate_custom(runtime)
    runtime = copy.deepcopy(one("base", "TrainingRuntime", placement.TRAINING_RUNTIME))
    runtime["spec"]["template"]["spec"]["failurePolicy"]["rules"][0]["action"] = "RestartAndIgnore"
    with pytest.raises(AssertionError, match="RestartAndIgnore"):
        validate_custom(runtime)


def test_trainer_versions_agree() -> None:
    assert placement.TRAINER_VERSION == "v" + importlib.metadata.version("kubeflow-trainer-api")
    assert placement.TRAINER_VERSION in (CRDS / "README.md").read_text()


# --- node pools: one source of truth -------------------------------------------------------


def test_committed_nodepools_yaml_is_generated_from_placement() -> None:
    committed = (MANIFESTS / "overlays" / "gke" / "nodepools.yaml").read_text()
    assert committed == nodepools.nodepools_yaml(), (
        "manifests/overlays/gke/nodepools.yaml is stale: run python -m pipelines.nodepools "
        "--out manifests/overlays/gke/nodepools.yaml --readme manifests/README.md"
    )


def test_readme_gcloud_commands_are_generated_from_placement() -> None:
    readme = (MANIFESTS / "README.md").read_text()
    assert nodepools.gcloud_block() in readme, "manifests/README.md gcloud block is stale (see above)"


def test_generator_writes_both_files(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{nodepools.GCLOUD_BEGIN}\nold\n{nodepools.GCLOUD_END}\noutro\n")
    out = tmp_path / "nodepools.yaml"
    subprocess.run(
        [sys.executable, "-m", "pipelines.nodepools", "--out", str(out), "--readme", str(readme)],
        check=True,
        cwd=REPO,
    )
    assert out.read_text() == nodepools.nodepools_yaml()
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text
    assert "gcloud container node-pools create asrflow-v100-spot" in text


def gke_node_labels(pool: dict[str, Any]) -> dict[str, str]:
    """The labels GKE gives the nodes of a ContainerNodePool: its own, plus the declared ones."""
    config = pool["spec"]["nodeConfig"]
    labels = {placement.NODEPOOL_LABEL: pool["metadata"]["name"], **config.get("labels", {})}
    if config.get("spot"):
        labels[placement.SPOT_LABEL] = "true"
    for accelerator in config.get("guestAccelerator", []):
        labels[placement.ACCELERATOR_LABEL] = accelerator["type"]
    return labels


def gke_node_taints(pool: dict[str, Any]) -> set[tuple[str, str, str]]:
    """The taints the nodes carry: the declared ones plus the GPU taint GKE adds itself."""
    effects = {
        "NO_SCHEDULE": "NoSchedule",
        "PREFER_NO_SCHEDULE": "PreferNoSchedule",
        "NO_EXECUTE": "NoExecute",
    }
    config = pool["spec"]["nodeConfig"]
    taints = {(t["key"], t["value"], effects[t["effect"]]) for t in config.get("taint", [])}
    if config.get("guestAccelerator"):
        taints.add((placement.GPU_TAINT.key, placement.GPU_TAINT.value, placement.GPU_TAINT.effect))
    return taints


@pytest.mark.parametrize("pool", placement.ALL_POOLS, ids=lambda p: p.name)
def test_node_selectors_and_tolerations_match_the_node_pools(pool: placement.NodePool) -> None:
    manifest = one("overlays/gke", "ContainerNodePool", pool.name)
    labels = gke_node_labels(manifest)
    assert pool.node_selector.items() <= labels.items(), f"{pool.name}: selector would match no node"
    assert gke_node_taints(manifest) == {(t.key, t.value, t.effect) for t in pool.taints}
    config = manifest["spec"]["nodeConfig"]
    assert config["machineType"] == pool.machine_type
    assert config.get("spot", False) == pool.spot
    gpus = sum(a["count"] for a in config.get("guestAccelerator", []))
    assert gpus == pool.gpus_per_node
    scaling = manifest["spec"]["autoscaling"]
    assert scaling["totalMinNodeCount"] == 0 and manifest["spec"]["initialNodeCount"] == 0
    assert scaling["totalMaxNodeCount"] == pool.max_nodes
    assert config["workloadMetadataConfig"]["mode"] == "GKE_METADATA"


def test_other_pools_repel_each_steps_pods() -> None:
    """A task placed on one pool matches no other pool's nodes (its selector names its pool)."""
    manifests = {p.name: one("overlays/gke", "ContainerNodePool", p.name) for p in placement.ALL_POOLS}
    for pool in placement.ALL_POOLS:
        for other in placement.ALL_POOLS:
            if other is not pool:
                assert not pool.node_selector.items() <= gke_node_labels(manifests[other.name]).items()
    data_tolerations = {(t.key, t.value, t.effect) for t in placement.CPU_POOL.taints}
    for gpu_pool in placement.GPU_POOLS.values():
        assert not gke_node_taints(manifests[gpu_pool.name]) <= data_tolerations


@pytest.mark.parametrize("pool", placement.ALL_POOLS, ids=lambda p: p.name)
def test_node_labels_the_kubelet_accepts(pool: placement.NodePool) -> None:
    for key in pool.node_labels:
        domain = key.split("/")[0] if "/" in key else ""
        assert not (domain.endswith("kubernetes.io") or domain.endswith("k8s.io")), key


def executor_placements(compiled: dict[str, Any]) -> dict[str, tuple[dict, set]]:
    """Each executor's node selector and tolerations; asserts the labels kubectl asrflow needs."""
    platform = compiled["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    out = {}
    for name, spec in platform.items():
        labels = spec.get("podMetadata", {}).get("labels", {})
        assert labels.get(placement.PART_OF_LABEL) == placement.PART_OF, f"{name} lacks the part-of label"
        assert labels.get(placement.STEP_LABEL), f"{name} lacks the step label"
        selector = spec.get("nodeSelector", {}).get("labels", {})
        tolerations = {(t["key"], t.get("value", ""), t["effect"]) for t in spec.get("tolerations", [])}
        out[name] = (selector, tolerations)
    return out


@pytest.mark.parametrize("gpu", sorted(placement.GPU_POOLS))
def test_compiled_pipeline_places_every_task_on_a_declared_pool(gpu: str, tmp_path: Path) -> None:
    from pipelines.asr_training import compile_pipeline

    path = compile_pipeline(str(tmp_path / "p.yaml"), gpu=gpu)
    docs = list(yaml.safe_load_all(Path(path).read_text()))
    placements = executor_placements(docs[1])
    assert placements
    pools = {p.name: one("overlays/gke", "ContainerNodePool", p.name) for p in placement.ALL_POOLS}
    used = set()
    for executor, (selector, tolerations) in placements.items():
        matching = [name for name, m in pools.items() if selector.items() <= gke_node_labels(m).items()]
        assert len(matching) == 1, f"{executor}: node selector {selector} matches pools {matching}"
        assert gke_node_taints(pools[matching[0]]) <= tolerations, f"{executor} does not tolerate its pool"
        used.add(matching[0])
    assert used == {placement.CPU_POOL.name, placement.GPU_POOLS[gpu].name}


# --- RBAC ------------------------------------------------------------------------------------


def rules_as_set(role: dict[str, Any]) -> set[tuple[str, str, str, str]]:
    out = set()
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    for name in rule.get("resourceNames") or [""]:
                        out.add((group, resource, verb, name))
    return out


def with_name(triples: frozenset) -> set[tuple[str, str, str, str]]:
    return {(*t, "") if len(t) == 3 else tuple(t) for t in triples}


@pytest.mark.parametrize("name", local_kustomizations())
def test_runner_role_is_exactly_what_the_code_uses(name: str) -> None:
    role = one(name, "Role", placement.RUNNER_SERVICE_ACCOUNT)
    wanted = (
        with_name(trainjob.REQUIRED_RBAC)
        | with_name(kubectl_cluster.REQUIRED_RBAC)
        | with_name(placement.KFP_RUNTIME_RBAC)
    )
    assert rules_as_set(role) == wanted


@pytest.mark.parametrize("name", local_kustomizations())
def test_viewer_role_is_exactly_what_the_plugin_uses(name: str) -> None:
    role = one(name, "Role", placement.VIEWER_ROLE)
    assert rules_as_set(role) == with_name(kubectl_cluster.REQUIRED_RBAC)


@pytest.mark.parametrize("name", local_kustomizations())
def test_rbac_is_least_privilege(name: str) -> None:
    docs = built(name)
    assert not [o for o in docs if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    for role in objects(name, "Role"):
        for group, resource, verb, resource_name in rules_as_set(role):
            assert "*" not in (group, resource, verb), role["metadata"]["name"]
            assert resource != "pods/exec" and resource != "pods/attach"
            if resource == "secrets":  # only `get`, and only of a Secret the rule names
                assert verb == "get" and resource_name, f"{role['metadata']['name']}: secrets {verb}"
    binding = one(name, "RoleBinding", placement.RUNNER_SERVICE_ACCOUNT)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": placement.RUNNER_SERVICE_ACCOUNT,
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": placement.RUNNER_SERVICE_ACCOUNT, "namespace": placement.NAMESPACE}
    ]


# --- names, identity, secrets ----------------------------------------------------------------


@pytest.mark.parametrize("name", local_kustomizations())
def test_everything_namespaced_is_in_the_asrflow_namespace(name: str) -> None:
    assert one(name, "Namespace", placement.NAMESPACE)
    for obj in built(name):
        if obj["kind"] in CLUSTER_SCOPED_KINDS:
            assert "namespace" not in obj["metadata"]
        else:
            assert obj["metadata"]["namespace"] == placement.NAMESPACE, obj["metadata"]["name"]
        assert obj["metadata"]["labels"][placement.PART_OF_LABEL] == placement.PART_OF


@pytest.mark.parametrize("name", local_kustomizations())
def test_runner_uses_workload_identity_and_no_key_file(name: str) -> None:
    account = one(name, "ServiceAccount", placement.RUNNER_SERVICE_ACCOUNT)
    address = account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
    assert address.endswith(".iam.gserviceaccount.com")
    assert not objects(name, "Secret"), "no Secret (key file or token) is ever committed"


def test_gke_params_reach_every_object(tmp_path: Path) -> None:
    shutil.copytree(MANIFESTS, tmp_path / "manifests")
    overlay = tmp_path / "manifests" / "overlays" / "gke"
    (overlay / "params.env").write_text(
        "project=proj-7\nlocation=europe-west4-a\ncluster=speech\n"
        "gcpServiceAccount=runner@proj-7.iam.gserviceaccount.com\n"
    )
    docs = kustomize(overlay)
    assert not [o for o in docs if o["kind"] == "ConfigMap"], "params must stay local to kustomize"
    (account,) = [o for o in docs if o["kind"] == "ServiceAccount"]
    assert account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"] == (
        "runner@proj-7.iam.gserviceaccount.com"
    )
    pools = [o for o in docs if o["kind"] == "ContainerNodePool"]
    assert len(pools) == 3
    for pool in pools:
        assert pool["metadata"]["annotations"][nodepools.PROJECT_ANNOTATION] == "proj-7"
        assert pool["spec"]["location"] == "europe-west4-a"
        assert pool["spec"]["clusterRef"] == {
            "external": "projects/proj-7/locations/europe-west4-a/clusters/speech"
        }


def test_priority_class_is_used_by_the_training_runtime() -> None:
    priority = one("base", "PriorityClass", placement.PRIORITY_CLASS)
    assert priority["globalDefault"] is False and priority["value"] > 0
    runtime = one("base", "TrainingRuntime", placement.TRAINING_RUNTIME)
    (replicated,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    pod = replicated["template"]["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == placement.PRIORITY_CLASS
    assert pod["serviceAccountName"] == placement.RUNNER_SERVICE_ACCOUNT
    assert [c["name"] for c in pod["containers"]] == [trainjob.TRAINER_CONTAINER]
    assert replicated["name"] == trainjob.TRAINER_CONTAINER
    assert runtime["spec"]["mlPolicy"]["torch"] == {}


# --- the TrainJob's failure policy (JobSet v0.12.0, which Trainer v2.3.0's go.mod pins) -------

# jobset v0.12.0 pkg/webhooks/jobset_webhook.go:82-91 (the Job failure reasons a rule may
# name) and :416-418 (rule names); pkg/controllers/failure_policy.go:44-45 (no rule matched).
JOBSET_FAILURE_REASONS = {
    "BackoffLimitExceeded",
    "DeadlineExceeded",
    "FailedIndexes",
    "MaxFailedIndexesExceeded",
    "PodFailurePolicy",
}
JOBSET_RULE_NAME = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
JOBSET_DEFAULT_ACTION = "RestartJobSet"


def runtime_jobset_spec() -> dict[str, Any]:
    return one("base", "TrainingRuntime", placement.TRAINING_RUNTIME)["spec"]["template"]["spec"]


def job_failure_reason(job_spec: dict[str, Any], pod: dict[str, Any]) -> str:
    """The reason of the Failed condition Kubernetes' Job controller sets when this pod fails
    (https://kubernetes.io/docs/concepts/workloads/controllers/job/#pod-failure-policy): the
    first podFailurePolicy rule whose pod conditions match decides; FailJob fails the Job
    with reason PodFailurePolicy. Otherwise the failure counts against backoffLimit."""
    conditions = {(c["type"], c.get("status", "True")) for c in pod.get("conditions", [])}
    for rule in (job_spec.get("podFailurePolicy") or {}).get("rules", []):
        patterns = {(c["type"], c.get("status", "True")) for c in rule.get("onPodConditions", [])}
        if patterns & conditions:
            assert rule["action"] == "FailJob", rule
            return trainjob.POD_FAILURE_POLICY_REASON
    assert job_spec.get("backoffLimit") == 0, "with retries left the Job would not fail yet"
    return "BackoffLimitExceeded"


def jobset_action(policy: dict[str, Any], replicated_job: str, reason: str) -> str:
    """The action JobSet's controller takes for a failed Job (failure_policy.go:87-119: the
    first rule whose reasons and target replicated jobs match; empty lists match all)."""
    for rule in policy.get("rules", []):
        reasons = rule.get("onJobFailureReasons") or [reason]
        targets = rule.get("targetReplicatedJobs") or [replicated_job]
        if reason in reasons and replicated_job in targets and not rule.get("onJobFailureMessagePatterns"):
            return rule["action"]
    return JOBSET_DEFAULT_ACTION


def test_training_runtime_carries_the_failure_policy() -> None:
    spec = runtime_jobset_spec()
    policy = spec["failurePolicy"]
    assert policy["maxRestarts"] == trainjob.TRAINJOB_MAX_RESTARTS
    assert policy["rules"] == [
        {
            "name": trainjob.NODE_DISRUPTION_RULE,
            "action": "RestartJobSetAndIgnoreMaxRestarts",
            "onJobFailureReasons": [trainjob.POD_FAILURE_POLICY_REASON],
            "targetReplicatedJobs": [trainjob.TRAINER_CONTAINER],
        }
    ]
    (replicated,) = spec["replicatedJobs"]
    job = replicated["template"]["spec"]
    assert job["backoffLimit"] == 0
    assert job["podFailurePolicy"]["rules"] == [
        {"action": "FailJob", "onPodConditions": [{"type": trainjob.DISRUPTION_CONDITION, "status": "True"}]}
    ]
    # podFailurePolicy "cannot be used in combination with restartPolicy=OnFailure" (the CRD's
    # own description of the field), and JobSet's webhook defaults an empty one to OnFailure.
    assert job["template"]["spec"]["restartPolicy"] == "Never"


def test_failure_policy_passes_jobsets_webhook_checks() -> None:
    spec = runtime_jobset_spec()
    names = {r["name"] for r in spec["replicatedJobs"]}
    rules = spec["failurePolicy"]["rules"]
    assert len({r["name"] for r in rules}) == len(rules)
    for rule in rules:
        assert JOBSET_RULE_NAME.match(rule["name"]) and 1 <= len(rule["name"]) <= 128
        assert set(rule.get("onJobFailureReasons", [])) <= JOBSET_FAILURE_REASONS
        assert set(rule.get("targetReplicatedJobs", [])) <= names
        # RestartJob* actions need JobSet's RestartJob feature gate (jobset_webhook.go:440-444).
        assert rule["action"] not in ("RestartJob", "RestartJobAndIgnoreMaxRestarts")


def disrupted(reason: str) -> dict[str, Any]:
    """A failed pod as Kubernetes marks a disruption (pod disruption conditions)."""
    return {"conditions": [{"type": "DisruptionTarget", "status": "True", "reason": reason}]}


@pytest.mark.parametrize(
    ("pod", "action"),
    [
        # GKE reclaims the spot node: graceful node shutdown (TerminationByKubelet), or the
        # node is gone and PodGC deletes the pod (DeletionByPodGC).
        (disrupted("TerminationByKubelet"), "RestartJobSetAndIgnoreMaxRestarts"),
        (disrupted("DeletionByPodGC"), "RestartJobSetAndIgnoreMaxRestarts"),
        # The training process exits non-zero (a bug, NCCL, OOM): counted against maxRestarts.
        ({"conditions": [{"type": "Ready", "status": "False"}]}, "RestartJobSet"),
    ],
)
def test_a_reclaimed_node_restarts_uncounted_and_a_crash_counts(pod: dict[str, Any], action: str) -> None:
    spec = runtime_jobset_spec()
    (replicated,) = spec["replicatedJobs"]
    reason = job_failure_reason(replicated["template"]["spec"], pod)
    assert jobset_action(spec["failurePolicy"], replicated["name"], reason) == action


def test_hub_token_secret_is_a_template_without_a_value() -> None:
    path = MANIFESTS / "base" / "hf-token-secret.template.yaml"
    secret = yaml.safe_load(path.read_text())
    kubernetes_validate.validate(secret, K8S_VERSION, strict=True)
    assert secret["metadata"]["name"] == placement.HF_TOKEN_SECRET
    assert secret["metadata"]["namespace"] == placement.NAMESPACE
    assert secret["stringData"] == {placement.HF_TOKEN_KEY: ""}
    assert "data" not in secret
    resources = yaml.safe_load((MANIFESTS / "base" / "kustomization.yaml").read_text())["resources"]
    assert path.name not in resources


# --- the KFP install (remote, checked statically) --------------------------------------------


def remote_kustomization(name: str) -> dict[str, Any]:
    return yaml.safe_load((MANIFESTS / name / "kustomization.yaml").read_text())


@pytest.mark.parametrize("name", sorted(REMOTE_OVERLAYS))
def test_kfp_is_pinned_to_the_sdk_version(name: str) -> None:
    kustomization = remote_kustomization(name)
    (resource,) = kustomization["resources"]
    assert resource.startswith("github.com/kubeflow/pipelines/manifests/kustomize/")
    assert resource.endswith(f"?ref={placement.KFP_VERSION}")
    assert placement.KFP_VERSION == importlib.metadata.version("kfp")
    assert kustomization["namespace"] == placement.NAMESPACE


def test_kfp_runs_as_the_runner_and_reads_the_launcher_config_the_role_allows() -> None:
    kustomization = remote_kustomization("overlays/kfp")
    (patch,) = [p for p in kustomization["patches"] if p["target"]["name"] == "ml-pipeline"]
    env = {
        e["name"]: e["value"]
        for e in yaml.safe_load(patch["patch"])["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["DEFAULTPIPELINERUNNERSERVICEACCOUNT"] == placement.RUNNER_SERVICE_ACCOUNT
    assert env["OBJECTSTORECONFIG_HOST"] == f"seaweedfs.{placement.NAMESPACE}"
    launcher_targets = {
        t["select"]["name"]
        for r in kustomization["replacements"]
        for t in r["targets"]
        if t["select"]["kind"] == "ConfigMap"
    }
    readable = {name for _, resource, _, name in placement.KFP_RUNTIME_RBAC if resource == "configmaps"}
    assert readable <= launcher_targets


def test_kfp_default_object_store_is_reachable_with_the_one_secret_the_role_allows() -> None:
    """A minio:// pipeline root (KFP's own in-cluster store) works with KFP in namespace asrflow.

    With no provider configured, the KFP 2.17.0 launcher dials seaweedfs.kubeflow:9000
    (backend/src/v2/objectstore/config.go:29 via config/env.go:177-193), which does not exist
    here. The overlay names the store in our namespace in the kfp-launcher ConfigMap, in the
    shape config/s3.go:25-70 reads (sigs.k8s.io/yaml: an unknown key is silently ignored, so
    the keys are checked exactly), with the Secret the launcher then reads
    (objectstore/object_store.go:377-394): exactly the one the runner Role may get.
    """
    kustomization = remote_kustomization("overlays/kfp")
    (patch,) = [p for p in kustomization["patches"] if p["target"]["name"] == "kfp-launcher"]
    configmap = yaml.safe_load(patch["patch"])
    assert configmap["kind"] == "ConfigMap" and configmap["metadata"]["name"] == "kfp-launcher"
    assert set(configmap["data"]) == {"providers"}, "defaultPipelineRoot comes from params.env"
    providers = yaml.safe_load(configmap["data"]["providers"])
    assert set(providers) == {"minio"}
    assert set(providers["minio"]) == {"default"}
    store = providers["minio"]["default"]
    assert set(store) == {"endpoint", "region", "disableSSL", "credentials"}
    assert store["endpoint"] == f"seaweedfs.{placement.NAMESPACE}:9000"
    assert store["disableSSL"] is True
    assert store["credentials"]["fromEnv"] is False
    secret_ref = store["credentials"]["secretRef"]
    assert set(secret_ref) == {"secretName", "accessKeyKey", "secretKeyKey"}
    assert (secret_ref["accessKeyKey"], secret_ref["secretKeyKey"]) == ("accesskey", "secretkey")
    readable = {name for _, resource, verb, name in placement.KFP_RUNTIME_RBAC if resource == "secrets"}
    assert readable == {secret_ref["secretName"]}
    params = dict(
        line.split("=", 1)
        for line in (MANIFESTS / "overlays/kfp/params.env").read_text().splitlines()
        if line
    )
    assert params["pipelineRoot"].split("://")[0] in ("gs", "minio")
