#include "io_test_support.hpp"

#include <sqz/half.hpp>
#include <sqz/io/safetensors.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

using sqz::io::dtype;
using sqz::io::safetensors_file;
using sqz::io::safetensors_writer;
using sqz_test::scratch_dir;

namespace {

// A file image assembled by hand: 8-byte length, header text, data.
std::vector<std::uint8_t> image(const std::string& header, const std::vector<std::uint8_t>& data) {
    std::vector<std::uint8_t> out(8 + header.size() + data.size());
    const std::uint64_t n = header.size();
    for (std::size_t i = 0; i < 8; ++i) out[i] = static_cast<std::uint8_t>(n >> (8 * i));
    std::copy(header.begin(), header.end(), out.begin() + 8);
    std::copy(data.begin(), data.end(), out.begin() + 8 + static_cast<std::ptrdiff_t>(header.size()));
    return out;
}

}  // namespace

TEST_CASE("the reader decodes a hand-written file", "[io][safetensors]") {
    // F32 1.5 = 0x3fc00000, -2 = 0xc0000000; F16 1.0 = 0x3c00, -2.0 = 0xc000; BF16 1.0 = 0x3f80,
    // 0.5 = 0x3f00; I32 -1, 258.
    const std::vector<std::uint8_t> data{0x00, 0x00, 0xc0, 0x3f, 0x00, 0x00, 0x00, 0xc0,  // a: F32 [2]
                                         0xff, 0xff, 0xff, 0xff, 0x02, 0x01, 0x00, 0x00,  // n: I32 [2]
                                         0x00, 0x3c, 0x00, 0xc0,                          // h: F16 [1, 2]
                                         0x80, 0x3f, 0x00, 0x3f};                         // b: BF16 [2, 1]
    const std::string header =
        R"({"__metadata__":{"format":"pt","who":"hand"},)"
        R"("b":{"dtype":"BF16","shape":[2,1],"data_offsets":[20,24]},)"
        R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
        R"("n":{"data_offsets":[8,16],"shape":[2],"dtype":"I32"},)"
        R"("h":{"dtype":"F16","shape":[1,2],"data_offsets":[16,20]}}   )";
    const auto bytes = image(header, data);
    const auto file = safetensors_file::view(bytes, "hand.safetensors");

    REQUIRE(file.tensors().size() == 4);
    CHECK(file.tensors()[0].name == "a");  // data order
    CHECK(file.tensors()[3].name == "b");
    CHECK(file.metadata().at("format") == "pt");
    CHECK(file.metadata().at("who") == "hand");
    CHECK(file.header_size() == header.size());
    CHECK(file.read_vector<float>("a") == std::vector<float>{1.5f, -2.0f});
    CHECK(file.read_vector<double>("h") == std::vector<double>{1.0, -2.0});
    CHECK(file.read_integers<std::int32_t>("n") == std::vector<std::int32_t>{-1, 258});
    const auto b = file.read_matrix<float>("b");
    REQUIRE(b.rows() == 2);
    REQUIRE(b.cols() == 1);
    CHECK(b(0, 0) == 1.0f);
    CHECK(b(1, 0) == 0.5f);
    CHECK(file.at("h").shape == std::vector<std::int64_t>{1, 2});
    CHECK(file.at("h").elements() == 2);
    CHECK_FALSE(file.contains("z"));
}

