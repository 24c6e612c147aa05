// seq2edge-c: `seq2edge decode` on the native library, with the Python CLI's records (text, tsv, jsonl) and exit codes.
//   seq2edge-c decode BUNDLE [TEXT...] [--input FILE] [--output FILE] [--format text|tsv|jsonl] [--beam N] [--nbest N]
//                     [--precision fp32|int8] [--batch-size N] [--threads N] [...]   (seq2edge-c --help)
// Exit codes as `seq2edge decode`: 0 every input decoded; 1 some inputs failed (the others written); 2 a bad bundle or
// usage; 130/143 interrupted (every finished line kept).
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "../include/seq2edge.h"
#include "../src/text.hpp"

namespace {
const size_t CHUNK = 4096;  // most lines decoded per call, as the Python CLI

const char *const USAGE =
    "usage: seq2edge-c decode BUNDLE [TEXT...] [options]\n"
    "\n"
    "Decode TEXTs (or --input FILE, or stdin lines) with the seq2edge bundle at BUNDLE.\n"
    "\n"
    "  --input FILE          read inputs from FILE, one per line ('-': stdin)\n"
    "  --output FILE         write results to FILE (complete or absent; '-': stdout, the default)\n"
    "  --format FORMAT       text ('input -> output', default), tsv or jsonl\n"
    "  --beam N              beam size; 1 (default) is greedy search\n"
    "  --nbest N             the N best hypotheses (N <= beam)\n"
    "  --length-penalty X    rank beam hypotheses by score / (len + 1)^X (default 0)\n"
    "  --max-len N           most output tokens (default: the bundle's rule)\n"
    "  --min-len N           fewest output tokens before </s> (default 0)\n"
    "  --sample              sample tokens instead of searching (--temperature, --top-k, --top-p, --seed)\n"
    "  --batch-size N        inputs per onnxruntime call (default 64)\n"
    "  --threads N           onnxruntime intra-op threads (default: onnxruntime's choice)\n"
    "  --precision P         fp32 (default), int8 or fp16\n"
    "  --graph-format F      auto (default), onnx or ort\n"
    "  --unknown POLICY      error (default), unk or skip\n"
    "  --too-long POLICY     error (default) or truncate\n"
    "  --greedy-graph / --no-greedy-graph   decode plain greedy searches with greedy.onnx (default: for single inputs)\n"
    "  --ensemble BUNDLE     another bundle of the same task decoding with BUNDLE (repeatable)\n"
    "  --version             print the library's and onnxruntime's versions\n";

volatile sig_atomic_t interrupted = 0;
void on_signal(int signum) { interrupted = signum; }

[[noreturn]] void usage_error(const std::string &message) {
    std::fprintf(stderr, "seq2edge-c: usage: %s\n(seq2edge-c --help lists the options)\n", message.c_str());
    std::exit(2);
}

long whole(const std::string &name, const std::string &text, long low) {
    char *end = nullptr;
    errno = 0;
    long value = std::strtol(text.c_str(), &end, 10);
    if (text.empty() || *end || errno || value < low) {
        usage_error("--" + name + " must be a whole number of at least " + std::to_string(low) + ", not " + s2e::py_repr(text));
    }
    return value;
}

double real(const std::string &name, const std::string &text) {
    char *end = nullptr;
    double value = std::strtod(text.c_str(), &end);
    if (text.empty() || *end || !std::isfinite(value)) usage_error("--" + name + " must be a number, not " + s2e::py_repr(text));
    return value;
}

// A string as Python's json.dumps(ensure_ascii=False) writes it.
std::string json_string(const std::string &text) {
    std::string out = "\"";
    for (unsigned char c : text) {
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            case '\b': out += "\\b"; break;
            case '\f': out += "\\f"; break;
            default:
                if (c < 0x20) {
                    char buf[8];
                    std::snprintf(buf, sizeof buf, "\\u%04x", c);
                    out += buf;
                } else {
                    out += static_cast<char>(c);
                }
        }
    }
    return out + "\"";
}

std::string json_score(double score) { return s2e::py_float(s2e::py_round(score, 6)); }

