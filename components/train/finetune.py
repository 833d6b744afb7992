"""Fine-tuning: a run that starts from a trained model instead of a fresh one.

``--init-from`` names the model: a ``.nemo`` file (local or gs://) or a pretrained name on
the Hugging Face hub (``ORG/NAME``, resolved by NeMo's ``ASRModel.from_pretrained`` through
huggingface_hub: its cache under ``HF_HOME`` first, the hub otherwise; ``HF_HUB_OFFLINE=1``
keeps it to the cache).

How the run's config and the pretrained model combine (:func:`fine_tuning_config`): the
pretrained model's own config gives the architecture (preprocessor, encoder, decoder,
tokenizer, spec-augment, decoding) and its class; the run's config gives what a fine-tuning
recipe is about: ``model.train_ds``, ``model.validation_ds`` and ``model.optim``, plus the
``trainer`` and ``asrflow`` sections (which never reach the model). The data sections are
resampled to the pretrained model's ``sample_rate``. So one recipe fits every pretrained
model of its kind, and the architecture keys of the run's config do not apply (the log says
so).

The vocabulary (:func:`change_vocabulary`): with ``--tokenizer DIR`` a sub-word model gets
that tokenizer through its own ``change_vocabulary`` (the encoder's weights kept, a fresh
decoder of the new size); without, it keeps the tokenizer it was trained with. A character
model whose labels differ from the run config's ``model.labels`` gets those labels the same
way.

Freezing (:func:`freeze_encoder`): the encoder's weights stay as loaded, or all of them but
the last N layers'; :class:`~components.train.callbacks.FreezeEncoder` keeps the frozen part
in eval mode (batch-norm statistics and dropout fixed) while the rest trains.

On resume the same model is made again (the architecture and vocabulary of the
checkpoint); the checkpoint then brings the weights.

A fresh model may also start only its encoder from another model (:func:`init_encoder`,
``asrflow.init_encoder_from``): NeMo's advice for a transducer on little data is an encoder
trained with CTC first, which aligns speech to tokens far sooner than the RNN-T loss alone.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components import layout, nemo_archive, storage
from components.train import staging
from components.train.config import is_bpe
from components.train.errors import TrainError

if TYPE_CHECKING:
    from omegaconf import DictConfig

log = logging.getLogger("asrflow.train")

ENCODER_PREFIX = "encoder."

RUN_SECTIONS = ("train_ds", "validation_ds", "optim")
"""The sections of ``model`` a fine-tuning run takes from its own config."""
NEMO_SUFFIX = ".nemo"
PRETRAINED_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
"""A hub model id, ``ORG/NAME`` (NeMo looks for ``NAME.nemo`` in that repository)."""


def is_pretrained_name(init_from: str) -> bool:
    """True when ``--init-from`` names a hub model rather than a ``.nemo`` file."""
    return (
        not storage.is_gcs(init_from)
        and not init_from.endswith(NEMO_SUFFIX)
        and not Path(init_from).exists()
        and bool(PRETRAINED_NAME.match(init_from))
    )


def resolve_pretrained(init_from: str, work: Path) -> str:
    """A local ``.nemo`` path for ``--init-from``: the file itself, a copy from gs://, or the
    hub's cached file for a pretrained name.

    Raises:
        TrainError: a file that does not exist, or a name neither in the hub cache nor on the
            hub (offline: not in the cache).
    """
    if not is_pretrained_name(init_from):
        if not init_from.endswith(NEMO_SUFFIX) and not Path(init_from).is_file():
            raise TrainError(
                f"--init-from {init_from}: neither a .nemo file nor a pretrained model name (ORG/NAME)"
            )
        return staging.fetch(init_from, work / "init")
    from nemo.collections.asr.models import ASRModel

    try:
        path = ASRModel.from_pretrained(init_from, map_location="cpu", return_model_file=True)
    except Exception as err:  # huggingface_hub's errors: offline, unknown repository, no file, no network
        raise TrainError(
            f"--init-from {init_from}: pretrained model not found in the Hugging Face cache "
            f"({_hub_cache()}) nor on the hub: {type(err).__name__}: {err}"
        ) from None
    if Path(path).is_dir():
        raise TrainError(f"--init-from {init_from}: the hub repository has no {Path(init_from).name}.nemo")
    log.info("pretrained %s: %s", init_from, path)
    return str(path)


def init_encoder(model: Any, nemo_uri: str, work: Path) -> None:
    """Load the encoder weights of the ``.nemo`` at ``nemo_uri`` (local or gs://) into ``model``.

    Only the encoder is taken: the source may be of another family (a CTC model for a
    transducer) and have another vocabulary.

    Raises:
        TrainError: not a ``.nemo`` archive, or an encoder whose tensors differ in name or shape
            from this config's (the first difference named).
    """
    import io
    import tarfile

    import torch

    where = f"asrflow.init_encoder_from {nemo_uri}"
    local = staging.fetch(nemo_uri, work / "init")
    try:
        with tarfile.open(local) as tar:
            data = nemo_archive.read_weights(tar)
    except tarfile.TarError as err:
        raise TrainError(f"{where}: not a .nemo archive: {err}") from None
    if data is None:
        raise TrainError(f"{where}: not a .nemo model (no {layout.NEMO_WEIGHTS_NAME} inside)")
    weights = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    source = {k.removeprefix(ENCODER_PREFIX): v for k, v in weights.items() if k.startswith(ENCODER_PREFIX)}
    target = model.encoder.state_dict()
    for name in sorted(set(target) | set(source)):
        if name not in source or name not in target:
            side = "this config's encoder" if name not in source else "the source's encoder"
            raise TrainError(f"{where}: the encoders differ: {ENCODER_PREFIX}{name} is only in {side}")
        if source[name].shape != target[name].shape:
            raise TrainError(
                f"{where}: the encoders differ: {ENCODER_PREFIX}{name} is {tuple(source[name].shape)} "
                f"there, {tuple(target[name].shape)} here"
            )
    model.encoder.load_state_dict(source)
    log.info("encoder initialised from %s (%d tensors)", nemo_uri, len(source))


def _hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def pretrained_config(nemo_path: str, init_from: str) -> DictConfig:
    """The ``model`` config saved in a ``.nemo`` (read without loading its weights)."""
    from nemo.collections.asr.models import ASRModel

    try:
        return ASRModel.restore_from(nemo_path, return_config=True, map_location="cpu")
    except Exception as err:  # a tar that is not a .nemo, a truncated file, no config inside
        raise TrainError(
            f"--init-from {init_from}: {nemo_path} is not a readable .nemo model: {type(err).__name__}: {err}"
        ) from None


def fine_tuning_config(cfg: DictConfig, pretrained: DictConfig) -> list[str] | None:
    """Make ``cfg.model`` the pretrained model's config with the run's data and optim sections.

    Args:
        cfg: the run's whole config (``model``, ``trainer``, ``asrflow``), changed in place.
        pretrained: the pretrained model's config (:func:`pretrained_config`).

    Returns:
        The labels of a character run config (for :func:`change_vocabulary`), else None.
    """
    from omegaconf import OmegaConf, open_dict

    run_model = cfg.model
    labels = None if is_bpe(cfg) or not run_model.get("labels") else list(run_model.labels)
    merged = OmegaConf.create(OmegaConf.to_container(pretrained, resolve=False))
    sample_rate = int(merged.get("sample_rate", run_model.get("sample_rate", 16000)))
    if int(run_model.get("sample_rate", sample_rate)) != sample_rate:
        log.warning(
            "the run config's sample_rate %s is not the pretrained model's %d: audio is resampled to %d",
            run_model.get("sample_rate"),
            sample_rate,
            sample_rate,
        )
    with open_dict(merged):
        for section in RUN_SECTIONS:
            merged[section] = OmegaConf.create(OmegaConf.to_container(run_model[section], resolve=True))
        merged.sample_rate = sample_rate
        for section in ("train_ds", "validation_ds"):
            merged[section].sample_rate = sample_rate
    unused = sorted(set(run_model) - set(RUN_SECTIONS) - {"sample_rate", "labels", "tokenizer"})
    log.info(
        "fine-tuning config: the architecture from the pretrained model (%s); from the run config: %s%s",
        merged.get("target", "its class"),
        ", ".join(f"model.{s}" for s in RUN_SECTIONS),
        f" (not used: {', '.join(f'model.{key}' for key in unused)})" if unused else "",
    )
    with open_dict(cfg):
        cfg.model = merged
    return labels


def load_pretrained(
    cfg: DictConfig, nemo_path: str, trainer: Any, tokenizer_dir: str | None, labels: list[str] | None
) -> Any:
    """The pretrained model with the run's config (:func:`fine_tuning_config`), its vocabulary
    changed when asked (:func:`change_vocabulary`), and its data loaders set up.

    ``cfg.model`` becomes the model's config after the change (its new vocabulary).
    """
    from nemo.collections.asr.models import ASRModel
    from omegaconf import OmegaConf, open_dict

    model = ASRModel.restore_from(
        nemo_path, override_config_path=cfg.model, trainer=trainer, map_location="cpu"
    )
    log.info(
        "initialised %s (%d parameters) from %s",
        type(model).__name__,
        sum(p.numel() for p in model.parameters()),
        nemo_path,
    )
    change_vocabulary(model, tokenizer_dir, labels)
    with open_dict(cfg):
        cfg.model = OmegaConf.create(OmegaConf.to_container(model.cfg, resolve=False))
    model.setup_training_data(model.cfg.train_ds)
    model.setup_multiple_validation_data(model.cfg.validation_ds)
    return model


def change_vocabulary(model: Any, tokenizer_dir: str | None, labels: list[str] | None) -> None:
    """Give ``model`` the run's vocabulary: a new tokenizer for a sub-word model, the run
    config's labels for a character model. Nothing given: the model keeps its own.

    NeMo's ``change_vocabulary`` keeps the encoder and makes a fresh decoder (and joint, for a
    transducer) of the new size.

    Raises:
        TrainError: a tokenizer for a character model.
    """
    sub_word = hasattr(model, "tokenizer")
    if tokenizer_dir:
        if not sub_word:
            raise TrainError(
                f"--tokenizer {tokenizer_dir}: the --init-from model ({type(model).__name__}) is a character "
                "model; a tokenizer needs a sub-word (BPE) one"
            )
        before = model.tokenizer.vocab_size
        model.change_vocabulary(new_tokenizer_dir=tokenizer_dir, new_tokenizer_type="bpe")
        log.info(
            "vocabulary changed: %d -> %d tokens (tokenizer %s); the decoder starts fresh",
            before,
            model.tokenizer.vocab_size,
            tokenizer_dir,
        )
    elif sub_word:
        log.info("vocabulary: the pretrained model's own tokenizer (%d tokens)", model.tokenizer.vocab_size)
    elif labels and list(labels) != list(model.decoder.vocabulary):
        model.change_vocabulary(new_vocabulary=list(labels))
        log.info("labels changed to the run config's %d; the decoder starts fresh", len(labels))


def encoder_layers(model: Any) -> list[Any]:
    """The encoder's stack of layers (Conformer and FastConformer: ``encoder.layers``)."""
    layers = getattr(model.encoder, "layers", None)
    if layers is None:
        raise TrainError(f"--train-last-layers: {type(model.encoder).__name__} has no layers to count")
    return list(layers)


