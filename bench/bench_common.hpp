// Helpers shared by the matrix-vector benchmarks (bench_matvec.cpp, compare_ggml.cpp): the clock, a
// comma-list parser, the DRAM read-bandwidth probe, bench_matvec's random dense-and-sparse matrices and
// the relative error against a reference product. See bench_matvec.cpp's top for how they are used.
#pragma once

#include <sqz/sqz.hpp>

#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <system_error>
#include <type_traits>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace sqz_bench {

struct shape {
    Eigen::Index rows, cols;
};

using clock_type = std::chrono::steady_clock;

inline double seconds_since(clock_type::time_point start) {
    return std::chrono::duration<double>(clock_type::now() - start).count();
}

/// A command-line value that cannot be used; the programs print what() and exit with status 2.
class bad_argument : public std::invalid_argument {
public:
    using std::invalid_argument::invalid_argument;
};

template <class T>
std::string number_text(T value) {
    if constexpr (std::is_integral_v<T>) {
        return std::to_string(value);
    } else {
        char text[32];
        std::snprintf(text, sizeof text, "%g", static_cast<double>(value));
        return text;
    }
}

/// `item` as a number in [lowest, highest]. Anything else (an empty string, trailing characters, a
/// value out of range) is a bad_argument naming `option` and the item: atoi and atof would read it
/// silently as 0 or as its leading digits.
template <class T>
T parse_number(const std::string& item, const char* option, T lowest, T highest) {
    T value{};
    const char* end = item.data() + item.size();
    const auto [stop, error] = std::from_chars(item.data(), end, value);
    if (error != std::errc{} || stop != end || !(value >= lowest && value <= highest))
        throw bad_argument(std::string(option) + " " + item + ": expected a number in [" + number_text(lowest) + ", " +
                           number_text(highest) + "]");
    return value;
}

/// A comma-separated list, each item through parse(item); an empty list is a bad_argument.
template <class T, class Parse>
std::vector<T> parse_list(const char* text, const char* option, Parse parse) {
    std::vector<T> out;
    std::string s(text);
    std::size_t start = 0;
    while (start <= s.size()) {
        const std::size_t comma = s.find(',', start);
        const std::string item = s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        if (!item.empty()) out.push_back(parse(item));
        if (comma == std::string::npos) break;
        start = comma + 1;
    }
    if (out.empty()) throw bad_argument(std::string(option) + " '" + s + "': the list is empty");
    return out;
}

/// A comma-separated list of names, each one of `choices` as sqz::to_string spells it.
template <class T, std::size_t N>
std::vector<T> parse_names(const char* text, const char* option, const std::array<T, N>& choices) {
    return parse_list<T>(text, option, [&](const std::string& item) {
        for (const T c : choices)
            if (item == sqz::to_string(c)) return c;
        std::string known;
        for (const T c : choices) known += (known.empty() ? "" : ", ") + std::string(sqz::to_string(c));
        throw bad_argument(std::string(option) + " " + item + ": unknown, expected one of " + known);
    });
}

/// "4096x14336,14336x4096": rows x columns, each at least 1.
inline std::vector<shape> parse_shapes(const char* text) {
    constexpr const char* option = "--shapes";
    return parse_list<shape>(text, option, [&](const std::string& item) {
        constexpr long most = std::numeric_limits<int>::max();
        const auto wrong = [&] {
            return bad_argument(std::string(option) + " " + item + ": expected ROWSxCOLUMNS, each a whole number in [1, " +
                                number_text(most) + "]");
        };
        const auto x = item.find('x');
        if (x == std::string::npos) throw wrong();
        try {
            return shape{parse_number<long>(item.substr(0, x), option, 1, most), parse_number<long>(item.substr(x + 1), option, 1, most)};
        } catch (const bad_argument&) {
            throw wrong();
        }
    });
}

inline std::vector<int> parse_ints(const char* text, const char* option, int lowest, int highest) {
    return parse_list<int>(text, option, [&](const std::string& item) { return parse_number<int>(item, option, lowest, highest); });
}

