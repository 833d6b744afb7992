"""train-lm: the Kneser-Ney estimate against a hand-computed model and a brute-force reference,
the ARPA file and the .nemo n-gram scored by NeMo's NGramGPULanguageModel, byte-identical
reruns, the card's held-out perplexity, sources and tokenizers, gs:// output, the CLI's errors.
"""

from __future__ import annotations

import inspect
import json
import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from components import storage
from components.lm import arpa, core, kneser_ney, settings, text
from components.lm.card import LmCard, units_digest
from components.lm.errors import LmError
from components.lm.kneser_ney import Discounts, NgramModel, Sentences, estimate
from components.manifest import RejectThresholdExceeded

WORDS = (
    "the a cat dog sat on mat it's big small red blue house tree ran fast slow over under "
    "and then we saw one two three old new"
).split()


# --- the estimator -------------------------------------------------------------------------

# a, b, c are tokens 0, 1, 2; written as chr(id + 100): d, e, f.
TOY = [[0, 1], [0, 1], [1, 0]]  # <s> a b </s>, <s> a b </s>, <s> b a </s>
TOY_ARPA = """\\data\\
ngram 1=5
ngram 2=6

\\1-grams:
-0.5351132\td\t-0.3010300
-0.5351132\te\t-0.3010300
-0.9030900\tf
-99.0000000\t<s>\t-0.3010300
-0.5351132\t</s>

\\2-grams:
-0.3195134\td e
-0.5051500\td </s>
-0.5051500\te d
-0.3195134\te </s>
-0.3195134\t<s> d
-0.5051500\t<s> e

\\end\\
"""


def test_hand_computed_bigram_model() -> None:
    """The toy corpus worked by hand.

    Bigram (top order) counts: <s> a 2, a b 2, b </s> 2, <s> b 1, b a 1, a </s> 1: t1 = 3,
    t2 = 3, t3 = 0, so both orders fall back to D = 0.5, 1, 1.5. Unigram adjusted counts
    (distinct left words): a 2, b 2, </s> 2, c 0; sum 6, each discounted by D(2) = 1, so
    u = 1/6 each and gamma = 3/6, spread over 4 symbols (a, b, c, </s>): p(a) = p(b) = p(</s>)
    = 1/6 + 1/8 = 7/24, p(c) = 3/24. After <s>: a 2, b 1 (sum 3, gamma = (1 + 0.5)/3 = 1/2):
    p(a|<s>) = 1/3 + 7/48 = 23/48, p(b|<s>) = 1/6 + 7/48 = 15/48, p(c|<s>) = 3/48,
    p(</s>|<s>) = 7/48; after a and after b the same shape; after c (never a context) the
    unigrams.
    """
    model = estimate(Sentences.of(TOY), vocab_size=3, order=2)
    assert model.discounts == [Discounts(0.5, 1.0, 1.5, fallback=True)] * 2
    bos, eos = model.bos, model.eos
    expected = {
        (): {0: Fraction(7, 24), 1: Fraction(7, 24), 2: Fraction(3, 24), eos: Fraction(7, 24)},
        (bos,): {0: Fraction(23, 48), 1: Fraction(15, 48), 2: Fraction(3, 48), eos: Fraction(7, 48)},
        (0,): {1: Fraction(23, 48), eos: Fraction(15, 48), 0: Fraction(7, 48), 2: Fraction(3, 48)},
        (1,): {eos: Fraction(23, 48), 0: Fraction(15, 48), 1: Fraction(7, 48), 2: Fraction(3, 48)},
        (2,): {0: Fraction(7, 24), 1: Fraction(7, 24), 2: Fraction(3, 24), eos: Fraction(7, 24)},
    }
    for context, probs in expected.items():
        assert sum(probs.values()) == 1
        if not context:
            continue
        for word, prob in probs.items():
            assert query(model, context, word) == pytest.approx(float(prob), rel=1e-12), (context, word)
    assert "".join(arpa.arpa_lines(model)) == TOY_ARPA


