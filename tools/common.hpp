// Shared pieces of the sqz command-line tool: error reporting, number formatting, the progress bar.
#pragma once

#include <sqz/error.hpp>

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

namespace sqz::cli {

/// Bad input: the tool prints "sqz: error: <message>" and exits with status 1.
class input_error : public sqz::error {
public:
    using sqz::error::error;
};

/// The one-line message for a library error: the library's "sqz::io: " prefix is dropped, the rest
/// already names the file, the tensor and the problem.
inline std::string one_line(std::string_view message) {
    for (std::string_view prefix : {"sqz::io: "})
        if (message.starts_with(prefix)) message.remove_prefix(prefix.size());
    std::string out(message);
    for (auto& c : out)
        if (c == '\n' || c == '\r') c = ' ';
    return out;
}

inline std::string human_bytes(double bytes) {
    const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int unit = 0;
    while (bytes >= 1024.0 && unit < 4) {
        bytes /= 1024.0;
        ++unit;
    }
    char text[32];
    std::snprintf(text, sizeof text, unit == 0 ? "%.0f %s" : "%.1f %s", bytes, units[unit]);
    return text;
}

inline std::string shape_text(const std::vector<std::int64_t>& shape) {
    if (shape.empty()) return "scalar";
    std::string out;
    for (std::size_t i = 0; i < shape.size(); ++i) out += (i ? " x " : "") + std::to_string(shape[i]);
    return out;
}

inline std::string duration_text(double seconds) {
    char text[32];
    if (seconds < 60) std::snprintf(text, sizeof text, "%.1fs", seconds);
    else std::snprintf(text, sizeof text, "%dm%02ds", static_cast<int>(seconds) / 60, static_cast<int>(seconds) % 60);
    return text;
}

/// "[#####.....] 12/32 tensors  0:41 elapsed  ETA 1:02  name", redrawn in place on a terminal (stderr);
/// silent when stderr is not a terminal, so logs and pipes stay clean.
class progress_bar {
public:
    explicit progress_bar(std::size_t total) : total_(total), enabled_(::isatty(STDERR_FILENO) != 0), start_(clock::now()) {}

    void update(std::size_t done, std::string_view current) {
        if (!enabled_) return;
        const double elapsed = std::chrono::duration<double>(clock::now() - start_).count();
        constexpr int width = 30;
        const int filled = total_ == 0 ? width : static_cast<int>(width * done / total_);
        std::string bar(static_cast<std::size_t>(filled), '#');
        bar.resize(width, '.');
        std::string eta = "--";
        if (done > 0 && done < total_) eta = duration_text(elapsed / static_cast<double>(done) * static_cast<double>(total_ - done));
        std::string name(current.substr(0, 48));
        std::fprintf(stderr, "\r\033[K[%s] %zu/%zu tensors  %s elapsed  ETA %s  %s", bar.c_str(), done, total_,
                     duration_text(elapsed).c_str(), eta.c_str(), name.c_str());
        std::fflush(stderr);
    }
    void finish() {
        if (enabled_) std::fprintf(stderr, "\r\033[K");
    }

private:
    using clock = std::chrono::steady_clock;
    std::size_t total_;
    bool enabled_;
    clock::time_point start_;
};

}  // namespace sqz::cli
