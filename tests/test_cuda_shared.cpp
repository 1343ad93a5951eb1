// The cuda back end's shared host/device code (detail/cuda_shared.hpp), run on the host: the layout,
// the code extraction, and an emulation of the dense and sparse kernels thread by thread, checked
// against the reference back end. This is what CI can test without a GPU.
#include <sqz/detail/cuda_shared.hpp>
#include <sqz/reference_backend.hpp>
#include <sqz/synthetic.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

namespace layout = sqz::detail::cuda_layout;
using Index = Eigen::Index;

sqz::quantized_matrix<float> make_matrix(Index rows, Index cols, int bits, std::uint64_t seed,
                                         std::vector<Eigen::Triplet<float, std::int32_t>> sparse_entries = {}) {
    sqz::synthetic::rng random(seed);
    sqz::row_matrix<float> lut(rows, Index{1} << bits);
    for (Index i = 0; i < lut.size(); ++i) lut.data()[i] = static_cast<float>(random.normal());
    std::vector<std::uint8_t> codes(static_cast<std::size_t>(rows * cols));
    for (auto& c : codes) c = static_cast<std::uint8_t>(random.below(1u << bits));
    sqz::csr_matrix<float> sparse(rows, cols);
    sparse.setFromTriplets(sparse_entries.begin(), sparse_entries.end());
    return sqz::quantized_matrix<float>::from_codes(rows, cols, bits, lut, codes, sparse);
}

template <int Bits>
void check_codes(Index rows, Index cols, std::uint64_t seed) {
    const auto q = make_matrix(rows, cols, Bits, seed);
    const auto words = layout::build_words(q);
    const std::size_t per_row = layout::row_words(static_cast<std::size_t>(cols), Bits);
    REQUIRE(words.size() == static_cast<std::size_t>(rows) * per_row);
    for (Index i = 0; i < rows; ++i)
        for (std::size_t b = 0; b < layout::blocks_for(static_cast<std::size_t>(cols)); ++b)
            for (int lane = 0; lane < 32; ++lane) {
                std::uint32_t w[Bits];
                for (int k = 0; k < Bits; ++k)
                    w[k] = words[static_cast<std::size_t>(i) * per_row + (b * Bits + static_cast<std::size_t>(k)) * 32 +
                                 static_cast<std::size_t>(lane)];
                for (int m = 0; m < 32; ++m) {
                    const auto col = static_cast<Index>(b * 1024 + static_cast<std::size_t>(lane + 32 * m));
                    const unsigned expected = col < cols ? q.code(i, col) : 0u;  // padding is code 0
                    REQUIRE(layout::code_from_words<Bits>(w, m) == expected);
                }
            }
}

/// The dense kernel, thread by thread: x staged per block of 1024 (zero padded), each lane's
/// lane_block_dot over the blocks, then the warp's butterfly.
template <int Bits>
std::vector<float> emulate_dense(const sqz::quantized_matrix<float>& q, const std::vector<float>& x) {
    const auto cols = static_cast<std::size_t>(q.cols());
    const std::size_t blocks = layout::blocks_for(cols);
    const auto words = layout::build_words(q);
    const std::size_t per_row = layout::row_words(cols, Bits);
    std::vector<float> y(static_cast<std::size_t>(q.rows()));
    std::vector<float> x_block(1024);
    for (Index i = 0; i < q.rows(); ++i) {
        float lanes[32] = {};
        for (std::size_t b = 0; b < blocks; ++b) {
            for (std::size_t k = 0; k < 1024; ++k) x_block[k] = b * 1024 + k < cols ? x[b * 1024 + k] : 0.0f;
            for (int lane = 0; lane < 32; ++lane) {
                std::uint32_t w[Bits];
                for (int k = 0; k < Bits; ++k)
                    w[k] = words[static_cast<std::size_t>(i) * per_row + (b * Bits + static_cast<std::size_t>(k)) * 32 +
                                 static_cast<std::size_t>(lane)];
                lanes[lane] = layout::lane_block_dot<Bits>(w, q.lut_row(i).data(), x_block.data(), lane, lanes[lane]);
            }
        }
        y[static_cast<std::size_t>(i)] = layout::butterfly_sum_lane0(lanes);
    }
    return y;
}

/// Both sparse passes over every chunk, in an arbitrary order within each pass (as on a GPU).
void emulate_sparse(const sqz::csr_matrix<float>& s, const std::vector<float>& x, std::int32_t chunk, std::vector<float>& y,
                    bool reverse_order) {
    const auto nnz = static_cast<std::int32_t>(s.nonZeros());
    if (nnz == 0) return;
    const int chunks = (nnz + chunk - 1) / chunk;
    std::vector<int> first(static_cast<std::size_t>(chunks)), last(static_cast<std::size_t>(chunks));
    std::vector<float> head(static_cast<std::size_t>(chunks)), tail(static_cast<std::size_t>(chunks));
    const auto load = [&](std::int32_t j) { return x[static_cast<std::size_t>(j)]; };
    for (int n = 0; n < chunks; ++n) {
        const int t = reverse_order ? chunks - 1 - n : n;
        layout::sparse_first_pass(t, s.outerIndexPtr(), s.innerIndexPtr(), s.valuePtr(), static_cast<int>(s.rows()), nnz,
                                  chunk, load, y.data(), first.data(), last.data(), head.data(), tail.data());
    }
    for (int n = 0; n < chunks; ++n) {
        const int t = reverse_order ? chunks - 1 - n : n;
        layout::sparse_second_pass(t, chunks, s.outerIndexPtr(), nnz, chunk, last.data(), head.data(), tail.data(), y.data());
    }
}

