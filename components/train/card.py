"""The cards of ``asrflow train`` and ``asrflow train-tokenizer``, declared once.

``out_dir`` is the step's output directory: the run directory, or the tokenizer directory.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any, ClassVar

from components.cards import Card


@dataclasses.dataclass(kw_only=True)
class TrainCard(Card):
    """What a finished training run reports.

    Attributes:
        model: the trained model, ``RUN_DIR/model.nemo``.
        config: the config's name or path.
        model_class: the NeMo model class.
        family: the model family (:mod:`components.train.families`: ``ctc_char``, ``rnnt_bpe``,
            ``hybrid_tdt_ctc_bpe``, ...); None on cards written before families.
        heads: the decoders the model transcribes with, its own first (``ctc``, ``rnnt``).
        parameters: the model's parameters.
        steps: optimizer steps trained, in all attempts.
        max_steps: the config's ``trainer.max_steps``.
        resumed_from_step: the checkpoint step the last attempt started from (0: none).
        hours_seen: hours of audio trained on, in all attempts.
        final_train_loss: the training loss at the end (mean of the last steps).
        val_wer: the last validation WER of the model's own head (CTC, RNN-T or TDT).
        val_wer_ctc: a hybrid's CTC head's last validation WER (None for other families).
        throughput_audio_s_per_s: seconds of audio trained on per second, last attempt.
        train_wall_seconds: the last attempt's training time.
        dataset: the tarred dataset (TARRED_DIR).
        dataset_hours: its hours, as write-shards recorded them (a mixture: all its sources').
        mixture: a run on a weighted mixture (``--mix``): a source each, TARRED_DIR first, with
            its ``weight``, ``share`` (the share of utterances drawn from it: NeMo's weights
            after ``--mix-temperature``), ``dataset_hours``, and what training saw of it in
            all attempts: ``hours_seen``, ``utterances_seen`` and their shares of the totals.
            Empty for one dataset. ``bad_shards`` ids count the sources' shards in this order.
        mix_temperature: the reweighting temperature of a mixture (None for one dataset).
        fine_tuning: a fine-tuning run's start (``--init-from``): ``init_from``, ``vocabulary``
            and ``frozen`` (:func:`components.train.finetune.summary`); None when trained anew.
        bad_shards: damaged shards left out or skipped, with the reason and when.
        bad_shard_hours: their hours.
        skipped_utterances: utterances skipped inside readable shards.
        accelerator: ``gpu`` or ``cpu``.
        devices: processes per node.
        num_nodes: nodes.
        precision: the Lightning precision trained in.
    """

    STEP: ClassVar[str] = "train"
    model: str
    config: str
    model_class: str
    family: str | None = None
    heads: list[str] = dataclasses.field(default_factory=list)
    parameters: int
    steps: int
    max_steps: int
    resumed_from_step: int
    hours_seen: float
    final_train_loss: float | None
    val_wer: float | None
    val_wer_ctc: float | None = None
    throughput_audio_s_per_s: float
    train_wall_seconds: float
    dataset: str
    dataset_hours: float | None
    mixture: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    mix_temperature: float | None = None
    fine_tuning: dict[str, Any] | None = None
    bad_shards: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    bad_shard_hours: float = 0.0
    skipped_utterances: int = 0
    accelerator: str
    devices: int
    num_nodes: int
    precision: str


@dataclasses.dataclass(kw_only=True)
class TokenizerCard(Card):
    """What ``asrflow train-tokenizer`` reports.

    Attributes:
        tokenizer_model: the SentencePiece model, ``OUT_DIR/tokenizer.model``.
        type: ``bpe`` or ``unigram``.
        vocab_size: the vocabulary's size (``<unk>`` included).
        requested_vocab_size: the size asked for (a soft limit for small corpora).
        sentences: texts learnt from.
        characters: their characters.
        source: the manifest the texts came from.
        seed: SentencePiece's random seed.
    """

    STEP: ClassVar[str] = "train-tokenizer"
    tokenizer_model: str
    type: str
    vocab_size: int
    requested_vocab_size: int
    sentences: int
    characters: int
    source: str
    seed: int


def echo(card: dict[str, Any]) -> dict[str, Any]:
    """Print a card that is already written as the last stdout line, as a fresh run would."""
    sys.stdout.flush()
    print(json.dumps(card, sort_keys=True, ensure_ascii=False), flush=True)
    return card
