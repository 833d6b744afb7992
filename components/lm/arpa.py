"""The model as files NeMo decodes with: a token-level ARPA file and NeMo's ``.nemo`` n-gram.

NeMo's GPU n-gram (``NGramGPULanguageModel``, used by CTC ``beam_batch`` and RNN-T
``malsd_batch``/``maes_batch`` through ``ngram_lm_model``) reads sub-word LMs whose
"words" are single characters, ``chr(token_id + 100)`` (``DEFAULT_TOKEN_OFFSET``), separated
by spaces; fields are separated by TABs and the first line is exactly ``\\data\\``. The
``.nemo`` form is what NeMo's own tests and decoders make of such a file:
``NGramGPULanguageModel.from_arpa(arpa, vocab_size).save_to(path)``; it loads without
parsing text. We repack NeMo's tar with fixed member metadata so the same model gives the
same bytes.
"""

from __future__ import annotations

import io
import math
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np

from components.lm.kneser_ney import NgramModel

TOKEN_OFFSET = 100
"""NeMo's ``DEFAULT_TOKEN_OFFSET``: token ``i`` is written as ``chr(i + TOKEN_OFFSET)``."""
BOS_SYMBOL = "<s>"
EOS_SYMBOL = "</s>"
BOS_LOG10_PROB = -99.0
"""``<s>`` is never predicted; SRILM's and Kaldi's convention for its unigram entry."""
MAX_VOCAB_SIZE = 0xD800 - TOKEN_OFFSET
"""Above this, ``chr(id + TOKEN_OFFSET)`` would reach the UTF-16 surrogates, which UTF-8 cannot hold."""


def symbols(vocab_size: int, token_offset: int = TOKEN_OFFSET) -> list[str]:
    """The ARPA word of each id: the tokens, then ``<s>`` and ``</s>``."""
    if vocab_size > MAX_VOCAB_SIZE:
        raise ValueError(f"a vocabulary of {vocab_size} tokens is too large for NeMo's character encoding")
    return [chr(token + token_offset) for token in range(vocab_size)] + [BOS_SYMBOL, EOS_SYMBOL]


def _number(value: float) -> str:
    text = f"{value:.7f}"
    return "0.0000000" if text == "-0.0000000" else text


def arpa_lines(model: NgramModel, token_offset: int = TOKEN_OFFSET) -> Iterator[str]:
    """The ARPA file, line by line (each with its newline), n-grams in sorted order."""
    yield "\\data\\\n"
    for n, order in enumerate(model.orders, start=1):
        yield f"ngram {n}={len(order)}\n"
    words = symbols(model.vocab_size, token_offset)
    names = words
    for n, order in enumerate(model.orders, start=1):
        yield f"\n\\{n}-grams:\n"
        if n > 1:
            parents = (order.keys // model.radix).tolist()
            lasts = (order.keys % model.radix).tolist()
            names = [f"{names[parent]} {words[last]}" for parent, last in zip(parents, lasts, strict=True)]
        probs = np.where(np.isfinite(order.log10_prob), order.log10_prob, BOS_LOG10_PROB).tolist()
        backoffs = order.log10_backoff.tolist()
        for name, prob, backoff in zip(names, probs, backoffs, strict=True):
            if math.isnan(backoff):
                yield f"{_number(prob)}\t{name}\n"
            else:
                yield f"{_number(prob)}\t{name}\t{_number(backoff)}\n"
    yield "\n\\end\\\n"


def write_arpa(model: NgramModel, out: IO[bytes], token_offset: int = TOKEN_OFFSET) -> None:
    """Write the ARPA file (UTF-8) to a binary stream."""
    buffer: list[str] = []
    for line in arpa_lines(model, token_offset):
        buffer.append(line)
        if len(buffer) >= 65536:
            out.write("".join(buffer).encode("utf-8"))
            buffer.clear()
    out.write("".join(buffer).encode("utf-8"))


def write_nemo(arpa_path: str | Path, vocab_size: int, nemo_path: str | Path) -> None:
    """Convert a local ARPA file into NeMo's ``.nemo`` n-gram at a local path, reproducibly."""
    from nemo.collections.asr.parts.submodules.ngram_lm import NGramGPULanguageModel

    model = NGramGPULanguageModel.from_arpa(str(arpa_path), vocab_size=vocab_size)
    packed = Path(nemo_path).with_name(Path(nemo_path).name + ".nemo-tar")
    model.save_to(str(packed))
    try:
        repack_tar(packed, Path(nemo_path))
    finally:
        packed.unlink(missing_ok=True)


def repack_tar(source: Path, target: Path) -> None:
    """Copy a tar with its members sorted and their time, owner and mode fixed."""
    with tarfile.open(source, "r:*") as tar:
        members = sorted(tar.getmembers(), key=lambda member: member.name)
        contents = {
            member.name: tar.extractfile(member).read()  # type: ignore[union-attr]
            for member in members
            if member.isfile()
        }
    with tarfile.open(target, "w", format=tarfile.USTAR_FORMAT) as out:
        for member in members:
            if not (member.isfile() or member.isdir()):
                continue
            info = tarfile.TarInfo(member.name)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if member.isdir():
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                out.addfile(info)
            else:
                info.mode = 0o644
                info.size = len(contents[member.name])
                out.addfile(info, io.BytesIO(contents[member.name]))