std::string json_tokens(const s2e_results *r, size_t i, size_t h) {
    std::string out = "[";
    for (size_t t = 0; t < s2e_result_token_count(r, i, h); ++t) out += (t ? ", " : "") + json_string(s2e_result_token(r, i, h, t));
    return out + "]";
}

// Bytes of invalid UTF-8 shown as U+FFFD, as Python's decode(errors="replace").
std::string replaced(const std::string &raw) {
    std::string out;
    for (size_t i = 0; i < raw.size();) {
        size_t len = 1;
        auto b = static_cast<unsigned char>(raw[i]);
        len = b < 0x80 ? 1 : b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : 2;
        std::string piece = raw.substr(i, len);
        if (s2e::utf8_problem(piece).empty() && piece.size() == len) {
            out += piece;
            i += len;
        } else {
            out += "\xEF\xBF\xBD";
            i += 1;
        }
    }
    return out;
}

// Lines of a file or a stream. From a pipe or a terminal, next() also says when no whole line came for
// STALL_MS, so that what arrived so far is decoded at once and the command works as a line filter (as the
// Python CLI does).
class LineReader {
   public:
    static constexpr int STALL_MS = 50;
    enum Got { LINE, END, STALLED };

    explicit LineReader(int fd) : fd_(fd) {
        struct stat info {};
        live_ = ::fstat(fd, &info) == 0 && !S_ISREG(info.st_mode);
    }

    Got next(std::string &line, bool may_stall) {
        for (;;) {
            size_t newline = buffer_.find('\n', scanned_);
            if (newline != std::string::npos) {
                line = buffer_.substr(0, newline + 1);
                buffer_.erase(0, newline + 1);
                scanned_ = 0;
                return LINE;
            }
            scanned_ = buffer_.size();
            if (end_) {
                if (buffer_.empty()) return END;
                line.swap(buffer_);
                buffer_.clear();
                scanned_ = 0;
                return LINE;
            }
            if (live_ && may_stall) {
                pollfd wait{fd_, POLLIN, 0};
                int ready = ::poll(&wait, 1, STALL_MS);
                if (ready == 0) return STALLED;
                if (ready < 0 && errno == EINTR) {
                    if (interrupted) return END;
                    continue;
                }
            }
            char block[65536];
            ssize_t n = ::read(fd_, block, sizeof block);
            if (n < 0 && errno == EINTR) {
                if (interrupted) return END;
                continue;
            }
            if (n <= 0) end_ = true;
            else buffer_.append(block, static_cast<size_t>(n));
        }
    }

   private:
    int fd_;
    bool live_ = false, end_ = false;
    std::string buffer_;
    size_t scanned_ = 0;
};

struct Input {
    size_t number;
    std::string text, problem;
};

struct Settings {
    std::string format = "text";
    bool with_nbest = false;
};

std::string record(const Settings &s, const Input &in, const s2e_results *r, size_t i, const std::string &problem) {
    if (s.format == "jsonl") {
        std::string out = "{\"line\": " + std::to_string(in.number) + ", \"input\": " + json_string(in.text);
        if (!problem.empty()) return out + ", \"error\": " + json_string(problem) + "}\n";
        out += ", \"output\": " + json_string(s2e_result_text(r, i, 0)) + ", \"tokens\": " + json_tokens(r, i, 0) +
               ", \"score\": " + json_score(s2e_result_score(r, i, 0));
        if (s2e_result_truncated(r, i, 0)) out += ", \"truncated\": true";
        if (s2e_result_source_truncated_from(r, i)) out += ", \"source_truncated_from\": " + std::to_string(s2e_result_source_truncated_from(r, i));
        if (s.with_nbest) {
            out += ", \"nbest\": [";
            for (size_t h = 0; h < s2e_result_hypotheses(r, i); ++h) {
                out += std::string(h ? ", " : "") + "{\"output\": " + json_string(s2e_result_text(r, i, h)) + ", \"tokens\": " +
                       json_tokens(r, i, h) + ", \"score\": " + json_score(s2e_result_score(r, i, h)) + "}";
            }
            out += "]";
        }
        return out + "}\n";
    }
    if (!problem.empty()) return s.format == "tsv" ? in.text + "\t\n" : in.text + " -> (error: " + problem + ")\n";
    std::string out;
    size_t shown = s.with_nbest ? s2e_result_hypotheses(r, i) : 1;
    for (size_t h = 0; h < shown; ++h) {
        if (s.format == "tsv") {
            out += in.text + "\t" + s2e_result_text(r, i, h) + (s.with_nbest ? "\t" + s2e::fixed(s2e_result_score(r, i, h), 4) : "") + "\n";
        } else {
            out += in.text + " -> " + s2e_result_text(r, i, h) + (s.with_nbest ? "  (" + s2e::fixed(s2e_result_score(r, i, h), 3) + ")" : "") + "\n";
        }
    }
    return out;
}