TEST_CASE("writer and reader round-trip every dtype, shape and the metadata", "[io][safetensors]") {
    scratch_dir dir;
    const auto path = dir / "all.safetensors";
    const std::vector<std::int32_t> ints{1, -2, 3, -4, 5, -6};
    const std::vector<std::uint8_t> bytes{1, 2, 3, 4, 5};
    const std::vector<double> doubles{0.1, -1e300};
    const std::vector<std::int64_t> scalar{-7};
    const std::vector<float> floats{1.0f, 1.0f / 3.0f, -65504.0f, 1e-8f, 70000.0f, 0.0f};
    const std::vector<float> empty;
    {
        safetensors_writer out(path);
        out.set_metadata("format", "pt");
        out.set_metadata("ünïcode", "välue");
        out.add<std::int32_t>("ints", {2, 3}, ints);
        out.add<std::uint8_t>("bytes", {5}, bytes);
        out.add<double>("doubles", {2}, doubles);
        out.add<std::int64_t>("scalar", {}, scalar);
        out.add<float>("empty", {0, 4}, empty);
        out.add_as<float>("as_f16", {3, 2}, floats, dtype::f16);
        out.add_as<float>("as_bf16", {6}, floats, dtype::bf16);
        out.add_as<float>("as_f64", {6}, floats, dtype::f64);
        out.commit();
    }
    const safetensors_file file(path);
    CHECK(file.tensors().size() == 8);
    CHECK(file.metadata().size() == 2);
    CHECK(file.metadata().at("ünïcode") == "välue");
    CHECK(file.read_integers<std::int32_t>("ints") == ints);
    CHECK(file.at("ints").shape == std::vector<std::int64_t>{2, 3});
    CHECK(file.read_integers<std::uint8_t>("bytes") == bytes);
    CHECK(file.read_vector<double>("doubles") == doubles);
    CHECK(file.read_integers<std::int64_t>("scalar") == scalar);
    CHECK(file.at("scalar").rank() == 0);
    CHECK(file.at("empty").bytes() == 0);
    CHECK(file.read_matrix<float>("empty").rows() == 0);
    CHECK(file.at("as_f16").type == dtype::f16);
    const auto f16 = file.read_vector<float>("as_f16");
    const auto bf16 = file.read_vector<float>("as_bf16");
    const auto f64 = file.read_vector<double>("as_f64");
    for (std::size_t i = 0; i < floats.size(); ++i) {
        CHECK(f16[i] == sqz::round_to_half(floats[i]));
        CHECK(bf16[i] == sqz::round_to_bfloat16(floats[i]));
        CHECK(f64[i] == static_cast<double>(floats[i]));
    }
    CHECK(std::isinf(f16[4]));  // 70000 overflows binary16
}

TEST_CASE("the writer aligns the data section to 8 bytes and every tensor to its element size", "[io][safetensors]") {
    scratch_dir dir;
    const auto path = dir / "aligned.safetensors";
    {
        safetensors_writer out(path);
        const std::vector<std::uint8_t> three{1, 2, 3};
        const std::vector<float> f{1, 2, 3};
        const std::vector<double> d{4, 5};
        const std::vector<std::uint16_t> h{6};
        out.add<std::uint8_t>("u8", {3}, three);
        out.add<float>("f32", {3}, f);
        out.add<std::uint16_t>("u16", {1}, h);
        out.add<double>("f64", {2}, d);
        out.add<std::uint8_t>("u8b", {3}, three);
        out.commit();
    }
    const safetensors_file file(path);
    CHECK((8 + file.header_size()) % 8 == 0);
    for (const auto& t : file.tensors()) CHECK(t.begin % sqz::io::dtype_size(t.type) == 0);
    CHECK(file.read_vector<double>("f64") == std::vector<double>{4, 5});
    CHECK(file.read_integers<std::uint8_t>("u8b") == std::vector<std::uint8_t>{1, 2, 3});
}

