"""JoeyNMT 2.x models: `seq2edge export --from joeynmt MODEL_DIR OUT`.

Recurrent models are rebuilt here, Transformers in importers/joeynmt_transformer.py; what follows is about the
recurrent ones, and the files, vocabularies and decoding conventions, which both share.

Reads MODEL_DIR/config.yaml, src_vocab.txt, trg_vocab.txt and the checkpoint (best.ckpt, else the
latest N.ckpt; read as data, never unpickled: importers/torch_zip.py), and rebuilds JoeyNMT's RecurrentEncoder and
RecurrentDecoder (joeynmt/encoders.py, decoders.py, attention.py, embeddings.py of 2.3.0) with the
same parameter names, so the checkpoint's model_state loads strictly:

- encoder: embeddings (x sqrt(dim) when scaled) -> a bidirectional GRU/LSTM over the packed
  sequence; its final state is the top layer's forward and backward hidden states concatenated;
- the decoder's first state, for every layer (an LSTM's cell too): tanh(bridge(final)) ("bridge"),
  the final state or its forward half ("last"), or zeros;
- a decoder step: the RNN over [embedding; previous attentional vector] (input feeding) or the
  embedding alone; the query is the top layer's new hidden state; attention over the encoder
  outputs (Bahdanau: energy(tanh(W_q q + W_k k)), Luong: q . W_k k), masked, softmax; the
  attentional vector tanh(W [query; context]); logits = output_layer(attentional vector).

The keys W_k k are computed once, by encode(), and travel in the memory beside the encoder outputs.
Decoding conventions (runtime/conventions.py): </s> appended to the source, no </s> before
testing.min_output_length (default 1), the output limit int(1.5 x the source with its </s>) unless
testing.max_output_length sets one, <unk> never generated when testing.generate_unk is false, and
"▁" for a space at the character level. Anything else is refused by name.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seq2edge.runtime.conventions import Conventions

from . import Imported, ImportRefused
from .joeynmt_transformer import ACTIVATIONS, JoeyTransformer, position_table_rows
from .torch_zip import read_checkpoint

SPACE_ESCAPE = "\u2581"  # JoeyNMT's BasicTokenizer.SPACE_ESCAPE, the character level's space


class JoeyRecurrent(nn.Module):
    """JoeyNMT's recurrent encoder-decoder in the encode()/step() protocol."""

    def __init__(self, model_cfg: dict, src_vocab: int, trg_vocab: int, src_pad: int, trg_pad: int):
        super().__init__()
        enc, dec = model_cfg["encoder"], model_cfg["decoder"]
        self.rnn_type = dec.get("rnn_type", "gru")
        rnn = nn.GRU if self.rnn_type == "gru" else nn.LSTM
        self.src_scale = _scale(enc)
        self.trg_scale = _scale(dec)
        self.src_embed = _Embeddings(src_vocab, enc["embeddings"]["embedding_dim"], src_pad)
        self.trg_embed = _Embeddings(trg_vocab, dec["embeddings"]["embedding_dim"], trg_pad)
        self.encoder = nn.Module()
        self.encoder.rnn = rnn(enc["embeddings"]["embedding_dim"], enc["hidden_size"], enc.get("num_layers", 1), batch_first=True,
                               bidirectional=True)
        memory = 2 * enc["hidden_size"]
        hidden = dec["hidden_size"]
        self.hidden, self.layers, self.memory_size = hidden, dec.get("num_layers", 1), memory
        self.input_feeding = dec.get("input_feeding", True)
        self.init_hidden = dec.get("init_hidden", "bridge")
        self.attention_type = dec.get("attention", "bahdanau")
        self.decoder = nn.Module()
        self.decoder.rnn = rnn(dec["embeddings"]["embedding_dim"] + (hidden if self.input_feeding else 0), hidden, self.layers,
                               batch_first=True)
        self.decoder.att_vector_layer = nn.Linear(hidden + memory, hidden)
        self.decoder.output_layer = nn.Linear(hidden, trg_vocab, bias=False)
        self.decoder.attention = nn.Module()
        self.decoder.attention.key_layer = nn.Linear(memory, hidden, bias=False)
        if self.attention_type == "bahdanau":
            self.decoder.attention.query_layer = nn.Linear(hidden, hidden, bias=False)
            self.decoder.attention.energy_layer = nn.Linear(hidden, 1, bias=False)
        if self.init_hidden == "bridge":
            self.decoder.bridge_layer = nn.Linear(memory, hidden)

    def encode(self, src_ids: Tensor, src_lengths: Tensor):
        embedded = self.src_embed(src_ids) * self.src_scale
        packed = pack_padded_sequence(embedded, src_lengths.cpu(), batch_first=True, enforce_sorted=False)
        output, final = self.encoder.rnn(packed)
        if isinstance(final, tuple):
            final = final[0]
        output, _ = pad_packed_sequence(output, batch_first=True, total_length=src_ids.shape[1])
        rnn = self.encoder.rnn
        layerwise = final.view(rnn.num_layers, 2, final.shape[1], rnn.hidden_size)
        encoder_final = torch.cat([layerwise[-1, 0], layerwise[-1, 1]], dim=1)  # [B, 2 x encoder hidden]
        if self.init_hidden == "bridge":
            first = torch.tanh(self.decoder.bridge_layer(encoder_final))
        elif self.init_hidden == "last":
            first = encoder_final[:, : self.hidden] if encoder_final.shape[1] == 2 * self.hidden else encoder_final
        else:
            first = torch.zeros(encoder_final.shape[0], self.hidden, dtype=encoder_final.dtype)
        h = first.unsqueeze(1).repeat(1, self.layers, 1)  # [B, layers, H]: every layer starts alike
        attentional = torch.zeros_like(first)
        keys = self.decoder.attention.key_layer(output)
        state = (h, h, attentional) if self.rnn_type == "lstm" else (h, attentional)
        return torch.cat([output, keys], dim=2), state

    def step(self, prev_ids: Tensor, state, memory: Tensor, src_mask: Tensor):
        values, keys = memory[:, :, : self.memory_size], memory[:, :, self.memory_size :]
        attentional = state[-1]
        hidden = tuple(s.transpose(0, 1).contiguous() for s in state[:-1])  # [layers, B, H]
        embedded = (self.trg_embed(prev_ids) * self.trg_scale).unsqueeze(1)
        rnn_input = torch.cat([embedded, attentional.unsqueeze(1)], dim=2) if self.input_feeding else embedded
        _, new = self.decoder.rnn(rnn_input, hidden if self.rnn_type == "lstm" else hidden[0])
        new = new if isinstance(new, tuple) else (new,)
        query = new[0][-1].unsqueeze(1)  # [B, 1, H]: the top layer's new hidden state
        attention = self.decoder.attention
        if self.attention_type == "bahdanau":
            scores = attention.energy_layer(torch.tanh(attention.query_layer(query) + keys)).squeeze(2).unsqueeze(1)
        else:
            scores = query @ keys.transpose(1, 2)
        scores = torch.where(src_mask.unsqueeze(1), scores, torch.full_like(scores, -math.inf))
        alphas = torch.softmax(scores, dim=-1)  # [B, 1, S]
        context = alphas @ values
        attentional = torch.tanh(self.decoder.att_vector_layer(torch.cat([query, context], dim=2))).squeeze(1)
        logits = self.decoder.output_layer(attentional)
        return logits, (*(s.transpose(0, 1) for s in new), attentional), alphas.squeeze(1)