class Output {
   public:
    explicit Output(const std::string &path) : path_(path) {
        if (path_.empty()) {
            fd_ = STDOUT_FILENO;
            return;
        }
        size_t slash = path_.rfind('/');
        partial_ = (slash == std::string::npos ? "" : path_.substr(0, slash + 1)) + "." +
                   (slash == std::string::npos ? path_ : path_.substr(slash + 1)) + ".partial";
        fd_ = ::open(partial_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd_ < 0) {
            std::fprintf(stderr, "seq2edge-c: error: %s: cannot write: %s\n", path_.c_str(), std::strerror(errno));
            std::exit(2);
        }
    }
    bool write(const std::string &bytes) {
        for (size_t done = 0; done < bytes.size();) {
            ssize_t n = ::write(fd_, bytes.data() + done, bytes.size() - done);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) return false;
            done += static_cast<size_t>(n);
        }
        return true;
    }
    // Each finished chunk reaches the disk before the next starts: a kill loses no finished line.
    void end_chunk() {
        if (!partial_.empty()) ::fsync(fd_);
    }
    // Complete: the file appears under its name. Interrupted: what was written stays under its name too.
    void finish() {
        if (partial_.empty()) return;
        ::fsync(fd_);
        ::close(fd_);
        if (::rename(partial_.c_str(), path_.c_str()) != 0) {
            std::fprintf(stderr, "seq2edge-c: error: %s: cannot write: %s\n", path_.c_str(), std::strerror(errno));
            std::exit(2);
        }
        partial_.clear();
    }

   private:
    std::string path_, partial_;
    int fd_ = -1;
};
}  // namespace

