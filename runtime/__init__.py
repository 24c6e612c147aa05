"""seq2edge runtime: decode exported seq2seq bundles with onnxruntime (numpy + onnxruntime only)."""

from .errors import BundleError, InputError, ProviderError, Seq2EdgeError
from .model import Result, Seq2Seq

__all__ = ["Seq2Seq", "Result", "Seq2EdgeError", "BundleError", "InputError", "ProviderError"]
