#include <sqz/quantized_matrix.hpp>
#include <sqz/synthetic.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

namespace {

struct parts {
    Eigen::Index rows, cols;
    int bits;
    sqz::row_matrix<float> lut;
    std::vector<std::uint8_t> codes;  // unpacked, row-major
    sqz::csr_matrix<float> sparse;
};

parts random_parts(Eigen::Index rows, Eigen::Index cols, int bits, std::uint64_t seed, double sparse_fraction) {
    sqz::synthetic::rng random(seed);
    parts p{rows, cols, bits, sqz::row_matrix<float>(rows, Eigen::Index{1} << bits), {}, sqz::csr_matrix<float>(rows, cols)};
    for (Eigen::Index i = 0; i < p.lut.size(); ++i) p.lut.data()[i] = static_cast<float>(random.normal());
    p.codes.resize(static_cast<std::size_t>(rows * cols));
    for (auto& c : p.codes) c = static_cast<std::uint8_t>(random.below(1u << bits));
    std::vector<Eigen::Triplet<float, std::int32_t>> triplets;
    for (Eigen::Index i = 0; i < rows; ++i)
        for (Eigen::Index j = 0; j < cols; ++j)
            if (random.uniform() < sparse_fraction)
                triplets.emplace_back(static_cast<std::int32_t>(i), static_cast<std::int32_t>(j),
                                      static_cast<float>(random.normal()));
    p.sparse.setFromTriplets(triplets.begin(), triplets.end());
    return p;
}

sqz::quantized_matrix<float> build(const parts& p) {
    return sqz::quantized_matrix<float>::from_codes(p.rows, p.cols, p.bits, p.lut, p.codes, p.sparse);
}

}  // namespace

TEST_CASE("dequantize equals a scalar decode of codes, LUT and sparse part", "[quantized_matrix]") {
    for (int bits = 1; bits <= 8; ++bits) {
        for (const auto& [rows, cols] : {std::pair<Eigen::Index, Eigen::Index>{1, 1}, {3, 7}, {5, 33}, {9, 130}}) {
            const parts p = random_parts(rows, cols, bits, 31 * static_cast<std::uint64_t>(bits) + rows * 101 + cols, 0.1);
            const auto q = build(p);
            REQUIRE(q.rows() == rows);
            REQUIRE(q.cols() == cols);
            REQUIRE(q.bits() == bits);
            REQUIRE(q.levels() == (1 << bits));
            const Eigen::MatrixXf sparse_dense = Eigen::MatrixXf(p.sparse);
            const auto d = q.dequantize();
            for (Eigen::Index i = 0; i < rows; ++i)
                for (Eigen::Index j = 0; j < cols; ++j) {
                    const auto code = p.codes[static_cast<std::size_t>(i * cols + j)];
                    REQUIRE(q.code(i, j) == code);
                    REQUIRE(q.dense_value(i, j) == p.lut(i, code));
                    REQUIRE(d(i, j) == p.lut(i, code) + sparse_dense(i, j));
                }
        }
    }
}

TEST_CASE("rows start on byte boundaries in the canonical packing", "[quantized_matrix]") {
    const parts p = random_parts(4, 5, 3, 9, 0.0);  // 15 bits per row -> 2 bytes
    const auto q = build(p);
    REQUIRE(q.row_stride_bytes() == 2);
    REQUIRE(q.codes().size() == 8);
    for (Eigen::Index i = 0; i < 4; ++i) {
        const std::vector<std::uint8_t> row(p.codes.begin() + i * 5, p.codes.begin() + (i + 1) * 5);
        CHECK(sqz::unpack(q.row_codes(i), 3, 5) == row);
    }
}

