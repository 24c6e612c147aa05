// seq2edge for JavaScript hosts: load a bundle, tokenise like the Python runtime, decode with
// onnxruntime (onnxruntime-node, or onnxruntime-web in a browser or in Node).
//
//   import { loadBundle } from "./node.mjs";          // or ./web.mjs in a browser
//   const model = await loadBundle("models/g2p-en");
//   (await model.decode(["attention"]))[0].text       // 'AH0 T EH1 N SH AH0 N'
//
// This file knows no file system and no particular onnxruntime package: a host passes `ort`,
// a `read(name)` returning a file's bytes, and a `sha256(bytes)` returning its hex digest.

import { axisSizes, BundleError, checkMeta, checkOwner, CONTRACT, conventionMaxLen, FORMAT_VERSION, MAX_JSON_DEPTH, plainName,
  pyRepr, say, scanOnnx, Seq2EdgeError, statePorts } from "./bundle-checks.mjs";
import { SentencePiece } from "./sentencepiece.mjs";

export { BundleError, FORMAT_VERSION, Seq2EdgeError };
export const UNKNOWN_POLICIES = ["error", "unk", "skip"];
export const TOO_LONG_POLICIES = ["error", "truncate"];
export const GRAPH_FORMATS = ["onnx", "ort"];
export const SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"];
// The ONNX contract (CONTRACT.ports; runtime/interface.py in Python): kind -> {inputs, outputs: {name: [type, axes]}},
// with onnxruntime's JavaScript names of the element types.
const JS_TYPES = { float: "float32", int64: "int64", bool: "bool" };
const CONTRACT_TYPES = Object.fromEntries(Object.entries(JS_TYPES).map(([name, js]) => [js, name]));
const PORTS = Object.fromEntries(Object.entries(CONTRACT.ports).map(([kind, roles]) => [kind, Object.fromEntries(
  Object.entries(roles).map(([role, ports]) => [role, Object.fromEntries(ports.map((p) => [p.name, [JS_TYPES[p.dtype], p.axes]]))]))]));
// The batched speed-up export must have measured for "auto" to use greedy.onnx on batches (runtime/model.py).
const GREEDY_GRAPH_BATCHED_SPEEDUP = 1.15;
const DYNAMIC = new Set(CONTRACT.dynamic_axes);
const SPECIAL_IDS = ["pad_id", "bos_id", "eos_id", "unk_id"];
const THREAD_DEPENDENT_OPS = ["DynamicQuantizeLSTM"];

/** Whether `bytes` holds the ASCII string `text` (an operator name in a serialised graph). */
function contains(bytes, text) {
  const needle = new TextEncoder().encode(text);
  for (let i = bytes.indexOf(needle[0]); i >= 0 && i <= bytes.length - needle.length; i = bytes.indexOf(needle[0], i + 1)) {
    let j = 1;
    while (j < needle.length && bytes[i + j] === needle[j]) j += 1;
    if (j === needle.length) return true;
  }
  return false;
}

export class InputError extends Seq2EdgeError {}
/** A graph that cannot run on its inputs (onnxruntime's own error, for one batch). */
class GraphRunError extends Error {}

/** session.run, with onnxruntime's failures told apart from this host's own errors. */
async function run(session, feeds) {
  try {
    return await session.run(feeds);
  } catch (err) {
    throw new GraphRunError(String(err?.message ?? err).trim().split("\n")[0].slice(0, 200));
  }
}

