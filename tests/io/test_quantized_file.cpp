#include "io_test_support.hpp"

#include <sqz/half.hpp>
#include <sqz/io/quantized_file.hpp>
#include <sqz/synthetic.hpp>

#include <catch2/catch.hpp>

#include <cstring>
#include <string>
#include <vector>

using sqz::io::quantized_reader;
using sqz_test::scratch_dir;

namespace {

// A random quantized matrix assembled from its parts (not from the quantizer), so that the file layer is
// tested on every bit width, both LUT formats and any sparse density.
template <class T>
sqz::quantized_matrix<T> random_matrix(Eigen::Index rows, Eigen::Index cols, int bits, double sparse_fraction,
                                       sqz::lut_format format, std::uint64_t seed) {
    sqz::synthetic::rng random(seed);
    sqz::row_matrix<T> lut(rows, Eigen::Index{1} << bits);
    for (Eigen::Index i = 0; i < lut.size(); ++i) {
        const auto v = static_cast<T>(random.normal() * 0.05);
        lut.data()[i] = format == sqz::lut_format::fp16 ? static_cast<T>(sqz::round_to_half(static_cast<float>(v))) : v;
    }
    std::vector<std::uint8_t> codes(static_cast<std::size_t>(rows * cols));
    for (auto& c : codes) c = static_cast<std::uint8_t>(random.below(std::uint64_t{1} << bits));
    std::vector<Eigen::Triplet<T, std::int32_t>> triplets;
    for (Eigen::Index i = 0; i < rows; ++i)
        for (Eigen::Index j = 0; j < cols; ++j)
            if (random.uniform() < sparse_fraction)
                triplets.emplace_back(static_cast<std::int32_t>(i), static_cast<std::int32_t>(j), static_cast<T>(random.normal()));
    sqz::csr_matrix<T> sparse(rows, cols);
    sparse.setFromTriplets(triplets.begin(), triplets.end());
    return sqz::quantized_matrix<T>::from_codes(rows, cols, bits, std::move(lut), codes, std::move(sparse), format);
}

template <class T>
void check_round_trip() {
    scratch_dir dir;
    sqz::io::quantized_model<T> model;
    std::uint64_t seed = 1;
    for (int bits = 1; bits <= 8; ++bits) {
        for (const auto format : {sqz::lut_format::fp32, sqz::lut_format::fp16}) {
            for (const double fraction : {0.0, 0.07}) {
                const std::string name = "layer" + std::to_string(bits) + "." + std::string(sqz::to_string(format)) +
                                         (fraction > 0 ? ".sparse" : ".dense") + ".weight";
                const Eigen::Index rows = 3 + bits, cols = 5 + 7 * bits;  // odd sizes: codes straddle bytes
                model.quantized.emplace(name, typename sqz::io::quantized_model<T>::entry{
                                                  random_matrix<T>(rows, cols, bits, fraction, format, seed++),
                                                  {"test-" + std::to_string(bits), fraction / 2, fraction / 3}});
            }
        }
    }
    model.quantized.emplace("empty", typename sqz::io::quantized_model<T>::entry{random_matrix<T>(0, 0, 3, 0, sqz::lut_format::fp32, 9), {}});
    model.quantized.emplace("no_cols", typename sqz::io::quantized_model<T>::entry{random_matrix<T>(4, 0, 2, 0, sqz::lut_format::fp32, 9), {}});
    model.passthrough["embed.weight"] = {sqz::io::dtype::bf16, {2, 3}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}};
    model.passthrough["norm.weight"] = {sqz::io::dtype::f32, {1}, {0, 0, 128, 63}};
    model.metadata["source"] = "unit test";

    const auto path = dir / "model.safetensors";
    sqz::io::save_quantized(path, model);
    const auto back = sqz::io::load_quantized<T>(path);

    REQUIRE(back.quantized.size() == model.quantized.size());
    for (const auto& [name, e] : model.quantized) {
        INFO(name);
        REQUIRE(back.quantized.count(name) == 1);
        const auto& b = back.quantized.at(name);
        CHECK(b.matrix == e.matrix);
        CHECK(b.matrix.format() == e.matrix.format());
        CHECK(b.note.method == e.note.method);
        CHECK(b.note.outlier_fraction == e.note.outlier_fraction);
        CHECK(b.note.sensitive_fraction == e.note.sensitive_fraction);
    }
    CHECK(back.passthrough == model.passthrough);
    CHECK(back.metadata == model.metadata);
}

}  // namespace

TEST_CASE("load(save(Q)) == Q for every width, LUT format and sparse density", "[io][quantized_file]") {
    check_round_trip<float>();
    check_round_trip<double>();
}

