"""OpenNMT-py 3.x models: `seq2edge export --from opennmt CHECKPOINT.pt OUT`.

RNN models are rebuilt here, Transformers in importers/opennmt_transformer.py; what follows is about the RNN
ones, and the checkpoint, vocabularies and decoding conventions, which both share.

Reads the checkpoint as data, never unpickling it (importers/torch_zip.py: tensors, plain containers
and argparse's Namespace, which its `opt` is); the vocabularies come from the checkpoint too. It rebuilds OpenNMT-py
3.5's RNNEncoder, StdRNNDecoder / InputFeedRNNDecoder, GlobalAttention and generator
(onmt/encoders/rnn_encoder.py, onmt/decoders/decoder.py, onmt/modules/global_attention.py,
stacked_rnn.py) with the same parameter names:

- encoder: word embeddings -> GRU/LSTM (bidirectional for brnn, each direction hidden/2) over the
  packed sequence; with -bridge each final state goes through relu(Linear) on its layers;
- the decoder's first state: the encoder's final states, a bidirectional pair of directions
  concatenated per layer; the input feed starts at zeros;
- a step: InputFeedRNNDecoder runs stacked cells over [embedding; input feed], StdRNNDecoder the
  RNN over the embedding; the query is the top layer's output; GlobalAttention scores it against
  the encoder outputs (dot, general: q W . h, mlp: v . tanh(W_q q + W_c h)), masks, softmax, and
  gives linear_out([context; query]) (tanh for dot and general); the generator is a Linear.

Decoding conventions (runtime/conventions.py): the output limit int(min(250, 1.25 x source + 5)),
onmt_translate's default, and the vocabulary's filler tokens (averyunlikelytoken*, which pad it to
a multiple of 8) never emitted. Copy attention, coverage, a context gate, SRU, source features and
anything but softmax attention are refused by name.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seq2edge.runtime.conventions import Conventions

from . import Imported, ImportRefused
from .opennmt_transformer import ACTIVATIONS, OnmtTransformer, position_table_rows
from .torch_zip import read_checkpoint

FILLER = "averyunlikelytoken"  # onmt/constants.py DefaultTokens.VOCAB_PAD: vocabularies padded to a multiple of 8
SPECIALS = {"pad": "<blank>", "bos": "<s>", "eos": "</s>", "unk": "<unk>"}  # DefaultTokens


class OnmtRNN(nn.Module):
    """OpenNMT-py's RNN encoder-decoder in the encode()/step() protocol."""

    def __init__(self, opt: argparse.Namespace, src_vocab: int, tgt_vocab: int, src_pad: int, tgt_pad: int):
        super().__init__()
        self.rnn_type = opt.rnn_type
        rnn = getattr(nn, opt.rnn_type)
        bidirectional = opt.encoder_type == "brnn"
        directions = 2 if bidirectional else 1
        self.hidden = opt.dec_hid_size
        self.layers = opt.dec_layers
        self.input_feed = bool(opt.input_feed)
        self.attn_type = opt.global_attention
        self.encoder = nn.Module()
        self.encoder.embeddings = _Embeddings(src_vocab, opt.src_word_vec_size, src_pad)
        self.encoder.rnn = rnn(opt.src_word_vec_size, opt.enc_hid_size // directions, opt.enc_layers, batch_first=True,
                               bidirectional=bidirectional)
        self.bridge = bool(opt.bridge)
        if self.bridge:
            total = opt.enc_hid_size // directions * opt.enc_layers
            self.encoder.bridge = nn.ModuleList([nn.Linear(total, total) for _ in range(2 if opt.rnn_type == "LSTM" else 1)])
        self.decoder = nn.Module()
        self.decoder.embeddings = _Embeddings(tgt_vocab, opt.tgt_word_vec_size, tgt_pad)
        if self.input_feed:
            self.decoder.rnn = nn.Module()
            cell = nn.LSTMCell if opt.rnn_type == "LSTM" else nn.GRUCell
            sizes = [opt.tgt_word_vec_size + self.hidden] + [self.hidden] * (self.layers - 1)
            self.decoder.rnn.layers = nn.ModuleList([cell(size, self.hidden) for size in sizes])
        else:
            self.decoder.rnn = rnn(opt.tgt_word_vec_size, self.hidden, self.layers, batch_first=True)
        self.decoder.attn = nn.Module()
        attn, dim = self.decoder.attn, self.hidden
        if self.attn_type == "general":
            attn.linear_in = nn.Linear(dim, dim, bias=False)
        elif self.attn_type == "mlp":
            attn.linear_context = nn.Linear(dim, dim, bias=False)
            attn.linear_query = nn.Linear(dim, dim)
            attn.v = nn.Linear(dim, 1, bias=False)
        attn.linear_out = nn.Linear(2 * dim, dim, bias=self.attn_type == "mlp")
        self.generator = nn.Linear(dim, tgt_vocab)

    def encode(self, src_ids: Tensor, src_lengths: Tensor):
        packed = pack_padded_sequence(self.encoder.embeddings(src_ids), src_lengths.cpu(), batch_first=True, enforce_sorted=False)
        enc_out, final = self.encoder.rnn(packed)
        enc_out, _ = pad_packed_sequence(enc_out, batch_first=True, total_length=src_ids.shape[1])
        finals = final if isinstance(final, tuple) else (final,)
        if self.bridge:
            finals = tuple(self._bridge(linear, states) for linear, states in zip(self.encoder.bridge, finals))
        if self.encoder.rnn.bidirectional:  # [layers x 2, B, h] -> [layers, B, 2h]: each layer's directions side by side
            finals = tuple(torch.cat([s[0 : s.shape[0] : 2], s[1 : s.shape[0] : 2]], dim=2) for s in finals)
        input_feed = torch.zeros(src_ids.shape[0], self.hidden, dtype=enc_out.dtype)
        return enc_out, (*(s.transpose(0, 1) for s in finals), input_feed)

    def _bridge(self, linear: nn.Linear, states: Tensor) -> Tensor:
        """OpenNMT-py's bottle_hidden, reshapes and all."""
        states = states.permute(1, 0, 2).contiguous()
        size = states.size()
        result = F.relu(linear(states.view(-1, linear.in_features))).view(size)
        return result.permute(1, 0, 2).contiguous()

    def step(self, prev_ids: Tensor, state, memory: Tensor, src_mask: Tensor):
        input_feed = state[-1]
        hidden = tuple(s.transpose(0, 1) for s in state[:-1])  # [layers, B, H]
        embedded = self.decoder.embeddings(prev_ids)
        if self.input_feed:
            layer_input = torch.cat([embedded, input_feed], dim=1)
            new = [[] for _ in hidden]
            for i, cell in enumerate(self.decoder.rnn.layers):
                out = cell(layer_input, tuple(h[i] for h in hidden) if self.rnn_type == "LSTM" else hidden[0][i])
                out = out if isinstance(out, tuple) else (out,)
                for parts, value in zip(new, out):
                    parts.append(value)
                layer_input = out[0]
            rnn_out, new_hidden = layer_input, tuple(torch.stack(parts) for parts in new)
        else:
            output, new_hidden = self.decoder.rnn(embedded.unsqueeze(1), hidden if self.rnn_type == "LSTM" else hidden[0])
            rnn_out, new_hidden = output.squeeze(1), new_hidden if isinstance(new_hidden, tuple) else (new_hidden,)
        attn_h, align = self._attend(rnn_out, memory, src_mask)
        return self.generator(attn_h), (*(s.transpose(0, 1) for s in new_hidden), attn_h), align

    def _attend(self, query: Tensor, enc_out: Tensor, src_mask: Tensor) -> tuple[Tensor, Tensor]:
        attn, q = self.decoder.attn, query.unsqueeze(1)  # [B, 1, H]
        if self.attn_type == "mlp":
            scores = attn.v(torch.tanh(attn.linear_query(q).unsqueeze(2) + attn.linear_context(enc_out).unsqueeze(1))).squeeze(3)
        else:
            scores = torch.bmm(attn.linear_in(q) if self.attn_type == "general" else q, enc_out.transpose(1, 2))
        scores = scores.masked_fill(~src_mask.unsqueeze(1), -math.inf)
        align = torch.softmax(scores, dim=-1)  # [B, 1, S]
        context = torch.bmm(align, enc_out)
        attn_h = attn.linear_out(torch.cat([context, q], dim=2))
        if self.attn_type in ("dot", "general"):
            attn_h = torch.tanh(attn_h)
        return attn_h.squeeze(1), align.squeeze(1)


