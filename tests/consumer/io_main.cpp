// Compiled against sqz::io from an installed or embedded sqz: writes a small quantized file, reads it
// back and checks the round trip, proving that the io target carries nlohmann-json and its headers.
#include <sqz/sqz.hpp>  // includes <sqz/io.hpp> through sqz::io's SQZ_WITH_IO

#include <cstdio>
#include <filesystem>
#include <vector>

int main() {
    const std::vector<std::uint8_t> codes{1, 0, 3, 2, 2, 3, 0, 1};
    sqz::row_matrix<float> lut(2, 4);
    lut << -1, -0.5f, 0.5f, 1, -2, -1, 1, 2;
    sqz::io::quantized_model<float> model;
    model.quantized.emplace("w", sqz::io::quantized_model<float>::entry{sqz::quantized_matrix<float>::from_codes(2, 4, 2, lut, codes), {}});
    const auto path = std::filesystem::temp_directory_path() / "sqz-consumer-io.safetensors";
    sqz::io::save_quantized(path, model);
    const auto back = sqz::io::load_quantized<float>(path);
    std::filesystem::remove(path);
    if (!(back.quantized.at("w").matrix == model.quantized.at("w").matrix)) {
        std::puts("sqz consumer: quantized file round trip failed");
        return 1;
    }
    std::puts("sqz consumer: sqz::io round trip ok");
    return 0;
}