int main(int argc, char **argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    if (args.empty() || args[0] == "--help" || args[0] == "-h") {
        std::fputs(USAGE, args.empty() ? stderr : stdout);
        return args.empty() ? 2 : 0;
    }
    if (args[0] == "--version") {
        std::printf("%s\n", s2e_version());
        return 0;
    }
    if (args[0] != "decode") usage_error("unknown command " + s2e::py_repr(args[0]) + "; seq2edge-c has `decode`");
    std::vector<std::string> positional;
    std::map<std::string, std::string> given;
    std::vector<std::string> ensemble;
    const std::map<std::string, bool> takes_value = {
        {"input", true},      {"output", true},       {"format", true},       {"beam", true},         {"nbest", true},
        {"length-penalty", true}, {"max-len", true},  {"min-len", true},      {"sample", false},      {"temperature", true},
        {"top-k", true},      {"top-p", true},        {"seed", true},         {"batch-size", true},   {"threads", true},
        {"precision", true},  {"graph-format", true}, {"unknown", true},      {"too-long", true},     {"greedy-graph", false},
        {"no-greedy-graph", false}, {"ensemble", true}, {"help", false}};
    for (size_t i = 1; i < args.size(); ++i) {
        const std::string &a = args[i];
        if (a.rfind("--", 0) != 0 || a == "--") {
            positional.push_back(a);
            continue;
        }
        std::string name = a.substr(2), value;
        size_t eq = name.find('=');
        if (eq != std::string::npos) value = name.substr(eq + 1), name = name.substr(0, eq);
        auto known = takes_value.find(name);
        if (known == takes_value.end()) usage_error("no such option: --" + name);
        if (name == "help") {
            std::fputs(USAGE, stdout);
            return 0;
        }
        if (known->second && eq == std::string::npos) {
            if (i + 1 >= args.size()) usage_error("--" + name + " needs a value");
            value = args[++i];
        }
        if (name == "ensemble") ensemble.push_back(value);
        else given[name] = value;
    }
    if (positional.empty()) usage_error("missing BUNDLE");
    const std::string bundle = positional[0];
    std::vector<std::string> texts(positional.begin() + 1, positional.end());
    auto get = [&](const char *name, const char *fallback) { return given.count(name) ? given[name] : std::string(fallback); };
    std::string input_file = get("input", ""), output_file = get("output", "");
    if (input_file == "-") input_file.clear();
    if (output_file == "-") output_file.clear();
    if (!texts.empty() && !input_file.empty()) usage_error("give TEXT arguments or --input, not both");
    auto choice = [&](const char *name, const char *fallback, std::vector<std::string> allowed) {
        std::string value = get(name, fallback);
        for (const auto &a : allowed)
            if (a == value) return value;
        std::string listed;
        for (size_t i = 0; i < allowed.size(); ++i) listed += (i ? ", " : "") + allowed[i];
        usage_error("--" + std::string(name) + " must be one of " + listed + ", not " + s2e::py_repr(value));
    };
    Settings settings;
    settings.format = choice("format", "text", {"text", "tsv", "jsonl"});
    s2e_decode_options d;
    s2e_decode_options_init(&d);
    d.beam_size = static_cast<int>(whole("beam", get("beam", "1"), 1));
    settings.with_nbest = given.count("nbest") > 0;
    d.nbest = settings.with_nbest ? static_cast<int>(whole("nbest", given["nbest"], 1)) : 1;
    if (d.nbest > d.beam_size) usage_error("--nbest " + std::to_string(d.nbest) + " needs --beam of at least " + std::to_string(d.nbest));
    d.length_penalty = real("length-penalty", get("length-penalty", "0"));
    d.max_len = given.count("max-len") ? static_cast<int>(whole("max-len", given["max-len"], 0)) : -1;
    d.min_len = static_cast<int>(whole("min-len", get("min-len", "0"), 0));
    if (d.max_len >= 0 && d.min_len > d.max_len) {
        usage_error("--min-len " + std::to_string(d.min_len) + " is greater than --max-len " + std::to_string(d.max_len));
    }
    d.sample = given.count("sample") > 0;
    d.temperature = real("temperature", get("temperature", "1"));
    d.top_k = static_cast<int>(whole("top-k", get("top-k", "0"), 0));
    d.top_p = real("top-p", get("top-p", "1"));
    {
        std::string seed = get("seed", "0");
        char *end = nullptr;
        errno = 0;
        long long value = std::strtoll(seed.c_str(), &end, 10);
        if (seed.empty() || *end || errno) usage_error("--seed must be a whole number, not " + s2e::py_repr(seed));
        d.seed = static_cast<uint64_t>(value);  // Python's seed & 0xFFFFFFFFFFFFFFFF
    }
    d.batch_size = static_cast<int>(whole("batch-size", get("batch-size", "64"), 1));
    s2e_load_options lo;
    s2e_load_options_init(&lo);
    std::string precision = choice("precision", "fp32", {"fp32", "int8", "fp16"});
    std::string graph_format = choice("graph-format", "auto", {"auto", "onnx", "ort"});
    std::string unknown = choice("unknown", "error", {"error", "unk", "skip"});
    std::string too_long = choice("too-long", "error", {"error", "truncate"});
    lo.precision = precision.c_str();
    lo.graph_format = graph_format.c_str();
    lo.unknown = unknown.c_str();
    lo.too_long = too_long.c_str();
    lo.option_style = "cli";
    lo.threads = given.count("threads") ? static_cast<int>(whole("threads", given["threads"], 1)) : 0;
    lo.greedy_graph = given.count("greedy-graph") ? 1 : given.count("no-greedy-graph") ? 0 : -1;
    std::vector<const char *> members;
    for (const auto &m : ensemble) members.push_back(m.c_str());
    lo.ensemble = members.data();
    lo.ensemble_count = members.size();

    s2e_model *model = nullptr;
    char *error = nullptr;
    s2e_status status = s2e_model_load(bundle.c_str(), &lo, &model, &error);
    if (status != S2E_OK) {
        std::fprintf(stderr, "seq2edge-c: error: %s\n", error);
        s2e_string_free(error);
        return 2;
    }
    int source = STDIN_FILENO;
    if (!input_file.empty()) {
        source = ::open(input_file.c_str(), O_RDONLY | O_CLOEXEC);
        if (source < 0) {
            std::fprintf(stderr, "seq2edge-c: error: %s: cannot read: %s\n", input_file.c_str(), std::strerror(errno));
            s2e_model_free(model);
            return 2;
        }
    }
    struct sigaction action {};
    action.sa_handler = on_signal;
    sigaction(SIGINT, &action, nullptr);
    sigaction(SIGTERM, &action, nullptr);
    ::signal(SIGPIPE, SIG_IGN);
    Output out(output_file);
    size_t failed = 0, done = 0, number = 0;
    bool more = true;
    int code = 0;
    LineReader lines(source);
    std::string raw;
    while (more && !interrupted) {
        std::vector<Input> chunk;
        if (!texts.empty()) {
            for (const auto &t : texts) chunk.push_back({++number, t, ""});
            more = false;
        } else {
            while (chunk.size() < CHUNK) {
                LineReader::Got got = lines.next(raw, !chunk.empty());
                if (got == LineReader::END) more = false;
                if (got != LineReader::LINE) break;
                ++number;
                if (!raw.empty() && raw.back() == '\n') raw.pop_back();
                if (!raw.empty() && raw.back() == '\r') raw.pop_back();
                if (number == 1 && raw.rfind("\xEF\xBB\xBF", 0) == 0) raw.erase(0, 3);
                std::string problem = s2e::utf8_problem(raw);
                if (!problem.empty()) {
                    chunk.push_back({number, replaced(raw), problem});
                    continue;
                }
                std::u32string decoded = s2e::utf8_decode(raw);
                if (s2e::py_strip(decoded).empty()) continue;  // blank lines are skipped
                chunk.push_back({number, raw, ""});
            }
        }
        if (chunk.empty()) break;
        std::vector<const char *> good;
        std::vector<uint64_t> positions;
        for (const auto &in : chunk) {
            if (!in.problem.empty()) continue;
            good.push_back(in.text.c_str());
            positions.push_back(in.number - 1);  // sampling draws follow the line number, not the chunk
        }
        s2e_results *results = nullptr;
        status = s2e_decode(model, good.data(), good.size(), positions.data(), &d, &results, &error);
        if (status != S2E_OK) {
            std::fprintf(stderr, "seq2edge-c: error: %s\n", error);
            s2e_string_free(error);
            code = 2;
            break;
        }
        std::string bytes;
        size_t at = 0;
        for (const auto &in : chunk) {
            std::string problem = in.problem;
            size_t i = 0;
            if (problem.empty()) {
                i = at++;
                const char *e = s2e_result_error(results, i);
                if (e) problem = e;
                else if (s2e_result_hypotheses(results, i) == 0) problem = "the search found no hypothesis";
            }
            if (!problem.empty()) {
                std::fprintf(stderr, "seq2edge: line %zu: %s\n", in.number, problem.c_str());
                ++failed;
            } else if (s2e_result_source_truncated_from(results, i)) {
                std::fprintf(stderr, "seq2edge: line %zu: truncated from %zu to %zu source tokens (--too-long truncate)\n", in.number,
                             s2e_result_source_truncated_from(results, i), s2e_result_source_token_count(results, i));
            }
            bytes += record(settings, in, results, i, problem);
        }
        s2e_results_free(results);
        if (!out.write(bytes)) {
            if (output_file.empty() && errno == EPIPE) {
                s2e_model_free(model);
                return 141;  // the reader of stdout went away (`| head`), as a killed pipeline writer
            }
            std::fprintf(stderr, "seq2edge-c: error: cannot write the output: %s\n", std::strerror(errno));
            code = 2;
            break;
        }
        out.end_chunk();
        done += chunk.size();
    }
    if (source != STDIN_FILENO) ::close(source);
    out.finish();
    s2e_model_free(model);
    if (interrupted) {
        std::fprintf(stderr, "seq2edge: interrupted after %zu input(s)%s\n", done,
                     output_file.empty() ? "" : ("; " + output_file + " holds them").c_str());
        return 128 + interrupted;
    }
    if (code) return code;
    if (failed) {
        std::fprintf(stderr, "seq2edge: %zu input(s) failed; the others were written\n", failed);
        return 1;
    }
    return 0;
}
