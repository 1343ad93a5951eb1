// The cuda back end on a GPU against the reference back end and against the host emulation of its
// own kernels (detail/cuda_shared.hpp). Without a CUDA device it prints "skipped: no CUDA device" and
// exits with 77, which CTest reports as skipped.
#include <sqz/sqz.hpp>

#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

namespace {

int failures = 0;

void expect(bool condition, const std::string& what) {
    if (!condition) {
        ++failures;
        std::printf("FAILED: %s\n", what.c_str());
    }
}

sqz::quantized_matrix<float> make_matrix(Eigen::Index rows, Eigen::Index cols, int bits, std::uint64_t seed, int sparse_kind) {
    sqz::synthetic::rng random(seed);
    sqz::row_matrix<float> lut(rows, Eigen::Index{1} << bits);
    for (Eigen::Index i = 0; i < lut.size(); ++i) lut.data()[i] = static_cast<float>(random.normal());
    std::vector<std::uint8_t> codes(static_cast<std::size_t>(rows * cols));
    for (auto& c : codes) c = static_cast<std::uint8_t>(random.below(1u << bits));
    sqz::csr_matrix<float> sparse(rows, cols);
    if (sparse_kind > 0) {
        std::vector<Eigen::Triplet<float, std::int32_t>> entries;
        for (Eigen::Index i = 0; i < rows; ++i)
            for (Eigen::Index j = 0; j < cols; ++j)
                if ((sparse_kind == 2 && i % 5 == 2) || random.uniform() < 0.01)
                    entries.emplace_back(static_cast<std::int32_t>(i), static_cast<std::int32_t>(j),
                                         static_cast<float>(random.normal()));
        sparse.setFromTriplets(entries.begin(), entries.end());
    }
    return sqz::quantized_matrix<float>::from_codes(rows, cols, bits, lut, codes, sparse);
}

double magnitude(const sqz::quantized_matrix<float>& q, Eigen::Index i, const std::vector<float>& x) {
    double sum = 0;
    for (Eigen::Index j = 0; j < q.cols(); ++j) sum += std::abs(static_cast<double>(q.dense_value(i, j)) * x[static_cast<std::size_t>(j)]);
    for (sqz::csr_matrix<float>::InnerIterator it(q.sparse(), i); it; ++it)
        sum += std::abs(static_cast<double>(it.value()) * x[static_cast<std::size_t>(it.col())]);
    return sum;
}

void check_against_reference(int bits, Eigen::Index rows, Eigen::Index cols, int sparse_kind) {
    const auto q = make_matrix(rows, cols, bits, 100 * static_cast<std::uint64_t>(bits) + static_cast<std::uint64_t>(cols), sparse_kind);
    sqz::synthetic::rng random(7);
    std::vector<float> x(static_cast<std::size_t>(cols));
    for (auto& v : x) v = static_cast<float>(random.normal());
    std::vector<float> reference(static_cast<std::size_t>(rows));
    std::vector<float> y(reference.size());
    sqz::matvec<sqz::backend::reference>(q, x, reference);
    sqz::matvec<sqz::backend::cuda>(q, x, y);
    const std::string name = "bits " + std::to_string(bits) + " shape " + std::to_string(rows) + "x" + std::to_string(cols) +
                             " sparse " + std::to_string(sparse_kind);
    for (Eigen::Index i = 0; i < rows; ++i) {
        const double err = std::abs(static_cast<double>(y[static_cast<std::size_t>(i)]) - reference[static_cast<std::size_t>(i)]);
        expect(err <= 1e-5 * magnitude(q, i, x) + 1e-30, name + " fp32 row " + std::to_string(i));
    }

    // fp16 activations and result: compare with the reference on the fp16-rounded x, within fp16
    // rounding of the result.
    std::vector<__half> xh(x.size());
    std::vector<float> x_rounded(x.size());
    for (std::size_t j = 0; j < x.size(); ++j) {
        xh[j] = __float2half_rn(x[j]);
        x_rounded[j] = __half2float(xh[j]);
    }
    sqz::matvec<sqz::backend::reference>(q, x_rounded, reference);
    const sqz::cuda_matrix a = sqz::prepare<sqz::backend::cuda>(q);
    sqz::cuda::device_buffer<__half> xd{std::span<const __half>(xh)};
    sqz::cuda::device_buffer<__half> yd(static_cast<std::size_t>(rows));
    sqz::cuda::matvec(a, xd.span(), yd.span());
    sqz::cuda::check(cudaDeviceSynchronize(), "test");
    std::vector<__half> yh(static_cast<std::size_t>(rows));
    yd.download(yh);
    for (Eigen::Index i = 0; i < rows; ++i) {
        const double r = reference[static_cast<std::size_t>(i)];
        const double err = std::abs(static_cast<double>(__half2float(yh[static_cast<std::size_t>(i)])) - r);
        expect(err <= 1e-3 * std::abs(r) + 1e-5 * magnitude(q, i, x_rounded) + 1e-7, name + " fp16 row " + std::to_string(i));
    }
}

}  // namespace

