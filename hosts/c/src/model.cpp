#include "model.hpp"

#include <algorithm>
#include <cfenv>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <map>
#include <mutex>
#include <set>

#include <sys/stat.h>

#ifdef S2E_WITH_SENTENCEPIECE
#include <sentencepiece_processor.h>
#endif

#include "files.hpp"
#include "text.hpp"

namespace s2e {

namespace {
constexpr double GREEDY_GRAPH_BATCHED_SPEEDUP = 1.15;  // runtime/model.py: what export must have measured for "auto"
constexpr size_t GREEDY_GRAPH_MAX_BATCH = 1;
const char *const THREAD_DEPENDENT_OPS[] = {"DynamicQuantizeLSTM"};
constexpr float NEG_INF = -std::numeric_limits<float>::infinity();

// onnxruntime's own failure on a batch (its message's first line): the batch is retried input by input.
struct GraphRunError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

std::string first_line(const std::string &text) {
    std::string line = text.substr(0, text.find('\n'));
    while (!line.empty() && std::isspace(static_cast<unsigned char>(line.back()))) line.pop_back();
    size_t start = line.find_first_not_of(" \t\r");
    line = start == std::string::npos ? "" : line.substr(start);
    return utf8_encode(utf8_decode(utf8_problem(line).empty() ? line : "(not UTF-8)").substr(0, 200));
}

std::string option_hint(const std::string &keyword, const std::vector<std::string> &values, const std::string &style) {
    std::string out;
    if (style == "cli") {
        std::string flag = "--" + keyword;
        std::replace(flag.begin(), flag.end(), '_', '-');
        for (size_t i = 0; i < values.size(); ++i) out += (i ? " or " : "") + flag + " " + values[i];
        return out;
    }
    out = keyword + " = ";
    for (size_t i = 0; i < values.size(); ++i) out += (i ? " or " : "") + ("\"" + values[i] + "\"");
    return out;
}

InputError input_error(const std::string &problem, const std::string &keyword, const std::vector<std::string> &values,
                       const std::string &style) {
    return InputError(problem + " (to decode it anyway: " + option_hint(keyword, values, style) + ")");
}

std::string describe(const std::u32string &text) {
    const size_t limit = 40;
    return py_repr(utf8_encode(text.size() <= limit ? text : text.substr(0, limit - 3) + U"..."));
}

// Subnormal floats flushed to zero while onnxruntime computes on this thread (tiny weights run several times slower
// otherwise; docs/performance.md), and the caller's floating-point environment restored afterwards: one per decode
// and one per session creation. onnxruntime's own
// session option sets flush-to-zero once per process, on whichever thread creates the first session, and never undoes
// it: an app's own arithmetic on that thread would lose its subnormals.
class FlushSubnormals {
   public:
    FlushSubnormals() {
        std::fegetenv(&saved_);
#if defined(__x86_64__) || defined(__i386__)
        unsigned csr;
        __asm__ volatile("stmxcsr %0" : "=m"(csr));
        csr |= 0x8040u;  // FTZ and DAZ
        __asm__ volatile("ldmxcsr %0" : : "m"(csr));
#elif defined(__aarch64__)
        unsigned long long fpcr;
        __asm__ volatile("mrs %0, fpcr" : "=r"(fpcr));
        fpcr |= 1ull << 24;  // FZ
        __asm__ volatile("msr fpcr, %0" : : "r"(fpcr));
#endif
    }
    ~FlushSubnormals() { std::fesetenv(&saved_); }
    FlushSubnormals(const FlushSubnormals &) = delete;
    FlushSubnormals &operator=(const FlushSubnormals &) = delete;

