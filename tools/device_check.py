"""Decode on an emulated ARM64 CPU and compare the tokens with x86's: `make device-check ARCH=aarch64`.

    python tools/device_check.py [--words N] [--cpus cortex-a72,cortex-a76] [--reduced] [--cache DIR]

It builds (once; then reuses from --cache, outside the repository) an aarch64 userland from Debian's and
PyPI's packages alone: qemu-aarch64-static from Debian's qemu-user-static (unpacked, called explicitly,
so no binfmt registration is needed), a bookworm arm64 sysroot with Python 3.11 and Node.js
(mmdebstrap, nothing configured or run), onnxruntime, numpy and click from their manylinux aarch64
wheels, and seq2edge's own wheel built from this checkout. The JavaScript host uses the onnxruntime-node
package of hosts/js, whose files include its linux/arm64 binary (`make js`). The native host (hosts/c) is
cross-compiled with Debian's aarch64 cross compiler (g++-aarch64-linux-gnu) against the sysroot's arm64
packages and the onnxruntime aarch64 wheel's library (`make c` first: it holds onnxruntime's C header).

On a fixed sample of CMUdict test words, tools/device_decode.py (Python), tools/device_decode.mjs
(Node) and seq2edge-c (the native host) decode with both shipped bundles in fp32 and int8 at batch 1 and 64 natively and under each
emulated CPU; the table compares every ARM run with the same host on x86. For a word that differs,
it shows x86's top-two margin (log-probability of the best token minus the second best) at the first
step where the two outputs part. The rule (docs/hosts.md, "Devices"): fp32 outputs equal x86's;
int8 outputs equal x86's except on near ties (margin under NEAR_TIE), on at most INT8_BOUND of the
words. Exit 0 when the rule holds, 1 when it does not, 2 when the environment cannot be built: then
it says SKIP loudly, and fails instead when SEQ2EDGE_REQUIRE names aarch64.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
from device_decode import decode_all, setting_key  # noqa: E402 - the decoding half, run natively for --compare

NATIVE = REPO / "hosts" / "c"
CROSS_CXX = "aarch64-linux-gnu-g++"
# What the sysroot holds besides the Python and Node hosts' needs: the native host's arm64 build dependencies.
NATIVE_PACKAGES = "libc6-dev,libstdc++-12-dev,nlohmann-json3-dev,libutf8proc-dev,libssl-dev,libsentencepiece-dev"
BUNDLES = {"g2p-en": REPO / "models" / "g2p-en", "g2p-en-small": REPO / "models" / "g2p-en-small",
           # Transformer parts (nn.TransformerEncoder, nn.MultiheadAttention): the conformance corpus's bundle
           "attention": REPO / "tests" / "conformance" / "bundles" / "attention",
           # a decoder with a key/value cache and an int64 prefix that grow a step per step (bundle format 3)
           "growing": REPO / "tests" / "conformance" / "bundles" / "growing"}
CPUS = ("cortex-a72", "cortex-a76")  # Raspberry Pi 4 class; Pi 5 class, with the dot-product instructions
# Near ties: the int8 differences measured between x86 and ARM had margins of 0.0009 and 0.022 at the first
# step where the outputs part; a tenth of a nat is far below any real preference of the model.
NEAR_TIE = 0.1
INT8_BOUND = 0.015  # the share of words int8 may decode differently batched (docs/export.md), here across CPUs
# /proc/cpuinfo as an ARM kernel writes it for each CPU: Debian's qemu 7.2 passes the x86 host's through, on
# which onnxruntime's cpuinfo library finds no ARM core and crashes; -L makes qemu read the sysroot's instead.
# It must describe the emulated CPU: told a Cortex-A76's part on a Cortex-A72, onnxruntime picks dot-product
# kernels the A72 lacks (SIGILL).
CPUINFO = {
    "cortex-a72": ("fp asimd evtstrm crc32 cpuid", "0x0", "0xd08", "3"),
    "cortex-a76": ("fp asimd evtstrm crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp", "0x4", "0xd0b", "1"),
}


def cpuinfo(cpu: str) -> str:
    features, variant, part, revision = CPUINFO[cpu]
    return (f"processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
            f"CPU architecture: 8\nCPU variant\t: {variant}\nCPU part\t: {part}\nCPU revision\t: {revision}\n\n")


class Unavailable(Exception):
    """A package archive (Debian, PyPI) could not be reached: the check cannot run here."""


@dataclass
class Environment:
    cache: Path

    @property
    def qemu(self) -> Path:
        return self.cache / "qemu" / "usr" / "bin" / "qemu-aarch64-static"

    @property
    def sysroot(self) -> Path:
        return self.cache / "sysroot"

    @property
    def site(self) -> Path:
        return self.cache / "site"

    def ensure(self) -> None:
        """Build what is missing; every step leaves its result in place only when it completed."""
        self.cache.mkdir(parents=True, exist_ok=True)
        if not self.qemu.exists():
            _run(["apt-get", "download", "qemu-user-static"], cwd=self.cache, what="Debian's qemu-user-static")
            deb = next(self.cache.glob("qemu-user-static_*.deb"))
            _run(["dpkg", "-x", str(deb), str(self.cache / "qemu")], what="unpacking qemu-user-static")
            deb.unlink()
        if self.sysroot.exists() and not (self.sysroot / "usr" / "include" / "utf8proc.h").exists():
            shutil.rmtree(self.sysroot)  # built before the native host joined the check
        if not (self.sysroot / "usr" / "bin" / "python3.11").exists():
            if shutil.which("mmdebstrap") is None:
                raise Unavailable("mmdebstrap is not installed (apt-get install mmdebstrap)")
            partial = self.cache / "sysroot.partial"
            shutil.rmtree(partial, ignore_errors=True)
            _run(["mmdebstrap", "--mode=root", "--variant=extract", "--arch=arm64",
                  f"--include=python3.11,libstdc++6,libgcc-s1,nodejs,{NATIVE_PACKAGES}",
                  "bookworm", str(partial)], what="a Debian bookworm arm64 sysroot")
            partial.rename(self.sysroot)
        if not (self.site / "onnxruntime").exists():
            self._install_wheels()

    def _install_wheels(self) -> None:
        from importlib import metadata

        pins = [f"onnxruntime=={metadata.version('onnxruntime')}", f"numpy=={metadata.version('numpy')}", "click"]
        platforms = [x for p in ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_17_aarch64",
                                 "manylinux2014_aarch64") for x in ("--platform", p)]
        partial = self.cache / "site.partial"
        shutil.rmtree(partial, ignore_errors=True)
        _run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target", str(partial), *platforms,
              "--python-version", "3.11", "--implementation", "cp", "--only-binary=:all:", *pins], what="aarch64 wheels from PyPI")
        partial.rename(self.site)

    def checkout_wheel(self, work: Path) -> Path:
        """seq2edge's runtime as a device installs it: the wheel built from this checkout, unpacked."""
        dist, target = work / "dist", work / "seq2edge-site"
        _run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps", "--no-build-isolation",
              "-w", str(dist), str(REPO)], what="seq2edge's wheel", unavailable=False)
        _run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", "--target", str(target),
              *map(str, dist.glob("seq2edge-*.whl"))], what="unpacking seq2edge's wheel", unavailable=False)
        return target

    def native_build(self) -> Path:
        """hosts/c cross-compiled for aarch64 into the cache (make keeps it until a source changes)."""
        if shutil.which(CROSS_CXX) is None:
            raise Unavailable(f"{CROSS_CXX} is not installed (apt-get install g++-aarch64-linux-gnu)")
        header = NATIVE / "build" / "onnxruntime" / "include"
        if not header.exists():
            raise RuntimeError("the native host's onnxruntime header is missing: run make c first")
        build = self.cache / "c-build"
        build.mkdir(exist_ok=True)
        library = next((self.site / "onnxruntime" / "capi").glob("libonnxruntime.so.1.*"))
        if not (build / library.name).exists():
            for old in build.glob("libonnxruntime.so*"):
                old.unlink()
            shutil.copy2(library, build / library.name)
            (build / "libonnxruntime.so.1").symlink_to(library.name)
        _run(["make", "-s", "-C", str(NATIVE), f"BUILD={build}", f"CXX={CROSS_CXX}", f"SYSROOT={self.sysroot}", f"ORT_INC={header}"],
             what="cross-compiling the native host", unavailable=False)
        return build

    def emulator(self, cpu: str) -> list[str]:
        """qemu as `cpu`, its libraries from the sysroot (runs of several CPUs take turns: the sysroot holds one cpuinfo)."""
        (self.sysroot / "proc").mkdir(exist_ok=True)
        (self.sysroot / "proc" / "cpuinfo").write_text(cpuinfo(cpu))
        return [str(self.qemu), "-cpu", cpu, "-L", str(self.sysroot)]

    def command(self, cpu: str, program: list[str]) -> list[str]:
        """`program`, a path inside the sysroot, under qemu as `cpu`."""
        return [*self.emulator(cpu), str(self.sysroot / program[0].lstrip("/")), *program[1:]]


