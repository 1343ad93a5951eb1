// sqz/error.hpp - the one exception type sqz throws for bad input.
//
// Every public entry point validates its arguments and throws sqz::error with a message that names the
// argument and the offending value, e.g. "sqz::pack: code 9 at index 4 does not fit in 3 bits".
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace sqz {

/// Thrown for invalid arguments and malformed data. Derives from std::invalid_argument so that callers
/// who catch standard exceptions also see it.
class error : public std::invalid_argument {
public:
    explicit error(const std::string& message) : std::invalid_argument(message) {}
};

namespace detail {

/// Builds a message from any streamable parts: fail("sqz::kmeans: k = ", k, " is outside 1..256").
template <class... Parts>
[[noreturn]] void fail(Parts&&... parts) {
    std::ostringstream out;
    (out << ... << std::forward<Parts>(parts));
    throw error(out.str());
}

/// Throws sqz::error with the concatenated message when condition is false. The message parts are only
/// formatted on failure, so checks on hot paths cost a branch.
template <class... Parts>
void require(bool condition, Parts&&... parts) {
    if (!condition) fail(std::forward<Parts>(parts)...);
}

}  // namespace detail
}  // namespace sqz
