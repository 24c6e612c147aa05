"""Decode a words file with each of several settings; print one JSON object {setting: [output text per word]}.

    python tools/device_decode.py WORDS_FILE SETTINGS_JSON

It needs seq2edge's runtime alone (numpy, onnxruntime, click), so the device check runs this very file on
x86 and on an emulated ARM CPU and compares what they print (tools/device_check.py). A setting is
{"bundle": DIR, "precision": "fp32"|"int8", "batch": N}; its key is "NAME PRECISION BATCH".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def setting_key(setting: dict) -> str:
    return f"{Path(setting['bundle']).name} {setting['precision']} {setting['batch']}"


def decode_all(words: list[str], settings: list[dict]) -> dict[str, list[str]]:
    from seq2edge.runtime import Seq2Seq

    outputs = {}
    for setting in settings:
        model = Seq2Seq.load(setting["bundle"], providers="cpu", precision=setting["precision"], threads=1, unknown="unk",
                             too_long="truncate")
        outputs[setting_key(setting)] = [r.text for r in model.decode(words, batch_size=setting["batch"])]
    return outputs


def main(argv: list[str]) -> int:
    words = Path(argv[0]).read_text(encoding="utf-8").split()
    json.dump(decode_all(words, json.loads(argv[1])), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
