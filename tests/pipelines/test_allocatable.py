"""Every pod asrflow makes fits a node of the pool it is placed on.

A pod the scheduler cannot place on any node of its pool never starts, and the cluster
autoscaler will not add a node for it. So each pod's requests are computed the way the
systems that make the pod do (the compiled pipeline for KFP 2.17.0 and Argo v4.0.5; the
TrainJob for Kubeflow Trainer v2.3.0) and checked against what a node of its pool leaves:
GKE's documented allocatable (pipelines.placement.node_allocatable) less the requests of
GKE's own pods on every node (placement.system_pods). A memory-medium emptyDir (/dev/shm) is
charged to the pod's memory, so it must lie within the pod's memory request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines import placement, trainjob
from pipelines.placement import Resources

REPO = Path(__file__).resolve().parents[2]
GIB = 2**30
MIB = 2**20

# What KFP 2.17.0 adds to each task's pod (backend/src/v2/compiler/argocompiler):
# - the executor pod gets an init container `kfp-launcher` (container.go:512-525) with
#   launcherResources (argo.go:570-578): requests cpu 0.1, and a memory limit of 256Mi with
#   no memory request, so Kubernetes sets the request to the limit;
# - the driver runs as a pod of its own before the task, with driverResources (argo.go:555-564:
#   requests cpu 0.1, memory 64Mi; container.go:278) and no node selector or toleration
#   (the compiler sets none), so it may land on any untainted node: the CPU pool's included.
# Argo v4.0.5 adds an `init` container and a `wait` sidecar with the workflow controller's
# executor resources (workflow/controller/workflowpod.go:852-858); KFP's controller config
# sets none (KFP 2.17.0 manifests/kustomize/third-party/argo/base/
# workflow-controller-configmap-patch.yaml:39-49), so they request nothing.
KFP_LAUNCHER_INIT = Resources(cpu=0.1, memory_gib=256 * MIB / GIB)
KFP_DRIVER_POD = Resources(cpu=0.1, memory_gib=64 * MIB / GIB)
ARGO_WAIT = Resources(cpu=0, memory_gib=0)

# Kubelet-reported capacity and allocatable of real GKE nodes (kubectl get node), measured by
# 2i2c-org/infrastructure (deployer/commands/generate/resource_allocation/
# instance_capacities.yaml): machine type -> (vCPUs, machine GiB, capacity GiB, allocatable
# CPU, allocatable GiB).
MEASURED = {
    "n1-standard-8": (8, 30, 29.387, 7.91, 25.888),
    "n1-standard-16": (16, 60, 58.87, 15.89, 53.571),
    "n1-highmem-4": (4, 26, 25.451, 3.92, 22.192),
    "n2-highmem-8": (8, 64, 62.809, 7.91, 57.27),
}


def pod_requests(containers: list[Resources], init_containers: list[Resources]) -> Resources:
    """A pod's effective request: the larger of its containers' sum and any init container's
    (https://kubernetes.io/docs/concepts/workloads/pods/init-containers/#resource-sharing-within-containers)."""
    total = Resources(sum(c.cpu for c in containers), sum(c.memory_gib for c in containers))
    for init in init_containers:
        total = Resources(max(total.cpu, init.cpu), max(total.memory_gib, init.memory_gib))
    return total


def pool_named(name: str) -> placement.NodePool:
    (pool,) = [p for p in placement.ALL_POOLS if p.name == name]
    return pool


# --- the model of a node ------------------------------------------------------------------


def test_every_pool_machine_type_is_in_the_table() -> None:
    for pool in placement.ALL_POOLS:
        assert pool.machine_type in placement.MACHINE_TYPES, pool.machine_type


@pytest.mark.parametrize("machine", sorted(MEASURED))
def test_gke_formula_reproduces_measured_allocatable(machine: str) -> None:
    """From a node's measured capacity, the documented formula gives its measured allocatable."""
    vcpus, _, capacity_gib, allocatable_cpu, allocatable_gib = MEASURED[machine]
    capacity = Resources(vcpus, capacity_gib)
    allocatable = capacity - placement.gke_reserved(capacity)
    assert allocatable.cpu == pytest.approx(allocatable_cpu, abs=1e-9)
    assert allocatable.memory_gib == pytest.approx(allocatable_gib, abs=0.05)


@pytest.mark.parametrize("machine", sorted(MEASURED))
def test_modelled_allocatable_is_at_most_the_measured(machine: str) -> None:
    """From the machine type alone (guest kernel share taken off first), never more than real."""
    vcpus, machine_gib, _, allocatable_cpu, allocatable_gib = MEASURED[machine]
    capacity = Resources(vcpus, machine_gib * (1 - placement.GUEST_KERNEL_MEMORY_FRACTION))
    allocatable = capacity - placement.gke_reserved(capacity)
    assert allocatable.cpu <= allocatable_cpu + 1e-9
    assert allocatable.memory_gib <= allocatable_gib
    assert allocatable_gib - allocatable.memory_gib < 0.03 * machine_gib  # and not far below


def test_measured_machine_sizes_agree_with_the_table() -> None:
    for machine, (vcpus, machine_gib, *_) in MEASURED.items():
        if machine in placement.MACHINE_TYPES:
            assert placement.MACHINE_TYPES[machine] == Resources(vcpus, machine_gib)


def test_gke_reservation_tiers() -> None:
    """The documented tiers, worked by hand."""
    # 30 GiB: 25% of 4 + 20% of 4 + 10% of 8 + 6% of 14 = 1 + 0.8 + 0.8 + 0.84, plus 100 MiB.
    assert placement.gke_reserved(Resources(8, 30)).memory_gib == pytest.approx(3.44 + 100 / 1024)
    # 0.5 GiB: 255 MiB, plus 100 MiB.
    assert placement.gke_reserved(Resources(1, 0.5)).memory_gib == pytest.approx(355 / 1024)
    # 200 GiB: ... + 6% of 112 + 2% of 72.
    expected = 1 + 0.8 + 0.8 + 0.06 * 112 + 0.02 * 72 + 100 / 1024
    assert placement.gke_reserved(Resources(1, 200)).memory_gib == pytest.approx(expected)
    # 12 cores: 6% of 1 + 1% of 1 + 0.5% of 2 + 0.25% of 8.
    assert placement.gke_reserved(Resources(12, 85)).cpu == pytest.approx(0.06 + 0.01 + 0.01 + 0.02)


def test_print_pool_sizes() -> None:
    """The figures per pool (run with -s to see them; nodepools.yaml carries them too)."""
    from pipelines.nodepools import sizing_comment

    for pool in placement.ALL_POOLS:
        print(sizing_comment(pool), end="")
        assert placement.room_for_tasks(pool).fits_in(placement.node_allocatable(pool.machine_type))


# --- the pools' own figures -------------------------------------------------------------


@pytest.mark.parametrize("pool", placement.ALL_POOLS, ids=lambda p: p.name)
def test_pool_requests_fit_the_pool(pool: placement.NodePool) -> None:
    wanted = placement.resources_of(pool.cpu_request, pool.memory_request)
    assert wanted.fits_in(placement.room_for_tasks(pool)), (pool.name, wanted, placement.room_for_tasks(pool))


@pytest.mark.parametrize("pool", list(placement.GPU_POOLS.values()), ids=lambda p: p.name)
def test_shm_is_budgeted_inside_the_gpu_memory_request(pool: placement.NodePool) -> None:
    assert placement.parse_quantity(placement.SHM_SIZE) <= placement.parse_quantity(pool.memory_request)


def test_cpu_pool_stays_within_a_small_quota() -> None:
    """Issue 10: 8 x n2-standard-16 (128 N2 vCPUs) was more than a new project's quota."""
    pool = placement.CPU_POOL
    assert pool.max_nodes * placement.MACHINE_TYPES[pool.machine_type].cpu <= 64


# --- the KFP tasks of the compiled pipeline -------------------------------------------------


def _quantity(resources: dict[str, Any], new: str, old: str, old_unit: str) -> float | None:
    """A request or limit as KFP's driver reads it: the string field first, else the float
    (KFP 2.17.0 backend/src/v2/driver/driver.go:173-197, 363-411; memory floats are G)."""
    if resources.get(new):
        return placement.parse_quantity(resources[new])
    if resources.get(old):
        return placement.parse_quantity(f"{resources[old]}{old_unit}")
    return None


@pytest.fixture(scope="module", params=sorted(placement.GPU_POOLS))
def compiled_pipeline(request, tmp_path_factory) -> tuple[str, dict[str, Any], dict[str, Any]]:
    from pipelines.asr_training import compile_pipeline

    path = compile_pipeline(str(tmp_path_factory.mktemp("compiled") / "asrflow.yaml"), gpu=request.param)
    spec, platform = list(yaml.safe_load_all(Path(path).read_text()))[:2]
    return request.param, spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_every_kfp_task_pod_fits_its_pool(compiled_pipeline) -> None:
    gpu, spec, k8s = compiled_pipeline
    executors = spec["deploymentSpec"]["executors"]
    assert executors.keys() <= k8s.keys(), "an executor without placement lands on any node"
    pools_used = set()
    for name, executor in executors.items():
        resources = executor["container"].get("resources", {})
        cpu = _quantity(resources, "resourceCpuRequest", "cpuRequest", "")
        memory = _quantity(resources, "resourceMemoryRequest", "memoryRequest", "G")
        assert cpu and memory, f"{name}: no CPU or memory request, so nothing reserves room for it"
        pool = pool_named(k8s[name]["nodeSelector"]["labels"][placement.NODEPOOL_LABEL])
        pools_used.add(pool.name)
        main = Resources(cpu, memory / GIB)
        pod = pod_requests([main, ARGO_WAIT], [KFP_LAUNCHER_INIT])
        room = placement.room_for_tasks(pool)
        if not pool.taints:  # KFP's driver pods may land here too
            room = room - KFP_DRIVER_POD
        assert pod.fits_in(room), f"{gpu}/{name} requests {pod}, a {pool.name} node has {room}"

        accelerator = resources.get("accelerator")
        gpus = int(accelerator.get("resourceCount") or accelerator.get("count")) if accelerator else 0
        assert gpus <= pool.gpus_per_node, name

        memory_limit = _quantity(resources, "resourceMemoryLimit", "memoryLimit", "G")
        for mount in k8s[name].get("emptyDirMounts", []):
            if mount.get("medium") == "Memory":
                assert mount.get("sizeLimit"), f"{name}: an unbounded memory emptyDir can take the node"
                size = placement.parse_quantity(mount["sizeLimit"])
                assert size <= memory, f"{name}: /dev/shm ({mount['sizeLimit']}) beyond its memory request"
                assert memory_limit is None or size <= memory_limit, name
    assert pools_used == {placement.CPU_POOL.name, placement.GPU_POOLS[gpu].name}


# --- the TrainJob's pods ----------------------------------------------------------------------


def runtime_pod_spec() -> dict[str, Any]:
    runtime = yaml.safe_load((REPO / "manifests" / "base" / "training-runtime.yaml").read_text())
    (replicated,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    return replicated["template"]["spec"]["template"]["spec"]


def _resources(container: dict[str, Any]) -> Resources:
    requests = (container.get("resources") or {}).get("requests") or {}
    return placement.resources_of(requests.get("cpu", 0), requests.get("memory", 0))


@pytest.mark.parametrize("gpu", sorted(placement.GPU_POOLS))
def test_trainjob_pods_fit_their_pool(gpu: str) -> None:
    """The node pod as Trainer v2.3.0 builds it: the runtime's pod, the TrainJob's
    runtimePatches merged in, resourcesPerNode merged into the `node` container
    (pkg/runtime/core/trainingruntime.go:162, 199-229)."""
    pool = placement.GPU_POOLS[gpu]
    job = trainjob.build_trainjob(
        name=trainjob.trainjob_name("run-1"),
        namespace=placement.NAMESPACE,
        image="registry.example/train:1",
        train_args=["gs://b/tarred"],
        num_nodes=2,
        gpu=gpu,
        run_id="run-1",
    ).to_dict()
    runtime = runtime_pod_spec()
    per_node = job["spec"]["trainer"]["resourcesPerNode"]
    (patch,) = job["spec"]["runtimePatches"]
    (patched,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    patch_pod = patched["template"]["spec"]["template"]["spec"]

    containers = []
    for container in runtime["containers"]:
        if container["name"] == trainjob.TRAINER_CONTAINER:
            container = {**container, "resources": per_node}
        containers.append(_resources(container))
    init = [_resources(c) for c in runtime.get("initContainers", []) + patch_pod.get("initContainers", [])]
    pod = pod_requests(containers, init)
    assert pod.memory_gib > 0 and pod.cpu > 0
    room = placement.room_for_tasks(pool)
    assert pod.fits_in(room), f"TrainJob node pod on {pool.name} requests {pod}, a node has {room}"
    assert int(per_node["limits"][placement.GPU_RESOURCE]) <= pool.gpus_per_node

    memory = placement.parse_quantity(per_node["requests"]["memory"])
    for volume in runtime.get("volumes", []) + patch_pod.get("volumes", []):
        empty_dir = volume.get("emptyDir") or {}
        if empty_dir.get("medium") == "Memory":
            assert empty_dir.get("sizeLimit"), volume["name"]
            assert placement.parse_quantity(empty_dir["sizeLimit"]) <= memory, volume["name"]
    assert runtime["priorityClassName"] == placement.PRIORITY_CLASS
