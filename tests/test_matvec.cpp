// Matrix-vector products: the reference back end against a brute-force dense product, and the cpu
// back end (AVX-512, AVX2 and portable kernels, both numeric modes, every storage of the sparse part) against
// the reference.
#include <sqz/sqz.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using sqz::numeric_mode;
constexpr std::array all_modes{numeric_mode::exact, numeric_mode::int8, numeric_mode::int8_tile};
constexpr std::array int8_modes{numeric_mode::int8, numeric_mode::int8_tile};
using Index = Eigen::Index;

template <class T>
struct test_matrix {
    sqz::quantized_matrix<T> q;
    sqz::row_matrix<T> lut;
    std::vector<std::uint8_t> codes;  // unpacked, row-major
};

enum class sparse_kind { none, scattered, full_rows };

/// Random LUT (N(0,1)), uniform codes and a sparse part: none, a random `fraction` of entries, or
/// scattered entries plus every third row entirely sparse (all columns extracted).
template <class T = float>
test_matrix<T> make_matrix(Index rows, Index cols, int bits, std::uint64_t seed, sparse_kind kind = sparse_kind::none,
                           double fraction = 0.05) {
    sqz::synthetic::rng random(seed);
    test_matrix<T> m;
    m.lut.resize(rows, Index{1} << bits);
    for (Index i = 0; i < m.lut.size(); ++i) m.lut.data()[i] = static_cast<T>(random.normal());
    m.codes.resize(static_cast<std::size_t>(rows * cols));
    for (auto& c : m.codes) c = static_cast<std::uint8_t>(random.below(1u << bits));
    sqz::csr_matrix<T> sparse(rows, cols);
    if (kind != sparse_kind::none) {
        std::vector<Eigen::Triplet<T, std::int32_t>> entries;
        for (Index i = 0; i < rows; ++i)
            for (Index j = 0; j < cols; ++j)
                if ((kind == sparse_kind::full_rows && i % 3 == 1) || random.uniform() < fraction)
                    entries.emplace_back(static_cast<std::int32_t>(i), static_cast<std::int32_t>(j),
                                         static_cast<T>(random.normal()));
        sparse.setFromTriplets(entries.begin(), entries.end());
    }
    m.q = sqz::quantized_matrix<T>::from_codes(rows, cols, bits, m.lut, m.codes, sparse);
    return m;
}

template <class T = float>
std::vector<T> random_vector(Index n, std::uint64_t seed) {
    sqz::synthetic::rng random(seed);
    std::vector<T> x(static_cast<std::size_t>(n));
    for (auto& v : x) v = static_cast<T>(random.normal());
    return x;
}

/// Brute force from the unpacked codes and the LUT, independent of packing and of every back end:
/// long double products and sums, dense part then sparse part.
template <class T>
std::vector<long double> brute_force(const test_matrix<T>& m, const std::vector<T>& x) {
    const Index rows = m.q.rows();
    const Index cols = m.q.cols();
    std::vector<long double> y(static_cast<std::size_t>(rows), 0.0L);
    for (Index i = 0; i < rows; ++i) {
        long double sum = 0;
        for (Index j = 0; j < cols; ++j)
            sum += static_cast<long double>(m.lut(i, m.codes[static_cast<std::size_t>(i * cols + j)])) *
                   x[static_cast<std::size_t>(j)];
        for (typename sqz::csr_matrix<T>::InnerIterator it(m.q.sparse(), i); it; ++it)
            sum += static_cast<long double>(it.value()) * x[static_cast<std::size_t>(it.col())];
        y[static_cast<std::size_t>(i)] = sum;
    }
    return y;
}

/// sum_j |w_ij x_j| over the dense and sparse parts: the scale against which "relative" is measured
/// (|y_i| itself can be tiny through cancellation).
template <class T>
std::vector<double> magnitudes(const test_matrix<T>& m, const std::vector<T>& x) {
    const Index rows = m.q.rows();
    const Index cols = m.q.cols();
    std::vector<double> out(static_cast<std::size_t>(rows), 0.0);
    for (Index i = 0; i < rows; ++i) {
        double sum = 0;
        for (Index j = 0; j < cols; ++j)
            sum += std::abs(static_cast<double>(m.lut(i, m.codes[static_cast<std::size_t>(i * cols + j)])) *
                            static_cast<double>(x[static_cast<std::size_t>(j)]));
        for (typename sqz::csr_matrix<T>::InnerIterator it(m.q.sparse(), i); it; ++it)
            sum += std::abs(static_cast<double>(it.value()) * static_cast<double>(x[static_cast<std::size_t>(it.col())]));
        out[static_cast<std::size_t>(i)] = sum;
    }
    return out;
}

template <class T, class Reference>
void require_close(const std::vector<T>& y, const Reference& reference, const std::vector<double>& scale,
                   double relative, const std::string& what) {
    REQUIRE(y.size() == reference.size());
    for (std::size_t i = 0; i < y.size(); ++i) {
        const double err = std::abs(static_cast<double>(y[i]) - static_cast<double>(reference[i]));
        const double limit = relative * scale[i] + 4 * static_cast<double>(std::numeric_limits<T>::min());
        if (!(err <= limit)) {
            INFO(what << ": row " << i << " y = " << y[i] << " reference = " << static_cast<double>(reference[i])
                      << " |error| = " << err << " limit = " << limit);
            REQUIRE(err <= limit);
        }
    }
}

struct shape {
    Index rows, cols;
};

// Odd shapes: 1 x 1, sizes that are not multiples of 8, 32, 64, 128 or 256, a few exact multiples,
// and more rows than one thread's block of 32.
const std::vector<shape> odd_shapes{{1, 1},   {1, 7},    {3, 1},    {5, 33},   {7, 100},  {13, 255},
                                    {17, 257}, {2, 256},  {9, 511},  {31, 130}, {67, 1000}, {70, 97}};

const std::vector<sqz::cpu_kernel> cpu_kernels = [] {
    std::vector<sqz::cpu_kernel> k{sqz::cpu_kernel::portable};
    if (sqz::detail::cpu_has_avx2_fma()) k.push_back(sqz::cpu_kernel::avx2);
    if (sqz::detail::cpu_has_avx512()) k.push_back(sqz::cpu_kernel::avx512);  // else "kernels this machine runs" warns
    return k;
}();

std::string name(sqz::cpu_kernel k) { return std::string(sqz::to_string(k)); }

}  // namespace

TEST_CASE("back-end traits describe what each back end supports", "[matvec][traits]") {
    using sqz::backend_traits;
    namespace backend = sqz::backend;
    STATIC_REQUIRE(backend_traits<backend::reference>::available);
    STATIC_REQUIRE(backend_traits<backend::cpu>::available);
    STATIC_REQUIRE(!backend_traits<backend::cuda>::available);  // this file is not compiled by nvcc
    STATIC_REQUIRE(backend_traits<backend::reference>::supports_bits(1) && backend_traits<backend::reference>::supports_bits(8));
    STATIC_REQUIRE(backend_traits<backend::cpu>::supports_bits(3) && !backend_traits<backend::cpu>::supports_bits(9));
    STATIC_REQUIRE(backend_traits<backend::cuda>::supports_bits(2) && backend_traits<backend::cuda>::supports_bits(4) &&
                   !backend_traits<backend::cuda>::supports_bits(5));
    STATIC_REQUIRE(backend_traits<backend::cpu>::matrix_space == sqz::memory_space::host);
    STATIC_REQUIRE(backend_traits<backend::cuda>::matrix_space == sqz::memory_space::cuda_device);
    STATIC_REQUIRE(backend_traits<backend::cpu>::supports_scalar<double>);
    STATIC_REQUIRE(!backend_traits<backend::cuda>::supports_scalar<double>);
    STATIC_REQUIRE(backend_traits<backend::cpu>::max_matmul_columns == 16);
    STATIC_REQUIRE(sqz::prepared_for<sqz::cpu_matrix<float>, backend::cpu>);
    STATIC_REQUIRE(!sqz::prepared_for<sqz::cpu_matrix<float>, backend::reference>);
    STATIC_REQUIRE(!sqz::prepared_for<sqz::quantized_matrix<float>, backend::cpu>);
}

TEST_CASE("reference matvec equals a brute-force dense product", "[matvec][reference]") {
    for (int bits = 1; bits <= 8; ++bits)
        for (const auto kind : {sparse_kind::none, sparse_kind::scattered, sparse_kind::full_rows})
            for (const shape s : {shape{1, 1}, shape{4, 9}, shape{11, 70}, shape{6, 300}}) {
                const auto m = make_matrix(s.rows, s.cols, bits, 17 * static_cast<std::uint64_t>(bits) + s.cols,
                                           kind);
                const auto x = random_vector(s.cols, 5 + static_cast<std::uint64_t>(s.rows));
                std::vector<float> y(static_cast<std::size_t>(s.rows));
                sqz::matvec<sqz::backend::reference>(m.q, x, y);
                // The reference rounds a double sum once: within a few float ulps of the exact value.
                require_close(y, brute_force(m, x), magnitudes(m, x), 1e-6, "reference");
            }
}