// Python's str.isspace() characters, so that strip() and split() agree with the Python runtime.
const WS = "\\t\\n\\x0b\\x0c\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const STRIP = new RegExp(`^[${WS}]+|[${WS}]+$`, "g");
const SPLIT = new RegExp(`[${WS}]+`);
const FORBIDDEN = /[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/u;

/** Whether a line holds only whitespace (Python's str.isspace() characters): the CLIs skip it. */
export function isBlank(text) {
  return text.replace(STRIP, "") === "";
}

/** Text <-> ids for one side, as runtime/tokenize.py's TextCodec. */
export class TextCodec {
  /** spm: the side's SentencePiece (sentencepiece.mjs), for kind "spm". */
  constructor(kind, vocab, lowercase, spm = null, spaceSymbol = "") {
    if (kind !== "char" && kind !== "word" && kind !== "spm") throw new BundleError(`unknown tokeniser ${kind}`);
    if (kind === "spm" && !spm) throw new BundleError("an spm tokeniser needs its model file");
    this.kind = kind;
    // Character level only: the token a space is written as (conventions.space_symbol, JoeyNMT's "▁").
    this.spaceSymbol = kind === "char" ? spaceSymbol : "";
    this.spm = spm;
    this.tokens = vocab;
    this.index = new Map(vocab.map((t, i) => [t, i]));
    // As runtime/tokenize.py: <pad>, <s> and </s> (ids 0-2) are never text; typed, they are unknown tokens.
    this.fromText = new Map([...this.index].filter(([, i]) => i > 2));
    this.lowercase = lowercase;
  }

  normalize(text) {
    text = text.normalize("NFC").replace(STRIP, "");
    return this.lowercase ? text.toLowerCase() : text;
  }

  split(text) {
    text = this.normalize(text);
    if (this.kind === "char") return Array.from(this.spaceSymbol ? text.replaceAll(" ", this.spaceSymbol) : text);  // code points, as Python's list(str)
    if (this.kind === "spm") return this.spm.encode(text);
    return text === "" ? [] : text.split(SPLIT);
  }

  join(tokens) {
    if (this.kind === "spm") return this.spm.decode(tokens);
    if (this.kind === "char") return this.spaceSymbol ? tokens.join("").replaceAll(this.spaceSymbol, " ") : tokens.join("");
    return tokens.join(" ");
  }

  /** [tokens, ids] after the unknown-token policy ("error", "unk" or "skip"). */
  encode(text, unknown = "error") {
    let tokens = this.split(text);
    if (tokens.length === 0) throw new InputError("empty input");
    let ids = tokens.map((t) => (this.fromText.has(t) ? this.fromText.get(t) : -1));
    if (!ids.includes(-1)) return [tokens, ids];
    if (unknown === "error") {
      const missing = [...new Set(tokens.filter((t, i) => ids[i] < 0))].map(pyRepr).join(", ");
      throw new InputError(`not in the source vocabulary: ${missing}`);
    }
    if (unknown === "skip") {
      tokens = tokens.filter((t, i) => ids[i] >= 0);
      ids = ids.filter((i) => i >= 0);
      if (tokens.length === 0) throw new InputError("nothing left after skipping unknown tokens");
      return [tokens, ids];
    }
    return [tokens, ids.map((i) => (i < 0 ? this.index.get("<unk>") : i))];
  }
}

// Session config both entry points pass (as runtime/providers.py): no QDQ rewrites, so constant folding
// widens int8 GRU/RNN weights stored behind a DequantizeLinear once at load instead of on every call. Not
// onnxruntime's set_denormal_as_zero, which the Python and native hosts set: it also sets flush-to-zero, for good,
// on the thread that creates the process's first session, which in Node is the JavaScript thread itself, and no
// JavaScript can set it back (docs/performance.md, "Subnormal weights"). A new object each time: onnxruntime-web
// adds its own entries to the one it is given.
export const sessionConfig = () => ({ session: { disable_quant_qdq: "1" } });
// onnxruntime's own log: fatal only, as in Python; a graph that fails on an input is that input's error.
export const LOG_SEVERITY = 4;

/** A loaded bundle: both codecs and onnxruntime sessions. Use loadBundle() of node.mjs or web.mjs. */
export class Seq2Seq {
  static async load({ ort, read, sha256, sessionOptions = {}, precision = "fp32", unknown = "error", tooLong = "error",
                      useGreedyGraph = "auto" }) {
    oneOf("unknown", unknown, UNKNOWN_POLICIES);
    oneOf("tooLong", tooLong, TOO_LONG_POLICIES);
    oneOf("useGreedyGraph", useGreedyGraph, ["auto", true, false]);
    oneOf("format", sessionOptions.format, [undefined, ...GRAPH_FORMATS]);
    let meta;
    meta = parseMeta(await read("bundle.json"));  // read: a BundleError of its own when missing or not a file
    checkMeta(meta);
    const graphs = meta.graphs[precision];
    if (!graphs) throw new BundleError(`bundle.json: no ${precision} graphs in this bundle`);
    if (useGreedyGraph === true && !graphs.greedy) {
      throw new BundleError(`bundle.json: no ${precision} greedy graph in this bundle; export it with \`seq2edge export --greedy-graph\``);
    }
    const sessions = {};
    for (const kind of ["encoder", "decoder", "greedy"]) {
      const entry = graphs[kind];
      if (!entry || (kind === "greedy" && useGreedyGraph === false)) continue;
      const file = pickFile(entry, sessionOptions.format);
      const bytes = await read(file.file);
      if ((await sha256(bytes)) !== file.sha256) {
        throw new BundleError(`${file.file}: sha256 does not match bundle.json; the file is damaged or was replaced, re-export the bundle`);
      }
      if (sessionOptions.format !== "ort") {  // an .ort file is a flatbuffer: no external data, no metadata_props
        const { external, metadata } = scanOnnx(bytes, file.file);
        if (external) throw new BundleError(`${file.file}: stores weights in external files, which a bundle never does; refused`);
        checkOwner(metadata, file.file, meta.bundle_id, kind, precision);
      }
      // As runtime/engine.py: a graph with an operator whose results depend on the thread count runs on one thread.
      const options = THREAD_DEPENDENT_OPS.some((op) => contains(bytes, op)) ? { ...sessionOptions, intraOpNumThreads: 1 } : sessionOptions;
      const session = await ort.InferenceSession.create(bytes, options);
      checkPorts(session, kind, file.file, meta.model, meta.state);
      sessions[kind] = session;
    }
    if (!sessions.encoder || !sessions.decoder) throw new BundleError("bundle.json: the encoder and decoder are required");
    const spm = {};
    for (const side of ["source", "target"]) {
      if (meta[side].tokenizer === "spm") spm[side] = await loadSentencePiece(meta[side], side, read, sha256);
    }
    return new Seq2Seq(ort, meta, sessions, { unknown, tooLong, useGreedyGraph, precision, spm });
  }

  /**
   * Several loaded bundles of one task decoding as one model, as the Python runtime's ensemble: at every step each
   * member runs its own decoder and the search sees the log of the members' mean probability. Members must share
   * both tokenisers and the special ids; the length limits are the smallest; greedy graphs (one model each) are not used.
   */
  static ensemble(lead, others, names = others.map((_, i) => `ensemble member ${i + 2}`)) {
    for (const [i, member] of others.entries()) {
      for (const side of ["source", "target"]) {
        const [a, b] = [lead.meta[side], member.meta[side]];
        if (a.tokenizer !== b.tokenizer || a.lowercase !== b.lowercase || a.spm_sha256 !== b.spm_sha256
            || a.vocab.length !== b.vocab.length || a.vocab.some((t, j) => t !== b.vocab[j])) {
          throw new BundleError(`${names[i]}: its ${side} vocabulary or tokeniser differs from the first bundle's; `
            + "an ensemble's members must share both");
        }
      }
      if (SPECIAL_IDS.some((id) => member.config[id] !== lead.config[id])) {
        throw new BundleError(`${names[i]}: its special token ids differ from the first bundle's`);
      }
    }
    const all = [lead, ...others];
    const config = { ...lead.config };
    for (const limit of ["max_src_len", "max_tgt_len"]) config[limit] = Math.min(...all.map((m) => m.config[limit]));
    const model = new Seq2Seq(lead.ort, lead.meta, lead.sessions, { unknown: lead.unknown, tooLong: lead.tooLong,
      useGreedyGraph: false, precision: lead.precision, spm: { source: lead.source.spm, target: lead.target.spm } });
    model.config = config;
    model.members = all;
    return model;
  }

  constructor(ort, meta, sessions, { unknown, tooLong, useGreedyGraph, precision = "fp32", spm = {} }) {
    this.ort = ort;
    this.precision = precision;
    this.statePorts = statePorts(meta.state);
    this.members = [this];  // the models that decode together: this one, and after Seq2Seq.ensemble() the others
    this.meta = meta;
    this.config = meta.model;
    this.sessions = sessions;
    this.conventions = meta.conventions;
    const space = meta.conventions.space_symbol;
    this.source = new TextCodec(meta.source.tokenizer, meta.source.vocab, meta.source.lowercase, spm.source, space);
    this.target = new TextCodec(meta.target.tokenizer, meta.target.vocab, false, spm.target, space);
    this.never = meta.conventions.never_emit.map((t) => this.target.index.get(t));
    this.unknown = unknown;
    this.tooLong = tooLong;
    this.useGreedyGraph = useGreedyGraph;
    // As the Python runtime: "auto" also decodes batches with the graph where export measured it
    // at least 1.15x faster than step by step (batched, on the CPU).
    const speedup = meta.parity?.[precision]?.greedy_graph?.batched_speedup ?? 0;
    this.greedyGraphBatches = speedup >= GREEDY_GRAPH_BATCHED_SPEEDUP;
  }

  get hasGreedyGraph() {
    return Boolean(this.sessions.greedy) && this.members.length === 1;
  }

  /**
   * Decode texts; results in input order, each {input, text, tokens, score, nbest?, error?}.
   * options: beamSize (1: greedy), nbest, maxLen, minLen (no </s> before it), batchSize, lengthPenalty (beam: rank by
   * score / (len + 1) ** it), greedyGraph (true/false; default: as the Python runtime, for batches of one input when
   * the bundle has greedy.onnx, and for every batch where export measured the graph faster batched);
   * sample with temperature, topK, topP and seed: the Python runtime's draws, which depend on the seed, the input's
   * position (its index in `texts`, or `positions[index]`) and the step only, so both hosts sample the same tokens.
   */
  async decode(texts, { beamSize = 1, nbest = 1, maxLen = null, minLen = 0, batchSize = 64, greedyGraph = null,
                        lengthPenalty = 0, sample = false, temperature = 1, topK = 0, topP = 1, seed = 0,
                        positions = null } = {}) {
    const problems = [];
    if (!(Number.isInteger(beamSize) && beamSize >= 1)) problems.push("beamSize must be an integer of at least 1");
    if (!(nbest >= 1 && nbest <= beamSize)) problems.push(`nbest must be between 1 and beamSize (${beamSize})`);
    if (!(Number.isInteger(batchSize) && batchSize >= 1)) problems.push("batchSize must be an integer of at least 1");
    if (sample && beamSize > 1) problems.push("sampling and beam search cannot be combined; use beamSize 1 with sample");
    if (!(temperature > 0 && topK >= 0 && topP > 0 && topP <= 1)) problems.push("temperature must be > 0, topK >= 0 and 0 < topP <= 1");
    if ((maxLen !== null && !(maxLen >= 0)) || !(minLen >= 0)) problems.push("maxLen and minLen must not be negative");
    if (!(Number.isInteger(seed) || typeof seed === "bigint")) problems.push("seed must be an integer");
    if (positions !== null && (positions.length !== texts.length || positions.some((p) => !(Number.isInteger(p) && p >= 0)))) {
      problems.push(`positions must be ${texts.length} non-negative integers, one per text`);
    }
    if (problems.length) throw new Seq2EdgeError(problems.join("; "));
    const rules = this.conventions;
    // The length rules of an input with n source ids: the options', else the bundle's conventions' (runtime/model.py _limits).
    const limitsFor = (n) => ({ maxLen: maxLen ?? conventionMaxLen(rules, n, this.config.max_tgt_len), minLen: Math.max(minLen, rules.min_len) });
    const draws = sample ? { temperature, topK, topP, seed: BigInt(seed) } : null;
    const results = new Array(texts.length);
    const ready = [];
    texts.forEach((text, index) => {
      try {
        ready.push({ index, position: positions?.[index] ?? index, ...this.prepare(text) });
      } catch (err) {
        if (!(err instanceof InputError)) throw err;
        results[index] = { input: text, error: err.message };
      }
    });
    ready.sort((a, b) => a.ids.length - b.ids.length);  // stable, as Python's sort
    // The graph searches plainly: argmax at every step, </s> allowed from the first one.
    if (greedyGraph === true && !this.hasGreedyGraph) {
      throw new BundleError(this.members.length > 1 ? "a greedy graph holds one model, and an ensemble decodes step by step"
        : `bundle.json: no ${this.precision} greedy graph in this bundle; export it with \`seq2edge export --greedy-graph\``);
    }
    const graph = this.hasGreedyGraph && !draws && minLen === 0 ? (greedyGraph ?? this.useGreedyGraph) : false;
    // Batches share their length limits: one run of inputs unless the conventions set each input's limit from its length.
    for (let start = 0, end; start < ready.length; start = end) {
      const limits = limitsFor(ready[start].ids.length);
      end = Math.min(start + batchSize, ready.length);
      for (let i = start + 1; i < end; i += 1) {
        if (limitsFor(ready[i].ids.length).maxLen !== limits.maxLen) { end = i; break; }
      }
      const chunk = ready.slice(start, end);
      const search = (part) => {
        if (beamSize > 1) return this.#beam(part, beamSize, nbest, limits, lengthPenalty);
        if (graph === true || (graph === "auto" && (part.length === 1 || this.greedyGraphBatches))) return this.#greedyGraph(part, limits.maxLen);
        return this.#greedy(part, limits, draws);
      };
      let hyps;
      try {
        hyps = await search(chunk);
      } catch (err) {  // one input the graphs cannot take: decode the batch's inputs one by one (runtime/model.py)
        if (!(err instanceof GraphRunError)) throw err;
        hyps = [];
        for (const source of chunk) {
          try {
            hyps.push((await search([source]))[0]);
          } catch (one) {
            if (!(one instanceof GraphRunError)) throw one;
            hyps.push(new InputError(`the model failed on this input (onnxruntime: ${one.message})`));
          }
        }
      }
      chunk.forEach((source, row) => {
        results[source.index] = hyps[row] instanceof InputError ? { input: texts[source.index], error: hyps[row].message }
          : this.#result(texts[source.index], hyps[row]);
      });
    }
    return results;
  }

  prepare(text) {
    if (typeof text !== "string") throw new InputError(`expected a string, got ${typeof text}`);
    const bad = text.match(FORBIDDEN);
    if (bad) {
      const code = bad[0].codePointAt(0).toString(16).toUpperCase().padStart(4, "0");
      throw new InputError(/[\ud800-\udfff]/.test(bad[0]) ? `lone surrogate U+${code} (the text is not valid Unicode)`
        : `control character U+${code} in the input`);
    }
    let [tokens, ids] = this.source.encode(text, this.unknown);
    const eos = this.conventions.source_eos ? 1 : 0;  // the model was trained with </s> after every source
    if (eos) [tokens, ids] = [[...tokens, this.source.tokens[this.config.eos_id]], [...ids, this.config.eos_id]];
    const max = this.config.max_src_len;
    if (ids.length > max) {
      if (this.tooLong === "error") throw new InputError(`${ids.length} source tokens, over the model's max_src_len of ${max}`);
      const keep = max - eos;
      [tokens, ids] = [[...tokens.slice(0, keep), ...tokens.slice(-eos || tokens.length)], [...ids.slice(0, keep), ...ids.slice(-eos || ids.length)]];
    }
    return { tokens, ids };
  }

  #result(input, hyps) {
    const make = (h) => {
      const tokens = h.ids.map((i) => this.target.tokens[i]);
      return { input, text: this.target.join(tokens), tokens, score: h.score, truncated: h.truncated };
    };
    const best = make(hyps[0]);
    if (hyps.length > 1) best.nbest = hyps.map(make);
    return best;
  }

  // -- encoding ----------------------------------------------------------------------------
  #sourceTensors(chunk) {
    const c = this.config;
    const width = Math.max(...chunk.map((s) => s.ids.length));
    const ids = new BigInt64Array(chunk.length * width).fill(BigInt(c.pad_id));
    const lengths = new BigInt64Array(chunk.length);
    const mask = new Uint8Array(chunk.length * width);
    chunk.forEach((s, row) => {
      s.ids.forEach((id, j) => { ids[row * width + j] = BigInt(id); mask[row * width + j] = 1; });
      lengths[row] = BigInt(s.ids.length);
    });
    const T = this.ort.Tensor;
    return { width, src: new T("int64", ids, [chunk.length, width]), lengths: new T("int64", lengths, [chunk.length]),
      mask: new T("bool", mask, [chunk.length, width]) };
  }

  // Memory and state are arrays, one entry per member (one for a single bundle); the mask is shared. A member's state
  // is a list of tensors: the one packed state, or the tensors bundle.json lists (format 3), in the order of its ports.
  async #encode(chunk) {
    const { width, src, lengths, mask } = this.#sourceTensors(chunk);
    const outs = [];
    for (const member of this.members) outs.push(await run(member.sessions.encoder, { src_ids: src, src_lengths: lengths }));
    return { width, memory: outs.map((o) => o.memory), state: outs.map((o, i) => this.members[i].statePorts.inputs.map((n) => o[n])), mask };
  }

  async #step(prev, state, memory, mask) {
    const T = this.ort.Tensor;
    const prevIds = new T("int64", BigInt64Array.from(prev, (x) => BigInt(x)), [prev.length]);
    const outs = [];
    for (const [i, member] of this.members.entries()) {
      const feeds = { prev_ids: prevIds, memory: memory[i], src_mask: mask };
      member.statePorts.inputs.forEach((name, j) => { feeds[name] = state[i][j]; });
      outs.push(await run(member.sessions.decoder, feeds));
    }
    return { logProbs: logMeanExp(outs.map((o) => o.log_probs.data)),
      state: outs.map((o, i) => this.members[i].statePorts.outputs.map((n) => o[n])) };
  }

  /** Rows `index` of every member's memory (a tensor each) or state (a list of tensors each). */
  #take(values, index) {
    return values.map((t) => (Array.isArray(t) ? t.map((x) => takeRows(this.ort, x, index)) : takeRows(this.ort, t, index)));
  }

  /** Which ids may be chosen at step t, as runtime/search.py's Limits: never pad or <s>; </s> not before minLen; only </s> at maxLen. */
  #bias(t, { maxLen, minLen }) {
    const c = this.config;
    const bias = new Float32Array(c.tgt_vocab_size);
    if (t >= maxLen) {
      bias.fill(-Infinity);
      bias[c.eos_id] = 0;
    } else {
      bias[c.pad_id] = -Infinity;
      bias[c.bos_id] = -Infinity;
      for (const id of this.never) bias[id] = -Infinity;
      if (t < minLen) bias[c.eos_id] = -Infinity;
    }
    return bias;
  }

  // -- greedy (or sampling, with `draws`), one decoder step per call -----------------------
  async #greedy(chunk, limits, draws = null) {
    const c = this.config;
    const V = c.tgt_vocab_size;
    let { width, memory, state, mask } = await this.#encode(chunk);
    let rows = chunk.map((_, i) => i);  // which input each active row is
    let prev = rows.map(() => c.bos_id);
    const out = chunk.map(() => ({ ids: [], score: 0, truncated: false }));
    for (let t = 0; rows.length > 0; t++) {
      const step = await this.#step(prev, state, memory, mask);
      const bias = this.#bias(t, limits);
      const keep = [];
      const next = [];
      rows.forEach((input, r) => {
        let best = -1;
        let value = -Infinity;
        if (draws) {
          const row = step.logProbs.subarray(r * V, (r + 1) * V).map((x, v) => x + bias[v]);
          best = sampleId(row, draws, uniform(draws.seed, chunk[input].position, t));
          value = row[best];
        } else {
          for (let v = 0; v < V; v++) {
            const x = step.logProbs[r * V + v] + bias[v];
            if (x > value) { value = x; best = v; }  // strict: ties keep the lowest id, as argmax
          }
        }
        out[input].score += Math.fround(value);
        if (best === c.eos_id) {
          out[input].truncated = t >= limits.maxLen;
        } else {
          out[input].ids.push(best);
          keep.push(r);
          next.push(best);
        }
      });
      if (keep.length < rows.length && keep.length > 0) {
        state = this.#take(step.state, keep);
        memory = this.#take(memory, keep);
        mask = takeRows(this.ort, mask, keep);
      } else {
        state = step.state;
      }
      rows = keep.map((r) => rows[r]);
      prev = next;
    }
    return out.map((h) => [h]);
  }

  // -- greedy, the whole loop in greedy.onnx -------------------------------------------
  async #greedyGraph(chunk, maxLen) {
    const { src, lengths } = this.#sourceTensors(chunk);
    const T = this.ort.Tensor;
    const out = await run(this.sessions.greedy, {
      src_ids: src, src_lengths: lengths, max_len: new T("int64", BigInt64Array.from([BigInt(maxLen)]), []),
    });
    const steps = out.tokens.dims[1];
    return chunk.map((_, row) => {
      const n = Number(out.lengths.data[row]);
      const ids = [];
      for (let j = 0; j < n; j++) ids.push(Number(out.tokens.data[row * steps + j]));
      return [{ ids, score: out.scores.data[row], truncated: n >= maxLen }];
    });
  }

  // -- beam search, as runtime/search.py's beam() -----------------------------------------
  async #beam(chunk, k, nbest, limits, lengthPenalty) {
    const results = [];
    for (const source of chunk) results.push(await this.#beamOne(source, k, nbest, limits, lengthPenalty));
    return results;
  }

  async #beamOne(source, k, nbest, limits, lengthPenalty) {
    const { maxLen } = limits;
    const c = this.config;
    const V = c.tgt_vocab_size;
    const enc = await this.#encode([source]);
    const rows = new Array(k).fill(0);
    let state = this.#take(enc.state, rows);
    const memory = this.#take(enc.memory, rows);
    const mask = takeRows(this.ort, enc.mask, rows);
    let scores = Array.from({ length: k }, (_, i) => (i === 0 ? 0 : -Infinity));
    let history = Array.from({ length: k }, () => []);
    let prev = new Array(k).fill(c.bos_id);
    const finished = [];
    let bestFinished = new Array(k).fill(-Infinity);
    for (let t = 0; ; t++) {
      const step = await this.#step(prev, state, memory, mask);
      const bias = this.#bias(t, limits);
      const width = Math.min(2 * k, V);
      const cand = [];
      for (let b = 0; b < k; b++) {
        const row = [];
        for (let v = 0; v < V; v++) row.push([step.logProbs[b * V + v] + bias[v], v]);
        row.sort((x, y) => y[0] - x[0] || x[1] - y[1]);
        for (let j = 0; j < width; j++) cand.push([scores[b] + Math.fround(row[j][0]), b * width + j, b, row[j][1]]);
      }
      cand.sort((x, y) => (y[0] - x[0]) || (x[1] - y[1]));  // best first, ties to the lower place
      const top = cand.slice(0, Math.min(2 * k, cand.length));
      top.slice(0, k).forEach(([score, , b, token]) => {
        if (token === c.eos_id && Number.isFinite(score)) {
          const hyp = { ids: history[b].slice(), score, truncated: t >= maxLen };
          finished.push([score / (hyp.ids.length + 1) ** lengthPenalty, hyp]);
          const rank = finished[finished.length - 1][0];
          if (rank > bestFinished[k - 1]) bestFinished = [...bestFinished, rank].sort((x, y) => y - x).slice(0, k);
        }
      });
      const live = top.filter(([, , , token]) => token !== c.eos_id).slice(0, k);
      scores = live.map(([score]) => score);
      history = live.map(([, , b, token]) => [...history[b], token]);
      state = this.#take(step.state, live.map(([, , b]) => b));
      prev = live.map(([, , , token]) => token);
      const bestLive = Math.max(...scores);
      if (t + 1 > maxLen || !Number.isFinite(bestLive) || bestLive / (t + 2) ** lengthPenalty <= bestFinished[k - 1]) break;
    }
    finished.sort((x, y) => y[0] - x[0]);  // stable: equal ranks keep their order, as in Python
    return finished.slice(0, nbest).map(([, h]) => h);
  }
}

