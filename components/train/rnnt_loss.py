"""An RNN-T loss that is fast on CPU, for the transducer families trained without a GPU.

NeMo 3.0.0's default RNN-T loss (``warprnnt_numba``) runs a CUDA kernel on GPUs, but on CPU
it walks every (frame, token) cell of every utterance in plain Python
(``parts/numba/rnnt_loss/utils/cpu_utils/cpu_rnnt.py``: ``compute_alphas`` and
``compute_betas_and_grads`` loop over t and u with scalar torch ops). py-spy on a
``small_rnnt_bpe`` step on 2 cores: 85% of the step in that loss, about 60 s a step.

:func:`rnnt_loss` computes the same negative log-likelihood one frame at a time for all
utterances and all token positions at once, and leaves the gradient to autograd. Within a
frame t the forward variable is

    alpha[t, u] = logaddexp(alpha[t-1, u] + blank[t-1, u], alpha[t, u-1] + emit[t, u-1])

and the in-frame dependence on u unrolls to a prefix log-sum-exp: with C[u] the cumulative
sum of emit[t, :u], alpha[t, u] = C[u] + logcumsumexp_k(alpha[t-1, k] + blank[t-1, k] - C[k]).
So a batch costs T small tensor operations instead of B x T x U Python steps.

:func:`use_fast_cpu_rnnt_loss` puts it inside a model's NeMo ``RNNTLoss`` (which keeps its
reduction and the joint's fused sub-batches) when training runs on CPU. The numba loss stays
on GPUs: its CUDA kernel is the fast one there.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger("asrflow.train")


def rnnt_loss(
    log_probs: torch.Tensor,
    labels: torch.Tensor,
    frame_lengths: torch.Tensor,
    label_lengths: torch.Tensor,
    blank: int,
) -> torch.Tensor:
    """Per-utterance RNN-T negative log-likelihood.

    ``log_probs``: [B, T, U+1, V] log-probabilities (normalised over V); ``labels``: [B, U]
    token ids (padding beyond each ``label_lengths`` is ignored); ``frame_lengths`` and
    ``label_lengths``: [B]. Returns [B].
    """
    batch, frames, positions, _ = log_probs.shape
    tokens = labels[:, : positions - 1].clamp(min=0, max=log_probs.shape[-1] - 1)
    # The recursion sums hundreds of log-probabilities: float64 keeps the prefix trick precise.
    blank_lp = log_probs[..., blank].double()
    emit_lp = log_probs[:, :, :-1, :].gather(3, tokens[:, None, :, None].expand(-1, frames, -1, 1))
    emit_lp = emit_lp.squeeze(3).double()
    emitted_before = torch.nn.functional.pad(emit_lp.cumsum(dim=2), (1, 0))  # C[t, u]

    alpha = emitted_before[:, 0]  # frame 0: only emissions from (0, 0)
    alphas = [alpha]
    for t in range(1, frames):
        arrived = alpha + blank_lp[:, t - 1]
        alpha = emitted_before[:, t] + torch.logcumsumexp(arrived - emitted_before[:, t], dim=1)
        alphas.append(alpha)

    last_frame = (frame_lengths.long() - 1).clamp(min=0)
    rows = torch.arange(batch, device=log_probs.device)
    final = torch.stack(alphas, dim=1)[rows, last_frame, label_lengths.long()]
    final = final + blank_lp[rows, last_frame, label_lengths.long()]
    return (-final).to(log_probs.dtype)


class FastCpuRnntLoss(torch.nn.Module):
    """:func:`rnnt_loss` with the call shape of NeMo's inner RNN-T losses (``RNNTLoss._loss``).

    NeMo's ``RNNTLoss`` sets ``reduction`` to None around the call and reduces itself; the
    activations arrive as the joint's output, normalised here as NeMo's CPU path does.
    """

    def __init__(self, blank: int) -> None:
        super().__init__()
        self.blank = blank
        self.reduction: str | None = None

    def forward(
        self, acts: torch.Tensor, labels: torch.Tensor, act_lens: torch.Tensor, label_lens: torch.Tensor
    ) -> torch.Tensor:
        if acts.dtype in (torch.float16, torch.bfloat16):  # as NeMo's CPU path: no half log_softmax
            acts = acts.float()
        log_probs = torch.nn.functional.log_softmax(acts, dim=-1)
        losses = rnnt_loss(log_probs, labels, act_lens, label_lens, self.blank)
        if self.reduction in ("sum", "mean"):  # as _RNNTNumba: the mean is over the batch
            total = losses.sum()
            return total / len(losses) if self.reduction == "mean" else total
        return losses


def use_fast_cpu_rnnt_loss(model: Any, accelerator: str) -> bool:
    """Swap NeMo's CPU RNN-T loss for :class:`FastCpuRnntLoss` when training on CPU.

    Only the plain numba RNN-T loss is swapped, and only without FastEmit or gradient
    clamping (which :func:`rnnt_loss` does not do): TDT and the other losses are left alone.
    Returns whether the loss was swapped.
    """
    from nemo.collections.asr.losses.rnnt import RNNTLoss
    from nemo.collections.asr.parts.numba.rnnt_loss.rnnt_pytorch import RNNTLossNumba

    outer = getattr(model, "loss", None)
    if accelerator != "cpu" or not isinstance(outer, RNNTLoss) or type(outer._loss) is not RNNTLossNumba:
        return False
    numba_loss = outer._loss
    if numba_loss.fastemit_lambda or numba_loss.clamp > 0:
        log.info(
            "RNN-T loss: NeMo's CPU loss kept (fastemit_lambda %s, clamp %s); expect slow steps",
            numba_loss.fastemit_lambda,
            numba_loss.clamp,
        )
        return False
    outer._loss = FastCpuRnntLoss(blank=numba_loss.blank)
    log.info("RNN-T loss: the vectorised CPU loss (components/train/rnnt_loss.py), not NeMo's per-cell one")
    return True