TEST_CASE("reference matvec in double precision", "[matvec][reference]") {
    const auto m = make_matrix<double>(9, 131, 3, 77, sparse_kind::scattered);
    const auto x = random_vector<double>(131, 78);
    std::vector<double> y(9);
    sqz::matvec<sqz::backend::reference>(m.q, x, y);
    require_close(y, brute_force(m, x), magnitudes(m, x), 1e-14, "reference double");
}

TEST_CASE("tile layout: encode_tile and tile_code are inverse for 1..4 bits", "[matvec][cpu][layout]") {
    namespace layout = sqz::detail::cpu_layout;
    for (int bits = 1; bits <= 4; ++bits) {
        sqz::synthetic::rng random(static_cast<std::uint64_t>(bits));
        std::array<std::uint8_t, layout::tile_columns> codes{};
        for (auto& c : codes) c = static_cast<std::uint8_t>(random.below(1u << bits));
        std::vector<std::uint8_t> tile(layout::tile_bytes(bits));
        layout::encode_tile(codes, bits, tile);
        for (std::size_t c = 0; c < layout::tile_columns; ++c) REQUIRE(layout::tile_code(tile.data(), bits, c) == codes[c]);
    }
    // Spot checks of the documented bit positions (cpu_layout.hpp).
    std::array<std::uint8_t, layout::tile_columns> codes{};
    codes[32 * 1 + 5] = 0b101;  // slot 1, lane 5
    codes[32 * 6 + 5] = 0b110;  // slot 6, lane 5
    codes[32 * 7 + 5] = 0b011;  // slot 7, lane 5
    std::vector<std::uint8_t> tile(layout::tile_bytes(3));
    layout::encode_tile(codes, 3, tile);
    // V_k: code(2k) | bit k of code(6) << 3 | code(2k+1) << 4 | bit k of code(7) << 7
    CHECK(tile[5] == (0b0 << 3 | 0b101 << 4 | 0b1 << 7));
    CHECK(tile[32 + 5] == (0b1 << 3 | 0b1 << 7));
    CHECK(tile[64 + 5] == (0b1 << 3 | 0b0 << 7));
    REQUIRE_THROWS_AS(layout::encode_tile(codes, 5, tile), sqz::error);
}

TEST_CASE("exact tables hold every LUT byte where the decoders look, column orders are permutations",
          "[matvec][cpu][layout]") {
    namespace layout = sqz::detail::cpu_layout;
    for (int bits = 1; bits <= 4; ++bits) {
        std::vector<bool> seen(layout::tile_columns, false);
        for (std::size_t p = 0; p < layout::tile_columns; ++p) {
            const std::size_t c = layout::exact_column(bits, p);
            REQUIRE(c < layout::tile_columns);
            REQUIRE(!seen[c]);
            seen[c] = true;
        }
    }
    // Distinct bytes in every position of every entry, so a misplaced byte cannot go unnoticed.
    std::array<std::uint32_t, 16> lut{};
    for (std::uint32_t k = 0; k < 16; ++k) lut[k] = (0x01020304u * (k + 1)) ^ 0x80402010u;
    std::array<std::uint8_t, layout::exact_table_bytes> table{};
    const auto byte = [](std::uint32_t v, int p) { return static_cast<std::uint8_t>(v >> (8 * p)); };
    layout::fill_exact_table(4, std::span<const std::uint32_t>(lut.data(), 16), table);
    for (std::size_t k = 0; k < 16; ++k)
        for (int p = 0; p < 4; ++p) REQUIRE(table[16 * static_cast<std::size_t>(p) + k] == byte(lut[k], p));  // byte planes
    layout::fill_exact_table(3, std::span<const std::uint32_t>(lut.data(), 8), table);
    for (std::size_t k = 0; k < 8; ++k)
        for (int p = 0; p < 4; ++p) {
            const auto q = static_cast<std::size_t>(p);
            REQUIRE(table[16 * (q / 2) + 8 * (q % 2) + k] == byte(lut[k], p));  // byte-pair planes (even slots)
            REQUIRE(table[32 + 4 * k + q] == byte(lut[k], p));                 // floats (odd slots, vpermps)
        }
}

TEST_CASE("cpu matvec agrees with the reference on odd shapes, all widths, both kernels", "[matvec][cpu]") {
    for (const auto kernel : cpu_kernels)
        for (int bits = 1; bits <= 8; ++bits)
            for (std::size_t k = 0; k < odd_shapes.size(); ++k) {
                const shape s = odd_shapes[k];
                const auto kind = std::array{sparse_kind::none, sparse_kind::scattered, sparse_kind::full_rows}[k % 3];
                const auto m = make_matrix(s.rows, s.cols, bits, 1000 * static_cast<std::uint64_t>(bits) + k, kind);
                const auto x = random_vector(s.cols, 31 + k);
                const auto p = sqz::prepare<sqz::backend::cpu>(m.q);
                std::vector<float> y(static_cast<std::size_t>(s.rows));
                std::vector<float> reference(y.size());
                sqz::matvec<sqz::backend::reference>(m.q, x, reference);
                const auto scale = magnitudes(m, x);
                if (kernel != sqz::cpu_kernel::portable && bits > 4) {
                    REQUIRE_THROWS_AS(sqz::matvec<sqz::backend::cpu>(p, x, y, {.kernel = kernel}), sqz::error);
                    continue;
                }
                sqz::matvec<sqz::backend::cpu>(p, x, y, {.kernel = kernel});
                require_close(y, reference, scale, 1e-5,
                              std::string("exact ") + name(kernel) + " bits " + std::to_string(bits) + " shape " +
                                  std::to_string(s.rows) + "x" + std::to_string(s.cols));
                // The int8 kernels implement the reference's int8 specifications: same integers, so
                // the results differ only by the rounding of the final float scaling.
                for (const auto mode : int8_modes) {
                    std::vector<float> reference_int8(y.size());
                    sqz::matvec<sqz::backend::reference>(m.q, x, reference_int8, {.mode = mode});
                    sqz::matvec<sqz::backend::cpu>(p, x, y, {.mode = mode, .kernel = kernel});
                    require_close(y, reference_int8, scale, 1e-5, std::string(sqz::to_string(mode)) + " " + name(kernel) +
                                                                      " bits " + std::to_string(bits));
                    // The convenience overload that prepares on every call.
                    std::vector<float> direct(y.size());
                    sqz::matvec<sqz::backend::cpu>(m.q, x, direct, {.mode = mode, .kernel = kernel});
                    REQUIRE(direct == y);
                }
            }
}

TEST_CASE("cpu matvec: long rows keep the exact-mode error within 1e-5 relative", "[matvec][cpu]") {
    for (const auto kernel : cpu_kernels)
        for (const int bits : {3, 4}) {
            const auto m = make_matrix(6, 14336, bits, 5 + static_cast<std::uint64_t>(bits), sparse_kind::scattered, 0.0045);
            const auto x = random_vector(14336, 6);
            std::vector<float> y(6);
            sqz::matvec<sqz::backend::cpu>(m.q, x, y, {.kernel = kernel});
            require_close(y, brute_force(m, x), magnitudes(m, x), 1e-5, std::string("long rows ") + name(kernel));
        }
}

TEST_CASE("cpu matvec: rows of several fp32 windows and a partial last window", "[matvec][cpu]") {
    // The AVX2 exact kernel sums a row's products in fp32 over windows of exact_float_tiles tiles
    // (1024 columns) before adding them in double; cover whole windows followed by a partial one,
    // for groups of four rows and the single rows after them.
    for (const auto kernel : cpu_kernels)
        for (int bits = 1; bits <= 4; ++bits)
            for (const shape s : {shape{6, 1300}, shape{9, 2049}, shape{5, 2304}}) {
                const auto m = make_matrix(s.rows, s.cols, bits, 77 + static_cast<std::uint64_t>(bits), sparse_kind::scattered);
                const auto x = random_vector(s.cols, 8);
                std::vector<float> y(static_cast<std::size_t>(s.rows));
                sqz::matvec<sqz::backend::cpu>(sqz::prepare<sqz::backend::cpu>(m.q), x, y, {.kernel = kernel});
                require_close(y, brute_force(m, x), magnitudes(m, x), 1e-5,
                              std::string("windows ") + name(kernel) + " bits " + std::to_string(bits) + " shape " +
                                  std::to_string(s.rows) + "x" + std::to_string(s.cols));
            }
}

