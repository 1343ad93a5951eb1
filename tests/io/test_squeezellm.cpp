// SqueezeLLM interop: hand-packed words, a literal port of the reference's packing loop and of its CUDA
// kernels' decoding as independent oracles, and a checkpoint packed by an independent Python
// implementation (tests/data/make_corpus.py).
#include "io_test_support.hpp"

#include <sqz/io/squeezellm.hpp>
#include <sqz/synthetic.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <vector>

namespace slm = sqz::io::squeezellm;
using sqz_test::scratch_dir;

namespace {

constexpr std::int32_t word(std::uint32_t bits) { return static_cast<std::int32_t>(bits); }

// One output row per column of `codes` (codes[i][j]: output i, input j); LUT row i = i*100 + code.
sqz::quantized_matrix<float> from_code_rows(const std::vector<std::vector<std::uint8_t>>& codes, int bits) {
    const auto rows = static_cast<Eigen::Index>(codes.size());
    const auto cols = static_cast<Eigen::Index>(codes[0].size());
    sqz::row_matrix<float> lut(rows, Eigen::Index{1} << bits);
    for (Eigen::Index i = 0; i < rows; ++i)
        for (Eigen::Index k = 0; k < lut.cols(); ++k) lut(i, k) = static_cast<float>(i * 100 + k);
    std::vector<std::uint8_t> flat;
    for (const auto& row : codes) flat.insert(flat.end(), row.begin(), row.end());
    return sqz::quantized_matrix<float>::from_codes(rows, cols, bits, lut, flat);
}

// The reference's pack loop, ported statement by statement: intweight is W^T's codes (input j, output c).
std::vector<std::uint32_t> reference_pack(const std::vector<std::vector<std::uint32_t>>& intweight, int bits) {
    const std::size_t n = intweight.size(), m = intweight[0].size();
    std::vector<std::vector<std::uint32_t>> qweight(n / 32 * static_cast<std::size_t>(bits), std::vector<std::uint32_t>(m, 0));
    std::size_t i = 0, row = 0;
    const auto all = [&](auto&& f) {
        for (std::size_t c = 0; c < m; ++c) f(c);
    };
    while (row < qweight.size()) {
        if (bits == 2 || bits == 4 || bits == 8) {
            for (std::size_t j = i; j < i + 32 / static_cast<std::size_t>(bits); ++j)
                all([&](std::size_t c) { qweight[row][c] |= intweight[j][c] << (static_cast<std::size_t>(bits) * (j - i)); });
            i += 32 / static_cast<std::size_t>(bits);
            row += 1;
        } else {  // bits == 3
            for (std::size_t j = i; j < i + 10; ++j) all([&](std::size_t c) { qweight[row][c] |= intweight[j][c] << (3 * (j - i)); });
            i += 10;
            all([&](std::size_t c) { qweight[row][c] |= intweight[i][c] << 30; });
            row += 1;
            all([&](std::size_t c) { qweight[row][c] |= (intweight[i][c] >> 2) & 1; });
            i += 1;
            for (std::size_t j = i; j < i + 10; ++j) all([&](std::size_t c) { qweight[row][c] |= intweight[j][c] << (3 * (j - i) + 1); });
            i += 10;
            all([&](std::size_t c) { qweight[row][c] |= intweight[i][c] << 31; });
            row += 1;
            all([&](std::size_t c) { qweight[row][c] |= (intweight[i][c] >> 1) & 0x3; });
            i += 1;
            for (std::size_t j = i; j < i + 10; ++j) all([&](std::size_t c) { qweight[row][c] |= intweight[j][c] << (3 * (j - i) + 2); });
            i += 10;
            row += 1;
        }
    }
    std::vector<std::uint32_t> flat;
    for (const auto& r : qweight) flat.insert(flat.end(), r.begin(), r.end());
    return flat;
}

// y = W x as the reference's CUDA kernels compute it from qweight (decode logic ported: the 3-bit
// kernel's tmp1/tmp2 word splicing), plus its CSR kernel, accumulated in double.
std::vector<double> reference_matvec(const slm::layer& l, const std::vector<float>& x) {
    const auto m = static_cast<std::size_t>(l.rows);
    const std::size_t levels = std::size_t{1} << l.bits;
    std::vector<double> y(m, 0.0);
    const auto word_at = [&](std::size_t r, std::size_t c) { return static_cast<std::uint32_t>(l.qweight[r * m + c]); };
    for (std::size_t c = 0; c < m; ++c) {
        const float* deq = &l.lookup_table[c * levels];
        std::size_t r = 0, k = 0;
        while (k < static_cast<std::size_t>(l.cols)) {
            if (l.bits == 4) {
                const std::uint32_t tmp = word_at(r++, c);
                for (unsigned s = 0; s < 8; ++s) y[c] += static_cast<double>(deq[(tmp >> (4 * s)) & 0xf]) * x[k + s];
                k += 8;
            } else {
                std::uint32_t tmp1 = word_at(r++, c);
                for (unsigned s = 0; s < 10; ++s) y[c] += static_cast<double>(deq[(tmp1 >> (3 * s)) & 0x7]) * x[k + s];
                std::uint32_t tmp2 = word_at(r++, c);
                std::uint32_t tmp = (tmp1 >> 30) | ((tmp2 << 2) & 0x4);
                tmp2 >>= 1;
                y[c] += static_cast<double>(deq[tmp & 0x7]) * x[k + 10];
                k += 11;
                for (unsigned s = 0; s < 10; ++s) y[c] += static_cast<double>(deq[(tmp2 >> (3 * s)) & 0x7]) * x[k + s];
                tmp1 = word_at(r++, c);
                tmp = (tmp2 >> 30) | ((tmp1 << 1) & 0x6);
                tmp1 >>= 2;
                y[c] += static_cast<double>(deq[tmp & 0x7]) * x[k + 10];
                k += 11;
                for (unsigned s = 0; s < 10; ++s) y[c] += static_cast<double>(deq[(tmp1 >> (3 * s)) & 0x7]) * x[k + s];
                k += 10;
            }
        }
    }
    if (!l.sparse_rows.empty())
        for (std::size_t row = 0; row < m; ++row)
            for (auto e = l.sparse_rows[row]; e < l.sparse_rows[row + 1]; ++e)
                y[row] += static_cast<double>(l.sparse_vals[static_cast<std::size_t>(e)]) * x[static_cast<std::size_t>(l.sparse_cols[static_cast<std::size_t>(e)])];
    return y;
}

sqz::quantized_matrix<float> random_quantized(Eigen::Index rows, Eigen::Index cols, int bits, double sparse_fraction, std::uint64_t seed) {
    sqz::synthetic::rng random(seed);
    sqz::row_matrix<float> lut(rows, Eigen::Index{1} << bits);
    for (Eigen::Index i = 0; i < lut.size(); ++i) lut.data()[i] = static_cast<float>(random.normal());
    std::vector<std::uint8_t> codes(static_cast<std::size_t>(rows * cols));
    for (auto& c : codes) c = static_cast<std::uint8_t>(random.below(std::uint64_t{1} << bits));
    std::vector<Eigen::Triplet<float, std::int32_t>> triplets;
    for (Eigen::Index i = 0; i < rows; ++i)
        for (Eigen::Index j = 0; j < cols; ++j)
            if (random.uniform() < sparse_fraction)
                triplets.emplace_back(static_cast<std::int32_t>(i), static_cast<std::int32_t>(j), static_cast<float>(random.normal()));
    sqz::csr_matrix<float> sparse(rows, cols);
    sparse.setFromTriplets(triplets.begin(), triplets.end());
    return sqz::quantized_matrix<float>::from_codes(rows, cols, bits, lut, codes, sparse);
}

}  // namespace

