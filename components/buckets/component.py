"""The ``estimate_buckets`` KFP component: a thin wrapper over :mod:`components.buckets.core`."""

from kfp import dsl

from components.images import DATA_IMAGE


@dsl.component(base_image=DATA_IMAGE, install_kfp_package=False)
def estimate_buckets(
    tarred_dir: str,
    card: dsl.Output[dsl.Artifact],
    histogram: dsl.Output[dsl.HTML],
    metrics: dsl.Output[dsl.Metrics],
    num_buckets: int = 30,
    out_dir: str = "",
    max_duration: float = 0.0,
    batch_duration: float = 600.0,
    seed: int = 0,
    weight: float = 1.0,
    mix: list = [],  # noqa: B006 - KFP needs a literal default
    mix_temperature: float = 1.0,
) -> list:
    """Estimate Lhotse duration-bucket bins for a tarred dataset and write them into its metadata.yaml.

    Args:
        tarred_dir: the write-shards output directory (its manifest is read, not the audio).
        card: the step's card (bins, num_buckets, max_duration, padding efficiency, paths).
        histogram: the duration histogram with the bin edges, and the figures, for the UI.
        metrics: padding efficiency with and without bucketing, and the number of buckets.
        num_buckets: buckets wanted; the bins are the num_buckets-1 boundaries between them.
        out_dir: where card.json and duration_histogram.png go; empty: <tarred_dir>/buckets.
        max_duration: leave out longer utterances (seconds); 0: the longest there is.
        batch_duration: seconds of audio per batch, for the padding-efficiency figures.
        seed: seed of the simulated samplers.
        weight: tarred_dir's weight in a mixture with ``mix``.
        mix: more tarred datasets, ``DIR=WEIGHT`` each: the bins are then those of the
            weighted mixture training draws (no metadata.yaml is written); empty: tarred_dir alone.
        mix_temperature: the mixture's reweighting temperature (NeMo's reweight_temperature).

    Returns:
        The bucket_duration_bins (seconds), for NeMo's train_ds.bucket_duration_bins.
    """
    import base64
    import html
    import json

    from components import storage
    from components.buckets import core
    from components.buckets.card import BucketsCard

    result = core.estimate_buckets(
        tarred_dir,
        num_buckets=num_buckets,
        out_dir=out_dir or None,
        max_duration=max_duration or None,
        batch_duration=batch_duration,
        seed=seed,
        weight=weight,
        mix=list(mix),
        mix_temperature=mix_temperature,
    )
    with open(card.path, "w", encoding="utf-8") as out:
        json.dump(result, out, sort_keys=True, indent=2)
    card.metadata.update({key: result[key] for key in ("num_buckets", "max_duration", "out_dir")})
    png = base64.b64encode(storage.read_bytes(result["histogram"])).decode("ascii")
    lines = "<br>".join(html.escape(line) for line in BucketsCard.from_dict(result).summary_lines())
    with open(histogram.path, "w", encoding="utf-8") as out:
        out.write(f'<html><body><img src="data:image/png;base64,{png}">')
        out.write(f"<p><code>{lines}</code></p></body></html>")
    efficiency = result["padding_efficiency"]
    metrics.log_metric("num_buckets", result["num_buckets"])
    metrics.log_metric("padding_efficiency_bucketed", efficiency["bucketed"]["efficiency"])
    metrics.log_metric("padding_efficiency_unbucketed", efficiency["unbucketed"]["efficiency"])
    metrics.log_metric("padding_efficiency_ratio", efficiency["ratio"])
    return list(result["bucket_duration_bins"])