TEST_CASE("cpu matvec: codes of more than 2 MiB (huge-page buffers) agree with the brute force", "[matvec][cpu]") {
    // 1100 x 4096 at 4 bits: 2.2 MB of repacked codes, a buffer that asks for huge pages
    // (aligned_buffer.hpp), read by every kernel on one and on two threads.
    const auto m = make_matrix(1100, 4096, 4, 2024, sparse_kind::scattered, 0.005);
    const auto p = sqz::prepare<sqz::backend::cpu>(m.q);
    REQUIRE(p.bytes_read(sqz::numeric_mode::exact) > sqz::detail::huge_page_bytes);
    const auto x = random_vector(4096, 9);
    const auto exact = brute_force(m, x);
    const auto scale = magnitudes(m, x);
    for (const auto kernel : cpu_kernels)
        for (const int threads : {1, 2}) {
            std::vector<float> y(1100);
            sqz::matvec<sqz::backend::cpu>(p, x, y, {.threads = threads, .kernel = kernel});
            require_close(y, exact, scale, 1e-5, "huge-page codes, " + name(kernel) + ", threads " + std::to_string(threads));
        }
}

TEST_CASE("cpu matvec: the sparse part over several row blocks, every count of nonzeros per row", "[matvec][cpu]") {
    // 9000 columns make a row block of a few dozen rows, so 301 rows are several blocks (and a tail
    // that is not a whole group of four); row i has i mod 41 nonzeros, which covers rows without any,
    // every remainder modulo 8 and several whole groups of 8. With 300 columns (two tiles) a group of
    // four rows has far more steps of eight entries than tiles, which the 4-bit int8 kernels, which
    // take one step per tile, finish after the dense part.
    constexpr Index rows = 301;
    for (const Index cols : {Index{9000}, Index{300}})
        for (const int bits : {3, 4}) {
            auto m = make_matrix(rows, cols, bits, 600 + static_cast<std::uint64_t>(bits));
            sqz::synthetic::rng random(610 + static_cast<std::uint64_t>(bits));
            std::vector<Eigen::Triplet<float, std::int32_t>> entries;
            for (Index i = 0; i < rows; ++i)
                for (Index e = 0; e < i % 41; ++e)
                    entries.emplace_back(static_cast<std::int32_t>(i), static_cast<std::int32_t>(random.below(cols)),
                                         static_cast<float>(random.normal()));
            sqz::csr_matrix<float> sparse(rows, cols);
            sparse.setFromTriplets(entries.begin(), entries.end(), [](float a, float) { return a; });
            m.q = sqz::quantized_matrix<float>::from_codes(rows, cols, bits, m.lut, m.codes, sparse);
            const auto x = random_vector(cols, 620);
            const auto p = sqz::prepare<sqz::backend::cpu>(m.q);
            const auto scale = magnitudes(m, x);
            for (const auto kernel : cpu_kernels) {
                std::vector<float> y(rows), two(rows);
                sqz::matvec<sqz::backend::cpu>(p, x, y, {.threads = 1, .kernel = kernel});
                require_close(y, brute_force(m, x), scale, 1e-5, std::string("sparse blocks exact ") + name(kernel));
                sqz::matvec<sqz::backend::cpu>(p, x, two, {.threads = 2, .kernel = kernel});
                REQUIRE(two == y);
                for (const auto mode : int8_modes) {
                    std::vector<float> reference_int8(rows);
                    sqz::matvec<sqz::backend::reference>(m.q, x, reference_int8, {.mode = mode});
                    sqz::matvec<sqz::backend::cpu>(p, x, y, {.mode = mode, .threads = 1, .kernel = kernel});
                    require_close(y, reference_int8, scale, 1e-5,
                                  std::string("sparse blocks ") + std::string(sqz::to_string(mode)) + " " + name(kernel));
                    sqz::matvec<sqz::backend::cpu>(p, x, two, {.mode = mode, .threads = 2, .kernel = kernel});
                    REQUIRE(two == y);
                }
            }
            if (sqz::detail::cpu_has_avx512())  // both compute the 4-bit groups in the same steps
                for (const auto mode : int8_modes) {
                    std::vector<float> avx2(rows), avx512(rows);
                    sqz::matvec<sqz::backend::cpu>(p, x, avx2, {.mode = mode, .kernel = sqz::cpu_kernel::avx2});
                    sqz::matvec<sqz::backend::cpu>(p, x, avx512, {.mode = mode, .kernel = sqz::cpu_kernel::avx512});
                    for (std::size_t i = 0; i < avx2.size(); ++i)
                        REQUIRE(std::bit_cast<std::uint32_t>(avx512[i]) == std::bit_cast<std::uint32_t>(avx2[i]));
                }
        }
}

TEST_CASE("cpu matvec in double precision uses the portable kernels", "[matvec][cpu]") {
    for (const int bits : {2, 3, 6}) {
        const auto m = make_matrix<double>(19, 300, bits, 40 + static_cast<std::uint64_t>(bits), sparse_kind::scattered);
        const auto x = random_vector<double>(300, 41);
        std::vector<double> y(19);
        sqz::matvec<sqz::backend::cpu>(m.q, x, y);
        require_close(y, brute_force(m, x), magnitudes(m, x), 1e-12, "cpu double");
        REQUIRE_THROWS_AS(sqz::matvec<sqz::backend::cpu>(m.q, x, y, {.kernel = sqz::cpu_kernel::avx2}), sqz::error);
        REQUIRE_THROWS_AS(sqz::matvec<sqz::backend::cpu>(m.q, x, y, {.kernel = sqz::cpu_kernel::avx512}), sqz::error);
    }
}

TEST_CASE("compile-time widths and the Eigen convenience forms", "[matvec][cpu]") {
    const auto m = make_matrix(21, 77, 3, 90, sparse_kind::scattered);
    const sqz::quantized_matrix<float, 3> fixed(m.q);
    Eigen::VectorXf x = Eigen::Map<const Eigen::VectorXf>(random_vector(77, 91).data(), 77);
    const Eigen::VectorXf y_ref = sqz::matvec<sqz::backend::reference>(fixed, x);
    const Eigen::VectorXf y_cpu = sqz::matvec<sqz::backend::cpu>(fixed, x);
    REQUIRE(y_ref.size() == 21);
    REQUIRE((y_cpu - y_ref).cwiseAbs().maxCoeff() <= 1e-4f);
}

TEST_CASE("int8 activation quantization follows its specification", "[matvec][int8]") {
    sqz::synthetic::rng random(3);
    std::vector<float> x(1000);
    for (std::size_t j = 0; j < x.size(); ++j)
        x[j] = static_cast<float>(random.normal() * (j % 97 == 0 ? 50.0 : 1.0));  // outliers
    std::fill(x.begin() + 300, x.begin() + 340, 0.0f);                           // an all-zero slot
    const auto a = sqz::reference::quantize_activations<float>(x);
    const auto a_tile = sqz::reference::quantize_activations<float>(x, false);
    REQUIRE(a.finite);
    REQUIRE(a_tile.finite);
    for (std::size_t j = 0; j < x.size(); ++j) {
        const std::size_t tile = j / 256;
        const std::size_t slot = j / 32;
        float tile_max = 0;
        float slot_max = 0;
        for (std::size_t k = tile * 256; k < std::min(x.size(), tile * 256 + 256); ++k) tile_max = std::max(tile_max, std::abs(x[k]));
        for (std::size_t k = slot * 32; k < std::min(x.size(), slot * 32 + 32); ++k) slot_max = std::max(slot_max, std::abs(x[k]));
        REQUIRE(std::abs(int{a.q[j]}) <= 127);
        // int8_tile: one step per tile, the tile's own int8 step, and D_b = 1.
        REQUIRE(a_tile.slot_scale[slot] == 1);
        REQUIRE(static_cast<double>(a_tile.tile_scale[tile]) == Approx(tile_max / 127.0).epsilon(1e-6));
        REQUIRE(std::abs(static_cast<double>(x[j]) - a_tile.dequantized(j)) <= 0.5 * a_tile.tile_scale[tile] * (1 + 1e-6));
        REQUIRE(std::abs(int{a_tile.q[j]}) <= 127);
        if (slot_max == 0) {
            REQUIRE(a.q[j] == 0);
            continue;
        }
        const double step = static_cast<double>(a.tile_scale[tile]) * a.slot_scale[slot];
        // The step is at most the slot's own int8 step plus one unit of the tile (the 8-bit multiplier).
        REQUIRE(step <= slot_max / 127.0 * (1 + 1e-6) + tile_max / (127.0 * 255.0) * (1 + 1e-6));
        REQUIRE(std::abs(x[j] - a.dequantized(j)) <= 0.5 * step * (1 + 1e-6));
    }
    // The cpu back end's quantizers (portable and AVX2) produce the same integers, in both modes.
    for (const bool slot_scales : {true, false}) {
        const auto& expected = slot_scales ? a : a_tile;
        sqz::detail::int8_activation_buffers<float> portable;
        REQUIRE(sqz::detail::quantize_activations<float>(x, 4, slot_scales, portable));
        for (std::size_t j = 0; j < x.size(); ++j) REQUIRE(portable.q[j] == expected.q[j]);
        for (std::size_t b = 0; b < expected.slot_scale.size(); ++b) REQUIRE(portable.slot_scale[b] == expected.slot_scale[b]);
        for (std::size_t t = 0; t < expected.tile_scale.size(); ++t) REQUIRE(portable.tile_scale[t] == expected.tile_scale[t]);
#if SQZ_HAVE_X86_SIMD
        if (sqz::detail::cpu_has_avx2_fma()) {
            sqz::detail::int8_activation_buffers<float> simd;
            REQUIRE(sqz::detail::avx2::quantize_activations(x.data(), x.size(), 4, slot_scales, simd));
            REQUIRE(std::equal(simd.q.begin(), simd.q.end(), portable.q.begin()));
            REQUIRE(simd.slot_scale == portable.slot_scale);
            REQUIRE(simd.tile_scale == portable.tile_scale);
            REQUIRE(simd.x_hat_sum == portable.x_hat_sum);
        }
#endif
    }
}

