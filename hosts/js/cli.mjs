#!/usr/bin/env node
// node hosts/js/cli.mjs BUNDLE [--beam N] [--nbest K] [--length-penalty A] [--max-len N] [--min-len N]
//                       [--sample] [--temperature T] [--top-k K] [--top-p P] [--seed S] [--batch-size N] [--input FILE|-]
//                       [--jsonl] [--backend node|wasm] [--precision fp32|int8] [--graph-format onnx|ort]
//                       [--greedy-graph|--no-greedy-graph] [--unknown error|unk|skip] [--too-long error|truncate]
//                       [--threads N] [--ensemble BUNDLE ...] [TEXT ...]
// Prints `input -> output` per input, in order, like `seq2edge decode` (--jsonl: its jsonl records, with the
// same line numbers: blank lines are skipped but counted, and a line that is not UTF-8 is an error of its own).
// Sampling draws depend on the seed, the line number and the step, as there. Exit codes as there: 0, 1 (some
// inputs failed, the others still written), 2 (usage or bundle error).
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

import { BACKENDS, GRAPH_FORMATS, isBlank, loadBundle, Seq2EdgeError, TOO_LONG_POLICIES, UNKNOWN_POLICIES } from "./node.mjs";

const SOURCE_LINES = readFileSync(new URL(import.meta.url)).toString().split("\n");
const HELP = SOURCE_LINES.slice(1, SOURCE_LINES.findIndex((l) => !l.startsWith("//") && !l.startsWith("#!"))).map((l) => l.slice(3)).join("\n");

async function main() {
  let parsed;
  try {
    parsed = parseArgs({
      allowPositionals: true,
      options: {
        beam: { type: "string", default: "1" }, nbest: { type: "string", default: "1" }, "max-len": { type: "string" },
        "batch-size": { type: "string", default: "64" }, input: { type: "string" }, backend: { type: "string", default: "node" },
        precision: { type: "string", default: "fp32" }, "graph-format": { type: "string" }, "greedy-graph": { type: "boolean" },
        "no-greedy-graph": { type: "boolean" }, unknown: { type: "string", default: "error" },
        "too-long": { type: "string", default: "error" }, ensemble: { type: "string", multiple: true, default: [] }, "length-penalty": { type: "string", default: "0" }, threads: { type: "string", default: "1" }, help: { type: "boolean" }, jsonl: { type: "boolean" },
        "min-len": { type: "string", default: "0" }, sample: { type: "boolean" }, temperature: { type: "string", default: "1" },
        "top-k": { type: "string", default: "0" }, "top-p": { type: "string", default: "1" }, seed: { type: "string", default: "0" },
      },
    });
  } catch (err) {
    process.stderr.write(`seq2edge-js: ${err.message}\n${HELP}\n`);
    return 2;
  }
  const usage = (message) => { process.stderr.write(`seq2edge-js: ${message}\n`); return 2; };
  const numbers = {};
  for (const [name, integer, least] of [["beam", true, 1], ["nbest", true, 1], ["max-len", true, 0], ["min-len", true, 0],
    ["batch-size", true, 1], ["threads", true, 1], ["top-k", true, 0], ["temperature", false], ["top-p", false],
    ["length-penalty", false]]) {
    const text = parsed.values[name];
    if (text === undefined) continue;
    const value = Number(text);
    if (text.trim() === "" || !Number.isFinite(value) || (integer && !Number.isInteger(value))) {
      return usage(`--${name} ${JSON.stringify(text)} is not ${integer ? "an integer" : "a number"}`);
    }
    if (least !== undefined && value < least) return usage(`--${name} must be at least ${least}, not ${value}`);
    numbers[name] = value;
  }
  for (const [name, allowed] of [["backend", BACKENDS], ["unknown", UNKNOWN_POLICIES], ["too-long", TOO_LONG_POLICIES],
    ["graph-format", [undefined, ...GRAPH_FORMATS]]]) {
    const value = parsed.values[name];
    if (!allowed.includes(value)) return usage(`--${name} must be one of ${allowed.filter(Boolean).join(", ")}, not ${JSON.stringify(value)}`);
  }
  if (!/^-?[0-9]+$/.test(parsed.values.seed)) {  // any integer, as Python's: the draws take it modulo 2 ** 64
    return usage(`--seed ${JSON.stringify(parsed.values.seed)} is not an integer`);
  }
  if (numbers["max-len"] !== undefined && numbers["min-len"] > numbers["max-len"]) {
    return usage(`--min-len ${numbers["min-len"]} is greater than --max-len ${numbers["max-len"]}`);
  }
  const { values: o, positionals } = parsed;
  if (o.help || positionals.length === 0) {
    process.stdout.write(`${HELP}\n`);
    return o.help ? 0 : 2;
  }
  const [bundle, ...texts] = positionals;
  if (texts.length && o.input) {
    process.stderr.write("seq2edge-js: give TEXT arguments or --input, not both\n");
    return 2;
  }
  // [line number, text, problem or undefined] for every input, as seq2edge decode reads them.
  let inputs;
  try {
    inputs = texts.length ? texts.map((t, i) => [i + 1, t]) : inputLines(readFileSync(o.input === undefined || o.input === "-" ? 0 : o.input));
  } catch (err) {
    if (!err.code) throw err;
    return usage(`error: ${o.input ?? "stdin"}: cannot read: ${READ_ERRORS[err.code] ?? err.message}`);
  }
  const greedyGraph = o["greedy-graph"] ? true : o["no-greedy-graph"] ? false : null;
  if (greedyGraph === true && o.ensemble.length) {
    process.stderr.write("seq2edge-js: --greedy-graph decodes one model; an ensemble decodes step by step\n");
    return 2;
  }
  let model;
  try {
    model = await loadBundle(bundle, { backend: o.backend, threads: numbers.threads, precision: o.precision, format: o["graph-format"],
      unknown: o.unknown, tooLong: o["too-long"], ensemble: o.ensemble });
  } catch (err) {
    if (!(err instanceof Seq2EdgeError)) throw err;
    return usage(`error: ${err.message}`);
  }
  const nbest = numbers.nbest;
  const good = inputs.filter(([, , problem]) => problem === undefined);
  let decoded;
  try {
    decoded = await model.decode(good.map(([, text]) => text), { beamSize: numbers.beam, nbest, batchSize: numbers["batch-size"],
      maxLen: numbers["max-len"] ?? null, minLen: numbers["min-len"], greedyGraph, lengthPenalty: numbers["length-penalty"],
      sample: Boolean(o.sample), temperature: numbers.temperature, topK: numbers["top-k"], topP: numbers["top-p"],
      seed: BigInt(o.seed), positions: good.map(([number]) => number - 1) });
  } catch (err) {
    if (!(err instanceof Seq2EdgeError)) throw err;
    return usage(`error: ${err.message}`);
  }
  let next = 0;  // decoded[k] is good[k]'s result
  const results = inputs.map(([number, text, problem]) => ({ line: number,
    ...(problem === undefined ? decoded[next++] : { input: text, error: problem }) }));
  let failed = 0;
  const lines = [];
  results.forEach((r) => {
    if (r.error) {
      failed += 1;
      process.stderr.write(`seq2edge-js: line ${r.line}: ${JSON.stringify(r.input)}: ${r.error}\n`);
    }
    if (o.jsonl) {
      const record = { line: r.line, input: r.input };
      if (r.error) record.error = r.error;
      else Object.assign(record, { output: r.text, tokens: r.tokens, score: r.score },
        nbest > 1 ? { nbest: (r.nbest ?? [r]).map((h) => ({ output: h.text, tokens: h.tokens, score: h.score })) } : {});
      lines.push(JSON.stringify(record));
    } else if (r.error) {
      lines.push(`${r.input} -> (error: ${r.error})`);
    } else if (nbest > 1) {
      for (const h of r.nbest ?? [r]) lines.push(`${r.input} -> ${h.text}  (${h.score.toFixed(3)})`);
    } else {
      lines.push(`${r.input} -> ${r.text}`);
    }
  });
  process.stdout.write(lines.length ? `${lines.join("\n")}\n` : "");
  return failed ? 1 : 0;
}