   private:
    std::fenv_t saved_;
};

bool contains(const std::string &bytes, const char *needle) { return bytes.find(needle) != std::string::npos; }

template <typename T>
Ort::Value tensor(std::vector<T> &data, const std::vector<int64_t> &dims) {
    static const Ort::MemoryInfo cpu = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    return Ort::Value::CreateTensor<T>(cpu, data.data(), data.size(), dims.data(), dims.size());
}

Ort::Value bool_tensor(std::vector<unsigned char> &data, const std::vector<int64_t> &dims) {
    static const Ort::MemoryInfo cpu = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    return Ort::Value::CreateTensor(cpu, data.data(), data.size(), dims.data(), dims.size(),
                                    ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL);
}

template <typename T>
std::vector<T> values_of(Ort::Value &value) {
    auto info = value.GetTensorTypeAndShapeInfo();
    const T *data = value.GetTensorData<T>();
    return std::vector<T>(data, data + info.GetElementCount());
}

std::vector<Ort::Value> run(Ort::Session &session, const std::vector<const char *> &inputs, std::vector<Ort::Value> &values,
                            const std::vector<const char *> &outputs) {
    try {
        return session.Run(Ort::RunOptions{nullptr}, inputs.data(), values.data(), values.size(), outputs.data(), outputs.size());
    } catch (const Ort::Exception &err) {
        throw GraphRunError(first_line(err.what()));
    }
}

// Rows `index` of a row-major [rows, per] buffer.
template <typename T>
std::vector<T> take_rows(const std::vector<T> &data, size_t per, const std::vector<size_t> &index) {
    std::vector<T> out(index.size() * per);
    for (size_t i = 0; i < index.size(); ++i) std::memcpy(&out[i * per], &data[index[i] * per], per * sizeof(T));
    return out;
}

StateTensor state_of(Ort::Value &value) {
    auto info = value.GetTensorTypeAndShapeInfo();
    StateTensor t{info.GetElementType(), info.GetShape(), {}};
    const size_t width = t.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 ? sizeof(int64_t) : sizeof(float);
    const auto *data = static_cast<const unsigned char *>(value.GetTensorRawData());
    t.bytes.assign(data, data + info.GetElementCount() * width);
    return t;
}

Ort::Value state_value(StateTensor &t) {
    static const Ort::MemoryInfo cpu = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    if (t.bytes.empty()) t.bytes.reserve(1);  // an empty step axis: a tensor of no elements still needs an address
    return Ort::Value::CreateTensor(cpu, t.bytes.data(), t.bytes.size(), t.shape.data(), t.shape.size(), t.type);
}

// Rows `index` of every tensor of a state (beam reordering, finished rows dropped).
std::vector<StateTensor> take_state(const std::vector<StateTensor> &state, const std::vector<size_t> &index) {
    std::vector<StateTensor> out;
    for (const StateTensor &t : state) {
        const size_t rows = static_cast<size_t>(t.shape[0]), per = rows ? t.bytes.size() / rows : 0;
        StateTensor taken{t.type, t.shape, take_rows(t.bytes, per, index)};
        taken.shape[0] = static_cast<int64_t>(index.size());
        out.push_back(std::move(taken));
    }
    return out;
}

const char *element_name(ONNXTensorElementDataType type) {
    switch (type) {
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float";
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL: return "bool";
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
        case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "double";
        default: return "another type";
    }
}
}  // namespace

// ---------------------------------------------------------------- tokenisers

TextCodec::TextCodec(std::string kind, std::vector<std::string> vocab, bool lowercase, std::string space_symbol,
                     std::shared_ptr<sentencepiece::SentencePieceProcessor> spm)
    : kind_(std::move(kind)), vocab_(std::move(vocab)), lowercase_(lowercase), spm_(std::move(spm)) {
    space_ = kind_ == "char" ? space_symbol : "";
    for (size_t i = 0; i < vocab_.size(); ++i) {
        index_[vocab_[i]] = static_cast<long long>(i);
        if (i > 2) from_text_[vocab_[i]] = static_cast<long long>(i);  // <pad>, <s>, </s> are never text
    }
}

long long TextCodec::id(const std::string &token) const {
    auto at = index_.find(token);
    return at == index_.end() ? -1 : at->second;
}

std::vector<std::string> TextCodec::split(const std::string &raw) const {
    std::u32string text = py_strip(nfc(utf8_decode(raw)));
    if (lowercase_) text = py_lower(text);
    std::vector<std::string> out;
    if (kind_ == "char") {
        for (char32_t c : text) out.push_back(c == U' ' && !space_.empty() ? space_ : utf8_encode(c));
    } else if (kind_ == "word") {
        for (const auto &word : py_split(text)) out.push_back(utf8_encode(word));
    } else {
#ifdef S2E_WITH_SENTENCEPIECE
        if (!spm_->Encode(utf8_encode(text), &out).ok()) throw InputError("SentencePiece could not split this input");
#endif
    }
    return out;
}

std::string TextCodec::join(const std::vector<std::string> &tokens) const {
    std::string out;
    if (kind_ == "spm") {
#ifdef S2E_WITH_SENTENCEPIECE
        spm_->Decode(tokens, &out).IgnoreError();
#endif
        return out;
    }
    for (size_t i = 0; i < tokens.size(); ++i) {
        if (kind_ == "word" && i) out += ' ';
        out += kind_ == "char" && !space_.empty() && tokens[i] == space_ ? std::string(" ") : tokens[i];
    }
    if (kind_ == "char" && !space_.empty()) {  // Python replaces the symbol anywhere in the joined text
        std::string replaced;
        for (size_t at = 0; at < out.size();) {
            if (out.compare(at, space_.size(), space_) == 0) replaced += ' ', at += space_.size();
            else replaced += out[at++];
        }
        out = replaced;
    }
    return out;
}

std::pair<std::vector<std::string>, std::vector<long long>> TextCodec::encode(const std::string &text, const std::string &unknown,
                                                                             const std::string &style) const {
    std::vector<std::string> tokens = split(text);
    if (tokens.empty()) throw InputError("empty input");
    std::vector<long long> ids;
    std::vector<std::string> missing;
    for (const auto &t : tokens) {
        auto at = from_text_.find(t);
        ids.push_back(at == from_text_.end() ? -1 : at->second);
        if (at == from_text_.end() && std::find(missing.begin(), missing.end(), t) == missing.end()) missing.push_back(t);
    }
    if (missing.empty()) return {tokens, ids};
    const std::u32string shown_text = utf8_decode(text);
    if (unknown == "error") {
        std::string listed;
        for (size_t i = 0; i < missing.size(); ++i) listed += (i ? ", " : "") + py_repr(missing[i]);
        throw input_error(describe(shown_text) + ": not in the source vocabulary: " + listed, "unknown", {"unk", "skip"}, style);
    }
    std::vector<std::string> kept_tokens;
    std::vector<long long> kept_ids;
    for (size_t i = 0; i < tokens.size(); ++i) {
        if (ids[i] >= 0 || unknown == "unk") {
            kept_tokens.push_back(tokens[i]);
            kept_ids.push_back(ids[i] >= 0 ? ids[i] : index_.at("<unk>"));
        }
    }
    if (kept_tokens.empty()) throw InputError(describe(shown_text) + ": nothing left after skipping unknown tokens");
    return {kept_tokens, kept_ids};
}

// ---------------------------------------------------------------- loading

namespace {
// The ports of a graph against the contract, with runtime/engine.py's words: from the bytes at load, or from a session.
void check_ports(const std::vector<PortInfo> &inputs, const std::vector<PortInfo> &outputs, const std::string &kind,
                 const std::string &file, const Json &meta) {
    const auto sizes = axis_sizes(meta["model"]);
    std::set<std::string> dynamic;
    for (const Json &axis : contract()["dynamic_axes"]) dynamic.insert(axis.get<std::string>());
    for (const std::string role : {"input", "output"}) {
        const Json ports = state_ports(meta, kind, role + "s");
        const std::vector<PortInfo> &found = role == "input" ? inputs : outputs;
        std::vector<std::string> names, wanted;
        for (const auto &p : found) names.push_back(p.name);
        for (const Json &p : ports) wanted.push_back(p["name"]);
        std::sort(names.begin(), names.end());
        std::sort(wanted.begin(), wanted.end());
        names.erase(std::unique(names.begin(), names.end()), names.end());
        if (names != wanted) {
            throw BundleError(file + ": " + role + "s are " + shown(Json(names)) + ", the bundle format expects " + shown(Json(wanted)) +
                              "; re-export the bundle");
        }
        for (const Json &port : ports) {
            const std::string name = port["name"], dtype = port["dtype"];
            const PortInfo &arg = *std::find_if(found.begin(), found.end(), [&](const PortInfo &p) { return p.name == name; });
            if (arg.type != dtype) throw BundleError(file + ": " + role + " " + name + " is " + arg.type + ", expected " + dtype);
            const Json &axes = port["axes"];
            if (arg.dims.size() != axes.size()) {
                std::string listed;
                for (size_t k = 0; k < axes.size(); ++k)
                    listed += (k ? ", " : "") + (axes[k].is_string() ? axes[k].get<std::string>() : name + " axis " + std::to_string(k));
                throw BundleError(file + ": " + role + " " + name + " has " + std::to_string(arg.dims.size()) + " axes, expected " +
                                  std::to_string(axes.size()) + " (" + listed + ")");
            }
            for (size_t k = 0; k < axes.size(); ++k) {
                // a listed state tensor's fixed axis is its size, named after its port as runtime/interface.py names it
                const std::string axis = axes[k].is_string() ? axes[k].get<std::string>() : name + " axis " + std::to_string(k);
                const long long size = axes[k].is_string() ? (dynamic.count(axis) ? 0 : sizes.at(axis)) : axes[k].get<long long>();
                const long long dim = arg.dims[k];
                if (dim < 0) continue;
                if (!dynamic.count(axis) && dim != size) {
                    throw BundleError(file + ": " + role + " " + name + " has " + axis + " " + std::to_string(dim) +
                                      ", bundle.json's model says " + std::to_string(size));
                }
                if (dynamic.count(axis)) {
                    throw BundleError(file + ": " + role + " " + name + " has its " + axis + " axis fixed to " + std::to_string(dim) +
                                      "; it must be dynamic, re-export the bundle");
                }
            }
        }
    }
}

std::vector<PortInfo> session_ports(Ort::Session &session, bool inputs) {
    Ort::AllocatorWithDefaultOptions allocator;
    std::vector<PortInfo> out;
    size_t count = inputs ? session.GetInputCount() : session.GetOutputCount();
    for (size_t i = 0; i < count; ++i) {
        PortInfo port;
        port.name = inputs ? session.GetInputNameAllocated(i, allocator).get() : session.GetOutputNameAllocated(i, allocator).get();
        Ort::TypeInfo info = inputs ? session.GetInputTypeInfo(i) : session.GetOutputTypeInfo(i);
        if (info.GetONNXType() == ONNX_TYPE_TENSOR) {
            auto tensor_info = info.GetTensorTypeAndShapeInfo();
            port.type = element_name(tensor_info.GetElementType());
            for (int64_t d : tensor_info.GetShape()) port.dims.push_back(d);
        } else {
            port.type = "not a tensor";
        }
        out.push_back(port);
    }
    return out;
}

void check_owner(const OnnxScan &scan, const std::string &file, const std::string &bundle_id, const std::string &kind,
                 const std::string &precision) {
    auto get = [&](const char *key) -> std::optional<std::string> {
        auto at = scan.metadata.find(key);
        return at == scan.metadata.end() ? std::nullopt : std::optional<std::string>(at->second);
    };
    auto owner = get("seq2edge.bundle_id");
    if (owner.value_or("") != bundle_id) {
        throw BundleError(file + ": exported for bundle " + (owner && !owner->empty() ? *owner : "(none)") + ", but bundle.json is bundle " +
                          bundle_id + "; the graph comes from another export, re-export the bundle");
    }
    auto graph = get("seq2edge.graph");
    if (graph.value_or("") != kind) {
        throw BundleError(file + ": holds the " + (graph ? Json(*graph).dump() : "undefined") + " graph, expected the " + kind);
    }
    std::string graph_precision = get("seq2edge.precision").value_or(precision);
    if (graph_precision != precision) {
        throw BundleError(file + ": is a " + graph_precision + " graph, bundle.json lists it as " + precision + "; re-export the bundle");
    }
}
}  // namespace

// One bundle: its checked metadata and its graphs. Every graph is checked at load (sha256, owner, ports read from its
// bytes); its onnxruntime session is created on first use, so a one-word decode that the greedy graph serves never
// holds the step graphs' weights (as runtime/engine.py). ORT-format graphs, whose ports only a session tells, get
// their sessions at load.
struct Member {
    struct Graph {
        std::string file, sha256;
        bool ort_format = false, thread_dependent = false;
        std::once_flag once;
        std::unique_ptr<Ort::Session> session;
    };
    std::string name;
    Json meta;
    std::vector<std::string> state_inputs, state_outputs;  // the state's ports: "state"/"new_state", or a listed state's
    Ort::Env *env = nullptr;
    LoadOptions options;
    std::map<std::string, std::unique_ptr<Graph>> graphs;

