// SentencePiece unigram tokenisation for JavaScript hosts, so that bundles whose sides use `spm` decode in Node and
// the browser without the sentencepiece library. It reads the bundle's .model file (a protobuf) and follows
// sentencepiece 0.2's C++ step for step: the normaliser's precompiled character map (a Darts double-array trie over
// UTF-8 bytes) and whitespace rules, the optimised unigram Viterbi with float32 scores, the merging of runs of unknown
// pieces, and the decoder's whitespace and <unk> rules. It supports what `seq2edge train` writes (unigram models
// without byte fallback, user-defined symbols or denormalisation rules) and refuses anything else by name.

const SPACE = "\u2581";  // sentencepiece's whitespace symbol
const UNK_PENALTY = 10;  // unigram_model.cc kUnkPenalty
const MAX_TRIE_RESULTS = 32;  // normalizer.h kMaxTrieResultsSize
const [NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE] = [1, 2, 3, 4, 5, 6];
const UNIGRAM = 1;
const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

/** A SentencePiece model: encode(text) -> pieces, decode(pieces) -> text, as sentencepiece's Python API does. */
export class SentencePiece {
  /** Parse a serialised ModelProto (the bytes of a .model file); throws Error naming what is not supported. */
  constructor(bytes) {
    const model = parseModel(bytes);
    const trainer = model.trainer;
    if ((trainer.modelType ?? UNIGRAM) !== UNIGRAM) throw new Error(`model type ${trainer.modelType} (only unigram is supported)`);
    if (trainer.byteFallback) throw new Error("byte fallback is not supported");
    if (trainer.treatWhitespaceAsSuffix) throw new Error("treat_whitespace_as_suffix is not supported");
    if (model.denormalizer?.charsmap?.length) throw new Error("denormalisation rules are not supported");
    this.pieces = new Map();  // NORMAL and UNUSED pieces -> id (the unigram model's trie; USER_DEFINED is refused)
    this.reserved = new Map();  // UNKNOWN, CONTROL and BYTE pieces -> id
    this.types = model.pieces.map((p) => p.type);
    this.unkId = -1;
    let minScore = Infinity;
    model.pieces.forEach(({ piece, score, type }, id) => {
      if (type === USER_DEFINED) throw new Error(`user-defined symbol '${piece}' is not supported`);
      if (type === BYTE) throw new Error("byte pieces are not supported");
      const map = type === NORMAL || type === UNUSED ? this.pieces : this.reserved;
      if (map.has(piece)) throw new Error(`duplicate piece '${piece}'`);
      map.set(piece, id);
      if (type === UNKNOWN) this.unkId = id;
      if (type === NORMAL) minScore = Math.min(minScore, score);
    });
    if (this.unkId < 0) throw new Error("no unknown piece");
    this.scores = model.pieces.map((p) => p.score);
    this.unkPiece = model.pieces[this.unkId].piece;
    this.unkScore = Math.fround(minScore - UNK_PENALTY);
    this.maxPieceLength = 0;  // in characters (a loop: a spread of a large vocabulary would overflow the stack)
    for (const piece of this.pieces.keys()) this.maxPieceLength = Math.max(this.maxPieceLength, Array.from(piece).length);
    this.unkSurface = trainer.unkSurface ?? " \u2047 ";
    this.normalizer = new Normalizer(model.normalizer ?? {});
  }

