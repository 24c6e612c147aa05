// Node entry point: bundles from the file system, onnxruntime-node (native CPU) by default.
//   import { loadBundle } from "./node.mjs";
//   const model = await loadBundle("models/g2p-en", { backend: "node" });   // or "wasm" (onnxruntime-web)
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { join } from "node:path";

import { BundleError, oneOf, Seq2EdgeError, Seq2Seq, sessionConfig } from "./seq2edge.mjs";

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
  const read = async (name) => {
    try {
      return new Uint8Array(await readFile(join(dir, name)));
    } catch (err) {
      throw new BundleError(`${join(dir, name)}: ${err.code === "ENOENT" ? "missing from the bundle" : err.message}`);
    }
  };
  const sha256 = async (bytes) => createHash("sha256").update(bytes).digest("hex");
  const sessionOptions = { intraOpNumThreads: threads, interOpNumThreads: 1, graphOptimizationLevel: "all", format, extra: sessionConfig() };
  return Seq2Seq.load({ ort, read, sha256, sessionOptions, ...options });
}
