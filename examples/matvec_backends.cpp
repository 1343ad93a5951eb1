// y = Q x with each CPU back end and numeric mode on a 3-bit 4096 x 4096 matrix with a 0.45% sparse
// part, and how far the fast modes are from the reference.
//
//   sqz-example-matvec [bits]
//
// The matrix here has random codebooks and codes; sqz::quantize (quantize.hpp) makes real ones from
// weights, and the products work the same way on its output.
#include <sqz/sqz.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

int main(int argc, char** argv) try {
    const int bits = argc > 1 ? std::stoi(argv[1]) : 3;
    const Eigen::Index rows = 4096, cols = 4096;
    sqz::synthetic::rng random(7);
    sqz::row_matrix<float> lut(rows, Eigen::Index{1} << bits);
    for (Eigen::Index i = 0; i < lut.size(); ++i) lut.data()[i] = static_cast<float>(0.02 * random.normal());
    std::vector<std::uint8_t> codes(static_cast<std::size_t>(rows * cols));
    for (auto& c : codes) c = static_cast<std::uint8_t>(random.below(std::uint64_t{1} << bits));
    std::vector<Eigen::Triplet<float, std::int32_t>> outliers;
    for (Eigen::Index i = 0; i < rows; ++i)
        for (int k = 0; k < 18; ++k)  // 18 of 4096 columns per row: 0.45%
            outliers.emplace_back(static_cast<std::int32_t>(i), static_cast<std::int32_t>(random.below(cols)),
                                  static_cast<float>(0.2 * random.normal()));
    sqz::csr_matrix<float> sparse(rows, cols);
    sparse.setFromTriplets(outliers.begin(), outliers.end());
    const auto q = sqz::quantized_matrix<float>::from_codes(rows, cols, bits, lut, codes, sparse);

    std::vector<float> x(static_cast<std::size_t>(cols));
    for (auto& v : x) v = static_cast<float>(random.normal());
    std::vector<float> reference(static_cast<std::size_t>(rows));
    sqz::matvec<sqz::backend::reference>(q, x, reference);

    const sqz::cpu_matrix<float> prepared = sqz::prepare<sqz::backend::cpu>(q);  // repack once
    std::vector<float> y(reference.size());
    for (const auto mode : {sqz::numeric_mode::exact, sqz::numeric_mode::int8, sqz::numeric_mode::int8_tile}) {
        double us = 1e30;
        for (int repeat = 0; repeat < 5; ++repeat) {  // the first call also starts OpenMP's threads
            const auto start = std::chrono::steady_clock::now();
            sqz::matvec<sqz::backend::cpu>(prepared, x, y, {.mode = mode});
            us = std::min(us, std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count());
        }
        double worst = 0, norm = 0;
        for (std::size_t i = 0; i < y.size(); ++i) {
            worst = std::max(worst, std::abs(static_cast<double>(y[i]) - reference[i]));
            norm = std::max(norm, std::abs(static_cast<double>(reference[i])));
        }
        const auto name = sqz::to_string(mode);
        std::printf("cpu %-9.*s %3d bits: %8.1f us, max |y - y_ref| = %.3g (max |y_ref| = %.3g)\n",
                    static_cast<int>(name.size()), name.data(), bits, us, worst, norm);
    }
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "sqz-example-matvec: %s\n", e.what());
    return 1;
}