TEST_CASE("int8 modes stay within their documented error bound", "[matvec][int8]") {
    // Bound (docs/design.md): |y_int8 - y| <= (s_i / 2) sum_j |x^_j| + sum_j |L_i[code_ij]| |x_j - x^_j|
    // plus float rounding, where s_i is the row's 7-bit LUT step and x^ the dequantized activations.
    for (const auto mode : int8_modes)
        for (const int bits : {2, 3, 4, 8})
            for (const bool outliers : {false, true}) {
                const auto m = make_matrix(40, 700, bits, 300 + static_cast<std::uint64_t>(bits), sparse_kind::scattered);
                auto x = random_vector(700, 301);
                if (outliers)
                    for (std::size_t j = 0; j < x.size(); j += 50) x[j] *= 100.0f;
                const auto a = sqz::reference::quantize_activations<float>(x, mode == numeric_mode::int8);
                std::vector<float> exact(40);
                sqz::matvec<sqz::backend::reference>(m.q, x, exact);
                const auto scale = magnitudes(m, x);
                for (const auto kernel : cpu_kernels) {
                    if (kernel != sqz::cpu_kernel::portable && bits > 4) continue;
                    INFO(sqz::to_string(mode) << " bits " << bits << (outliers ? " with outliers " : " ") << name(kernel));
                    std::vector<float> y(40);
                    sqz::matvec<sqz::backend::cpu>(m.q, x, y, {.mode = mode, .kernel = kernel});
                    double worst_ratio = 0;
                    for (Index i = 0; i < 40; ++i) {
                        const auto lut_row = m.q.lut_row(i);
                        const auto [lo, hi] = std::minmax_element(lut_row.begin(), lut_row.end());
                        const double lut_step = (static_cast<double>(*hi) - *lo) / 127.0;
                        double bound = 0;
                        for (std::size_t j = 0; j < x.size(); ++j) {
                            const double w = m.lut(i, m.codes[static_cast<std::size_t>(i) * 700 + j]);
                            bound += 0.5 * lut_step * std::abs(static_cast<double>(a.dequantized(j))) +
                                     std::abs(w) * std::abs(static_cast<double>(x[j]) - static_cast<double>(a.dequantized(j)));
                        }
                        bound += 1e-5 * scale[static_cast<std::size_t>(i)];  // float rounding of both products
                        const double err = std::abs(static_cast<double>(y[static_cast<std::size_t>(i)]) - exact[static_cast<std::size_t>(i)]);
                        REQUIRE(err <= bound);
                        worst_ratio = std::max(worst_ratio, err / scale[static_cast<std::size_t>(i)]);
                    }
                    // And small in absolute terms: about 1% of sum_j |w_ij x_j| at most here, a little more
                    // when 100x outliers coarsen the steps of their slots (int8), of their whole tiles (int8_tile).
                    CAPTURE(worst_ratio);
                    REQUIRE(worst_ratio < (outliers ? 0.03 : 0.015));
                }
            }
}

TEST_CASE("NaN and infinity in x propagate as IEEE arithmetic says", "[matvec][nan]") {
    // LUT entry 0 of every row is exactly 0, so 0 * Inf = NaN in the rows whose code at the infinite
    // column is 0; rows with a positive or negative weight there get +Inf or -Inf, and a row that
    // meets +Inf and -Inf gets NaN.
    for (const int bits : {1, 3, 4, 6}) {
        auto m = make_matrix(24, 300, bits, 500 + static_cast<std::uint64_t>(bits), sparse_kind::scattered);
        for (Index i = 0; i < m.lut.rows(); ++i) m.lut(i, 0) = 0.0f;
        m.q = sqz::quantized_matrix<float>::from_codes(24, 300, bits, m.lut, m.codes, m.q.sparse());
        const auto p = sqz::prepare<sqz::backend::cpu>(m.q);
        const float inf = std::numeric_limits<float>::infinity();
        const float nan = std::numeric_limits<float>::quiet_NaN();
        for (int variant = 0; variant < 3; ++variant) {
            auto x = random_vector(300, 501);
            if (variant == 0) x[7] = nan;
            if (variant == 1) x[260] = inf;
            if (variant == 2) {
                x[3] = inf;
                x[299] = -inf;
            }
            // The expected class of each y_i from first principles: the set of product classes.
            std::vector<float> reference(24);
            sqz::matvec<sqz::backend::reference>(m.q, x, reference);
            for (Index i = 0; i < 24; ++i) {
                bool any_nan = false, pos = false, neg = false;
                const auto classify = [&](float product) {
                    any_nan |= std::isnan(product);
                    pos |= product == inf;
                    neg |= product == -inf;
                };
                for (Index j = 0; j < 300; ++j)
                    classify(m.lut(i, m.codes[static_cast<std::size_t>(i * 300 + j)]) * x[static_cast<std::size_t>(j)]);
                for (sqz::csr_matrix<float>::InnerIterator it(m.q.sparse(), i); it; ++it)
                    classify(it.value() * x[static_cast<std::size_t>(it.col())]);
                const float r = reference[static_cast<std::size_t>(i)];
                if (any_nan || (pos && neg))
                    REQUIRE(std::isnan(r));
                else if (pos)
                    REQUIRE(r == inf);
                else if (neg)
                    REQUIRE(r == -inf);
                else
                    REQUIRE(std::isfinite(r));
            }
            for (const auto kernel : cpu_kernels)
                for (const auto mode : all_modes) {
                    if (kernel != sqz::cpu_kernel::portable && bits > 4) continue;
                    std::vector<float> y(24);
                    sqz::matvec<sqz::backend::cpu>(p, x, y, {.mode = mode, .kernel = kernel});
                    for (std::size_t i = 0; i < y.size(); ++i) {
                        INFO("variant " << variant << " bits " << bits << " row " << i << " " << name(kernel));
                        REQUIRE(std::isnan(y[i]) == std::isnan(reference[i]));
                        if (std::isinf(reference[i])) REQUIRE(y[i] == reference[i]);
                        if (std::isfinite(reference[i])) REQUIRE(std::isfinite(y[i]));
                    }
                }
        }
    }
}

TEST_CASE("mismatched sizes are rejected with sqz::error", "[matvec][errors]") {
    const auto m = make_matrix(5, 40, 4, 9);
    const auto p = sqz::prepare<sqz::backend::cpu>(m.q);
    std::vector<float> x(40), y(5), short_x(39), long_y(6);
    REQUIRE_THROWS_AS(sqz::matvec<sqz::backend::reference>(m.q, short_x, y), sqz::error);
    REQUIRE_THROWS_AS(sqz::matvec<sqz::backend::reference>(m.q, x, long_y), sqz::error);
    REQUIRE_THROWS_AS(sqz::matvec<sqz::backend::cpu>(m.q, short_x, y), sqz::error);
    REQUIRE_THROWS_AS(sqz::matvec<sqz::backend::cpu>(p, short_x, y), sqz::error);
    REQUIRE_THROWS_AS(sqz::matvec<sqz::backend::cpu>(p, x, long_y), sqz::error);
    REQUIRE_THROWS_WITH(sqz::matvec<sqz::backend::cpu>(p, short_x, y),
                        Catch::Contains("x has 39 entries") && Catch::Contains("40 columns"));
    REQUIRE_THROWS_AS(sqz::matvec<sqz::backend::cpu>(p, x, y, {.threads = -1}), sqz::error);

    Eigen::MatrixXf X(40, 3), Y(5, 3), wrong_rows(41, 3), too_many(40, 17), none(40, 0), wrong_y(5, 2);
    X.setRandom();
    REQUIRE_THROWS_AS(sqz::matmul<sqz::backend::cpu>(p, wrong_rows, Y), sqz::error);
    REQUIRE_THROWS_AS(sqz::matmul<sqz::backend::cpu>(p, too_many, Y), sqz::error);
    REQUIRE_THROWS_AS(sqz::matmul<sqz::backend::cpu>(p, none, Y), sqz::error);
    REQUIRE_THROWS_AS(sqz::matmul<sqz::backend::cpu>(p, X, wrong_y), sqz::error);
    REQUIRE_THROWS_AS(sqz::matmul<sqz::backend::reference>(m.q, X, wrong_y), sqz::error);
    REQUIRE_THROWS_WITH(sqz::matmul<sqz::backend::reference>(m.q, too_many, Y), Catch::Contains("17 columns"));
}

