// The C API (include/seq2edge.h) over s2e::Model: every exception stops here and becomes a status and one line.
#include <cstdlib>
#include <cstring>
#include <new>

#include "../include/seq2edge.h"
#include "model.hpp"

struct s2e_model {
    std::unique_ptr<s2e::Model> model;
};
struct s2e_results {
    std::vector<s2e::Result> results;
};

namespace {
char *copy(const std::string &text) {
    char *out = static_cast<char *>(std::malloc(text.size() + 1));
    if (out) std::memcpy(out, text.c_str(), text.size() + 1);
    return out;
}

s2e_status fail(char **error, s2e_status status, const std::string &message) {
    if (error) {
        std::string line = message.substr(0, message.find('\n'));
        *error = copy(line);
    }
    return status;
}

template <typename F>
s2e_status guarded(char **error, F body) {
    if (error) *error = nullptr;
    try {
        body();
        return S2E_OK;
    } catch (const s2e::BundleError &err) {
        return fail(error, S2E_BUNDLE_ERROR, err.what());
    } catch (const s2e::OptionError &err) {
        return fail(error, S2E_OPTION_ERROR, err.what());
    } catch (const s2e::InputError &err) {
        return fail(error, S2E_INPUT_ERROR, err.what());
    } catch (const Ort::Exception &err) {
        return fail(error, S2E_RUN_ERROR, std::string("onnxruntime: ") + err.what());
    } catch (const std::bad_alloc &) {
        return fail(error, S2E_RUN_ERROR, "out of memory");
    } catch (const std::exception &err) {
        return fail(error, S2E_RUN_ERROR, err.what());
    } catch (...) {
        return fail(error, S2E_RUN_ERROR, "unexpected failure");
    }
}

// onnxruntime's C API at the version our header describes; newer libraries offer every older version.
void init_onnxruntime() {
    static const OrtApi *api = [] {
        const OrtApiBase *base = OrtGetApiBase();
        return base ? base->GetApi(ORT_API_VERSION) : nullptr;
    }();
    if (!api) {
        throw s2e::BundleError("the onnxruntime library found is older than API version " + std::to_string(ORT_API_VERSION) +
                               " (onnxruntime 1." + std::to_string(ORT_API_VERSION) + "); install a newer one");
    }
    Ort::InitApi(api);
}

const s2e::Result::Hyp *hyp(const s2e_results *r, size_t i, size_t h) {
    if (!r || i >= r->results.size() || h >= r->results[i].hyps.size()) return nullptr;
    return &r->results[i].hyps[h];
}
}  // namespace

