"""Training configs: the shipped ones in ``conf/``, composed from a base plus a delta.

A config names the config it builds on with ``_base_: NAME`` (a path under ``conf/``
without ``.yaml``, e.g. ``base/conformer_ctc`` or ``conformer_ctc_char``), or a list of them
merged in order (a model family's config and a size's), and holds only what differs;
OmegaConf merges it over its base, recursively. A section marked ``_replace_: true`` replaces
the base's section instead of merging into it (a different LR schedule, whose keys are not
the base's). The keys are mmengine's (``_base_``, ``_delete_``) and
detectron2's (``_BASE_``) convention, spelt for what they do. Hydra's defaults lists would
need a config directory and global state for every load, could not read a user's YAML on
gs://, and replace a section only through a config group per alternative: not worth it for
four configs.

A user's YAML may name a shipped config as its ``_base_`` too.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components import layout, storage
from components.train.errors import TrainError

if TYPE_CHECKING:
    from omegaconf import DictConfig

log = logging.getLogger("asrflow.train")

CONF_DIR = Path(__file__).parent / "conf"
BASE_KEY = "_base_"
"""A config's key naming the config it builds on."""
REPLACE_KEY = "_replace_"
"""A section's key (``true``): this section replaces the base's instead of merging into it."""


def config_names() -> list[str]:
    """The configs that ship with asrflow (``--config NAME``); bases under ``conf/base`` are not."""
    return sorted(p.stem for p in CONF_DIR.glob("*.yaml"))


def load_config(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Load a shipped config by name, or a YAML file (local or gs://), then apply overrides.

    Args:
        name_or_path: a name from :func:`config_names` or the path of a YAML file.
        overrides: OmegaConf dotlist items, ``key=value`` (``trainer.max_steps=100``).

    Raises:
        TrainError: unknown name, unreadable file, or a malformed override.
        ConfigError: (a TrainError) an override of a key the config lacks (``+KEY=VALUE``
            adds one), or with a value of the wrong type; see :mod:`components.train.overrides`.
    """
    from omegaconf import OmegaConf

    from components.train.overrides import checked_override

    if name_or_path in config_names():
        text = (CONF_DIR / f"{name_or_path}.yaml").read_text()
    elif name_or_path.endswith((".yaml", ".yml")) and storage.exists(name_or_path):
        text = storage.read_text(name_or_path)
    else:
        raise TrainError(
            f"unknown config {name_or_path!r}: give one of {', '.join(config_names())} or a .yaml file"
        )
    cfg = composed(OmegaConf.create(text), name_or_path)
    bad = [item for item in overrides if "=" not in item]
    if bad:
        raise TrainError(f"overrides must be key=value, got: {' '.join(bad)}")
    for item in overrides:
        key, value = checked_override(cfg, item, name_or_path)
        OmegaConf.update(cfg, key, value, merge=True)
    return cfg


def composed(cfg: DictConfig, where: str, seen: tuple[str, ...] = ()) -> DictConfig:
    """``cfg`` merged over the configs its ``_base_`` names (``cfg`` itself when none).

    ``_base_`` is one name or a list of them: each base is composed on its own, then the list
    is merged in order (a later base's keys win), then ``cfg`` over it.
    """
    from omegaconf import OmegaConf

    base_names = cfg.pop(BASE_KEY, None)
    replaced = replaced_sections(cfg)
    if base_names is None:
        return cfg
    if isinstance(base_names, str):
        base_names = [base_names]
    bases = [_composed_base(str(name), where, seen) for name in base_names]
    base = OmegaConf.merge(*bases) if len(bases) > 1 else bases[0]
    for key in replaced:
        OmegaConf.update(base, key, None, merge=False)
    return OmegaConf.merge(base, cfg)


def _composed_base(base_name: str, where: str, seen: tuple[str, ...]) -> DictConfig:
    """The shipped config ``base_name``, itself composed over its bases."""
    from omegaconf import OmegaConf

    path = CONF_DIR / f"{base_name}.yaml"
    if not path.is_file():
        raise TrainError(f"{where}: {BASE_KEY} {base_name!r} is not a config under {CONF_DIR}")
    if base_name in seen:
        raise TrainError(f"{where}: {BASE_KEY} chain loops: {' -> '.join((*seen, base_name))}")
    return composed(OmegaConf.load(path), str(path), (*seen, base_name))


def replaced_sections(cfg: Any, prefix: str = "") -> list[str]:
    """The dotted keys of the sections marked ``_replace_: true`` (the marks are removed)."""
    from omegaconf import DictConfig

    found = []
    for key in list(cfg.keys()):
        node = cfg._get_node(key)
        if isinstance(node, DictConfig):
            dotted = f"{prefix}{key}"
            if node.pop(REPLACE_KEY, False):
                found.append(dotted)
            found += replaced_sections(node, f"{dotted}.")
    return found


def is_bpe(cfg: DictConfig) -> bool:
    """True for a sub-word config (``model.tokenizer``), False for a character one."""
    return cfg.model.get("tokenizer") is not None


def configure_data(cfg: DictConfig, dataset: Any, val_manifest: str, seed: int) -> None:
    """Fill the data sections of ``cfg`` in place: paths, bucket bins, data-order seed.

    Args:
        cfg: the run's config.
        dataset: the checked tarred dataset (:class:`components.train.data.TarredDataset`), or a
            mixture of several (:class:`components.train.data.MixedDataset`: NeMo's
            ``input_cfg``, one weighted ``nemo_tarred`` entry a source).
        val_manifest: the local validation manifest.
        seed: the data-order seed of this attempt.
    """
    from omegaconf import open_dict

    from components.train.data import MixedDataset

    train_ds = cfg.model.train_ds
    mixed = isinstance(dataset, MixedDataset)
    metadata_uri = storage.join(dataset.uri, layout.METADATA_NAME)
    with open_dict(train_ds):
        if mixed:
            train_ds.manifest_filepath = None
            train_ds.tarred_audio_filepaths = None
            train_ds.input_cfg = dataset.input_cfg()
            train_ds.reweight_temperature = [float(dataset.temperature)]  # one level of input_cfg
        else:
            train_ds.manifest_filepath = dataset.manifest_filepath
            train_ds.tarred_audio_filepaths = dataset.tarred_audio_filepaths
        train_ds.seed = seed
        # Without workers Lhotse resolves "randomized" to a constant: use the seed itself
        # (made distinct per rank by DataSeed once the rank is known).
        if int(train_ds.get("num_workers", 0)) > 0:
            train_ds.shard_seed = "randomized"
        else:
            train_ds.shard_seed = seed
        if train_ds.get("use_bucketing", False):
            source = "the config" if train_ds.get("bucket_duration_bins") else metadata_uri
            bins = train_ds.get("bucket_duration_bins") or dataset.bucket_duration_bins()
            if bins:
                train_ds.bucket_duration_bins = [float(b) for b in bins]
                train_ds.num_buckets = len(bins) + 1
                log.info("bucketing into %d buckets from %s", len(bins) + 1, source)
            elif mixed:
                log.warning(
                    "no bucket_duration_bins for the mixture (run asrflow estimate-buckets TARRED_DIR "
                    "with the same --weight, --mix and --mix-temperature, and pass its bins as "
                    "--bucket-bins): training without bucketing"
                )
                train_ds.use_bucketing = False
            else:
                log.warning(
                    "no bucket_duration_bins in %s (run asrflow estimate-buckets): "
                    "training without bucketing",
                    metadata_uri,
                )
                train_ds.use_bucketing = False
    with open_dict(cfg.model.validation_ds):
        cfg.model.validation_ds.manifest_filepath = val_manifest
