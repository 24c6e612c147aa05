// The checks a bundle passes before the JavaScript host decodes with it: the same as the Python runtime's
// (runtime/schema.py, runtime/config.py, runtime/onnx_scan.py), so both hosts refuse the same bundles.

export class Seq2EdgeError extends Error {}
export class BundleError extends Seq2EdgeError {}

export const FORMAT_VERSION = 2;  // 2 added "conventions" (runtime/conventions.py)
export const PRECISIONS = ["fp32", "int8", "fp16"];
const GRAPHS = ["encoder", "decoder"];
const OPTIONAL_GRAPHS = ["greedy"];
const CELLS = ["rnn", "lstm", "gru"];
const ATTENTIONS = ["dot", "general", "additive"];
const TOKENIZERS = ["char", "word", "spm"];
// ModelConfig's fields and defaults (runtime/config.py): a missing key takes its default there too.
const MODEL_DEFAULTS = {
  src_vocab_size: undefined, tgt_vocab_size: undefined, cell: "lstm", attention: "dot", input_feed: false, layers: 1,
  decoder_layers: 1, bidirectional: false, embed: 64, hidden: 256, dropout: 0.0, src_tokens: "char", tgt_tokens: "char",
  lowercase_source: false, pad_id: 0, bos_id: 1, eos_id: 2, unk_id: 3, max_src_len: 64, max_tgt_len: 64,
};
// ExternalModelConfig's (runtime/config.py): a model seq2edge did not train, marked by its origin.
const EXTERNAL_DEFAULTS = {
  origin: undefined, src_vocab_size: undefined, tgt_vocab_size: undefined, memory_size: undefined, state_size: undefined,
  attention_weights: true, src_tokens: "char", tgt_tokens: "char", lowercase_source: false, pad_id: 0, bos_id: 1, eos_id: 2,
  unk_id: 3, max_src_len: 256, max_tgt_len: 256,
};
const EXTERNAL_WHOLE = ["src_vocab_size", "tgt_vocab_size", "memory_size", "state_size", "pad_id", "bos_id", "eos_id", "unk_id",
  "max_src_len", "max_tgt_len"];
const WHOLE = ["src_vocab_size", "tgt_vocab_size", "layers", "decoder_layers", "embed", "hidden", "pad_id", "bos_id", "eos_id",
  "unk_id", "max_src_len", "max_tgt_len"];
const FLAGS = ["input_feed", "bidirectional", "lowercase_source"];
const PARITY_RANGES = { token_agreement: [0, 1], token_agreement_with_fp32: [0, 1], batched_speedup: [0, Infinity],
  tolerance: [0, Infinity], max_abs_log_prob_diff: [0, Infinity] };
// bundle.json and tokeniser models are read whole: bounded as in runtime/bundle.py.
export const MAX_METADATA_BYTES = 64 * 1024 * 1024;

const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);

// Characters Python's repr() escapes (those str.isprintable() rejects), so both hosts quote values alike.
const UNPRINTABLE = /[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}\p{Zs}]/u;

/** A value as Python's repr() writes it: 'text', [1, 'a'], {'k': 2}, True, None. Messages quote values this way
 * in both hosts (runtime/*.py use repr), so the conformance corpus finds the same words in both. */
export function pyRepr(value) {
  if (typeof value === "string") {
    const quote = value.includes("'") && !value.includes('"') ? '"' : "'";
    let out = "";
    for (const ch of value) {
      const code = ch.codePointAt(0);
      if (ch === "\\" || ch === quote) out += `\\${ch}`;
      else if (ch === "\n") out += "\\n";
      else if (ch === "\t") out += "\\t";
      else if (ch === "\r") out += "\\r";
      else if (ch !== " " && UNPRINTABLE.test(ch)) {
        out += code < 0x100 ? `\\x${code.toString(16).padStart(2, "0")}` : code < 0x10000
          ? `\\u${code.toString(16).padStart(4, "0")}` : `\\U${code.toString(16).padStart(8, "0")}`;
      } else out += ch;
    }
    return quote + out + quote;
  }
  if (Array.isArray(value)) return `[${value.map(pyRepr).join(", ")}]`;
  if (value === null || value === undefined) return "None";
  if (typeof value === "boolean") return value ? "True" : "False";
  if (typeof value === "object") return `{${Object.entries(value).map(([k, v]) => `${pyRepr(k)}: ${pyRepr(v)}`).join(", ")}}`;
  return String(value);
}
const isWhole = (v) => Number.isInteger(v);
const fail = (message) => { throw new BundleError(`bundle.json: ${message}`); };
const failModel = (message) => { throw new BundleError(`bundle.json (model): ${message}`); };