TEST_CASE("the parts on disk are exactly storage_bytes() of the matrix", "[io][quantized_file]") {
    scratch_dir dir;
    const auto path = dir / "q.safetensors";
    const auto q16 = random_matrix<float>(64, 96, 3, 0.01, sqz::lut_format::fp16, 3);
    const auto q32 = random_matrix<float>(64, 96, 4, 0.0, sqz::lut_format::fp32, 4);
    {
        sqz::io::safetensors_writer out(path);
        sqz::io::write_quantized(out, "a", q16, {"rtn", 0.0, 0.0});
        sqz::io::write_quantized(out, "b", q32);
        const std::vector<float> bias{1, 2};
        out.add<float>("bias", {2}, bias);
        out.commit();
    }
    const quantized_reader reader(path);
    for (const auto& [name, q] : {std::pair{"a", &q16}, std::pair{"b", &q32}}) {
        std::uint64_t bytes = 0;
        for (const auto& t : reader.file().tensors())
            if (t.name.starts_with(std::string(name) + ".")) bytes += t.bytes();
        CHECK(bytes == q->storage_bytes().total());
    }
    REQUIRE(reader.quantized().size() == 2);
    CHECK(reader.quantized()[0].name == "a");
    CHECK(reader.quantized()[0].lut_type == sqz::io::dtype::f16);
    CHECK(reader.quantized()[0].note.method == "rtn");
    CHECK(reader.quantized()[1].nnz == 0);
    REQUIRE(reader.passthrough().size() == 1);
    CHECK(reader.passthrough()[0]->name == "bias");
    CHECK(reader.file().metadata().at("sqz.format_version") == "1");
    CHECK(!reader.file().contains("b.sparse.values"));  // no sparse part, no sparse tensors
}

TEST_CASE("a quantized file written by an independent writer loads as documented", "[io][quantized_file]") {
    // tests/data/make_corpus.py writes this file from docs/format.md without sqz: a 2 x 5, 3-bit matrix
    // with LUT rows j - 3.5 and 0.25 j, codes {0,1,2,3,7} and {7,6,5,4,0}, residuals +0.5 at (0, 4)
    // and -0.25 at (1, 0).
    const quantized_reader reader(sqz_test::data_dir() / "valid" / "small_quantized.safetensors");
    const auto q = reader.load<float, 3>("w");
    sqz::row_matrix<float> expected(2, 5);
    expected << -3.5f, -2.5f, -1.5f, -0.5f, 4.0f, 1.5f, 1.5f, 1.25f, 1.0f, 0.0f;
    CHECK(q.dequantize() == expected);
    CHECK(q.code(1, 1) == 6);
    CHECK(reader.quantized()[0].note.method == "hand-made");
    const auto model = sqz::io::load_quantized<double>(sqz_test::data_dir() / "valid" / "small_quantized.safetensors");
    CHECK(model.metadata.at("note") == "hand-made");
    CHECK(model.passthrough.at("norm").shape == std::vector<std::int64_t>{3});
    CHECK(model.quantized.at("w").matrix.dequantize() == expected.cast<double>());
}

TEST_CASE("loading checks widths and reserved names", "[io][quantized_file]") {
    scratch_dir dir;
    const auto path = dir / "q.safetensors";
    sqz::io::quantized_model<float> model;
    model.quantized.emplace("w", sqz::io::quantized_model<float>::entry{random_matrix<float>(4, 9, 3, 0.1, sqz::lut_format::fp32, 5), {}});
    sqz::io::save_quantized(path, model);
    const quantized_reader reader(path);
    CHECK(sqz::quantized_matrix<float>(reader.load<float, 3>("w")) == model.quantized.at("w").matrix);
    CHECK_THROWS_WITH((reader.load<float, 4>("w")), Catch::Contains("q.safetensors") && Catch::Contains("quantized matrix 'w'"));
    CHECK_THROWS_WITH(reader.load<float>("v"), Catch::Contains("no quantized matrix 'v'"));

    model.metadata["sqz.mine"] = "x";
    CHECK_THROWS_WITH(sqz::io::save_quantized(dir / "r.safetensors", model), Catch::Contains("reserved prefix"));
    model.metadata.clear();
    model.passthrough["w"] = {sqz::io::dtype::u8, {1}, {0}};
    CHECK_THROWS_WITH(sqz::io::save_quantized(dir / "r.safetensors", model), Catch::Contains("both quantized and passed through"));
    CHECK_FALSE(std::filesystem::exists(dir / "r.safetensors"));
}
