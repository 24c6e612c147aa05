// Browser entry point: bundles fetched over HTTP, onnxruntime-web (wasm) passed in by the page.
//   import { loadBundle } from "./web.mjs";
//   const model = await loadBundle(ort, "/models/g2p-en/");
import { BundleError, LOG_SEVERITY, Seq2Seq, sessionConfig } from "./seq2edge.mjs";

export * from "./seq2edge.mjs";

export async function loadBundle(ort, baseUrl, { format, ...options } = {}) {
  const base = baseUrl.endsWith("/") ? baseUrl : `${baseUrl}/`;
  const read = async (name) => {
    const response = await fetch(base + name);
    if (!response.ok) throw new BundleError(`${base + name}: HTTP ${response.status}`);
    return new Uint8Array(await response.arrayBuffer());
  };
  const sha256 = async (bytes) => [...new Uint8Array(await crypto.subtle.digest("SHA-256", bytes))]
    .map((b) => b.toString(16).padStart(2, "0")).join("");
  return Seq2Seq.load({ ort, read, sha256, sessionOptions: { executionProviders: ["wasm"], format, extra: sessionConfig(), logSeverityLevel: LOG_SEVERITY }, ...options });
}