extern "C" {

void s2e_load_options_init(s2e_load_options *o) {
    if (!o) return;
    *o = s2e_load_options{"fp32", "auto", "error", "error", -1, 0, "c", nullptr, 0};
}

void s2e_decode_options_init(s2e_decode_options *o) {
    if (!o) return;
    *o = s2e_decode_options{1, 1, -1, 0, 64, 0.0, 0, 1.0, 0, 1.0, 0};
}

s2e_status s2e_model_load(const char *bundle_dir, const s2e_load_options *options, s2e_model **model, char **error) {
    if (model) *model = nullptr;
    return guarded(error, [&] {
        if (!bundle_dir || !model) throw s2e::OptionError("s2e_model_load needs a bundle directory and a place for the model");
        s2e_load_options o;
        s2e_load_options_init(&o);
        if (options) o = *options;
        s2e::LoadOptions lo;
        auto text = [](const char *value, const char *fallback) { return std::string(value ? value : fallback); };
        lo.precision = text(o.precision, "fp32");
        lo.graph_format = text(o.graph_format, "auto");
        lo.unknown = text(o.unknown, "error");
        lo.too_long = text(o.too_long, "error");
        lo.option_style = text(o.option_style, "c");
        lo.greedy_graph = o.greedy_graph;
        lo.threads = o.threads;
        for (size_t i = 0; i < o.ensemble_count; ++i) {
            if (!o.ensemble || !o.ensemble[i]) throw s2e::OptionError("ensemble holds a NULL bundle directory");
            lo.ensemble.emplace_back(o.ensemble[i]);
        }
        init_onnxruntime();
        auto loaded = std::make_unique<s2e_model>();
        loaded->model = std::make_unique<s2e::Model>(bundle_dir, lo);
        *model = loaded.release();
    });
}

void s2e_model_free(s2e_model *model) { delete model; }

const char *s2e_model_info(const s2e_model *model) { return model ? model->model->info().c_str() : nullptr; }

s2e_status s2e_decode(const s2e_model *model, const char *const *texts, size_t n, const uint64_t *positions,
                      const s2e_decode_options *options, s2e_results **results, char **error) {
    if (results) *results = nullptr;
    return guarded(error, [&] {
        if (!model || !results || (n && !texts)) throw s2e::OptionError("s2e_decode needs a model, the texts and a place for the results");
        s2e_decode_options o;
        s2e_decode_options_init(&o);
        if (options) o = *options;
        s2e::SearchOptions so;
        so.beam_size = o.beam_size;
        so.nbest = o.nbest;
        so.max_len = o.max_len;
        so.min_len = o.min_len;
        so.batch_size = o.batch_size;
        so.length_penalty = o.length_penalty;
        so.sample = o.sample != 0;
        so.temperature = o.temperature;
        so.top_k = o.top_k;
        so.top_p = o.top_p;
        so.seed = o.seed;
        std::vector<std::string> inputs;
        for (size_t i = 0; i < n; ++i) {
            if (!texts[i]) throw s2e::OptionError("text " + std::to_string(i) + " is NULL");
            inputs.emplace_back(texts[i]);
        }
        std::vector<unsigned long long> places;
        if (positions) places.assign(positions, positions + n);
        auto out = std::make_unique<s2e_results>();
        out->results = model->model->decode(inputs, places, so);
        *results = out.release();
    });
}

void s2e_results_free(s2e_results *results) { delete results; }

size_t s2e_results_count(const s2e_results *r) { return r ? r->results.size() : 0; }

const char *s2e_result_error(const s2e_results *r, size_t i) {
    if (!r || i >= r->results.size()) return "no such result";
    return r->results[i].error.empty() ? nullptr : r->results[i].error.c_str();
}

size_t s2e_result_hypotheses(const s2e_results *r, size_t i) { return r && i < r->results.size() ? r->results[i].hyps.size() : 0; }

const char *s2e_result_text(const s2e_results *r, size_t i, size_t h) {
    const auto *x = hyp(r, i, h);
    return x ? x->text.c_str() : nullptr;
}

double s2e_result_score(const s2e_results *r, size_t i, size_t h) {
    const auto *x = hyp(r, i, h);
    return x ? x->score : 0.0;
}

size_t s2e_result_token_count(const s2e_results *r, size_t i, size_t h) {
    const auto *x = hyp(r, i, h);
    return x ? x->tokens.size() : 0;
}

const char *s2e_result_token(const s2e_results *r, size_t i, size_t h, size_t token) {
    const auto *x = hyp(r, i, h);
    return x && token < x->tokens.size() ? x->tokens[token].c_str() : nullptr;
}

int s2e_result_truncated(const s2e_results *r, size_t i, size_t h) {
    const auto *x = hyp(r, i, h);
    return x ? x->truncated : 0;
}

size_t s2e_result_source_truncated_from(const s2e_results *r, size_t i) {
    return r && i < r->results.size() ? r->results[i].truncated_from : 0;
}

size_t s2e_result_source_token_count(const s2e_results *r, size_t i) {
    return r && i < r->results.size() ? r->results[i].source_tokens : 0;
}

void s2e_string_free(char *text) { std::free(text); }

const char *s2e_version(void) {
    static const std::string version = std::string("seq2edge-c ") + S2E_VERSION + " (onnxruntime " +
                                       OrtGetApiBase()->GetVersionString() + ")";
    return version.c_str();
}
}
