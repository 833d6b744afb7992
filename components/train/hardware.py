"""Where and how a run trains: accelerator, processes, nodes, precision, and the Lightning Trainer."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.train.errors import TrainError

if TYPE_CHECKING:
    from omegaconf import DictConfig

log = logging.getLogger("asrflow.train")

FP16_PRECISIONS = ("16-mixed", "16-true", "16")


@dataclasses.dataclass(frozen=True)
class Hardware:
    """Where and how the run trains: accelerator, processes per node, nodes, precision."""

    accelerator: str  # "gpu" or "cpu"
    devices: int
    num_nodes: int
    precision: str

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes


def precision_for(accelerator: str) -> str:
    """bf16-mixed on compute capability 8 and newer (A100, H100), 16-mixed on 7.x (V100), else 32."""
    if accelerator != "gpu":
        return "32"
    import torch

    major, _ = torch.cuda.get_device_capability()
    if major >= 8:
        return "bf16-mixed"
    if major >= 7:
        return "16-mixed"
    return "32"


def resolve_hardware(
    devices: int | None = None, num_nodes: int | None = None, precision: str | None = None
) -> Hardware:
    """Devices, nodes and precision, from the arguments, the torchrun environment, or the hardware.

    Under torchrun (``LOCAL_WORLD_SIZE`` and ``WORLD_SIZE`` set), devices per node and the
    number of nodes default to what torchrun launched, so a TrainJob needs no extra flags.
    """
    import torch

    accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    local_world = os.environ.get("LOCAL_WORLD_SIZE")
    world = os.environ.get("WORLD_SIZE")
    if devices is None:
        if local_world:
            devices = int(local_world)
        else:
            devices = torch.cuda.device_count() if accelerator == "gpu" else 1
    if num_nodes is None:
        num_nodes = int(world) // int(local_world) if world and local_world else 1
    if devices < 1 or num_nodes < 1:
        raise TrainError(f"devices ({devices}) and num_nodes ({num_nodes}) must be at least 1")
    if accelerator == "cpu" and precision in FP16_PRECISIONS:
        # A GPU pool's setting reaching a CPU run (a local pipeline run): float16 autocast on
        # CPU is many times slower than float32, and gains nothing.
        log.warning("precision %s needs a GPU; training in 32 on this CPU", precision)
        precision = "32"
    return Hardware(accelerator, devices, num_nodes, precision or precision_for(accelerator))


def make_trainer(cfg: DictConfig, hardware: Hardware, callbacks: list[Any], logger: Any, root: Path) -> Any:
    """The Lightning Trainer for ``hardware``, with the config's ``trainer`` section.

    asrflow sets what :data:`~components.train.overrides.TRAINER_SET_BY_ASRFLOW` lists
    (devices, precision, DDP, checkpointing, logging); the config sets the rest.
    """
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import DDPStrategy
    from omegaconf import OmegaConf

    from components.train.checkpoints import safe_checkpoint_io
    from components.train.overrides import TRAINER_SET_BY_ASRFLOW

    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    for key in TRAINER_SET_BY_ASRFLOW:
        kwargs.pop(key, None)
    if hardware.world_size > 1:
        backend = "nccl" if hardware.accelerator == "gpu" else "gloo"
        strategy: Any = DDPStrategy(process_group_backend=backend, find_unused_parameters=False)
    else:
        strategy = "auto"
    if hardware.world_size == 1 or hardware.accelerator != "gpu":
        kwargs["sync_batchnorm"] = False  # SyncBatchNorm needs CUDA
    return pl.Trainer(
        accelerator=hardware.accelerator,
        devices=hardware.devices,
        num_nodes=hardware.num_nodes,
        strategy=strategy,
        precision=hardware.precision,
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        max_epochs=-1,
        default_root_dir=str(root),
        plugins=[safe_checkpoint_io()],  # resume loads with weights_only=True
        **kwargs,
    )
