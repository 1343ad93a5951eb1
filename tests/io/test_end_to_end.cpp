// End to end through the library: a small model written by the test (BF16 and F16 matrices, a norm, an
// embedding), quantized with a Fisher file, saved, loaded back, and multiplied.
#include "io_test_support.hpp"

#include <sqz/io.hpp>
#include <sqz/quantize.hpp>
#include <sqz/synthetic.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <map>
#include <string>
#include <vector>

using sqz_test::scratch_dir;

namespace {

struct weight_spec {
    std::string name;
    Eigen::Index rows, cols;
    sqz::io::dtype type;
};

const std::vector<weight_spec> specs{{"layers.0.q_proj.weight", 64, 96, sqz::io::dtype::bf16},
                                     {"layers.0.down_proj.weight", 48, 160, sqz::io::dtype::f16},
                                     {"layers.1.q_proj.weight", 33, 70, sqz::io::dtype::f32}};

// y = W x from the loaded parts alone: each code looked up in its row's LUT, plus the CSR entries.
Eigen::VectorXd scalar_matvec(const sqz::quantized_matrix<float>& q, const Eigen::VectorXd& x) {
    Eigen::VectorXd y = Eigen::VectorXd::Zero(q.rows());
    for (Eigen::Index i = 0; i < q.rows(); ++i) {
        for (Eigen::Index j = 0; j < q.cols(); ++j) y(i) += static_cast<double>(q.lut()(i, q.code(i, j))) * x(j);
        for (sqz::csr_matrix<float>::InnerIterator it(q.sparse(), i); it; ++it) y(i) += static_cast<double>(it.value()) * x(it.col());
    }
    return y;
}

}  // namespace

TEST_CASE("a model file quantized through the library loads back and multiplies correctly", "[io][end_to_end]") {
    scratch_dir dir;
    {
        sqz::io::safetensors_writer model(dir / "model.safetensors");
        sqz::io::safetensors_writer fisher(dir / "fisher.safetensors");
        std::uint64_t seed = 10;
        for (const auto& s : specs) {
            const auto w = sqz::synthetic::llm_like_weights(s.rows, s.cols, seed++);
            const auto f = sqz::synthetic::fisher_like_sensitivity(s.rows, s.cols, seed++);
            model.add_as<float>(s.name, {s.rows, s.cols}, std::span<const float>(w.data(), static_cast<std::size_t>(w.size())), s.type);
            fisher.add_as<float>(s.name, {s.rows, s.cols}, std::span<const float>(f.data(), static_cast<std::size_t>(f.size())), sqz::io::dtype::bf16);
        }
        const std::vector<float> norm(96, 1.0f);
        model.add_as<float>("layers.0.norm.weight", {96}, norm, sqz::io::dtype::bf16);
        model.commit();
        fisher.commit();
    }

    const sqz::io::safetensors_file model(dir / "model.safetensors");
    const sqz::io::safetensors_file fisher(dir / "fisher.safetensors");
    sqz::quantize_config config;
    config.bits = 3;
    config.format = sqz::lut_format::fp16;
    config.split.outlier_fraction = 0.004;
    config.split.sensitive_fraction = 0.0005;
    std::map<std::string, sqz::quantized_matrix<float>> made;
    {
        sqz::io::safetensors_writer out(dir / "quantized.safetensors");
        for (const auto& t : model.tensors()) {
            if (t.rank() != 2) {
                out.add_bytes(t.name, t.type, t.shape, model.data(t));
                continue;
            }
            const auto w = model.read_matrix<float>(t.name);
            const auto f = fisher.read_matrix<float>(t.name);
            const auto result = sqz::quantize_with_report(w, f, config);
            CHECK(result.report.relative_error < 0.3);
            CHECK(result.matrix.sparse_nonzeros() > 0);
            // D + S reproduces the extracted entries.
            const auto dense = result.matrix.dequantize();
            for (Eigen::Index i = 0; i < w.rows(); ++i)
                for (sqz::csr_matrix<float>::InnerIterator it(result.matrix.sparse(), i); it; ++it) CHECK(dense(i, it.col()) == w(i, it.col()));
            sqz::io::write_quantized(out, t.name, result.matrix, {"squeezellm-fisher", 0.004, 0.0005});
            made.emplace(t.name, result.matrix);
        }
        out.commit();
    }

    const auto loaded = sqz::io::load_quantized<float>(dir / "quantized.safetensors");
    REQUIRE(loaded.quantized.size() == specs.size());
    CHECK(loaded.passthrough.at("layers.0.norm.weight").type == sqz::io::dtype::bf16);
    sqz::synthetic::rng random(5);
    for (const auto& s : specs) {
        INFO(s.name);
        const auto& q = loaded.quantized.at(s.name).matrix;
        CHECK(q == made.at(s.name));
        CHECK(q.format() == sqz::lut_format::fp16);
        Eigen::VectorXd x(s.cols);
        for (auto& v : x) v = random.normal();
        const Eigen::VectorXd expected = q.dequantize().cast<double>() * x;
        const Eigen::VectorXd y = scalar_matvec(q, x);
        CHECK((y - expected).norm() <= 1e-5 * expected.norm());
    }
}
