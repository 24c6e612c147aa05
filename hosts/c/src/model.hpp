// A loaded bundle (or an ensemble of bundles of one task) and its decoding loop, as runtime/model.py and
// runtime/search.py: the same batches, the same choices, the same float32/float64 arithmetic.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <vector>

// The C++ wrapper is initialised by s2e_model_load (api.cpp), which checks that the library offers our API version.
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>

#include "contract.hpp"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace s2e {

struct LoadOptions {
    std::string precision = "fp32", graph_format = "auto", unknown = "error", too_long = "error", option_style = "c";
    int greedy_graph = -1;  // -1 auto, 0 never, 1 always
    int threads = 0;
    std::vector<std::string> ensemble;
};

struct SearchOptions {
    int beam_size = 1, nbest = 1, max_len = -1, min_len = 0, batch_size = 64, top_k = 0;
    double length_penalty = 0, temperature = 1, top_p = 1;
    bool sample = false;
    unsigned long long seed = 0;
};

struct Hypothesis {
    std::vector<long long> ids;
    double score = 0;
    bool truncated = false;
};

struct Result {
    std::string error;  // empty: decoded
    struct Hyp {
        std::string text;
        std::vector<std::string> tokens;
        double score;
        bool truncated;
    };
    std::vector<Hyp> hyps;
    size_t source_tokens = 0, truncated_from = 0;
};

// Text <-> ids for one side, as runtime/tokenize.py's TextCodec.
class TextCodec {
   public:
    TextCodec(std::string kind, std::vector<std::string> vocab, bool lowercase, std::string space_symbol,
              std::shared_ptr<sentencepiece::SentencePieceProcessor> spm);
    std::vector<std::string> split(const std::string &text) const;
    std::string join(const std::vector<std::string> &tokens) const;
    // (tokens, ids) after the unknown-token policy; InputError with Python's words.
    std::pair<std::vector<std::string>, std::vector<long long>> encode(const std::string &text, const std::string &unknown,
                                                                      const std::string &style) const;
    const std::vector<std::string> &tokens() const { return vocab_; }
    long long id(const std::string &token) const;

   private:
    std::string kind_, space_;
    std::vector<std::string> vocab_;
    std::unordered_map<std::string, long long> index_, from_text_;
    bool lowercase_;
    std::shared_ptr<sentencepiece::SentencePieceProcessor> spm_;
};

// One tensor of a member's decoder state as onnxruntime gave it, batch first: the packed state, or one of the tensors
// bundle.json lists (format 3: float or int64, a step axis that grows by one per step, possibly empty).
struct StateTensor {
    ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    std::vector<int64_t> shape;
    std::vector<unsigned char> bytes;
};

struct Member;  // one bundle's sessions

class Model {
   public:
    Model(const std::string &dir, const LoadOptions &options);
    ~Model();
    std::vector<Result> decode(const std::vector<std::string> &texts, const std::vector<unsigned long long> &positions,
                               const SearchOptions &options) const;
    const std::string &info() const { return info_; }

    struct Source;  // one prepared input
    struct Limits;
    struct Encoded;

   private:
    Source prepare(size_t index, const std::string &text) const;
    Limits limits(const SearchOptions &options, size_t source_ids) const;
    std::vector<std::vector<Hypothesis>> search(const std::vector<const Source *> &chunk, const Limits &limits,
                                                const SearchOptions &options) const;
    Encoded encode(const std::vector<const Source *> &chunk) const;
    std::vector<float> step(const std::vector<long long> &prev, Encoded &enc, std::vector<std::vector<StateTensor>> &new_state) const;
    std::vector<std::vector<Hypothesis>> greedy(const std::vector<const Source *> &chunk, const Limits &limits,
                                                const SearchOptions *draws) const;
    std::vector<std::vector<Hypothesis>> greedy_graph(const std::vector<const Source *> &chunk, const Limits &limits) const;
    std::vector<std::vector<Hypothesis>> beam(const std::vector<const Source *> &chunk, const Limits &limits,
                                              const SearchOptions &options) const;
    bool greedy_graph_decodes(const SearchOptions &options, size_t rows) const;

    std::unique_ptr<Ort::Env> env_;
    std::vector<std::unique_ptr<Member>> members_;
    Json meta_, config_, conventions_;
    std::unique_ptr<TextCodec> source_, target_;
    std::vector<long long> never_;
    LoadOptions options_;
    bool greedy_graph_batches_ = false;
    std::string info_;
};

}  // namespace s2e
