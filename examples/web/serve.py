"""Serve the browser demo: python examples/web/serve.py [--port 8000], then open http://localhost:8000/.

Serves only what the page needs from the repository: the page itself, hosts/js (the library and
onnxruntime-web from its node_modules, after `npm ci --ignore-scripts` there) and models/. With
--isolated it sends the cross-origin isolation headers that let onnxruntime-web use threads.
"""

from __future__ import annotations

import argparse
import functools
import http.server
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ALLOWED = ("/examples/web/", "/hosts/js/", "/models/")


class Handler(http.server.SimpleHTTPRequestHandler):
    isolated = False
    bundle: Path | None = None
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                      ".wasm": "application/wasm", ".onnx": "application/octet-stream", ".ort": "application/octet-stream"}

    def do_GET(self) -> None:
        if self.path in ("/", "/index.html") or self.path.startswith("/?"):
            self.path = "/examples/web/index.html" + self.path[1:].removeprefix("index.html")
        if ".." in self.path or not self.path.startswith((*ALLOWED, "/bundle/")):
            self.send_error(404)
            return
        super().do_GET()

    def translate_path(self, path: str) -> str:
        if path.startswith("/bundle/") and self.bundle is not None:
            return str(self.bundle / path.split("?")[0].removeprefix("/bundle/"))
        return super().translate_path(path)

    def end_headers(self) -> None:
        if self.isolated:
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def log_message(self, *args) -> None:  # quiet
        pass


def serve(port: int = 8000, isolated: bool = False, bundle: Path | None = None) -> http.server.ThreadingHTTPServer:
    """A server for the demo; `bundle` (a bundle directory anywhere) is served at /bundle/."""
    handler = functools.partial(Handler, directory=str(REPO))
    Handler.isolated = isolated
    Handler.bundle = bundle
    return http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--isolated", action="store_true", help="cross-origin isolation headers (wasm threads)")
    parser.add_argument("--bundle", type=Path, default=None, help="also serve this bundle at /bundle/ (open /?bundle=/bundle/)")
    args = parser.parse_args()
    server = serve(args.port, args.isolated, args.bundle)
    print(f"seq2edge browser demo: http://localhost:{server.server_address[1]}/")
    server.serve_forever()
