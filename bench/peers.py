"""The systems the runtime is measured against: PyTorch eager on the same checkpoint, and g2p-en.

Run as a module, each prints the phonemes of the words on its command line; the
benchmark times that as the cold start of a torch-based or g2p-en-based tool.
"""

from __future__ import annotations

import sys
import types


def load_g2p_en():
    """g2p-en's G2p, or None when it is not installed. Its import asks NLTK to download data:
    both the lookup and the download are stubbed, nothing is fetched, and only its neural
    predictor (G2p.predict, one word at a time) is used."""
    try:
        import nltk
    except ImportError:
        return None
    nltk.download = lambda *args, **kwargs: False
    real_find = nltk.data.find

    def find(resource, *args, **kwargs):
        try:
            return real_find(resource, *args, **kwargs)
        except LookupError:
            return None

    nltk.data.find = find
    try:
        from g2p_en import g2p as module
    except ImportError:
        return None
    finally:
        nltk.data.find = real_find
    module.cmudict = types.SimpleNamespace(dict=lambda: {})  # the dictionary lookup is not what is measured
    return module.G2p()


def main_torch(argv: list[str]) -> None:
    """python -m seq2edge.bench.peers torch CHECKPOINT WORD..."""
    import torch

    torch.set_num_threads(1)
    from seq2edge.train.checkpoint import load_checkpoint
    from seq2edge.train.infer import decode_entries

    model, source, target = load_checkpoint(argv[0])
    for word, tokens in zip(argv[1:], decode_entries(model, argv[1:], source, target)):
        print(f"{word} -> {' '.join(tokens)}", flush=True)


def main_g2p_en(argv: list[str]) -> None:
    """python -m seq2edge.bench.peers g2p-en WORD..."""
    g2p = load_g2p_en()
    for word in argv:
        print(f"{word} -> {' '.join(g2p.predict(word))}", flush=True)


if __name__ == "__main__":
    {"torch": main_torch, "g2p-en": main_g2p_en}[sys.argv[1]](sys.argv[2:])