const READ_ERRORS = { ENOENT: "No such file or directory", EISDIR: "Is a directory", EACCES: "Permission denied" };

/** A file's or stdin's lines as [line number, text, problem]: a UTF-8 BOM dropped, trailing carriage returns cut, blank
 * lines skipped (but counted), and a line that is not UTF-8 kept as an error, as seq2edge decode reads its input. */
function inputLines(bytes) {
  const lines = [];
  const decoder = new TextDecoder("utf-8", { ignoreBOM: true });  // a BOM is text but at the very start, as in Python
  let start = 0;
  for (let number = 1; start < bytes.length; number++) {
    const newline = bytes.indexOf(0x0a, start);
    let end = newline < 0 ? bytes.length : newline;
    const after = end + 1;
    while (end > start && bytes[end - 1] === 0x0d) end -= 1;
    const raw = bytes.subarray(start, end);
    start = after;
    const bad = firstInvalidUtf8(raw);
    let text = decoder.decode(raw);
    if (number === 1) text = text.replace(/^\ufeff/, "");
    if (bad >= 0) lines.push([number, text, `not valid UTF-8 (byte ${bad})`]);
    else if (!isBlank(text)) lines.push([number, text]);
  }
  return lines;
}

/** Where the first byte sequence that is not well-formed UTF-8 starts (Python's UnicodeDecodeError.start), or -1. */
function firstInvalidUtf8(bytes) {
  for (let i = 0; i < bytes.length;) {
    const b = bytes[i];
    if (b < 0x80) { i += 1; continue; }
    let more; let lo = 0x80; let hi = 0xbf;  // the continuation bytes that follow, and the second byte's range
    if (b >= 0xc2 && b <= 0xdf) more = 1;
    else if (b >= 0xe0 && b <= 0xef) [more, lo, hi] = [2, b === 0xe0 ? 0xa0 : 0x80, b === 0xed ? 0x9f : 0xbf];
    else if (b >= 0xf0 && b <= 0xf4) [more, lo, hi] = [3, b === 0xf0 ? 0x90 : 0x80, b === 0xf4 ? 0x8f : 0xbf];
    else return i;
    for (let j = 1; j <= more; j++) {
      const c = bytes[i + j];
      if (c === undefined || c < (j === 1 ? lo : 0x80) || c > (j === 1 ? hi : 0xbf)) return i;
    }
    i += more + 1;
  }
  return -1;
}

// The reader of stdout went away (`| head`): stop quietly with 141, as seq2edge decode and other pipeline writers do.
process.stdout.on("error", (err) => {
  if (err.code !== "EPIPE") throw err;
  process.exit(141);
});
process.exitCode = await main();