class _Embeddings(nn.Module):
    """onmt.modules.Embeddings with words only: make_embedding.emb_luts.0 is the lookup table."""

    def __init__(self, vocab: int, dim: int, pad: int):
        super().__init__()
        self.make_embedding = nn.Module()
        self.make_embedding.emb_luts = nn.ModuleList([nn.Embedding(vocab, dim, padding_idx=pad)])

    def forward(self, ids: Tensor) -> Tensor:
        return self.make_embedding.emb_luts[0](ids)


def load(path: Path) -> Imported:
    if not path.is_file():
        raise ImportRefused(f"{path}: not a file; --from opennmt takes an OpenNMT-py checkpoint (.pt)")
    checkpoint = read_checkpoint(path)  # its opt is an argparse.Namespace, the one class the reader builds beyond containers
    if not isinstance(checkpoint, dict) or not {"model", "generator", "vocab", "opt"} <= set(checkpoint):
        raise ImportRefused(f"{path}: not an OpenNMT-py 3 checkpoint (it needs model, generator, vocab and opt)")
    opt, vocab = checkpoint["opt"], checkpoint["vocab"]
    _refuse_unsupported(opt, vocab, path)
    source, target = list(vocab["src"]), list(vocab["tgt"])
    for side, tokens in (("src", source), ("tgt", target)):
        missing = [t for t in SPECIALS.values() if t not in tokens]
        if missing:
            raise ImportRefused(f"{path}: the {side} vocabulary lacks {missing[0]!r}")
    pads = source.index(SPECIALS["pad"]), target.index(SPECIALS["pad"])
    if getattr(opt, "encoder_type", None) == "transformer":
        module: nn.Module = OnmtTransformer(opt, len(source), len(target), *pads, position_table_rows(checkpoint["model"]))
    else:
        module = OnmtRNN(opt, len(source), len(target), *pads)
    state = {**checkpoint["model"], **{f"generator.{k}": v for k, v in checkpoint["generator"].items()}}
    if getattr(opt, "share_decoder_embeddings", False) and "generator.weight" not in state:
        state["generator.weight"] = state["decoder.embeddings.make_embedding.emb_luts.0.weight"]
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ImportRefused(f"{path}: its weights do not fit the model its opt describes (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]})")
    never = tuple(t for t in target if t.startswith(FILLER))
    conventions = Conventions(max_len_ratio=1.25, max_len_offset=5.0, max_len_cap=250, never_emit=never)
    return Imported(model=_ready(module), source_vocab=source, target_vocab=target, specials=dict(SPECIALS),
                    source_tokens="word", target_tokens="word", lowercase=False, conventions=conventions,
                    origin=f"opennmt-py {getattr(opt, 'version', '3.x')}: {path.name}", max_tgt_len=250)