def _run(command: list[str], what: str, cwd: Path | None = None, unavailable: bool = True) -> None:
    for _ in range(2 if unavailable else 1):  # a download gets a second chance: archives have bad seconds
        proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
        if proc.returncode == 0:
            return
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        if unavailable:
            raise Unavailable(f"{what}: {last}")
        raise RuntimeError(f"{what}: {last}")


def sample_words(count: int) -> list[str]:
    """Every k-th CMUdict test word, k chosen so that `count` of them spread over the whole split."""
    from seq2edge.train import corpus as C

    words = [e.source for e in C.split(C.load_cmudict().entries, "test")]
    step = max(1, len(words) // count)
    return words[::step][:count]


def settings_for(reduced: bool) -> list[dict]:
    small = [{"bundle": str(BUNDLES["g2p-en-small"]), "precision": p, "batch": b} for p in ("fp32", "int8") for b in (1, 64)]
    big = [{"bundle": str(BUNDLES["g2p-en"]), "precision": p, "batch": b} for p in ("fp32", "int8")
           for b in ((64,) if reduced else (1, 64))]
    transformers = [{"bundle": str(BUNDLES[name]), "precision": "fp32", "batch": b} for name in ("attention", "growing")
                    for b in (1, 64)]
    return small + big + transformers


def decode_on(env: Environment | None, cpu: str | None, host: str, words_file: Path, settings: list[dict], site: Path | None,
              timeout: float, native_build: Path | None = None) -> dict[str, list[str]]:
    """Run the host's decode script natively (env None) or under qemu with `cpu`."""
    if host == "c":
        return native_decode(env, cpu, words_file, settings, native_build, timeout)
    script = REPO / "tools" / ("device_decode.py" if host == "python" else "device_decode.mjs")
    native = [sys.executable] if host == "python" else ["node"]
    emulated = ["/usr/bin/python3.11", "-s"] if host == "python" else ["/usr/bin/node"]
    command = [*native, str(script)] if env is None else env.command(cpu, [*emulated, str(script)])
    environ = dict(os.environ)
    if env is not None and host == "python":  # the runtime as a device installs it: its wheel and the aarch64 ones
        environ["PYTHONPATH"] = f"{site}{os.pathsep}{env.site}"
    proc = subprocess.run([*command, str(words_file), json.dumps(settings)], capture_output=True, text=True, env=environ,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{host} on {cpu or 'x86-64'} failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout)


def native_decode(env: Environment | None, cpu: str | None, words_file: Path, settings: list[dict], build: Path | None,
                  timeout: float) -> dict[str, list[str]]:
    """seq2edge-c on each setting, as tools/device_decode.py decodes: x86's build natively, the cross-compiled one under qemu."""
    from device_decode import setting_key

    outputs = {}
    for setting in settings:
        program = [str(NATIVE / "build" / "seq2edge-c") if env is None else str(build / "seq2edge-c"), "decode", setting["bundle"],
                   "--input", str(words_file), "--precision", setting["precision"], "--batch-size", str(setting["batch"]),
                   "--threads", "1", "--unknown", "unk", "--too-long", "truncate", "--format", "jsonl"]
        command = program if env is None else [*env.emulator(cpu), *program]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"c on {cpu or 'x86-64'} failed: {proc.stderr.strip()[-2000:]}")
        outputs[setting_key(setting)] = [json.loads(line)["output"] for line in proc.stdout.splitlines()]
    return outputs