    bool has(const std::string &kind) const { return graphs.count(kind) > 0; }

    // The graph's session, created from its file (verified at load) on first use.
    Ort::Session &session(const std::string &kind) {
        Graph &graph = *graphs.at(kind);
        std::call_once(graph.once, [&] {  // thread-safe; a failure leaves it to the next call
            if (!graph.session) graph.session = create(kind, graph, nullptr);
        });
        return *graph.session;
    }

    std::string read_verified(const Graph &graph) const {
        std::string bytes = read_bundle_file(name, graph.file);
        if (sha256_hex(bytes) != graph.sha256) {
            throw BundleError(graph.file + ": sha256 does not match bundle.json; the file is damaged or was replaced, re-export the bundle");
        }
        return bytes;
    }

    // A session of the graph from `bytes`, or from its file when bytes is null.
    std::unique_ptr<Ort::Session> create(const std::string &kind, const Graph &graph, const std::string *bytes) const {
        Ort::SessionOptions so;
        so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
        so.SetExecutionMode(ExecutionMode::ORT_SEQUENTIAL);
        so.SetInterOpNumThreads(1);
        const int threads = graph.thread_dependent ? 1 : options.threads;
        if (threads > 0) so.SetIntraOpNumThreads(threads);
        so.SetLogSeverityLevel(4);
        so.AddConfigEntry("session.set_denormal_as_zero", "1");
        so.AddConfigEntry("session.disable_quant_qdq", "1");
        if (graph.ort_format) so.AddConfigEntry("session.load_model_format", "ORT");
        std::unique_ptr<Ort::Session> session;
        try {
            FlushSubnormals flush;
            session = bytes ? std::make_unique<Ort::Session>(*env, bytes->data(), bytes->size(), so)
                            : std::make_unique<Ort::Session>(*env, (name + "/" + graph.file).c_str(), so);
        } catch (const Ort::Exception &err) {
            throw BundleError(graph.file + ": onnxruntime cannot load it (" + first_line(err.what()) + ")");
        }
        check_ports(session_ports(*session, true), session_ports(*session, false), kind, graph.file, meta);
        return session;
    }
};

namespace {
std::unique_ptr<Member> load_member(Ort::Env &env, const std::string &dir, const LoadOptions &o) {
    auto member = std::make_unique<Member>();
    member->name = dir;
    member->env = &env;
    member->options = o;
    Json &meta = member->meta;
    try {
        meta = parse_meta(read_bundle_file(dir, "bundle.json"));
        check_meta(meta);
    } catch (const BundleError &err) {  // name the bundle's own bundle.json, as the Python runtime does
        std::string message = err.what();
        throw BundleError(message.rfind("bundle.json", 0) == 0 ? dir + "/" + message : message);
    }
    member->state_inputs = state_port_names(meta, "inputs");
    member->state_outputs = state_port_names(meta, "outputs");
    if (!meta["graphs"].contains(o.precision)) {
        throw BundleError("bundle.json: no " + o.precision + " graphs in this bundle");
    }
    const Json &graphs = meta["graphs"][o.precision];
    if (o.greedy_graph == 1 && !graphs.contains("greedy")) {
        throw BundleError("bundle.json: no " + o.precision +
                          " greedy graph in this bundle; export it with `seq2edge export --greedy-graph`");
    }
    for (const std::string kind : {"encoder", "decoder", "greedy"}) {
        if (!graphs.contains(kind) || (kind == "greedy" && o.greedy_graph == 0)) continue;
        const Json &entry = graphs[kind];
        const bool has_ort = entry.contains("ort") && !entry["ort"].is_null();
        struct stat info {};  // auto: the .onnx graph when present, else its ORT-format copy (as runtime/engine.py)
        bool ort_format = o.graph_format == "ort" ||
                          (o.graph_format == "auto" && has_ort && ::lstat((dir + "/" + entry["file"].get<std::string>()).c_str(), &info) != 0);
        if (ort_format && !has_ort) {
            throw BundleError(entry["file"].get<std::string>() + ": this bundle has no ORT-format copy; export it with --ort");
        }
        const Json &file = ort_format ? entry["ort"] : entry;
        auto graph = std::make_unique<Member::Graph>();
        graph->file = file["file"];
        graph->sha256 = file["sha256"];
        graph->ort_format = ort_format;
        std::string bytes = member->read_verified(*graph);
        for (const char *op : THREAD_DEPENDENT_OPS)  // as runtime/engine.py: results that depend on the thread count
            graph->thread_dependent = graph->thread_dependent || contains(bytes, op);
        if (ort_format) {  // an .ort file is a flatbuffer: no external data, no metadata_props; its ports need a session
            graph->session = member->create(kind, *graph, &bytes);
        } else {
            OnnxScan scan = scan_onnx(bytes, graph->file);
            if (scan.external) throw BundleError(graph->file + ": stores weights in external files, which a bundle never does; refused");
            check_owner(scan, graph->file, meta["bundle_id"], kind, o.precision);
            auto [inputs, outputs] = onnx_ports(bytes, graph->file);
            check_ports(inputs, outputs, kind, graph->file, meta);
        }
        member->graphs[kind] = std::move(graph);
    }
    if (!member->has("encoder") || !member->has("decoder")) throw BundleError("bundle.json: the encoder and decoder are required");
    return member;
}

std::shared_ptr<sentencepiece::SentencePieceProcessor> load_spm(const std::string &dir, const Json &info, const std::string &side) {
    std::string file = info.contains("spm_model") && info["spm_model"].is_string() ? info["spm_model"].get<std::string>()
                                                                                   : side + ".spm.model";
#ifdef S2E_WITH_SENTENCEPIECE
    std::string bytes = read_bundle_file(dir, file);
    if (info.contains("spm_sha256") && info["spm_sha256"].is_string() && !info["spm_sha256"].get<std::string>().empty() &&
        sha256_hex(bytes) != info["spm_sha256"].get<std::string>()) {
        throw BundleError(file + ": sha256 does not match bundle.json; re-export the bundle");
    }
    auto spm = std::make_shared<sentencepiece::SentencePieceProcessor>();
    auto status = spm->LoadFromSerializedProto(bytes);
    if (!status.ok()) throw BundleError(file + ": not a valid SentencePiece model (" + status.ToString() + ")");
    return spm;
#else
    (void)dir;
    throw BundleError(file + ": this model uses a SentencePiece tokeniser, and this build of seq2edge-c has none "
                             "(build it where libsentencepiece-dev is installed)");
#endif
}
}  // namespace

Model::Model(const std::string &dir, const LoadOptions &o) : options_(o) {
    auto one_of = [](const char *name, const std::string &value, std::vector<std::string> allowed) {
        if (std::find(allowed.begin(), allowed.end(), value) != allowed.end()) return;
        std::string listed;
        for (size_t i = 0; i < allowed.size(); ++i) listed += (i ? ", " : "") + allowed[i];
        throw OptionError(std::string(name) + " must be one of " + listed + ", not " + py_repr(value));
    };
    one_of("precision", o.precision, contract()["precisions"].get<std::vector<std::string>>());
    one_of("graph_format", o.graph_format, {"auto", "onnx", "ort"});
    one_of("unknown", o.unknown, {"error", "unk", "skip"});
    one_of("too_long", o.too_long, {"error", "truncate"});
    one_of("option_style", o.option_style, {"c", "cli"});
    if (o.greedy_graph < -1 || o.greedy_graph > 1) throw OptionError("greedy_graph must be -1 (auto), 0 or 1");
    if (o.threads < 0) throw OptionError("threads must be 0 (onnxruntime's choice) or more");
    if (o.greedy_graph == 1 && !o.ensemble.empty()) {
        throw OptionError("a greedy graph holds one model, and an ensemble decodes step by step");
    }
    env_ = std::make_unique<Ort::Env>(ORT_LOGGING_LEVEL_FATAL, "seq2edge");
    members_.push_back(load_member(*env_, dir, o));
    for (const auto &other : o.ensemble) members_.push_back(load_member(*env_, other, o));
    meta_ = members_[0]->meta;
    config_ = meta_["model"];
    conventions_ = meta_["conventions"];
    for (size_t i = 1; i < members_.size(); ++i) {  // as the Python runtime's ensemble
        const Json &m = members_[i]->meta;
        for (const char *side : {"source", "target"}) {
            const Json &a = meta_[side], &b = m[side];
            if (a["tokenizer"] != b["tokenizer"] || a["lowercase"] != b["lowercase"] || a.value("spm_sha256", Json()) != b.value("spm_sha256", Json()) ||
                a["vocab"] != b["vocab"]) {
                throw BundleError(members_[i]->name + ": its " + side +
                                  " vocabulary or tokeniser differs from the first bundle's; an ensemble's members must share both");
            }
        }
        for (const char *id : {"pad_id", "bos_id", "eos_id", "unk_id"}) {
            if (m["model"][id] != config_[id]) throw BundleError(members_[i]->name + ": its special token ids differ from the first bundle's");
        }
        for (const char *limit : {"max_src_len", "max_tgt_len"})
            config_[limit] = std::min(config_[limit].get<long long>(), m["model"][limit].get<long long>());
    }
    std::string space = conventions_["space_symbol"];
    std::shared_ptr<sentencepiece::SentencePieceProcessor> spm[2];
    const char *sides[] = {"source", "target"};
    for (int s = 0; s < 2; ++s)
        if (meta_[sides[s]]["tokenizer"] == "spm") spm[s] = load_spm(dir, meta_[sides[s]], sides[s]);
    source_ = std::make_unique<TextCodec>(meta_["source"]["tokenizer"], meta_["source"]["vocab"].get<std::vector<std::string>>(),
                                          meta_["source"]["lowercase"].get<bool>(), space, spm[0]);
    target_ = std::make_unique<TextCodec>(meta_["target"]["tokenizer"], meta_["target"]["vocab"].get<std::vector<std::string>>(),
                                          false, space, spm[1]);
    for (const Json &t : conventions_["never_emit"]) never_.push_back(target_->id(t));
    double speedup = 0;
    const Json &parity = meta_.contains("parity") ? meta_["parity"] : Json::object();
    if (parity.contains(o.precision) && parity[o.precision].contains("greedy_graph") &&
        parity[o.precision]["greedy_graph"].contains("batched_speedup")) {
        speedup = parity[o.precision]["greedy_graph"]["batched_speedup"].get<double>();
    }
    greedy_graph_batches_ = speedup >= GREEDY_GRAPH_BATCHED_SPEEDUP;
    info_ = Json{{"model", config_}, {"conventions", conventions_}}.dump();
}

Model::~Model() = default;

// ---------------------------------------------------------------- decoding

struct Model::Source {
    size_t index;
    unsigned long long position;
    std::vector<long long> ids;
    std::vector<std::string> tokens;
    size_t truncated_from = 0;
};

struct Model::Limits {
    long long min_len, max_len;
    std::vector<float> open, early, end;  // additive masks [V]: 0 where allowed, -inf where not
    const std::vector<float> &bias(long long t) const { return t >= max_len ? end : t < min_len ? early : open; }
};

struct Model::Encoded {
    size_t rows, width;
    std::vector<std::vector<float>> memory;  // per member
    std::vector<std::vector<StateTensor>> state;  // per member: its state's tensors in the order of its ports
    std::vector<unsigned char> mask;
};

Model::Source Model::prepare(size_t index, const std::string &text) const {
    std::string problem = utf8_problem(text);
    if (!problem.empty()) throw InputError(problem);
    for (unsigned char c : text) {
        if ((c <= 0x08) || c == 0x0B || c == 0x0C || (c >= 0x0E && c <= 0x1F) || c == 0x7F) {
            char buf[64];
            std::snprintf(buf, sizeof buf, "control character U+%04X in the input", c);
            throw InputError(buf);
        }
    }
    auto [tokens, ids] = source_->encode(text, options_.unknown, options_.option_style);
    const long long eos_id = config_["eos_id"];
    const bool source_eos = conventions_["source_eos"].get<bool>();
    if (source_eos) {  // the model was trained with </s> after every source (it counts toward max_src_len)
        tokens.push_back(source_->tokens()[static_cast<size_t>(eos_id)]);
        ids.push_back(eos_id);
    }
    const size_t limit = config_["max_src_len"].get<size_t>();
    Source source{index, 0, ids, tokens, 0};
    if (ids.size() <= limit) return source;
    if (options_.too_long == "error") {
        throw input_error(std::to_string(ids.size()) + " source tokens, over the model's max_src_len of " + std::to_string(limit),
                          "too_long", {"truncate"}, options_.option_style);
    }
    size_t keep = limit - (source_eos ? 1 : 0);
    source.truncated_from = ids.size();
    source.ids.assign(ids.begin(), ids.begin() + static_cast<long>(keep));
    source.tokens.assign(tokens.begin(), tokens.begin() + static_cast<long>(keep));
    if (source_eos) {
        source.ids.push_back(ids.back());
        source.tokens.push_back(tokens.back());
    }
    return source;
}

Model::Limits Model::limits(const SearchOptions &o, size_t source_ids) const {
    const long long max_tgt = config_["max_tgt_len"];
    Limits l;
    l.max_len = o.max_len >= 0 ? o.max_len : convention_max_len(conventions_, source_ids, max_tgt);
    l.min_len = std::max<long long>(o.min_len, conventions_["min_len"].get<long long>());
    const size_t V = config_["tgt_vocab_size"].get<size_t>();
    l.open.assign(V, 0.0f);
    for (long long id : {config_["pad_id"].get<long long>(), config_["bos_id"].get<long long>()}) l.open[static_cast<size_t>(id)] = NEG_INF;
    for (long long id : never_) l.open[static_cast<size_t>(id)] = NEG_INF;
    l.early = l.open;
    l.early[config_["eos_id"].get<size_t>()] = NEG_INF;
    l.end.assign(V, NEG_INF);
    l.end[config_["eos_id"].get<size_t>()] = 0.0f;
    return l;
}

Model::Encoded Model::encode(const std::vector<const Source *> &chunk) const {
    Encoded enc;
    enc.rows = chunk.size();
    enc.width = 0;
    for (const Source *s : chunk) enc.width = std::max(enc.width, s->ids.size());
    std::vector<int64_t> ids(enc.rows * enc.width, config_["pad_id"].get<long long>()), lengths(enc.rows);
    enc.mask.assign(enc.rows * enc.width, 0);
    for (size_t r = 0; r < enc.rows; ++r) {
        for (size_t j = 0; j < chunk[r]->ids.size(); ++j) {
            ids[r * enc.width + j] = chunk[r]->ids[j];
            enc.mask[r * enc.width + j] = 1;
        }
        lengths[r] = static_cast<int64_t>(chunk[r]->ids.size());
    }
    const std::vector<const char *> in = {"src_ids", "src_lengths"};
    for (const auto &member : members_) {
        std::vector<const char *> out = {"memory"};
        for (const auto &name : member->state_inputs) out.push_back(name.c_str());
        std::vector<Ort::Value> values;
        values.push_back(tensor(ids, {static_cast<int64_t>(enc.rows), static_cast<int64_t>(enc.width)}));
        values.push_back(tensor(lengths, {static_cast<int64_t>(enc.rows)}));
        auto outs = run(member->session("encoder"), in, values, out);
        enc.memory.push_back(values_of<float>(outs[0]));
        std::vector<StateTensor> state;
        for (size_t k = 1; k < outs.size(); ++k) state.push_back(state_of(outs[k]));
        enc.state.push_back(std::move(state));
    }
    return enc;
}

// One decoder step of every member for the rows of `enc`: log-probs [rows, V] (the log of the members' mean
// probability for an ensemble, float32 as the Python runtime) and each member's new state.
std::vector<float> Model::step(const std::vector<long long> &prev, Encoded &enc, std::vector<std::vector<StateTensor>> &new_state) const {
    std::vector<int64_t> prev_ids(prev.begin(), prev.end());
    const auto n = static_cast<int64_t>(enc.rows), w = static_cast<int64_t>(enc.width);
    std::vector<std::vector<float>> all;
    new_state.clear();
    for (size_t m = 0; m < members_.size(); ++m) {
        const Member &member = *members_[m];
        std::vector<const char *> in = {"prev_ids"}, out = {"log_probs"};
        for (const auto &name : member.state_inputs) in.push_back(name.c_str());
        for (const auto &name : member.state_outputs) out.push_back(name.c_str());
        in.push_back("memory");
        in.push_back("src_mask");
        const size_t hidden = enc.memory[m].size() / std::max<size_t>(enc.rows * enc.width, 1);
        std::vector<Ort::Value> values;
        values.push_back(tensor(prev_ids, {n}));
        for (StateTensor &t : enc.state[m]) values.push_back(state_value(t));
        values.push_back(tensor(enc.memory[m], {n, w, static_cast<int64_t>(hidden)}));
        values.push_back(bool_tensor(enc.mask, {n, w}));
        auto outs = run(members_[m]->session("decoder"), in, values, out);
        all.push_back(values_of<float>(outs[0]));
        std::vector<StateTensor> state;
        for (size_t k = 1; k < outs.size(); ++k) state.push_back(state_of(outs[k]));
        new_state.push_back(std::move(state));
    }
    if (all.size() == 1) return std::move(all[0]);
    std::vector<float> mixed(all[0].size());
    const double count = static_cast<double>(all.size());
    for (size_t j = 0; j < mixed.size(); ++j) {  // log(mean(exp(x))) without overflow
        float top = NEG_INF;
        for (const auto &a : all) top = std::max(top, a[j]);
        if (!std::isfinite(top)) top = 0;
        double sum = 0;
        for (const auto &a : all) sum += std::exp(static_cast<double>(a[j]) - top);
        mixed[j] = static_cast<float>(top + std::log(sum / count));
    }
    return mixed;
}

namespace {
// A uniform number in [0, 1) from (seed, input position, step) via splitmix64, as runtime/search.py's _uniform.
double uniform(unsigned long long seed, unsigned long long position, unsigned long long t) {
    unsigned long long x = seed * 0x9E3779B97F4A7C15ULL + position * 0xBF58476D1CE4E5B9ULL + (t + 1) * 0x94D049BB133111EBULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    x ^= x >> 31;
    return static_cast<double>(x >> 11) / 9007199254740992.0;
}

std::vector<float> normalised(std::vector<float> probs) {
    float total = 0;
    for (float p : probs) total += p;
    for (float &p : probs) p /= total;
    return probs;
}

// One id drawn from softmax(row / temperature) within top_k and top_p, float32 as numpy (runtime/search.py's _sample).
size_t sample_id(std::vector<float> logits, const SearchOptions &o, double u) {
    const size_t V = logits.size();
    const float divisor = static_cast<float>(std::max(o.temperature, 1e-6));
    for (float &x : logits) x /= divisor;
    if (o.top_k > 0 && static_cast<size_t>(o.top_k) < V) {
        std::vector<float> sorted = logits;
        std::nth_element(sorted.begin(), sorted.begin() + static_cast<long>(V - static_cast<size_t>(o.top_k)), sorted.end());
        float kth = sorted[V - static_cast<size_t>(o.top_k)];
        for (float &x : logits)
            if (x < kth) x = NEG_INF;
    }
    float top = NEG_INF;
    for (float x : logits) top = std::max(top, x);
    std::vector<float> probs(V);
    for (size_t v = 0; v < V; ++v) probs[v] = std::exp(logits[v] - top);
    probs = normalised(probs);
    if (o.top_p < 1) {
        std::vector<size_t> order(V);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return probs[a] > probs[b]; });
        std::vector<float> kept(V, 0.0f);
        float cum = 0;
        const auto top_p = static_cast<float>(o.top_p);
        for (size_t v : order) {
            cum += probs[v];
            if (cum - probs[v] < top_p) kept[v] = probs[v];
        }
        probs = normalised(kept);
    }
    std::vector<float> cdf(V);
    float acc = 0;
    for (size_t v = 0; v < V; ++v) cdf[v] = acc += probs[v];
    const double threshold = u * static_cast<double>(cdf[V - 1]);
    size_t id = 0;
    for (float x : cdf)
        if (static_cast<double>(x) < threshold) ++id;
    size_t last = 0;  // never an id of zero probability through rounding at the top of the CDF
    for (size_t v = 0; v < V; ++v)
        if (probs[v] > 0) last = v;
    return std::min(id, last);
}
}  // namespace

