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
        cpu_request: CPU a task asks for on this pool; with GKE's system pods it must fit
            the node's allocatable CPU (:func:`room_for_tasks`; tests/pipelines/test_allocatable.py).
        memory_request: memory a task asks for on this pool, /dev/shm included (a memory
            emptyDir is charged to the pod's memory); must fit :func:`room_for_tasks` too.
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


# Data steps (download, write-shards, estimate-buckets, ...) run one to a node and use its
# cores (write-shards starts os.cpu_count() processes). 4 x n2-standard-8 is 32 N2 vCPUs at
# most: the former 8 x n2-standard-16 needed 128, more than a new project's regional N2_CPUS
# quota grants (see yours with `gcloud compute regions describe REGION`); raise max_nodes
# with your quota for more downloads and shard groups at once.
CPU_POOL = NodePool(
    name="asrflow-cpu",
    machine_type="n2-standard-8",
    spot=False,
    accelerator=None,
    gpus_per_node=0,
    precision="32",
    cpu_request="6",
    memory_request="24Gi",
    max_nodes=4,
)
# One V100 (16 GB) a node. NeMo's Conformer recipes load audio in 4 training and 2
# validation dataloader workers (components/train/conf/base/common.yaml: num_workers)
# that decode and augment in RAM and pass batches through /dev/shm, next to the trainer
# process: an n1-standard-8 (30 GB) leaves under 24 GiB to pods after GKE's share, too
# little for that. n1-highmem-8 (52 GB) costs little more than n1-standard-8 beside the V100
# itself, and is within what a node with one V100 may have (12 vCPUs, 78 GB:
# https://cloud.google.com/compute/docs/gpus#v100-gpus).
V100_POOL = NodePool(
    name="asrflow-v100-spot",
    machine_type="n1-highmem-8",
    spot=True,
    accelerator="nvidia-tesla-v100",
    gpus_per_node=1,
    precision="16-mixed",  # V100 has no bf16
    cpu_request="6",
    memory_request="40Gi",
    max_nodes=4,
)
# a2-highgpu-1g: one A100 40GB, a fixed 12 vCPUs / 85 GB.
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

# /dev/shm for dataloader workers, a memory emptyDir. Its pages are charged to the pod's
# memory, so it is budgeted inside the GPU pools' memory_request (a test checks it).
SHM_SIZE = "16Gi"


# --- node sizes: what a pool's nodes leave for asrflow's pods --------------------------------
#
# tests/pipelines/test_allocatable.py checks every pod asrflow makes (each KFP task of the
# compiled pipeline, and the TrainJob's) against room_for_tasks(its pool); `python -m
# pipelines.nodepools` writes these figures into manifests/overlays/gke/nodepools.yaml.


@dataclasses.dataclass(frozen=True)
class Resources:
    """CPU (cores) and memory (GiB, 2**30 bytes)."""

    cpu: float
    memory_gib: float

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpu + other.cpu, self.memory_gib + other.memory_gib)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.cpu - other.cpu, self.memory_gib - other.memory_gib)

    def fits_in(self, other: Resources) -> bool:
        return self.cpu <= other.cpu and self.memory_gib <= other.memory_gib


# vCPUs and memory of the machine types the pools use. Compute Engine's tables say "GB" and
# mean GiB: the kubelet of an n1-standard-8 ("30 GB") reports 29.387Gi, more than 30e9 bytes
# (27.9 GiB) could hold (2i2c-org/infrastructure,
# deployer/commands/generate/resource_allocation/instance_capacities.yaml).
# N1 standard 3.75 GB a vCPU, N1 highmem 6.5, N2 standard 4:
# https://cloud.google.com/compute/docs/general-purpose-machines ; a2-highgpu-1g 12 vCPUs,
# 85 GB: https://cloud.google.com/compute/docs/accelerator-optimized-machines
MACHINE_TYPES = {
    "n1-standard-8": Resources(cpu=8, memory_gib=30),
    "n1-highmem-8": Resources(cpu=8, memory_gib=52),
    "n2-standard-8": Resources(cpu=8, memory_gib=32),
    "n2-standard-16": Resources(cpu=16, memory_gib=64),
    "a2-highgpu-1g": Resources(cpu=12, memory_gib=85),
}

# The memory the kubelet reports as capacity is what the guest kernel leaves: 29.387Gi of an
# n1-standard-8's 30 (2.0% less), 58.87Gi of an n1-standard-16's 60 (1.9%), 7.276Gi of an
# n1-standard-2's 7.5 (3.0%) (the 2i2c file above). GKE reserves its share of that capacity.
GUEST_KERNEL_MEMORY_FRACTION = 0.03

# GKE's reservations, https://cloud.google.com/kubernetes-engine/docs/concepts/plan-node-sizes
# ("Memory and CPU reservations"): (size of the tier, fraction reserved), in GiB and cores.
GKE_MEMORY_TIERS = ((4, 0.25), (4, 0.20), (8, 0.10), (112, 0.06), (float("inf"), 0.02))
GKE_SMALL_NODE_MEMORY_GIB = 255 / 1024  # reserved instead on machines with < 1 GiB
GKE_EVICTION_THRESHOLD_GIB = 100 / 1024
GKE_CPU_TIERS = ((1, 0.06), (1, 0.01), (2, 0.005), (float("inf"), 0.0025))