/**
 * One id drawn from softmax(row / temperature) within topK and topP, as runtime/search.py's _sample: in float32 like
 * numpy, ties kept in id order, `u` from uniform(). numpy's float32 exp is not correctly rounded, so a draw that falls
 * within float32 rounding of the boundary between two ids may pick the other one (python -m seq2edge.bench.sampling_parity measures it).
 */
function sampleId(row, { temperature, topK, topP }, u) {
  const V = row.length;
  const divisor = Math.fround(Math.max(temperature, 1e-6));  // numpy divides a float32 array by float32(temperature)
  const logits = row.map((x) => x / divisor);  // a Float32Array: every value rounds to float32
  if (topK > 0 && topK < V) {
    const kth = Float32Array.from(logits).sort()[V - topK];
    logits.forEach((x, v) => { if (x < kth) logits[v] = -Infinity; });
  }
  const top = logits.reduce((a, b) => (b > a ? b : a), -Infinity);
  let probs = logits.map((x) => Math.exp(Math.fround(x - top)));
  probs = normalised(probs);
  if (topP < 1) {
    const order = [...probs.keys()].sort((a, b) => probs[b] - probs[a] || a - b);  // stable argsort of -probs
    const kept = new Float32Array(V);
    let cum = 0;
    for (const v of order) {
      cum = Math.fround(cum + probs[v]);  // numpy: cumsum(sorted) - sorted, the mass of strictly better ids
      if (Math.fround(cum - probs[v]) < Math.fround(topP)) kept[v] = probs[v];
    }
    probs = normalised(kept);
  }
  const cdf = new Float32Array(V);
  let acc = 0;
  probs.forEach((p, v) => { acc = Math.fround(acc + p); cdf[v] = acc; });
  const threshold = u * cdf[V - 1];
  let id = 0;
  for (const x of cdf) if (x < threshold) id += 1;
  let last = -1;  // never an id of zero probability through rounding at the top of the CDF
  probs.forEach((p, v) => { if (p > 0) last = v; });
  return Math.min(id, last);
}

