"""The ``download`` KFP component: a thin wrapper over :mod:`components.download.core`."""

from typing import NamedTuple

from kfp import dsl

from components.images import DATA_IMAGE


@dsl.component(base_image=DATA_IMAGE, install_kfp_package=False)
def resolve_revision(
    source: str,
    card: dsl.Output[dsl.Artifact],
    config: str = "",
    split: str = "train",
    revision: str = "",
    pattern: str = "",
    dataset: str = "",
) -> str:
    """Resolve what a download of the source would copy now to a revision, copying nothing.

    Runs uncached on every pipeline run; the download after it is cached and keyed by this
    revision, so unchanged data reuses every data step of an earlier run (KFP's cache key
    holds input values and input artifact ids) and new data upstream misses the cache.

    Args:
        source: as for download.
        card: the step's card (source, dataset, config, split, revision, files, bytes).
        config: dataset config; empty: the only or default one.
        split: dataset split.
        revision: hub branch, tag or commit; empty: main.
        pattern: glob of data files relative to the source, instead of the dataset card's.
        dataset: dataset name; empty: from the source.

    Returns:
        The hub commit SHA, or the content hash of a local or gs:// source.
    """
    import json

    from components.download import core
    from components.download.files import DownloadRequest
    from components.progress import setup_logging

    setup_logging()
    result = core.resolve_revision(DownloadRequest(source, config, split, revision, pattern, dataset))
    with open(card.path, "w", encoding="utf-8") as out:
        json.dump(result.to_dict(), out, sort_keys=True, indent=2)
    card.metadata.update(revision=result.revision, files=result.num_files)
    return result.revision


@dsl.component(base_image=DATA_IMAGE, install_kfp_package=False)
def download(
    source: str,
    data_root: str,
    card: dsl.Output[dsl.Artifact],
    metrics: dsl.Output[dsl.Metrics],
    config: str = "",
    split: str = "train",
    revision: str = "",
    out_dir: str = "",
    workers: int = 8,
    pattern: str = "",
    dataset: str = "",
    id_column: str = "id",
    audio_column: str = "audio",
    text_column: str = "text",
    duration_column: str = "",
) -> str:
    """Copy a speech dataset into the data root, verified and resumable.

    The hub token, when the dataset needs one, comes from the ``HF_TOKEN`` environment
    variable (a Kubernetes Secret); it is never a parameter and never logged.

    Args:
        source: ``hf://datasets/OWNER/NAME``, a local directory or ``gs://`` prefix with the
            hub's parquet layout, or a NeMo manifest.
        data_root: local directory or ``gs://bucket/prefix`` that holds all asrflow data.
        card: the step's card (source, revision, files, bytes, rows, hours, columns).
        metrics: hours, rows, files and GB, for the KFP UI.
        config: dataset config, e.g. ``clean``; empty: the only or default one.
        split: dataset split: train, validation or test.
        revision: hub branch, tag or commit (recorded as a commit SHA); empty: main.
        out_dir: where to write; empty: ``data_root/datasets/<dataset>/<config>/<split>/<revision>/raw``.
        workers: files copied at once.
        pattern: glob of data files relative to the source, instead of the dataset card's.
        dataset: dataset name in the card and the key; empty: from the source.
        id_column: parquet column with the utterance id.
        audio_column: parquet column with the audio.
        text_column: parquet column with the transcript.
        duration_column: parquet column with the duration; empty: duration_ms or duration
            when present, else measured from the audio headers.

    Returns:
        The directory the dataset was written to.
    """
    import json

    from components.columns import Columns
    from components.download import core
    from components.download.files import DownloadRequest
    from components.progress import setup_logging

    setup_logging()
    result = core.download(
        DownloadRequest(source, config, split, revision, pattern, dataset, workers),
        out_dir or None,
        data_root=data_root,
        columns=Columns.from_options(id_column, audio_column, text_column, duration_column),
    )
    with open(card.path, "w", encoding="utf-8") as out:
        json.dump(result.to_dict(), out, sort_keys=True, indent=2)
    card.metadata["uri"] = result.out_dir
    card.metadata["revision"] = result.revision
    metrics.log_metric("hours", result.hours)
    metrics.log_metric("rows", result.rows)
    metrics.log_metric("files", result.num_files)
    metrics.log_metric("gigabytes", round(result.bytes / 1e9, 3))
    return result.out_dir


@dsl.component(base_image=DATA_IMAGE, install_kfp_package=False)
def prepare_eval_set(
    spec: dict,
    data_root: str,
    card: dsl.Output[dsl.Artifact],
) -> NamedTuple("Outputs", [("eval_set", str), ("manifest", str)]):
    """Download an evaluation set and write it as audio files plus a NeMo manifest.

    Args:
        spec: the set: ``name``, ``source`` (as for download), and optionally ``config``,
            ``split``, ``revision``, ``pattern`` and the ``id/audio/text/duration_column``
            names.
        data_root: local directory or ``gs://bucket/prefix`` that holds all asrflow data;
            the manifest goes beside the download, in ``…/<revision>/manifest``.
        card: the download's card with the manifest's URI added.

    Returns:
        eval_set: ``NAME=MANIFEST`` for the evaluate step.
        manifest: the manifest URI (training validates on it).
    """
    import json
    from collections import namedtuple

    from components import storage
    from components.columns import Columns
    from components.download import core
    from components.download.files import DownloadRequest
    from components.export import export_manifest
    from components.progress import setup_logging

    setup_logging()
    if not spec.get("source"):
        raise ValueError(f"eval set {spec!r} has no source")
    request = DownloadRequest(
        spec["source"],
        config=spec.get("config"),
        split=spec.get("split") or "test",
        revision=spec.get("revision"),
        pattern=spec.get("pattern"),
    )
    result = core.download(
        request,
        data_root=data_root,
        columns=Columns.from_options(
            spec.get("id_column") or "",
            spec.get("audio_column") or "",
            spec.get("text_column") or "",
            spec.get("duration_column") or "",
        ),
    )
    beside = storage.join(storage.parent(result.out_dir), "manifest")
    manifest = export_manifest(result.out_dir, beside)
    name = spec.get("name") or f"{result.dataset}-{result.split}"
    with open(card.path, "w", encoding="utf-8") as out:
        json.dump({**result.to_dict(), "manifest": manifest}, out, sort_keys=True, indent=2)
    card.metadata.update(uri=manifest, name=name, hours=result.hours)
    return namedtuple("Outputs", ["eval_set", "manifest"])(f"{name}={manifest}", manifest)
