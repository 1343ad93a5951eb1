// quantize_matrix: quantizes one weight matrix with SqueezeLLM's dense-and-sparse method and prints what
// it costs and how good it is. Usage: sqz-example-quantize-matrix [rows cols bits]
// (default 1024 x 4096 at 3 bits; LLaMA-7B-like weights and a Fisher-like sensitivity from sqz/synthetic).
#include <sqz/sqz.hpp>

#include <cstdio>
#include <cstdlib>
#include <exception>

int main(int argc, char** argv) {
    try {
        const Eigen::Index rows = argc > 1 ? std::atol(argv[1]) : 1024;
        const Eigen::Index cols = argc > 2 ? std::atol(argv[2]) : 4096;
        const int bits = argc > 3 ? std::atoi(argv[3]) : 3;

        // In a real model: W from a checkpoint, the sensitivity from a sqz::fisher_accumulator fed with
        // per-sample gradients (or a sqz::activation_accumulator fed with calibration activations).
        const sqz::row_matrix<float> w = sqz::synthetic::llm_like_weights(rows, cols, 1);
        const sqz::row_matrix<float> fisher = sqz::synthetic::fisher_like_sensitivity(rows, cols, 2);

        sqz::quantize_config config;
        config.bits = bits;
        config.split.sensitive_fraction = 0.0005;  // 0.05% most sensitive entries kept exact
        config.split.outlier_fraction = 0.004;     // 0.40% outliers (0.20% from each tail) kept exact
        config.format = sqz::lut_format::fp16;
        const auto [q, report] = sqz::quantize_with_report(w, fisher, config);

        const auto bytes = q.storage_bytes();
        std::printf("quantized %ld x %ld at %d bits in %.3f s (%.3f s choosing the sparse part)\n", static_cast<long>(rows),
                    static_cast<long>(cols), bits, report.seconds, report.split_seconds);
        std::printf("storage: %zu bytes = LUT %zu + codes %zu + sparse %zu (%ld entries, %.2f%%: %ld sensitive, %ld outliers)\n",
                    bytes.total(), bytes.lut, bytes.codes, bytes.sparse(), static_cast<long>(q.sparse_nonzeros()),
                    100.0 * report.sparse_fraction, static_cast<long>(report.sensitive_count),
                    static_cast<long>(report.outlier_count));
        std::printf("bits per weight: %.4f (fp32: 32, fp16: 16); compression vs fp16: %.2fx\n", q.bits_per_weight(),
                    16.0 / q.bits_per_weight());
        std::printf("Taylor objective 0.5*sum F (W-Q)^2: %.4e; relative Frobenius error: %.4f\n", report.taylor_objective,
                    report.relative_error);

        // The sparse part makes D + S exact at every extracted position.
        const sqz::row_matrix<float> restored = q.dequantize();
        long exact = 0;
        for (Eigen::Index i = 0; i < q.rows(); ++i)
            for (sqz::csr_matrix<float>::InnerIterator it(q.sparse(), i); it; ++it) exact += restored(i, it.col()) == w(i, it.col());
        std::printf("D + S equals W at %ld of %ld extracted positions\n", exact, static_cast<long>(q.sparse_nonzeros()));
        return exact == q.sparse_nonzeros() ? 0 : 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "sqz-example-quantize-matrix: %s\n", e.what());
        return 1;
    }
}
