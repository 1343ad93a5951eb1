// The hand-made corpus (tests/data/make_corpus.py): every malformed file gives sqz::error with a clear,
// printable message naming the file, never a crash, and never an allocation sized by what the file
// merely claims.
#include "io_test_support.hpp"

#include <sqz/io/quantized_file.hpp>
#include <sqz/io/safetensors.hpp>

#include <catch2/catch.hpp>

#include <fstream>
#include <string>
#include <utility>
#include <vector>

namespace {

std::vector<std::pair<std::string, std::string>> manifest(const std::filesystem::path& folder) {
    std::vector<std::pair<std::string, std::string>> cases;
    std::ifstream in(folder / "MANIFEST");
    std::string line;
    while (std::getline(in, line)) {
        if (line.empty() || line[0] == '#') continue;
        const auto tab = line.find('\t');
        REQUIRE(tab != std::string::npos);
        cases.emplace_back(line.substr(0, tab), line.substr(tab + 1));
    }
    return cases;
}

bool printable(const std::string& message) {
    for (const char c : message)
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return false;
    return true;
}

// Allocations may follow the header's size (names, shapes), never the sizes it claims for data.
constexpr std::size_t allocation_slack = 64 * 1024;

template <class Open>
void check_corpus(const std::filesystem::path& folder, Open open) {
    const auto cases = manifest(folder);
    REQUIRE(cases.size() >= 10);
    for (const auto& [name, phrase] : cases) {
        INFO("file " << name << ", expected error containing \"" << phrase << "\"");
        const auto path = folder / name;
        const auto size = std::filesystem::file_size(path);
        std::string message;
        std::size_t largest = 0;
        {
            sqz_test::allocation_watch watch;
            try {
                open(path);
            } catch (const sqz::error& e) {
                message = e.what();
            }
            largest = watch.largest();
        }
        INFO("message: " << message);
        CHECK_FALSE(message.empty());
        CHECK(message.find(phrase) != std::string::npos);
        CHECK(message.find(name) != std::string::npos);  // names the file
        CHECK(printable(message));
        CHECK(largest <= size + allocation_slack);
    }
}

}  // namespace

TEST_CASE("every malformed safetensors file gives a clear error", "[io][malformed]") {
    check_corpus(sqz_test::data_dir() / "malformed", [](const std::filesystem::path& path) {
        const sqz::io::safetensors_file file(path);
        for (const auto& t : file.tensors()) (void)file.data(t);
    });
}

TEST_CASE("the same corpus parsed from memory gives the same errors", "[io][malformed]") {
    check_corpus(sqz_test::data_dir() / "malformed", [](const std::filesystem::path& path) {
        const auto bytes = sqz_test::read_file(path);
        (void)sqz::io::safetensors_file::view(bytes, path.filename().string());
    });
}

TEST_CASE("every malformed quantized file gives a clear error", "[io][malformed]") {
    check_corpus(sqz_test::data_dir() / "malformed_quantized", [](const std::filesystem::path& path) {
        const sqz::io::quantized_reader reader(path);
        for (const auto& m : reader.quantized()) (void)reader.load<float>(m.name);
    });
}

TEST_CASE("the valid corpus files open without error", "[io][malformed]") {
    for (const auto* name : {"small_model.safetensors", "small_quantized.safetensors", "squeezellm_reference.safetensors"}) {
        INFO(name);
        CHECK_NOTHROW(sqz::io::safetensors_file(sqz_test::data_dir() / "valid" / name));
    }
}

TEST_CASE("a BF16/F16/F32 model written by an independent writer reads correctly", "[io][malformed]") {
    const sqz::io::safetensors_file file(sqz_test::data_dir() / "valid" / "small_model.safetensors");
    CHECK(file.metadata().at("format") == "pt");
    CHECK(file.at("layers.0.q_proj.weight").type == sqz::io::dtype::bf16);
    CHECK(file.at("layers.0.k_proj.weight").type == sqz::io::dtype::f16);
    const auto q = file.read_matrix<float>("layers.0.q_proj.weight");
    const auto k = file.read_matrix<double>("layers.0.k_proj.weight");
    CHECK(q.rows() == 8);
    CHECK(q.cols() == 32);
    CHECK(k.rows() == 8);
    // Drawn from N(0, 0.02): all finite and small, and not all equal.
    CHECK(q.allFinite());
    CHECK(q.cwiseAbs().maxCoeff() < 0.2f);
    CHECK(k.cwiseAbs().maxCoeff() < 0.2);
    CHECK(q.cwiseAbs().maxCoeff() > 0.0f);
    const auto norm = file.read_vector<float>("layers.0.norm.weight");
    REQUIRE(norm.size() == 32);
    for (std::size_t j = 0; j < 32; ++j) CHECK(norm[j] == static_cast<float>(1.0 + 0.01 * static_cast<double>(j)));
    CHECK(file.read_integers<std::int64_t>("step") == std::vector<std::int64_t>{7});
}