TEST_CASE("storage bytes and bits per weight follow the closed form", "[quantized_matrix]") {
    const parts p = random_parts(6, 40, 3, 5, 0.05);
    const auto q = build(p);
    const auto s = q.storage_bytes();
    const auto nnz = static_cast<std::size_t>(p.sparse.nonZeros());
    REQUIRE(nnz > 0);
    CHECK(s.lut == 6u * 8u * 4u);
    CHECK(s.codes == 6u * 15u);  // 40 codes * 3 bits = 15 bytes per row
    CHECK(s.sparse_values == nnz * 4);
    CHECK(s.sparse_indices == nnz * 4);
    CHECK(s.sparse_row_ptr == 7u * 4u);
    CHECK(s.total() == s.lut + s.codes + s.sparse_values + s.sparse_indices + s.sparse_row_ptr);
    CHECK(q.bits_per_weight() == Approx(8.0 * static_cast<double>(s.total()) / 240.0));

    // LLaMA-7B shape, 3 bits, dense only: 3 + 8 * 32 / 4096 (fp32 LUT) and 3 + 8 * 16 / 4096 (fp16 LUT).
    const Eigen::Index n = 4096;
    sqz::row_matrix<float> lut = sqz::row_matrix<float>::Zero(n, 8);
    for (Eigen::Index i = 0; i < n; ++i)
        for (int k = 0; k < 8; ++k) lut(i, k) = 0.25f * static_cast<float>(k);  // exact in fp16
    const std::vector<std::uint8_t> codes(static_cast<std::size_t>(n * n), 3);
    const auto big32 = sqz::quantized_matrix<float>::from_codes(n, n, 3, lut, codes);
    const auto big16 = sqz::quantized_matrix<float>::from_codes(n, n, 3, lut, codes, {}, sqz::lut_format::fp16);
    CHECK(big32.bits_per_weight() == Approx(3.0 + 256.0 / 4096.0));
    CHECK(big16.bits_per_weight() == Approx(3.0 + 128.0 / 4096.0));
    CHECK(big16.storage_bytes().sparse() == 0);
}

TEST_CASE("compile-time and run-time widths convert into each other", "[quantized_matrix]") {
    const parts p = random_parts(3, 17, 4, 12, 0.2);
    const auto dynamic = build(p);
    const sqz::quantized_matrix<float, 4> fixed(dynamic);
    STATIC_REQUIRE(sqz::quantized_matrix<float, 4>::static_bits == 4);
    CHECK(fixed.bits() == 4);
    CHECK(fixed.dequantize() == dynamic.dequantize());
    const sqz::quantized_matrix<float> back(fixed);
    CHECK(back == dynamic);
    CHECK_THROWS_WITH((sqz::quantized_matrix<float, 3>(dynamic)), Catch::Contains("compile-time width 3"));
}

TEST_CASE("equality compares every part", "[quantized_matrix]") {
    const parts p = random_parts(3, 9, 2, 4, 0.3);
    const auto a = build(p);
    CHECK(a == build(p));
    parts other = p;
    other.lut(1, 2) += 1.0f;
    CHECK_FALSE(a == build(other));
    other = p;
    other.codes[4] = static_cast<std::uint8_t>((other.codes[4] + 1) % 4);
    CHECK_FALSE(a == build(other));
    other = p;
    other.sparse.coeffRef(2, 8) += 0.5f;
    CHECK_FALSE(a == build(other));
}

TEST_CASE("the empty matrix", "[quantized_matrix]") {
    const sqz::quantized_matrix<double> empty;
    CHECK(empty.rows() == 0);
    CHECK(empty.cols() == 0);
    CHECK(empty.dequantize().size() == 0);
    CHECK(empty.bits_per_weight() == 0.0);
    const auto zero_cols = sqz::quantized_matrix<double>::from_codes(3, 0, 2, sqz::row_matrix<double>::Zero(3, 4), {});
    CHECK(zero_cols.dequantize().rows() == 3);
}

