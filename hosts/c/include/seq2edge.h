/* seq2edge for native apps: load a seq2edge bundle and decode texts with onnxruntime, from C, C++ or any
 * language with a C FFI. No Python and no Node on the device.
 *
 *   s2e_model *model = NULL;
 *   char *error = NULL;
 *   if (s2e_model_load("models/g2p-en", NULL, &model, &error) != S2E_OK) { fprintf(stderr, "%s\n", error); ... }
 *   const char *texts[] = {"attention"};
 *   s2e_results *results = NULL;
 *   s2e_decode(model, texts, 1, NULL, NULL, &results, &error);
 *   puts(s2e_result_text(results, 0, 0));             // "AH0 T EH1 N SH AH0 N"
 *   s2e_results_free(results);
 *   s2e_model_free(model);
 *
 * Rules: opaque handles with explicit free functions; every function returns a status and, on failure, sets
 * *error to one line (free it with s2e_string_free); nothing aborts the process and nothing is global. A loaded
 * model is read-only: any number of threads may call s2e_decode on it at once. Strings are UTF-8. */
#ifndef SEQ2EDGE_H
#define SEQ2EDGE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define S2E_API_VERSION 1

#if defined(__GNUC__)
#define S2E_EXPORT __attribute__((visibility("default")))
#else
#define S2E_EXPORT
#endif

typedef enum {
    S2E_OK = 0,
    S2E_INPUT_ERROR = 1,  /* s2e_decode: not used (an input's problem is that result's error); kept for exit codes */
    S2E_BUNDLE_ERROR = 2, /* the bundle is missing, damaged, inconsistent or too new */
    S2E_OPTION_ERROR = 3, /* a load or decode option out of range */
    S2E_RUN_ERROR = 4,    /* onnxruntime failed where no single input is to blame, or memory ran out */
} s2e_status;

typedef struct s2e_model s2e_model;
typedef struct s2e_results s2e_results;

typedef struct {
    const char *precision;    /* "fp32" (default), "int8" or "fp16": which of the bundle's graphs to load */
    const char *graph_format; /* "auto" (default: .onnx), "onnx" or "ort" (the ORT-format copies) */
    const char *unknown;      /* source tokens outside the vocabulary: "error" (default), "unk" or "skip" */
    const char *too_long;     /* inputs over max_src_len: "error" (default) or "truncate" */
    int greedy_graph;         /* -1 (default): greedy.onnx for single inputs and where export measured it faster
                                 batched; 1: for every plain greedy search (refused when the bundle has none); 0: never */
    int threads;              /* onnxruntime intra-op threads; 0 (default): onnxruntime's choice */
    const char *option_style; /* how an input error names the option that would decode it: "c" (default) or "cli" */
    const char *const *ensemble; /* other bundles of the same task that decode together with this one (NULL: none) */
    size_t ensemble_count;
} s2e_load_options;

typedef struct {
    int beam_size;         /* 1 (default): greedy search */
    int nbest;             /* hypotheses per input, 1 <= nbest <= beam_size (default 1) */
    int max_len;           /* most output tokens; -1 (default): the bundle's rule (max_tgt_len or its conventions) */
    int min_len;           /* fewest output tokens before </s> (default 0) */
    int batch_size;        /* inputs per onnxruntime call (default 64) */
    double length_penalty; /* beam: rank by score / (len + 1) ^ length_penalty (default 0) */
    int sample;            /* 1: draw each token (greedy only) from softmax(log_probs / temperature) */
    double temperature;    /* default 1 */
    int top_k;             /* sample among the k most likely ids; 0 (default): all */
    double top_p;          /* sample within the smallest set of ids holding this probability (default 1) */
    uint64_t seed;         /* draws depend on the seed, the input's position and the step only */
} s2e_decode_options;

/* The defaults above, for a struct the caller owns. Passing NULL instead of a struct means the defaults too. */
S2E_EXPORT void s2e_load_options_init(s2e_load_options *options);
S2E_EXPORT void s2e_decode_options_init(s2e_decode_options *options);

/* Load and check a bundle directory (every check the Python runtime makes: the bundle contract, sha256 of each
 * graph, the graphs' owner and ports). On failure *model is NULL and *error says what is wrong, naming the file. */
S2E_EXPORT s2e_status s2e_model_load(const char *bundle_dir, const s2e_load_options *options, s2e_model **model, char **error);
S2E_EXPORT void s2e_model_free(s2e_model *model);

/* bundle.json's model config and decoding conventions as the runtime resolved them (every default filled), as
 * JSON: {"model": {...}, "conventions": {...}}. Owned by the model. */
S2E_EXPORT const char *s2e_model_info(const s2e_model *model);

/* Decode n texts. positions (NULL: 0..n-1) are the inputs' places in a larger job: sampling draws follow them.
 * S2E_OK means every input has a result; an input that cannot be decoded has its one-line error instead. */
S2E_EXPORT s2e_status s2e_decode(const s2e_model *model, const char *const *texts, size_t n, const uint64_t *positions,
                      const s2e_decode_options *options, s2e_results **results, char **error);
S2E_EXPORT void s2e_results_free(s2e_results *results);

S2E_EXPORT size_t s2e_results_count(const s2e_results *results);
/* NULL when input i was decoded; else its problem, one line. */
S2E_EXPORT const char *s2e_result_error(const s2e_results *results, size_t i);
/* Hypotheses of input i, best first (nbest of them, fewer when the search found fewer; 0 after an error). */
S2E_EXPORT size_t s2e_result_hypotheses(const s2e_results *results, size_t i);
S2E_EXPORT const char *s2e_result_text(const s2e_results *results, size_t i, size_t hypothesis);
S2E_EXPORT double s2e_result_score(const s2e_results *results, size_t i, size_t hypothesis);
S2E_EXPORT size_t s2e_result_token_count(const s2e_results *results, size_t i, size_t hypothesis);
S2E_EXPORT const char *s2e_result_token(const s2e_results *results, size_t i, size_t hypothesis, size_t token);
/* 1 when </s> was forced at the length limit. */
S2E_EXPORT int s2e_result_truncated(const s2e_results *results, size_t i, size_t hypothesis);
/* The input's source length before --too-long truncate cut it, or 0 when it was not cut. */
S2E_EXPORT size_t s2e_result_source_truncated_from(const s2e_results *results, size_t i);
/* The input's source tokens as the encoder saw them. */
S2E_EXPORT size_t s2e_result_source_token_count(const s2e_results *results, size_t i);

S2E_EXPORT void s2e_string_free(char *text);
/* "seq2edge-c VERSION (onnxruntime VERSION)" */
S2E_EXPORT const char *s2e_version(void);

#ifdef __cplusplus
}
#endif
#endif
