// Node entry point: bundles from the file system, onnxruntime-node (native CPU) by default.
//   import { loadBundle } from "./node.mjs";
//   const model = await loadBundle("models/g2p-en", { backend: "node" });   // or "wasm" (onnxruntime-web)
import { createHash } from "node:crypto";
import { readFile, realpath, stat } from "node:fs/promises";
import { dirname, join } from "node:path";

import { CONTRACT, MAX_METADATA_BYTES, say } from "./bundle-checks.mjs";
import { BundleError, LOG_SEVERITY, oneOf, Seq2EdgeError, Seq2Seq, sessionConfig } from "./seq2edge.mjs";

export * from "./seq2edge.mjs";
export const BACKENDS = ["node", "wasm"];  // onnxruntime-node, or onnxruntime-web's WebAssembly

/** Load the bundle directory `dir`. options: backend ("node" | "wasm"), threads, precision, format ("onnx" | "ort"),
 * unknown, tooLong, useGreedyGraph ("auto" | true | false), ensemble (more bundle directories that decode with
 * this one as one model: Seq2Seq.ensemble). */
export async function loadBundle(dir, { ensemble = [], ...options } = {}) {
  const lead = await loadOne(dir, options);
  if (!ensemble.length) return lead;
  const others = [];
  for (const member of ensemble) others.push(await loadOne(member, options));
  return Seq2Seq.ensemble(lead, others, ensemble);
}

async function loadOne(dir, { backend = "node", threads = 1, format, ...options }) {
  oneOf("backend", backend, BACKENDS);
  if (!(Number.isInteger(threads) && threads >= 1)) throw new Seq2EdgeError(`threads must be an integer of at least 1, not ${threads}`);
  const ort = backend === "wasm" ? await import("onnxruntime-web") : await import("onnxruntime-node");
  if (backend === "wasm") ort.env.wasm.numThreads = threads;
  const read = (name) => readBundleFile(dir, name);
  const sha256 = async (bytes) => createHash("sha256").update(bytes).digest("hex");
  const sessionOptions = { intraOpNumThreads: threads, interOpNumThreads: 1, graphOptimizationLevel: "all", format, extra: sessionConfig(),
    logSeverityLevel: LOG_SEVERITY };
  return Seq2Seq.load({ ort, read, sha256, sessionOptions, ...options });
}

/** A file of the bundle, as runtime/bundle.py reads one: a regular file inside the bundle directory (never a FIFO or
 * device, never a link out of it), and bundle.json or a tokeniser model no larger than any bundle's. */
async function readBundleFile(dir, name) {
  const path = join(dir, name);
  try {
    const real = await realpath(path);
    if (dirname(real) !== await realpath(dir)) throw new BundleError(`${path}: points outside the bundle directory; refused`);
    const info = await stat(real);
    if (info.isDirectory()) throw new BundleError(`${path}: is a directory, expected a file`);
    if (!info.isFile()) throw new BundleError(`${path}: not a regular file; refused`);
    const graph = name.endsWith(".onnx") || name.endsWith(".ort");
    if (!graph && info.size > MAX_METADATA_BYTES) {
      throw new BundleError(`${path}: larger than ${MAX_METADATA_BYTES >> 20} MB, far beyond any bundle's; refused`);
    }
    if (graph && info.size > CONTRACT.max_graph_bytes) {
      throw new BundleError(`${path}: ${say("graph_too_large", { limit: CONTRACT.max_graph_bytes })}`);
    }
    return new Uint8Array(await readFile(real));
  } catch (err) {
    if (err instanceof BundleError) throw err;
    const why = { ENOENT: "missing from the bundle", ELOOP: "cannot read: a symbolic link loop" }[err.code];
    throw new BundleError(`${path}: ${why ?? `cannot read: ${err.message}`}`);
  }
}
