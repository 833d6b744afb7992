"""``asrflow train-lm``: forwards to :func:`components.lm.core.train_lm`."""

from __future__ import annotations

import json

import click

from components import cli_options
from components.lm.settings import DEFAULT_HELDOUT_EVERY, DEFAULT_LABEL_ORDER, DEFAULT_ORDER


@click.command("train-lm")
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
@click.option(
    "--tokenizer",
    default="",
    help="For a sub-word model: the train-tokenizer output directory (its tokenizer.model) or a "
    "SentencePiece .model file: the tokenizer of the ASR model the LM will decode with.",
)
@click.option(
    "--labels-from",
    default="",
    metavar="MODEL.nemo|CONFIG.yaml",
    help="For a character model: its .nemo, or its config YAML with model.labels; the LM's tokens "
    "are its labels, one a character. Give this or --tokenizer.",
)
@click.option("--out", "out_dir", required=True, help="Output directory (local or gs://).")
@click.option(
    "--order",
    type=click.IntRange(min=2),
    default=None,
    help=f"The n-gram order, in tokens. [default: {DEFAULT_ORDER} for a tokenizer, "
    f"{DEFAULT_LABEL_ORDER} for labels]",
)
@click.option(
    "--heldout-every",
    type=click.IntRange(min=0),
    default=DEFAULT_HELDOUT_EVERY,
    show_default=True,
    help="Hold out about one utterance in this many (chosen by a hash of its text) and report the "
    "model's perplexity on them; 0 holds out nothing. Held-out text is not in the model.",
)
@cli_options.max_reject_fraction(
    "of manifest lines is unreadable (bad JSON, missing fields) or, with --labels-from, has a "
    "character the labels lack"
)
def train_lm(
    sources: tuple[str, ...],
    tokenizer: str,
    labels_from: str,
    out_dir: str,
    order: int | None,
    heldout_every: int,
    max_reject_fraction: float,
) -> None:
    """Train a token-level n-gram language model for NeMo's n-gram decoding.

    Each SOURCE is a NeMo manifest or a tarred dataset directory (the output of write-shards:
    its tarred_audio_manifest.json, else sharded_manifests/manifest_<i>.json), local or gs://;
    only the text is read. Texts get the shared normalisation, then the ASR model's units:
    the tokenizer's pieces (--tokenizer) or a character model's labels (--labels-from; a text
    with a character the labels lack is rejected, counted by reason in rejects.jsonl).
    The model is interpolated modified Kneser-Ney (as KenLM's lmplz estimates it).

    Writes into --out: lm.arpa (tokens written as chr(id + 100), NeMo's convention), lm.nemo
    (the same model as NeMo's NGramGPULanguageModel), card.json, and _SUCCESS last. Pass
    either file as ngram_lm_model to NeMo's decoding (CTC beam_batch, RNN-T malsd_batch or
    maes_batch) with ngram_lm_alpha as its weight. The same input gives the same bytes.

    Prints the model's size and held-out perplexity, then the card as the last line.

    Examples: asrflow train-lm data/tarred --tokenizer data/tokenizer --order 6 --out data/lm;
    asrflow train-lm data/tarred --labels-from run/model.nemo --order 8 --out data/char-lm
    """
    from components.lm import core

    card = core.train_lm(
        list(sources),
        tokenizer,
        out_dir,
        order=order,
        heldout_every=heldout_every,
        max_reject_fraction=max_reject_fraction,
        labels_from=labels_from,
    )
    for line in core.summary_lines(card):
        click.echo(line)
    click.echo(json.dumps(card.to_dict(), sort_keys=True, ensure_ascii=False))
