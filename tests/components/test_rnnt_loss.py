"""The vectorised CPU RNN-T loss gives NeMo's numba loss's values and gradients, and is swapped in
only where it should be (CPU, plain RNN-T, no FastEmit or clamping).

The reference is NeMo 3.0.0's own ``RNNTLossNumba`` on CPU, run here, not a copy of its maths.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from components.train.model import build_model
from components.train.rnnt_loss import FastCpuRnntLoss, use_fast_cpu_rnnt_loss
from tests.components.test_families import SHRINK_TRANSDUCER, loaded


def random_batch(seed: int, batch: int, frames: int, tokens: int, vocabulary: int):
    """Joint activations with ragged frame and label lengths (one utterance without labels)."""
    generator = torch.Generator().manual_seed(seed)
    acts = torch.randn(batch, frames, tokens + 1, vocabulary, generator=generator) * 3
    labels = torch.randint(0, vocabulary - 1, (batch, tokens), generator=generator)
    frame_lengths = torch.randint(1, frames + 1, (batch,), generator=generator)
    frame_lengths[0] = frames
    label_lengths = torch.randint(0, tokens + 1, (batch,), generator=generator)
    label_lengths[0], label_lengths[-1] = tokens, 0
    return acts.requires_grad_(), labels, frame_lengths, label_lengths


@pytest.mark.parametrize("seed,shape", [(0, (4, 37, 11, 17)), (1, (3, 80, 25, 65)), (2, (2, 5, 9, 7))])
def test_values_and_gradients_are_nemos_numba_losss(seed: int, shape: tuple[int, int, int, int]):
    """In float64, so that the comparison is of the maths, not of float32 rounding."""
    from nemo.collections.asr.parts.numba.rnnt_loss.rnnt_pytorch import RNNTLossNumba

    acts, labels, frame_lengths, label_lengths = random_batch(seed, *shape)
    acts = acts.detach().double().requires_grad_()
    blank = shape[-1] - 1
    expected = RNNTLossNumba(blank=blank, reduction=None)(acts, labels, frame_lengths, label_lengths)
    (expected_grad,) = torch.autograd.grad(expected.sum(), acts)
    ours = FastCpuRnntLoss(blank=blank)(acts, labels, frame_lengths, label_lengths)
    (our_grad,) = torch.autograd.grad(ours.sum(), acts)

    assert torch.allclose(ours.float(), expected, rtol=1e-6), (ours, expected)  # NeMo returns float32 costs
    assert torch.allclose(our_grad, expected_grad, atol=1e-10)
    beyond = torch.arange(shape[1])[None, :] >= frame_lengths[:, None]  # padded frames: no gradient
    assert our_grad[beyond].abs().max() == 0


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_reductions_are_nemos_numba_losss(reduction: str):
    from nemo.collections.asr.parts.numba.rnnt_loss.rnnt_pytorch import RNNTLossNumba

    inputs = random_batch(3, 3, 20, 6, 11)
    expected = RNNTLossNumba(blank=10, reduction=reduction)(*inputs)
    ours = FastCpuRnntLoss(blank=10)
    ours.reduction = reduction
    assert torch.allclose(ours(*inputs), expected, rtol=1e-5), (ours(*inputs), expected)


def shrunk_rnnt_model(tokenizer: Path, *overrides: str):
    return build_model(loaded("small_rnnt_bpe", tokenizer, [*SHRINK_TRANSDUCER, *overrides]))


def test_swapped_in_on_cpu_only_and_the_fused_joint_loss_is_unchanged(bpe_tokenizer: Path):
    model = shrunk_rnnt_model(bpe_tokenizer)
    assert not use_fast_cpu_rnnt_loss(model, "gpu")
    generator = torch.Generator().manual_seed(0)
    encoded = torch.randn(3, model.joint.encoder_hidden, 40, generator=generator)
    encoded_len = torch.tensor([40, 31, 12])
    targets = torch.randint(0, model.tokenizer.vocab_size, (3, 9), generator=generator)
    target_len = torch.tensor([9, 4, 7])
    model.eval()  # no dropout: the same joint for both losses

    def fused_joint_loss() -> torch.Tensor:  # as EncDecRNNTModel.training_step calls it
        decoded, target_length, _ = model.decoder(targets=targets, target_length=target_len)
        loss, *_ = model.joint(
            encoder_outputs=encoded,
            decoder_outputs=decoded,
            encoder_lengths=encoded_len,
            transcripts=targets,
            transcript_lengths=target_length,
            compute_wer=False,
        )
        return loss

    assert model.joint.fuse_loss_wer  # the loss runs in the joint's sub-batches
    with torch.no_grad():
        numba = fused_joint_loss()
        assert use_fast_cpu_rnnt_loss(model, "cpu")
        assert isinstance(model.loss._loss, FastCpuRnntLoss)
        vectorised = fused_joint_loss()
    assert torch.allclose(vectorised, numba, rtol=1e-5), (vectorised, numba)


def test_fastemit_keeps_nemos_loss(bpe_tokenizer: Path):
    model = shrunk_rnnt_model(bpe_tokenizer, "++model.loss.warprnnt_numba_kwargs.fastemit_lambda=0.001")
    assert not use_fast_cpu_rnnt_loss(model, "cpu")
    assert type(model.loss._loss).__name__ == "RNNTLossNumba"