/// Reads argv[1..argc) through take(arg, next), which handles one option and returns false for one it
/// does not know; next() returns the option's value (a bad_argument when none follows). Returns the
/// status to exit with: 0 after --help, 2 after a bad or unknown argument (with a message naming it
/// and `program`, then the usage), or -1 to go on.
template <class Take>
int parse_arguments(int argc, char** argv, const char* program, const char* usage, Take&& take) {
    try {
        for (int a = 1; a < argc; ++a) {
            const std::string arg = argv[a];
            if (arg == "--help") {
                std::printf("%s\n", usage);
                return 0;
            }
            const auto next = [&]() -> const char* {
                if (a + 1 >= argc) throw bad_argument(arg + ": a value must follow");
                return argv[++a];
            };
            if (!take(arg, next)) throw bad_argument(arg + ": unknown option");
        }
    } catch (const bad_argument& e) {
        std::fprintf(stderr, "%s: %s\nusage: %s\n", program, e.what(), usage);
        return 2;
    }
    return -1;
}

/// The threads a run uses: `asked`, or OpenMP's default for 0 or less (1 without OpenMP), as the
/// library resolves its own `threads` arguments.
using sqz::detail::resolve_threads;

/// The size in bytes of a cache size as sysfs writes it ("491520K", "32M", "512"); 0 when unreadable.
inline std::size_t parse_cache_size(const char* text) {
    char* end = nullptr;
    const unsigned long long value = std::strtoull(text, &end, 10);
    if (end == text) return 0;
    switch (*end) {
        case 'K': return static_cast<std::size_t>(value) << 10;
        case 'M': return static_cast<std::size_t>(value) << 20;
        case 'G': return static_cast<std::size_t>(value) << 30;
        default: return static_cast<std::size_t>(value);
    }
}

/// The fallback when the system names no last-level cache: the 32 MiB L3 of the machine these
/// benchmarks were first written on.
inline constexpr std::size_t default_cache_bytes = std::size_t{32} << 20;

/// This machine's last-level data cache in bytes, as Linux reports it for CPU 0 (the largest level in
/// /sys/devices/system/cpu/cpu0/cache that holds data; the size is the whole cache, shared or not),
/// else default_cache_bytes. The benchmarks copy matrices until the copies exceed it 4x, so that they
/// stream from DRAM: a fixed 32 MiB let a 480 MiB L3 hold most of them (docs/benchmarks.md).
inline std::size_t last_level_cache_bytes() {
    std::size_t best = 0;
    int best_level = 0;
    for (int index = 0; index < 16; ++index) {
        const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/";
        const auto read = [&](const char* name) {
            std::string text;
            if (std::FILE* file = std::fopen((dir + name).c_str(), "r")) {
                std::array<char, 64> line{};
                if (std::fgets(line.data(), static_cast<int>(line.size()), file) != nullptr) text = line.data();
                std::fclose(file);
            }
            return text;
        };
        const std::string level = read("level");
        if (level.empty()) break;
        if (read("type").rfind("Instruction", 0) == 0) continue;
        const int l = std::atoi(level.c_str());
        const std::size_t bytes = parse_cache_size(read("size").c_str());
        if (bytes > 0 && l >= best_level) {
            best_level = l;
            best = bytes;
        }
    }
    return best > 0 ? best : default_cache_bytes;
}

/// The options sqz-bench-matvec and compare_ggml share: --json, --threads (at least
/// `fewest_threads`), --rounds, --shapes, --bits and --l3-mib (the last-level cache that the matrix
/// copies must exceed 4x, default last_level_cache_bytes(); small values with small shapes keep the
/// matrices in the cache: a from-cache test), into the like-named fields of cfg.
template <class Settings, class Next>
bool take_shared_option(const std::string& arg, Next& next, Settings& cfg, int fewest_threads) {
    if (arg == "--json") cfg.json = true;
    else if (arg == "--threads") cfg.threads = parse_number<int>(next(), "--threads", fewest_threads, 1024);
    else if (arg == "--rounds") cfg.rounds = parse_number<int>(next(), "--rounds", 1, 1000000);
    else if (arg == "--shapes") cfg.shapes = parse_shapes(next());
    else if (arg == "--bits") cfg.bits = parse_ints(next(), "--bits", 1, 8);
    else if (arg == "--l3-mib") cfg.cache_bytes = static_cast<std::size_t>(parse_number<int>(next(), "--l3-mib", 1, 1 << 20)) << 20;
    else return false;
    return true;
}

/// Copies of a matrix of `bytes` bytes that hold at least 4x `cache_bytes` (at least 2), so that
/// multiplying them in turn reads each from DRAM.
inline std::size_t copies_for(std::size_t bytes, std::size_t cache_bytes) {
    return std::max<std::size_t>(2, (4 * cache_bytes + bytes - 1) / std::max<std::size_t>(bytes, 1));
}