std::vector<std::vector<Hypothesis>> Model::greedy(const std::vector<const Source *> &chunk, const Limits &limits,
                                                   const SearchOptions *draws) const {
    const size_t V = config_["tgt_vocab_size"];
    const long long bos = config_["bos_id"], eos = config_["eos_id"];
    Encoded enc = encode(chunk);
    std::vector<size_t> rows(chunk.size());
    std::iota(rows.begin(), rows.end(), 0);
    std::vector<long long> prev(chunk.size(), bos);
    std::vector<Hypothesis> out(chunk.size());
    std::vector<std::vector<StateTensor>> state;
    for (long long t = 0; !rows.empty(); ++t) {
        std::vector<float> log_probs = step(prev, enc, state);
        const std::vector<float> &bias = limits.bias(t);
        std::vector<size_t> keep;
        std::vector<long long> next;
        for (size_t r = 0; r < rows.size(); ++r) {
            size_t input = rows[r];
            size_t best = 0;
            float value = NEG_INF;
            if (draws) {
                std::vector<float> row(V);
                for (size_t v = 0; v < V; ++v) row[v] = log_probs[r * V + v] + bias[v];
                best = sample_id(row, *draws, uniform(draws->seed, chunk[input]->position, static_cast<unsigned long long>(t)));
                value = row[best];
            } else {
                bool found = false;
                for (size_t v = 0; v < V; ++v) {
                    float x = log_probs[r * V + v] + bias[v];
                    if (!found || x > value) value = x, best = v, found = true;  // strict: ties keep the lowest id
                }
            }
            out[input].score += static_cast<double>(value);
            if (static_cast<long long>(best) == eos) {
                out[input].truncated = t >= limits.max_len;
            } else {
                out[input].ids.push_back(static_cast<long long>(best));
                keep.push_back(r);
                next.push_back(static_cast<long long>(best));
            }
        }
        if (keep.size() < rows.size() && !keep.empty()) {
            for (size_t m = 0; m < members_.size(); ++m) {
                enc.state[m] = take_state(state[m], keep);
                enc.memory[m] = take_rows(enc.memory[m], enc.memory[m].size() / enc.rows, keep);
            }
            enc.mask = take_rows(enc.mask, enc.width, keep);
            enc.rows = keep.size();
        } else {
            enc.state = std::move(state);
        }
        std::vector<size_t> still;
        for (size_t r : keep) still.push_back(rows[r]);
        rows = still;
        prev = next;
    }
    std::vector<std::vector<Hypothesis>> hyps;
    for (auto &h : out) hyps.push_back({h});
    return hyps;
}

