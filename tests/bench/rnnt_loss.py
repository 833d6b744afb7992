"""Benchmark of the CPU RNN-T loss: asrflow's vectorised loss against NeMo's own CPU loss.

``python -m tests.bench rnnt_loss`` times forward + backward of both losses on the same joint
output, shaped like one fused sub-batch of a ``small_rnnt_bpe`` step (4 utterances of about
6 s at 25 frames a second, up to 45 sub-words of a 128-piece vocabulary and the blank), and
prints seconds per call, the ratio, and how far apart the two losses' values and gradients
are. Figures only.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

BATCH = 4  # small_rnnt_bpe's fused_batch_size
FRAMES = 150
TOKENS = 45
VOCABULARY = 129
REPEATS = 3


def timed(loss: torch.nn.Module, inputs: tuple) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Seconds for one forward + backward, the per-utterance losses and the gradient."""
    import torch

    acts, labels, frame_lengths, label_lengths = inputs
    acts = acts.detach().requires_grad_()
    started = time.perf_counter()
    losses = loss(acts, labels, frame_lengths, label_lengths)
    (gradient,) = torch.autograd.grad(losses.sum(), acts)
    return time.perf_counter() - started, losses.detach(), gradient


def run(workdir: Path) -> None:
    import torch
    from nemo.collections.asr.parts.numba.rnnt_loss.rnnt_pytorch import RNNTLossNumba

    from components.train.rnnt_loss import FastCpuRnntLoss

    generator = torch.Generator().manual_seed(0)
    inputs = (
        torch.randn(BATCH, FRAMES, TOKENS + 1, VOCABULARY, generator=generator),
        torch.randint(0, VOCABULARY - 1, (BATCH, TOKENS), generator=generator),
        torch.tensor([FRAMES, FRAMES - 20, FRAMES - 45, FRAMES - 70]),
        torch.tensor([TOKENS, TOKENS - 6, TOKENS - 15, TOKENS - 22]),
    )
    blank = VOCABULARY - 1
    losses = {"nemo": RNNTLossNumba(blank=blank, reduction=None), "asrflow": FastCpuRnntLoss(blank=blank)}
    seconds: dict[str, list[float]] = {name: [] for name in losses}
    results = {}
    for _ in range(REPEATS):
        for name, loss in losses.items():
            took, values, gradient = timed(loss, inputs)
            seconds[name].append(took)
            results[name] = (values, gradient)
    nemo_s, ours_s = statistics.median(seconds["nemo"]), statistics.median(seconds["asrflow"])
    value_gap = ((results["asrflow"][0] - results["nemo"][0]).abs() / results["nemo"][0].abs()).max()
    gradient_gap = (results["asrflow"][1] - results["nemo"][1]).abs().max()
    print(
        f"rnnt_loss (CPU, forward + backward, {BATCH} x {FRAMES} frames x {TOKENS + 1} x {VOCABULARY}, "
        f"{torch.get_num_threads()} threads): NeMo's warprnnt_numba CPU loss {nemo_s:.3f} s, asrflow's "
        f"vectorised loss {ours_s:.3f} s: {nemo_s / ours_s:.0f}x faster (median of {REPEATS}); "
        f"largest relative loss difference {value_gap:.1e}, largest gradient difference {gradient_gap:.1e}"
    )