def _refuse_unsupported(opt: argparse.Namespace, vocab: dict, where: Path) -> None:
    get = lambda name, default=None: getattr(opt, name, default)  # noqa: E731
    transformer = get("encoder_type") == "transformer"
    checks = [
        (get("model_task", "seq2seq") != "seq2seq", f"model_task {get('model_task')!r}"),
        (get("encoder_type") not in ("rnn", "brnn", "transformer"), f"encoder_type {get('encoder_type')!r} "
                                                                    "(rnn, brnn and transformer import)"),
        (get("decoder_type") != ("transformer" if transformer else "rnn"),
         f"decoder_type {get('decoder_type')!r} with encoder_type {get('encoder_type')!r}"),
        *(_transformer_problems(get) if transformer else _rnn_problems(get)),
        (bool(vocab.get("src_feats")) or bool(get("src_feats")), "source features (src_feats)"),
        (bool(get("lambda_align", 0.0)), "guided alignment (lambda_align)"),
        (vocab.get("decoder_start_token", "<s>") != "<s>", f"decoder_start_token {vocab.get('decoder_start_token')!r}"),
    ]
    for refused, what in checks:
        if refused:
            raise ImportRefused(f"{where}: {what} is not supported by --from opennmt")


def _transformer_problems(get) -> list[tuple[bool, str]]:
    relative = get("max_relative_positions", 0)
    heads, size = get("heads", 8), get("hidden_size", 512)
    return [
        (relative != 0, {-1: "rotary position embeddings (max_relative_positions -1)", -2: "ALiBi (max_relative_positions -2)"}
         .get(relative, f"relative positions (max_relative_positions {relative})")),
        (not get("position_encoding", False), "a transformer without position_encoding"),
        (get("self_attn_type", "scaled-dot") not in ("scaled-dot", "scaled-dot-flash"), f"self_attn_type {get('self_attn_type')!r}"),
        (get("pos_ffn_activation_fn", "relu") not in ACTIVATIONS, f"pos_ffn_activation_fn {get('pos_ffn_activation_fn')!r}"),
        (get("layer_norm", "standard") != "standard", f"layer_norm {get('layer_norm')!r}"),
        (bool(get("parallel_residual", False)), "parallel_residual"),
        (get("num_kv", 0) not in (0, heads), f"num_kv {get('num_kv')!r} (grouped keys and values)"),
        (get("num_experts", 0) > 0, "num_experts (mixture of experts)"),
        (get("sliding_window", 0) > 0, "sliding_window"),
        (bool(get("full_context_alignment", False)) or get("alignment_heads", 0) > 0, "alignment heads (alignment_heads)"),
        (bool(get("copy_attn", False)), "copy_attn (copy attention)"),
        (get("enc_hid_size", size) != get("dec_hid_size", size), "enc_hid_size and dec_hid_size differ"),
        (get("src_word_vec_size", size) != size or get("tgt_word_vec_size", size) != size, "word_vec_size other than hidden_size"),
        (not isinstance(heads, int) or heads < 1 or size % heads != 0, f"heads {heads!r} for hidden_size {size!r}"),
    ]


