// The sqz binary run as a user would: on a small model the test writes itself (BF16 and F16 matrices, a
// norm, an embedding and an lm_head that stay unquantized), with each sensitivity source; bad input
// gives exit status 1, one line naming the file, the tensor and the problem, and no output file.
#include "../io/io_test_support.hpp"

#include <sqz/io.hpp>
#include <sqz/synthetic.hpp>

#include <catch2/catch.hpp>

#include <sys/wait.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

using sqz_test::scratch_dir;

namespace {

struct run_result {
    int status;
    std::string out, err;
};

run_result run_sqz(const scratch_dir& dir, const std::string& arguments) {
    const auto out = dir / "stdout.txt", err = dir / "stderr.txt";
    const std::string command = std::string(SQZ_CLI_PATH) + " " + arguments + " > " + out.string() + " 2> " + err.string();
    const int raw = std::system(command.c_str());
    const auto slurp = [](const std::filesystem::path& p) {
        std::ifstream in(p);
        std::stringstream s;
        s << in.rdbuf();
        return s.str();
    };
    run_result r{WIFEXITED(raw) ? WEXITSTATUS(raw) : -1, slurp(out), slurp(err)};
    std::filesystem::remove(out);
    std::filesystem::remove(err);
    return r;
}

struct spec {
    std::string name;
    Eigen::Index rows, cols;
    sqz::io::dtype type;
};

const std::vector<spec> weights{{"model.layers.0.self_attn.q_proj.weight", 64, 96, sqz::io::dtype::bf16},
                                {"model.layers.0.mlp.down_proj.weight", 48, 128, sqz::io::dtype::f16},
                                {"model.embed_tokens.weight", 40, 96, sqz::io::dtype::bf16},
                                {"lm_head.weight", 40, 96, sqz::io::dtype::bf16}};

// model.safetensors (+ a norm), fisher.safetensors, activations.safetensors (1-D E[x^2] for q_proj, raw
// [tokens, in] activations for down_proj), written by the library's writer.
void write_inputs(const scratch_dir& dir, float poison = 0.0f) {
    sqz::io::safetensors_writer model(dir / "model.safetensors"), fisher(dir / "fisher.safetensors"),
        activations(dir / "activations.safetensors");
    std::uint64_t seed = 100;
    for (const auto& s : weights) {
        auto w = sqz::synthetic::llm_like_weights(s.rows, s.cols, seed++);
        if (poison != 0.0f && s.name.find("down_proj") != std::string::npos) w(3, 5) = poison;
        const auto f = sqz::synthetic::fisher_like_sensitivity(s.rows, s.cols, seed++);
        model.add_as<float>(s.name, {s.rows, s.cols}, std::span<const float>(w.data(), static_cast<std::size_t>(w.size())), s.type);
        fisher.add_as<float>(s.name, {s.rows, s.cols}, std::span<const float>(f.data(), static_cast<std::size_t>(f.size())), sqz::io::dtype::bf16);
    }
    const std::vector<float> norm(96, 1.0f);
    model.add_as<float>("model.norm.weight", {96}, norm, sqz::io::dtype::bf16);
    std::vector<float> mean_squares(96), raw(5 * 128);
    sqz::synthetic::rng random(3);
    for (auto& v : mean_squares) v = static_cast<float>(random.uniform() + 0.01);
    for (auto& v : raw) v = static_cast<float>(random.normal());
    activations.add<float>("model.layers.0.self_attn.q_proj.weight", {96}, mean_squares);
    activations.add<float>("model.layers.0.mlp.down_proj.weight", {5, 128}, raw);
    model.commit();
    fisher.commit();
    activations.commit();
}

// Checks the quantized file: quantized matrices loaded, the rest byte-identical, matvec == dequantize() x.
void check_output(const scratch_dir& dir, const std::string& file, int bits, const std::string& method) {
    const sqz::io::safetensors_file model(dir / "model.safetensors");
    const sqz::io::quantized_reader reader(dir / file);
    REQUIRE(reader.quantized().size() == 2);  // the embedding and lm_head are excluded by default
    for (const auto& m : reader.quantized()) {
        INFO(m.name);
        CHECK(m.note.method == method);
        const auto q = reader.load<float>(m.name);
        CHECK(q.bits() == bits);
        const auto w = model.read_matrix<float>(m.name);
        CHECK(q.rows() == w.rows());
        CHECK(q.cols() == w.cols());
        const auto dense = q.dequantize();
        CHECK((dense - w).norm() / w.norm() < 0.35);
        Eigen::VectorXf x = Eigen::VectorXf::LinSpaced(q.cols(), -1.0f, 1.0f);
        const Eigen::VectorXd expected = dense.cast<double>() * x.cast<double>();
        Eigen::VectorXd y = Eigen::VectorXd::Zero(q.rows());
        for (Eigen::Index i = 0; i < q.rows(); ++i) {
            for (Eigen::Index j = 0; j < q.cols(); ++j) y(i) += static_cast<double>(q.dense_value(i, j)) * x(j);
            for (sqz::csr_matrix<float>::InnerIterator it(q.sparse(), i); it; ++it) y(i) += static_cast<double>(it.value()) * x(it.col());
        }
        CHECK((y - expected).norm() <= 1e-5 * expected.norm());
    }
    for (const char* plain : {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"}) {
        const auto a = model.data(model.at(plain));
        const auto b = reader.file().data(reader.file().at(plain));
        CHECK(std::equal(a.begin(), a.end(), b.begin(), b.end()));
    }
}

std::vector<std::string> sorted_entries(const scratch_dir& dir) {
    auto e = dir.entries();
    std::sort(e.begin(), e.end());
    return e;
}

}  // namespace

TEST_CASE("sqz quantize with a Fisher file, then inspect and convert", "[cli]") {
    scratch_dir dir;
    write_inputs(dir);
    const auto r = run_sqz(dir, "quantize " + (dir / "model.safetensors").string() + " --fisher " + (dir / "fisher.safetensors").string() +
                                    " --bits 3 --outliers 0.40 --sensitive 0.05 -o " + (dir / "q3.safetensors").string());
    INFO(r.err);
    REQUIRE(r.status == 0);
    CHECK(r.out.find("model.layers.0.self_attn.q_proj.weight") != std::string::npos);
    CHECK(r.out.find("quantized 2 of 5 tensors") != std::string::npos);
    CHECK(r.out.find("smaller") != std::string::npos);
    check_output(dir, "q3.safetensors", 3, "squeezellm-fisher");
    const sqz::io::quantized_reader reader(dir / "q3.safetensors");
    CHECK(reader.quantized()[0].note.outlier_fraction == Approx(0.004));
    CHECK(reader.quantized()[0].nnz > 0);

    const auto inspect = run_sqz(dir, "inspect " + (dir / "q3.safetensors").string());
    CHECK(inspect.status == 0);
    CHECK(inspect.out.find("sqz quantized file, format version 1") != std::string::npos);
    CHECK(inspect.out.find("model.layers.0.mlp.down_proj.weight") != std::string::npos);

    // Round trip through the SqueezeLLM layout (all input sizes are multiples of 32).
    CHECK(run_sqz(dir, "convert " + (dir / "q3.safetensors").string() + " --to squeezellm -o " + (dir / "ref.safetensors").string()).status == 0);
    const sqz::io::safetensors_file ref(dir / "ref.safetensors");
    CHECK(ref.at("model.layers.0.self_attn.q_proj.qweight").shape == std::vector<std::int64_t>{96 / 32 * 3, 64});
    CHECK(run_sqz(dir, "convert " + (dir / "ref.safetensors").string() + " --to sqz -o " + (dir / "back.safetensors").string()).status == 0);
    const sqz::io::quantized_reader back(dir / "back.safetensors");
    for (const auto& m : reader.quantized()) {
        // Imported LUTs are fp32 (the reference's format); values, codes and sparse part are identical.
        const auto a = reader.load<float>(m.name);
        const auto b = back.load<float>(m.name);
        CHECK(a.dequantize() == b.dequantize());
        CHECK(std::equal(a.codes().begin(), a.codes().end(), b.codes().begin(), b.codes().end()));
    }
}

TEST_CASE("sqz quantize with activations, uniform weights, RTN and tensor selection", "[cli]") {
    scratch_dir dir;
    write_inputs(dir);
    const std::string model = (dir / "model.safetensors").string();
    CHECK(run_sqz(dir, "quantize " + model + " --activations " + (dir / "activations.safetensors").string() + " --bits 4 -o " +
                           (dir / "a.safetensors").string())
              .status == 0);
    check_output(dir, "a.safetensors", 4, "squeezellm-activations");
    CHECK(run_sqz(dir, "quantize " + model + " --uniform --bits 2 --lut fp32 -o " + (dir / "u.safetensors").string()).status == 0);
    check_output(dir, "u.safetensors", 2, "kmeans-uniform");
    CHECK(run_sqz(dir, "quantize " + model + " --codebook rtn --bits 4 -o " + (dir / "r.safetensors").string()).status == 0);
    check_output(dir, "r.safetensors", 4, "rtn");

    // --include narrows the selection; --exclude '' quantizes the embedding and lm_head too.
    CHECK(run_sqz(dir, "quantize " + model + " --include down_proj -o " + (dir / "i.safetensors").string()).status == 0);
    CHECK(sqz::io::quantized_reader(dir / "i.safetensors").quantized().size() == 1);
    CHECK(run_sqz(dir, "quantize " + model + " --exclude '' -o " + (dir / "all.safetensors").string()).status == 0);
    CHECK(sqz::io::quantized_reader(dir / "all.safetensors").quantized().size() == 4);
}

TEST_CASE("sqz reports bad input in one line with status 1 and leaves no output file", "[cli]") {
    scratch_dir dir;
    write_inputs(dir);
    const std::string model = (dir / "model.safetensors").string();
    const std::string out = " -o " + (dir / "out.safetensors").string();
    {
        sqz::io::safetensors_writer bad(dir / "bad-activations.safetensors");
        const std::vector<float> wrong(95, 1.0f);
        bad.add<float>("model.layers.0.self_attn.q_proj.weight", {95}, wrong);
        bad.commit();
    }
    const auto before = sorted_entries(dir);
    const auto expect_failure = [&](const std::string& arguments, std::initializer_list<const char*> phrases) {
        const auto r = run_sqz(dir, arguments);
        INFO(arguments << "\nstderr: " << r.err);
        CHECK(r.status == 1);
        CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);  // one line
        for (const char* p : phrases) CHECK(r.err.find(p) != std::string::npos);
        CHECK(sorted_entries(dir) == before);  // nothing written, no temporary left
    };
    expect_failure("quantize " + (dir / "missing.safetensors").string() + out, {"missing.safetensors", "cannot open"});
    expect_failure("quantize " + model + " --fisher " + (dir / "activations.safetensors").string() + out,
                   {"activations.safetensors", "model.layers.0.self_attn.q_proj.weight", "has shape [96]"});
    expect_failure("quantize " + model + " --activations " + (dir / "bad-activations.safetensors").string() + out,
                   {"bad-activations.safetensors", "tensor 'model.layers.0.self_attn.q_proj.weight'", "expected [96] or [tokens, 96]"});
    expect_failure("quantize " + model + " --fisher " + (sqz_test::data_dir() / "valid" / "small_model.safetensors").string() + out,
                   {"small_model.safetensors", "tensor 'model.layers.0.self_attn.q_proj.weight' is not in the file"});
    expect_failure("quantize " + model + " --include nothing-matches" + out, {"model.safetensors", "no 2-D floating-point tensor"});
    expect_failure("quantize " + model + " --include '('" + out, {"--include", "regular expression"});
    expect_failure("quantize " + model + " --bits 9" + out, {"bits"});
    expect_failure("quantize " + model + " --fisher x --uniform" + out, {"excludes"});
    expect_failure("quantize " + model + " -o " + (dir / "no-such-dir" / "out.safetensors").string(), {"no-such-dir", "No such file"});
    expect_failure("inspect " + (sqz_test::data_dir() / "malformed" / "overlapping_ranges.safetensors").string(),
                   {"overlapping_ranges.safetensors", "tensor 'b'", "overlap"});
    expect_failure("convert " + model + " --to squeezellm" + out, {"model.safetensors", "not an sqz quantized file"});

    // A NaN in one weight fails after other tensors were already quantized: still no output file.
    scratch_dir poisoned;
    write_inputs(poisoned, std::numeric_limits<float>::quiet_NaN());
    const auto entries = sorted_entries(poisoned);
    const auto r = run_sqz(poisoned, "quantize " + (poisoned / "model.safetensors").string() + " -o " + (poisoned / "out.safetensors").string());
    INFO(r.err);
    CHECK(r.status == 1);
    CHECK(r.err.find("model.safetensors") != std::string::npos);
    CHECK(r.err.find("tensor 'model.layers.0.mlp.down_proj.weight'") != std::string::npos);
    CHECK(r.err.find("nan") != std::string::npos);
    CHECK(sorted_entries(poisoned) == entries);
}

TEST_CASE("sqz --help and --version succeed", "[cli]") {
    scratch_dir dir;
    CHECK(run_sqz(dir, "--help").status == 0);
    const auto v = run_sqz(dir, "--version");
    CHECK(v.status == 0);
    CHECK(v.out.find("sqz ") != std::string::npos);
    CHECK(run_sqz(dir, "quantize --help").out.find("--fisher") != std::string::npos);
    CHECK(run_sqz(dir, "").status == 1);  // a subcommand is required
}
