"""GKE placement: which node pool each step runs on, and how it gets there.

The one source of truth for node pool names, labels, taints, machine types and GPUs. The
pipeline applies it to tasks; ``manifests/`` declares the pools (a test cross-checks both).
Standard library only: the pipeline compiler imports this module.
"""

from __future__ import annotations

import dataclasses

NODEPOOL_LABEL = "cloud.google.com/gke-nodepool"
SPOT_LABEL = "cloud.google.com/gke-spot"
ACCELERATOR_LABEL = "cloud.google.com/gke-accelerator"
GPU_RESOURCE = "nvidia.com/gpu"


@dataclasses.dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str = "NoSchedule"


SPOT_TAINT = Taint(SPOT_LABEL, "true")
GPU_TAINT = Taint(GPU_RESOURCE, "present")  # GKE puts this on every GPU node


@dataclasses.dataclass(frozen=True)
class NodePool:
    """A GKE node pool as the pipeline sees it.

    Attributes:
        name: the node pool name (GKE labels its nodes ``cloud.google.com/gke-nodepool``).
        machine_type: the Compute Engine machine type.
        spot: Spot VMs (preemptible; cheaper; GKE labels them ``cloud.google.com/gke-spot``).
        accelerator: GPU type (``cloud.google.com/gke-accelerator``), or None for CPU.
        gpus_per_node: GPUs attached to each node.
        precision: the Lightning precision training uses on this GPU.
        cpu_request: CPU a task asks for on this pool (leaves room for system pods).
        memory_request: memory a task asks for on this pool.
        max_nodes: the autoscaler's upper bound (it scales from 0).
    """

    name: str
    machine_type: str
    spot: bool
    accelerator: str | None
    gpus_per_node: int
    precision: str
    cpu_request: str
    memory_request: str
    max_nodes: int

    @property
    def node_selector(self) -> dict[str, str]:
        selector = {NODEPOOL_LABEL: self.name}
        if self.spot:
            selector[SPOT_LABEL] = "true"
        if self.accelerator:
            selector[ACCELERATOR_LABEL] = self.accelerator
        return selector

    @property
    def taints(self) -> tuple[Taint, ...]:
        """Taints the pool carries; tasks placed on it tolerate exactly these."""
        taints = []
        if self.spot:
            taints.append(SPOT_TAINT)
        if self.accelerator:
            taints.append(GPU_TAINT)
        return tuple(taints)

    @property
    def node_labels(self) -> dict[str, str]:
        """Labels the pool's manifest sets itself (GKE adds the nodepool/spot/GPU ones).

        Never a ``kubernetes.io`` or ``k8s.io`` key (``app.kubernetes.io/…`` included): the
        kubelet refuses to start with such a ``--node-labels`` entry, so the nodes never join.
        """
        return {"asrflow.dev/pool": self.name}


CPU_POOL = NodePool(
    name="asrflow-cpu",
    machine_type="n2-standard-16",
    spot=False,
    accelerator=None,
    gpus_per_node=0,
    precision="32",
    cpu_request="6",
    memory_request="24Gi",
    max_nodes=8,
)
V100_POOL = NodePool(
    name="asrflow-v100-spot",
    machine_type="n1-standard-8",
    spot=True,
    accelerator="nvidia-tesla-v100",
    gpus_per_node=1,
    precision="16-mixed",  # V100 has no bf16
    cpu_request="6",
    memory_request="40Gi",
    max_nodes=4,
)
A100_POOL = NodePool(
    name="asrflow-a100-spot",
    machine_type="a2-highgpu-1g",
    spot=True,
    accelerator="nvidia-tesla-a100",
    gpus_per_node=1,
    precision="bf16-mixed",
    cpu_request="10",
    memory_request="70Gi",
    max_nodes=4,
)
GPU_POOLS = {"v100": V100_POOL, "a100": A100_POOL}
ALL_POOLS = (CPU_POOL, V100_POOL, A100_POOL)

SHM_SIZE = "16Gi"  # /dev/shm for dataloader workers, a memory emptyDir

PART_OF_LABEL = "app.kubernetes.io/part-of"
PART_OF = "asrflow"
RUN_LABEL = "asrflow.dev/run"
STEP_LABEL = "asrflow.dev/step"
DATASET_LABEL = "asrflow.dev/dataset"

HF_TOKEN_SECRET = "asrflow-hf-token"  # Kubernetes Secret holding the hub token
HF_TOKEN_KEY = "HF_TOKEN"

# --- the cluster side: manifests/ declares these objects (tests cross-check the names) -----

