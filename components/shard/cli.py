"""``asrflow write-shards``: forwards to :func:`components.shard.core.write_shards`."""

from __future__ import annotations

import json
import os

import click

from components import cli_options


def _parse_group(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    index, sep, count = value.partition("/")
    try:
        group, groups = int(index), int(count)
    except ValueError:
        raise click.BadParameter(f"expected I/G (e.g. 3/16), got {value!r}") from None
    if not sep or groups < 1 or not 0 <= group < groups:
        raise click.BadParameter(f"expected I/G with 0 <= I < G, got {value!r}")
    return group, groups


@click.command("write-shards")
@click.argument("input_uri", metavar="INPUT")
@click.option("--out", "out_dir", required=True, help="Output directory (local or gs://).")
@click.option(
    "--num-shards", type=click.IntRange(min=1), required=True, help="Number of audio_<i>.tar shards."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the item-to-shard assignment.")
@click.option("--split", help="Read only this split when INPUT holds several (e.g. train).")
@click.option(
    "--min-duration", type=float, default=0.1, show_default=True, help="Reject shorter audio (seconds)."
)
@click.option("--max-duration", type=float, help="Reject longer audio (seconds); default: no limit.")
@cli_options.max_reject_fraction("of items is faulty (duration filters not counted)")
@click.option(
    "--resample/--reject-resample",
    default=True,
    show_default=True,
    help="Convert other sample rates and multi-channel audio to 16 kHz mono, or reject them.",
)
@click.option(
    "--full-decode", is_flag=True, help="Decode all audio (finds damaged data; slower than header checks)."
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=lambda: os.cpu_count() or 1,
    show_default="CPU count",
    help="Groups written at the same time; the output does not depend on it.",
)
@click.option(
    "--groups",
    type=click.IntRange(min=1),
    help="Cut the input into G groups, each writing its own range of shards: parquet files go "
    "whole to a group (default: one group per 8 files; shards mix files within a group), the "
    "lines of manifests are dealt to all G (default: one group per 256 KiB of manifest, at most "
    "64). The output depends on G, never on --workers.",
)
@click.option(
    "--group",
    callback=_parse_group,
    metavar="I/G",
    help="Write only group I of G (one task of a fan-out) and print its card; merge with --merge.",
)
@click.option("--merge", "merge_only", is_flag=True, help="Only merge groups written earlier with --group.")
def write_shards(
    input_uri: str,
    out_dir: str,
    num_shards: int,
    seed: int,
    split: str | None,
    min_duration: float,
    max_duration: float | None,
    max_reject_fraction: float,
    resample: bool,
    full_decode: bool,
    workers: int,
    groups: int | None,
    group: tuple[int, int] | None,
    merge_only: bool,
) -> None:
    """Validate INPUT's utterances and write them as a NeMo tarred dataset in --out.

    INPUT is a directory of parquet files (People's Speech's schema: id, audio{bytes,path},
    duration_ms, text), a download card (card.json or its directory), or a NeMo manifest
    whose audio paths are absolute or relative to it.

    Output: audio_<i>.tar, tarred_audio_manifest.json, sharded_manifests/manifest_<i>.json,
    metadata.yaml (NeMo's layout), rejects.jsonl (id, source, reason), card.json, _SUCCESS.
    Every item is checked: audio decodes (header and frame count; all of it with
    --full-decode), 16 kHz mono (or converted), duration within the limits, text valid UTF-8
    and non-empty after normalisation. The same INPUT, --seed and --groups give the same
    bytes; a rerun after a crash finishes the work and gives the same bytes too.

    --out must be empty or hold an earlier write-shards run; a second run on the same --out
    while one is writing fails at once, naming it.

    Reject reasons: audio_missing, audio_empty, audio_corrupt, sample_rate, channels,
    duration_mismatch, text_empty, text_not_utf8, manifest_malformed, duplicate_id; and
    too_short, too_long from the duration filters, which do not count towards
    --max-reject-fraction.

    \b
    One machine:   asrflow write-shards data/raw --out data/tarred --num-shards 64 --seed 1
    Fan-out:       asrflow write-shards IN --out OUT --num-shards 64 --group 3/16   (x16)
    then merge:    asrflow write-shards IN --out OUT --num-shards 64 --groups 16 --merge
    """
    from components.audio import Rules
    from components.items import SourceError
    from components.manifest import RejectThresholdExceeded
    from components.shard import core

    rules = Rules(
        min_duration=min_duration,
        max_duration=max_duration,
        resample=resample,
        full_decode=full_decode,
    )
    if group is not None and groups is not None and groups != group[1]:
        raise click.BadParameter(f"--groups {groups} disagrees with --group {group[0]}/{group[1]}")
    try:
        result = core.write_shards(
            input_uri,
            out_dir,
            num_shards,
            seed,
            split=split,
            rules=rules,
            max_reject_fraction=max_reject_fraction,
            workers=workers,
            groups=group[1] if group else groups,
            group=group[0] if group else None,
            merge_only=merge_only,
        )
    except (core.ShardError, SourceError, RejectThresholdExceeded) as err:
        raise click.ClickException(str(err)) from None
    click.echo(json.dumps(result, sort_keys=True, ensure_ascii=False))