TEST_CASE("cpu results do not depend on the number of threads", "[matvec][cpu][threads]") {
    for (const auto kernel : cpu_kernels)
        for (const int bits : {3, 4, 7}) {
            if (kernel != sqz::cpu_kernel::portable && bits > 4) continue;
            const auto m = make_matrix(203, 777, bits, 70 + static_cast<std::uint64_t>(bits), sparse_kind::scattered);
            const auto x = random_vector(777, 71);
            const auto p = sqz::prepare<sqz::backend::cpu>(m.q);
            for (const auto mode : all_modes) {
                std::vector<float> one(203), two(203), three(203);
                sqz::matvec<sqz::backend::cpu>(p, x, one, {.mode = mode, .threads = 1, .kernel = kernel});
                sqz::matvec<sqz::backend::cpu>(p, x, two, {.mode = mode, .threads = 2, .kernel = kernel});
                sqz::matvec<sqz::backend::cpu>(p, x, three, {.mode = mode, .threads = 3, .kernel = kernel});
                REQUIRE(one == two);
                REQUIRE(one == three);
                Eigen::MatrixXf X = Eigen::MatrixXf::Random(777, 5);
                Eigen::MatrixXf Y1(203, 5), Y2(203, 5);
                sqz::matmul<sqz::backend::cpu>(p, X, Y1, {.mode = mode, .threads = 1, .kernel = kernel});
                sqz::matmul<sqz::backend::cpu>(p, X, Y2, {.mode = mode, .threads = 2, .kernel = kernel});
                REQUIRE(Y1 == Y2);
            }
        }
}

TEST_CASE("cpu results do not depend on the number of threads when threads take runs of blocks", "[matvec][cpu][threads]") {
    // 16384 columns at 4 bits make row blocks of 32 rows, so 430 rows are 14 blocks: with 2 or 3
    // threads each takes runs of 2-3 consecutive blocks (for_row_blocks), and the last block is short.
    const auto m = make_matrix(430, 16384, 4, 77, sparse_kind::scattered);
    const auto x = random_vector(16384, 78);
    const auto p = sqz::prepare<sqz::backend::cpu>(m.q);
    for (const auto kernel : cpu_kernels)
        for (const auto mode : all_modes) {
            std::vector<float> one(430), two(430), three(430);
            sqz::matvec<sqz::backend::cpu>(p, x, one, {.mode = mode, .threads = 1, .kernel = kernel});
            sqz::matvec<sqz::backend::cpu>(p, x, two, {.mode = mode, .threads = 2, .kernel = kernel});
            sqz::matvec<sqz::backend::cpu>(p, x, three, {.mode = mode, .threads = 3, .kernel = kernel});
            INFO(sqz::to_string(mode) << " " << name(kernel));
            REQUIRE(one == two);
            REQUIRE(one == three);
            if (mode == numeric_mode::exact) require_close(one, brute_force(m, x), magnitudes(m, x), 1e-5, "runs of blocks");
        }
}

TEST_CASE("matmul agrees with the reference for 1..16 columns", "[matvec][matmul]") {
    for (const auto kernel : cpu_kernels)
        for (const int bits : {1, 3, 4, 5}) {
            if (kernel != sqz::cpu_kernel::portable && bits > 4) continue;
            const auto m = make_matrix(37, 301, bits, 800 + static_cast<std::uint64_t>(bits), sparse_kind::full_rows);
            const auto p = sqz::prepare<sqz::backend::cpu>(m.q);
            for (const Index k : {1, 2, 5, 16}) {
                Eigen::MatrixXf big = Eigen::MatrixXf::Random(301, k + 2);
                const auto X = big.middleCols(1, k);  // a strided block: Eigen::Ref must cope
                for (const auto mode : all_modes) {
                    Eigen::MatrixXf Y(37, k), R(37, k);
                    sqz::matmul<sqz::backend::cpu>(p, X, Y, {.mode = mode, .kernel = kernel});
                    sqz::matmul<sqz::backend::reference>(m.q, X, R, {.mode = mode});
                    for (Index c = 0; c < k; ++c) {
                        std::vector<float> xc(X.col(c).data(), X.col(c).data() + 301);
                        std::vector<float> yc(Y.col(c).data(), Y.col(c).data() + 37);
                        std::vector<float> rc(R.col(c).data(), R.col(c).data() + 37);
                        require_close(yc, rc, magnitudes(m, xc), 1e-5,
                                      std::string("matmul ") + name(kernel) + " k " + std::to_string(k));
                    }
                }
            }
        }
}

TEST_CASE("empty matrices and empty sparse parts", "[matvec][cpu]") {
    for (const shape s : {shape{0, 5}, shape{4, 0}, shape{0, 0}}) {
        const auto m = make_matrix(s.rows, s.cols, 3, 1);
        std::vector<float> x(static_cast<std::size_t>(s.cols), 1.0f);
        std::vector<float> y(static_cast<std::size_t>(s.rows), 42.0f);
        sqz::matvec<sqz::backend::reference>(m.q, x, y);
        for (const float v : y) REQUIRE(v == 0.0f);
        std::fill(y.begin(), y.end(), 42.0f);
        for (const auto mode : all_modes) {
            sqz::matvec<sqz::backend::cpu>(m.q, x, y, {.mode = mode});
            for (const float v : y) REQUIRE(v == 0.0f);
        }
    }
}

namespace {

using sqz::detail::sparse_value_type;

#if SQZ_HAVE_X86_SIMD
/// The AVX2 kernel's decode of sparse values k..k+7, stored to out.
template <sparse_value_type V>
SQZ_AVX2_TARGET void store_avx2_values(const void* values, std::int32_t k, float* out) {
    _mm256_storeu_ps(out, sqz::detail::avx2::sparse_values8<V>(values, k));
}
#endif

/// How a test draws the sparse values so that the cpu back end picks each of its value storages:
/// any float, fp16 values that bf16 cannot hold (lowest fp16 mantissa bit set), bf16 values.
enum class value_form { any, fp16, bf16 };

float draw_sparse_value(sqz::synthetic::rng& random, value_form form) {
    const auto v = static_cast<float>(random.normal());
    if (form == value_form::bf16) return sqz::round_to_bfloat16(v);
    if (form == value_form::fp16) return sqz::half_bits_to_float(static_cast<std::uint16_t>(sqz::float_to_half_bits(v) | 1u));
    return v;
}

sparse_value_type expected_storage(value_form form) {
    return form == value_form::fp16 ? sparse_value_type::fp16
           : form == value_form::bf16 ? sparse_value_type::bf16
                                      : sparse_value_type::scalar;
}

const char* name(value_form form) {
    return form == value_form::fp16 ? "fp16" : form == value_form::bf16 ? "bf16" : "float";
}

/// m with its sparse values redrawn in `form` (same positions).
template <class T = float>
void redraw_sparse_values(test_matrix<T>& m, value_form form, std::uint64_t seed) {
    sqz::synthetic::rng random(seed);
    sqz::csr_matrix<T> sparse = m.q.sparse();
    for (Index k = 0; k < sparse.nonZeros(); ++k) sparse.valuePtr()[k] = static_cast<T>(draw_sparse_value(random, form));
    m.q = sqz::quantized_matrix<T>::from_codes(m.q.rows(), m.q.cols(), m.q.bits(), m.lut, m.codes, sparse);
}

/// y from the cpu back end (and the reference) for x, in every mode, both thread counts and every
/// kernel: exact mode within 1e-5 relative of the reference, the int8 modes within 1e-5 of the
/// reference's implementation of their specification, NaN and infinities in the same rows as the reference, 1 and 2 threads identical.
void check_against_reference(const test_matrix<float>& m, const sqz::cpu_matrix<float>& p, const std::vector<float>& x,
                             const std::string& what) {
    const auto rows = static_cast<std::size_t>(m.q.rows());
    const auto scale = magnitudes(m, x);
    for (const auto mode : all_modes) {
        std::vector<float> reference(rows);
        sqz::matvec<sqz::backend::reference>(m.q, x, reference, {.mode = mode});
        const bool finite = std::all_of(x.begin(), x.end(), [](float v) { return std::isfinite(v); });
        for (const auto kernel : cpu_kernels) {
            if (kernel != sqz::cpu_kernel::portable && m.q.bits() > 4) continue;
            const std::string label = what + " " + std::string(sqz::to_string(mode)) + " " + name(kernel);
            std::vector<float> one(rows), two(rows);
            sqz::matvec<sqz::backend::cpu>(p, x, one, {.mode = mode, .threads = 1, .kernel = kernel});
            sqz::matvec<sqz::backend::cpu>(p, x, two, {.mode = mode, .threads = 2, .kernel = kernel});
            INFO(label);
            REQUIRE(std::equal(one.begin(), one.end(), two.begin(), two.end(),
                               [](float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }));
            if (finite) {
                require_close(one, reference, scale, 1e-5, label);
                continue;
            }
            for (std::size_t i = 0; i < rows; ++i) {
                INFO("row " << i << " y = " << one[i] << " reference = " << reference[i]);
                REQUIRE(std::isnan(one[i]) == std::isnan(reference[i]));
                if (std::isinf(reference[i])) REQUIRE(one[i] == reference[i]);
                if (std::isfinite(reference[i])) REQUIRE(std::isfinite(one[i]));
            }
        }
    }
}

/// x as drawn, then with a NaN, then with +Inf and -Inf, at columns the sparse part uses when it can.
std::vector<std::vector<float>> test_vectors(const test_matrix<float>& m, std::uint64_t seed) {
    const Index cols = m.q.cols();
    std::vector<std::vector<float>> out(3, random_vector(cols, seed));
    const auto* sparse_cols = m.q.sparse().innerIndexPtr();
    const Index nnz = m.q.sparse().nonZeros();
    const auto column = [&](Index k, Index fallback) {
        return static_cast<std::size_t>(nnz > 0 ? sparse_cols[k % nnz] : fallback % cols);
    };
    out[1][column(0, 0)] = std::numeric_limits<float>::quiet_NaN();
    out[2][column(nnz / 2, 1)] = std::numeric_limits<float>::infinity();
    out[2][column(nnz - 1, cols - 1)] = -std::numeric_limits<float>::infinity();
    return out;
}

}  // namespace