  /** The pieces of `text`, as sentencepiece's encode(text, out_type=str). */
  encode(text) {
    const chars = Array.from(this.normalizer.normalize(text));
    const n = chars.length;
    // best[i]: the best path over chars[0, i): its score (float32, as the C++), the start of its last piece and its id
    const best = Array.from({ length: n + 1 }, () => ({ score: 0, start: -1, id: -1 }));
    const offer = (end, start, id, score) => {
      const candidate = Math.fround(score + best[start].score);
      if (best[end].start === -1 || candidate > best[end].score) Object.assign(best[end], { score: candidate, start, id });
    };
    for (let start = 0; start < n; start++) {
      let single = false;
      let piece = "";
      for (let end = start + 1; end <= Math.min(n, start + this.maxPieceLength); end++) {
        piece += chars[end - 1];
        const id = this.pieces.get(piece);
        if (id === undefined || this.types[id] === UNUSED) continue;
        offer(end, start, id, this.scores[id]);
        if (end === start + 1) single = true;
      }
      if (!single) offer(start + 1, start, this.unkId, this.unkScore);
    }
    const path = [];
    for (let end = n; end > 0; end = best[end].start) path.push([chars.slice(best[end].start, end).join(""), best[end].id]);
    path.reverse();
    const pieces = [];  // a run of unknown pieces becomes one piece, as sentencepiece's PopulateSentencePieceText
    path.forEach(([piece, id], i) => {
      if (id === this.unkId && i > 0 && path[i - 1][1] === this.unkId) pieces[pieces.length - 1] += piece;
      else pieces.push(piece);
    });
    return pieces;
  }

  /** The text of `pieces`, as sentencepiece's decode_pieces(pieces). */
  decode(pieces) {
    let text = "";
    let bosWs = true;  // whether a leading whitespace symbol is still to be dropped
    let bosWsSeen = false;
    for (const piece of pieces) {
      if (bosWsSeen || text !== "") bosWs = false;
      const id = this.reserved.get(piece) ?? this.pieces.get(piece) ?? this.unkId;
      bosWsSeen = false;
      if (this.types[id] === CONTROL) continue;
      if (id === this.unkId) {
        text += piece === this.unkPiece ? this.unkSurface : piece;
        continue;
      }
      let surface = piece;
      const { addDummyPrefix, removeExtraWhitespaces } = this.normalizer;
      if (bosWs && (addDummyPrefix || removeExtraWhitespaces) && surface.startsWith(SPACE)) {
        surface = surface.slice(SPACE.length);
        bosWsSeen = !removeExtraWhitespaces;
      }
      text += surface.replaceAll(SPACE, " ");
    }
    return text;
  }
}

/** normalizer.cc: the precompiled character map, then the whitespace rules, over UTF-8 bytes. */
class Normalizer {
  constructor({ charsmap, addDummyPrefix = true, removeExtraWhitespaces = true, escapeWhitespaces = true }) {
    Object.assign(this, { addDummyPrefix, removeExtraWhitespaces, escapeWhitespaces });
    this.trie = null;
    if (charsmap?.length) {
      const view = new DataView(charsmap.buffer, charsmap.byteOffset, charsmap.byteLength);
      const trieSize = charsmap.byteLength > 4 ? view.getUint32(0, true) : Infinity;
      if (trieSize >= charsmap.byteLength || trieSize % 4) throw new Error("the normalisation rules are broken");
      this.trie = new Uint32Array(charsmap.slice(4, 4 + trieSize).buffer);
      this.normalized = charsmap.subarray(4 + trieSize);
    }
  }

  /** [bytes the input's prefix at `pos` becomes, input bytes it consumes] (NormalizePrefix). */
  prefix(input, pos) {
    let longest = 0;
    let value = 0;
    if (this.trie) {
      const unit = this.trie;
      let node = offset(unit[0]);
      let found = 0;
      for (let i = pos; i < input.length; i++) {
        node ^= input[i];
        const u = unit[node];
        if (u === undefined || (u & 0x800000ff) !== input[i]) break;
        node ^= offset(u);
        if ((u >>> 8) & 1) {
          if (found++ < MAX_TRIE_RESULTS && i + 1 - pos > longest) {
            longest = i + 1 - pos;
            value = unit[node] & 0x7fffffff;
          }
        }
      }
    }
    if (longest === 0) {
      const length = charLength(input[pos]);
      return [input.subarray(pos, pos + length), length];
    }
    const end = this.normalized.indexOf(0, value);
    return [this.normalized.subarray(value, end < 0 ? undefined : end), longest];
  }