# Requests of the pods GKE itself runs on every node (DaemonSets, and kube-proxy as a static
# pod); they come out of allocatable before ours. Seen on GKE 1.27-1.29 nodes (kubectl
# describe node): kube-proxy 100m (2i2c-org/infrastructure#4072); fluentbit-gke 105m / 230Mi,
# gke-metadata-server (Workload Identity) 100m / 100Mi, ip-masq-agent 10m / 16Mi
# (cryptnono/cryptnono#34); all DaemonSets of a node together (calico-node, fluentbit-gke,
# gke-metadata-server, gke-metrics-agent, ip-masq-agent, netd, pdcsi-node and two small ones
# of 2i2c's own) 344m / 596Mi (2i2c-org/infrastructure,
# deployer/commands/generate/resource_allocation/daemonset_requests.yaml). With kube-proxy,
# 444m / 596Mi; rounded up for GKE versions that add an agent.
GKE_SYSTEM_PODS = Resources(cpu=0.5, memory_gib=1.0)
# GPU nodes add the NVIDIA device plugin (50m / 20Mi:
# GoogleCloudPlatform/container-engine-accelerators, cmd/nvidia_gpu/device-plugin.yaml) and
# the driver installer (init containers of 150m: nvidia-driver-installer/cos/
# daemonset-preloaded.yaml; a pod's request is the larger of its init containers' and the
# sum of its containers'); rounded up for GKE's GPU metrics agents.
GKE_GPU_SYSTEM_PODS = Resources(cpu=0.3, memory_gib=0.25)


def _tiered(amount: float, tiers: tuple[tuple[float, float], ...]) -> float:
    reserved = 0.0
    for size, fraction in tiers:
        part = min(amount, size)
        reserved += part * fraction
        amount -= part
        if amount <= 0:
            break
    return reserved


def gke_reserved(capacity: Resources) -> Resources:
    """What GKE keeps of a node of this capacity (kubelet and system reservations, eviction)."""
    memory = capacity.memory_gib
    reserved_memory = GKE_SMALL_NODE_MEMORY_GIB if memory < 1 else _tiered(memory, GKE_MEMORY_TIERS)
    return Resources(_tiered(capacity.cpu, GKE_CPU_TIERS), reserved_memory + GKE_EVICTION_THRESHOLD_GIB)


def node_capacity(machine_type: str) -> Resources:
    """The node's capacity as the kubelet reports it (the guest kernel's share taken off)."""
    machine = MACHINE_TYPES[machine_type]
    return Resources(machine.cpu, machine.memory_gib * (1 - GUEST_KERNEL_MEMORY_FRACTION))


def node_allocatable(machine_type: str) -> Resources:
    """A node's allocatable CPU and memory by GKE's documented formula."""
    capacity = node_capacity(machine_type)
    return capacity - gke_reserved(capacity)


def system_pods(pool: NodePool) -> Resources:
    """What GKE's own pods request on each node of the pool."""
    return GKE_SYSTEM_PODS + (GKE_GPU_SYSTEM_PODS if pool.accelerator else Resources(0, 0))


def room_for_tasks(pool: NodePool) -> Resources:
    """What a node of the pool has left for asrflow's pods: allocatable less GKE's pods."""
    return node_allocatable(pool.machine_type) - system_pods(pool)


def parse_quantity(value: str | float) -> float:
    """A Kubernetes quantity (``"24Gi"``, ``"500m"``, ``"6"``) in base units (bytes, cores),
    parsed by the kubernetes client's own parser."""
    from kubernetes.utils import parse_quantity as kubernetes_quantity

    return float(kubernetes_quantity(value))


def resources_of(cpu: str | float, memory: str | float) -> Resources:
    """Resources from Kubernetes quantities (``"6"``, ``"24Gi"``)."""
    return Resources(parse_quantity(cpu), parse_quantity(memory) / 2**30)


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
# ConfigMap (pipeline root, object store providers: backend/src/v2/config/env.go:37,72-83),
# and the Argo executor reports outputs as WorkflowTaskResults. (API group, resource, verb,
# resource name or "" for any.)
# The one Secret: with a minio:// pipeline root (KFP's default store, SeaweedFS, when the
# kfp-launcher ConfigMap names no other root) the launcher reads the store's keys from the
# Secret mlpipeline-minio-artifact in the run's namespace (config/env.go:41-44,177-193 and the
# minio provider that manifests/overlays/kfp declares, config/s3.go:122-127; read in
# objectstore/object_store.go:297-316 -> getS3BucketCredential 377-394, a Secrets().Get by
# name). A gs:// root uses Workload Identity and reads no Secret (config/gcs.go:70-76,
# object_store.go:275-277).
KFP_RUNTIME_RBAC = frozenset(
    {
        ("argoproj.io", "workflows", "get", ""),
        ("argoproj.io", "workflowtaskresults", "create", ""),
        ("argoproj.io", "workflowtaskresults", "patch", ""),
        ("", "pods", "get", ""),
        ("", "configmaps", "get", "kfp-launcher"),
        ("", "secrets", "get", "mlpipeline-minio-artifact"),
    }
)


