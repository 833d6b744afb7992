"""``asrflow estimate-buckets``: forwards to :func:`components.buckets.core.estimate_buckets`."""

from __future__ import annotations

import json

import click

from components import cli_options, mixture


@click.command("estimate-buckets")
@click.argument("tarred_dir", metavar="TARRED_DIR")
@click.option(
    "--num-buckets",
    type=click.IntRange(min=2),
    default=30,
    show_default=True,
    help="Duration buckets wanted (K). The bins are the K-1 boundaries between them, the form of "
    "NeMo's train_ds.bucket_duration_bins.",
)
@click.option(
    "--out",
    "out_dir",
    help="Where card.json and duration_histogram.png go (local or gs://). Default: TARRED_DIR/buckets.",
)
@click.option(
    "--max-duration",
    type=click.FloatRange(min=0, min_open=True),
    help="Leave out longer utterances (seconds), as train_ds.max_duration will. Default: the longest.",
)
@click.option(
    "--min-duration",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Leave out shorter utterances (seconds).",
)
@click.option(
    "--batch-duration",
    type=click.FloatRange(min=0, min_open=True),
    default=600.0,
    show_default=True,
    help="Seconds of audio per batch (train_ds.batch_duration) for the padding-efficiency figures.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the simulated samplers.")
@click.option(
    "--efficiency-sample",
    type=click.IntRange(min=1),
    default=200_000,
    show_default=True,
    help="Simulate batches over at most this many utterances (a seeded random sample); "
    "the bins always use all of them.",
)
@cli_options.max_reject_fraction("of manifest lines is unusable (bad JSON, bad duration)")
@click.option(
    "--metadata/--no-metadata",
    "write_metadata",
    default=True,
    show_default=True,
    help="Write the bins into TARRED_DIR/metadata.yaml (other keys are kept).",
)
@click.option(
    mixture.WEIGHT_FLAG, "weight", type=float, default=1.0, show_default=True, help=mixture.WEIGHT_HELP
)
@click.option(mixture.MIX_FLAG, "mix", multiple=True, metavar="DIR=WEIGHT", help=mixture.MIX_HELP)
@click.option(
    mixture.TEMPERATURE_FLAG,
    "mix_temperature",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help=mixture.TEMPERATURE_HELP,
)
def estimate_buckets(
    tarred_dir: str,
    num_buckets: int,
    out_dir: str | None,
    max_duration: float | None,
    min_duration: float,
    batch_duration: float,
    seed: int,
    efficiency_sample: int,
    max_reject_fraction: float,
    write_metadata: bool,
    weight: float,
    mix: tuple[str, ...],
    mix_temperature: float,
) -> None:
    """Estimate Lhotse duration-bucket bins for a NeMo tarred dataset.

    TARRED_DIR is the output of write-shards (or its card.json), local or gs://. Only its
    manifest is read (tarred_audio_manifest.json, else sharded_manifests/), never the audio.
    The bins come from Lhotse's estimate_duration_buckets, as NeMo's estimate_duration_bins.py
    makes them: each bucket holds about the same hours of audio.

    Prints the bins and the padding efficiency (real / padded feature frames, 10 ms frames)
    of batches of --batch-duration seconds, made by Lhotse's DynamicBucketingSampler with
    these bins and by DynamicCutSampler without bucketing, then the card as the last line.
    Writes bucket_duration_bins and num_buckets into TARRED_DIR/metadata.yaml, and card.json
    and duration_histogram.png (the durations with the bin edges) into --out.

    With --mix DIR=WEIGHT (repeated) the bins are for the weighted mixture training draws
    (asrflow train with the same --weight, --mix and --mix-temperature): each source's
    durations count by its share of the utterances. No metadata.yaml is written then, and
    --out defaults to TARRED_DIR/buckets/mix-<key of the mixture>; pass the bins to train as
    --bucket-bins.

    Example: asrflow estimate-buckets data/tarred --num-buckets 30 --batch-duration 600
    """
    from components.buckets import core
    from components.buckets.card import BucketsCard

    card = core.estimate_buckets(
        tarred_dir,
        num_buckets=num_buckets,
        out_dir=out_dir,
        max_duration=max_duration,
        min_duration=min_duration,
        batch_duration=batch_duration,
        seed=seed,
        efficiency_sample=efficiency_sample,
        max_reject_fraction=max_reject_fraction,
        write_metadata=write_metadata,
        weight=weight,
        mix=mix,
        mix_temperature=mix_temperature,
    )
    for line in BucketsCard.from_dict(card).summary_lines():
        click.echo(line)
    click.echo(json.dumps(card, sort_keys=True, ensure_ascii=False))