TEST_CASE("cpu sparse storage: every value form on odd shapes agrees with the reference", "[matvec][cpu][sparse]") {
    for (const auto form : {value_form::any, value_form::fp16, value_form::bf16})
        for (std::size_t k = 0; k < odd_shapes.size(); ++k) {
            const shape s = odd_shapes[k];
            const int bits = std::array{1, 2, 3, 4, 6}[k % 5];
            const auto kind = k % 2 == 0 ? sparse_kind::scattered : sparse_kind::full_rows;
            auto m = make_matrix(s.rows, s.cols, bits, 2000 + k, kind, 0.1);
            redraw_sparse_values(m, form, 2100 + k);
            const auto p = sqz::prepare<sqz::backend::cpu>(m.q);
            REQUIRE(p.sparse_columns_16bit());
            if (m.q.sparse_nonzeros() > 0) REQUIRE(p.sparse_value_storage() == expected_storage(form));
            const auto vectors = test_vectors(m, 2200 + k);
            for (std::size_t v = 0; v < vectors.size(); ++v)
                check_against_reference(m, p, vectors[v],
                                        std::string(name(form)) + " values, bits " + std::to_string(bits) + " shape " +
                                            std::to_string(s.rows) + "x" + std::to_string(s.cols) + " x #" + std::to_string(v));
        }
}

TEST_CASE("cpu sparse storage: more than 65536 columns keep int32 indices, 65536 fit 16 bits", "[matvec][cpu][sparse]") {
    // Few rows, so that the test stays fast under the sanitizers; 6 rows are a group of four and two
    // single rows. The last column carries a nonzero in every row, so the widest index is used.
    for (const Index cols : {Index{65536}, Index{65537}, Index{70001}})
        for (const auto form : {value_form::any, value_form::fp16, value_form::bf16}) {
            auto m = make_matrix(6, cols, 3, 3000 + static_cast<std::uint64_t>(cols));
            sqz::synthetic::rng random(3100 + static_cast<std::uint64_t>(cols));
            std::vector<Eigen::Triplet<float, std::int32_t>> entries;
            for (Index i = 0; i < 6; ++i) {
                for (Index e = 0; e < 3 + 7 * i; ++e)  // 3..38 nonzeros: every remainder mod 8 but one
                    entries.emplace_back(static_cast<std::int32_t>(i), static_cast<std::int32_t>(random.below(cols - 1)),
                                         draw_sparse_value(random, form));
                entries.emplace_back(static_cast<std::int32_t>(i), static_cast<std::int32_t>(cols - 1),
                                     draw_sparse_value(random, form));
            }
            sqz::csr_matrix<float> sparse(6, cols);
            sparse.setFromTriplets(entries.begin(), entries.end(), [](float a, float) { return a; });
            m.q = sqz::quantized_matrix<float>::from_codes(6, cols, 3, m.lut, m.codes, sparse);
            const auto p = sqz::prepare<sqz::backend::cpu>(m.q);
            REQUIRE(p.sparse_columns_16bit() == (cols <= 65536));
            REQUIRE(p.sparse_value_storage() == expected_storage(form));
            const auto vectors = test_vectors(m, 3200 + static_cast<std::uint64_t>(cols));
            for (std::size_t v = 0; v < vectors.size(); ++v)
                check_against_reference(m, p, vectors[v],
                                        std::string(name(form)) + " values, " + std::to_string(cols) + " columns, x #" +
                                            std::to_string(v));
        }
}

TEST_CASE("cpu sparse storage: decoded values are bit-identical to the originals", "[matvec][cpu][sparse]") {
    for (const auto form : {value_form::any, value_form::fp16, value_form::bf16}) {
        auto m = make_matrix(37, 301, 4, 4000, sparse_kind::scattered, 0.1);
        redraw_sparse_values(m, form, 4001);
        // Values that stress the conversions: signed zeros, fp16 subnormals, the largest fp16.
        sqz::csr_matrix<float> sparse = m.q.sparse();
        if (form != value_form::any) {
            const std::array<float, 5> special{0.0f, -0.0f, sqz::half_bits_to_float(0x0003), sqz::half_bits_to_float(0x83ff), 65504.0f};
            for (std::size_t k = 0; k < special.size(); ++k)
                sparse.valuePtr()[3 * k] = form == value_form::bf16 ? sqz::round_to_bfloat16(special[k]) : special[k];
            m.q = sqz::quantized_matrix<float>::from_codes(37, 301, 4, m.lut, m.codes, sparse);
        }
        const auto p = sqz::prepare<sqz::backend::cpu>(m.q);
        REQUIRE(p.sparse_value_storage() == expected_storage(form));
        const auto view = p.view();
        const auto nnz = static_cast<std::int32_t>(sparse.nonZeros());
        REQUIRE(p.sparse_nonzeros() == nnz);
        const auto bits_of = [](float v) { return std::bit_cast<std::uint32_t>(v); };
        sqz::detail::with_sparse_storage(view, [&]<class Col, sparse_value_type V>() {
            REQUIRE(std::is_same_v<Col, std::uint16_t>);
            REQUIRE(V == expected_storage(form));
            const auto* col = static_cast<const Col*>(view.col);
            for (std::int32_t k = 0; k < nnz; ++k) {
                REQUIRE(static_cast<std::int32_t>(col[k]) == sparse.innerIndexPtr()[k]);
                REQUIRE(bits_of(sqz::detail::sparse_value<float, V>(view.val, k)) == bits_of(sparse.valuePtr()[k]));
            }
#if SQZ_HAVE_X86_SIMD
            if (sqz::detail::cpu_has_avx2_fma())
                for (std::int32_t k = 0; k + 8 <= nnz; k += 8) {
                    std::array<float, 8> decoded{};
                    store_avx2_values<V>(view.val, k, decoded.data());
                    for (std::int32_t u = 0; u < 8; ++u) REQUIRE(bits_of(decoded[static_cast<std::size_t>(u)]) == bits_of(sparse.valuePtr()[k + u]));
                }
#endif
        });
        // bytes_read counts what is stored: 2 + 2 bytes per nonzero (and per padding entry) for 16-bit
        // values, 2 + 4 otherwise, and the row offsets.
        const auto dense_only = sqz::prepare<sqz::backend::cpu>(
            sqz::quantized_matrix<float>::from_codes(37, 301, 4, m.lut, m.codes, sqz::csr_matrix<float>(37, 301)));
        const std::size_t per_nonzero = form == value_form::any ? 6 : 4;
        for (const auto mode : all_modes)
            REQUIRE(p.bytes_read(mode) - dense_only.bytes_read(mode) ==
                    (static_cast<std::size_t>(nnz) + sqz::detail::sparse_padding) * per_nonzero + 38 * 4);
    }
}