std::vector<std::vector<Hypothesis>> Model::greedy_graph(const std::vector<const Source *> &chunk, const Limits &limits) const {
    size_t width = 0;
    for (const Source *s : chunk) width = std::max(width, s->ids.size());
    std::vector<int64_t> ids(chunk.size() * width, config_["pad_id"].get<long long>()), lengths(chunk.size());
    for (size_t r = 0; r < chunk.size(); ++r) {
        std::copy(chunk[r]->ids.begin(), chunk[r]->ids.end(), ids.begin() + static_cast<long>(r * width));
        lengths[r] = static_cast<int64_t>(chunk[r]->ids.size());
    }
    std::vector<int64_t> max_len = {limits.max_len};
    std::vector<Ort::Value> values;
    values.push_back(tensor(ids, {static_cast<int64_t>(chunk.size()), static_cast<int64_t>(width)}));
    values.push_back(tensor(lengths, {static_cast<int64_t>(chunk.size())}));
    values.push_back(tensor(max_len, {}));
    auto outs = run(members_[0]->session("greedy"), {"src_ids", "src_lengths", "max_len"}, values, {"tokens", "lengths", "scores"});
    const auto steps = static_cast<size_t>(outs[0].GetTensorTypeAndShapeInfo().GetShape()[1]);
    const int64_t *tokens = outs[0].GetTensorData<int64_t>();
    const int64_t *found = outs[1].GetTensorData<int64_t>();
    const float *scores = outs[2].GetTensorData<float>();
    std::vector<std::vector<Hypothesis>> out;
    for (size_t r = 0; r < chunk.size(); ++r) {
        Hypothesis h;
        for (int64_t j = 0; j < found[r]; ++j) h.ids.push_back(tokens[r * steps + static_cast<size_t>(j)]);
        h.score = static_cast<double>(scores[r]);
        h.truncated = found[r] >= limits.max_len;
        out.push_back({h});
    }
    return out;
}

