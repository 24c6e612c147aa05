// Text as the Python runtime sees it: UTF-8 <-> code points, NFC, str.strip()/split()/lower(), and values written as
// Python's repr() writes them (messages quote values that way in every host).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace s2e {

std::u32string utf8_decode(const std::string &text);  // text must be valid UTF-8 (utf8_problem says)
std::string utf8_encode(const std::u32string &text);
std::string utf8_encode(char32_t code);
// "" when `text` is valid UTF-8, else Python's words for the first bad byte ("not valid UTF-8 (byte N)").
std::string utf8_problem(const std::string &text);

bool py_isspace(char32_t c);
std::u32string py_strip(const std::u32string &text);
std::vector<std::u32string> py_split(const std::u32string &text);  // str.split(): on runs of whitespace
std::u32string py_lower(const std::u32string &text);
std::u32string nfc(const std::u32string &text);

std::string py_repr(const std::string &text);  // 'text' with Python's quoting and escapes
std::string py_float(double value);            // repr(float): shortest round-trip digits, Python's exponent rule
double py_round(double value, int digits);     // round(value, digits)
std::string fixed(double value, int digits);   // f"{value:.{digits}f}"

}  // namespace s2e
