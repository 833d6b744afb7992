"""The estimate-buckets step's card, and the lines a person reads first."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, ClassVar

from components.cards import Card


@dataclasses.dataclass
class BucketsCard(Card):
    """Duration bins for a tarred dataset and what they are worth.

    Attributes:
        out_dir: where card.json, the histogram and rejects.jsonl go.
        tarred_dir: the tarred dataset the bins are for.
        manifests: the manifests read.
        num_buckets: buckets the bins make (K); fewer than asked when durations repeat.
        bucket_duration_bins: the K-1 ascending boundaries, NeMo's ``train_ds.bucket_duration_bins``.
        max_duration: the longest duration kept (seconds).
        min_duration: the shortest duration kept (seconds).
        num_buckets_requested: buckets asked for.
        utterances: utterances whose durations made the bins.
        hours: their audio, in hours.
        padding_efficiency: real / padded frames of simulated batches, with and without the bins.
        histogram: the duration histogram (PNG).
        filtered: utterances outside the duration limits.
        rejected: manifest lines that could not be used.
        rejects_by_reason: those lines by reason.
        mixture: bins over a weighted mixture (``--mix``): a source each, ``tarred_dir`` first,
            with its ``weight``, ``share`` of the utterances and ``utterances``; ``utterances``
            and ``hours`` above are then those of the mixture's stand-in sample. Empty: one dataset.
        mix_temperature: the mixture's reweighting temperature (None: one dataset).
        metadata: the metadata.yaml the bins were written into (None: not written).
        rejects: rejects.jsonl (None, and left out of the JSON, when no line was rejected).
    """

    STEP: ClassVar[str] = "estimate-buckets"
    tarred_dir: str
    manifests: list[str]
    num_buckets: int
    bucket_duration_bins: list[float]
    max_duration: float
    min_duration: float
    num_buckets_requested: int
    utterances: int
    hours: float
    padding_efficiency: dict[str, Any]
    histogram: str
    filtered: int
    rejected: int
    rejects_by_reason: dict[str, int]
    mixture: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    mix_temperature: float | None = None
    metadata: str | None = None
    rejects: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        if self.rejects is None:
            del data["rejects"]
        return data

    def metadata_section(self) -> dict[str, Any]:
        """The ``buckets`` section of metadata.yaml: the bins and the efficiency figures."""
        efficiency = self.padding_efficiency
        return {
            "num_buckets": self.num_buckets,
            "bucket_duration_bins": list(self.bucket_duration_bins),
            "max_duration": self.max_duration,
            "min_duration": self.min_duration,
            "num_buckets_requested": self.num_buckets_requested,
            "utterances": self.utterances,
            "hours": self.hours,
            "padding_efficiency": {
                "batch_duration": efficiency["batch_duration"],
                "bucketed": efficiency["bucketed"]["efficiency"],
                "unbucketed": efficiency["unbucketed"]["efficiency"],
                "ratio": efficiency["ratio"],
            },
            "histogram": self.histogram,
        }

    def summary_lines(self) -> Iterator[str]:
        """What a person reads first: the bins and the padding efficiency, with and without."""
        efficiency = self.padding_efficiency
        yield f"num_buckets={self.num_buckets} max_duration={self.max_duration}"
        yield "bucket_duration_bins=[" + ",".join(f"{b:g}" for b in self.bucket_duration_bins) + "]"
        for name in ("bucketed", "unbucketed"):
            figures = efficiency[name]
            yield (
                f"padding efficiency {name:>10}: {figures['efficiency']:.4f} "
                f"({figures['real_frames']:,} real / {figures['padded_frames']:,} padded frames, "
                f"{figures['batches']:,} batches of {efficiency['batch_duration']:g} s, "
                f"{figures['mean_batch_size']:g} utterances each)"
            )
        yield f"padding efficiency ratio bucketed/unbucketed: {efficiency['ratio']:.3f}"
        yield f"histogram: {self.histogram}"
