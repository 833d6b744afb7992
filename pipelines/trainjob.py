"""Multi-node training: a Kubeflow Trainer ``TrainJob`` launched, watched and re-attached.

With ``num_nodes > 1`` the KFP train task does not train itself: it creates a ``TrainJob``
(``trainer.kubeflow.org/v1alpha1``) that runs the same ``asrflow train`` command under
``torchrun`` on every node of the spot GPU pool, waits for it and streams rank 0's log. The
job's name is derived from the KFP run, so a retried task finds the job it made before and
re-attaches instead of starting a second one. Objects are built from the
``kubeflow_trainer_api`` models, so a wrong field fails here rather than in the cluster.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from pipelines import placement

log = logging.getLogger("asrflow.trainjob")

GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
PLURAL = "trainjobs"
KIND = "TrainJob"
TRAINER_CONTAINER = "node"  # the trainer container and replicated job in our TrainingRuntime
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
COMPLETION_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
MANAGER = "asrflow.dev/pipeline"
NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
"""Where a pod finds its own namespace (the service account token's mount)."""

# The failure policy of manifests/base/training-runtime.yaml (declared here, checked equal
# there by tests/pipelines/test_manifests.py; the YAML's comment cites JobSet v0.12.0, which
# Trainer v2.3.0 uses). A reclaimed spot node fails its pod with the DisruptionTarget
# condition; the Job's podFailurePolicy turns that into a Job failure with reason
# PodFailurePolicy, and the JobSet restarts every node without counting it. Any other
# failure restarts the JobSet too, at most TRAINJOB_MAX_RESTARTS times; then the TrainJob
# fails and the KFP task's retries replace it (create_or_attach).
TRAINJOB_MAX_RESTARTS = 5
DISRUPTION_CONDITION = "DisruptionTarget"  # pod condition type (Kubernetes pod disruption conditions)
POD_FAILURE_POLICY_REASON = "PodFailurePolicy"  # Job Failed reason (batch/v1 JobReasonPodFailurePolicy)
NODE_DISRUPTION_RULE = "NodeDisruption"  # the JobSet failure policy rule's name

# (API group, resource, verb) this module needs; the Role in manifests/ grants exactly the
# union of these and the kubectl plugin's (a test checks it).
REQUIRED_RBAC = frozenset(
    {(GROUP, PLURAL, verb) for verb in ("create", "get", "list", "watch", "delete")}
    | {("", "pods", verb) for verb in ("get", "list", "watch")}
    | {("", "pods/log", "get")}
)


def pod_namespace() -> str:
    """The namespace this pod runs in: the KFP run's, where its TrainJob goes."""
    with open(NAMESPACE_FILE, encoding="utf-8") as stream:
        return stream.read().strip()


def trainjob_name(run_id: str, step: str = "train") -> str:
    """A DNS-1035 name that is the same for every retry of one run's step."""
    digest = hashlib.sha256(f"{run_id}/{step}".encode()).hexdigest()[:12]
    return f"asrflow-{step}-{digest}"


def build_trainjob(
    name: str,
    namespace: str,
    image: str,
    train_args: Sequence[str],
    num_nodes: int,
    gpu: str,
    run_id: str,
    dataset: str = "",
    env: dict[str, str] | None = None,
    service_account: str = placement.RUNNER_SERVICE_ACCOUNT,
) -> Any:
    """The TrainJob object (a ``kubeflow_trainer_api`` model) for ``asrflow train`` on N nodes.

    Args:
        name: the job name (use :func:`trainjob_name`).
        namespace: where the job runs (the KFP run's namespace).
        image: the training image.
        train_args: arguments after ``asrflow train`` (``--precision`` included: the pool's).
        num_nodes: nodes; each runs one process per GPU under torchrun.
        gpu: ``v100`` or ``a100`` (a key of :data:`placement.GPU_POOLS`).
        run_id: the KFP run, recorded as a label.
        dataset: the dataset, recorded as a label.
        env: extra environment for the trainer container.
        service_account: the Workload Identity service account the pods run as.
    """
    from kubeflow_trainer_api import models as m

    pool = placement.GPU_POOLS[gpu]
    labels = {
        placement.PART_OF_LABEL: placement.PART_OF,
        placement.RUN_LABEL: run_id,
        placement.STEP_LABEL: "train",
    }
    if dataset:
        labels[placement.DATASET_LABEL] = dataset
    quantity = m.IoK8sApimachineryPkgApiResourceQuantity
    gpus = quantity(str(pool.gpus_per_node))
    resources = m.IoK8sApiCoreV1ResourceRequirements(
        requests={
            "cpu": quantity(pool.cpu_request),
            "memory": quantity(pool.memory_request),
            placement.GPU_RESOURCE: gpus,
        },
        limits={placement.GPU_RESOURCE: gpus},
    )
    pod_patch = m.TrainerV1alpha1PodTemplatePatch(
        metadata=m.IoK8sApimachineryPkgApisMetaV1ObjectMeta(labels=labels),
        spec=m.TrainerV1alpha1PodSpecPatch(
            node_selector=pool.node_selector,
            tolerations=[
                m.IoK8sApiCoreV1Toleration(key=t.key, operator="Equal", value=t.value, effect=t.effect)
                for t in pool.taints
            ],
            service_account_name=service_account,
            volumes=[
                m.IoK8sApiCoreV1Volume(
                    name="dshm",
                    empty_dir=m.IoK8sApiCoreV1EmptyDirVolumeSource(
                        medium="Memory", size_limit=quantity(placement.SHM_SIZE)
                    ),
                )
            ],
            containers=[
                m.TrainerV1alpha1ContainerPatch(
                    name=TRAINER_CONTAINER,
                    volume_mounts=[m.IoK8sApiCoreV1VolumeMount(name="dshm", mount_path="/dev/shm")],
                )
            ],
        ),
    )
    patch = m.TrainerV1alpha1RuntimePatch(
        manager=MANAGER,
        training_runtime_spec=m.TrainerV1alpha1TrainingRuntimeSpecPatch(
            template=m.TrainerV1alpha1JobSetTemplatePatch(
                spec=m.TrainerV1alpha1JobSetSpecPatch(
                    replicated_jobs=[
                        m.TrainerV1alpha1ReplicatedJobPatch(
                            name=TRAINER_CONTAINER,
                            template=m.TrainerV1alpha1JobTemplatePatch(
                                spec=m.TrainerV1alpha1JobSpecPatch(template=pod_patch)
                            ),
                        )
                    ]
                )
            )
        ),
    )
    return m.TrainerV1alpha1TrainJob(
        api_version=f"{GROUP}/{VERSION}",
        kind=KIND,
        metadata=m.IoK8sApimachineryPkgApisMetaV1ObjectMeta(name=name, namespace=namespace, labels=labels),
        spec=m.TrainerV1alpha1TrainJobSpec(
            runtime_ref=m.TrainerV1alpha1RuntimeRef(
                name=placement.TRAINING_RUNTIME, kind="TrainingRuntime", api_group=GROUP
            ),
            trainer=m.TrainerV1alpha1Trainer(
                image=image,
                # torchrun reads --nnodes, --node-rank, --master-addr... from the PET_*
                # variables the torch runtime sets on every node.
                command=["torchrun", "--no-python", "asrflow", "train"],
                args=list(train_args),
                num_nodes=num_nodes,
                num_proc_per_node=pool.gpus_per_node,
                resources_per_node=resources,
                env=[m.IoK8sApiCoreV1EnvVar(name=k, value=v) for k, v in sorted((env or {}).items())],
            ),
            runtime_patches=[patch],
        ),
    )


def job_state(job: dict[str, Any]) -> str:
    """``Complete``, ``Failed`` or ``Running`` from a TrainJob's status conditions."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("status") == "True" and condition.get("type") in ("Complete", "Failed"):
            return condition["type"]
    return "Running"


def _get(api: Any, name: str, namespace: str) -> dict[str, Any] | None:
    from kubernetes.client.exceptions import ApiException

    try:
        return api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def create_or_attach(api: Any, job: Any, poll_s: float = 5.0) -> tuple[dict[str, Any], bool]:
    """Create the TrainJob, or return the existing one of that name; says which (attached).

    A job an earlier attempt left Failed is deleted and made anew: training resumes from the
    checkpoints in the run directory, so nothing done is lost.
    """
    body = job.to_dict()
    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    existing = _get(api, name, namespace)
    if existing is not None and job_state(existing) != "Failed":
        log.info("re-attaching to TrainJob %s/%s made by an earlier attempt", namespace, name)
        return existing, True
    if existing is not None:
        log.info("TrainJob %s/%s failed in an earlier attempt: replacing it", namespace, name)
        api.delete_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, propagation_policy="Foreground"
        )
        while _get(api, name, namespace) is not None:
            time.sleep(poll_s)
    created = api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    log.info("created TrainJob %s/%s (%d nodes)", namespace, name, body["spec"]["trainer"]["numNodes"])
    return created, False


def wait_for(
    api: Any,
    name: str,
    namespace: str,
    poll_s: float = 30.0,
    on_poll: Callable[[dict[str, Any]], None] | None = None,
) -> str:
    """Poll until the TrainJob completes or fails; returns the final state."""
    while True:
        job = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        state = job_state(job)
        if on_poll:
            on_poll(job)
        if state != "Running":
            return state
        time.sleep(poll_s)


def stream_rank0_logs(core: Any, name: str, namespace: str, since_s: int = 60) -> None:
    """Copy the newest lines of rank 0's log into this task's log (best effort)."""
    pods = core.list_namespaced_pod(
        namespace, label_selector=f"{JOBSET_NAME_LABEL}={name},{COMPLETION_INDEX_LABEL}=0"
    ).items
    if not pods:
        return
    pod = max(pods, key=lambda p: p.metadata.creation_timestamp)
    text = core.read_namespaced_pod_log(pod.metadata.name, namespace, since_seconds=since_s)
    for line in text.splitlines():
        log.info("[%s] %s", pod.metadata.name, line)


def run_trainjob(job: Any, poll_s: float = 30.0) -> None:
    """Create or re-attach, wait, stream logs; raise when the job failed (KFP retries the task)."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    api = client.CustomObjectsApi()
    core = client.CoreV1Api()
    body, _ = create_or_attach(api, job)
    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    state = wait_for(
        api, name, namespace, poll_s, on_poll=lambda _: stream_rank0_logs(core, name, namespace, int(poll_s))
    )
    if state != "Complete":
        raise RuntimeError(f"TrainJob {namespace}/{name} ended {state}")
    log.info("TrainJob %s/%s complete", namespace, name)