TEST_CASE("F16 and BF16 conversion agrees with half.hpp on all 65536 bit patterns", "[io][safetensors]") {
    std::vector<std::uint8_t> data(2 * 65536);
    for (unsigned v = 0; v < 65536; ++v) {
        data[2 * v] = static_cast<std::uint8_t>(v & 0xff);
        data[2 * v + 1] = static_cast<std::uint8_t>(v >> 8);
    }
    std::vector<std::uint8_t> both = data;
    both.insert(both.end(), data.begin(), data.end());
    const auto bytes = image(R"({"h":{"dtype":"F16","shape":[65536],"data_offsets":[0,131072]},)"
                             R"("b":{"dtype":"BF16","shape":[256,256],"data_offsets":[131072,262144]}})",
                             both);
    const auto file = safetensors_file::view(bytes);
    const auto h = file.read_vector<float>("h");
    const auto b = file.read_vector<double>("b");
    for (unsigned v = 0; v < 65536; ++v) {
        const float expect_h = sqz::half_bits_to_float(static_cast<std::uint16_t>(v));
        const float expect_b = sqz::bfloat16_bits_to_float(static_cast<std::uint16_t>(v));
        if (std::isnan(expect_h)) CHECK(std::isnan(h[v]));
        else if (h[v] != expect_h) FAIL("F16 pattern " << v);
        if (std::isnan(expect_b)) CHECK(std::isnan(b[v]));
        else if (b[v] != static_cast<double>(expect_b)) FAIL("BF16 pattern " << v);
    }
}

TEST_CASE("reads reject the wrong rank or dtype and name the file and the tensor", "[io][safetensors]") {
    const auto bytes = image(R"({"v":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                             R"("i":{"dtype":"I32","shape":[2],"data_offsets":[8,16]},)"
                             R"("e":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[16,17]}})",
                             std::vector<std::uint8_t>(17, 0));
    const auto file = safetensors_file::view(bytes, "model.safetensors");
    CHECK_THROWS_WITH(file.read_matrix<float>("v"), Catch::Contains("model.safetensors") &&
                                                        Catch::Contains("tensor 'v'") && Catch::Contains("2 dimensions"));
    CHECK_THROWS_WITH(file.read_vector<float>("i"), Catch::Contains("tensor 'i'") && Catch::Contains("dtype I32"));
    CHECK_THROWS_WITH(file.read_vector<float>("e"), Catch::Contains("dtype F8_E4M3"));
    CHECK_THROWS_WITH(file.read_integers<std::int64_t>("i"), Catch::Contains("expected I64"));
    CHECK_THROWS_WITH(file.at("missing"), Catch::Contains("tensor 'missing' is not in the file"));
    CHECK_THROWS_AS(file.read_vector<float>("missing"), sqz::error);
    std::vector<float> small(1);
    CHECK_THROWS_WITH(file.read_into<float>(file.at("v"), small), Catch::Contains("has 2 elements"));
}

TEST_CASE("the destination appears only at commit, atomically, and never half-written", "[io][safetensors]") {
    scratch_dir dir;
    const auto path = dir / "out.safetensors";
    const std::vector<float> old_values{1, 2, 3};
    const std::vector<float> new_values{4, 5};
    {
        safetensors_writer out(path);
        out.add<float>("x", {3}, old_values);
        // Nothing is visible before commit: the spool is an unnamed file.
        CHECK(dir.entries().empty());
        out.commit();
    }
    CHECK(dir.entries() == std::vector<std::string>{"out.safetensors"});
    const auto before = sqz_test::read_file(path);

    {  // abandoned without commit: the old file stays and nothing else appears
        safetensors_writer out(path);
        out.add<float>("x", {2}, new_values);
        CHECK_THROWS_AS(out.add<float>("x", {2}, new_values), sqz::error);  // duplicate
    }
    CHECK(dir.entries() == std::vector<std::string>{"out.safetensors"});
    CHECK(sqz_test::read_file(path) == before);

    {  // committed: replaced as a whole
        safetensors_writer out(path);
        out.add<float>("x", {2}, new_values);
        CHECK(sqz_test::read_file(path) == before);
        out.commit();
        CHECK_THROWS_WITH(out.commit(), Catch::Contains("already"));
    }
    CHECK(dir.entries() == std::vector<std::string>{"out.safetensors"});
    CHECK(safetensors_file(path).read_vector<float>("x") == new_values);
}

