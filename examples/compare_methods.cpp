// compare_methods: RTN vs unweighted k-means vs Fisher-weighted k-means (SqueezeLLM) vs + 0.05% sensitive
// vs + 0.45% dense-and-sparse on one LLaMA-7B-like matrix, one table per bit width, with times.
// Without arguments it runs the built-in default (4096 x 4096, 3 and 4 bits, fixed seed); see --help.
#include "compare_methods.hpp"

#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>
#include <string_view>

namespace {

const char* usage =
    "usage: sqz-example-compare-methods [--rows N] [--cols N] [--bits B[,B...]] [--seed S] [--threads T]\n"
    "                                   [--lut fp16|fp32] [--kmeans exact|lloyd] [--wide-cols N]\n"
    "defaults: 4096 x 4096, bits 3,4, seed 7, OpenMP's thread count, fp16 LUT, exact k-means,\n"
    "          and a 4-bit timing of a rows x 14336 matrix (--wide-cols 0 skips it)\n";

long long parse_integer(std::string_view flag, const std::string& text) {
    std::size_t used = 0;
    long long value = 0;
    try {
        value = std::stoll(text, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    if (used != text.size() || text.empty()) throw sqz::error(std::string(flag) + ": '" + text + "' is not an integer");
    return value;
}

}  // namespace

int main(int argc, char** argv) {
    sqz::examples::compare_options options;
    try {
        for (int a = 1; a < argc; ++a) {
            const std::string_view flag = argv[a];
            if (flag == "--help" || flag == "-h") {
                std::cout << usage;
                return 0;
            }
            if (a + 1 >= argc) throw sqz::error(std::string(flag) + " needs a value (or is unknown)");
            const std::string value = argv[++a];
            if (flag == "--rows") {
                options.rows = parse_integer(flag, value);
            } else if (flag == "--cols") {
                options.cols = parse_integer(flag, value);
            } else if (flag == "--wide-cols") {
                options.wide_cols = parse_integer(flag, value);
            } else if (flag == "--seed") {
                options.seed = static_cast<std::uint64_t>(parse_integer(flag, value));
            } else if (flag == "--threads") {
                options.threads = static_cast<int>(parse_integer(flag, value));
            } else if (flag == "--bits") {
                options.bits.clear();
                std::stringstream list(value);
                for (std::string item; std::getline(list, item, ',');)
                    options.bits.push_back(static_cast<int>(parse_integer(flag, item)));
            } else if (flag == "--lut") {
                if (value != "fp16" && value != "fp32") throw sqz::error("--lut: '" + value + "' is not fp16 or fp32");
                options.format = value == "fp16" ? sqz::lut_format::fp16 : sqz::lut_format::fp32;
            } else if (flag == "--kmeans") {
                if (value != "exact" && value != "lloyd") throw sqz::error("--kmeans: '" + value + "' is not exact or lloyd");
                options.method = value == "exact" ? sqz::kmeans_method::exact : sqz::kmeans_method::lloyd;
            } else {
                throw sqz::error("unknown option " + std::string(flag));
            }
        }
        return sqz::examples::run_compare_methods(options, std::cout);
    } catch (const sqz::error& e) {
        std::cerr << "sqz-example-compare-methods: " << e.what() << "\n" << usage;
        return 1;
    }
}
