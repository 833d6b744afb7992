"""Training curves from a run's TensorBoard events: one HTML page (inline PNG) for the KFP UI."""

from __future__ import annotations

import base64
import html
import io
import tempfile
from pathlib import Path

from components import layout, storage

TENSORBOARD_DIR = layout.TENSORBOARD_DIR
"""Where a run's TensorBoard events go: ``RUN_DIR/tensorboard``."""

PANELS = (
    (("train_loss",), "train loss"),
    (("val_wer", "val_wer_ctc"), "validation WER"),  # a hybrid's CTC head's beside its own
    (("learning_rate",), "learning rate"),
    (("throughput_audio_s_per_s",), "throughput (audio s / s)"),
)
"""The four panels: the TensorBoard tags each plots, and its title."""


def read_scalars(event_dir: str) -> dict[str, list[tuple[int, float]]]:
    """``tag -> [(step, value)]`` for the tags in :data:`PANELS` (local or gs:// directory)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    wanted = {tag for tags, _ in PANELS for tag in tags}
    with tempfile.TemporaryDirectory() as tmp:
        local = event_dir
        if storage.is_gcs(event_dir):
            for info in storage.list_files(event_dir):
                storage.download_file(info.uri, Path(tmp, storage.basename(info.uri)))
            local = tmp
        events = EventAccumulator(local, size_guidance={"scalars": 0})
        events.Reload()
        tags = set(events.Tags()["scalars"])
        return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in sorted(wanted & tags)}


def curves_png(scalars: dict[str, list[tuple[int, float]]], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    for ax, (tags, label) in zip(axes.flat, PANELS, strict=True):
        plotted = [tag for tag in tags if scalars.get(tag)]
        for tag in plotted:
            steps, values = zip(*scalars[tag], strict=True)
            few = len(steps) < 30
            ax.plot(steps, values, marker="o" if few else None, markersize=3, label=tag)
        if not plotted:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        elif len(plotted) > 1:
            ax.legend()
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def curves_html(run_dir: str) -> str:
    """An HTML page with the run's loss, validation WER, learning rate and throughput."""
    scalars = read_scalars(storage.join(run_dir, TENSORBOARD_DIR))
    png = base64.b64encode(curves_png(scalars, f"training curves: {run_dir}")).decode("ascii")
    return (
        "<html><body>"
        f"<h3>Training curves</h3><p>{html.escape(run_dir)}</p>"
        f'<img alt="training curves" src="data:image/png;base64,{png}"/>'
        "</body></html>"
    )
