"""Writing the bins into a tarred dataset's ``metadata.yaml``, keeping everything else."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from components import layout, storage
from components.buckets.errors import BucketError

log = logging.getLogger("asrflow.estimate_buckets")


def update_metadata(tarred_dir: str, buckets: Mapping[str, Any]) -> str:
    """Write the bins into ``metadata.yaml``, keeping every other key; atomic replace.

    ``dataset_config.num_buckets`` and ``dataset_config.bucket_duration_bins`` are NeMo's
    fields; the ``buckets`` section holds the rest (max duration, padding efficiency, ...).
    A missing file is created with just these.
    """
    import yaml

    uri = storage.join(tarred_dir, layout.METADATA_NAME)
    metadata: dict[str, Any] = {}
    if storage.exists(uri):
        try:
            loaded = yaml.safe_load(storage.read_text(uri))
        except yaml.YAMLError as err:
            raise BucketError(f"{uri}: not valid YAML ({err})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise BucketError(f"{uri}: expected a mapping at the top, got {type(loaded).__name__}")
        metadata = loaded or {}
    else:
        log.warning("%s does not exist; writing one with the bucket fields only", uri)
    dataset_config = metadata.get("dataset_config")
    if dataset_config is None:
        dataset_config = metadata["dataset_config"] = {}
    if not isinstance(dataset_config, dict):
        raise BucketError(f"{uri}: dataset_config must be a mapping")
    dataset_config["num_buckets"] = buckets["num_buckets"]
    dataset_config["bucket_duration_bins"] = list(buckets["bucket_duration_bins"])
    metadata["buckets"] = dict(buckets)
    storage.write_text(uri, yaml.safe_dump(metadata, sort_keys=False, default_flow_style=False, width=100))
    return uri
