// The conformance corpus (tests/conformance/cases.jsonl, written from the Python runtime by
// tests/conformance/make_corpus.py) run against this host: `npm test` (node --test test/).
// Every case is a bundle, optional damage to a copy of it, load options, inputs and search options,
// and what the Python runtime gave: texts, tokens and scores (within 1e-4), or errors (class and message prefix).
import assert from "node:assert/strict";
import { cpSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, symlinkSync, truncateSync, unlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { createHash } from "node:crypto";
import { spawnSync } from "node:child_process";

import { loadBundle, uniform } from "../node.mjs";

const CORPUS = fileURLToPath(new URL("../../../tests/conformance/", import.meta.url));
const BUNDLES = join(CORPUS, "bundles");
const PREFIX = 60;
const CONTRACT_INPUTS = { g2p: ["edge", "onnx", "a"], conventions: ["abc", "a b", "hgfedcba"] };  // make_corpus.py's
const cases = readFileSync(join(CORPUS, "cases.jsonl"), "utf8").split("\n").filter(Boolean).map((line) => JSON.parse(line));

// The Python runtime's option names -> this host's (runtime/options.py -> seq2edge.mjs decode()).
const SEARCH = { beam_size: "beamSize", nbest: "nbest", max_len: "maxLen", min_len: "minLen", batch_size: "batchSize",
  length_penalty: "lengthPenalty", sample: "sample", seed: "seed", temperature: "temperature", top_k: "topK", top_p: "topP" };
const LOAD = { precision: "precision", unknown: "unknown", too_long: "tooLong", greedy_graph: "useGreedyGraph" };

/** As make_corpus.py's normalise: no directory before the file a message names, no quoted input. */
export function normalise(message) {
  return message.replace(/^[^\s:]*\/(?=[^/\s:]+[ :])/, "").replace(/^input \d+: /, "").replace(/^'.*?': /, "")
    .replace(/ \(to decode it anyway: .*\)$/, "").replace(/ \(onnxruntime: .*\)$/, "").replace(/(not valid JSON \(line \d+\)).*/, "$1").slice(0, PREFIX);
}

function rename(options, names) {
  return Object.fromEntries(Object.entries(options).map(([k, v]) => {
    if (!(k in names)) throw new Error(`the corpus uses option ${k}, which this runner does not map`);
    return [names[k], v];
  }));
}

/** make_corpus.py's damage operations, on a copy of a bundle. */
function damage(bundle, steps) {
  for (const [op, target, value] of steps) {
    const file = typeof target === "string" ? join(bundle, target) : null;
    if (op === "remove") unlinkSync(file);
    else if (op === "truncate") { const data = readFileSync(file); writeFileSync(file, data.subarray(0, Math.floor(data.length / 2))); }
    else if (op === "flip") { const data = readFileSync(file); data[Math.floor(data.length / 2)] ^= 0x10; writeFileSync(file, data); }
    else if (op === "write") writeFileSync(file, value);
    else if (op === "mkdir") mkdirSync(file);
    else if (op === "copy") cpSync(join(BUNDLES, value), file);
    else if (op === "self-link") symlinkSync(file, file);
    else if (op === "fifo") {
      unlinkSync(file);
      if (spawnSync("mkfifo", [file]).status !== 0) throw new Error(`mkfifo ${file} failed`);
    } else if (op === "grow") truncateSync(file, value);  // sparse: nothing is written
    else if (op === "nest") writeFileSync(file, "[".repeat(value) + "]".repeat(value));
    else if (op === "replace") writeFileSync(file, readFileSync(file, "utf8").replace(value, steps.find((s) => s[0] === "replace")[3]));
    else if (op === "rehash") damage(bundle, [["set", value, createHash("sha256").update(readFileSync(file)).digest("hex")]]);
    else if (op === "link-out") {
      const outside = join(bundle, "..", `elsewhere-${target}`);
      renameSync(file, outside);
      symlinkSync(outside, file);
    } else if (op === "set" || op === "delete" || op === "delete-if-present") {
      const metaPath = join(bundle, "bundle.json");
      const meta = JSON.parse(readFileSync(metaPath, "utf8"));
      const path = [...target];
      const last = path.pop();
      const node = path.reduce((n, key) => n[key], meta);
      if (op === "delete" || op === "delete-if-present") {
        if (Array.isArray(node)) node.splice(last, 1);  // as Python's del: the items after it move up
        else delete node[last];
      } else node[last] = typeof value === "string" && value.startsWith("@") ? node[Number(value.slice(1))] : value;
      writeFileSync(metaPath, JSON.stringify(meta));
    } else throw new Error(`unknown damage ${op}`);
  }
}

function assertResults(got, expected) {
  assert.equal(got.length, expected.length);
  got.forEach((result, i) => {
    const want = expected[i];
    if (want.error !== undefined) {
      assert.ok(result.error !== undefined, `input ${i}: expected the error ${JSON.stringify(want.error)}, got ${JSON.stringify(result.text)}`);
      assert.equal(normalise(result.error), want.error, `input ${i}`);
      return;
    }
    assert.equal(result.error, undefined, `input ${i}: ${result.error}`);
    const hyps = result.nbest ?? [result];
    assert.deepEqual(hyps.map((h) => [h.text, h.tokens]), want.hypotheses.map((h) => [h.text, h.tokens]), `input ${i}`);
    hyps.forEach((h, j) => assert.ok(Math.abs(h.score - want.hypotheses[j].score) <= 1e-4,
      `input ${i}, hypothesis ${j}: score ${h.score}, Python ${want.hypotheses[j].score}`));
  });
}

for (const c of cases) {
  test(c.name, async () => {
    if (c.kind === "draw") {
      assert.equal(uniform(c.seed, c.position, c.step), c.expect);
      return;
    }
    if (c.kind === "decode") {
      const { ensemble = [], ...load } = c.load;
      const model = await loadBundle(join(BUNDLES, c.bundle), { ...rename(load, LOAD), ensemble: ensemble.map((b) => join(BUNDLES, b)) });
      assertResults(await model.decode(c.inputs, rename(c.options, SEARCH)), c.expect);
      return;
    }
    const work = mkdtempSync(join(tmpdir(), "conformance-"));
    try {
      const bundle = join(work, "bundle");
      cpSync(join(BUNDLES, c.bundle), bundle, { recursive: true });
      damage(bundle, c.damage);
      if (c.kind === "contract" && c.expect.class === undefined) {  // it loads: the same settings, every default filled
        const model = await loadBundle(bundle);
        assert.deepEqual(model.config, c.expect.model);
        assert.deepEqual(model.conventions, c.expect.conventions);
        assertResults(await model.decode(CONTRACT_INPUTS[c.bundle]), c.expect.results);
        return;
      }
      await assert.rejects(loadBundle(bundle), (err) => {
        assert.equal(err.constructor.name, c.expect.class);
        assert.equal(normalise(err.message), c.expect.message);
        return true;
      });
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  });
}