/** A float32 array divided by its float32 sum. */
function normalised(probs) {
  let total = 0;
  for (const p of probs) total = Math.fround(total + p);
  return probs.map((p) => p / total);
}

const MASK64 = (1n << 64n) - 1n;
/** A uniform number in [0, 1) from (seed, input position, step) via splitmix64, as runtime/search.py's _uniform
 * (exported for the conformance corpus's draws). */
export function uniform(seed, position, t) {
  let x = (BigInt.asUintN(64, BigInt(seed)) * 0x9E3779B97F4A7C15n + BigInt(position) * 0xBF58476D1CE4E5B9n
    + BigInt(t + 1) * 0x94D049BB133111EBn) & MASK64;
  x = ((x ^ (x >> 30n)) * 0xBF58476D1CE4E5B9n) & MASK64;
  x = ((x ^ (x >> 27n)) * 0x94D049BB133111EBn) & MASK64;
  x ^= x >> 31n;
  return Number(x >> 11n) / 2 ** 53;
}

/** log(mean(exp(x))) over the members' log-probabilities, entry by entry, without overflow; float32 like the Python runtime. */
function logMeanExp(arrays) {
  if (arrays.length === 1) return arrays[0];
  const out = new Float32Array(arrays[0].length);
  const n = arrays.length;
  for (let j = 0; j < out.length; j++) {
    let top = -Infinity;
    for (const a of arrays) if (a[j] > top) top = a[j];
    if (!Number.isFinite(top)) top = 0;
    let sum = 0;
    for (const a of arrays) sum += Math.exp(a[j] - top);
    out[j] = top + Math.log(sum / n);
  }
  return out;
}

