// The checks a bundle passes before the JavaScript host decodes with it, read from the bundle contract
// (runtime/bundle_contract.json, as bundle-contract.mjs) as the Python runtime reads it (runtime/schema.py,
// runtime/config.py), and the ONNX byte scans of runtime/onnx_scan.py: both hosts refuse the same bundles alike.

import CONTRACT from "./bundle-contract.mjs";

export { CONTRACT };
export class Seq2EdgeError extends Error {}
export class BundleError extends Seq2EdgeError {}

// Every rule below reads the bundle contract (runtime/bundle_contract.json, generated into bundle-contract.mjs): the
// fields, defaults, ranges and messages are data there, written once for every host.
export const FORMAT_VERSION = CONTRACT.format_version;
export const PRECISIONS = CONTRACT.precisions;
export const MAX_METADATA_BYTES = CONTRACT.max_metadata_bytes;
export const MAX_JSON_DEPTH = CONTRACT.max_json_depth;

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
  if (typeof value === "number") return pyNumber(value);
  return String(value);
}

/** A number as Python's repr() writes it (a whole number as an int: JSON cannot tell 1.0 from 1). */
function pyNumber(v) {
  if (!Number.isFinite(v)) return Number.isNaN(v) ? "nan" : (v > 0 ? "inf" : "-inf");
  if (Number.isInteger(v) && Math.abs(v) < 1e16) return String(v);
  const [mantissa, e] = v.toExponential().split("e");
  const exp = Number(e);
  const sign = v < 0 ? "-" : "";
  const digits = mantissa.replace(/^-/, "").replace(".", "");
  if (exp >= 16 || exp < -4) return `${mantissa}e${exp < 0 ? "-" : "+"}${String(Math.abs(exp)).padStart(2, "0")}`;
  if (exp < 0) return `${sign}0.${"0".repeat(-exp - 1)}${digits}`;
  const whole = digits.slice(0, exp + 1).padEnd(exp + 1, "0");
  return `${sign}${whole}.${digits.slice(exp + 1) || "0"}`;
}
const isWhole = (v) => Number.isInteger(v);
const PLACEHOLDER_WORDS = new Set(["name", "side", "problems", "precision", "choices"]);  // as runtime/contract.py's _TEXT

/** The named refusal's words (CONTRACT.messages) with its placeholders filled, values written as Python's repr(). */
export function say(message, values = {}) {
  return CONTRACT.messages[message].replace(/\{(\w+)\}/g, (_, key) => {
    const value = values[key];
    return typeof value === "string" && PLACEHOLDER_WORDS.has(key) ? value : shown(value);
  });
}

/** A value in a message: pyRepr, with infinity written as Python writes it. */
const shown = (value) => (value === Infinity ? "inf" : pyRepr(value));
const fail = (message, values) => { throw new BundleError(`bundle.json: ${say(message, values)}`); };
const failModel = (message, values) => { throw new BundleError(`bundle.json (model): ${say(message, values)}`); };

/** A file name bundle.json may point at: plain, inside the bundle (runtime/schema.py's _plain_name). */
export function plainName(name) {
  return typeof name === "string" && name !== "" && !/[/\\]/.test(name) && !name.startsWith(".");
}

/** Validate parsed bundle.json in place (the model config gets its defaults); a BundleError names what is wrong. */
export function checkMeta(meta) {
  if (!isObject(meta)) fail("not_object");
  const v = meta.format_version;
  if (v === undefined) fail("no_format_version");
  if (!isWhole(v) || v < 1) fail("bad_format_version", { value: v });
  if (v > FORMAT_VERSION) fail("newer_format_version", { value: v, newest: FORMAT_VERSION });
  for (const [name, ok] of [["bundle_id", (x) => typeof x === "string"], ["model", isObject], ["source", isObject],
    ["target", isObject], ["graphs", isObject]]) {
    if (!ok(meta[name])) fail("missing_field", { name });
  }
  meta.model = checkModel(meta.model);
  const m = meta.model;
  for (const [side, kind, lower, size] of [["source", m.src_tokens, m.lowercase_source, m.src_vocab_size],
    ["target", m.tgt_tokens, false, m.tgt_vocab_size]]) {
    checkSide(meta[side], side, kind, lower, size);
  }
  const expected = specialIds(m);
  if (meta.special_ids !== undefined && !sameJson(meta.special_ids, expected)) {
    fail("special_ids_disagree", { value: meta.special_ids, expected });
  }
  if ("conventions" in meta && v < CONTRACT.conventions.since) {
    fail("needs_format_version", { name: "conventions", since: CONTRACT.conventions.since, value: v });
  }
  meta.conventions = checkConventions(meta.conventions ?? {}, meta.target.vocab, m.eos_id);
  meta.state = checkState(meta.state, m, v);
  checkGraphs(meta.graphs);
  checkParity(meta.parity ?? {});
}

