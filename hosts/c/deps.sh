#!/usr/bin/env bash
# The native host's dependencies, from packages (docs/hosts.md, "C and C++"):
# - a C++17 compiler, nlohmann-json (JSON), utf8proc (NFC, case, Unicode categories), OpenSSL's libcrypto (sha256) and
#   SentencePiece, from Debian (apt-get, where one is missing);
# - onnxruntime's C API header, from Debian's libonnxruntime-dev (trixie, API version 21; the header only, checked
#   against its sha256): onnxruntime keeps every older API version, so it drives the newer library below;
# - libonnxruntime.so from the onnxruntime wheel the Python runtime uses (PYTHON), copied beside the library: the
#   three hosts then run one onnxruntime build, so the conformance corpus holds them to the same digits.
set -euo pipefail
cd "$(dirname "$0")"
BUILD=${BUILD:-build}
PYTHON=${PYTHON:-../../.venv/bin/python}
ORT_DEB_URL=${ORT_DEB_URL:-https://deb.debian.org/debian/pool/main/o/onnxruntime/libonnxruntime-dev_1.21.0+dfsg-1_amd64.deb}
ORT_DEB_SHA256=14f7d959d5deacbcf1504830d4189f91fc67382b399ed9ae9d3aa9c4050ced08

missing=()
command -v g++ >/dev/null || missing+=(g++)
command -v curl >/dev/null || missing+=(curl)
test -e /usr/include/nlohmann/json.hpp || missing+=(nlohmann-json3-dev)
test -e /usr/include/utf8proc.h || missing+=(libutf8proc-dev)
test -e /usr/include/openssl/evp.h || missing+=(libssl-dev)
test -e /usr/include/sentencepiece_processor.h || missing+=(libsentencepiece-dev)
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo "sudo")
    echo "installing ${missing[*]} (Debian packages the native host builds with)"
    ($SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null) || {
        echo "could not install ${missing[*]}: install them, then run make c again" >&2
        exit 1
    }
fi

mkdir -p "$BUILD"
if [ ! -e "$BUILD/onnxruntime/include/onnxruntime_c_api.h" ]; then
    deb="$BUILD/libonnxruntime-dev.deb"
    curl -fsSL -o "$deb" "$ORT_DEB_URL"
    echo "$ORT_DEB_SHA256  $deb" | sha256sum -c --quiet - || { echo "$deb: sha256 differs from the pinned one; refused" >&2; rm -f "$deb"; exit 1; }
    rm -rf "$BUILD/deb" && mkdir -p "$BUILD/deb" "$BUILD/onnxruntime"
    dpkg-deb -x "$deb" "$BUILD/deb"
    rm -rf "$BUILD/onnxruntime/include" && cp -r "$BUILD/deb/usr/include/onnxruntime" "$BUILD/onnxruntime/include"
    rm -rf "$BUILD/deb" "$deb"
fi

if [ -z "${ORT_LIB:-}" ]; then
    ORT_LIB=$("$PYTHON" -c "import glob, os, onnxruntime; print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi', 'libonnxruntime.so.1*')))[-1])")
fi
rm -f "$BUILD"/libonnxruntime.so*
cp "$ORT_LIB" "$BUILD/"
soname=$(objdump -p "$BUILD/$(basename "$ORT_LIB")" 2>/dev/null | sed -n 's/ *SONAME *//p')
[ -z "$soname" ] || [ "$soname" = "$(basename "$ORT_LIB")" ] || ln -sf "$(basename "$ORT_LIB")" "$BUILD/$soname"
