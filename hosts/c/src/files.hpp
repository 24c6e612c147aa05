// Reading a bundle's files as runtime/bundle.py reads them, and the ONNX byte scans of runtime/onnx_scan.py.
#pragma once
#include <map>
#include <string>
#include <utility>
#include <vector>

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

struct PortInfo {
    std::string name, type;       // type as onnxruntime names element types: "float", "int64", "bool", ...
    std::vector<long long> dims;  // a size per fixed axis, -1 per dynamic one
};
// (inputs, outputs) of the model's main graph read from its bytes, as runtime/onnx_scan.py's ports(): what a
// session would report, without one (inputs that have an initializer are weights, not inputs).
std::pair<std::vector<PortInfo>, std::vector<PortInfo>> onnx_ports(const std::string &bytes, const std::string &file);

}  // namespace s2e
