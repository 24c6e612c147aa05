"""User corpora: TSV files with char, word and SentencePiece tokenisers, Unicode end to end."""

import json
import subprocess

import pytest
from conftest import SEQ2EDGE

from seq2edge.runtime import Seq2Seq
from seq2edge.train import corpus as C

CYRILLIC = dict(zip("abcdefghijklmnopqrstuvwxyz", "абцдефгхийклмнопкрстуввхыз"))
ACCENTS = {"e": "é", "a": "å", "o": "ø", "u": "ü"}


def _pairs(count: int) -> list[tuple[str, str]]:
    """Two-word phrases from CMUdict, accented on the source side, transliterated to Cyrillic on the target side."""
    words = [e.source for e in C.load_cmudict().entries if e.source.isalpha() and 3 <= len(e.source) <= 7][:2 * count]
    pairs = []
    for a, b in zip(words[::2], words[1::2]):
        source = " ".join("".join(ACCENTS.get(c, c) for c in w) for w in (a, b))
        target = " ".join("".join(CYRILLIC[c] for c in w) for w in (a, b))
        pairs.append((source, target))
    return pairs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "phrases.tsv"
    path.write_text("".join(f"{s}\t{t}\n" for s, t in _pairs(700)), encoding="utf-8")
    return path


TINY = ["--embed", "16", "--hidden", "32", "--epochs", "2", "--batch-size", "32", "--max-src-len", "40", "--max-tgt-len", "40"]


def test_subword_model_trains_exports_and_decodes_from_the_cli(corpus, tmp_path):
    """spm on both sides through the CLI. The vocabulary holds every piece of the SentencePiece model:
    new words also split into pieces the training texts never needed (single characters, a lone word
    boundary), so only characters the model never saw are unknown."""
    import random

    from seq2edge.train.data import spm_pieces

    ckpt, bundle = tmp_path / "ckpt", tmp_path / "bundle"
    subprocess.run([*SEQ2EDGE, "train", "--corpus", str(corpus), "--out", str(ckpt), "--src-tokens", "spm",
                    "--tgt-tokens", "spm", "--src-vocab-size", "150", "--tgt-vocab-size", "150", *TINY],
                   check=True, capture_output=True)
    assert (ckpt / "source.spm.model").exists() and (ckpt / "target.spm.model").exists()
    vocab = json.loads((ckpt / "vocab.json").read_text())
    for side in ("source", "target"):
        assert set(spm_pieces(ckpt / f"{side}.spm.model")) <= set(vocab[side]["tokens"])
    subprocess.run([*SEQ2EDGE, "export", str(ckpt), str(bundle), "--parity-words", "80"], check=True, capture_output=True)
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["source"]["tokenizer"] == "spm" and meta["source"]["spm_model"] == "source.spm.model"
    assert meta["parity"]["fp32"]["token_agreement"] == 1.0
    source = "nét wørk"
    proc = subprocess.run([*SEQ2EDGE, "decode", str(bundle), "--format", "jsonl", "--unknown", "unk"],
                          input=(source + "\n").encode(), capture_output=True, check=True)
    record = json.loads(proc.stdout)
    assert record["input"] == source
    target_chars = set("".join(CYRILLIC.values()) + " ")
    assert set(record["output"]) <= target_chars  # text out, not pieces: "▁" never reaches the user
    letters = sorted({c for s, _ in _pairs(700) for c in s if c != " "})
    rng = random.Random(0)
    new_words = ["".join(rng.choices(letters, k=rng.randint(1, 6))) for _ in range(200)]
    results = Seq2Seq.load(bundle, providers="cpu").decode([*new_words, "qz \u0416"], errors="return")  # --unknown error
    assert all(r.ok for r in results[:-1]), [r.error for r in results if not r.ok][:3]
    assert not results[-1].ok and "'\u0416'" in results[-1].error  # a character it never saw is still unknown


def test_word_and_char_tokenisers_train_on_the_same_corpus(corpus, tmp_path):
    for src, tgt in (("word", "word"), ("char", "char")):
        out = tmp_path / f"{src}-{tgt}"
        subprocess.run([*SEQ2EDGE, "train", "--corpus", str(corpus), "--out", str(out), "--src-tokens", src,
                        "--tgt-tokens", tgt, "--min-freq", "1", *TINY], check=True, capture_output=True)
        vocab = json.loads((out / "vocab.json").read_text())
        assert vocab["source"]["tokenizer"] == src
        if src == "word":
            assert any(" " not in t and len(t) > 2 for t in vocab["source"]["tokens"][4:])
        else:
            assert "é" in vocab["source"]["tokens"] and "ц" in vocab["target"]["tokens"]


def test_unicode_is_preserved_and_normalised_end_to_end(corpus, tmp_path):
    ckpt, bundle = tmp_path / "ckpt", tmp_path / "bundle"
    subprocess.run([*SEQ2EDGE, "train", "--corpus", str(corpus), "--out", str(ckpt), *TINY], check=True, capture_output=True)
    subprocess.run([*SEQ2EDGE, "export", str(ckpt), str(bundle), "--parity-words", "60"], check=True, capture_output=True)
    model = Seq2Seq.load(bundle, providers="cpu")
    composed, decomposed = model.decode(["nét", "ne\u0301t"])  # NFC and NFD spellings of the same text
    assert composed.tokens == decomposed.tokens and composed.source_tokens == ["n", "é", "t"]
    assert all(tok in model.bundle.target.vocab for tok in composed.tokens)


def test_pairs_over_the_length_limit_are_counted_and_reported(corpus, tmp_path):
    proc = subprocess.run([*SEQ2EDGE, "train", "--corpus", str(corpus), "--out", str(tmp_path / "c"), "--embed", "8",
                           "--hidden", "8", "--epochs", "1", "--max-src-len", "9", "--limit", "200"],
                          capture_output=True, text=True, check=True)
    assert "training pairs are longer than max_src_len=9" in proc.stderr