/** Rows `index` (axis 0) of a tensor, copied into a new tensor. */
export function takeRows(ort, tensor, index) {
  const per = tensor.dims.slice(1).reduce((a, b) => a * b, 1);
  const data = new tensor.data.constructor(index.length * per);
  index.forEach((r, i) => data.set(tensor.data.subarray(r * per, (r + 1) * per), i * per));
  return new ort.Tensor(tensor.type, data, [index.length, ...tensor.dims.slice(1)]);
}

/** A Seq2EdgeError unless `value` is one of `allowed`: the option, what is allowed and what was given, in one line. */

/** bundle.json's bytes -> its object, refused as runtime/bundle.py refuses: not UTF-8, too deep, NaN or Infinity, not JSON. */
function parseMeta(bytes) {
  let text;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new BundleError("bundle.json: not UTF-8 text");
  }
  const bare = text.replace(/"(?:[^"\\]|\\.)*"/g, '""');  // strings emptied: only structure and literals left
  let depth = 0;
  for (const ch of bare) {
    if (ch === "[" || ch === "{") depth += 1;
    else if (ch === "]" || ch === "}") depth -= 1;
    if (depth > MAX_JSON_DEPTH) throw new BundleError(`bundle.json: ${say("too_deep", { limit: MAX_JSON_DEPTH })}`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    const constant = /(?<![\w.])(-?Infinity|NaN)(?!\w)/.exec(bare);
    if (constant) throw new BundleError(`bundle.json: ${constant[1]} is not a JSON number; re-export the bundle`);
    throw new BundleError(`bundle.json: not valid JSON (line ${jsonErrorLine(text, err)}): ${err.message}`);
  }
}

