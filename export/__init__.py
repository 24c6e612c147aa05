"""Checkpoint or PyTorch module -> bundle (needs the [train] extra: torch, onnx).

    from seq2edge.export import export_model   # any module with encode() and step()
"""


def __getattr__(name: str):
    # Imported on first use, so that `import seq2edge.export.cli` stays cheap.
    if name == "export_model":
        from .external import export_model

        return export_model
    if name == "export_bundle":
        from .bundle import export_bundle

        return export_bundle
    raise AttributeError(f"module 'seq2edge.export' has no attribute {name!r}")