/// The system's transparent-huge-page setting ("always", "madvise" or "never"; "unknown" where there is
/// none to read). The probe's buffer and a cpu_matrix's codes ask for huge pages (aligned_buffer.hpp),
/// which they get under "always" and "madvise"; a streaming read on huge pages ran 15-28% faster here.
inline std::string transparent_huge_pages() {
    std::FILE* file = std::fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    if (file == nullptr) return "unknown";
    std::array<char, 128> line{};
    const bool read = std::fgets(line.data(), static_cast<int>(line.size()), file) != nullptr;
    std::fclose(file);
    const char* open = read ? std::strchr(line.data(), '[') : nullptr;
    const char* close = open != nullptr ? std::strchr(open, ']') : nullptr;
    return close != nullptr ? std::string(open + 1, close) : "unknown";
}

/// Streams through 32 MiB pieces of a buffer of at least 512 MiB and 4x the last-level cache with all
/// threads; returns GB/s of one piece, which has not been read since the rest of the buffer was. The
/// buffer comes from sqz's allocator, so it is on huge pages wherever a matrix's codes are: the probe
/// measures what the memory delivers to a stream, not the cost of 4 KB pages.
class dram_probe {
public:
    explicit dram_probe(std::size_t total, std::size_t piece = std::size_t{32} << 20)
        : buffer_(std::max(total, piece) / sizeof(long long), 1), piece_(piece) {}

    /// The probe for a run that defeats `cache_bytes` of cache: 32 MiB pieces of max(512 MiB, 4 x the
    /// cache); below 32 MiB (the benchmarks' --smoke runs) pieces of cache_bytes in 64 MiB.
    static dram_probe for_cache(std::size_t cache_bytes) {
        constexpr std::size_t piece = std::size_t{32} << 20;
        if (cache_bytes < piece) return dram_probe(std::size_t{64} << 20, cache_bytes);
        return dram_probe(std::max(std::size_t{512} << 20, (4 * cache_bytes + piece - 1) / piece * piece), piece);
    }

    std::size_t bytes() const noexcept { return buffer_.size() * sizeof(long long); }

    double measure(int threads) {
        const std::size_t pieces = buffer_.size() * sizeof(long long) / piece_;
        return measure_at(reinterpret_cast<const char*>(buffer_.data()) + (next_++ % pieces) * piece_, piece_, threads);
    }

    /// The same streaming read over [base, base + bytes) (64-byte aligned) instead of the probe's own
    /// buffer: GB/s of the bytes read (whole 128-byte steps per thread).
    double measure_at(const char* base, std::size_t bytes, int threads) {
        std::size_t read = 0;
        const auto start = clock_type::now();
        long long checksum = 0;
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads) reduction(+ : checksum)
#endif
        {
#if defined(_OPENMP)
            const int t = omp_get_thread_num();
            const int nt = omp_get_num_threads();
#else
            const int t = 0;
            const int nt = 1;
            (void)threads;
#endif
            const std::size_t chunk = bytes / static_cast<std::size_t>(nt) / 128 * 128;
            checksum += stream(base + static_cast<std::size_t>(t) * chunk, chunk);
            if (t == 0) read = chunk * static_cast<std::size_t>(nt);
        }
        const double s = seconds_since(start);
        sink_ += checksum;
        return static_cast<double>(read) / s / 1e9;
    }

    long long sink() const { return sink_; }

private:
#if defined(__x86_64__)
    __attribute__((target("avx2"))) static long long stream(const char* p, std::size_t bytes) {
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
        for (std::size_t i = 0; i < bytes; i += 128) {
            a0 = _mm256_add_epi64(a0, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i)));
            a1 = _mm256_add_epi64(a1, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 32)));
            a2 = _mm256_add_epi64(a2, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 64)));
            a3 = _mm256_add_epi64(a3, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 96)));
        }
        const __m256i s = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
        return _mm256_extract_epi64(s, 0) + _mm256_extract_epi64(s, 1) + _mm256_extract_epi64(s, 2) +
               _mm256_extract_epi64(s, 3);
    }
#else
    static long long stream(const char* p, std::size_t bytes) {
        long long s = 0;
        const auto* q = reinterpret_cast<const long long*>(p);
        for (std::size_t i = 0; i < bytes / sizeof(long long); ++i) s += q[i];
        return s;
    }
#endif

    std::vector<long long, sqz::detail::aligned_allocator<long long>> buffer_;
    std::size_t piece_;
    std::size_t next_ = 0;
    long long sink_ = 0;
};