int main() {
    if (sqz::cuda::device_count() == 0) {
        std::printf("skipped: no CUDA device\n");
        return 77;
    }
    cudaDeviceProp properties{};
    sqz::cuda::check(cudaGetDeviceProperties(&properties, 0), "cudaGetDeviceProperties");
    std::printf("sqz cuda tests on %s\n", properties.name);
    try {
        for (const int bits : {2, 3, 4})
            for (const auto& [rows, cols] : {std::pair<Eigen::Index, Eigen::Index>{1, 1}, {3, 7}, {9, 1000}, {37, 1025},
                                            {70, 2049}, {130, 4096}})
                for (const int sparse_kind : {0, 1, 2}) check_against_reference(bits, rows, cols, sparse_kind);

        // NaN and infinity propagate like the reference's.
        {
            auto q = make_matrix(16, 500, 4, 3, 1);
            std::vector<float> x(500, 0.5f);
            x[3] = std::numeric_limits<float>::infinity();
            x[400] = std::numeric_limits<float>::quiet_NaN();
            std::vector<float> reference(16), y(16);
            sqz::matvec<sqz::backend::reference>(q, x, reference);
            sqz::matvec<sqz::backend::cuda>(q, x, y);
            for (std::size_t i = 0; i < y.size(); ++i) expect(std::isnan(y[i]) == std::isnan(reference[i]), "NaN propagation");
        }

        // Matmul, column by column.
        {
            const auto q = make_matrix(33, 300, 3, 11, 1);
            Eigen::MatrixXf X = Eigen::MatrixXf::Random(300, 5);
            Eigen::MatrixXf Y(33, 5), R(33, 5);
            sqz::matmul<sqz::backend::cuda>(q, X, Y);
            sqz::matmul<sqz::backend::reference>(q, X, R);
            expect((Y - R).cwiseAbs().maxCoeff() <= 1e-3f, "matmul");
        }

        // Bad input: sqz::error.
        {
            const auto q = make_matrix(4, 10, 3, 1, 0);
            std::vector<float> x(9), y(4);
            bool threw = false;
            try {
                sqz::matvec<sqz::backend::cuda>(q, x, y);
            } catch (const sqz::error&) {
                threw = true;
            }
            expect(threw, "size mismatch throws sqz::error");
            threw = false;
            try {
                (void)sqz::prepare<sqz::backend::cuda>(make_matrix(4, 10, 5, 1, 0));
            } catch (const sqz::error&) {
                threw = true;
            }
            expect(threw, "5 bits throws sqz::error");
        }
    } catch (const std::exception& e) {
        std::printf("FAILED with exception: %s\n", e.what());
        return 1;
    }
    std::printf("%s\n", failures == 0 ? "all cuda tests passed" : "cuda tests FAILED");
    return failures == 0 ? 0 : 1;
}