TEST_CASE("cpu sparse storage: one value that fp16 cannot hold keeps every value in float", "[matvec][cpu][sparse]") {
    auto m = make_matrix(70, 97, 4, 5000, sparse_kind::scattered, 0.1);
    redraw_sparse_values(m, value_form::fp16, 5001);
    REQUIRE(sqz::prepare<sqz::backend::cpu>(m.q).sparse_value_storage() == sparse_value_type::fp16);
    sqz::csr_matrix<float> sparse = m.q.sparse();
    float& odd_one = sparse.valuePtr()[sparse.nonZeros() / 2];
    odd_one = std::nextafter(odd_one, 10.0f);  // one float ulp off an fp16 value: neither fp16 nor bf16
    m.q = sqz::quantized_matrix<float>::from_codes(70, 97, 4, m.lut, m.codes, sparse);
    const auto p = sqz::prepare<sqz::backend::cpu>(m.q);
    REQUIRE(p.sparse_value_storage() == sparse_value_type::scalar);
    const auto x = random_vector(97, 5002);
    check_against_reference(m, p, x, "one inexact value");
    for (const auto kernel : cpu_kernels) {
        std::vector<float> y(70);
        sqz::matvec<sqz::backend::cpu>(p, x, y, {.kernel = kernel});
        require_close(y, brute_force(m, x), magnitudes(m, x), 1e-5, std::string("one inexact value, brute force ") + name(kernel));
    }
}

TEST_CASE("cpu sparse storage in double precision", "[matvec][cpu][sparse]") {
    // 16-bit storage applies to double matrices too when exact; values beyond float's range stay double.
    for (const auto form : {value_form::any, value_form::fp16, value_form::bf16}) {
        auto m = make_matrix<double>(19, 300, 3, 6000, sparse_kind::scattered);
        redraw_sparse_values(m, form, 6001);
        const auto x = random_vector<double>(300, 6002);
        const auto p = sqz::prepare<sqz::backend::cpu>(m.q);
        REQUIRE(p.sparse_value_storage() == expected_storage(form));
        std::vector<double> y(19);
        sqz::matvec<sqz::backend::cpu>(p, x, y);
        require_close(y, brute_force(m, x), magnitudes(m, x), 1e-12, std::string("double ") + name(form));
    }
    auto m = make_matrix<double>(5, 40, 3, 6003, sparse_kind::scattered, 0.2);
    sqz::csr_matrix<double> sparse = m.q.sparse();
    for (Index k = 0; k < sparse.nonZeros(); ++k) sparse.valuePtr()[k] = 0.5;  // bf16-exact...
    sparse.valuePtr()[0] = 1e300;                                                // ...but this one
    m.q = sqz::quantized_matrix<double>::from_codes(5, 40, 3, m.lut, m.codes, sparse);
    REQUIRE(sqz::prepare<sqz::backend::cpu>(m.q).sparse_value_storage() == sparse_value_type::scalar);
}

TEST_CASE("AVX-512 kernels: run where the processor has them, a clear error where it does not", "[matvec][cpu][avx512]") {
    const auto m = make_matrix(9, 300, 3, 501, sparse_kind::scattered);
    const auto x = random_vector(300, 502);
    std::vector<float> y(9);
    if (!sqz::detail::cpu_has_avx512()) {
        WARN("this processor (or compiler) has no AVX-512 F/VL/BW/DQ/VBMI/VNNI: the avx512 kernel sections are skipped");
        REQUIRE_THROWS_AS(sqz::matvec<sqz::backend::cpu>(m.q, x, y, {.kernel = sqz::cpu_kernel::avx512}), sqz::error);
        return;
    }
    sqz::matvec<sqz::backend::cpu>(m.q, x, y, {.kernel = sqz::cpu_kernel::avx512});
    require_close(y, brute_force(m, x), magnitudes(m, x), 1e-5, "avx512 exact");
}

TEST_CASE("AVX-512 exact decoder: weight p of a tile is the LUT entry of the code at exact_column_512(p)",
          "[matvec][cpu][layout][avx512]") {
    namespace layout = sqz::detail::cpu_layout;
    for (int bits = 1; bits <= 4; ++bits) {
        std::vector<bool> seen(layout::tile_columns, false);
        for (std::size_t p = 0; p < layout::tile_columns; ++p) {
            const std::size_t c = layout::exact_column_512(bits, p);
            REQUIRE(c < layout::tile_columns);
            REQUIRE(!seen[c]);
            seen[c] = true;
        }
    }
#if SQZ_HAVE_X86_SIMD
    if (!sqz::detail::cpu_has_avx512()) {
        WARN("no AVX-512: the decoder half of this test is skipped");
        return;
    }
    sqz::synthetic::rng random(4242);
    for (int bits = 1; bits <= 4; ++bits)
        for (int trial = 0; trial < 50; ++trial) {
            std::array<std::uint8_t, layout::tile_columns> codes{};
            for (auto& c : codes) c = static_cast<std::uint8_t>(random.below(1u << bits));
            // Distinct LUT values; entries past 2^bits hold values the decoder must never return.
            alignas(64) std::array<float, 16> lut{};
            for (std::size_t k = 0; k < 16; ++k) lut[k] = k < (std::size_t{1} << bits) ? static_cast<float>(k) + 0.25f : -1e30f;
            // The tile, followed by bytes that the decoder's offset loads may read but must ignore.
            alignas(64) std::array<std::uint8_t, 128 + 64> tile{};
            for (auto& b : tile) b = static_cast<std::uint8_t>(random.below(256));
            layout::encode_tile(codes, bits, std::span<std::uint8_t>(tile.data(), layout::tile_bytes(bits)));
            alignas(64) std::array<float, layout::tile_columns> weights{};
            sqz::detail::avx512::decode_tile_floats(bits, lut.data(), tile.data(), weights.data());
            for (std::size_t p = 0; p < layout::tile_columns; ++p) {
                // Brute force: the code at the column, straight from the codes the tile was made of.
                const float expected = lut[codes[layout::exact_column_512(bits, p)]];
                INFO("bits " << bits << " position " << p << " column " << layout::exact_column_512(bits, p));
                REQUIRE(weights[p] == expected);
            }
        }
#endif
}

namespace {

/// y = A x with the view's per-vendor kernel choices (cpu_matrix_view::intel_tuning) set to `intel`,
/// so that both vendors' forms run whatever this processor is.
void matvec_tuned_for(const sqz::cpu_matrix<float>& a, bool intel, const std::vector<float>& x, std::vector<float>& y,
                      const sqz::matvec_options& options) {
    auto view = a.view();
    view.intel_tuning = intel;
    sqz::detail::cpu::matvec_view(view, std::span<const float>(x), std::span<float>(y), options);
}

/// Runs `options` with either vendor's kernel choices (matvec_tuned_for): each result within 1e-5 of
/// sum_j |w_ij x_j| of `expected` (an independent result), and the two bit for bit the same.
template <class Expected>
void require_same_either_tuning(const sqz::cpu_matrix<float>& a, const std::vector<float>& x, const Expected& expected,
                                const std::vector<double>& scale, const sqz::matvec_options& options, const std::string& what) {
    std::vector<float> y[2];
    for (const bool intel : {false, true}) {
        auto& out = y[intel ? 1 : 0];
        out.resize(expected.size());
        matvec_tuned_for(a, intel, x, out, options);
        require_close(out, expected, scale, 1e-5, what + " intel_tuning " + std::to_string(intel));
    }
    for (std::size_t i = 0; i < y[0].size(); ++i)
        REQUIRE(std::bit_cast<std::uint32_t>(y[0][i]) == std::bit_cast<std::uint32_t>(y[1][i]));
}

}  // namespace

TEST_CASE("AVX-512 int8 kernels compute the AVX2 kernel's integers: bit-identical results", "[matvec][cpu][avx512]") {
    if (!sqz::detail::cpu_has_avx512()) {
        WARN("no AVX-512: skipped");
        return;
    }
    // 8192 and 8449 columns: the widest matrix of the 4-bit int8_tile kernel's vpdpbusd form
    // (avx512::int8_window_tiles = 32 tiles) and one tile more, its vpmaddubsw form.
#if SQZ_HAVE_X86_SIMD
    static_assert(sqz::detail::avx512::int8_window_tiles * sqz::detail::cpu_layout::tile_columns == 8192);
#endif
    for (int bits = 1; bits <= 4; ++bits)
        for (const shape s : {shape{5, 33}, shape{13, 255}, shape{70, 1000}, shape{9, 2049}, shape{6, 8192}, shape{7, 8449}})
            for (const auto kind : {sparse_kind::none, sparse_kind::full_rows}) {
                const auto m = make_matrix(s.rows, s.cols, bits, 600 + static_cast<std::uint64_t>(bits), kind);
                const auto p = sqz::prepare<sqz::backend::cpu>(m.q);
                const auto x = random_vector(s.cols, 601);
                for (const auto mode : int8_modes) {
                    std::vector<float> avx2(static_cast<std::size_t>(s.rows)), avx512(avx2.size());
                    sqz::matvec<sqz::backend::cpu>(p, x, avx2, {.mode = mode, .kernel = sqz::cpu_kernel::avx2});
                    // The 4-bit int8_tile kernel's narrow form and the code prefetch distances are
                    // chosen per processor (cpu_matrix_view::intel_tuning): both forms and both
                    // prefetch paths are run here, whatever this processor is.
                    for (const bool intel : {false, true}) {
                        matvec_tuned_for(p, intel, x, avx512, {.mode = mode, .kernel = sqz::cpu_kernel::avx512});
                        INFO(sqz::to_string(mode) << " bits " << bits << " shape " << s.rows << "x" << s.cols << " intel_tuning " << intel);
                        for (std::size_t i = 0; i < avx2.size(); ++i)
                            REQUIRE(std::bit_cast<std::uint32_t>(avx512[i]) == std::bit_cast<std::uint32_t>(avx2[i]));
                    }
                }
            }
}

