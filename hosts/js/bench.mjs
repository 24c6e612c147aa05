// Words per second of the JavaScript host: node hosts/js/bench.mjs BUNDLE WORDS.txt BATCH [node|wasm] [steps|graph]
// Prints one number: the median of 3 timed runs after a warm-up, one thread.
import { readFileSync } from "node:fs";

import { loadBundle } from "./node.mjs";

const [bundle, wordsFile, batch, backend = "node", loop = "steps"] = process.argv.slice(2);
const words = readFileSync(wordsFile, "utf8").split("\n").filter(Boolean);
const model = await loadBundle(bundle, { backend, threads: 1, unknown: "unk", tooLong: "truncate" });
const options = { batchSize: Number(batch), greedyGraph: loop === "graph" };
await model.decode(words.slice(0, 50), options);
const times = [];
for (let i = 0; i < 3; i++) {
  const start = performance.now();
  await model.decode(words, options);
  times.push((performance.now() - start) / 1000);
}
times.sort((a, b) => a - b);
process.stdout.write(`${(words.length / times[1]).toFixed(1)}\n`);