def first_step_margin(bundle: Path, precision: str, word: str, ours: str, theirs: str) -> float:
    """x86's log-probability gap between its best and second-best token at the first step where the
    two outputs part (teacher-forced along their common prefix, one word alone)."""
    import numpy as np

    from seq2edge.runtime import Seq2Seq

    model = Seq2Seq.load(bundle, providers="cpu", precision=precision, threads=1, greedy_graph=False, unknown="unk",
                         too_long="truncate")
    vocab = model.bundle.target.vocab
    a, b = ours.split(), theirs.split()
    common = 0
    while common < min(len(a), len(b)) and a[common] == b[common]:
        common += 1
    source = model.bundle.source.encode(word, "unk")[: model.config.max_src_len]
    stepper, state = model.stepper(np.array([source], dtype=np.int64), np.array([len(source)], dtype=np.int64))
    rows = np.zeros(1, dtype=np.int64)
    prev = model.config.bos_id
    for step in range(common + 1):
        result = stepper(np.array([prev], dtype=np.int64), state, rows)
        if step == common:
            log_probs = np.sort(result.log_probs(np.zeros(len(vocab), dtype=np.float32))[0])
            return float(log_probs[-1] - log_probs[-2])
        state = result.state
        prev = vocab.index[a[step]]
    raise AssertionError("unreachable")


@dataclass
class Row:
    host: str
    cpu: str
    setting: str
    words: int
    differing: list[tuple[str, str, str, float]]  # word, x86 output, ARM output, x86 margin

    @property
    def precision(self) -> str:
        return self.setting.split()[1]

    def breaks_rule(self) -> str | None:
        """Why this row breaks the device rule, or None."""
        if not self.differing:
            return None
        if self.precision == "fp32":
            return "fp32 outputs must equal x86's"
        far = [d for d in self.differing if d[3] >= NEAR_TIE]
        if far:
            return f"{len(far)} int8 difference(s) where x86 was not near a tie (margin >= {NEAR_TIE})"
        if len(self.differing) > INT8_BOUND * self.words:
            return f"{len(self.differing)} of {self.words} int8 outputs differ, over the {INT8_BOUND:.1%} bound"
        return None