/** A file name bundle.json may point at: plain, inside the bundle (runtime/schema.py's _plain_name). */
export function plainName(name) {
  return typeof name === "string" && name !== "" && !/[/\\]/.test(name) && !name.startsWith(".");
}

/** Validate parsed bundle.json in place (the model config gets its defaults); a BundleError names what is wrong. */
export function checkMeta(meta) {
  if (!isObject(meta)) fail("expected a JSON object");
  const v = meta.format_version;
  if (v === undefined) fail("no format_version; not a seq2edge bundle");
  if (!isWhole(v) || v < 1) fail(`format_version must be a whole number >= 1, found ${JSON.stringify(v)}`);
  if (v > FORMAT_VERSION) fail(`format version ${v} is newer than this seq2edge reads (${FORMAT_VERSION}); upgrade seq2edge`);
  for (const [name, ok] of [["bundle_id", (x) => typeof x === "string"], ["model", isObject], ["source", isObject],
    ["target", isObject], ["graphs", isObject]]) {
    if (!ok(meta[name])) fail(`missing or malformed field ${name}`);
  }
  meta.model = checkModel(meta.model);
  const m = meta.model;
  for (const [side, kind, lower, size] of [["source", m.src_tokens, m.lowercase_source, m.src_vocab_size],
    ["target", m.tgt_tokens, false, m.tgt_vocab_size]]) {
    checkSide(meta[side], side, kind, lower, size);
  }
  const expected = { pad: m.pad_id, bos: m.bos_id, eos: m.eos_id, unk: m.unk_id };
  if (meta.special_ids !== undefined && JSON.stringify(meta.special_ids) !== JSON.stringify(expected)) {
    fail(`special_ids ${JSON.stringify(meta.special_ids)} disagree with the model config; re-export the bundle`);
  }
  checkGraphs(meta.graphs);
  checkParity(meta.parity ?? {});
  meta.conventions = checkConventions(meta.conventions ?? {}, meta.target.vocab, m.eos_id);
}

// Conventions' fields and defaults (runtime/conventions.py): the decoding rules of the toolkit a model came from.
export const CONVENTION_DEFAULTS = {
  source_eos: false, min_len: 0, max_len_ratio: 0, max_len_offset: 0, max_len_cap: 0, never_emit: [], space_symbol: "",
};

function checkConventions(given, targetVocab, eosId) {
  if (!isObject(given)) fail("conventions must be an object");
  const unknown = Object.keys(given).filter((k) => !(k in CONVENTION_DEFAULTS)).sort();
  if (unknown.length) fail(`unknown conventions ${pyRepr(unknown)}; was it written by a newer seq2edge?`);
  const problems = [];
  for (const [name, value] of Object.entries(given)) {
    const kind = typeof CONVENTION_DEFAULTS[name];
    if (name === "never_emit") {
      if (!Array.isArray(value) || !value.every((t) => typeof t === "string" && t !== "")) problems.push("never_emit must be a list of target tokens");
    } else if (kind === "boolean" && typeof value !== "boolean") problems.push(`${name} must be true or false`);
    else if (kind === "string" && typeof value !== "string") problems.push(`${name} must be a string`);
    else if (["min_len", "max_len_cap"].includes(name) && !(isWhole(value) && value >= 0)) problems.push(`${name} must be a whole number >= 0`);
    else if (["max_len_ratio", "max_len_offset"].includes(name)
      && !(typeof value === "number" && Number.isFinite(value) && (name !== "max_len_ratio" || value >= 0))) {
      problems.push(`${name} must be a finite number${name === "max_len_ratio" ? " >= 0" : ""}`);
    }
  }
  if (problems.length) fail(`invalid conventions: ${problems.join("; ")}`);
  const c = { ...CONVENTION_DEFAULTS, ...given };
  for (const token of c.never_emit) {
    const id = targetVocab.indexOf(token);
    if (id < 0) fail(`conventions.never_emit names '${token}', which is not in the target vocabulary`);
    if (id === eosId) fail("conventions.never_emit names </s>: no output could end");
  }
  if ([...c.space_symbol].length > 1) fail(`conventions.space_symbol must be one character, not '${c.space_symbol}'`);
  return c;
}