def test_discounts_follow_chen_and_goodman() -> None:
    """t = (10, 4, 2, 1): Y = 10/18, D1 = 1 - 2Y 4/10 = 5/9, D2 = 2 - 3Y 2/4 = 7/6, D3 = 3 - 4Y 1/2 = 17/9."""
    counts = np.array([1] * 10 + [2] * 4 + [3] * 2 + [4] + [9] * 5)
    discounts = kneser_ney.estimate_discounts(counts)
    assert not discounts.fallback
    assert discounts.as_list() == pytest.approx([5 / 9, 7 / 6, 17 / 9])
    assert list(discounts.of(np.array([0, 1, 2, 3, 7]))) == pytest.approx([0, 5 / 9, 7 / 6, 17 / 9, 17 / 9])
    assert kneser_ney.estimate_discounts(np.array([1, 1, 2, 4])).fallback  # no count of 3
    # t = (5, 1, 5): Y = 5/7, D1 = 5/7 but D2 = 2 - 3Y 5/1 < 0
    assert kneser_ney.estimate_discounts(np.array([1] * 5 + [2] + [3] * 5)).fallback


def reference_model(sentences: Sequence[Sequence[int]], vocab_size: int, order: int) -> Callable[..., float]:
    """A brute-force interpolated modified Kneser-Ney, written from the formulas with dicts."""
    bos, eos = vocab_size, vocab_size + 1
    padded = [(bos, *sentence, eos) for sentence in sentences]
    raw: Counter[tuple[int, ...]] = Counter()
    for sentence in padded:
        for n in range(1, order + 1):
            for start in range(len(sentence) - n + 1):
                raw[sentence[start : start + n]] += 1
    left: defaultdict[tuple[int, ...], set[int]] = defaultdict(set)
    for gram in raw:
        if len(gram) > 1:
            left[gram[1:]].add(gram[0])

    def adjusted(gram: tuple[int, ...]) -> int:
        if gram == (bos,):
            return 0
        return raw[gram] if len(gram) == order or gram[0] == bos else len(left[gram])

    discounts = {}
    for n in range(1, order + 1):
        of_count = Counter(adjusted(gram) for gram in raw if len(gram) == n)
        t = [of_count[k] for k in range(5)]
        values = None
        if t[1] and t[2] and t[3]:
            y = t[1] / (t[1] + 2 * t[2])
            values = [0.0] + [k - (k + 1) * y * t[k + 1] / t[k] for k in (1, 2, 3)]
            if not all(0 < values[k] <= k for k in (1, 2, 3)):
                values = None
        discounts[n] = values or [0.0, 0.5, 1.0, 1.5]
    followers: defaultdict[tuple[int, ...], list[tuple[int, ...]]] = defaultdict(list)
    for gram in raw:
        followers[gram[:-1]].append(gram)

    def discount(gram: tuple[int, ...]) -> float:
        return discounts[len(gram)][min(adjusted(gram), 3)]

    def prob(word: int, context: tuple[int, ...]) -> float:
        context = context[-(order - 1) :] if order > 1 else ()
        grams = [gram for gram in followers.get(context, []) if adjusted(gram) > 0]
        if context and not grams:
            return prob(word, context[1:])
        total = sum(adjusted(gram) for gram in grams)
        gamma = sum(discount(gram) for gram in grams) / total
        gram = (*context, word)
        own = (adjusted(gram) - discount(gram)) / total if raw[gram] and adjusted(gram) else 0.0
        lower = 1 / (vocab_size + 1) if not context else prob(word, context[1:])
        return own + gamma * lower

    return prob


def query(model: NgramModel, context: tuple[int, ...], word: int) -> float:
    """p(word | context) from the model's back-off reading; ``context`` may start with <s>."""
    return float(10 ** batch_query(model, [context], [word])[0])


def batch_query(model: NgramModel, contexts: list[tuple[int, ...]], words: list[int]) -> np.ndarray:
    """log10 p(word | context) for each pair: a sentence made of the context, then the word."""
    sentences, picks, offset = [], [], 0
    for context, word in zip(contexts, words, strict=True):
        tokens = [token for token in context if token != model.bos]
        assert context[:1] == (model.bos,) or len(context) >= model.order - 1, context
        if word != model.eos:
            tokens.append(word)
        picks.append(offset + len(tokens) - (word != model.eos))
        sentences.append(tokens)
        offset += len(tokens) + 1
    return model.log10_probs(Sentences.of(sentences))[picks]