TEST_CASE("malformed parts are rejected with a message naming the problem", "[quantized_matrix]") {
    const parts p = random_parts(3, 10, 3, 8, 0.0);
    using qm = sqz::quantized_matrix<float>;
    const std::vector<std::uint8_t> packed(3 * 4);  // 30 bits per row -> 4 bytes
    CHECK_NOTHROW(qm(3, 10, 3, p.lut, packed));
    CHECK_THROWS_WITH(qm(3, 10, 0, p.lut, packed), Catch::Contains("bits = 0"));
    CHECK_THROWS_WITH(qm(3, 10, 9, p.lut, packed), Catch::Contains("bits = 9"));
    CHECK_THROWS_WITH(qm(3, 10, 3, sqz::row_matrix<float>::Zero(3, 4), packed), Catch::Contains("lut is 3 x 4"));
    CHECK_THROWS_WITH(qm(3, 10, 3, p.lut, std::vector<std::uint8_t>(11)), Catch::Contains("11 bytes"));
    CHECK_THROWS_WITH(qm(-1, 10, 3, p.lut, packed), Catch::Contains("negative"));
    auto bad_lut = p.lut;
    bad_lut(2, 5) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH(qm(3, 10, 3, bad_lut, packed), Catch::Contains("lut entry 5 of row 2"));
    bad_lut = p.lut;
    bad_lut(1, 1) = std::numeric_limits<float>::infinity();
    CHECK_THROWS_AS(qm(3, 10, 3, bad_lut, packed), sqz::error);
    // 0.1f is not a binary16 value, so it cannot be stored in an fp16 LUT without loss.
    auto not_half = sqz::row_matrix<float>::Constant(3, 8, 0.1f).eval();
    CHECK_THROWS_WITH(qm(3, 10, 3, not_half, packed, {}, sqz::lut_format::fp16), Catch::Contains("fp16"));
    CHECK_THROWS_WITH(qm(3, 10, 3, p.lut, packed, sqz::csr_matrix<float>(3, 9)), Catch::Contains("sparse part is 3 x 9"));
    sqz::csr_matrix<float> nan_sparse(3, 10);
    nan_sparse.insert(1, 4) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH(qm(3, 10, 3, p.lut, packed, nan_sparse), Catch::Contains("sparse value at (1, 4)"));
    CHECK_THROWS_WITH(qm::from_codes(3, 10, 3, p.lut, std::vector<std::uint8_t>(29)), Catch::Contains("29 entries"));
    std::vector<std::uint8_t> codes(30, 1);
    codes[17] = 8;
    CHECK_THROWS_WITH(qm::from_codes(3, 10, 3, p.lut, codes), Catch::Contains("code 8 at index 7"));
}

TEST_CASE("make_csr validates raw CSR arrays", "[quantized_matrix]") {
    using span_i = std::span<const std::int32_t>;
    using span_f = std::span<const float>;
    const std::vector<std::int32_t> ptr{0, 2, 2, 3};
    const std::vector<std::int32_t> idx{1, 4, 0};
    const std::vector<float> val{1.0f, 2.0f, 3.0f};
    const auto m = sqz::make_csr<float>(3, 6, ptr, idx, val);
    CHECK(m.nonZeros() == 3);
    CHECK(m.coeff(0, 1) == 1.0f);
    CHECK(m.coeff(0, 4) == 2.0f);
    CHECK(m.coeff(2, 0) == 3.0f);
    CHECK(m.coeff(1, 1) == 0.0f);
    // Row 0 lists column 4 before column 1.
    CHECK_THROWS_WITH(sqz::make_csr<float>(3, 6, ptr, span_i(std::vector<std::int32_t>{4, 1, 0}), val),
                      Catch::Contains("row 0 has column 1 out of order"));
    CHECK_THROWS_WITH(sqz::make_csr<float>(3, 6, ptr, span_i(std::vector<std::int32_t>{1, 1, 0}), val),
                      Catch::Contains("repeated"));
    CHECK_THROWS_WITH(sqz::make_csr<float>(3, 6, ptr, span_i(std::vector<std::int32_t>{1, 6, 0}), val),
                      Catch::Contains("column 6 in row 0 is outside 0..5"));
    CHECK_THROWS_WITH(sqz::make_csr<float>(3, 6, ptr, span_i(std::vector<std::int32_t>{-1, 2, 0}), val),
                      Catch::Contains("column -1"));
    CHECK_THROWS_WITH(sqz::make_csr<float>(3, 6, span_i(std::vector<std::int32_t>{0, 2, 1, 3}), idx, val),
                      Catch::Contains("row_ptr decreases at row 1"));
    CHECK_THROWS_WITH(sqz::make_csr<float>(3, 6, span_i(std::vector<std::int32_t>{0, 2, 2, 4}), idx, val),
                      Catch::Contains("row_ptr[3] = 4"));
    CHECK_THROWS_WITH(sqz::make_csr<float>(3, 6, span_i(std::vector<std::int32_t>{1, 2, 2, 3}), idx, val),
                      Catch::Contains("row_ptr[0] = 1"));
    CHECK_THROWS_WITH(sqz::make_csr<float>(4, 6, ptr, idx, val), Catch::Contains("row_ptr has 4 entries, 5 expected"));
    CHECK_THROWS_WITH(sqz::make_csr<float>(3, 6, ptr, idx, span_f(std::vector<float>{1.0f, 2.0f})),
                      Catch::Contains("col_idx has 3 entries but values has 2"));
    CHECK_THROWS_WITH(
        sqz::make_csr<float>(3, 6, ptr, idx, span_f(std::vector<float>{1.0f, std::numeric_limits<float>::infinity(), 3.0f})),
        Catch::Contains("value at (0, 4) is inf"));
}