TEST_CASE("AVX2 int8 kernel: the Intel code prefetch (spread over a tile's steps) leaves the bits as they are",
          "[matvec][cpu][avx2]") {
    if (!sqz::detail::cpu_has_avx2_fma()) {
        WARN("no AVX2: skipped");
        return;
    }
    // intel_tuning makes the AVX2 int8 kernel spread its code prefetch over the steps of each tile
    // (elsewhere it asks for a tile's lines before them); both settings run here, whatever this
    // processor is, against the reference's int8 specification and against each other.
    for (int bits = 1; bits <= 4; ++bits)
        for (const shape s : {shape{5, 33}, shape{13, 255}, shape{70, 1000}, shape{9, 2049}})
            for (const auto kind : {sparse_kind::none, sparse_kind::full_rows})
                for (const auto mode : int8_modes) {
                    const auto m = make_matrix(s.rows, s.cols, bits, 640 + static_cast<std::uint64_t>(bits), kind);
                    const auto p = sqz::prepare<sqz::backend::cpu>(m.q);
                    const auto x = random_vector(s.cols, 641);
                    std::vector<float> reference(static_cast<std::size_t>(s.rows));
                    sqz::matvec<sqz::backend::reference>(m.q, x, reference, {.mode = mode});
                    require_same_either_tuning(p, x, reference, magnitudes(m, x), {.mode = mode, .kernel = sqz::cpu_kernel::avx2},
                                               std::string(sqz::to_string(mode)) + " bits " + std::to_string(bits));
                }
}

TEST_CASE("AVX-512 exact kernels: the Intel code prefetch (spread over a tile's steps) leaves the bits as they are",
          "[matvec][cpu][avx512]") {
    if (!sqz::detail::cpu_has_avx512()) {
        WARN("no AVX-512: skipped");
        return;
    }
    // intel_tuning picks where and how far ahead the exact kernels prefetch (at 3 and 4 bits spread over
    // the steps of each tile); both settings run here, whatever this processor is, against the
    // brute force and against each other.
    for (int bits = 1; bits <= 4; ++bits)
        for (const shape s : {shape{5, 33}, shape{13, 255}, shape{70, 1000}, shape{9, 2049}})
            for (const auto kind : {sparse_kind::none, sparse_kind::full_rows}) {
                const auto m = make_matrix(s.rows, s.cols, bits, 620 + static_cast<std::uint64_t>(bits), kind);
                const auto p = sqz::prepare<sqz::backend::cpu>(m.q);
                const auto x = random_vector(s.cols, 621);
                require_same_either_tuning(p, x, brute_force(m, x), magnitudes(m, x),
                                           {.mode = numeric_mode::exact, .kernel = sqz::cpu_kernel::avx512},
                                           "bits " + std::to_string(bits));
            }
}

TEST_CASE("spread_request_at asks for every line of a tile group once into each level, at evenly spaced steps",
          "[matvec][cpu]") {
    // (lines, steps) of the kernels that spread their prefetch (the AVX-512 int8 kernel at 1-4 bits,
    // the AVX-512 exact kernel at 3 and 4 bits, the AVX2 int8 kernel at 1-4 bits: 8 and 32 at 4 bits,
    // sqz-bench-stream-window) and a few more.
    for (const auto& [lines, steps] : {std::pair{8, 16}, std::pair{6, 24}, std::pair{4, 16}, std::pair{2, 16}, std::pair{6, 16},
                                      std::pair{8, 32}, std::pair{4, 8}, std::pair{4, 12}, std::pair{3, 7}, std::pair{5, 4},
                                      std::pair{1, 1}}) {
        INFO("lines " << lines << " steps " << steps);
        std::vector<int> l1_asks(static_cast<std::size_t>(lines), 0), l2_asks(l1_asks);
        std::vector<int> request_steps;
        int previous_line = 0;
        for (int step = 0; step < steps; ++step) {
            const auto r = sqz::detail::spread_request_at(lines, steps, step);
            if (r.line < 0) continue;
            REQUIRE(r.line < lines);
            REQUIRE(r.line >= previous_line);  // lines in stream order
            previous_line = r.line;
            ++(r.into_l2 ? l2_asks : l1_asks)[static_cast<std::size_t>(r.line)];
            request_steps.push_back(step);
        }
        // Every line once into each level where the steps suffice; with fewer steps than requests,
        // one request per step, the first lines first.
        const int made = std::min(steps, 2 * lines);
        REQUIRE(static_cast<int>(request_steps.size()) == made);
        for (int line = 0; line < lines; ++line) {
            const int l2_expected = 2 * line < made ? 1 : 0;
            const int l1_expected = 2 * line + 1 < made ? 1 : 0;
            REQUIRE(l2_asks[static_cast<std::size_t>(line)] == l2_expected);
            REQUIRE(l1_asks[static_cast<std::size_t>(line)] == l1_expected);
        }
        const int spacing = steps > 2 * lines ? steps / (2 * lines) : 1;
        for (std::size_t k = 0; k < request_steps.size(); ++k) REQUIRE(request_steps[k] == static_cast<int>(k) * spacing);
        // Steps outside [0, steps) ask for nothing.
        REQUIRE(sqz::detail::spread_request_at(lines, steps, -1).line == -1);
        REQUIRE(sqz::detail::spread_request_at(lines, steps, steps).line == -1);
        REQUIRE(sqz::detail::spread_request_at(lines, steps, steps + 2 * lines).line == -1);
    }
    // No lines: no requests (and no division by zero).
    for (int step = 0; step < 4; ++step) REQUIRE(sqz::detail::spread_request_at(0, 4, step).line == -1);
}

TEST_CASE("cpu_kernel_used names the kernel the products run", "[matvec][cpu]") {
    using sqz::cpu_kernel;
    const auto tiled = sqz::prepare<sqz::backend::cpu>(make_matrix(8, 300, 3, 601, sparse_kind::none).q);
    const auto wide = sqz::prepare<sqz::backend::cpu>(make_matrix(8, 300, 6, 602, sparse_kind::none).q);
    const cpu_kernel best = sqz::detail::cpu_has_avx512() ? cpu_kernel::avx512
                            : sqz::detail::cpu_has_avx2_fma() ? cpu_kernel::avx2
                                                              : cpu_kernel::portable;
    REQUIRE(sqz::cpu_kernel_used(tiled) == best);
    REQUIRE(sqz::cpu_kernel_used(tiled, {.mode = sqz::numeric_mode::int8}) == best);
    REQUIRE(sqz::cpu_kernel_used(tiled, {.kernel = cpu_kernel::portable}) == cpu_kernel::portable);
    REQUIRE(sqz::cpu_kernel_used(wide) == cpu_kernel::portable);  // 5..8 bits: portable kernels only
    if (sqz::detail::cpu_has_avx2_fma())
        REQUIRE(sqz::cpu_kernel_used(tiled, {.kernel = cpu_kernel::avx2}) == cpu_kernel::avx2);
    else
        REQUIRE_THROWS_AS(sqz::cpu_kernel_used(tiled, {.kernel = cpu_kernel::avx2}), sqz::error);
    if (sqz::detail::cpu_has_avx2_fma()) REQUIRE_THROWS_AS(sqz::cpu_kernel_used(wide, {.kernel = cpu_kernel::avx2}), sqz::error);
}

TEST_CASE("cpu_is_intel agrees with /proc/cpuinfo, and the views carry that vendor's kernel choices", "[matvec][cpu]") {
    std::ifstream cpuinfo("/proc/cpuinfo");
    std::string line;
    std::string vendor;
    while (vendor.empty() && std::getline(cpuinfo, line))
        if (line.rfind("vendor_id", 0) == 0 && line.find(':') != std::string::npos) {
            vendor = line.substr(line.find(':') + 1);
            vendor.erase(0, vendor.find_first_not_of(" \t"));
        }
    const auto prepared = sqz::prepare<sqz::backend::cpu>(make_matrix(8, 300, 4, 603, sparse_kind::none).q);
    CHECK(prepared.view().intel_tuning == sqz::detail::cpu_is_intel());
    if (vendor.empty()) {
        WARN("no vendor_id in /proc/cpuinfo: the vendor check is skipped");
        return;
    }
    INFO("vendor_id: " << vendor);
    const bool intel = vendor == "GenuineIntel";
    REQUIRE(sqz::detail::cpu_is_intel() == intel);
    CHECK(prepared.view().intel_tuning == intel);
}