TEST_CASE("4-bit words hold 8 codes each, least significant first", "[io][squeezellm]") {
    std::vector<std::uint8_t> codes(32);
    for (int j = 0; j < 32; ++j) codes[static_cast<std::size_t>(j)] = static_cast<std::uint8_t>(j < 16 ? j : 31 - j);
    const auto q = from_code_rows({codes}, 4);
    const std::vector<std::int32_t> words{word(0x76543210u), word(0xFEDCBA98u), word(0x89ABCDEFu), word(0x01234567u)};
    CHECK(slm::pack_qweight(q) == words);
    slm::layer l{4, 1, 32, words, std::vector<float>(q.lut().data(), q.lut().data() + 16), {}, {}, {}};
    const auto back = slm::from_reference<float>(l);
    for (Eigen::Index j = 0; j < 32; ++j) CHECK(back.code(0, j) == codes[static_cast<std::size_t>(j)]);
    CHECK(back == q);
}

TEST_CASE("3-bit words hold 32 codes in 3 words, codes 10 and 21 split across words", "[io][squeezellm]") {
    const auto with = [](std::initializer_list<std::pair<int, int>> set) {
        std::vector<std::uint8_t> codes(32, 0);
        for (const auto& [j, c] : set) codes[static_cast<std::size_t>(j)] = static_cast<std::uint8_t>(c);
        return codes;
    };
    // Code 10 = 0b101: low bits 01 -> word 0 bits 30-31, high bit 1 -> word 1 bit 0. Code 21 = 0b110:
    // low bit 0 -> word 1 bit 31, high bits 11 -> word 2 bits 0-1.
    const auto split = with({{10, 5}, {21, 6}});
    // Code 0 at bit 0 of word 0; code 11 at bit 1 of word 1; code 22 at bit 2 of word 2; code 31 = 0b100
    // at bits 29-31 of word 2.
    const auto firsts = with({{0, 1}, {11, 1}, {22, 1}, {31, 4}});
    // Codes 9 and 20 (the last whole codes of words 0 and 1, bits 27-29 and 28-30) and both split codes, all 7.
    const auto ends = with({{9, 7}, {10, 7}, {20, 7}, {21, 7}});
    const std::vector<std::uint8_t> sevens(32, 7);

    CHECK(slm::pack_qweight(from_code_rows({split}, 3)) == std::vector<std::int32_t>{0x40000000, 0x00000001, 0x00000003});
    CHECK(slm::pack_qweight(from_code_rows({firsts}, 3)) == std::vector<std::int32_t>{0x00000001, 0x00000002, word(0x80000004u)});
    CHECK(slm::pack_qweight(from_code_rows({ends}, 3)) == std::vector<std::int32_t>{word(0xF8000000u), word(0xF0000001u), 0x00000003});
    CHECK(slm::pack_qweight(from_code_rows({sevens}, 3)) == std::vector<std::int32_t>{-1, -1, -1});

    // Two outputs: qweight is [3, 2], output i down column i.
    const auto two = from_code_rows({split, firsts}, 3);
    const std::vector<std::int32_t> words{0x40000000, 0x00000001, 0x00000001, 0x00000002, 0x00000003, word(0x80000004u)};
    CHECK(slm::pack_qweight(two) == words);
    slm::layer l{3, 2, 32, words, std::vector<float>(two.lut().data(), two.lut().data() + 16), {}, {}, {}};
    const auto back = slm::from_reference<float>(l);
    for (Eigen::Index j = 0; j < 32; ++j) {
        CHECK(back.code(0, j) == split[static_cast<std::size_t>(j)]);
        CHECK(back.code(1, j) == firsts[static_cast<std::size_t>(j)]);
    }
}