const specialIds = (m) => ({ pad: m.pad_id, bos: m.bos_id, eos: m.eos_id, unk: m.unk_id });
// Python compares dicts by keys and values, in any order.
const sameJson = (a, b) => isObject(a) && Object.keys(a).length === Object.keys(b).length
  && Object.entries(b).every(([k, v]) => k in a && a[k] === v && typeof a[k] === typeof v);

// ---------------------------------------------------------------- fields, from the contract's specs

function typeProblem(spec, value) {
  const number = typeof value === "number";
  const ok = {
    int: number && isWhole(value), bool: typeof value === "boolean", float: number && Number.isFinite(value),
    str: typeof value === "string", "list[str]": Array.isArray(value) && value.every((t) => typeof t === "string" && t !== ""),
  }[spec.type];
  return ok ? null : say(`type_${spec.type.replace("[", "_").replace("]", "")}`, { name: spec.name, value });
}

function rangeProblem(spec, value) {
  const name = spec.name;
  if (spec.choices && !spec.choices.includes(value)) return say("choices", { name, choices: spec.choices.join(", "), value });
  const low = spec.min;
  const high = spec.max;
  if (high !== undefined && !(value >= low && (spec.max_exclusive ? value < high : value <= high))) {
    return say(spec.max_exclusive ? "in_open_range" : "in_range", { name, min: low, max: high, value });
  }
  if (low !== undefined && high === undefined && value < low) return say("at_least", { name, min: low, value });
  if (spec.max_chars !== undefined && [...value].length > spec.max_chars) return say("max_chars", { name, max_chars: spec.max_chars, value });
  return null;
}

/** runtime/contract.py's field_problems: type problems first, and the ranges only when every type is right. */
export function fieldProblems(specs, values) {
  const types = specs.map((s) => typeProblem(s, values[s.name])).filter(Boolean);
  return types.length ? types : specs.map((s) => rangeProblem(s, values[s.name])).filter(Boolean);
}

/** `given` with every missing optional field at its default (runtime/contract.py's with_defaults). */
function withDefaults(specs, given) {
  const out = {};
  for (const s of specs) {
    if (s.name in given) out[s.name] = given[s.name];
    else if ("default" in s) out[s.name] = Array.isArray(s.default) ? [...s.default] : s.default;
  }
  return out;
}

// The rules across fields, by the name the contract lists them under (runtime/config.py's _RULES).
const RULES = {
  even_hidden: (m) => (m.bidirectional && m.hidden % 2 ? say("even_hidden") : null),
  special_ids: (m) => {
    const ids = Object.values(specialIds(m));
    const smallest = Math.min(m.src_vocab_size, m.tgt_vocab_size);
    return ids.some((i) => i < 0 || i >= smallest) || new Set(ids).size !== ids.length
      ? say("special_ids", { ids: specialIds(m), src_vocab_size: m.src_vocab_size, tgt_vocab_size: m.tgt_vocab_size }) : null;
  },
  origin_named: (m) => (m.origin ? null : say("origin_named")),
};