def compare(reference: dict[str, list[str]], other: dict[str, list[str]], words: list[str], host: str, cpu: str) -> list[Row]:
    rows = []
    for setting, expected in reference.items():
        name, precision, _ = setting.split()
        differing = [(w, x, y, first_step_margin(BUNDLES[name], precision, w, x, y))
                     for w, x, y in zip(words, expected, other[setting]) if x != y]
        rows.append(Row(host, cpu, setting, len(words), differing))
    return rows


def print_table(rows: list[Row]) -> None:
    print(f"{'host':7s} {'cpu':11s} {'bundle':13s} {'precision':9s} {'batch':>5s} {'words':>6s} {'identical':>9s} "
          f"{'differing':>9s}  margins")
    for r in rows:
        name, precision, batch = r.setting.split()
        margins = ", ".join(f"{d[0]} {d[3]:.4f}" for d in r.differing)
        print(f"{r.host:7s} {r.cpu:11s} {name:13s} {precision:9s} {batch:>5s} {r.words:6d} {r.words - len(r.differing):9d} "
              f"{len(r.differing):9d}  {margins}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=int, default=1000, help="Sample size (fixed CMUdict test words).")
    parser.add_argument("--cpus", default=",".join(CPUS), help=f"Of {', '.join(CPUINFO)}.")
    parser.add_argument("--hosts", default="python,node,c")
    parser.add_argument("--reduced", action="store_true", help="The big bundle at batch 64 only (the CI check).")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) /
                        "seq2edge-device" / "aarch64")
    parser.add_argument("--timeout", type=float, default=1800, help="Seconds per emulated run.")
    parser.add_argument("--write-inputs", type=Path, metavar="DIR",
                        help="Write the sample (words.txt) and the settings (settings.json) to DIR, for a real board, and stop.")
    parser.add_argument("--compare", type=Path, metavar="OUTPUTS_JSON",
                        help="Compare what tools/device_decode.py printed on a real board with x86 (no emulation).")
    args = parser.parse_args(argv)
    words, settings = sample_words(args.words), settings_for(args.reduced)
    if args.write_inputs is not None:
        args.write_inputs.mkdir(parents=True, exist_ok=True)
        (args.write_inputs / "words.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
        relative = [{**s, "bundle": str(Path(s["bundle"]).relative_to(REPO))} for s in settings]
        (args.write_inputs / "settings.json").write_text(json.dumps(relative) + "\n")
        return 0
    if args.compare is not None:

        board = json.loads(args.compare.read_text())
        reference = decode_all(words, [s for s in settings if setting_key(s) in board])
        return report(compare(reference, board, words, "python", "board"))
    env = Environment(args.cache)
    try:
        env.ensure()
    except Unavailable as exc:
        required = "aarch64" in os.environ.get("SEQ2EDGE_REQUIRE", "").split(",")
        print(f"device-check: {'FAILED' if required else 'SKIP'}: the aarch64 environment cannot be built here: {exc}",
              file=sys.stderr)
        return 1 if required else 2
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="device-check.") as tmp:
        work = Path(tmp)
        words_file = work / "words.txt"
        words_file.write_text("\n".join(words) + "\n", encoding="utf-8")
        site = env.checkout_wheel(work)
        hosts = args.hosts.split(",")
        try:
            build = env.native_build() if "c" in hosts else None
        except Unavailable as exc:
            required = "aarch64" in os.environ.get("SEQ2EDGE_REQUIRE", "").split(",")
            print(f"device-check: {'FAILED' if required else 'SKIP'}: the native host cannot be cross-compiled here: {exc}",
                  file=sys.stderr)
            return 1 if required else 2
        for host in hosts:
            reference = decode_on(None, None, host, words_file, settings, None, args.timeout)
            for cpu in args.cpus.split(","):
                rows += compare(reference, decode_on(env, cpu, host, words_file, settings, site, args.timeout, build), words, host, cpu)
    return report(rows)


def report(rows: list[Row]) -> int:
    """Print the table; 1 when a row breaks the rule (each named on stderr), else 0."""
    print_table(rows)
    broken = [f"{r.host} on {r.cpu}, {r.setting}: {r.breaks_rule()}" for r in rows if r.breaks_rule()]
    for line in broken:
        print(f"device-check: RULE BROKEN: {line}", file=sys.stderr)
    return 1 if broken else 0



if __name__ == "__main__":
    sys.exit(main())