/** The default output limit of an input of `sourceIds` ids (Conventions.max_len in runtime/conventions.py). */
export function conventionMaxLen(c, sourceIds, maxTgtLen) {
  if (c.max_len_ratio <= 0) return maxTgtLen;
  let limit = c.max_len_ratio * sourceIds + c.max_len_offset;
  if (c.max_len_cap > 0) limit = Math.min(limit, c.max_len_cap);
  return Math.max(0, Math.min(maxTgtLen, Math.floor(limit)));
}

function checkModel(model) {
  const external = "origin" in model;
  const defaults = external ? EXTERNAL_DEFAULTS : MODEL_DEFAULTS;
  const unknown = Object.keys(model).filter((k) => !(k in defaults)).sort();
  if (unknown.length) failModel(`unknown model config keys ${pyRepr(unknown)}; was it written by a newer seq2edge?`);
  const m = { ...defaults, ...model };
  const problems = [];
  for (const name of external ? EXTERNAL_WHOLE : WHOLE) {
    if (!isWhole(m[name])) problems.push(`${name} must be a whole number, not ${pyRepr(m[name])}`);
  }
  for (const name of external ? ["attention_weights", "lowercase_source"] : FLAGS) {
    if (typeof m[name] !== "boolean") problems.push(`${name} must be true or false`);
  }
  if (external ? typeof m.origin !== "string" : typeof m.dropout !== "number") {
    problems.push(external ? "origin must be a string" : "dropout must be a number");
  }
  if (problems.length) failModel(`invalid model config: ${problems.join("; ")}`);
  if (external) {
    for (const name of ["memory_size", "state_size"]) if (m[name] < 1) problems.push(`${name} must be at least 1`);
    if (!m.origin) problems.push("origin must say what made the model");
  } else {
    if (!CELLS.includes(m.cell)) problems.push(`cell must be one of ${CELLS.join(", ")}, not ${pyRepr(m.cell)}`);
    if (!ATTENTIONS.includes(m.attention)) problems.push(`attention must be one of ${ATTENTIONS.join(", ")}`);
    if (m.bidirectional && m.hidden % 2) problems.push("hidden must be even for a bidirectional encoder (half per direction)");
    for (const name of ["layers", "decoder_layers", "embed", "hidden"]) if (m[name] < 1) problems.push(`${name} must be at least 1`);
    if (!(m.dropout >= 0 && m.dropout < 1)) problems.push("dropout must be in [0, 1)");
  }
  for (const side of ["src_tokens", "tgt_tokens"]) if (!TOKENIZERS.includes(m[side])) problems.push(`${side} must be one of ${TOKENIZERS.join(", ")}`);
  for (const name of ["max_src_len", "max_tgt_len"]) if (m[name] < 1) problems.push(`${name} must be at least 1`);
  const ids = [m.pad_id, m.bos_id, m.eos_id, m.unk_id];
  const smallest = Math.min(m.src_vocab_size, m.tgt_vocab_size);
  if (ids.some((i) => i < 0 || i >= smallest) || new Set(ids).size !== ids.length) {
    problems.push(`special ids ${pyRepr({ pad: m.pad_id, bos: m.bos_id, eos: m.eos_id, unk: m.unk_id })} must be distinct and `
      + `below both vocabulary sizes (${m.src_vocab_size}, ${m.tgt_vocab_size})`);
  }
  if (problems.length) failModel(`invalid model config: ${problems.join("; ")}`);
  return m;
}

