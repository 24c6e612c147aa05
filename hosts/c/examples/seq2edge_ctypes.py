"""seq2edge's native library from Python with ctypes: how any language with a C FFI binds it (docs/hosts.md).

    from seq2edge_ctypes import NativeModel
    model = NativeModel("models/g2p-en", library="hosts/c/build/libseq2edge.so")
    model.decode(["attention"])[0]["text"]      # 'AH0 T EH1 N SH AH0 N'

The standard library only: no seq2edge, numpy or onnxruntime Python package is imported. The calls release the GIL
(ctypes does), so threads decode in parallel on one loaded model.
"""

from __future__ import annotations

import ctypes
from ctypes import POINTER, c_char_p, c_double, c_int, c_size_t, c_uint64, c_void_p

STATUS = {1: "InputError", 2: "BundleError", 3: "OptionError", 4: "RunError"}


class NativeError(Exception):
    """A status other than S2E_OK: `kind` is its name (BundleError, OptionError, ...), the message its one line."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class LoadOptions(ctypes.Structure):
    _fields_ = [("precision", c_char_p), ("graph_format", c_char_p), ("unknown", c_char_p), ("too_long", c_char_p),
                ("greedy_graph", c_int), ("threads", c_int), ("option_style", c_char_p),
                ("ensemble", POINTER(c_char_p)), ("ensemble_count", c_size_t)]


class DecodeOptions(ctypes.Structure):
    _fields_ = [("beam_size", c_int), ("nbest", c_int), ("max_len", c_int), ("min_len", c_int), ("batch_size", c_int),
                ("length_penalty", c_double), ("sample", c_int), ("temperature", c_double), ("top_k", c_int),
                ("top_p", c_double), ("seed", c_uint64)]


def _bind(path: str) -> ctypes.CDLL:
    lib = ctypes.CDLL(path)
    signatures = {
        "s2e_load_options_init": (None, [POINTER(LoadOptions)]),
        "s2e_decode_options_init": (None, [POINTER(DecodeOptions)]),
        "s2e_model_load": (c_int, [c_char_p, POINTER(LoadOptions), POINTER(c_void_p), POINTER(c_void_p)]),
        "s2e_model_free": (None, [c_void_p]),
        "s2e_model_info": (c_char_p, [c_void_p]),
        "s2e_decode": (c_int, [c_void_p, POINTER(c_char_p), c_size_t, POINTER(c_uint64), POINTER(DecodeOptions),
                               POINTER(c_void_p), POINTER(c_void_p)]),
        "s2e_results_free": (None, [c_void_p]),
        "s2e_results_count": (c_size_t, [c_void_p]),
        "s2e_result_error": (c_char_p, [c_void_p, c_size_t]),
        "s2e_result_hypotheses": (c_size_t, [c_void_p, c_size_t]),
        "s2e_result_text": (c_char_p, [c_void_p, c_size_t, c_size_t]),
        "s2e_result_score": (c_double, [c_void_p, c_size_t, c_size_t]),
        "s2e_result_token_count": (c_size_t, [c_void_p, c_size_t, c_size_t]),
        "s2e_result_token": (c_char_p, [c_void_p, c_size_t, c_size_t, c_size_t]),
        "s2e_result_truncated": (c_int, [c_void_p, c_size_t, c_size_t]),
        "s2e_result_source_truncated_from": (c_size_t, [c_void_p, c_size_t]),
        "s2e_string_free": (None, [c_void_p]),
        "s2e_version": (c_char_p, []),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes
    return lib


def _raise_for(lib: ctypes.CDLL, status: int, error: c_void_p) -> None:
    if status == 0:
        return
    message = ctypes.string_at(error).decode("utf-8") if error else "(no message)"
    lib.s2e_string_free(error)
    raise NativeError(STATUS.get(status, f"status {status}"), message)


class NativeModel:
    """A loaded bundle. Load options as the C API's (precision, unknown, too_long, greedy_graph: None/True/False,
    threads, ensemble: other bundle directories)."""

    def __init__(self, bundle: str, library: str, *, precision: str = "fp32", unknown: str = "error", too_long: str = "error",
                 greedy_graph: bool | None = None, threads: int = 0, ensemble: tuple[str, ...] = (), graph_format: str = "auto"):
        self.lib = _bind(library)
        options = LoadOptions()
        self.lib.s2e_load_options_init(ctypes.byref(options))
        options.precision, options.unknown, options.too_long = precision.encode(), unknown.encode(), too_long.encode()
        options.graph_format = graph_format.encode()
        options.greedy_graph = -1 if greedy_graph is None else int(greedy_graph)
        options.threads = threads
        members = (c_char_p * max(len(ensemble), 1))(*[str(m).encode() for m in ensemble])
        options.ensemble, options.ensemble_count = members, len(ensemble)
        self.handle, error = c_void_p(), c_void_p()
        _raise_for(self.lib, self.lib.s2e_model_load(str(bundle).encode(), ctypes.byref(options), ctypes.byref(self.handle),
                                                     ctypes.byref(error)), error)

    def info(self) -> str:
        return self.lib.s2e_model_info(self.handle).decode()

    def decode(self, texts: list[str], positions: list[int] | None = None, **search) -> list[dict]:
        """One dict per text: {"error": ...} or {"text", "tokens", "score", "truncated", "nbest": [...]}.
        search: beam_size, nbest, max_len, min_len, batch_size, length_penalty, sample, temperature, top_k, top_p, seed."""
        options = DecodeOptions()
        self.lib.s2e_decode_options_init(ctypes.byref(options))
        for name, value in search.items():
            if name == "max_len" and value is None:
                value = -1
            setattr(options, name, value & 0xFFFFFFFFFFFFFFFF if name == "seed" else value)
        encoded = (c_char_p * max(len(texts), 1))(*[t.encode("utf-8", "surrogatepass") for t in texts])
        places = (c_uint64 * len(texts))(*positions) if positions is not None else None
        results, error = c_void_p(), c_void_p()
        status = self.lib.s2e_decode(self.handle, encoded, len(texts), places, ctypes.byref(options), ctypes.byref(results),
                                     ctypes.byref(error))
        _raise_for(self.lib, status, error)
        try:
            return [self._result(results, i) for i in range(self.lib.s2e_results_count(results))]
        finally:
            self.lib.s2e_results_free(results)

    def _result(self, results: c_void_p, i: int) -> dict:
        lib = self.lib
        error = lib.s2e_result_error(results, i)
        if error is not None:
            return {"error": error.decode()}
        hyps = [{"text": lib.s2e_result_text(results, i, h).decode(),
                 "tokens": [lib.s2e_result_token(results, i, h, t).decode() for t in range(lib.s2e_result_token_count(results, i, h))],
                 "score": lib.s2e_result_score(results, i, h), "truncated": bool(lib.s2e_result_truncated(results, i, h))}
                for h in range(lib.s2e_result_hypotheses(results, i))]
        return {**hyps[0], "nbest": hyps, "source_truncated_from": lib.s2e_result_source_truncated_from(results, i) or None}

    def close(self) -> None:
        if self.handle:
            self.lib.s2e_model_free(self.handle)
            self.handle = c_void_p()

    def __del__(self):
        self.close()