def _rnn_problems(get) -> list[tuple[bool, str]]:
    return [
        (get("rnn_type") == "SRU", "rnn_type SRU"),
        (get("rnn_type") not in ("LSTM", "GRU", "SRU"), f"rnn_type {get('rnn_type')!r}"),
        (bool(get("copy_attn", False)), "copy_attn (copy attention)"),
        (bool(get("coverage_attn", False)), "coverage_attn (coverage)"),
        (get("context_gate") not in (None, "none"), f"context_gate {get('context_gate')!r}"),
        (get("global_attention") not in ("dot", "general", "mlp"), f"global_attention {get('global_attention')!r} "
                                                                   "(an RNN decoder without attention)"),
        (get("global_attention_function", "softmax") != "softmax", f"global_attention_function {get('global_attention_function')!r}"),
        (bool(get("position_encoding", False)), "position_encoding"),
        (get("enc_hid_size") != get("dec_hid_size"), "enc_hid_size and dec_hid_size differ"),
        (get("bridge") is not True and get("enc_layers") != get("dec_layers"), "enc_layers and dec_layers differ without a bridge"),
    ]


def _ready(module: nn.Module) -> nn.Module:
    """The loaded module in eval mode, a Transformer's step prepared (its query scales folded into the weights)."""
    prepare = getattr(module, "prepare_steps", None)
    return (prepare() if prepare else module).eval()