// Beam search over every input of the chunk at once, k rows per input, as runtime/search.py's beam(): the same rows in
// each onnxruntime call, so the same digits.
std::vector<std::vector<Hypothesis>> Model::beam(const std::vector<const Source *> &chunk, const Limits &limits,
                                                 const SearchOptions &o) const {
    const size_t V = config_["tgt_vocab_size"], k = static_cast<size_t>(o.beam_size), n = chunk.size();
    const long long bos = config_["bos_id"], eos = config_["eos_id"];
    const double inf = std::numeric_limits<double>::infinity();
    Encoded enc = encode(chunk);
    std::vector<size_t> items(n), rows;  // active inputs; the input of each hypothesis row
    std::iota(items.begin(), items.end(), 0);
    for (size_t i : items) rows.insert(rows.end(), k, i);
    auto keep_rows = [&](const std::vector<size_t> &index, std::vector<std::vector<StateTensor>> *state) {
        for (size_t m = 0; m < members_.size(); ++m) {
            enc.memory[m] = take_rows(enc.memory[m], enc.memory[m].size() / enc.rows, index);
            enc.state[m] = take_state(state ? (*state)[m] : enc.state[m], index);
        }
        enc.mask = take_rows(enc.mask, enc.width, index);
        enc.rows = index.size();
    };
    keep_rows(rows, nullptr);
    std::vector<double> scores(n * k, -inf);  // [active input][beam]
    for (size_t i = 0; i < n; ++i) scores[i * k] = 0;  // all beams start as the same <s>; keep one
    std::vector<std::vector<long long>> history(n * k);
    std::vector<long long> prev(n * k, bos);
    std::vector<std::vector<std::pair<double, Hypothesis>>> finished(n);
    std::vector<std::vector<double>> best_finished(n, std::vector<double>(k, -inf));  // per input, its k best ranks
    std::vector<std::vector<StateTensor>> state;
    const size_t width = std::min(2 * k, V);
    std::vector<std::pair<float, size_t>> row(V);
    for (long long t = 0; !items.empty();) {
        const size_t a = items.size();
        std::vector<float> log_probs = step(prev, enc, state);
        const std::vector<float> &bias = limits.bias(t);
        // per row, its best `width` (log-prob, id), best first, ties to the lower id
        std::vector<float> values(a * k * width);
        std::vector<long long> ids(a * k * width);
        for (size_t r = 0; r < a * k; ++r) {
            for (size_t v = 0; v < V; ++v) row[v] = {log_probs[r * V + v] + bias[v], v};
            std::partial_sort(row.begin(), row.begin() + static_cast<long>(width), row.end(),
                              [](const auto &x, const auto &y) { return x.first > y.first || (x.first == y.first && x.second < y.second); });
            for (size_t j = 0; j < width; ++j) {
                values[r * width + j] = row[j].first;
                ids[r * width + j] = static_cast<long long>(row[j].second);
            }
        }
        std::vector<size_t> new_origin;
        std::vector<double> new_scores;
        std::vector<std::vector<long long>> new_history;
        std::vector<long long> new_prev;
        const size_t places = k * width, top = std::min(2 * k, places);
        std::vector<size_t> order(places);
        std::vector<double> cand(places);
        for (size_t i = 0; i < a; ++i) {
            for (size_t p = 0; p < places; ++p) cand[p] = scores[i * k + p / width] + static_cast<double>(values[(i * k) * width + p]);
            std::iota(order.begin(), order.end(), 0);
            std::partial_sort(order.begin(), order.begin() + static_cast<long>(top), order.end(),
                              [&](size_t x, size_t y) { return cand[x] > cand[y] || (cand[x] == cand[y] && x < y); });
            size_t live = 0;
            for (size_t j = 0; j < top; ++j) {
                const size_t p = order[j], origin = i * k + p / width;
                const long long token = ids[(i * k) * width + p];
                if (token == eos) {
                    if (j < k && std::isfinite(cand[p])) {  // candidates ending in </s> within the first k places finish
                        Hypothesis h{history[origin], cand[p], t >= limits.max_len};
                        double rank = h.score / std::pow(static_cast<double>(h.ids.size() + 1), o.length_penalty);
                        finished[items[i]].emplace_back(rank, h);
                        auto &kept = best_finished[items[i]];
                        if (rank > kept[k - 1]) {
                            kept.push_back(rank);
                            std::stable_sort(kept.begin(), kept.end(), std::greater<double>());
                            kept.resize(k);
                        }
                    }
                } else if (live < k) {  // the first k candidates not ending in </s> become the new beams
                    ++live;
                    new_origin.push_back(origin);
                    new_scores.push_back(cand[p]);
                    new_history.push_back(history[origin]);
                    new_history.back().push_back(token);
                    new_prev.push_back(token);
                }
            }
        }
        scores = new_scores;
        history = new_history;
        prev = new_prev;
        for (size_t m = 0; m < members_.size(); ++m) enc.state[m] = take_state(state[m], new_origin);
        for (size_t m = 0; m < members_.size(); ++m)  // memory and mask follow the rows' inputs, as the state does
            enc.memory[m] = take_rows(enc.memory[m], enc.memory[m].size() / enc.rows, new_origin);
        enc.mask = take_rows(enc.mask, enc.width, new_origin);
        ++t;
        // Inputs whose search is over: past max_len, no live beam, or k finished that no live beam can beat.
        std::vector<size_t> keep_items, keep;
        for (size_t i = 0; i < a; ++i) {
            double best_live = *std::max_element(scores.begin() + static_cast<long>(i * k), scores.begin() + static_cast<long>((i + 1) * k));
            double bound = best_live / std::pow(static_cast<double>(t + 1), o.length_penalty);
            bool done = t > limits.max_len || !std::isfinite(best_live) || bound <= best_finished[items[i]][k - 1];
            if (done) continue;
            keep_items.push_back(items[i]);
            for (size_t b = 0; b < k; ++b) keep.push_back(i * k + b);
        }
        if (keep_items.size() < a) {
            items = keep_items;
            std::vector<double> s2;
            std::vector<std::vector<long long>> h2;
            std::vector<long long> p2;
            for (size_t r : keep) s2.push_back(scores[r]), h2.push_back(history[r]), p2.push_back(prev[r]);
            scores = s2, history = h2, prev = p2;
            if (!keep.empty()) keep_rows(keep, nullptr);
        }
    }
    std::vector<std::vector<Hypothesis>> out;
    for (auto &hyps : finished) {
        std::stable_sort(hyps.begin(), hyps.end(), [](const auto &x, const auto &y) { return x.first > y.first; });
        std::vector<Hypothesis> best;
        for (size_t i = 0; i < hyps.size() && i < static_cast<size_t>(o.nbest); ++i) best.push_back(hyps[i].second);
        out.push_back(best);
    }
    return out;
}