def random_corpus(seed: int, vocab_size: int, count: int) -> list[list[int]]:
    rng = random.Random(seed)
    # a skewed distribution, so that counts of 1, 2, 3 and more all occur
    weights = [1 / (rank + 1) for rank in range(vocab_size)]
    return [rng.choices(range(vocab_size - 3), weights[:-3], k=rng.randint(1, 8)) for _ in range(count)]


@pytest.mark.parametrize("order", [2, 3, 4])
def test_matches_a_brute_force_reference(order: int) -> None:
    vocab_size = 12  # the last 3 tokens never occur
    corpus = random_corpus(seed=order, vocab_size=vocab_size, count=150)
    model = estimate(Sentences.of(corpus), vocab_size, order)
    reference = reference_model(corpus, vocab_size, order)
    bos, eos = model.bos, model.eos
    contexts = {(bos, *sentence[:k]) for sentence in corpus for k in range(min(len(sentence), order - 1) + 1)}
    for sentence in corpus:
        padded = (bos, *sentence)
        contexts.update(padded[i : i + order - 1] for i in range(1, len(padded) - order + 2))
    rng = random.Random(0)
    contexts.update(tuple(rng.randrange(vocab_size) for _ in range(order - 1)) for _ in range(20))
    contexts = {c for c in contexts if c[:1] == (bos,) or len(c) == order - 1}
    words = [*range(vocab_size), eos]
    pairs = [(context, word) for context in sorted(contexts) for word in words]
    ours = 10 ** batch_query(model, [c for c, _ in pairs], [w for _, w in pairs])
    theirs = np.array([reference(word, context) for context, word in pairs])
    np.testing.assert_allclose(ours, theirs, rtol=1e-10)
    sums = ours.reshape(len(contexts), len(words)).sum(axis=1)
    np.testing.assert_allclose(sums, 1.0, rtol=1e-10)  # every context: a distribution over the labels
    assert any(not d.fallback for d in model.discounts)


def test_the_model_does_not_depend_on_the_order_of_sentences() -> None:
    corpus = random_corpus(seed=5, vocab_size=20, count=200)
    first = "".join(arpa.arpa_lines(estimate(Sentences.of(corpus), 20, 3)))
    second = "".join(arpa.arpa_lines(estimate(Sentences.of(corpus[::-1]), 20, 3)))
    assert first == second


def test_bad_input_to_the_estimator() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        estimate(Sentences.of([[0, 1]]), 3, 1)
    with pytest.raises(ValueError, match="no sentence is long enough for a 5-gram"):
        estimate(Sentences.of([[0, 1]]), 3, 5)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 3\)"):
        estimate(Sentences.of([[0, 3]]), 3, 2)


# --- NeMo reads what we write --------------------------------------------------------------


def nemo_scores(lm: object, sentences: list[list[int]]) -> np.ndarray:
    """Natural-log scores of every token and each </s> from NeMo's NGramGPULanguageModel."""
    import torch

    longest = max(map(len, sentences))
    labels = torch.tensor([sentence + [0] * (longest - len(sentence)) for sentence in sentences])
    lengths = torch.tensor([len(sentence) for sentence in sentences])
    with torch.no_grad():
        scores = lm.score_sentences(labels, lengths, bos=True, eos=True)  # type: ignore[attr-defined]
    return np.concatenate([scores[i, : len(s) + 1].numpy() for i, s in enumerate(sentences)])


def test_token_offset_is_nemos() -> None:
    from nemo.collections.asr.parts.submodules.ngram_lm import DEFAULT_TOKEN_OFFSET

    assert arpa.TOKEN_OFFSET == DEFAULT_TOKEN_OFFSET


