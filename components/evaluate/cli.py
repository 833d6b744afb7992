"""``asrflow evaluate``: forwards to :func:`components.evaluate.core.evaluate`."""

from __future__ import annotations

import click

from components.evaluate.champion import DEFAULT_MAX_WER
from components.evaluate.decoding import DEFAULT_BEAM_SIZE, DEFAULT_BOOST_ALPHA
from components.evaluate.lm import DEFAULT_ALPHA_GRID, DEFAULT_LM_ALPHA


@click.command("evaluate")
@click.argument("model", metavar="MODEL.nemo")
@click.argument("eval_sets", metavar="MANIFEST...", nargs=-1, required=True)
@click.option("--out", "out_dir", required=True, help="Output directory (local or gs://).")
@click.option(
    "--champion",
    "champion_uri",
    default=None,
    metavar="URI",
    help="champion.json of the model in service (e.g. DATA_ROOT/models/NAME/champion.json). "
    "Written (atomically) only when this model has a lower mean WER; absent means this model "
    "becomes the champion.",
)
@click.option("--batch-size", default=16, show_default=True, help="Utterances per forward pass.")
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto (the GPU when there is one), cpu, cuda or cuda:N.",
)
@click.option(
    "--num-workers", type=int, default=None, help="Audio loading workers [default: 0 on CPU, 4 on GPU]."
)
@click.option("--worst", default=10, show_default=True, help="Worst utterances listed per set in report.md.")
@click.option(
    "--min-improvement",
    default=0.0,
    show_default=True,
    help="Mean-WER gain (absolute, 0.005 = half a point) needed to replace the champion; ties keep it.",
)
@click.option(
    "--max-wer",
    type=click.FloatRange(min=0),
    default=DEFAULT_MAX_WER,
    show_default=True,
    help="Promotion ceiling: a model whose mean WER is above it is never promoted, even when "
    "there is no champion yet (1.0 = 100%).",
)
@click.option(
    "--reevaluate-champion",
    is_flag=True,
    help="Re-evaluate the champion even when its recorded WER was measured on these same sets.",
)
@click.option(
    "--lm",
    default=None,
    metavar="LM",
    help="An n-gram LM from `asrflow train-lm` (its output directory, or its lm.nemo / lm.arpa), "
    "built for this model's units (train-lm --tokenizer with its tokenizer, or --labels-from with a "
    "character model): each set is also scored by beam search with it.",
)
@click.option(
    "--lm-alpha",
    type=click.FloatRange(min=0),
    default=DEFAULT_LM_ALPHA,
    show_default=True,
    help="The LM's weight in the beam search score (NeMo's ngram_lm_alpha).",
)
@click.option(
    "--beam",
    "beam_size",
    type=click.IntRange(min=1),
    default=None,
    help="Beam size; alone, adds beam search without an LM "
    f"[default: {DEFAULT_BEAM_SIZE} with --lm or --boost].",
)
@click.option(
    "--tune-lm-alpha",
    is_flag=True,
    help="Pick the LM weight on the validation set only (each of --lm-alpha-grid), then use it on every set.",
)
@click.option(
    "--lm-alpha-grid",
    default=",".join(f"{a:g}" for a in DEFAULT_ALPHA_GRID),
    show_default=True,
    help="The LM weights --tune-lm-alpha tries.",
)
@click.option(
    "--validation-set",
    default=None,
    metavar="NAME",
    help="The set --tune-lm-alpha tunes on [default: the first set].",
)
@click.option(
    "--boost",
    default=None,
    metavar="FILE",
    help="Key phrases (one a line) boosted in the beam search (NeMo's boosting tree).",
)
@click.option(
    "--boost-alpha",
    type=click.FloatRange(min=0),
    default=DEFAULT_BOOST_ALPHA,
    show_default=True,
    help="The key phrases' weight in the beam search score.",
)
def evaluate(
    model: str,
    eval_sets: tuple[str, ...],
    out_dir: str,
    champion_uri: str | None,
    batch_size: int,
    device: str,
    num_workers: int | None,
    worst: int,
    min_improvement: float,
    max_wer: float,
    reevaluate_champion: bool,
    lm: str | None,
    lm_alpha: float,
    beam_size: int | None,
    tune_lm_alpha: bool,
    lm_alpha_grid: str,
    validation_set: str | None,
    boost: str | None,
    boost_alpha: float,
) -> None:
    """Transcribe eval sets with a NeMo model and score WER and CER.

    MODEL.nemo is a local path or gs:// URI. Each MANIFEST is a NeMo manifest (audio paths
    absolute, gs://, or relative to the manifest's directory), a downloaded parquet
    directory or a download card; name a set with NAME=PATH (default: the manifest's name,
    or its directory's when the file is called manifest*.json).

    References and hypotheses are normalised as for training (lower case, punctuation
    dropped) and scored by jiwer over each whole set. Writes OUT/SET/hypotheses.jsonl
    (text, pred_text, per-utterance wer and cer), OUT/report.md (a table of sets and the
    worst utterances) and OUT/card.json (per-set wer, cer, substitutions, insertions,
    deletions, hits, num_utterances, hours), printed as the last line of stdout.

    Every head of the model is scored: CTC, RNN-T, or both for a hybrid RNN-T + CTC model,
    greedy. The main figures (card sets.SET.wer, mean_wer, the champion comparison) are the
    served decoding's: the head NeMo decodes with once the model is restored, greedy; the
    card's `decodings` and the report name every decoding. With --lm (and --beam, --boost),
    each set is also scored by beam search without and with the LM; OUT/SET/DECODING/ holds
    those hypotheses.

    With --champion, the model replaces the champion when its mean WER over the sets (each
    set weighing the same) is lower. The champion's recorded WER is reused only when it was
    measured on exactly these sets; otherwise the champion model is re-evaluated here.

    \b
    Example:
      asrflow evaluate gs://B/runs/r1/model.nemo dev-clean=gs://B/ls/dev-clean/manifest.json \\
          --out gs://B/runs/r1/eval --champion gs://B/models/ps/champion.json
      asrflow evaluate model.nemo dev=dev.json test=test.json --out eval \\
          --lm gs://B/runs/r1/lm --tune-lm-alpha --validation-set dev --beam 8
    """
    from components.evaluate import core
    from components.evaluate.lm import parse_alpha_grid
    from components.manifest import ManifestError

    try:
        options = core.DecodingOptions(
            lm=lm,
            lm_alpha=lm_alpha,
            beam_size=beam_size or 0,
            tune_lm_alpha=tune_lm_alpha,
            lm_alpha_grid=parse_alpha_grid(lm_alpha_grid),
            validation_set=validation_set,
            boost=boost,
            boost_alpha=boost_alpha,
        )
        core.evaluate(
            model,
            list(eval_sets),
            out_dir,
            champion_uri=champion_uri,
            batch_size=batch_size,
            device=device,
            num_workers=num_workers,
            worst=worst,
            min_improvement=min_improvement,
            max_wer=max_wer,
            reevaluate_champion=reevaluate_champion,
            decoding=options,
        )
    except (core.EvaluateError, ManifestError) as err:
        raise click.ClickException(str(err)) from None