/** The size of each fixed axis of the graph contract (ModelConfig.axis_sizes / ExternalModelConfig.axis_sizes). */
export function axisSizes(m) {
  if ("origin" in m) return { hidden: m.memory_size, state_size: m.state_size, vocab: m.tgt_vocab_size };
  const perLayer = m.cell === "lstm" ? 2 : 1;
  const stateSize = m.decoder_layers * m.hidden * perLayer + (m.input_feed ? m.hidden : 0);
  return { hidden: m.hidden, state_size: stateSize, vocab: m.tgt_vocab_size };
}

function checkSide(info, side, kind, lower, size) {
  if (!Array.isArray(info.vocab)) fail(`missing or malformed field ${side}.vocab`);
  if (!info.vocab.every((t) => typeof t === "string" && t !== "")) fail(`${side}.vocab must be a list of non-empty strings`);
  const seen = new Set();
  for (const token of info.vocab) {
    if (seen.has(token)) fail(`${side}.vocab holds ${pyRepr(token)} twice; a token must have one id`);
    seen.add(token);
  }
  if (info.vocab.length !== size) fail(`${side} vocabulary has ${info.vocab.length} tokens, the model config says ${size}`);
  if ("tokenizer" in info && info.tokenizer !== kind) fail(`${side}.tokenizer disagrees with the model config; re-export the bundle`);
  if ("lowercase" in info && info.lowercase !== lower) fail(`${side}.lowercase disagrees with the model config; re-export the bundle`);
  info.tokenizer = kind;
  info.lowercase = lower;
  if (kind === "spm" && !plainName(info.spm_model ?? `${side}.spm.model`)) fail(`${side}.spm_model must be a plain file name in the bundle`);
}

function checkGraphs(graphs) {
  if (!("fp32" in graphs)) fail("graphs lists no fp32 encoder and decoder");
  for (const [precision, entries] of Object.entries(graphs)) {
    if (!PRECISIONS.includes(precision)) fail(`unknown graph precision ${JSON.stringify(precision)}`);
    for (const kind of [...GRAPHS, ...OPTIONAL_GRAPHS]) {
      const entry = isObject(entries) ? entries[kind] : undefined;
      if (entry === undefined && OPTIONAL_GRAPHS.includes(kind)) continue;
      checkEntry(entry, `graphs.${precision}.${kind}`);
      if (entry.ort !== undefined && entry.ort !== null) checkEntry(entry.ort, `graphs.${precision}.${kind}.ort`);
    }
  }
}

function checkEntry(entry, name) {
  if (!isObject(entry) || typeof entry.file !== "string" || typeof entry.sha256 !== "string") fail(`${name} needs file and sha256`);
  if (!plainName(entry.file)) fail(`${name}.file must be a plain file name in the bundle`);
}

function checkParity(parity) {
  if (!isObject(parity)) fail("parity must be an object of figures per precision");
  for (const [precision, figures] of Object.entries(parity)) {
    if (!PRECISIONS.includes(precision) || !isObject(figures)) fail(`parity.${precision} must be an object of figures of a known precision`);
    if ("greedy_graph" in figures && !isObject(figures.greedy_graph)) fail(`parity.${precision}.greedy_graph must be an object`);
    for (const [name, value] of [...Object.entries(figures), ...Object.entries(figures.greedy_graph ?? {})]) {
      const range = PARITY_RANGES[name];
      if (range && !(typeof value === "number" && value >= range[0] && value <= range[1])) {
        fail(`parity.${precision}.${name} must be a number in [${range[0]}, ${range[1]}], not ${JSON.stringify(value)}`);
      }
    }
  }
}

// ---------------------------------------------------------------- ONNX bytes, without an ONNX library