def trainable_tail(model: Any, train_last_layers: int) -> list[Any]:
    """The encoder modules that still train under a frozen encoder: its last N layers (and the
    output projection after them, where there is one)."""
    if not train_last_layers:
        return []
    layers = encoder_layers(model)
    if train_last_layers >= len(layers):
        raise TrainError(
            f"--train-last-layers {train_last_layers}: the encoder has {len(layers)} layers; "
            "train them all without --freeze-encoder"
        )
    out_proj = getattr(model.encoder, "out_proj", None)
    return layers[-train_last_layers:] + ([out_proj] if out_proj is not None else [])


def freeze_encoder(model: Any, train_last_layers: int = 0) -> None:
    """Fix the encoder's weights but those of its last ``train_last_layers`` layers."""
    model.encoder.freeze()
    for module in trainable_tail(model, train_last_layers):
        module.requires_grad_(True)
    log.info(
        "encoder frozen%s: training %d of %d parameters",
        f" but its last {train_last_layers} layer(s)" if train_last_layers else "",
        sum(p.numel() for p in model.parameters() if p.requires_grad),
        sum(p.numel() for p in model.parameters()),
    )


def keep_frozen_in_eval(model: Any, train_last_layers: int = 0) -> None:
    """The frozen part of the encoder in eval mode, its trainable tail in train mode."""
    model.encoder.eval()
    for module in trainable_tail(model, train_last_layers):
        module.train()


def summary(
    init_from: str, tokenizer_dir: str | None, freeze: bool, train_last_layers: int, model: Any
) -> dict[str, Any]:
    """What a fine-tuning run started from, for its card: the model, its vocabulary, what was frozen.

    Args:
        init_from: ``--init-from`` as given (a .nemo URI or a hub name).
        tokenizer_dir: ``--tokenizer`` as given (None: the model's own vocabulary).
        freeze: ``--freeze-encoder``.
        train_last_layers: ``--train-last-layers``.
        model: the model trained.
    """
    if tokenizer_dir:
        vocabulary = (
            f"new tokenizer {tokenizer_dir} ({model.tokenizer.vocab_size} tokens; decoder trained anew)"
        )
    elif hasattr(model, "tokenizer"):
        vocabulary = f"the pretrained model's own tokenizer ({model.tokenizer.vocab_size} tokens)"
    else:
        vocabulary = f"{len(model.decoder.vocabulary)} characters"
    frozen = "nothing"
    if freeze:
        frozen = (
            f"the encoder but its last {train_last_layers} layer(s)" if train_last_layers else "the encoder"
        )
    return {"init_from": init_from, "vocabulary": vocabulary, "frozen": frozen}