TEST_CASE("pack_qweight equals the reference's packing loop for 2, 3, 4 and 8 bits", "[io][squeezellm]") {
    for (const int bits : {2, 3, 4, 8}) {
        for (const auto& [rows, cols] : {std::pair<Eigen::Index, Eigen::Index>{1, 32}, {7, 64}, {13, 96}}) {
            INFO("bits " << bits << ", " << rows << " x " << cols);
            const auto q = random_quantized(rows, cols, bits, 0.0, static_cast<std::uint64_t>(bits * 1000 + rows));
            std::vector<std::vector<std::uint32_t>> intweight(static_cast<std::size_t>(cols), std::vector<std::uint32_t>(static_cast<std::size_t>(rows)));
            for (Eigen::Index i = 0; i < rows; ++i)
                for (Eigen::Index j = 0; j < cols; ++j) intweight[static_cast<std::size_t>(j)][static_cast<std::size_t>(i)] = q.code(i, j);
            const auto expected = reference_pack(intweight, bits);
            const auto packed = slm::pack_qweight(q);
            REQUIRE(packed.size() == expected.size());
            CHECK(std::memcmp(packed.data(), expected.data(), 4 * packed.size()) == 0);
        }
    }
}

TEST_CASE("the reference kernels' decoding of exported buffers gives sqz's W x", "[io][squeezellm]") {
    for (const int bits : {3, 4}) {
        const auto q = random_quantized(11, 128, bits, 0.03, static_cast<std::uint64_t>(bits));
        const auto l = slm::to_reference(q);
        CHECK(l.qweight.size() == static_cast<std::size_t>(128 / 32 * bits * 11));
        CHECK(l.sparse_rows.size() == 12);
        std::vector<float> x(128);
        sqz::synthetic::rng random(77);
        for (auto& v : x) v = static_cast<float>(random.normal());
        const auto y_reference = reference_matvec(l, x);
        const Eigen::VectorXd y = q.dequantize().cast<double>() * Eigen::Map<const Eigen::VectorXf>(x.data(), 128).cast<double>();
        for (Eigen::Index i = 0; i < 11; ++i) CHECK(y_reference[static_cast<std::size_t>(i)] == Approx(y(i)).epsilon(1e-6).margin(1e-6));  // D + S rounds to float in dequantize()
        CHECK(slm::from_reference<float>(l) == q);
    }
}