/// A random dense-and-sparse matrix: sorted N(0, 0.02) codebooks, uniform codes, and a sparse part at
/// a uniformly random `fraction` of the positions with N(0, 0.1) values rounded to fp16, as the
/// original weights of an fp16 checkpoint that SqueezeLLM keeps in the sparse part are (the cpu back
/// end then stores them in 16 bits, its common case).
inline sqz::quantized_matrix<float> random_matrix(shape s, int bits, double fraction, std::uint64_t seed) {
    sqz::synthetic::rng random(seed);
    const Eigen::Index levels = Eigen::Index{1} << bits;
    sqz::row_matrix<float> lut(s.rows, levels);
    for (Eigen::Index i = 0; i < s.rows; ++i) {
        for (Eigen::Index k = 0; k < levels; ++k) lut(i, k) = static_cast<float>(0.02 * random.normal());
        std::sort(lut.row(i).data(), lut.row(i).data() + levels);
    }
    std::vector<std::uint8_t> codes(static_cast<std::size_t>(s.rows * s.cols));
    for (std::size_t k = 0; k < codes.size(); k += 8) {
        std::uint64_t r = random.next();
        for (std::size_t b = k; b < std::min(codes.size(), k + 8); ++b, r >>= 8)
            codes[b] = static_cast<std::uint8_t>(r & static_cast<std::uint64_t>(levels - 1));
    }
    sqz::csr_matrix<float> sparse(s.rows, s.cols);
    if (fraction > 0) {
        std::vector<Eigen::Triplet<float, std::int32_t>> entries;
        const auto count = static_cast<std::size_t>(fraction * static_cast<double>(s.rows) * static_cast<double>(s.cols));
        entries.reserve(count);
        for (std::size_t e = 0; e < count; ++e)
            entries.emplace_back(static_cast<std::int32_t>(random.below(static_cast<std::uint64_t>(s.rows))),
                                 static_cast<std::int32_t>(random.below(static_cast<std::uint64_t>(s.cols))),
                                 sqz::round_to_half(static_cast<float>(0.1 * random.normal())));
        sparse.setFromTriplets(entries.begin(), entries.end(), [](float a, float) { return a; });
    }
    return sqz::quantized_matrix<float>::from_codes(s.rows, s.cols, bits, std::move(lut), codes, std::move(sparse));
}

/// sum_j |w_ij x_j| for every row i (the dense part's magnitude plus the sparse part's): what
/// relative_errors divides by. One pass over the matrix, so compute it once per matrix and x.
inline std::vector<double> row_magnitudes(const sqz::quantized_matrix<float>& q, const std::vector<float>& x) {
    std::vector<double> magnitudes(static_cast<std::size_t>(q.rows()));
    std::vector<std::uint8_t> codes(static_cast<std::size_t>(q.cols()));
    for (Eigen::Index i = 0; i < q.rows(); ++i) {
        sqz::unpack(q.row_codes(i), q.bits(), codes.size(), codes);
        double magnitude = 0;
        const auto lut = q.lut_row(i);
        for (Eigen::Index j = 0; j < q.cols(); ++j)
            magnitude += std::abs(static_cast<double>(lut[codes[static_cast<std::size_t>(j)]]) * x[static_cast<std::size_t>(j)]);
        for (sqz::csr_matrix<float>::InnerIterator it(q.sparse(), i); it; ++it)
            magnitude += std::abs(static_cast<double>(it.value()) * x[static_cast<std::size_t>(it.col())]);
        magnitudes[static_cast<std::size_t>(i)] = magnitude;
    }
    return magnitudes;
}

/// |y_i - ref_i| / sum_j |w_ij x_j| for every row i, the sums from row_magnitudes.
inline std::vector<double> relative_errors(const std::vector<double>& magnitudes, const std::vector<float>& y,
                                           const std::vector<float>& ref) {
    std::vector<double> errors(magnitudes.size());
    for (std::size_t i = 0; i < errors.size(); ++i) {
        const double err = std::abs(static_cast<double>(y[i]) - ref[i]);
        errors[i] = magnitudes[i] > 0 ? err / magnitudes[i] : err;
    }
    return errors;
}

/// max_i |y_i - ref_i| / sum_j |w_ij x_j| (relative_errors).
inline double max_relative_error(const std::vector<double>& magnitudes, const std::vector<float>& y, const std::vector<float>& ref) {
    const std::vector<double> errors = relative_errors(magnitudes, y, ref);
    return errors.empty() ? 0.0 : *std::max_element(errors.begin(), errors.end());
}

}  // namespace sqz_bench