def test_nemo_scores_the_arpa_and_nemo_files_as_we_do(tmp_path: Path) -> None:
    import torch
    from nemo.collections.asr.parts.submodules.ngram_lm import NGramGPULanguageModel

    vocab_size = 40
    model = estimate(Sentences.of(random_corpus(seed=1, vocab_size=vocab_size, count=300)), vocab_size, 4)
    arpa_path, nemo_path = tmp_path / "lm.arpa", tmp_path / "lm.nemo"
    with open(arpa_path, "wb") as out:
        arpa.write_arpa(model, out)
    assert arpa_path.read_text(encoding="utf-8").startswith("\\data\\\n")
    arpa.write_nemo(arpa_path, vocab_size, nemo_path)
    rng = random.Random(7)
    sentences = [[rng.randrange(vocab_size) for _ in range(rng.randint(1, 10))] for _ in range(30)]
    ours = model.log10_probs(Sentences.of(sentences)) * math.log(10)
    for path in (arpa_path, nemo_path):
        lm = NGramGPULanguageModel.from_file(path, vocab_size=vocab_size)
        np.testing.assert_allclose(nemo_scores(lm, sentences), ours, atol=2e-5)
        states = lm.get_init_states(1, bos=True)
        for _ in range(3):  # from <s> and two steps on: every state's labels sum to one
            with torch.no_grad():
                scores, next_states = lm.advance(states)
                total = torch.exp(scores).sum() + torch.exp(lm.get_final(states)).sum()
            assert float(total) == pytest.approx(1.0, abs=1e-5)
            states = next_states[:, rng.randrange(vocab_size)]


# --- the step ------------------------------------------------------------------------------