bool Model::greedy_graph_decodes(const SearchOptions &o, size_t rows) const {
    if (options_.greedy_graph == 0 || members_.size() > 1 || !members_[0]->has("greedy")) return false;
    if (o.beam_size > 1 || o.sample || o.min_len) return false;
    return options_.greedy_graph == 1 || rows <= GREEDY_GRAPH_MAX_BATCH || greedy_graph_batches_;
}

std::vector<std::vector<Hypothesis>> Model::search(const std::vector<const Source *> &chunk, const Limits &limits,
                                                   const SearchOptions &o) const {
    if (o.beam_size > 1) return beam(chunk, limits, o);
    if (greedy_graph_decodes(o, chunk.size())) return greedy_graph(chunk, limits);
    return greedy(chunk, limits, o.sample ? &o : nullptr);
}

std::vector<Result> Model::decode(const std::vector<std::string> &texts, const std::vector<unsigned long long> &positions,
                                  const SearchOptions &o) const {
    std::vector<std::string> problems;
    if (o.beam_size < 1) problems.push_back("beam_size must be at least 1");
    if (o.nbest < 1 || o.nbest > o.beam_size) problems.push_back("nbest must be between 1 and beam_size (" + std::to_string(o.beam_size) + ")");
    if (o.batch_size < 1) problems.push_back("batch_size must be at least 1");
    if (o.sample && o.beam_size > 1) problems.push_back("sampling and beam search cannot be combined; use beam_size 1 with sample");
    if (!(o.temperature > 0 && o.top_k >= 0 && o.top_p > 0 && o.top_p <= 1)) {
        problems.push_back("temperature must be > 0, top_k >= 0 and 0 < top_p <= 1");
    }
    if (o.max_len < -1 || o.min_len < 0) problems.push_back("max_len (-1: the bundle's) and min_len must not be negative");
    if (!std::isfinite(o.length_penalty)) problems.push_back("length_penalty must be a finite number");
    if (!positions.empty() && positions.size() != texts.size()) problems.push_back("positions must hold one number per text");
    if (!problems.empty()) {
        std::string all;
        for (size_t i = 0; i < problems.size(); ++i) all += (i ? "; " : "") + problems[i];
        throw OptionError(all);
    }
    FlushSubnormals flush;  // for every onnxruntime call of this decode, all on this thread
    std::vector<Result> results(texts.size());
    std::vector<Source> ready;
    for (size_t i = 0; i < texts.size(); ++i) {
        try {
            ready.push_back(prepare(i, texts[i]));
            ready.back().position = positions.empty() ? i : positions[i];
        } catch (const InputError &err) {
            results[i].error = err.what();
        }
    }
    std::stable_sort(ready.begin(), ready.end(), [](const Source &a, const Source &b) { return a.ids.size() < b.ids.size(); });
    const bool per_input = o.max_len < 0 && conventions_["max_len_ratio"].get<double>() > 0;
    const long long most = config_["max_tgt_len"];
    for (size_t start = 0, end; start < ready.size(); start = end) {
        Limits lim = limits(o, ready[start].ids.size());
        end = std::min(start + static_cast<size_t>(o.batch_size), ready.size());
        if (per_input) {
            for (size_t i = start + 1; i < end; ++i) {
                if (convention_max_len(conventions_, ready[i].ids.size(), most) != lim.max_len) {
                    end = i;
                    break;
                }
            }
        }
        std::vector<const Source *> chunk;
        for (size_t i = start; i < end; ++i) chunk.push_back(&ready[i]);
        std::vector<std::vector<Hypothesis>> found;
        std::vector<std::string> failed(chunk.size());
        try {
            found = search(chunk, lim, o);
        } catch (const GraphRunError &) {  // one input the graphs cannot take: decode the batch's inputs one by one
            found.clear();
            for (size_t i = 0; i < chunk.size(); ++i) {
                try {
                    found.push_back(search({chunk[i]}, lim, o)[0]);
                } catch (const GraphRunError &err) {
                    found.emplace_back();
                    failed[i] = std::string("the model failed on this input (onnxruntime: ") + err.what() + ")";
                }
            }
        }
        for (size_t i = 0; i < chunk.size(); ++i) {
            Result &r = results[chunk[i]->index];
            r.source_tokens = chunk[i]->ids.size();
            r.truncated_from = chunk[i]->truncated_from;
            if (!failed[i].empty()) {
                r.error = failed[i];
                continue;
            }
            for (const Hypothesis &h : found[i]) {
                Result::Hyp hyp{"", {}, h.score, h.truncated};
                for (long long id : h.ids) hyp.tokens.push_back(target_->tokens()[static_cast<size_t>(id)]);
                hyp.text = target_->join(hyp.tokens);
                r.hyps.push_back(std::move(hyp));
            }
        }
    }
    return results;
}

}  // namespace s2e
