"""`seq2edge info`: what a bundle is, what its graphs take and give, and what onnxruntime offers here."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import click

from .errors import BundleError
from .interface import BUNDLE_FILE, GRAPHS, OPTIONAL_GRAPHS, PRECISIONS

ORT_PACKAGES = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino", "onnxruntime-silicon")


def installed_onnxruntimes() -> dict[str, str]:
    """onnxruntime distributions installed side by side (they all provide the module `onnxruntime`)."""
    found = {}
    for name in ORT_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def diagnose_providers() -> list[str]:
    """Problems with the onnxruntime install that make a provider silently missing."""
    import onnxruntime as ort

    problems = []
    installed = installed_onnxruntimes()
    if len(installed) > 1:
        names = ", ".join(f"{k} {v}" for k, v in installed.items())
        problems.append(f"several onnxruntime packages are installed ({names}); they share the module `onnxruntime` and "
                        "overwrite each other: keep one (`pip uninstall -y onnxruntime onnxruntime-gpu` then reinstall the one you want)")
    if "CUDAExecutionProvider" in ort.get_available_providers() and not _cuda_loads():
        problems.append("CUDAExecutionProvider is listed but does not load (no NVIDIA driver/GPU, or the CUDA and cuDNN "
                        "libraries onnxruntime-gpu was built for are missing); sessions would run on the CPU")
    return problems


def _cuda_loads() -> bool:
    """Whether a CUDA session really activates, tried on the smallest valid graph onnxruntime accepts."""
    import onnxruntime as ort

    from .fpenv import flushing

    try:
        with flushing():
            session = ort.InferenceSession(IDENTITY_GRAPH, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    except Exception:
        return False
    return "CUDAExecutionProvider" in session.get_providers()


# A one-node Identity graph (IR 7, opset 13), serialised ONNX: x float [1] -> y. The runtime
# cannot import onnx to build it; tests/test_app_and_providers.py rebuilds it with onnx.helper and compares.
IDENTITY_GRAPH = bytes.fromhex(
    "08073a3b0a100a017812017922084964656e74697479120570726f62655a0f0a0178120a0a08080112040a"
    "020801620f0a0179120a0a08080112040a02080142040a00100d"
)


# The JavaScript host's packages, where this runtime runs from a checkout that has them (`make js`).
JS_PACKAGES = Path(__file__).resolve().parents[1] / "hosts" / "js" / "node_modules"


def onnxruntime_versions() -> dict[str, str | None]:
    """The onnxruntime each host decodes with: Python's, and the JavaScript host's onnxruntime-node and
    onnxruntime-web (None where hosts/js's packages are not installed next to this runtime)."""
    import onnxruntime as ort

    versions: dict[str, str | None] = {"onnxruntime (python)": ort.__version__}
    for package in ("onnxruntime-node", "onnxruntime-web"):
        try:
            versions[package] = json.loads((JS_PACKAGES / package / "package.json").read_text())["version"]
        except (OSError, ValueError, KeyError):
            versions[package] = None
    return versions


def describe_versions(versions: dict[str, str | None]) -> str:
    return ", ".join(f"{name} {version or 'not installed here'}" for name, version in versions.items())


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--precision", type=click.Choice(PRECISIONS), default=None, help="Only this precision's graphs.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def info(bundle: Path, precision: str | None, as_json: bool) -> None:
    """Show BUNDLE's metadata, its graphs' inputs and outputs, and the providers onnxruntime offers here."""
    import onnxruntime as ort

    from .bundle import bundle_file, load_bundle
    from .engine import Engine
    from .util import sha256_file

    b = load_bundle(bundle)
    report = {
        "bundle": str(b.path),
        "format_version": b.meta.format_version,
        "bundle_id": b.bundle_id,
        "created": b.meta.created,
        "model": b.config.to_dict(),
        "source": {"tokenizer": b.source.kind, "vocab_size": len(b.source.vocab)},
        "target": {"tokenizer": b.target.kind, "vocab_size": len(b.target.vocab)},
        "exported_with": b.meta.exported_with,
        "graphs": {},
        "parity": b.meta.parity,
        "onnxruntime": {"version": ort.__version__, "hosts": onnxruntime_versions(), "packages": installed_onnxruntimes(),
                        "available_providers": ort.get_available_providers(), "problems": diagnose_providers()},
    }
    damaged = []
    for p in [precision] if precision else b.precisions:
        kinds = [kind for kind in (*GRAPHS, *OPTIONAL_GRAPHS) if b.has_graph(kind, p)]
        graphs = {}
        for kind in kinds:
            entry = b.graph_entry(kind, p)
            try:
                digest = sha256_file(bundle_file(b.path, entry.file))
            except BundleError as exc:  # missing, a directory, not a regular file: said, and the others still shown
                digest, problem = None, str(exc)
            else:
                problem = None if digest == entry.sha256 else f"{entry.file}: sha256 does not match {BUNDLE_FILE}"
            graphs[kind] = {"file": entry.file, "bytes": entry.bytes, "sha256": digest,
                            "sha256_matches_bundle_json": digest == entry.sha256}
            if problem is not None:
                damaged.append(problem)
        if not damaged:
            engine = Engine(b, p, providers="cpu", greedy_graph=False)
            sessions = {kind: engine.sessions[kind] for kind in ("encoder", "decoder", *(["greedy"] if "greedy" in kinds else []))}
            for kind, session in sessions.items():
                graphs[kind].update(inputs=[_port(a) for a in session.get_inputs()],
                                    outputs=[_port(a) for a in session.get_outputs()])
        report["graphs"][p] = graphs
    if as_json:
        click.echo(json.dumps(report, indent=1, ensure_ascii=False))
    else:
        _print_text(report)
    if damaged:
        raise BundleError(f"{'; '.join(damaged)}; the bundle is damaged, re-export it")


def _port(arg) -> str:
    dims = ", ".join(str(d) if d is not None else "?" for d in arg.shape)
    return f"{arg.name}: {arg.type.removeprefix('tensor(').removesuffix(')')} [{dims}]"


def _architecture(m: dict) -> str:
    if "origin" in m:  # a model seq2edge did not train: only the contract's sizes are known
        attention = "" if m["attention_weights"] else "; no attention weights"
        return f"external ({m['origin']}): memory {m['memory_size']}, decoder state {m['state_size']}{attention}"
    return (f"{m['cell']} {m['layers']}-layer {'bi' if m['bidirectional'] else 'uni'}directional encoder, "
            f"{m['decoder_layers']}-layer decoder, {m['attention']} attention{', input feeding' if m['input_feed'] else ''}; "
            f"embed {m['embed']}, hidden {m['hidden']}")


def _print_text(r: dict) -> None:
    m = r["model"]
    click.echo(f"bundle      {r['bundle']}  (format {r['format_version']}, id {r['bundle_id']}, created {r['created']})")
    click.echo(f"model       {_architecture(m)}")
    click.echo(f"tokens      source {r['source']['tokenizer']} ({r['source']['vocab_size']}), "
               f"target {r['target']['tokenizer']} ({r['target']['vocab_size']}); max lengths {m['max_src_len']} / {m['max_tgt_len']}")
    if r["exported_with"]:
        click.echo("exported    " + ", ".join(f"{k} {v}" for k, v in r["exported_with"].items()))
    for precision, graphs in r["graphs"].items():
        parity = (r["parity"] or {}).get(precision)
        click.echo(f"{precision}")
        for g in graphs.values():
            size = f"{g['bytes'] / 1e6:.2f} MB" if g.get("bytes") else ""
            status = ("matches bundle.json" if g["sha256_matches_bundle_json"] else
                      "DOES NOT MATCH bundle.json" if g["sha256"] else "MISSING OR NOT A FILE")
            click.echo(f"  {g['file']}  {size}  sha256 {g['sha256']} ({status})")
            if "inputs" in g:
                click.echo(f"    in:  {'; '.join(g['inputs'])}")
                click.echo(f"    out: {'; '.join(g['outputs'])}")
        if parity:
            figures = {k: v for k, v in parity.items() if not isinstance(v, (list, dict))}
            click.echo("  parity: " + ", ".join(f"{k} {v}" for k, v in figures.items()))
    o = r["onnxruntime"]
    click.echo(f"onnxruntime {o['version']} ({', '.join(f'{k} {v}' for k, v in o['packages'].items())}); "
               f"providers offered here: {', '.join(o['available_providers'])}")
    click.echo(f"hosts       {describe_versions(o['hosts'])}")
    for problem in o["problems"]:
        click.echo(f"WARNING: {problem}")