TEST_CASE("the SqueezeLLM layout rejects shapes and widths it cannot hold", "[io][squeezellm]") {
    CHECK_THROWS_WITH(slm::pack_qweight(random_quantized(2, 40, 3, 0, 1)), Catch::Contains("cols = 40 is not a multiple of 32"));
    CHECK_THROWS_WITH(slm::pack_qweight(random_quantized(2, 32, 5, 0, 1)), Catch::Contains("bits = 5"));
    slm::layer l{3, 2, 32, std::vector<std::int32_t>(5), std::vector<float>(16), {}, {}, {}};
    CHECK_THROWS_WITH(slm::from_reference<float>(l), Catch::Contains("qweight has 5 words"));
    l.qweight.resize(6);
    l.lookup_table.resize(15);
    CHECK_THROWS_WITH(slm::from_reference<float>(l), Catch::Contains("lookup_table has 15 values"));
    l.lookup_table.resize(16);
    l.sparse_rows = {0, 1, 1};
    l.sparse_cols = {32};
    l.sparse_vals = {1.0f};
    CHECK_THROWS_WITH(slm::from_reference<float>(l), Catch::Contains("column 32"));
}

TEST_CASE("a checkpoint packed by an independent implementation imports, runs and exports back", "[io][squeezellm]") {
    scratch_dir dir;
    const sqz::io::safetensors_file reference(sqz_test::data_dir() / "valid" / "squeezellm_reference.safetensors");
    CHECK(slm::find_layers(reference) == std::vector<std::string>{"l3", "l4"});
    slm::import_checkpoint(reference, dir / "sqz.safetensors");
    const auto model = sqz::io::load_quantized<float>(dir / "sqz.safetensors");
    REQUIRE(model.quantized.size() == 2);
    for (const auto& [prefix, bits] : {std::pair<std::string, int>{"l3", 3}, {"l4", 4}}) {
        INFO(prefix);
        const auto& q = model.quantized.at(prefix + ".weight").matrix;
        CHECK(q.bits() == bits);
        CHECK(q.dequantize() == reference.read_matrix<float>("expected." + prefix + ".dense"));
        const auto x = reference.read_vector<float>("expected." + prefix + ".x");
        const auto y = reference.read_vector<float>("expected." + prefix + ".y");
        const Eigen::VectorXf result = q.dequantize() * Eigen::Map<const Eigen::VectorXf>(x.data(), static_cast<Eigen::Index>(x.size()));
        for (std::size_t i = 0; i < y.size(); ++i) CHECK(result(static_cast<Eigen::Index>(i)) == Approx(y[i]).epsilon(1e-5).margin(1e-6));
    }
    CHECK(model.quantized.at("l3.weight").matrix.sparse_nonzeros() == 10);
    CHECK(model.passthrough.count("l3.bias") == 1);
    CHECK(model.passthrough.count("sparse_threshold.l3") == 0);  // derived, dropped

    const auto exported = dir / "reference.safetensors";
    slm::export_checkpoint(sqz::io::quantized_reader(dir / "sqz.safetensors"), exported);
    const sqz::io::safetensors_file back(exported);
    for (const char* name : {"l3.qweight", "l3.lookup_table", "l3.rows", "l3.cols", "l3.vals", "l4.qweight", "l4.lookup_table",
                             "l3.bias", "expected.l3.dense"}) {
        INFO(name);
        const auto a = reference.data(reference.at(name));
        const auto b = back.data(back.at(name));
        CHECK(back.at(name).shape == reference.at(name).shape);
        CHECK(back.at(name).type == reference.at(name).type);
        CHECK(std::equal(a.begin(), a.end(), b.begin(), b.end()));
    }
    CHECK(back.read_integers<std::int64_t>("sparse_threshold.l3") == std::vector<std::int64_t>{10});
    // The model has a sparse part, so every layer gets one (empty for l4), as the reference's loader expects.
    CHECK(back.read_integers<std::int64_t>("sparse_threshold.l4") == std::vector<std::int64_t>{0});
    CHECK(back.read_integers<std::int32_t>("l4.rows") == std::vector<std::int32_t>(4, 0));
}
