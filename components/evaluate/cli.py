"""``asrflow evaluate``: forwards to :func:`components.evaluate.core.evaluate`."""

from __future__ import annotations

import click

from components.evaluate.champion import DEFAULT_MAX_WER


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

    With --champion, the model replaces the champion when its mean WER over the sets (each
    set weighing the same) is lower. The champion's recorded WER is reused only when it was
    measured on exactly these sets; otherwise the champion model is re-evaluated here.

    \b
    Example:
      asrflow evaluate gs://B/runs/r1/model.nemo dev-clean=gs://B/ls/dev-clean/manifest.json \\
          --out gs://B/runs/r1/eval --champion gs://B/models/ps/champion.json
    """
    from components.evaluate import core
    from components.manifest import ManifestError

    try:
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
        )
    except (core.EvaluateError, ManifestError) as err:
        raise click.ClickException(str(err)) from None