function checkModel(model) {
  const kind = CONTRACT.model.external.marker in model ? CONTRACT.model.external : CONTRACT.model.own;
  const names = new Set(kind.fields.map((s) => s.name));
  const unknown = Object.keys(model).filter((k) => !names.has(k)).sort();
  if (unknown.length) failModel("unknown_model_keys", { keys: unknown });
  const missing = kind.fields.find((s) => s.required && !(s.name in model));
  if (missing) failModel("missing_field", { name: missing.name });
  const m = withDefaults(kind.fields, model);
  let problems = fieldProblems(kind.fields, m);
  if (!problems.length) problems = kind.rules.map((name) => RULES[name](m)).filter(Boolean);
  if (problems.length) failModel("invalid_model_config", { problems: problems.join("; ") });
  return m;
}

function checkConventions(given, targetVocab, eosId) {
  if (!isObject(given)) fail("conventions_not_object");
  const specs = CONTRACT.conventions.fields;
  const names = new Set(specs.map((s) => s.name));
  const unknown = Object.keys(given).filter((k) => !names.has(k)).sort();
  if (unknown.length) fail("unknown_conventions", { keys: unknown });
  const c = withDefaults(specs, given);
  const problems = fieldProblems(specs, c);
  if (problems.length) fail("invalid_conventions", { problems: problems.join("; ") });
  for (const token of c.never_emit) {
    const id = targetVocab.indexOf(token);
    if (id < 0) fail("never_emit_unknown", { token });
    if (id === eosId) fail("never_emit_eos");
  }
  return c;
}

/** The default output limit of an input of `sourceIds` ids (CONTRACT.conventions.max_len; Conventions.max_len in Python). */
export function conventionMaxLen(c, sourceIds, maxTgtLen) {
  if (c.max_len_ratio <= 0) return maxTgtLen;
  let limit = c.max_len_ratio * sourceIds + c.max_len_offset;
  if (c.max_len_cap > 0) limit = Math.min(limit, c.max_len_cap);
  return Math.max(0, Math.min(maxTgtLen, Math.floor(limit)));
}

/** bundle.json's list of a decoder state's tensors (format 3; runtime/schema.py's _state): the entries, or null when the
 * state is one packed tensor. */
function checkState(state, m, version) {
  const rules = CONTRACT.state;
  const external = CONTRACT.model.external.marker in m;
  if (state === undefined) {
    if (external && m.state_size === 0) fail("state_size_with_list", { value: 0 });
    return null;
  }
  if (version < rules.since) fail("needs_format_version", { name: "state", since: rules.since, value: version });
  if (!external) fail("state_needs_origin");
  if (m.state_size !== 0) fail("state_size_with_list", { value: m.state_size });
  if (!Array.isArray(state) || state.length < 1 || state.length > rules.max_tensors) fail("state_not_list", { limit: rules.max_tensors });
  return state.map((entry, index) => {
    if (!isObject(entry) || Object.keys(entry).sort().join() !== "dims,dtype") fail("state_entry", { index });
    if (!rules.dtypes.includes(entry.dtype)) fail("state_dtype", { index, choices: rules.dtypes.join(", "), value: entry.dtype });
    const dims = entry.dims;
    const whole = Array.isArray(dims) && dims.every((d) => d === null || isWhole(d));
    if (!whole || dims.length > rules.max_rank || dims.filter((d) => d === null).length > 1
      || dims.some((d) => d !== null && !(d >= 1 && d <= rules.max_dim))) {
      fail("state_dims", { index, rank: rules.max_rank, max: rules.max_dim, value: dims });
    }
    return { dtype: entry.dtype, dims: [...dims] };
  });
}

/** The decoder state's ports: one packed tensor ("state" in, "new_state" out), or one per listed tensor (CONTRACT.state,
 * runtime/interface.py's graph_ports): {inputs: [names], outputs: [names], ports: {name: [type, axes]}} where a fixed
 * axis of a listed tensor is its size and a step axis the contract's name. */
export function statePorts(state) {
  if (!state) return { inputs: ["state"], outputs: ["new_state"], listed: false };
  const rules = CONTRACT.state;
  const name = (role, index) => rules[role].replace("{index}", String(index));
  const ports = {};
  for (const role of ["inputs", "outputs"]) {
    state.forEach((t, index) => {
      ports[name(role, index)] = [t.dtype, ["batch", ...t.dims.map((d) => (d === null ? rules.step_axis[role] : d))]];
    });
  }
  return { inputs: state.map((_, i) => name("inputs", i)), outputs: state.map((_, i) => name("outputs", i)), listed: true, ports };
}

