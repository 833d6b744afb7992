"""The duration histogram with the bucket edges (``duration_histogram.png``)."""

from __future__ import annotations

from collections.abc import Sequence

from components import storage

HISTOGRAM_NAME = "duration_histogram.png"


def plot_histogram(
    durations: Sequence[float],
    bins: Sequence[float],
    uri: str,
    title: str,
    subtitle: str,
) -> None:
    """Save a duration histogram with the bucket edges as PNG at ``uri`` (local or gs://)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    values = np.asarray(durations, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    edges = [low, *[b for b in bins if low < b < high], high]
    fig, ax = plt.subplots(figsize=(10, 5), dpi=110)
    for index, (start, end) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        if index % 2:
            ax.axvspan(start, end, color="#eef2f7", zorder=0, linewidth=0)
    ax.hist(values, bins=min(120, max(20, len(values) // 25)), color="#3b6ea5", zorder=2)
    for index, edge in enumerate(bins):
        ax.axvline(
            edge,
            color="#d9480f",
            linestyle="--",
            linewidth=1.1,
            zorder=3,
            label=f"bucket edges ({len(bins) + 1} buckets, about equal hours each)" if index == 0 else None,
        )
    ax.set_xlim(0, high * 1.02)
    ax.set_xlabel("utterance duration (seconds)")
    ax.set_ylabel("utterances")
    ax.set_title(f"{title}\n{subtitle}", fontsize=11)
    ax.grid(axis="y", color="#dddddd", zorder=1)
    if bins:
        ax.legend(loc="upper right", frameon=True)
    fig.tight_layout()
    buffer = io.BytesIO()
    # no Software/date metadata: the same data gives the same bytes
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    storage.write_bytes(uri, buffer.getvalue())
