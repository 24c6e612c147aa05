// The checks a bundle passes before the native host decodes with it, read from the bundle contract
// (runtime/bundle_contract.json, compiled in as bundle_contract.inc) as runtime/schema.py and
// hosts/js/bundle-checks.mjs read it: every host refuses the same bundles in the same words.
#pragma once
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace s2e {

using Json = nlohmann::ordered_json;

struct BundleError : std::runtime_error {
    using std::runtime_error::runtime_error;
};
struct InputError : std::runtime_error {
    using std::runtime_error::runtime_error;
};
struct OptionError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

const Json &contract();  // parsed once per process, read-only afterwards

std::string shown(const Json &value);  // a value as Python's repr() writes it
// The named refusal's words with its placeholders filled (runtime/contract.py's say).
std::string say(const std::string &message, const Json &values = Json::object());

// Validate parsed bundle.json in place: the model config and conventions get their defaults. Throws BundleError.
void check_meta(Json &meta);
// The ports of a graph kind's "inputs" or "outputs" for this bundle: the contract's, with bundle.json's listed state
// tensors (format 3) in place of the packed state; a listed tensor's fixed axis is its size (a number), not a name.
Json state_ports(const Json &meta, const std::string &kind, const std::string &role);
// The names a decoder state travels under on one side ("inputs" or "outputs"): "state" / "new_state" for the packed
// state, state_0, ... / new_state_0, ... for a listed one (runtime/interface.py's state_port_names).
std::vector<std::string> state_port_names(const Json &meta, const std::string &side);
// bundle.json's bytes -> its object, refused as runtime/bundle.py refuses: not UTF-8, too deep, NaN, not JSON.
Json parse_meta(const std::string &bytes);
bool plain_name(const Json &name);
// The size of each fixed axis of the graph contract for a resolved model config.
std::map<std::string, long long> axis_sizes(const Json &model);
// The default output limit of an input of `source_ids` ids under resolved conventions.
long long convention_max_len(const Json &conventions, size_t source_ids, long long max_tgt_len);

}  // namespace s2e