class _Embeddings(nn.Module):
    def __init__(self, vocab: int, dim: int, pad: int):
        super().__init__()
        self.lut = nn.Embedding(vocab, dim, padding_idx=pad)

    def forward(self, ids: Tensor) -> Tensor:
        return self.lut(ids)


def _scale(side: dict) -> float:
    embeddings = side["embeddings"]
    return math.sqrt(embeddings["embedding_dim"]) if embeddings.get("scale", False) else 1.0


def load(model_dir: Path) -> Imported:
    import yaml

    config_path = model_dir / "config.yaml"
    if not config_path.is_file():
        raise ImportRefused(f"{model_dir}: no config.yaml; --from joeynmt takes a JoeyNMT model directory")
    try:
        cfg = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ImportRefused(f"{config_path}: cannot read it as YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict) or not isinstance(cfg.get("data"), dict):
        raise ImportRefused(f"{config_path}: not a JoeyNMT config (no model and data sections)")
    model_cfg, data = cfg["model"], cfg["data"]
    _refuse_unsupported(model_cfg, data, cfg.get("testing") or {}, config_path)
    specials = _specials(data.get("special_symbols") or {}, config_path)
    vocabs = {side: _vocab(model_dir / f"{side}_vocab.txt") for side in ("src", "trg")}
    for side, vocab in vocabs.items():
        for name, token in specials.items():
            if token not in vocab:
                raise ImportRefused(f"{model_dir / f'{side}_vocab.txt'}: the {name} token {token!r} is not in it")
    checkpoint = _checkpoint(model_dir)
    state = _model_state(checkpoint)
    pads = vocabs["src"].index(specials["pad"]), vocabs["trg"].index(specials["pad"])
    if _is_transformer(model_cfg):
        module: nn.Module = JoeyTransformer(model_cfg, len(vocabs["src"]), len(vocabs["trg"]), *pads, position_table_rows(state))
    else:
        module = JoeyRecurrent(model_cfg, len(vocabs["src"]), len(vocabs["trg"]), *pads)
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ImportRefused(f"{checkpoint}: its weights do not fit the model config.yaml describes "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    testing = cfg.get("testing") or {}
    longest = testing.get("max_output_length", -1)
    conventions = Conventions(
        source_eos=True, min_len=int(testing.get("min_output_length", 1)), max_len_ratio=0.0 if longest > 0 else 1.5,
        never_emit=() if testing.get("generate_unk", True) else ("<unk>",),
        space_symbol=SPACE_ESCAPE if "char" in (data["src"].get("level"), data["trg"].get("level")) else "")
    return Imported(model=_ready(module), source_vocab=vocabs["src"], target_vocab=vocabs["trg"], specials=specials,
                    source_tokens=_tokens(data["src"], model_dir), target_tokens=_tokens(data["trg"], model_dir),
                    lowercase=bool(data["src"].get("lowercase", False)), conventions=conventions,
                    origin=f"joeynmt {cfg.get('joeynmt_version', '2.x')}: {model_dir.name}",
                    max_tgt_len=longest if longest > 0 else None, parity_sources=_dev_sources(data, model_dir))


def _is_transformer(model_cfg: dict) -> bool:
    return (model_cfg.get("encoder") or {}).get("type", "recurrent") == "transformer"


def _refuse_unsupported(model_cfg: dict, data: dict, testing: dict, where: Path) -> None:
    """One line naming the first setting this importer does not rebuild."""
    enc, dec = model_cfg.get("encoder") or {}, model_cfg.get("decoder") or {}
    types = enc.get("type", "recurrent"), dec.get("type", "transformer")  # JoeyNMT's defaults differ by side
    checks = [(types not in (("recurrent", "recurrent"), ("transformer", "transformer")),
               f"encoder.type {types[0]!r} with decoder.type {types[1]!r} (both recurrent or both transformer import)")]
    checks += _transformer_problems(enc, dec) if types[0] == "transformer" else _recurrent_problems(enc, dec)
    checks += [
        (bool((data.get("special_symbols") or {}).get("lang_tags")), "data.special_symbols.lang_tags (language tags)"),
        (bool((data.get("special_symbols") or {}).get("sep_token")), "data.special_symbols.sep_token (prompts)"),
        (testing.get("repetition_penalty", -1) > 0, "testing.repetition_penalty"),
        (testing.get("no_repeat_ngram_size", -1) > 0, "testing.no_repeat_ngram_size"),
    ]
    _refuse_settings(checks, data, where)


def _recurrent_problems(enc: dict, dec: dict) -> list[tuple[bool, str]]:
    return [
        (enc.get("rnn_type", "gru") not in ("gru", "lstm"), f"encoder.rnn_type {enc.get('rnn_type')!r}"),
        (dec.get("rnn_type", "gru") != enc.get("rnn_type", "gru"), "encoder and decoder rnn_type differ"),
        (not enc.get("bidirectional", True), "encoder.bidirectional false (JoeyNMT 2.3's encoder fails with it)"),
        (dec.get("activation", "tanh") != "tanh", f"decoder.activation {dec.get('activation')!r} (JoeyNMT 2.3 builds it "
                                                  "but its recurrent decoder is only known to work with tanh)"),
        (dec.get("attention", "bahdanau") not in ("bahdanau", "luong"), f"decoder.attention {dec.get('attention')!r}"),
        (dec.get("init_hidden", "bridge") not in ("bridge", "last", "zero", "zeros"), f"decoder.init_hidden {dec.get('init_hidden')!r}"),
    ]


def _transformer_problems(enc: dict, dec: dict) -> list[tuple[bool, str]]:
    problems = []
    for side, cfg in (("encoder", enc), ("decoder", dec)):
        size, heads = cfg.get("hidden_size", 512), cfg.get("num_heads", 4 if side == "encoder" else 8)
        problems += [
            (cfg.get("activation", "relu") not in ACTIVATIONS, f"{side}.activation {cfg.get('activation')!r}"),
            (cfg.get("layer_norm", "pre") not in ("pre", "post"), f"{side}.layer_norm {cfg.get('layer_norm')!r}"),
            ((cfg.get("embeddings") or {}).get("embedding_dim") != size, f"{side}.embeddings.embedding_dim other than hidden_size"),
            (not isinstance(heads, int) or heads < 1 or size % heads != 0, f"{side}.num_heads {heads!r} for hidden_size {size!r}"),
        ]
    return problems + [(enc.get("hidden_size", 512) != dec.get("hidden_size", 512), "encoder and decoder hidden_size differ")]


def _refuse_settings(checks: list[tuple[bool, str]], data: dict, where: Path) -> None:
    """The data settings' checks added to `checks`; the first that holds is refused in one line."""
    for side in ("src", "trg"):
        s = data.get(side) or {}
        tokenizer = s.get("tokenizer_type", s.get("bpe_type", "sentencepiece"))
        checks += [
            (s.get("level") not in ("char", "word", "bpe"), f"data.{side}.level {s.get('level')!r}"),
            (s.get("level") == "bpe" and tokenizer != "sentencepiece", f"data.{side}.tokenizer_type {tokenizer!r} "
                                                                       "(subword-nmt BPE; SentencePiece models import)"),
            ((s.get("tokenizer_cfg") or {}).get("pretokenizer", "none") != "none", f"data.{side}.tokenizer_cfg.pretokenizer "
                                                                                   "(moses)"),
            (bool(s.get("normalize", False)), f"data.{side}.normalize (JoeyNMT's own normalisation)"),
        ]
    for refused, what in checks:
        if refused:
            raise ImportRefused(f"{where}: {what} is not supported by --from joeynmt")


def _specials(symbols: dict, where: Path) -> dict[str, str]:
    return {"pad": symbols.get("pad_token", "<pad>"), "bos": symbols.get("bos_token", "<s>"), "eos": symbols.get("eos_token", "</s>"),
            "unk": symbols.get("unk_token", "<unk>")}


def _vocab(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").rstrip("\n").split("\n")
    except OSError as exc:
        raise ImportRefused(f"{path}: cannot read the vocabulary ({exc.strerror})") from None


def _checkpoint(model_dir: Path) -> Path:
    best = model_dir / "best.ckpt"
    if best.is_file():
        return best
    numbered = sorted(model_dir.glob("*.ckpt"), key=lambda p: int(p.stem) if p.stem.isdigit() else -1)
    if not numbered:
        raise ImportRefused(f"{model_dir}: no checkpoint (best.ckpt or N.ckpt)")
    return numbered[-1]


def _model_state(path: Path) -> dict[str, Tensor]:
    checkpoint = read_checkpoint(path)
    state = checkpoint.get("model_state") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ImportRefused(f"{path}: no model_state; not a JoeyNMT checkpoint")
    return state


def _tokens(side: dict, model_dir: Path) -> str | Path:
    if side.get("level") != "bpe":
        return side.get("level", "word")
    model_file = Path((side.get("tokenizer_cfg") or {}).get("model_file", ""))
    for candidate in (model_file, model_dir / model_file.name):
        if candidate.is_file():
            return candidate
    raise ImportRefused(f"{model_dir}: the SentencePiece model {model_file} is not there (copy it into the model directory)")


def _dev_sources(data: dict, model_dir: Path) -> list[str]:
    """The dev set's sources, when the file the config names is here: texts for the parity gate (as many as
    --parity-words asks for are taken from them)."""
    dev = data.get("dev")
    if not dev:
        return []
    path = Path(f"{dev}.{data['src'].get('lang', 'src')}")
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [line.strip() for line in lines if line.strip()]


def _ready(module: nn.Module) -> nn.Module:
    """The loaded module in eval mode, a Transformer's step prepared (its query scales folded into the weights)."""
    prepare = getattr(module, "prepare_steps", None)
    return (prepare() if prepare else module).eval()
