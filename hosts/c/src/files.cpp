#include "files.hpp"

#include <openssl/evp.h>
#include <sys/stat.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <set>

#include "contract.hpp"

namespace s2e {

namespace {
std::string real_path(const std::string &path) {
    std::unique_ptr<char, decltype(&std::free)> real(::realpath(path.c_str(), nullptr), &std::free);
    if (!real) {
        int code = errno;
        if (code == ENOENT) throw BundleError(path + ": missing from the bundle");
        if (code == ELOOP) throw BundleError(path + ": cannot read: a symbolic link loop");
        throw BundleError(path + ": cannot read: " + std::strerror(code));
    }
    return real.get();
}

std::string parent(const std::string &path) {
    size_t slash = path.rfind('/');
    return slash == 0 ? "/" : slash == std::string::npos ? "." : path.substr(0, slash);
}

bool ends_with(const std::string &s, const std::string &tail) {
    return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}
}  // namespace

std::string read_bundle_file(const std::string &dir, const std::string &name) {
    const std::string path = dir + "/" + name;
    const std::string real = real_path(path);
    if (parent(real) != real_path(dir)) throw BundleError(path + ": points outside the bundle directory; refused");
    struct stat info {};
    if (::stat(real.c_str(), &info) != 0) throw BundleError(path + ": cannot read: " + std::strerror(errno));
    if (S_ISDIR(info.st_mode)) throw BundleError(path + ": is a directory, expected a file");
    if (!S_ISREG(info.st_mode)) throw BundleError(path + ": not a regular file; refused");
    const bool graph = ends_with(name, ".onnx") || ends_with(name, ".ort");
    const long long max_metadata = contract()["max_metadata_bytes"].get<long long>();
    const long long max_graph = contract()["max_graph_bytes"].get<long long>();
    if (!graph && info.st_size > max_metadata) {
        throw BundleError(path + ": larger than " + std::to_string(max_metadata >> 20) + " MB, far beyond any bundle's; refused");
    }
    if (graph && info.st_size > max_graph) throw BundleError(path + ": " + say("graph_too_large", {{"limit", max_graph}}));
    std::ifstream in(real, std::ios::binary);
    std::string bytes(static_cast<size_t>(info.st_size), '\0');
    if (!in.read(bytes.data(), info.st_size)) throw BundleError(path + ": cannot read: " + std::strerror(errno));
    return bytes;
}

std::string sha256_hex(const std::string &bytes) {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int size = 0;
    if (EVP_Digest(bytes.data(), bytes.size(), digest, &size, EVP_sha256(), nullptr) != 1) {
        throw std::runtime_error("sha256 failed");
    }
    static const char hex[] = "0123456789abcdef";
    std::string out;
    for (unsigned i = 0; i < size; ++i) {
        out += hex[digest[i] >> 4];
        out += hex[digest[i] & 15];
    }
    return out;
}

// ---------------------------------------------------------------- ONNX bytes, without an ONNX library

namespace {
struct Malformed : std::runtime_error {
    using std::runtime_error::runtime_error;
};

enum Kind { MODEL, GRAPH, FUNCTION, NODE, ATTRIBUTE, SPARSE, TENSOR };
// message -> {field number: message type}, for every path to a TensorProto (runtime/onnx_scan.py)
int child(Kind kind, unsigned long long field) {
    switch (kind) {
        case MODEL: return field == 7 ? GRAPH : field == 25 ? FUNCTION : -1;
        case GRAPH: return field == 1 ? NODE : field == 5 ? TENSOR : field == 15 ? SPARSE : -1;
        case FUNCTION: return field == 7 ? NODE : -1;
        case NODE: return field == 5 ? ATTRIBUTE : -1;
        case ATTRIBUTE:
            return field == 5 || field == 10 ? TENSOR : field == 6 || field == 11 ? GRAPH : field == 22 || field == 23 ? SPARSE : -1;
        case SPARSE: return field == 1 || field == 2 ? TENSOR : -1;
        default: return -1;
    }
}
constexpr unsigned TENSOR_EXTERNAL_DATA = 13, TENSOR_DATA_LOCATION = 14, MODEL_METADATA_PROPS = 14;

struct Field {
    unsigned long long number, wire, value;
    const char *data;
    size_t size;
};

class Reader {
   public:
    Reader(const char *data, size_t size) : p_(data), end_(data + size) {}
    bool next(Field &f) {
        if (p_ >= end_) return false;
        unsigned long long key = varint();
        f.number = key >> 3;
        f.wire = key & 7;
        f.data = nullptr;
        f.size = 0;
        if (f.wire == 0) {
            f.value = varint();
        } else if (f.wire == 1 || f.wire == 5) {
            size_t skip = f.wire == 1 ? 8 : 4;
            if (static_cast<size_t>(end_ - p_) < skip) throw Malformed("field runs past the end");
            p_ += skip;
        } else if (f.wire == 2) {
            unsigned long long length = varint();
            if (length > static_cast<unsigned long long>(end_ - p_)) throw Malformed("field runs past the end");
            f.data = p_;
            f.size = static_cast<size_t>(length);
            p_ += length;
        } else {
            throw Malformed("unknown wire type " + std::to_string(f.wire));
        }
        return true;
    }