def manifest_lines(texts: Sequence[str], **extra: object) -> str:
    return "".join(
        json.dumps({"audio_filepath": f"u{i}.flac", "duration": 1.5, "text": t, **extra}) + "\n"
        for i, t in enumerate(texts)
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SentencePiece tokenizer, a manifest, a tarred dataset and a sharded-only one."""
    import sentencepiece

    root = tmp_path_factory.mktemp("lm-data")
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9))) for _ in range(400)]
    (root / "text.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    (root / "tokenizer").mkdir()
    sentencepiece.SentencePieceTrainer.train(
        input=str(root / "text.txt"),
        model_prefix=str(root / "tokenizer" / "tokenizer"),
        vocab_size=64,
        model_type="bpe",
        character_coverage=1.0,
        minloglevel=2,
    )
    # as transcripts come: upper case and punctuation, which the shared normalisation removes
    shown = [f"{t.capitalize()}." for t in texts]
    (root / "train.json").write_text(manifest_lines([*shown[:250], "...", "!"]), encoding="utf-8")
    tarred = root / "tarred"
    tarred.mkdir()
    (tarred / "tarred_audio_manifest.json").write_text(manifest_lines(shown[250:330], shard_id=0))
    sharded = root / "sharded" / "sharded_manifests"
    sharded.mkdir(parents=True)
    for shard_id in range(12):  # manifest_10 and _11 sort before _2 by name: shard order must win
        part = shown[330 + shard_id * 5 : 335 + shard_id * 5]
        (sharded / f"manifest_{shard_id}.json").write_text(manifest_lines(part, shard_id=shard_id))
    (root / "texts.json").write_text(json.dumps(texts[:390]))  # the texts the three sources hold
    return root


def all_texts(data: Path) -> list[str]:
    return json.loads((data / "texts.json").read_text())


def test_sources_manifest_tarred_and_sharded(data: Path) -> None:
    assert text.manifest_uris(str(data / "train.json")) == [str(data / "train.json")]
    assert text.manifest_uris(str(data / "tarred")) == [str(data / "tarred" / "tarred_audio_manifest.json")]
    sharded = text.manifest_uris(str(data / "sharded") + "/")
    assert sharded == [str(data / "sharded" / "sharded_manifests" / f"manifest_{i}.json") for i in range(12)]
    with pytest.raises(LmError, match=r"/nowhere\.json: no such file or directory"):
        text.manifest_uris(str(data / "nowhere.json"))
    with pytest.raises(LmError, match=r"/tokenizer: neither a manifest nor a tarred dataset"):
        text.manifest_uris(str(data / "tokenizer"))


def test_heldout_is_stable_and_keeps_repeats_together() -> None:
    texts = [f"sentence number {i}" for i in range(2000)]
    training, heldout = text.split_heldout([*texts, *texts], 20)
    assert 150 < len(heldout) < 250  # about one in twenty of 4000
    assert not set(training) & set(heldout)
    assert text.split_heldout(texts, 20) == text.split_heldout(texts, 20)
    assert text.split_heldout(texts, 0) == (texts, [])


@pytest.fixture(scope="module")
def trained(data: Path, tmp_path_factory: pytest.TempPathFactory) -> LmCard:
    out = tmp_path_factory.mktemp("lm-out") / "lm"
    sources = [str(data / "train.json"), str(data / "tarred"), str(data / "sharded")]
    return core.train_lm(sources, str(data / "tokenizer"), str(out), order=3, heldout_every=5)


def test_card_counts_files_and_heldout_perplexity(data: Path, trained: LmCard) -> None:
    import sentencepiece
    from nemo.collections.asr.parts.submodules.ngram_lm import NGramGPULanguageModel

    out = Path(trained.out_dir)
    written = sorted(p.name for p in out.iterdir())
    assert written == ["_ASRFLOW", "_SUCCESS", "card.json", "lm.arpa", "lm.nemo"]
    assert LmCard.read(str(out)) == trained
    assert (trained.arpa, trained.nemo) == (str(out / "lm.arpa"), str(out / "lm.nemo"))
    assert trained.tokenizer == str(data / "tokenizer" / "tokenizer.model")
    assert len(trained.sources) == 1 + 1 + 12
    assert trained.empty == 2  # "..." and "!"
    texts = all_texts(data)
    assert trained.utterances + trained.heldout_utterances == len(texts)
    training, heldout = text.split_heldout(texts, 5)
    assert (trained.utterances, trained.heldout_utterances) == (len(training), len(heldout))
    assert trained.vocab_size == 64 and trained.order == 3 and trained.token_offset == 100
    assert len(trained.ngrams) == 3 and trained.ngrams[0] == 64 + 2
    assert trained.rejected == 0 and trained.rejects is None
    # the card's perplexity, recomputed by NeMo from lm.nemo on the held-out texts
    processor = sentencepiece.SentencePieceProcessor(model_file=trained.tokenizer)
    ids = processor.encode(heldout, out_type=int)
    assert trained.heldout_tokens == sum(map(len, ids))
    lm = NGramGPULanguageModel.from_file(trained.nemo, vocab_size=trained.vocab_size)
    logs = nemo_scores(lm, ids)
    assert trained.heldout_perplexity == pytest.approx(math.exp(-logs.mean()), rel=1e-4)
    assert 1 < trained.heldout_perplexity < trained.vocab_size


def test_reruns_give_the_same_bytes(data: Path, trained: LmCard, tmp_path: Path) -> None:
    # the same sources in another order, into another directory
    sources = [str(data / "sharded"), str(data / "tarred"), str(data / "train.json")]
    again = core.train_lm(sources, str(data / "tokenizer"), str(tmp_path / "again"), order=3, heldout_every=5)
    for name in ("lm.arpa", "lm.nemo"):
        assert Path(again.out_dir, name).read_bytes() == Path(trained.out_dir, name).read_bytes(), name
    paths = {"out_dir", "arpa", "nemo", "sources"}
    assert {k: v for k, v in again.to_dict().items() if k not in paths} == {
        k: v for k, v in trained.to_dict().items() if k not in paths
    }
    rerun = core.train_lm(sources, str(data / "tokenizer"), again.out_dir, order=3, heldout_every=5)
    assert rerun == again  # a rerun into its own output replaces it


def test_rejects_are_counted_then_fatal(data: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "some-bad.json"
    texts = all_texts(data)[:199]
    manifest.write_text(manifest_lines(texts) + "{not json\n")
    card = core.train_lm([str(manifest)], str(data / "tokenizer"), str(tmp_path / "out"), order=2)
    assert (card.rejected, card.rejects_by_reason) == (1, {"bad_manifest_line": 1})
    assert card.rejects == str(tmp_path / "out" / "rejects.jsonl")
    assert f"{manifest}:200" in Path(card.rejects).read_text()
    with pytest.raises(RejectThresholdExceeded, match="rejected 1 of 200"):
        core.train_lm([str(manifest)], str(data / "tokenizer"), str(tmp_path / "out2"), max_reject_fraction=0)


def test_gcs_output_and_sources(data: Path, gcs_bucket: str) -> None:
    storage.upload_file(data / "train.json", f"{gcs_bucket}/data/train.json")
    storage.upload_file(data / "tokenizer" / "tokenizer.model", f"{gcs_bucket}/tok/tokenizer.model")
    out = f"{gcs_bucket}/lm/out"
    card = core.train_lm([f"{gcs_bucket}/data/train.json"], f"{gcs_bucket}/tok", out, order=2)
    assert card.nemo == f"{out}/lm.nemo"
    for name in ("lm.arpa", "lm.nemo", "card.json", "_SUCCESS"):
        assert storage.exists(f"{out}/{name}"), name
    assert LmCard.read(out) == card
    assert storage.read_text(card.arpa).startswith("\\data\\\n")


def test_component_defaults_are_the_settings() -> None:
    from components.lm.component import train_lm

    parameters = inspect.signature(train_lm.python_func).parameters
    assert parameters["order"].default == settings.DEFAULT_ORDER
    assert parameters["heldout_every"].default == settings.DEFAULT_HELDOUT_EVERY


# --- the command line ----------------------------------------------------------------------

Runner = Callable[..., Result]


@pytest.fixture
def asrflow() -> Runner:
    """The ``asrflow`` command line, as a user runs ``asrflow train-lm``."""
    from pipelines import cli

    def run(*args: str) -> Result:
        return CliRunner().invoke(cli.main, ["train-lm", *args])

    return run


def error_line(result: Result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.output
    return lines[0]


def test_cli_prints_the_summary_then_the_card(data: Path, tmp_path: Path, asrflow: Runner) -> None:
    out = tmp_path / "o"
    result = asrflow(str(data / "train.json"), "--tokenizer", str(data / "tokenizer"), "--out", str(out))
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    card = LmCard.from_dict(json.loads(lines[-1]))
    assert card.order == settings.DEFAULT_ORDER and card.heldout_every == settings.DEFAULT_HELDOUT_EVERY
    assert any(line.startswith("held-out perplexity: ") for line in lines)
    assert f"nemo: {out / 'lm.nemo'}" in lines


def test_cli_errors_name_the_file(data: Path, tmp_path: Path, asrflow: Runner) -> None:
    tokenizer = ["--tokenizer", str(data / "tokenizer"), "--out", str(tmp_path / "o")]
    missing = tmp_path / "missing.json"
    assert error_line(asrflow(str(missing), *tokenizer)) == f"Error: {missing}: no such file or directory"
    assert str(data / "tokenizer") in error_line(asrflow(str(data / "tokenizer"), *tokenizer))
    source = str(data / "train.json")
    empty = tmp_path / "no-tokenizer"
    empty.mkdir()
    line = error_line(asrflow(source, "--tokenizer", str(empty), "--out", str(tmp_path / "o")))
    assert line.startswith(f"Error: {empty / 'tokenizer.model'}: no such file")
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"not a model")
    line = error_line(asrflow(source, "--tokenizer", str(garbage), "--out", str(tmp_path / "o")))
    assert line == f"Error: {garbage}: not a SentencePiece model (it does not parse)"
    line = error_line(asrflow(source, *tokenizer, "--order", "40"))
    assert "no sentence is long enough for a" in line and "use an order below" in line
    assert not (tmp_path / "o" / "_SUCCESS").exists()
    assert asrflow(source, *tokenizer, "--order", "1").exit_code == 2  # a usage error


def test_the_pipelines_lm_step_is_keyed_by_what_it_is_made_from(data: Path, tmp_path: Path) -> None:
    """The DAG's step writes DATA_ROOT/lms/<digest> once: a rerun finds it complete (same
    bytes, nothing retrained); another order is another directory; order 0 or no tokenizer
    (a character model) makes no LM."""
    root = str(tmp_path / "root")
    sources = [str(data / "train.json")]
    tokenizer = str(data / "tokenizer")
    nemo, card = core.lm_for_pipeline(sources, tokenizer, root, order=3)
    assert nemo == f"{root}/lms/{core.lm_key(sources, tokenizer, 3, settings.DEFAULT_HELDOUT_EVERY)}/lm.nemo"
    stamp = Path(nemo).stat().st_mtime_ns
    again, card_again = core.lm_for_pipeline(sources, tokenizer, root, order=3)
    assert (again, card_again) == (nemo, card) and Path(nemo).stat().st_mtime_ns == stamp
    other, _ = core.lm_for_pipeline(sources, tokenizer, root, order=2)
    assert Path(other).parent != Path(nemo).parent and Path(other).exists()
    assert core.lm_for_pipeline(sources, tokenizer, root, order=0)[0] == ""
    none, why = core.lm_for_pipeline(sources, "", root, order=3)
    assert none == "" and "no tokenizer and no labels" in why["reason"]


# --- a character model's labels ------------------------------------------------------------

LABELS = [" ", *"abcdefghijklmnopqrstuvwxyz", "'"]
"""A character model's labels (conformer_ctc_char's without the digits)."""


def labels_yaml(path: Path, labels: Sequence[str], **more: object) -> Path:
    path.write_text(json.dumps({"model": {"labels": list(labels), **more}}), encoding="utf-8")  # JSON is YAML
    return path


def test_label_units_from_a_model_or_its_config(tmp_path: Path) -> None:
    from components.lm import units
    from components.train.config import load_config
    from pipelines.local_run import PRETRAINED_MODEL

    shipped = units.label_units(str(PRETRAINED_MODEL))  # the model's config, read from its archive
    assert shipped.kind == settings.LABELS and shipped.source == str(PRETRAINED_MODEL)
    assert shipped.symbols == tuple(load_config("small").model.labels)
    conf = Path(__file__).parents[2] / "components" / "train" / "conf"
    assert units.label_units(str(conf / "conformer_ctc_char.yaml")).digest == shipped.digest
    assert units.label_units(str(labels_yaml(tmp_path / "l.yaml", LABELS))).symbols == tuple(LABELS)
    assert (
        shipped.missing("it's 42 € at the café") == "€é"
        and units.Units("labels", "x", ("a", " ")).missing("ab a") == "b"
    )

    def error(source: Path | str) -> str:
        with pytest.raises(LmError) as err:
            units.label_units(str(source))
        return str(err.value)

    assert error(tmp_path / "none.nemo") == f"--labels-from {tmp_path / 'none.nemo'}: no such file"
    assert "give a character model's .nemo or its config" in error(tmp_path / "labels.txt")
    assert "its _base_ holds them" in error(conf / "small.yaml")
    bpe = labels_yaml(tmp_path / "bpe.yaml", [], tokenizer={"dir": "tok", "type": "bpe"})
    assert "a sub-word model (it has a tokenizer); build its LM with --tokenizer" in error(bpe)
    assert "label 1 ('ab') is not one character" in error(labels_yaml(tmp_path / "ab.yaml", ["a", "ab"]))
    assert "a label appears twice" in error(labels_yaml(tmp_path / "twice.yaml", ["a", "b", "a"]))
    (tmp_path / "garbage.nemo").write_bytes(b"not a tar")
    assert "not a .nemo archive (no model_config.yaml in it)" in error(tmp_path / "garbage.nemo")


@pytest.fixture(scope="module")
def char_lm(data: Path, tmp_path_factory: pytest.TempPathFactory) -> LmCard:
    """A character LM over the sources of ``trained`` plus texts with characters the labels lack."""
    root = tmp_path_factory.mktemp("char-lm")
    odd = root / "odd.json"
    odd.write_text(manifest_lines(["Le café", "Room 101", "fine words"]), encoding="utf-8")
    sources = [str(data / "train.json"), str(data / "tarred"), str(data / "sharded"), str(odd)]
    labels = labels_yaml(root / "labels.yaml", LABELS)
    return core.train_lm(sources, "", str(root / "lm"), heldout_every=5, labels_from=str(labels))


def test_char_lm_card_rejects_and_nemo_scores(data: Path, char_lm: LmCard) -> None:
    from nemo.collections.asr.parts.submodules.ngram_lm import NGramGPULanguageModel

    assert char_lm.order == settings.DEFAULT_LABEL_ORDER and char_lm.units == settings.LABELS
    assert (char_lm.labels, char_lm.tokenizer, char_lm.vocab_size) == (LABELS, "", len(LABELS))
    assert char_lm.labels_from.endswith("labels.yaml")
    assert char_lm.units_digest == units_digest(LABELS)
    assert (char_lm.rejected, char_lm.rejects_by_reason) == (2, {text.NOT_IN_LABELS: 2})
    rejected = [json.loads(line) for line in Path(char_lm.rejects).read_text().splitlines()]
    assert [r["id"].rsplit(":", 1)[1] for r in rejected] == ["1", "2"]
    assert rejected[0]["detail"] == "'le café': 'é' not among the labels"
    texts = [*all_texts(data), "fine words"]
    training, heldout = text.split_heldout(texts, 5)
    assert (char_lm.utterances, char_lm.tokens) == (len(training), sum(map(len, training)))
    assert char_lm.ngrams[0] == len(LABELS) + 2
    # NeMo reads the labels' ids as we wrote them: its scores give the card's perplexity
    ids = [[LABELS.index(c) for c in t] for t in heldout]
    lm = NGramGPULanguageModel.from_file(char_lm.nemo, vocab_size=len(LABELS))
    assert char_lm.heldout_perplexity == pytest.approx(math.exp(-nemo_scores(lm, ids).mean()), rel=1e-4)
    assert 1 < char_lm.heldout_perplexity < 6  # letters of English words, far below 28


def test_char_lm_reruns_give_the_same_bytes(data: Path, char_lm: LmCard, tmp_path: Path) -> None:
    sources = char_lm.sources[::-1]  # the same manifests in another order
    again = core.train_lm(
        sources, "", str(tmp_path / "again"), heldout_every=5, labels_from=char_lm.labels_from
    )
    for name in ("lm.arpa", "lm.nemo"):
        assert Path(again.out_dir, name).read_bytes() == Path(char_lm.out_dir, name).read_bytes(), name
    assert Path(char_lm.arpa).read_text().count("\n\\8-grams:\n") == 1
    with pytest.raises(RejectThresholdExceeded, match="rejected 2 of .* not_in_labels: 2"):
        core.train_lm(
            sources, "", str(tmp_path / "strict"), labels_from=char_lm.labels_from, max_reject_fraction=0
        )


def test_cli_takes_a_tokenizer_or_labels(
    data: Path, char_lm: LmCard, tmp_path: Path, asrflow: Runner
) -> None:
    source = str(data / "train.json")
    out = ["--out", str(tmp_path / "o")]
    result = asrflow(source, "--labels-from", char_lm.labels_from, "--order", "3", *out)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    summary = f"in the {len(LABELS)} labels of {char_lm.labels_from}"
    assert re.search(
        rf"3-gram \(interpolated modified Kneser-Ney\) over .* {re.escape(summary)}\n", result.output
    )
    assert LmCard.from_dict(json.loads(lines[-1])).labels == LABELS
    neither = error_line(asrflow(source, *out))
    assert (
        neither.startswith("Error: train-lm: give the ASR model's units: --tokenizer")
        and "--labels-from" in neither
    )
    both = asrflow(source, "--tokenizer", str(data / "tokenizer"), "--labels-from", char_lm.labels_from, *out)
    assert error_line(both) == neither


def test_the_pipelines_lm_step_keys_a_character_lm_by_its_labels(data: Path, tmp_path: Path) -> None:
    root = str(tmp_path / "root")
    sources = [str(data / "train.json")]
    labels = str(labels_yaml(tmp_path / "labels.yaml", LABELS))
    nemo, card = core.lm_for_pipeline(sources, "", root, order=3, labels_from=labels)
    key = core.lm_key(sources, f"labels:{units_digest(LABELS)}", 3, settings.DEFAULT_HELDOUT_EVERY)
    assert nemo == f"{root}/lms/{key}/lm.nemo" and card["labels"] == LABELS
    moved = str(labels_yaml(tmp_path / "same-labels-elsewhere.yaml", LABELS))
    assert core.lm_for_pipeline(sources, "", root, order=3, labels_from=moved) == (nemo, card)
    other, _ = core.lm_for_pipeline(
        sources, "", root, order=3, labels_from=str(labels_yaml(tmp_path / "o.yaml", [*LABELS, "0"]))
    )
    assert Path(other).parent != Path(nemo).parent
