#!/usr/bin/env node
// node hosts/js/cli.mjs BUNDLE [--beam N] [--nbest K] [--max-len N] [--batch-size N] [--input FILE] [--jsonl]
//                       [--backend node|wasm] [--precision fp32|int8] [--format onnx|ort] [--greedy-graph|--no-greedy-graph]
//                       [--unknown error|unk|skip] [--too-long error|truncate] [--threads N] [--ensemble BUNDLE ...] [TEXT ...]
// Prints `input -> output` per input, in order, like `seq2edge decode` (--jsonl: its jsonl records). Exit codes
// as there: 0, 1 (some inputs failed, the others still written), 2 (usage or bundle error).
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

import { loadBundle, Seq2EdgeError } from "./node.mjs";

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
        precision: { type: "string", default: "fp32" }, format: { type: "string" }, "greedy-graph": { type: "boolean" },
        "no-greedy-graph": { type: "boolean" }, unknown: { type: "string", default: "error" },
        "too-long": { type: "string", default: "error" }, ensemble: { type: "string", multiple: true, default: [] }, "length-penalty": { type: "string", default: "0" }, threads: { type: "string", default: "1" }, help: { type: "boolean" }, jsonl: { type: "boolean" },
      },
    });
  } catch (err) {
    process.stderr.write(`seq2edge-js: ${err.message}\n${HELP}\n`);
    return 2;
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
  let inputs = texts;
  if (!texts.length) {
    const raw = readFileSync(o.input ?? 0, "utf8").replace(/^\ufeff/, "");
    inputs = raw.split("\n").map((l) => l.replace(/\r$/, "")).filter((l) => l.trim() !== "");
    if (raw.endsWith("\n") === false && inputs.length === 0) inputs = [];
  }
  const greedyGraph = o["greedy-graph"] ? true : o["no-greedy-graph"] ? false : null;
  if (greedyGraph === true && o.ensemble.length) {
    process.stderr.write("seq2edge-js: --greedy-graph decodes one model; an ensemble decodes step by step\n");
    return 2;
  }
  let model;
  try {
    model = await loadBundle(bundle, { backend: o.backend, threads: Number(o.threads), precision: o.precision, format: o.format,
      unknown: o.unknown, tooLong: o["too-long"], ensemble: o.ensemble });
  } catch (err) {
    if (!(err instanceof Seq2EdgeError)) throw err;
    process.stderr.write(`seq2edge-js: error: ${err.message}\n`);
    return 2;
  }
  const nbest = Number(o.nbest);
  const results = await model.decode(inputs, { beamSize: Number(o.beam), nbest, batchSize: Number(o["batch-size"]),
    maxLen: o["max-len"] === undefined ? null : Number(o["max-len"]), greedyGraph, lengthPenalty: Number(o["length-penalty"]) });
  let failed = 0;
  const lines = [];
  results.forEach((r, i) => {
    if (o.jsonl) {
      const record = { line: i + 1, input: r.input };
      if (r.error) record.error = r.error;
      else Object.assign(record, { output: r.text, tokens: r.tokens, score: r.score },
        nbest > 1 ? { nbest: (r.nbest ?? [r]).map((h) => ({ output: h.text, tokens: h.tokens, score: h.score })) } : {});
      if (r.error) failed += 1;
      lines.push(JSON.stringify(record));
    } else if (r.error) {
      failed += 1;
      process.stderr.write(`seq2edge-js: ${JSON.stringify(r.input)}: ${r.error}\n`);
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

process.exitCode = await main();