// message -> {field number: message type}, for every path to a TensorProto (runtime/onnx_scan.py)
const SCHEMA = {
  model: { 7: "graph", 25: "function" }, graph: { 1: "node", 5: "tensor", 15: "sparse" }, function: { 7: "node" },
  node: { 5: "attribute" }, attribute: { 5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse" },
  sparse: { 1: "tensor", 2: "tensor" }, tensor: {},
};
const TENSOR_EXTERNAL_DATA = 13;
const TENSOR_DATA_LOCATION = 14;
const MODEL_METADATA_PROPS = 14;

class Malformed extends Error {}

function varint(buf, pos) {
  let value = 0;
  let scale = 1;
  for (let i = 0; i < 10; i += 1) {
    if (pos >= buf.length) throw new Malformed("truncated varint");
    const byte = buf[pos++];
    value += (byte & 0x7f) * scale;
    if (!(byte & 0x80)) return [value, pos];
    scale *= 128;
  }
  throw new Malformed("varint too long");
}

function* fields(buf) {
  let pos = 0;
  while (pos < buf.length) {
    let key;
    [key, pos] = varint(buf, pos);
    const field = Math.floor(key / 8);
    const wire = key % 8;
    if (wire === 0) {
      let value;
      [value, pos] = varint(buf, pos);
      yield [field, wire, value];
    } else if (wire === 1 || wire === 5) {
      pos += wire === 1 ? 8 : 4;
    } else if (wire === 2) {
      let length;
      [length, pos] = varint(buf, pos);
      if (pos + length > buf.length) throw new Malformed("field runs past the end");
      yield [field, wire, buf.subarray(pos, pos + length)];
      pos += length;
    } else {
      throw new Malformed(`unknown wire type ${wire}`);
    }
  }
  if (pos !== buf.length) throw new Malformed("field runs past the end");
}

function external(buf, kind) {
  for (const [field, wire, value] of fields(buf)) {
    if (kind === "tensor" && ((wire === 0 && field === TENSOR_DATA_LOCATION && value === 1) || (wire === 2 && field === TENSOR_EXTERNAL_DATA))) {
      return true;
    }
    if (wire === 2 && field in SCHEMA[kind] && external(value, SCHEMA[kind][field])) return true;
  }
  return false;
}

/** {external, metadata} of serialised ONNX bytes: whether any tensor stores its data in another file, and the
 * model's metadata_props. A BundleError naming `file` when the bytes are not an ONNX model. */
export function scanOnnx(bytes, file) {
  try {
    const metadata = {};
    for (const [field, wire, value] of fields(bytes)) {
      if (field === MODEL_METADATA_PROPS && wire === 2) {
        const pair = {};
        for (const [f, w, v] of fields(value)) if (w === 2) pair[f] = new TextDecoder().decode(v);
        metadata[pair[1] ?? ""] = pair[2] ?? "";
      }
    }
    return { external: external(bytes, "model"), metadata };
  } catch (err) {
    if (err instanceof Malformed) throw new BundleError(`${file}: not a valid ONNX model (${err.message})`);
    throw err;
  }
}

/** The graph's own metadata must name this bundle, this kind and this precision (Bundle.verified_graph in Python). */
export function checkOwner(metadata, file, bundleId, kind, precision) {
  const owner = metadata["seq2edge.bundle_id"];
  if (owner !== bundleId) {
    throw new BundleError(`${file}: exported for bundle ${owner || "(none)"}, but bundle.json is bundle ${bundleId}; `
      + "the graph comes from another export, re-export the bundle");
  }
  if (metadata["seq2edge.graph"] !== kind) {
    throw new BundleError(`${file}: holds the ${JSON.stringify(metadata["seq2edge.graph"])} graph, expected the ${kind}`);
  }
  const graphPrecision = metadata["seq2edge.precision"] ?? precision;
  if (graphPrecision !== precision) {
    throw new BundleError(`${file}: is a ${graphPrecision} graph, bundle.json lists it as ${precision}; re-export the bundle`);
  }
}