   private:
    unsigned long long varint() {
        unsigned long long value = 0;
        for (int i = 0; i < 10; ++i) {
            if (p_ >= end_) throw Malformed("truncated varint");
            auto byte = static_cast<unsigned char>(*p_++);
            value |= static_cast<unsigned long long>(byte & 0x7F) << (7 * i);
            if (!(byte & 0x80)) return value;
        }
        throw Malformed("varint too long");
    }
    const char *p_;
    const char *end_;
};

bool external(const char *data, size_t size, Kind kind, long long depth, long long max_depth) {
    if (depth > max_depth) throw Malformed("messages nested more than " + std::to_string(max_depth) + " deep");
    Reader reader(data, size);
    Field f{};
    while (reader.next(f)) {
        if (kind == TENSOR && ((f.wire == 0 && f.number == TENSOR_DATA_LOCATION && f.value == 1) ||
                               (f.wire == 2 && f.number == TENSOR_EXTERNAL_DATA))) {
            return true;
        }
        int inner = f.wire == 2 ? child(kind, f.number) : -1;
        if (inner >= 0 && external(f.data, f.size, static_cast<Kind>(inner), depth + 1, max_depth)) return true;
    }
    return false;
}
}  // namespace

OnnxScan scan_onnx(const std::string &bytes, const std::string &file) {
    try {
        OnnxScan scan;
        Reader reader(bytes.data(), bytes.size());
        Field f{};
        while (reader.next(f)) {
            if (f.number != MODEL_METADATA_PROPS || f.wire != 2) continue;
            std::map<unsigned long long, std::string> pair;
            Reader entry(f.data, f.size);
            Field g{};
            while (entry.next(g))
                if (g.wire == 2) pair[g.number] = std::string(g.data, g.size);
            scan.metadata[pair[1]] = pair[2];
        }
        scan.external = external(bytes.data(), bytes.size(), MODEL, 1, contract()["max_onnx_depth"].get<long long>());
        return scan;
    } catch (const Malformed &err) {
        throw BundleError(file + ": not a valid ONNX model (" + err.what() + ")");
    }
}

namespace {
std::string element_type(unsigned long long code) {
    switch (code) {
        case 1: return "float";
        case 6: return "int32";
        case 7: return "int64";
        case 9: return "bool";
        case 10: return "float16";
        case 11: return "double";
        default: return std::to_string(code);
    }
}

// ValueInfoProto: name 1, type 2 -> TypeProto.tensor_type 1 -> elem_type 1, shape 2 -> dim 1 -> value 1 | param 2.
PortInfo value_info(const char *data, size_t size) {
    PortInfo port;
    unsigned long long element = 0;
    Reader reader(data, size);
    Field f{};
    while (reader.next(f)) {
        if (f.number == 1 && f.wire == 2) port.name.assign(f.data, f.size);
        if (f.number != 2 || f.wire != 2) continue;
        Reader type(f.data, f.size);
        Field t{};
        while (type.next(t)) {
            if (t.number != 1 || t.wire != 2) continue;
            Reader tensor(t.data, t.size);
            Field g{};
            while (tensor.next(g)) {
                if (g.number == 1 && g.wire == 0) element = g.value;
                if (g.number != 2 || g.wire != 2) continue;
                port.dims.clear();
                Reader shape(g.data, g.size);
                Field d{};
                while (shape.next(d)) {
                    if (d.number != 1 || d.wire != 2) continue;
                    long long dim = -1;
                    Reader dimension(d.data, d.size);
                    Field v{};
                    while (dimension.next(v))
                        if (v.number == 1 && v.wire == 0) dim = static_cast<long long>(v.value);
                    port.dims.push_back(dim);
                }
            }
        }
    }
    port.type = element_type(element);
    return port;
}
}  // namespace

std::pair<std::vector<PortInfo>, std::vector<PortInfo>> onnx_ports(const std::string &bytes, const std::string &file) {
    try {
        std::vector<PortInfo> inputs, outputs;
        std::set<std::string> initializers;
        Reader reader(bytes.data(), bytes.size());
        Field f{};
        while (reader.next(f)) {
            if (f.number != 7 || f.wire != 2) continue;  // ModelProto.graph
            Reader graph(f.data, f.size);
            Field g{};
            while (graph.next(g)) {
                if (g.wire != 2) continue;
                if (g.number == 11) inputs.push_back(value_info(g.data, g.size));
                if (g.number == 12) outputs.push_back(value_info(g.data, g.size));
                if (g.number == 5) {  // an initializer's name (TensorProto.name 8)
                    Reader tensor(g.data, g.size);
                    Field t{};
                    while (tensor.next(t))
                        if (t.number == 8 && t.wire == 2) initializers.insert(std::string(t.data, t.size));
                }
            }
        }
        std::vector<PortInfo> real;
        for (auto &p : inputs)
            if (!initializers.count(p.name)) real.push_back(std::move(p));
        return {real, outputs};
    } catch (const Malformed &err) {
        throw BundleError(file + ": not a valid ONNX model (" + err.what() + ")");
    }
}

}  // namespace s2e
