"""Embedding the seq2edge runtime in an app: a word-to-phonemes function and a small HTTP endpoint.

    python examples/g2p_app.py models/g2p-en --port 8080
    curl 'http://127.0.0.1:8080/g2p?word=attention&nbest=3'

Needs only the base install (numpy, onnxruntime, click) and the standard library.
"""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from seq2edge.runtime import Seq2EdgeError, Seq2Seq


class Phonemizer:
    """Words to ARPAbet phonemes; one loaded model serves every thread."""

    def __init__(self, bundle: str, threads: int | None = 1):
        self.model = Seq2Seq.load(bundle, providers="auto", threads=threads)

    def phonemes(self, word: str) -> list[str]:
        return self.model.decode([word])[0].tokens

    def nbest(self, word: str, n: int = 3) -> list[dict]:
        result = self.model.decode([word], beam_size=max(n, 1), nbest=n)[0]
        return [{"phonemes": r.text, "score": round(r.score, 4)} for r in (result.nbest or [result])]


def make_server(phonemizer: Phonemizer, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """GET /g2p?word=W[&nbest=N] -> JSON; port 0 picks a free port (server.server_address says which)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlparse(self.path)
            query = parse_qs(url.query)
            if url.path != "/g2p" or "word" not in query:
                return self._send(404, {"error": "use GET /g2p?word=WORD[&nbest=N]"})
            word = query["word"][0]
            try:
                n = int(query.get("nbest", ["1"])[0])
                if not 1 <= n <= 10:
                    raise ValueError
            except ValueError:
                return self._send(400, {"error": "nbest must be a whole number from 1 to 10"})
            try:
                self._send(200, {"word": word, "pronunciations": phonemizer.nbest(word, n)})
            except Seq2EdgeError as exc:  # bad input: say why, keep serving
                self._send(400, {"word": word, "error": str(exc)})

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body, ensure_ascii=False).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:  # quiet
            pass

    return ThreadingHTTPServer((host, port), Handler)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    server = make_server(Phonemizer(args.bundle), port=args.port)
    print(f"serving on http://{server.server_address[0]}:{server.server_address[1]}/g2p?word=...")
    server.serve_forever()


if __name__ == "__main__":
    main()
