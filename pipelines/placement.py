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
        """Labels the pool's manifest sets itself (GKE adds the nodepool/spot/GPU ones)."""
        return {"app.kubernetes.io/part-of": "asrflow", "asrflow.dev/pool": self.name}


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
