#include "text.hpp"

#include <utf8proc.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>

namespace s2e {

namespace {
// Length of the UTF-8 sequence at text[i], or 0 when it is not a valid one (overlong, surrogate, past U+10FFFF).
size_t sequence_length(const std::string &text, size_t i, char32_t *code) {
    const auto *s = reinterpret_cast<const unsigned char *>(text.data());
    size_t n = text.size();
    unsigned char b = s[i];
    if (b < 0x80) { *code = b; return 1; }
    size_t len = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC2 ? 2 : 0;
    if (len == 0 || b > 0xF4 || i + len > n) return 0;
    char32_t c = b & (0x7F >> len);
    for (size_t k = 1; k < len; ++k) {
        if ((s[i + k] & 0xC0) != 0x80) return 0;
        c = (c << 6) | (s[i + k] & 0x3F);
    }
    if ((len == 3 && c < 0x800) || (len == 4 && (c < 0x10000 || c > 0x10FFFF)) || (c >= 0xD800 && c <= 0xDFFF)) return 0;
    *code = c;
    return len;
}
}  // namespace

std::string utf8_problem(const std::string &text) {
    for (size_t i = 0; i < text.size();) {
        char32_t c;
        size_t len = sequence_length(text, i, &c);
        if (len == 0) return "not valid UTF-8 (byte " + std::to_string(i) + ")";
        i += len;
    }
    return "";
}

std::u32string utf8_decode(const std::string &text) {
    std::u32string out;
    out.reserve(text.size());
    for (size_t i = 0; i < text.size();) {
        char32_t c;
        size_t len = sequence_length(text, i, &c);
        if (len == 0) throw std::invalid_argument(utf8_problem(text));
        out.push_back(c);
        i += len;
    }
    return out;
}

std::string utf8_encode(char32_t c) {
    std::string out;
    if (c < 0x80) {
        out += static_cast<char>(c);
    } else if (c < 0x800) {
        out += static_cast<char>(0xC0 | (c >> 6));
        out += static_cast<char>(0x80 | (c & 0x3F));
    } else if (c < 0x10000) {
        out += static_cast<char>(0xE0 | (c >> 12));
        out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (c & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (c >> 18));
        out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (c & 0x3F));
    }
    return out;
}

std::string utf8_encode(const std::u32string &text) {
    std::string out;
    out.reserve(text.size());
    for (char32_t c : text) out += utf8_encode(c);
    return out;
}

bool py_isspace(char32_t c) {
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

std::u32string py_strip(const std::u32string &text) {
    size_t start = 0, end = text.size();
    while (start < end && py_isspace(text[start])) ++start;
    while (end > start && py_isspace(text[end - 1])) --end;
    return text.substr(start, end - start);
}

std::vector<std::u32string> py_split(const std::u32string &text) {
    std::vector<std::u32string> out;
    size_t i = 0;
    while (i < text.size()) {
        while (i < text.size() && py_isspace(text[i])) ++i;
        size_t start = i;
        while (i < text.size() && !py_isspace(text[i])) ++i;
        if (i > start) out.push_back(text.substr(start, i - start));
    }
    return out;
}

std::u32string py_lower(const std::u32string &text) {
    std::u32string out;
    out.reserve(text.size());
    for (char32_t c : text) {
        if (c == 0x130) {  // Python's full lowercase mapping (SpecialCasing): I WITH DOT ABOVE -> i + COMBINING DOT ABOVE
            out += U"i\u0307";
        } else {
            out.push_back(static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c))));
        }
    }
    // Python lowers a capital sigma at the end of a word to the final sigma.
    for (size_t i = 0; i < text.size(); ++i) {
        if (text[i] != 0x3A3) continue;
        auto cased = [](char32_t c) {
            auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
            return cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL || cat == UTF8PROC_CATEGORY_LT;
        };
        bool before = i > 0 && cased(text[i - 1]);
        bool after = i + 1 < text.size() && cased(text[i + 1]);
        if (before && !after) {
            size_t shift = 0;  // every U+0130 before i became two code points
            for (size_t k = 0; k < i; ++k) shift += text[k] == 0x130;
            out[i + shift] = 0x3C2;
        }
    }
    return out;
}