TEST_CASE("the writer rejects bad names, sizes and destinations", "[io][safetensors]") {
    scratch_dir dir;
    safetensors_writer out(dir / "w.safetensors");
    const std::vector<float> two{1, 2};
    CHECK_THROWS_WITH(out.add<float>("", {2}, two), Catch::Contains("empty"));
    CHECK_THROWS_WITH(out.add<float>("__metadata__", {2}, two), Catch::Contains("__metadata__"));
    CHECK_THROWS_WITH(out.add<float>(std::string("a\0b", 3), {2}, two), Catch::Contains("NUL"));
    CHECK_THROWS_WITH(out.add<float>("bad\xff", {2}, two), Catch::Contains("not valid UTF-8"));
    CHECK_THROWS_WITH(out.add<float>("x", {3}, two), Catch::Contains("needs 12 bytes, got 8"));
    CHECK_THROWS_WITH(out.add<float>("x", {-2}, two), Catch::Contains("negative"));
    CHECK_THROWS_WITH(out.add_as<float>("x", {2}, two, dtype::i32), Catch::Contains("cannot store"));
    CHECK_THROWS_WITH(out.set_metadata("k", "\xc3"), Catch::Contains("not valid UTF-8"));
    out.add<float>("x", {2}, two);
    CHECK_THROWS_WITH(out.add<float>("x", {2}, two), Catch::Contains("added twice"));
    CHECK_THROWS_WITH(safetensors_writer(dir / "no" / "such" / "dir.safetensors"),
                      Catch::Contains("no/such") && Catch::Contains("No such file"));
    CHECK_THROWS_WITH(safetensors_file(dir / "missing.safetensors"),
                      Catch::Contains("missing.safetensors") && Catch::Contains("cannot open"));
    CHECK_THROWS_WITH(safetensors_file(dir.path()), Catch::Contains("not a regular file"));
}

TEST_CASE("release() drops pages without changing what is read", "[io][safetensors]") {
    scratch_dir dir;
    const auto path = dir / "big.safetensors";
    std::vector<float> values(300000);
    for (std::size_t i = 0; i < values.size(); ++i) values[i] = static_cast<float>(i) * 0.5f;
    {
        safetensors_writer out(path);
        out.add<float>("v", {300000}, values);
        out.add<float>("w", {3, 100000}, values);
        out.commit();
    }
    const safetensors_file file(path);
    CHECK(file.read_vector<float>("v") == values);
    file.release(file.at("v"));
    CHECK(file.read_vector<float>("v") == values);
    const auto w = file.read_matrix<float>("w");
    CHECK(w(2, 99999) == values.back());
    const auto copy = file;  // copies share the mapping
    file.release(file.at("w"));
    CHECK(copy.read_vector<float>("w") == values);
}

TEST_CASE("a file in memory can be owned or viewed", "[io][safetensors]") {
    auto bytes = image(R"({"a":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}})", {7, 8, 9});
    const auto owned = safetensors_file::from_buffer(bytes, "buffer");
    bytes.assign(bytes.size(), 0);  // the owned copy is independent
    CHECK(owned.read_integers<std::uint8_t>("a") == std::vector<std::uint8_t>{7, 8, 9});
    CHECK(owned.source() == "buffer");
}

TEST_CASE("read_rows streams rows of a tensor and checks the range", "[io][safetensors]") {
    std::vector<std::uint8_t> data(4 * 12);
    for (std::size_t i = 0; i < 12; ++i) {
        const float v = static_cast<float>(i);
        std::memcpy(data.data() + 4 * i, &v, 4);
    }
    const auto bytes = image(R"({"t":{"dtype":"F32","shape":[3,2,2],"data_offsets":[0,48]}})", data);
    const auto file = safetensors_file::view(bytes);
    std::vector<double> rows(8);
    file.read_rows<double>(file.at("t"), 1, 2, rows);
    CHECK(rows == std::vector<double>{4, 5, 6, 7, 8, 9, 10, 11});
    std::vector<double> one(4);
    CHECK_THROWS_WITH(file.read_rows<double>(file.at("t"), 2, 2, rows), Catch::Contains("has 3 rows"));
    CHECK_THROWS_WITH(file.read_rows<double>(file.at("t"), 0, 2, one), Catch::Contains("need 8 values"));
}