  /** The normalised form of `text`, with whitespace as U+2581 where the model escapes it. */
  normalize(text) {
    const input = utf8.encode(text);
    const out = [];
    const space = this.escapeWhitespaces ? [...utf8.encode(SPACE)] : [0x20];
    let pos = 0;
    if (this.removeExtraWhitespaces) {
      for (let p; pos < input.length && (p = this.prefix(input, pos))[0].length === 1 && p[0][0] === 0x20;) pos += p[1];
    }
    if (pos === input.length) return "";
    if (this.addDummyPrefix) out.push(...space);
    let prevSpace = this.removeExtraWhitespaces;
    while (pos < input.length) {
      const [bytes, consumed] = this.prefix(input, pos);
      let start = 0;
      while (prevSpace && start < bytes.length && bytes[start] === 0x20) start++;
      if (start < bytes.length) {
        for (let i = start; i < bytes.length; i++) {
          if (this.escapeWhitespaces && bytes[i] === 0x20) out.push(...space);
          else out.push(bytes[i]);
        }
        prevSpace = bytes[bytes.length - 1] === 0x20;
      }
      pos += consumed;
      if (!this.removeExtraWhitespaces) prevSpace = false;
    }
    if (this.removeExtraWhitespaces) {
      while (out.length >= space.length && space.every((b, i) => out[out.length - space.length + i] === b)) {
        out.length -= space.length;
      }
    }
    return fromUtf8.decode(new Uint8Array(out));
  }
}

// Darts-clone's double-array unit: offset to the unit's children.
const offset = (u) => ((u >>> 10) << ((u & (1 << 9)) >>> 6)) >>> 0;

function charLength(lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xf0) return 4;
  if (lead >= 0xe0) return 3;
  return 2;
}

// -- the few ModelProto fields a unigram tokeniser needs (sentencepiece_model.proto) --

function parseModel(bytes) {
  const model = { pieces: [], trainer: {}, normalizer: null, denormalizer: null };
  for (const [field, value] of fields(bytes)) {
    if (field === 1) {
      const piece = { piece: "", score: 0, type: NORMAL };
      for (const [f, v] of fields(value)) {
        if (f === 1) piece.piece = fromUtf8.decode(v);
        else if (f === 2) piece.score = v;
        else if (f === 3) piece.type = v;
      }
      model.pieces.push(piece);
    } else if (field === 2) {
      for (const [f, v] of fields(value)) {
        if (f === 3) model.trainer.modelType = v;
        else if (f === 24) model.trainer.treatWhitespaceAsSuffix = Boolean(v);
        else if (f === 35) model.trainer.byteFallback = Boolean(v);
        else if (f === 44) model.trainer.unkSurface = fromUtf8.decode(v);
      }
    } else if (field === 3 || field === 5) {
      const spec = {};
      for (const [f, v] of fields(value)) {
        if (f === 2) spec.charsmap = v;
        else if (f === 3) spec.addDummyPrefix = Boolean(v);
        else if (f === 4) spec.removeExtraWhitespaces = Boolean(v);
        else if (f === 5) spec.escapeWhitespaces = Boolean(v);
      }
      model[field === 3 ? "normalizer" : "denormalizer"] = spec;
    }
  }
  if (model.pieces.length === 0) throw new Error("no pieces");
  return model;
}

/** [field number, value] of a protobuf message: numbers for varints, float for fixed32, bytes for the rest. */
function* fields(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let pos = 0;
  const varint = () => {
    let value = 0;
    for (let scale = 1; ; scale *= 128) {
      if (pos >= bytes.length) throw new Error("truncated protobuf");
      const b = bytes[pos++];
      value += (b & 0x7f) * scale;
      if (b < 0x80) return value;
    }
  };
  while (pos < bytes.length) {
    const key = varint();
    const [field, wire] = [Math.floor(key / 8), key % 8];
    let value;
    if (wire === 0) value = varint();
    else if (wire === 1) { value = null; pos += 8; }
    else if (wire === 2) {
      const length = varint();
      value = bytes.subarray(pos, pos + length);
      pos += length;
    } else if (wire === 5) { value = view.getFloat32(pos, true); pos += 4; }
    else throw new Error(`protobuf wire type ${wire}`);
    if (pos > bytes.length) throw new Error("truncated protobuf");
    yield [field, value];
  }
}
