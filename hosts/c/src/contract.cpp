#include "contract.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>

#include "text.hpp"

namespace s2e {

namespace {
const char *const CONTRACT_TEXT =
#include "bundle_contract.inc"
    ;

[[noreturn]] void fail(const std::string &message, const Json &values = Json::object()) {
    throw BundleError("bundle.json: " + say(message, values));
}
[[noreturn]] void fail_model(const std::string &message, const Json &values = Json::object()) {
    throw BundleError("bundle.json (model): " + say(message, values));
}

bool has(const Json &object, const std::string &key) { return object.is_object() && object.contains(key); }

// Placeholders that hold words (a field's name, a side, joined problems), not values to quote (contract.py's _TEXT).
const std::set<std::string> TEXT_PLACEHOLDERS = {"name", "side", "problems", "precision", "choices"};
}  // namespace

const Json &contract() {
    static const Json parsed = Json::parse(CONTRACT_TEXT);  // thread-safe initialisation (C++11 magic statics)
    return parsed;
}

std::string shown(const Json &value) {
    switch (value.type()) {
        case Json::value_t::string: return py_repr(value.get<std::string>());
        case Json::value_t::boolean: return value.get<bool>() ? "True" : "False";
        case Json::value_t::null: return "None";
        case Json::value_t::number_integer: return std::to_string(value.get<long long>());
        case Json::value_t::number_unsigned: return std::to_string(value.get<unsigned long long>());
        case Json::value_t::number_float: return py_float(value.get<double>());
        case Json::value_t::array: {
            std::string out = "[";
            for (size_t i = 0; i < value.size(); ++i) out += (i ? ", " : "") + shown(value[i]);
            return out + "]";
        }
        case Json::value_t::object: {
            std::string out = "{";
            bool first = true;
            for (const auto &[k, v] : value.items()) {
                out += (first ? "" : ", ") + py_repr(k) + ": " + shown(v);
                first = false;
            }
            return out + "}";
        }
        default: return "None";
    }
}

std::string say(const std::string &message, const Json &values) {
    const std::string templ = contract()["messages"][message].get<std::string>();
    std::string out;
    for (size_t i = 0; i < templ.size(); ++i) {
        size_t close = templ[i] == '{' ? templ.find('}', i) : std::string::npos;
        if (close == std::string::npos) {
            out += templ[i];
            continue;
        }
        std::string key = templ.substr(i + 1, close - i - 1);
        const Json &value = values.contains(key) ? values[key] : Json();
        out += value.is_string() && TEXT_PLACEHOLDERS.count(key) ? value.get<std::string>() : shown(value);
        i = close;
    }
    return out;
}

bool plain_name(const Json &name) {
    if (!name.is_string()) return false;
    std::string s = name.get<std::string>();
    return !s.empty() && s.find('/') == std::string::npos && s.find('\\') == std::string::npos && s[0] != '.';
}

// ---------------------------------------------------------------- bundle.json's bytes

namespace {
// The line of byte `offset` (1-based), as Python's json module counts.
size_t line_of(const std::string &text, size_t offset) {
    return 1 + static_cast<size_t>(std::count(text.begin(), text.begin() + static_cast<long>(std::min(offset, text.size())), '\n'));
}
}  // namespace

namespace {
bool word_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

// The first NaN, Infinity or -Infinity standing alone in JSON text whose strings are emptied (Python's json module
// reads them; JSON has no such numbers), or "".
std::string non_json_constant(const std::string &bare) {
    size_t first = std::string::npos;
    std::string found;
    for (const char *word : {"NaN", "Infinity"}) {
        const size_t n = std::strlen(word);
        for (size_t at = bare.find(word); at != std::string::npos && at < first; at = bare.find(word, at + 1)) {
            size_t start = at > 0 && bare[at - 1] == '-' && word[0] == 'I' ? at - 1 : at;
            bool alone_before = start == 0 || !(word_char(bare[start - 1]) || bare[start - 1] == '.');
            bool alone_after = at + n >= bare.size() || !word_char(bare[at + n]);
            if (alone_before && alone_after) {
                first = start;
                found = bare.substr(start, at + n - start);
                break;
            }
        }
    }
    return found;
}
}  // namespace

Json parse_meta(const std::string &bytes) {
    if (!utf8_problem(bytes).empty()) throw BundleError("bundle.json: not UTF-8 text");
    const long long max_depth = contract()["max_json_depth"].get<long long>();
    // Depth first, outside strings, so a deeply nested file never reaches the parser's recursion.
    long long depth = 0;
    bool in_string = false;
    std::string bare;  // strings emptied: only structure and literals left
    for (size_t i = 0; i < bytes.size(); ++i) {
        char c = bytes[i];
        if (in_string) {
            if (c == '\\') ++i;
            else if (c == '"') in_string = false, bare += '"';
            continue;
        }
        bare += c;
        if (c == '"') in_string = true;
        else if (c == '[' || c == '{') ++depth;
        else if (c == ']' || c == '}') --depth;
        if (depth > max_depth) throw BundleError("bundle.json: " + say("too_deep", {{"limit", max_depth}}));
    }
    try {
        return Json::parse(bytes);
    } catch (const Json::parse_error &err) {
        std::string constant = non_json_constant(bare);
        if (!constant.empty()) throw BundleError("bundle.json: " + constant + " is not a JSON number; re-export the bundle");
        throw BundleError("bundle.json: not valid JSON (line " + std::to_string(line_of(bytes, err.byte ? err.byte - 1 : 0)) +
                          ")");
    }
}

// ---------------------------------------------------------------- fields, from the contract's specs

namespace {
std::string type_problem(const Json &spec, const Json &value) {
    const std::string type = spec["type"];
    bool ok = false;
    if (type == "int") ok = value.is_number_integer();
    else if (type == "bool") ok = value.is_boolean();
    else if (type == "float") ok = value.is_number() && std::isfinite(value.get<double>());
    else if (type == "str") ok = value.is_string();
    else if (type == "list[str]") {
        ok = value.is_array() && std::all_of(value.begin(), value.end(),
                                             [](const Json &t) { return t.is_string() && !t.get<std::string>().empty(); });
    }
    if (ok) return "";
    std::string message = type == "list[str]" ? "type_list_str" : "type_" + type;
    return say(message, {{"name", spec["name"]}, {"value", value}});
}

// Python compares numbers by value, whatever their JSON spelling.
double number(const Json &value) { return value.get<double>(); }

std::string range_problem(const Json &spec, const Json &value) {
    const Json &name = spec["name"];
    if (spec.contains("choices")) {
        const Json &choices = spec["choices"];
        if (std::find(choices.begin(), choices.end(), value) == choices.end()) {
            std::string joined;
            for (size_t i = 0; i < choices.size(); ++i) joined += (i ? ", " : "") + choices[i].get<std::string>();
            return say("choices", {{"name", name}, {"choices", joined}, {"value", value}});
        }
    }
    bool exclusive = spec.value("max_exclusive", false);
    if (spec.contains("max")) {
        double low = number(spec["min"]), high = number(spec["max"]), v = number(value);
        if (!(v >= low && (exclusive ? v < high : v <= high))) {
            return say(exclusive ? "in_open_range" : "in_range", {{"name", name}, {"min", spec["min"]}, {"max", spec["max"]}, {"value", value}});
        }
    }
    if (spec.contains("min") && !spec.contains("max") && number(value) < number(spec["min"])) {
        return say("at_least", {{"name", name}, {"min", spec["min"]}, {"value", value}});
    }
    if (spec.contains("max_chars") && utf8_decode(value.get<std::string>()).size() > spec["max_chars"].get<size_t>()) {
        return say("max_chars", {{"name", name}, {"max_chars", spec["max_chars"]}, {"value", value}});
    }
    return "";
}

std::vector<std::string> field_problems(const Json &specs, const Json &values) {
    std::vector<std::string> types, ranges;
    for (const Json &spec : specs) {
        std::string p = type_problem(spec, values[spec["name"].get<std::string>()]);
        if (!p.empty()) types.push_back(p);
    }
    if (!types.empty()) return types;
    for (const Json &spec : specs) {
        std::string p = range_problem(spec, values[spec["name"].get<std::string>()]);
        if (!p.empty()) ranges.push_back(p);
    }
    return ranges;
}

std::string joined(const std::vector<std::string> &problems, const char *separator = "; ") {
    std::string out;
    for (size_t i = 0; i < problems.size(); ++i) out += (i ? separator : "") + problems[i];
    return out;
}

Json with_defaults(const Json &specs, const Json &given) {
    Json out = Json::object();
    for (const Json &spec : specs) {
        const std::string name = spec["name"];
        if (given.contains(name)) out[name] = given[name];
        else if (spec.contains("default")) out[name] = spec["default"];
    }
    return out;
}

std::vector<std::string> unknown_keys(const Json &specs, const Json &given) {
    std::set<std::string> names;
    for (const Json &spec : specs) names.insert(spec["name"].get<std::string>());
    std::vector<std::string> unknown;
    for (const auto &item : given.items())
        if (!names.count(item.key())) unknown.push_back(item.key());
    std::sort(unknown.begin(), unknown.end());
    return unknown;
}

Json special_ids(const Json &m) {
    return {{"pad", m["pad_id"]}, {"bos", m["bos_id"]}, {"eos", m["eos_id"]}, {"unk", m["unk_id"]}};
}

std::string rule_problem(const std::string &rule, const Json &m) {
    if (rule == "even_hidden") return m["bidirectional"].get<bool>() && m["hidden"].get<long long>() % 2 ? say("even_hidden") : "";
    if (rule == "origin_named") return m["origin"].get<std::string>().empty() ? say("origin_named") : "";
    if (rule == "special_ids") {
        long long smallest = std::min(m["src_vocab_size"].get<long long>(), m["tgt_vocab_size"].get<long long>());
        std::set<long long> seen;
        bool bad = false;
        for (const char *id : {"pad_id", "bos_id", "eos_id", "unk_id"}) {
            long long v = m[id].get<long long>();
            bad = bad || v < 0 || v >= smallest || !seen.insert(v).second;
        }
        return bad ? say("special_ids", {{"ids", special_ids(m)}, {"src_vocab_size", m["src_vocab_size"]},
                                         {"tgt_vocab_size", m["tgt_vocab_size"]}})
                   : "";
    }
    throw BundleError("bundle contract names an unknown rule " + rule);
}

Json check_model(const Json &model) {
    const Json &kinds = contract()["model"];
    const Json &kind = model.contains(kinds["external"]["marker"].get<std::string>()) ? kinds["external"] : kinds["own"];
    std::vector<std::string> unknown = unknown_keys(kind["fields"], model);
    if (!unknown.empty()) fail_model("unknown_model_keys", {{"keys", unknown}});
    for (const Json &spec : kind["fields"]) {
        if (spec.value("required", false) && !model.contains(spec["name"].get<std::string>())) {
            fail_model("missing_field", {{"name", spec["name"]}});
        }
    }
    Json m = with_defaults(kind["fields"], model);
    std::vector<std::string> problems = field_problems(kind["fields"], m);
    if (problems.empty()) {
        for (const Json &rule : kind["rules"]) {
            std::string p = rule_problem(rule.get<std::string>(), m);
            if (!p.empty()) problems.push_back(p);
        }
    }
    if (!problems.empty()) fail_model("invalid_model_config", {{"problems", joined(problems)}});
    return m;
}

Json check_conventions(const Json &given, const Json &target_vocab, long long eos_id) {
    if (!given.is_object()) fail("conventions_not_object");
    const Json &specs = contract()["conventions"]["fields"];
    std::vector<std::string> unknown = unknown_keys(specs, given);
    if (!unknown.empty()) fail("unknown_conventions", {{"keys", unknown}});
    Json c = with_defaults(specs, given);
    std::vector<std::string> problems = field_problems(specs, c);
    if (!problems.empty()) fail("invalid_conventions", {{"problems", joined(problems)}});
    for (const Json &token : c["never_emit"]) {
        auto at = std::find(target_vocab.begin(), target_vocab.end(), token);
        if (at == target_vocab.end()) fail("never_emit_unknown", {{"token", token}});
        if (at - target_vocab.begin() == eos_id) fail("never_emit_eos");
    }
    return c;
}

void check_side(Json &info, const std::string &side, const Json &kind, bool lower, long long size) {
    if (!info.contains("vocab") || !info["vocab"].is_array()) fail("missing_field", {{"name", side + ".vocab"}});
    const Json &vocab = info["vocab"];
    for (const Json &t : vocab)
        if (!t.is_string() || t.get<std::string>().empty()) fail("vocab_not_strings", {{"side", side}});
    std::set<std::string> seen;
    for (const Json &t : vocab)
        if (!seen.insert(t.get<std::string>()).second) fail("vocab_duplicate", {{"side", side}, {"token", t}});
    if (static_cast<long long>(vocab.size()) != size) {
        fail("vocab_size", {{"side", side}, {"found", vocab.size()}, {"size", size}});
    }
    const Json &specials = contract()["vocab_starts_with"];
    Json found = Json::array();
    for (size_t i = 0; i < specials.size() && i < vocab.size(); ++i) found.push_back(vocab[i]);
    if (found != specials) fail("vocab_specials", {{"side", side}, {"specials", specials}, {"found", found}});
    for (const auto &[name, expected] : {std::pair<std::string, Json>{"tokenizer", kind}, {"lowercase", Json(lower)}}) {
        if (info.contains(name) && info[name] != expected) {
            fail("side_disagrees", {{"side", side}, {"name", name}, {"value", info[name]}, {"expected", expected}});
        }
    }
    info["tokenizer"] = kind;
    info["lowercase"] = lower;
    if (kind == "spm" && !plain_name(info.contains("spm_model") ? info["spm_model"] : Json(side + ".spm.model"))) {
        fail("spm_model_not_plain", {{"side", side}});
    }
}

void check_entry(const Json &entry, const std::string &name) {
    if (!entry.is_object() || !has(entry, "file") || !entry["file"].is_string() || !has(entry, "sha256") ||
        !entry["sha256"].is_string()) {
        fail("graph_entry", {{"name", name}});
    }
    if (!plain_name(entry["file"])) fail("graph_file_not_plain", {{"name", name}});
}

bool is_precision(const std::string &p) {
    const Json &all = contract()["precisions"];
    return std::find(all.begin(), all.end(), p) != all.end();
}

void check_graphs(const Json &graphs) {
    if (!graphs.contains("fp32")) fail("no_fp32_graphs");
    const Json &optional = contract()["optional_graphs"];
    for (const auto &[precision, entries] : graphs.items()) {
        if (!is_precision(precision)) fail("unknown_precision", {{"value", precision}});
        std::vector<std::string> kinds;
        for (const Json &k : contract()["graphs"]) kinds.push_back(k);
        for (const Json &k : optional) kinds.push_back(k);
        for (const std::string &kind : kinds) {
            bool present = entries.is_object() && entries.contains(kind);
            if (!present && std::find(optional.begin(), optional.end(), kind) != optional.end()) continue;
            std::string name = "graphs." + precision + "." + kind;
            const Json entry = present ? entries[kind] : Json();
            check_entry(entry, name);
            if (entry.contains("ort") && !entry["ort"].is_null()) check_entry(entry["ort"], name + ".ort");
        }
    }
}

void check_parity(const Json &parity) {
    if (!parity.is_object()) fail("parity_not_object");
    const Json &ranges = contract()["parity_ranges"];
    for (const auto &[precision, figures] : parity.items()) {
        if (!is_precision(precision) || !figures.is_object()) fail("parity_precision", {{"precision", precision}});
        if (figures.contains("greedy_graph") && !figures["greedy_graph"].is_object()) {
            fail("parity_greedy_not_object", {{"precision", precision}});
        }
        std::vector<std::pair<std::string, Json>> pairs;
        for (const auto &[k, v] : figures.items()) pairs.emplace_back(k, v);
        if (figures.contains("greedy_graph"))
            for (const auto &[k, v] : figures["greedy_graph"].items()) pairs.emplace_back(k, v);
        for (const auto &[name, value] : pairs) {
            if (!ranges.contains(name)) continue;
            const Json &range = ranges[name];
            double low = range[0].get<double>();
            double high = range[1].is_null() ? INFINITY : range[1].get<double>();
            if (!(value.is_number() && value.get<double>() >= low && value.get<double>() <= high)) {
                Json shown_high = range[1].is_null() ? Json(INFINITY) : range[1];
                fail("parity_figure", {{"precision", precision}, {"name", name}, {"min", range[0]}, {"max", shown_high}, {"value", value}});
            }
        }
    }
}
}  // namespace

// bundle.json's list of a decoder state's tensors (format 3), as runtime/schema.py's _state.
static void check_state(const Json &meta, const Json &m, long long version) {
    const Json &rules = contract()["state"];
    const bool external = m.contains(contract()["model"]["external"]["marker"].get<std::string>());
    if (!meta.contains("state")) {
        if (external && m["state_size"].get<long long>() == 0) fail("state_size_with_list", {{"value", 0}});
        return;
    }
    const long long since = rules["since"].get<long long>();
    if (version < since) fail("needs_format_version", {{"name", "state"}, {"since", since}, {"value", version}});
    if (!external) fail("state_needs_origin");
    if (m["state_size"].get<long long>() != 0) fail("state_size_with_list", {{"value", m["state_size"]}});
    const Json &state = meta["state"];
    const long long most = rules["max_tensors"].get<long long>();
    if (!state.is_array() || state.empty() || static_cast<long long>(state.size()) > most) fail("state_not_list", {{"limit", most}});
    std::vector<std::string> dtypes;
    for (const Json &d : rules["dtypes"]) dtypes.push_back(d);
    for (size_t index = 0; index < state.size(); ++index) {
        const Json &entry = state[index];
        if (!entry.is_object() || entry.size() != 2 || !entry.contains("dtype") || !entry.contains("dims")) {
            fail("state_entry", {{"index", index}});
        }
        const Json &dtype = entry["dtype"];
        if (!dtype.is_string() || std::find(dtypes.begin(), dtypes.end(), dtype.get<std::string>()) == dtypes.end()) {
            fail("state_dtype", {{"index", index}, {"choices", joined(dtypes, ", ")}, {"value", dtype}});
        }
        const Json &dims = entry["dims"];
        bool ok = dims.is_array() && static_cast<long long>(dims.size()) <= rules["max_rank"].get<long long>();
        int steps = 0;
        for (size_t k = 0; ok && k < dims.size(); ++k) {
            if (dims[k].is_null()) steps += 1;
            else ok = dims[k].is_number_integer() && dims[k].get<long long>() >= 1 && dims[k].get<long long>() <= rules["max_dim"].get<long long>();
        }
        if (!ok || steps > 1) {
            fail("state_dims", {{"index", index}, {"rank", rules["max_rank"]}, {"max", rules["max_dim"]}, {"value", dims}});
        }
    }
}

void check_meta(Json &meta) {
    if (!meta.is_object()) fail("not_object");
    if (!meta.contains("format_version")) fail("no_format_version");
    const Json &v = meta["format_version"];
    const long long newest = contract()["format_version"].get<long long>();
    if (!v.is_number_integer() || v.get<long long>() < 1) fail("bad_format_version", {{"value", v}});
    if (v.get<long long>() > newest) fail("newer_format_version", {{"value", v}, {"newest", newest}});
    for (const char *name : {"bundle_id", "model", "source", "target", "graphs"}) {
        bool ok = meta.contains(name) && (std::string(name) == "bundle_id" ? meta[name].is_string() : meta[name].is_object());
        if (!ok) fail("missing_field", {{"name", name}});
    }
    meta["model"] = check_model(meta["model"]);
    const Json &m = meta["model"];
    check_side(meta["source"], "source", m["src_tokens"], m["lowercase_source"].get<bool>(), m["src_vocab_size"].get<long long>());
    check_side(meta["target"], "target", m["tgt_tokens"], false, m["tgt_vocab_size"].get<long long>());
    Json expected = special_ids(m);
    if (meta.contains("special_ids")) {
        const Json &given = meta["special_ids"];
        bool same = given.is_object() && given.size() == expected.size();
        for (const auto &[k, value] : expected.items())
            same = same && given.contains(k) && given[k].is_number_integer() && given[k] == value;
        if (!same) fail("special_ids_disagree", {{"value", given}, {"expected", expected}});
    }
    const long long since = contract()["conventions"]["since"].get<long long>();
    if (meta.contains("conventions") && v.get<long long>() < since) {
        fail("needs_format_version", {{"name", "conventions"}, {"since", since}, {"value", v}});
    }
    meta["conventions"] = check_conventions(meta.contains("conventions") ? meta["conventions"] : Json::object(),
                                            meta["target"]["vocab"], m["eos_id"].get<long long>());
    check_state(meta, m, v.get<long long>());
    check_graphs(meta["graphs"]);
    check_parity(meta.contains("parity") ? meta["parity"] : Json::object());
}

std::vector<std::string> state_port_names(const Json &meta, const std::string &side) {
    if (!meta.contains("state")) return {side == "inputs" ? "state" : "new_state"};
    const std::string pattern = contract()["state"][side];  // state_{index} or new_state_{index}
    const size_t at = pattern.find("{index}");
    std::vector<std::string> names;
    for (size_t index = 0; index < meta["state"].size(); ++index)
        names.push_back(pattern.substr(0, at) + std::to_string(index) + pattern.substr(at + 7));
    return names;
}

Json state_ports(const Json &meta, const std::string &kind, const std::string &role) {
    const Json &ports = contract()["ports"][kind][role];
    if (!meta.contains("state")) return ports;
    const Json &rules = contract()["state"];
    Json out = Json::array();
    for (const Json &port : ports) {
        const std::string name = port["name"];
        if (!rules["replaces"].contains(name)) {
            out.push_back(port);
            continue;
        }
        const std::string side = rules["replaces"][name];  // "inputs" or "outputs"
        const std::string step_axis = rules["step_axis"][side];
        const std::vector<std::string> names = state_port_names(meta, side);
        for (size_t index = 0; index < names.size(); ++index) {
            Json axes = Json::array({"batch"});
            for (const Json &d : meta["state"][index]["dims"]) axes.push_back(d.is_null() ? Json(step_axis) : d);
            out.push_back({{"name", names[index]}, {"dtype", meta["state"][index]["dtype"]}, {"axes", axes}});
        }
    }
    return out;
}

std::map<std::string, long long> axis_sizes(const Json &m) {
    const Json &kinds = contract()["model"];
    if (m.contains(kinds["external"]["marker"].get<std::string>())) {
        return {{"hidden", m["memory_size"]}, {"state_size", m["state_size"]}, {"vocab", m["tgt_vocab_size"]}};
    }
    long long per_layer = static_cast<long long>(kinds["cell_states"][m["cell"].get<std::string>()].size());
    long long hidden = m["hidden"];
    long long state = m["decoder_layers"].get<long long>() * hidden * per_layer + (m["input_feed"].get<bool>() ? hidden : 0);
    return {{"hidden", hidden}, {"state_size", state}, {"vocab", m["tgt_vocab_size"]}};
}

long long convention_max_len(const Json &c, size_t source_ids, long long max_tgt_len) {
    double ratio = c["max_len_ratio"].get<double>();
    if (ratio <= 0) return max_tgt_len;
    double limit = ratio * static_cast<double>(source_ids) + c["max_len_offset"].get<double>();
    long long cap = c["max_len_cap"].get<long long>();
    if (cap > 0) limit = std::min(limit, static_cast<double>(cap));
    return std::max(0LL, std::min(max_tgt_len, static_cast<long long>(std::floor(limit))));
}

}  // namespace s2e
