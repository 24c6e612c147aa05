// The JavaScript host's half of the device check: as tools/device_decode.py, on onnxruntime-node.
//   node tools/device_decode.mjs WORDS_FILE SETTINGS_JSON   -> {"NAME PRECISION BATCH": [output text per word]}
import { readFileSync } from "node:fs";
import { basename } from "node:path";

import { loadBundle } from "../hosts/js/node.mjs";

const [wordsFile, settingsJson] = process.argv.slice(2);
const words = readFileSync(wordsFile, "utf-8").split(/\s+/).filter(Boolean);
const outputs = {};
for (const setting of JSON.parse(settingsJson)) {
  const model = await loadBundle(setting.bundle, { backend: "node", precision: setting.precision, unknown: "unk", tooLong: "truncate" });
  const results = await model.decode(words, { batchSize: setting.batch });
  outputs[`${basename(setting.bundle)} ${setting.precision} ${setting.batch}`] = results.map((r) => r.text);
}
process.stdout.write(JSON.stringify(outputs));