double magnitude(const sqz::quantized_matrix<float>& q, Index i, const std::vector<float>& x) {
    double sum = 0;
    for (Index j = 0; j < q.cols(); ++j)
        sum += std::abs(static_cast<double>(q.dense_value(i, j)) * x[static_cast<std::size_t>(j)]);
    for (sqz::csr_matrix<float>::InnerIterator it(q.sparse(), i); it; ++it)
        sum += std::abs(static_cast<double>(it.value()) * x[static_cast<std::size_t>(it.col())]);
    return sum;
}

std::vector<float> random_vector(Index n, std::uint64_t seed) {
    sqz::synthetic::rng random(seed);
    std::vector<float> x(static_cast<std::size_t>(n));
    for (auto& v : x) v = static_cast<float>(random.normal());
    return x;
}

template <int Bits>
void check_product(Index rows, Index cols, std::uint64_t seed, const std::vector<Eigen::Triplet<float, std::int32_t>>& sparse) {
    const auto q = make_matrix(rows, cols, Bits, seed, sparse);
    const auto x = random_vector(cols, seed + 1);
    std::vector<float> reference(static_cast<std::size_t>(rows));
    sqz::reference::matvec(q, std::span<const float>(x), std::span<float>(reference));
    for (const std::int32_t chunk : {1, 3, 32})
        for (const bool reverse : {false, true}) {
            auto y = emulate_dense<Bits>(q, x);
            emulate_sparse(q.sparse(), x, chunk, y, reverse);
            for (Index i = 0; i < rows; ++i) {
                INFO("bits " << Bits << " row " << i << " chunk " << chunk);
                REQUIRE(std::abs(static_cast<double>(y[static_cast<std::size_t>(i)]) - reference[static_cast<std::size_t>(i)]) <=
                        1e-5 * magnitude(q, i, x) + 1e-30);
            }
        }
}

std::vector<Eigen::Triplet<float, std::int32_t>> sparse_pattern(Index rows, Index cols, int kind, std::uint64_t seed) {
    sqz::synthetic::rng random(seed);
    std::vector<Eigen::Triplet<float, std::int32_t>> entries;
    for (Index i = 0; i < rows; ++i)
        for (Index j = 0; j < cols; ++j) {
            const bool take = kind == 1   ? random.uniform() < 0.02                  // scattered
                              : kind == 2 ? (i % 4 == 1 || random.uniform() < 0.01)  // some rows entirely sparse
                              : kind == 3 ? i == rows / 2                              // one long row, the rest empty
                                          : false;
            if (take)
                entries.emplace_back(static_cast<std::int32_t>(i), static_cast<std::int32_t>(j), static_cast<float>(random.normal()));
        }
    return entries;
}

}  // namespace

TEST_CASE("cuda layout: lane-interleaved words decode to the canonical codes", "[cuda][layout]") {
    check_codes<1>(3, 1100, 1);
    check_codes<2>(2, 2049, 2);
    check_codes<3>(3, 1025, 3);
    check_codes<4>(2, 1000, 4);
    check_codes<5>(2, 1030, 5);
    check_codes<8>(2, 999, 8);
    check_codes<3>(1, 1, 9);
}

TEST_CASE("cuda layout: row_of_nonzero finds the row of every nonzero, skipping empty rows", "[cuda][sparse]") {
    const std::vector<std::int32_t> row_ptr{0, 0, 3, 3, 3, 4, 9, 9};  // 7 rows, 9 nonzeros
    for (std::int32_t k = 0; k < 9; ++k) {
        int expected = 0;
        for (int r = 0; r < 7; ++r)
            if (row_ptr[static_cast<std::size_t>(r)] <= k && k < row_ptr[static_cast<std::size_t>(r) + 1]) expected = r;
        REQUIRE(layout::row_of_nonzero(row_ptr.data(), 7, k) == expected);
    }
}

TEST_CASE("cuda kernels emulated on the host agree with the reference", "[cuda][emulation]") {
    for (int kind = 0; kind <= 3; ++kind) {
        check_product<2>(5, 1000, 10 + static_cast<std::uint64_t>(kind), sparse_pattern(5, 1000, kind, 20));
        check_product<3>(9, 1025, 30 + static_cast<std::uint64_t>(kind), sparse_pattern(9, 1025, kind, 40));
        check_product<4>(6, 2100, 50 + static_cast<std::uint64_t>(kind), sparse_pattern(6, 2100, kind, 60));
        check_product<4>(1, 1, 70 + static_cast<std::uint64_t>(kind), sparse_pattern(1, 1, kind, 80));
    }
}

TEST_CASE("cuda sparse passes give the same result in any thread order", "[cuda][sparse]") {
    const auto entries = sparse_pattern(40, 300, 2, 90);
    const auto q = make_matrix(40, 300, 3, 91, entries);
    const auto x = random_vector(300, 92);
    std::vector<float> forward(40, 0.0f), backward(40, 0.0f);
    emulate_sparse(q.sparse(), x, 7, forward, false);
    emulate_sparse(q.sparse(), x, 7, backward, true);
    REQUIRE(forward == backward);
}