NAMESPACE = "asrflow"  # KFP is installed here too, so every run's pods land in it
RUNNER_SERVICE_ACCOUNT = "asrflow-runner"  # runs execute as it (Workload Identity, least RBAC)
VIEWER_ROLE = "asrflow-viewer"  # what `kubectl asrflow` needs; bind people to it
PRIORITY_CLASS = "asrflow-training"  # the TrainJob pods' priority (TRAINING_RUNTIME sets it)
TRAINING_RUNTIME = "asrflow-torch-distributed"  # a namespaced Kubeflow Trainer TrainingRuntime
KFP_VERSION = "2.17.0"  # the KFP backend manifests/overlays/kfp installs (same as the SDK)
TRAINER_VERSION = "v2.3.0"  # the Kubeflow Trainer release (TrainJob v1alpha1)
KFP_RUN_ID_LABEL = "pipeline/runid"  # the KFP v2 backend labels every pod of a run with its id

# What KFP itself does with the run's service account, read from the KFP 2.17.0 sources: the
# driver reads the Workflow and its own pod, the launcher reads its pod and the kfp-launcher
# ConfigMap (pipeline root), and the Argo executor reports outputs as WorkflowTaskResults.
# (API group, resource, verb, resource name or "" for any.) With a gs:// pipeline root the
# launcher uses Workload Identity, so no Secret is read.
KFP_RUNTIME_RBAC = frozenset(
    {
        ("argoproj.io", "workflows", "get", ""),
        ("argoproj.io", "workflowtaskresults", "create", ""),
        ("argoproj.io", "workflowtaskresults", "patch", ""),
        ("", "pods", "get", ""),
        ("", "configmaps", "get", "kfp-launcher"),
    }
)


# --- applying placement to KFP tasks -----------------------------------------------------

DATA_RETRIES = 3
TRAIN_RETRIES = 10  # budget for spot preemptions: a restarted train step resumes, so each costs little
BACKOFF = "120s"
BACKOFF_FACTOR = 2.0
MAX_BACKOFF = "1800s"


def label_task(task, step: str, dataset: str = "") -> None:
    """Labels that let ``kubectl get pods -l`` and ``kubectl asrflow`` find a step's pods."""
    from kfp import kubernetes

    kubernetes.add_pod_label(task, PART_OF_LABEL, PART_OF)
    kubernetes.add_pod_label(task, STEP_LABEL, step)
    if dataset:
        kubernetes.add_pod_label(task, DATASET_LABEL, dataset)


def _tolerate(task, pool: NodePool) -> None:
    from kfp import kubernetes

    for taint in pool.taints:
        kubernetes.add_toleration(
            task, key=taint.key, operator="Equal", value=taint.value, effect=taint.effect
        )


def _select(task, pool: NodePool) -> None:
    from kfp import kubernetes

    for key, value in pool.node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)


def place_data_step(task, step: str, dataset: str = "", cache: bool = True):
    """A data step: the CPU pool, retries with backoff, cached (its inputs name the revision)."""
    pool = CPU_POOL
    _select(task, pool)
    _tolerate(task, pool)
    task.set_cpu_request(pool.cpu_request).set_memory_request(pool.memory_request)
    task.set_retry(
        DATA_RETRIES,
        backoff_duration=BACKOFF,
        backoff_factor=BACKOFF_FACTOR,
        backoff_max_duration=MAX_BACKOFF,
    )
    task.set_caching_options(cache)
    label_task(task, step, dataset)
    return task


def place_gpu_step(task, step: str, gpu: str, gpus: int, dataset: str = "", retries: int = TRAIN_RETRIES):
    """A GPU step on a spot pool: GPUs, taints tolerated, /dev/shm, a preemption retry budget.

    Never cached: a rerun of training must resume from its checkpoints, not reuse an old
    result, and evaluation must score the model this run made.
    """
    from kfp import kubernetes

    pool = GPU_POOLS[gpu]
    _select(task, pool)
    _tolerate(task, pool)
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(gpus)
    task.set_cpu_request(pool.cpu_request).set_memory_request(pool.memory_request)
    kubernetes.empty_dir_mount(
        task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=SHM_SIZE
    )
    task.set_retry(retries, backoff_duration="60s", backoff_factor=1.5, backoff_max_duration="600s")
    task.set_caching_options(False)
    label_task(task, step, dataset)
    return task


def use_hub_token(task):
    """``HF_TOKEN`` from the Kubernetes Secret (optional: public datasets need none)."""
    from kfp import kubernetes

    kubernetes.use_secret_as_env(
        task, secret_name=HF_TOKEN_SECRET, secret_key_to_env={HF_TOKEN_KEY: "HF_TOKEN"}, optional=True
    )
    return task