# --- applying placement to KFP tasks -----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How KFP retries a task, in the terms Argo Workflows v4.0.5 applies them.

    The KFP 2.17.0 backend hands these to Argo as string parameters
    (backend/src/v2/compiler/argocompiler/container.go:614-649, ``getTaskRetryParametersWithValues``:
    durations as whole seconds, the factor through Go's ``%v``) and builds the retryStrategy
    with the factor as ``intstr.String`` (container.go:667-685). Argo then reads:

    - the factor with ``intstr.Int32`` (workflow/controller/operator.go:1055;
      util/intstr/parametrizable.go:12-24, ``strconv.Atoi``): it must be a whole number, or
      the node fails with "cannot be resolved to an int" instead of being retried;
    - the wait before retry n as ``backoff * factor**(n-1)`` (operator.go:1059-1068);
    - ``maxDuration`` from the START of the first attempt (operator.go:1026-1041): past it no
      retry starts, and every retried pod gets that instant as its deadline
      (operator.go:1095, workflowpod.go:665-674). So the window must outlast the whole step.

    Attributes:
        retries: retries after the first attempt (Argo's ``limit``).
        backoff_s: seconds before the first retry.
        factor: whole-number growth of the wait per retry (1: a constant wait).
        window_s: seconds from the first attempt's start during which retries may start and run.
    """

    retries: int
    backoff_s: int
    factor: int
    window_s: int

    def apply(self, task) -> None:
        task.set_retry(
            self.retries,
            backoff_duration=f"{self.backoff_s}s",
            backoff_factor=self.factor,
            backoff_max_duration=f"{self.window_s}s",
        )


# Which failed attempts Argo retries. KFP 2.17 compiles retryStrategy without retryPolicy
# (container.go:667-685), so the Argo controller's templateDefaults decide: Argo merges them
# into every template field by field (workflow/controller/operator.go:4447-4489, a strategic
# merge). KFP 2.17's own install sets `retryPolicy: OnError`
# (manifests/kustomize/third-party/argo/base/workflow-controller-configmap-patch.yaml:50-59),
# under which a pod that FAILED is never retried (operator.go:1100-1125): a spot preemption
# (SIGTERM, exit 143) would end the run. manifests/overlays/kfp sets this instead: retry a pod
# that exited non-zero or was lost (Error: deleted with its node), not a DAG that failed
# because a task in it did (exit code -1, operator.go:2061-2065). Checked against Argo's rules in
# tests/pipelines/test_retry_policy.py.
ARGO_RETRY_POLICY = "Always"
ARGO_RETRY_EXPRESSION = (
    'lastRetry.status == "Error" or (lastRetry.status == "Failed" and asInt(lastRetry.exitCode) > 0)'
)


DAY_S = 24 * 3600
# Training on The People's Speech can run for days; a preempted step must still be retried
# on day 13. Whatever is still running at the end of the window is stopped by Argo.
RETRY_WINDOW_S = 14 * DAY_S
DATA_RETRY = RetryPolicy(retries=3, backoff_s=120, factor=2, window_s=RETRY_WINDOW_S)
# A spot GPU is reclaimed with 30 s notice and comes back within minutes; each retry resumes
# from the newest checkpoint, so retry often and soon: a constant 2-minute wait.
TRAIN_RETRY = RetryPolicy(retries=20, backoff_s=120, factor=1, window_s=RETRY_WINDOW_S)
EVALUATE_RETRY = RetryPolicy(retries=5, backoff_s=120, factor=1, window_s=RETRY_WINDOW_S)


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
    DATA_RETRY.apply(task)
    task.set_caching_options(cache)
    label_task(task, step, dataset)
    return task


# The TrainJob launcher only creates the job, polls it and copies rank 0's log lines: a
# fraction of a core and the memory of a Python process with the kubernetes client (the
# card and curves it writes at the end read the run's TensorBoard events: some 100 MB).
LAUNCHER_CPU = "250m"
LAUNCHER_MEMORY = "1Gi"


def place_launcher_step(task, step: str, dataset: str = ""):
    """The task that launches and watches a multi-node TrainJob: CPU pool, small, long-lived.

    It lives as long as training, so it has training's retry budget and window (a retried
    launcher re-attaches to the TrainJob of the same name), and it is never cached.
    """
    pool = CPU_POOL
    _select(task, pool)
    _tolerate(task, pool)
    task.set_cpu_request(LAUNCHER_CPU).set_memory_request(LAUNCHER_MEMORY)
    TRAIN_RETRY.apply(task)
    task.set_caching_options(False)
    label_task(task, step, dataset)
    return task


def place_gpu_step(task, step: str, gpu: str, gpus: int, dataset: str = "", retry: RetryPolicy = TRAIN_RETRY):
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
    retry.apply(task)
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