/** The line of a JSON.parse error, as Python's json module reports it (Node names a position, or a line and column). */
function jsonErrorLine(text, err) {
  const line = /line (\d+)/.exec(err.message);
  if (line) return Number(line[1]);
  const position = /position (\d+)/.exec(err.message);
  return position ? text.slice(0, Number(position[1])).split("\n").length : 1;
}

export function oneOf(name, value, allowed) {
  if (!allowed.includes(value)) {
    const shown = allowed.filter((a) => a !== undefined).map((a) => JSON.stringify(a)).join(", ");
    throw new Seq2EdgeError(`${name} must be one of ${shown}, not ${JSON.stringify(value)}`);
  }
}

/** A side's SentencePiece model from the bundle, checked against bundle.json's sha256 (runtime/bundle.py). */
async function loadSentencePiece(info, side, read, sha256) {
  const file = info.spm_model ?? `${side}.spm.model`;
  if (!plainName(file)) {  // as runtime/schema.py
    throw new BundleError(`bundle.json: ${say("spm_model_not_plain", { side })}`);
  }
  const bytes = await read(file);
  if (info.spm_sha256 && (await sha256(bytes)) !== info.spm_sha256) {
    throw new BundleError(`${file}: sha256 does not match bundle.json; re-export the bundle`);
  }
  try {
    return new SentencePiece(bytes);
  } catch (err) {
    throw new BundleError(`${file}: not a SentencePiece model this host reads (${err.message})`);
  }
}

