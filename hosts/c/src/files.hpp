// Reading a bundle's files as runtime/bundle.py reads them, and the ONNX byte scans of runtime/onnx_scan.py.
#pragma once
#include <map>
#include <string>

namespace s2e {

// A file of the bundle: a regular file inside the bundle directory (never a FIFO or device, never a link out of it),
// bundle.json or a tokeniser model no larger than any bundle's, a graph no larger than ONNX allows. BundleError else.
std::string read_bundle_file(const std::string &dir, const std::string &name);
std::string sha256_hex(const std::string &bytes);

struct OnnxScan {
    bool external = false;                      // a tensor stores its data in another file
    std::map<std::string, std::string> metadata;  // the model's metadata_props
};
// BundleError naming `file` when the bytes are not an ONNX model (or nest deeper than the contract allows).
OnnxScan scan_onnx(const std::string &bytes, const std::string &file);

}  // namespace s2e
