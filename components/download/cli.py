"""``asrflow download``: forwards to :func:`components.download.core.download`."""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from typing import Any

import click

from components.columns import DEFAULT_COLUMNS, DURATION_CANDIDATES, MILLISECONDS_SUFFIX
from components.download.data_files import DEFAULT_SPLIT
from components.download.files import DEFAULT_WORKERS, DownloadRequest

REQUEST_FIELDS = frozenset(field.name for field in dataclasses.fields(DownloadRequest))


def source_options(command: Callable[..., None]) -> Callable[..., None]:
    """The options that say which data SOURCE means: config, split, revision, pattern, dataset.

    The command gets SOURCE, these and the command's other options that are
    :class:`~components.download.files.DownloadRequest` fields (``--workers``) as one
    ``request``; the rest of its parameters as they are.
    """
    options = (
        click.option(
            "--config",
            default=None,
            help="Dataset config, e.g. clean [default: the only one, or the one the dataset card marks "
            "default].",
        ),
        click.option(
            "--split", default=DEFAULT_SPLIT, show_default=True, help="Split: train, validation, test, ..."
        ),
        click.option(
            "--revision",
            default=None,
            help="Hub branch, tag or commit (recorded as the commit SHA) [default: main]. For local "
            "and gs:// sources: the content hash the data must have.",
        ),
        click.option(
            "--pattern",
            default=None,
            help="Glob of the data files relative to SOURCE, {config} and {split} filled in, e.g. "
            "'{config}/{split}/*.parquet'; '*' stays in one directory, '**' crosses them "
            "[default: the dataset card's configs, else CONFIG/SPLIT-*.parquet].",
        ),
        click.option(
            "--dataset", default=None, help="Dataset name in the card and key [default: from SOURCE]."
        ),
    )
    for option in reversed(options):
        command = option(command)

    @functools.wraps(command)
    def with_request(**params: Any) -> None:
        fields = {name: params.pop(name) for name in REQUEST_FIELDS & params.keys()}
        return command(request=DownloadRequest(**fields), **params)

    return with_request


@click.command("resolve-revision")
@click.argument("source")
@source_options
def resolve_revision(request: DownloadRequest) -> None:
    """Print the revision a download of SOURCE would have now, copying nothing.

    A hub branch or tag becomes its commit SHA; a local directory, gs:// prefix or manifest
    gets the hash of its file listing (names, sizes, checksums). The pipeline runs this
    first, uncached, and keys the cached download by it. The card is the last stdout line.

    \b
    Example:
      asrflow resolve-revision hf://datasets/MLCommons/peoples_speech --config clean
    """
    from components.download import core
    from components.manifest import ManifestError

    try:
        card = core.resolve_revision(request)
    except (core.DownloadError, ManifestError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(json.dumps(card.to_dict(), sort_keys=True, ensure_ascii=False))


@click.command("download")
@click.argument("source")
@click.option("--out", default=None, help="Output directory, local or gs://.")
@click.option(
    "--data-root",
    default=None,
    envvar="ASRFLOW_DATA_ROOT",
    help="Without --out: write to DATA_ROOT/datasets/DATASET/CONFIG/SPLIT/REVISION/raw "
    "[env: ASRFLOW_DATA_ROOT].",
)
@source_options
@click.option(
    "--workers", type=click.IntRange(min=1), default=DEFAULT_WORKERS, show_default=True,
    help="Files copied at once.",
)  # fmt: skip
@click.option(
    "--id-column", default=DEFAULT_COLUMNS.id, show_default=True, help="Parquet column with the utterance id."
)
@click.option(
    "--audio-column", default=DEFAULT_COLUMNS.audio, show_default=True, help="Parquet column with the audio."
)
@click.option(
    "--text-column",
    default=DEFAULT_COLUMNS.text,
    show_default=True,
    help="Parquet column with the transcript.",
)
@click.option(
    "--duration-column",
    default=None,
    help=f"Parquet column with the duration, in seconds, or milliseconds when the name ends in "
    f"{MILLISECONDS_SUFFIX} [default: {' or '.join(DURATION_CANDIDATES)} when present, else read from "
    "the audio headers].",
)
@click.option("--max-mbps", type=click.FloatRange(min=0, min_open=True), default=None, help="Cap on MB/s.")
def download(
    request: DownloadRequest,
    out: str | None,
    data_root: str | None,
    id_column: str,
    audio_column: str,
    text_column: str,
    duration_column: str | None,
    max_mbps: float | None,
) -> None:
    """Copy a speech dataset to a local directory or gs:// prefix, verified and resumable.

    \b
    SOURCE is one of:
      hf://datasets/OWNER/NAME  a dataset on the Hugging Face hub (token: HF_TOKEN)
      DIR or gs://BUCKET/PATH   a copy of the hub's parquet layout (CONFIG/SPLIT-*.parquet)
      MANIFEST.json             a NeMo manifest; its audio files are copied too

    Files are copied in parallel and streamed, each written atomically and checked against
    the source's size and checksum. A rerun skips the files that check out and redoes the
    rest; _SUCCESS is written last. OUT receives the files under their relative paths (for a
    manifest: audio/... and manifest.json) and card.json: source, revision, files, bytes,
    rows, hours, columns. The card is printed as the last line of stdout.

    \b
    Examples:
      asrflow download hf://datasets/MLCommons/peoples_speech --config clean --split train \\
          --data-root gs://BUCKET/asrflow --workers 16
      asrflow download hf://datasets/openslr/librispeech_asr --config clean --split test \\
          --out /data/ls-test-clean
      asrflow download tests/data/peoples_speech --config clean --split validation --out /tmp/dev
    """
    from components.columns import Columns
    from components.download import core
    from components.manifest import ManifestError

    columns = Columns.from_options(id_column, audio_column, text_column, duration_column or "")
    try:
        card = core.download(request, out, data_root=data_root, columns=columns, max_mbps=max_mbps)
    except (core.DownloadError, ManifestError, FileExistsError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(json.dumps(card.to_dict(), sort_keys=True, ensure_ascii=False))