function pickFile(entry, format) {
  if (format === "ort") {
    if (!entry.ort) throw new BundleError(`${entry.file}: this bundle has no ORT-format copy; export it with --ort`);
    return entry.ort;
  }
  return entry;
}

/** The ports of a graph kind for this bundle: the contract's, a listed state's tensors in place of the packed state. */
function expectedPorts(kind, state) {
  const sp = statePorts(state);
  if (!sp.listed) return PORTS[kind];
  // CONTRACT.state.replaces: the packed port -> which side's names take its place ("state" -> inputs, ...)
  const replaced = Object.fromEntries(Object.entries(CONTRACT.state.replaces).map(([name, side]) => [name, sp[side]]));
  const swap = (ports) => {
    const out = {};
    for (const [name, port] of Object.entries(ports)) {
      if (!(name in replaced)) out[name] = port;
      else for (const n of replaced[name]) out[n] = [JS_TYPES[sp.ports[n][0]], sp.ports[n][1]];
    }
    return out;
  };
  return { inputs: swap(PORTS[kind].inputs), outputs: swap(PORTS[kind].outputs) };
}

function checkPorts(session, kind, file, model, state) {
  const sizes = axisSizes(model);
  const expect = expectedPorts(kind, state);
  for (const [role, names, metadata] of [["input", session.inputNames, session.inputMetadata],
    ["output", session.outputNames, session.outputMetadata]]) {
    const wanted = Object.keys(expect[`${role}s`]);
    if ([...names].sort().join() !== [...wanted].sort().join()) {
      throw new BundleError(`${file}: ${role}s are ${pyRepr([...names].sort())}, the bundle format expects ${pyRepr([...wanted].sort())}; `
        + "re-export the bundle");
    }
    for (const info of metadata ?? []) {
      const [type, axes] = expect[`${role}s`][info.name];
      if (info.isTensor === false || (info.type && info.type !== type)) {
        const named = (t) => CONTRACT_TYPES[t] ?? t;  // the contract's names of the types, as the other hosts say them
        throw new BundleError(`${file}: ${role} ${info.name} is ${named(info.type)}, expected ${named(type)}`);
      }
      if (!info.shape) continue;
      if (info.shape.length !== axes.length) throw new BundleError(`${file}: ${role} ${info.name} has ${info.shape.length} axes`);
      axes.forEach((axis, i) => {
        const dim = info.shape[i];
        const size = typeof axis === "number" ? axis : sizes[axis];  // a listed state's fixed axis is its size
        if (!DYNAMIC.has(axis) && typeof dim === "number" && dim !== size) {
          const named = typeof axis === "number" ? `${info.name} axis ${i}` : axis;
          throw new BundleError(`${file}: ${role} ${info.name} has ${named} ${dim}, bundle.json's model says ${size}`);
        }
      });
    }
  }
}
