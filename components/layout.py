"""The names of asrflow's data layout, declared once.

Every file and directory name that one step writes and another reads lives here, so a
reader never spells a name differently from the writer. Under a data root::

    datasets/<dataset>/<config>/<split>/<revision>/raw/…       a download
    datasets/<dataset>/<config>/<split>/<revision>/tarred/<settings>/…
        audio_<i>.tar, tarred_audio_manifest.json, sharded_manifests/manifest_<i>.json,
        metadata.yaml                                          a tarred dataset
    runs/<run>/checkpoints/…  runs/<run>/model.nemo  runs/<run>/eval/…
    models/<name>/champion.json                                the model in service

Every step's output directory also holds its ``card.json`` and, written last, ``_SUCCESS``.
"""

from __future__ import annotations

from components import storage

# --- every step's output directory -------------------------------------------------------
CARD_NAME = "card.json"
"""The step's card (see :mod:`components.cards`)."""
SUCCESS_MARKER = storage.SUCCESS_MARKER
"""Written last: the directory is complete."""
OWNER_MARKER = "_ASRFLOW"
"""Names the step whose output a directory is."""
REJECTS_NAME = "rejects.jsonl"
"""Items skipped as corrupt, one JSON object a line with the reason."""

# --- a download ----------------------------------------------------------------------------
DATASETS_DIR = "datasets"
RAW_DIR = "raw"
"""A download's output directory, below ``datasets/<dataset>/<config>/<split>/<revision>``."""
DOWNLOAD_MANIFEST_NAME = "manifest.json"
"""The NeMo manifest of a download of audio files (audio paths relative to it)."""
AUDIO_DIR = "audio"
"""A download's audio files, when the source is a manifest of audio files."""

# --- a tarred dataset (NeMo's layout) -------------------------------------------------------
TARRED_DIR = "tarred"
"""Tarred datasets, beside the ``raw`` download they were written from."""
TARRED_MANIFEST_NAME = "tarred_audio_manifest.json"
SHARDED_MANIFESTS_DIR = "sharded_manifests"
METADATA_NAME = "metadata.yaml"
"""Counts, hours, seed, filters and bucket bins of a tarred dataset."""


def tar_name(shard_id: int) -> str:
    """``audio_<i>.tar``: shard ``i`` of a tarred dataset."""
    return f"audio_{shard_id}.tar"


def tar_pattern(brace: str) -> str:
    """``audio_{0..N}.tar`` for NeMo's brace-expanded shard list (``brace`` is ``{0..N}``)."""
    return f"audio_{brace}.tar"


def sharded_manifest_name(shard_id: int | str) -> str:
    """``sharded_manifests/manifest_<i>.json``: the manifest lines of shard ``i`` (or of NeMo's
    brace range, e.g. ``_OP_0..N_CL_``)."""
    return f"{SHARDED_MANIFESTS_DIR}/manifest_{shard_id}.json"


# --- tokenizers and language models -----------------------------------------------------------
TOKENIZERS_DIR = "tokenizers"
"""Under data_root: tokenizers/<digest of their training text and settings>/ (the DAG's)."""
TOKENIZER_MODEL_NAME = "tokenizer.model"
"""The SentencePiece model inside a tokenizer directory."""
LMS_DIR = "lms"
"""Under data_root: lms/<digest of their sources, tokenizer and settings>/ (the DAG's)."""
LM_ARPA_NAME = "lm.arpa"
LM_NEMO_NAME = "lm.nemo"
"""An n-gram language model, as ARPA text and as NeMo's ``.nemo`` n-gram."""

# --- runs and models ------------------------------------------------------------------------
RUNS_DIR = "runs"
CHECKPOINTS_DIR = "checkpoints"
MODEL_NAME = "model.nemo"
"""The trained model of a run."""
NEMO_CONFIG_NAME = "model_config.yaml"
"""What every .nemo archive holds beside its weights: the model's config (NeMo's name)."""
NEMO_WEIGHTS_NAME = "model_weights.ckpt"
"""The weights' file in a ``.nemo`` archive (NeMo's SaveRestoreConnector)."""
TENSORBOARD_DIR = "tensorboard"
EVAL_DIR = "eval"
MODELS_DIR = "models"
CHAMPION_NAME = "champion.json"
"""The record of the model in service, ``models/<name>/champion.json``."""


def dataset_dir(data_root: str, *parts: str) -> str:
    """``DATA_ROOT/datasets/<parts…>``."""
    return storage.join(data_root, DATASETS_DIR, *parts)


def run_dir(data_root: str, run_id: str) -> str:
    """``DATA_ROOT/runs/<run_id>``: where a pipeline run's training writes."""
    return storage.join(data_root, RUNS_DIR, run_id)


def run_eval_dir(data_root: str, run_id: str) -> str:
    """``DATA_ROOT/runs/<run_id>/eval``: where a run's evaluation writes."""
    return storage.join(run_dir(data_root, run_id), EVAL_DIR)


def tokenizer_dir(data_root: str, key: str) -> str:
    """``DATA_ROOT/tokenizers/<key>``: a tokenizer keyed by its training text and settings."""
    return storage.join(data_root, TOKENIZERS_DIR, key)


def lm_dir(data_root: str, key: str) -> str:
    """``DATA_ROOT/lms/<key>``: an n-gram LM keyed by its text sources, tokenizer and settings."""
    return storage.join(data_root, LMS_DIR, key)


def champion_uri(data_root: str, name: str) -> str:
    """``DATA_ROOT/models/<name>/champion.json``: the record of model ``name`` in service."""
    return storage.join(data_root, MODELS_DIR, name, CHAMPION_NAME)