/** The size of each fixed axis of the graph contract (CONTRACT.model.*.axis_sizes; ModelConfig.axis_sizes in Python). */
export function axisSizes(m) {
  if (CONTRACT.model.external.marker in m) return { hidden: m.memory_size, state_size: m.state_size, vocab: m.tgt_vocab_size };
  const perLayer = CONTRACT.model.cell_states[m.cell].length;
  return { hidden: m.hidden, state_size: m.decoder_layers * m.hidden * perLayer + (m.input_feed ? m.hidden : 0), vocab: m.tgt_vocab_size };
}

function checkSide(info, side, kind, lower, size) {
  if (!Array.isArray(info.vocab)) fail("missing_field", { name: `${side}.vocab` });
  if (!info.vocab.every((t) => typeof t === "string" && t !== "")) fail("vocab_not_strings", { side });
  const seen = new Set();
  for (const token of info.vocab) {
    if (seen.has(token)) fail("vocab_duplicate", { side, token });
    seen.add(token);
  }
  if (info.vocab.length !== size) fail("vocab_size", { side, found: info.vocab.length, size });
  const specials = CONTRACT.vocab_starts_with;
  if (specials.some((t, i) => info.vocab[i] !== t)) fail("vocab_specials", { side, specials, found: info.vocab.slice(0, specials.length) });
  for (const [name, expected] of [["tokenizer", kind], ["lowercase", lower]]) {
    if (name in info && info[name] !== expected) fail("side_disagrees", { side, name, value: info[name], expected });
  }
  info.tokenizer = kind;
  info.lowercase = lower;
  if (kind === "spm" && !plainName(info.spm_model ?? `${side}.spm.model`)) fail("spm_model_not_plain", { side });
}

function checkGraphs(graphs) {
  if (!("fp32" in graphs)) fail("no_fp32_graphs");
  for (const [precision, entries] of Object.entries(graphs)) {
    if (!PRECISIONS.includes(precision)) fail("unknown_precision", { value: precision });
    for (const kind of [...CONTRACT.graphs, ...CONTRACT.optional_graphs]) {
      const entry = isObject(entries) ? entries[kind] : undefined;
      if (entry === undefined && CONTRACT.optional_graphs.includes(kind)) continue;
      checkEntry(entry, `graphs.${precision}.${kind}`);
      if (entry.ort !== undefined && entry.ort !== null) checkEntry(entry.ort, `graphs.${precision}.${kind}.ort`);
    }
  }
}

function checkEntry(entry, name) {
  if (!isObject(entry) || typeof entry.file !== "string" || typeof entry.sha256 !== "string") fail("graph_entry", { name });
  if (!plainName(entry.file)) fail("graph_file_not_plain", { name });
}

function checkParity(parity) {
  if (!isObject(parity)) fail("parity_not_object");
  for (const [precision, figures] of Object.entries(parity)) {
    if (!PRECISIONS.includes(precision) || !isObject(figures)) fail("parity_precision", { precision });
    if ("greedy_graph" in figures && !isObject(figures.greedy_graph)) fail("parity_greedy_not_object", { precision });
    for (const [name, value] of [...Object.entries(figures), ...Object.entries(figures.greedy_graph ?? {})]) {
      const range = CONTRACT.parity_ranges[name];
      if (!range) continue;
      const [low, high] = [range[0], range[1] ?? Infinity];
      if (!(typeof value === "number" && value >= low && value <= high)) fail("parity_figure", { precision, name, min: low, max: high, value });
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

function external(buf, kind, depth = 1) {
  if (depth > CONTRACT.max_onnx_depth) throw new Malformed(`messages nested more than ${CONTRACT.max_onnx_depth} deep`);
  for (const [field, wire, value] of fields(buf)) {
    if (kind === "tensor" && ((wire === 0 && field === TENSOR_DATA_LOCATION && value === 1) || (wire === 2 && field === TENSOR_EXTERNAL_DATA))) {
      return true;
    }
    if (wire === 2 && field in SCHEMA[kind] && external(value, SCHEMA[kind][field], depth + 1)) return true;
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