std::u32string nfc(const std::u32string &text) {
    bool ascii = true;
    for (char32_t c : text) ascii = ascii && c < 0x80;
    if (ascii) return text;
    std::string bytes = utf8_encode(text);
    utf8proc_uint8_t *out = nullptr;
    utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t *>(bytes.data()),
                                      static_cast<utf8proc_ssize_t>(bytes.size()), &out,
                                      static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
    if (n < 0) throw std::runtime_error(utf8proc_errmsg(n));
    std::string composed(reinterpret_cast<char *>(out), static_cast<size_t>(n));
    std::free(out);
    return utf8_decode(composed);
}

namespace {
// Python's str.isprintable() per character: not Cc, Cf, Cs, Co, Cn, Zl, Zp, nor Zs other than the space.
bool printable(char32_t c) {
    if (c == ' ') return true;
    switch (utf8proc_category(static_cast<utf8proc_int32_t>(c))) {
        case UTF8PROC_CATEGORY_CC: case UTF8PROC_CATEGORY_CF: case UTF8PROC_CATEGORY_CS: case UTF8PROC_CATEGORY_CO:
        case UTF8PROC_CATEGORY_CN: case UTF8PROC_CATEGORY_ZL: case UTF8PROC_CATEGORY_ZP: case UTF8PROC_CATEGORY_ZS:
            return false;
        default:
            return true;
    }
}
}  // namespace

std::string py_repr(const std::string &bytes) {
    std::u32string text = utf8_decode(bytes);
    bool single = text.find(U'\'') != std::u32string::npos && text.find(U'"') == std::u32string::npos;
    char32_t quote = single ? U'"' : U'\'';
    std::string out(1, static_cast<char>(quote));
    char buf[16];
    for (char32_t c : text) {
        if (c == U'\\' || c == quote) {
            out += '\\';
            out += static_cast<char>(c);
        } else if (c == U'\n') {
            out += "\\n";
        } else if (c == U'\t') {
            out += "\\t";
        } else if (c == U'\r') {
            out += "\\r";
        } else if (!printable(c)) {
            std::snprintf(buf, sizeof buf, c < 0x100 ? "\\x%02x" : c < 0x10000 ? "\\u%04x" : "\\U%08x", static_cast<unsigned>(c));
            out += buf;
        } else {
            out += utf8_encode(c);
        }
    }
    out += static_cast<char>(quote);
    return out;
}

std::string py_float(double value) {
    if (std::isnan(value)) return "nan";
    if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
    char buf[40];
    for (int precision = 1; precision <= 17; ++precision) {  // the shortest digits that read back as the same double
        std::snprintf(buf, sizeof buf, "%.*e", precision - 1, value);
        if (std::strtod(buf, nullptr) == value) break;
    }
    // buf: d.ddde±XX -> digits and exponent, then Python's layout (float_repr_style 'short').
    std::string s(buf);
    bool negative = s[0] == '-';
    if (negative) s.erase(0, 1);
    size_t e = s.find('e');
    int exponent = std::atoi(s.c_str() + e + 1);
    std::string digits;
    for (size_t i = 0; i < e; ++i)
        if (s[i] != '.') digits += s[i];
    while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
    std::string out;
    if (exponent < -4 || exponent >= 16) {
        out = digits.substr(0, 1);
        if (digits.size() > 1) out += "." + digits.substr(1);
        std::snprintf(buf, sizeof buf, "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
        out += buf;
    } else if (exponent < 0) {
        out = "0." + std::string(static_cast<size_t>(-exponent - 1), '0') + digits;
    } else {
        size_t whole = static_cast<size_t>(exponent) + 1;
        if (digits.size() <= whole) {
            out = digits + std::string(whole - digits.size(), '0') + ".0";
        } else {
            out = digits.substr(0, whole) + "." + digits.substr(whole);
        }
    }
    return negative ? "-" + out : out;
}

double py_round(double value, int digits) {
    if (!std::isfinite(value)) return value;
    char buf[512];
    std::snprintf(buf, sizeof buf, "%.*f", digits, value);  // glibc: the exact value, correctly rounded (half to even)
    return std::strtod(buf, nullptr);
}

std::string fixed(double value, int digits) {
    char buf[512];
    std::snprintf(buf, sizeof buf, "%.*f", digits, value);
    return buf;
}

}  // namespace s2e
