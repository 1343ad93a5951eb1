// sqz's cpu back end against ggml's (llama.cpp's) CPU quantized matrix-vector product, side by side in
// one run on the same shapes. A manual comparison tool, not part of the CMake build: bench/compare_ggml.sh
// downloads llama.cpp's sources (in the llama-cpp-python sdist), builds ggml's CPU back end and this file.
//
//   compare_ggml [--json] [--threads N] [--rounds N] [--shapes 4096x14336,...] [--types Q4_0,Q4_K,...]
//                [--bits 2,3,4] [--l3-mib N] [--no-repack] [--smoke]
//
// How it measures (the same method as bench_matvec.cpp, docs/benchmarks.md "Against ggml (llama.cpp)"):
//  - ggml: a random N(0, 0.02) matrix is quantized by ggml's own ggml_quantize_chunk (no importance
//    matrix) to each type; the product is ggml_mul_mat(weight, x) with x an F32 vector, as a one-node
//    graph computed by the CPU back end (ggml_graph_plan + ggml_graph_compute with a persistent
//    threadpool of N threads), which is how llama.cpp's CPU back end runs a token's mat-vec: ggml
//    quantizes x to its vec_dot type (Q8_0 or Q8_K) and then runs its integer dot products.
//  - ggml-r ("repack"): the same quantized weights loaded into the CPU back end's CPU_REPACK buffer, as
//    llama.cpp loads them by default, for the types that have a repacked layout on this CPU (Q4_0 and
//    Q4_K with AVX2 in this version), computed with ggml_backend_graph_compute (--no-repack: none).
//  - sqz: bench_matvec's random matrices (sorted N(0, 0.02) codebooks, uniform codes, no sparse part),
//    sqz::matvec<sqz::backend::cpu> in int8, int8_tile and exact modes.
//  - Every quantized matrix is copied until the copies hold at least 4x the last-level cache (its size as
//    Linux reports it, bench_common.hpp's last_level_cache_bytes) and each
//    repetition multiplies the next copy, so the matrix comes from DRAM. Rounds interleave one DRAM
//    bandwidth piece (bench_common.hpp's probe), one product per ggml type and one per sqz width and
//    mode; every figure is the best (shortest) of its rounds.
//  - --l3-mib N (default: the system's) sets the cache the copies must exceed 4x; a small N with a small shape
//    (e.g. --l3-mib 1 --shapes 1024x4096: 2-4 copies of 1-4.5 MB) keeps the matrices in the L3,
//    which gives each kernel's speed when DRAM is not the limit (the probe then streams 1 MiB pieces
//    of a 64 MiB buffer, still mostly from DRAM).
//  - gbps = bytes of the weight as stored / time (ggml: ggml_nbytes of the quantized tensor; sqz: the
//    cpu back end's bytes_read for the mode); bits_per_weight = those bytes * 8 / (rows * cols).
//  - speed_vs_ggml (sqz lines; text: "speed sqz/ggml") = ggml's time / sqz's time for the comparable
//    ggml types of the run: 4 bits with Q4_0 and Q4_K, 3 with Q3_K, 2 with Q2_K ("-r": repacked).
//  - Correctness, checked once per configuration: ggml's y against a double-precision product of its
//    own dequantized weights (the type's to_float) with x; sqz's y against the reference back end.
//    max_rel_err = max_i |y_i - ref_i| / sum_j |w_ij x_j|; the run fails above 5% (or 1e-5 for exact).
#include <sqz/sqz.hpp>

#include <ggml-alloc.h>
#include <ggml-backend.h>
#include <ggml-cpu.h>
#include <ggml.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench_common.hpp"

using namespace sqz_bench;

namespace {

struct settings {
    bool json = false;
    int threads = 2;
    int rounds = 25;
    std::vector<shape> shapes{{4096, 4096}, {4096, 14336}, {14336, 4096}};
    std::vector<ggml_type> types{GGML_TYPE_Q4_0, GGML_TYPE_Q4_K, GGML_TYPE_Q3_K, GGML_TYPE_Q2_K, GGML_TYPE_Q8_0};
    std::vector<int> bits{2, 3, 4};
    std::vector<sqz::numeric_mode> modes{sqz::numeric_mode::int8_tile, sqz::numeric_mode::int8, sqz::numeric_mode::exact};
    std::size_t cache_bytes = last_level_cache_bytes();  // the cache to defeat (--l3-mib)
    bool repack = true;
};

std::string upper(std::string s) {
    for (auto& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    return s;
}

std::string type_name(ggml_type t) { return upper(ggml_type_name(t)); }

ggml_type parse_type(const std::string& name) {
    for (int t = 0; t < GGML_TYPE_COUNT; ++t) {
        const char* n = ggml_type_name(static_cast<ggml_type>(t));
        if (n != nullptr && upper(n) == upper(name)) return static_cast<ggml_type>(t);
    }
    throw bad_argument("--types " + name + ": unknown ggml type");
}

/// One ggml type on one shape: `copies` quantized weight tensors, each with its own one-node graph
/// y = W x (x shared) and compute plan, all in one ggml context.
class ggml_case {
public:
    ggml_case(ggml_type type, shape s, const std::vector<float>& weights, const std::vector<float>& x,
              std::size_t cache_bytes, int threads, ggml_threadpool* pool)
        : type_(type), shape_(s) {
        const std::size_t weight_bytes = ggml_row_size(type, s.cols) * static_cast<std::size_t>(s.rows);
        copies_ = copies_for(weight_bytes, cache_bytes);
        const std::size_t vector_bytes = static_cast<std::size_t>(s.rows + s.cols) * sizeof(float) + 256;
        const std::size_t mem = copies_ * (weight_bytes + 2 * ggml_tensor_overhead() + ggml_graph_overhead() +
                                           static_cast<std::size_t>(s.rows) * sizeof(float) + 256) +
                                vector_bytes + ggml_tensor_overhead() + (std::size_t{1} << 20);
        memory_.resize(mem);  // sqz's allocator: on huge pages, as sqz's codes and the probe's buffer
        ctx_ = ggml_init(ggml_init_params{mem, memory_.data(), false});
        if (ctx_ == nullptr) throw std::runtime_error("compare_ggml: ggml_init failed");
        x_ = ggml_new_tensor_1d(ctx_, GGML_TYPE_F32, s.cols);
        std::memcpy(x_->data, x.data(), x.size() * sizeof(float));

        // ggml's own quantization, rows split over the threads (ggml_quantize_chunk is thread-safe).
        ggml_tensor* first = ggml_new_tensor_2d(ctx_, type, s.cols, s.rows);
        ggml_quantize_init(type);
        const Eigen::Index chunk = 64;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
        for (Eigen::Index r = 0; r < s.rows; r += chunk)
            ggml_quantize_chunk(type, weights.data(), first->data, r * s.cols, std::min(chunk, s.rows - r), s.cols, nullptr);
        weights_.push_back(first);
        for (std::size_t c = 1; c < copies_; ++c) {
            ggml_tensor* w = ggml_new_tensor_2d(ctx_, type, s.cols, s.rows);
            std::memcpy(w->data, first->data, ggml_nbytes(first));
            weights_.push_back(w);
        }
        for (ggml_tensor* w : weights_) {
            ggml_tensor* y = ggml_mul_mat(ctx_, w, x_);
            ggml_cgraph* graph = ggml_new_graph(ctx_);
            ggml_build_forward_expand(graph, y);
            outputs_.push_back(y);
            graphs_.push_back(graph);
            plans_.push_back(ggml_graph_plan(graph, threads, pool));
        }
        std::size_t work = 0;
        for (const auto& p : plans_) work = std::max(work, p.work_size);
        work_.resize(work + 64);
        for (auto& p : plans_) p.work_data = work_.data();
    }
    ggml_case(const ggml_case&) = delete;
    ggml_case& operator=(const ggml_case&) = delete;
    ~ggml_case() { ggml_free(ctx_); }

    /// Multiplies the next copy; returns seconds.
    double time_next() {
        const std::size_t c = next_++ % copies_;
        const auto start = clock_type::now();
        const ggml_status status = ggml_graph_compute(graphs_[c], &plans_[c]);
        const double s = seconds_since(start);
        if (status != GGML_STATUS_SUCCESS) throw std::runtime_error("compare_ggml: ggml_graph_compute failed");
        return s;
    }

    /// This engine's y = W x (first copy).
    std::vector<float> product() {
        ggml_graph_compute(graphs_[0], &plans_[0]);
        const auto* y = static_cast<const float*>(outputs_[0]->data);
        return std::vector<float>(y, y + shape_.rows);
    }

    /// max_i |y_i - ref_i| / sum_j |w_ij x_j|, ref from ggml's own dequantized weights in double.
    double max_relative_error(const std::vector<float>& y) const {
        const auto* x = static_cast<const float*>(x_->data);
        const auto to_float = ggml_get_type_traits(type_)->to_float;
        const std::size_t row_bytes = ggml_row_size(type_, shape_.cols);
        std::vector<double> worst(static_cast<std::size_t>(shape_.rows), 0.0);
#pragma omp parallel
        {
            std::vector<float> row(static_cast<std::size_t>(shape_.cols));
#pragma omp for schedule(static)
            for (Eigen::Index i = 0; i < shape_.rows; ++i) {
                to_float(static_cast<const char*>(weights_[0]->data) + static_cast<std::size_t>(i) * row_bytes, row.data(),
                         shape_.cols);
                double ref = 0, magnitude = 0;
                for (Eigen::Index j = 0; j < shape_.cols; ++j) {
                    const double p = static_cast<double>(row[static_cast<std::size_t>(j)]) * x[j];
                    ref += p;
                    magnitude += std::abs(p);
                }
                const double err = std::abs(static_cast<double>(y[i]) - ref);
                worst[static_cast<std::size_t>(i)] = magnitude > 0 ? err / magnitude : err;
            }
        }
        return *std::max_element(worst.begin(), worst.end());
    }

    const void* quantized() const { return weights_[0]->data; }
    std::size_t bytes() const { return ggml_nbytes(weights_[0]); }
    std::size_t copies() const { return copies_; }
    ggml_type type() const { return type_; }

private:
    ggml_type type_;
    shape shape_;
    std::size_t copies_ = 0;
    sqz::detail::aligned_vector<std::uint8_t> memory_;  // the memory given to ggml_init (ggml_free leaves it)
    ggml_context* ctx_ = nullptr;
    ggml_tensor* x_ = nullptr;
    std::vector<ggml_tensor*> weights_, outputs_;
    std::vector<ggml_cgraph*> graphs_;
    std::vector<ggml_cplan> plans_;
    std::vector<std::uint8_t> work_;
    std::size_t next_ = 0;
};

/// The same quantized weights in the CPU back end's CPU_REPACK buffer type, as llama.cpp loads them by
/// default ("repack"): ggml_backend_tensor_set interleaves the blocks of several rows (Q4_0 and Q4_K
/// into 8x8 layouts with AVX2), and ggml_backend_graph_compute runs the product with the layout's own
/// kernels. One weight tensor per copy in one repack buffer; x and each copy's y in a CPU buffer.
class ggml_repack_case {
public:
    ggml_repack_case(const ggml_case& plain, shape s, const std::vector<float>& x, ggml_backend_t backend,
                     ggml_backend_buffer_type_t repack_type)
        : plain_(plain), shape_(s), backend_(backend) {
        const std::size_t copies = plain.copies();
        weights_ctx_ = ggml_init(ggml_init_params{copies * ggml_tensor_overhead() + 1024, nullptr, true});
        io_ctx_ = ggml_init(ggml_init_params{
            (2 * copies + 1) * ggml_tensor_overhead() + copies * ggml_graph_overhead() + 1024, nullptr, true});
        if (weights_ctx_ == nullptr || io_ctx_ == nullptr) throw std::runtime_error("compare_ggml: ggml_init failed");
        for (std::size_t c = 0; c < copies; ++c)
            weights_.push_back(ggml_new_tensor_2d(weights_ctx_, plain.type(), s.cols, s.rows));
        x_ = ggml_new_tensor_1d(io_ctx_, GGML_TYPE_F32, s.cols);
        for (ggml_tensor* w : weights_) {
            ggml_tensor* y = ggml_mul_mat(io_ctx_, w, x_);
            ggml_cgraph* graph = ggml_new_graph(io_ctx_);
            ggml_build_forward_expand(graph, y);
            outputs_.push_back(y);
            graphs_.push_back(graph);
        }
        weights_buffer_ = ggml_backend_alloc_ctx_tensors_from_buft(weights_ctx_, repack_type);
        io_buffer_ = ggml_backend_alloc_ctx_tensors(io_ctx_, backend);
        if (weights_buffer_ == nullptr || io_buffer_ == nullptr)
            throw std::runtime_error("compare_ggml: ggml buffer allocation failed");
        // The repack buffer marks a tensor it has a layout for (on this CPU) with its traits when it
        // allocates it; for other types there is nothing to measure (and tensor_set would fail).
        repacked_ = weights_[0]->extra != nullptr;
        if (!repacked_) return;
        // Huge pages before the weights are written, as sqz's codes and the DRAM probe's buffer have
        // them (sqz/detail/aligned_buffer.hpp): both engines stream from the same kind of pages.
        sqz::detail::advise_huge_pages(ggml_backend_buffer_get_base(weights_buffer_), ggml_backend_buffer_get_size(weights_buffer_));
        for (ggml_tensor* w : weights_) ggml_backend_tensor_set(w, plain.quantized(), 0, plain.bytes());
        ggml_backend_tensor_set(x_, x.data(), 0, x.size() * sizeof(float));
    }
    ggml_repack_case(const ggml_repack_case&) = delete;
    ggml_repack_case& operator=(const ggml_repack_case&) = delete;
    ~ggml_repack_case() {
        ggml_backend_buffer_free(weights_buffer_);
        ggml_backend_buffer_free(io_buffer_);
        ggml_free(io_ctx_);
        ggml_free(weights_ctx_);
    }

    bool repacked() const { return repacked_; }

    double time_next() {
        const std::size_t c = next_++ % graphs_.size();
        const auto start = clock_type::now();
        const ggml_status status = ggml_backend_graph_compute(backend_, graphs_[c]);
        const double s = seconds_since(start);
        if (status != GGML_STATUS_SUCCESS) throw std::runtime_error("compare_ggml: ggml_backend_graph_compute failed");
        return s;
    }

    /// Against the plain tensor's dequantized weights: the repacked copy holds the same blocks.
    double max_relative_error() {
        ggml_backend_graph_compute(backend_, graphs_[0]);
        std::vector<float> y(static_cast<std::size_t>(shape_.rows));
        ggml_backend_tensor_get(outputs_[0], y.data(), 0, y.size() * sizeof(float));
        return plain_.max_relative_error(y);
    }

private:
    const ggml_case& plain_;
    shape shape_;
    ggml_backend_t backend_;
    ggml_context* weights_ctx_ = nullptr;
    ggml_context* io_ctx_ = nullptr;
    ggml_backend_buffer_t weights_buffer_ = nullptr;
    ggml_backend_buffer_t io_buffer_ = nullptr;
    ggml_tensor* x_ = nullptr;
    std::vector<ggml_tensor*> weights_, outputs_;
    std::vector<ggml_cgraph*> graphs_;
    bool repacked_ = false;
    std::size_t next_ = 0;
};

/// The CPU back end's CPU_REPACK buffer type, or null when this build has none.
ggml_backend_buffer_type_t repack_buffer_type() {
    ggml_backend_reg_t reg = ggml_backend_cpu_reg();
    auto get_extra = reinterpret_cast<ggml_backend_dev_get_extra_bufts_t>(
        ggml_backend_reg_get_proc_address(reg, "ggml_backend_dev_get_extra_bufts"));
    if (get_extra == nullptr) return nullptr;
    for (ggml_backend_buffer_type_t* t = get_extra(ggml_backend_reg_dev_get(reg, 0)); t != nullptr && *t != nullptr; ++t)
        if (std::strcmp(ggml_backend_buft_name(*t), "CPU_REPACK") == 0) return *t;
    return nullptr;
}

struct result {
    std::string engine, type, mode;
    double bits_per_weight = 0, seconds = 1e30, bytes = 0, rel_err = 0;
    std::size_t copies = 0;
    int sqz_bits = 0;
};

/// The ggml types a sqz width is compared with: 4 bits with Q4_0 and Q4_K, 3 with Q3_K, 2 with Q2_K.
std::vector<std::string> comparable_types(int bits) {
    if (bits == 4) return {"Q4_0", "Q4_K"};
    if (bits == 3) return {"Q3_K"};
    if (bits == 2) return {"Q2_K"};
    return {};
}

constexpr const char* usage =
    "compare_ggml [--json] [--threads N] [--rounds N] [--shapes RxC,...] [--types Q4_0,Q4_K,Q3_K,Q2_K,Q8_0]\n"
    "             [--bits 2,3,4] [--l3-mib N] [--no-repack] [--smoke]";

}  // namespace

int main(int argc, char** argv) {
    settings cfg;
    const int status = parse_arguments(argc, argv, "compare_ggml", usage, [&](const std::string& arg, auto& next) {
        if (take_shared_option(arg, next, cfg, 1)) return true;
        if (arg == "--types") {
            cfg.types = parse_list<ggml_type>(next(), "--types", parse_type);
        } else if (arg == "--no-repack") {
            cfg.repack = false;
        } else if (arg == "--smoke") {  // seconds: small shapes, few rounds
            cfg.shapes = {{256, 1024}, {64, 4096}};
            cfg.rounds = 2;
            cfg.cache_bytes = std::size_t{1} << 20;
        } else {
            return false;
        }
        return true;
    });
    if (status >= 0) return status;
    for (const shape s : cfg.shapes)  // (parse_shapes has checked that both are positive)
        if (s.cols % 256 != 0) {
            std::fprintf(stderr, "compare_ggml: shape %ldx%ld: columns must be a positive multiple of 256 (K-quant blocks)\n",
                         static_cast<long>(s.rows), static_cast<long>(s.cols));
            return 2;
        }

    // ggml's informational messages (one line per repacked tensor) would bury the table; keep warnings.
    ggml_log_set(
        [](ggml_log_level level, const char* text, void*) {
            if (level == GGML_LOG_LEVEL_WARN || level == GGML_LOG_LEVEL_ERROR) std::fputs(text, stderr);
        },
        nullptr);
    ggml_cpu_init();
    ggml_threadpool_params pool_params = ggml_threadpool_params_default(cfg.threads);
    ggml_threadpool* pool = ggml_threadpool_new(&pool_params);
    ggml_backend_t backend = ggml_backend_cpu_init();
    ggml_backend_cpu_set_n_threads(backend, cfg.threads);
    ggml_backend_cpu_set_threadpool(backend, pool);
    const ggml_backend_buffer_type_t repack_type = cfg.repack ? repack_buffer_type() : nullptr;
    const int threads = cfg.threads;
    dram_probe probe = dram_probe::for_cache(cfg.cache_bytes);

    if (!cfg.json)
        std::printf("%-11s %-6s %-5s %-7s %6s %8s %7s %7s %6s %9s  %s\n", "shape", "engine", "type", "mode", "bits/w", "us",
                    "GB/s", "DRAM", "frac", "rel_err", "speed sqz/ggml");
    bool all_correct = true;
    for (const shape s : cfg.shapes) {
        const std::string shape_name = std::to_string(s.rows) + "x" + std::to_string(s.cols);
        sqz::synthetic::rng xr(99);
        std::vector<float> x(static_cast<std::size_t>(s.cols));
        for (auto& v : x) v = static_cast<float>(xr.normal());

        // ggml: one N(0, 0.02) matrix, quantized to every type.
        std::vector<std::unique_ptr<ggml_case>> ggml_cases;
        {
            sqz::synthetic::rng wr(12345);
            std::vector<float> weights(static_cast<std::size_t>(s.rows * s.cols));
            for (auto& v : weights) v = static_cast<float>(0.02 * wr.normal());
            for (const ggml_type t : cfg.types)
                ggml_cases.push_back(std::make_unique<ggml_case>(t, s, weights, x, cfg.cache_bytes, threads, pool));
        }
        std::vector<std::unique_ptr<ggml_repack_case>> repack_cases;  // null where the type has no layout
        for (const auto& g : ggml_cases) {
            std::unique_ptr<ggml_repack_case> r;
            if (repack_type != nullptr) {
                r = std::make_unique<ggml_repack_case>(*g, s, x, backend, repack_type);
                if (!r->repacked()) r.reset();
            }
            repack_cases.push_back(std::move(r));
        }
        // sqz: bench_matvec's random matrices without a sparse part.
        std::vector<sqz::quantized_matrix<float>> sqz_matrices;
        std::vector<std::vector<sqz::cpu_matrix<float>>> sqz_pools;
        for (const int bits : cfg.bits) {
            sqz_matrices.push_back(random_matrix(s, bits, 0.0, 1000u * static_cast<unsigned>(bits) + 7));
            const sqz::cpu_matrix<float> prepared(sqz_matrices.back());
            sqz_pools.emplace_back(copies_for(prepared.bytes_read(sqz::numeric_mode::exact), cfg.cache_bytes), prepared);
        }

        std::vector<result> results;
        for (const auto& g : ggml_cases) {
            result r;
            r.engine = "ggml";
            r.type = type_name(g->type());
            r.mode = "x:" + type_name(ggml_get_type_traits_cpu(g->type())->vec_dot_type);
            r.bytes = static_cast<double>(g->bytes());
            r.copies = g->copies();
            results.push_back(r);
        }
        for (std::size_t t = 0; t < ggml_cases.size(); ++t)
            if (repack_cases[t]) {
                result r = results[t];
                r.engine = "ggml-r";
                results.push_back(r);
            }
        for (std::size_t b = 0; b < cfg.bits.size(); ++b)
            for (const auto mode : cfg.modes) {
                result r;
                r.engine = "sqz";
                r.type = std::to_string(cfg.bits[b]) + "-bit";
                r.mode = std::string(sqz::to_string(mode));
                r.bytes = static_cast<double>(sqz_pools[b][0].bytes_read(mode));
                r.copies = sqz_pools[b].size();
                r.sqz_bits = cfg.bits[b];
                results.push_back(r);
            }

        std::vector<float> y(static_cast<std::size_t>(s.rows));
        std::vector<std::size_t> next(cfg.bits.size(), 0);
        double best_bw = 0;
        for (int round = 0; round < cfg.rounds; ++round) {
            best_bw = std::max(best_bw, probe.measure(threads));
            std::size_t k = 0;
            for (const auto& g : ggml_cases) {
                results[k].seconds = std::min(results[k].seconds, g->time_next());
                ++k;
            }
            for (const auto& g : repack_cases)
                if (g) {
                    results[k].seconds = std::min(results[k].seconds, g->time_next());
                    ++k;
                }
            for (std::size_t b = 0; b < cfg.bits.size(); ++b) {
                for (const auto mode : cfg.modes) {
                    const sqz::matvec_options options{.mode = mode, .threads = threads};
                    const auto& a = sqz_pools[b][next[b]++ % sqz_pools[b].size()];
                    const auto start = clock_type::now();
                    sqz::matvec<sqz::backend::cpu>(a, x, y, options);
                    results[k].seconds = std::min(results[k].seconds, seconds_since(start));
                    ++k;
                }
            }
        }

        // Correctness of both timed codes.
        std::size_t k = 0;
        for (const auto& g : ggml_cases) {
            results[k].rel_err = g->max_relative_error(g->product());
            all_correct &= results[k].rel_err <= 0.05;
            ++k;
        }
        for (const auto& g : repack_cases)
            if (g) {
                results[k].rel_err = g->max_relative_error();
                all_correct &= results[k].rel_err <= 0.05;
                ++k;
            }
        std::vector<float> ref(static_cast<std::size_t>(s.rows));
        for (std::size_t b = 0; b < cfg.bits.size(); ++b) {
            sqz::matvec<sqz::backend::reference>(sqz_matrices[b], x, ref);
            const std::vector<double> magnitudes = row_magnitudes(sqz_matrices[b], x);
            for (const auto mode : cfg.modes) {
                const sqz::matvec_options options{.mode = mode, .threads = threads};
                sqz::matvec<sqz::backend::cpu>(sqz_pools[b][0], x, y, options);
                results[k].rel_err = max_relative_error(magnitudes, y, ref);
                all_correct &= results[k].rel_err <= (mode == sqz::numeric_mode::exact ? 1e-5 : 0.05);
                ++k;
            }
        }

        const double weights = static_cast<double>(s.rows) * static_cast<double>(s.cols);
        for (auto& r : results) r.bits_per_weight = r.bytes * 8 / weights;
        for (const auto& r : results) {
            const double gbps = r.bytes / r.seconds / 1e9;
            // sqz lines: ggml's time / sqz's time for each comparable ggml type measured in this run.
            std::string ratios_text, ratios_json;
            if (r.engine == "sqz")
                for (const auto& name : comparable_types(r.sqz_bits))
                    for (const auto& o : results)
                        if (o.engine != "sqz" && o.type == name) {
                            const std::string label = name + (o.engine == "ggml-r" ? "-r" : "");
                            char buf[64];
                            std::snprintf(buf, sizeof buf, "%s%.2fx vs %s", ratios_text.empty() ? "" : ", ",
                                          o.seconds / r.seconds, label.c_str());
                            ratios_text += buf;
                            std::snprintf(buf, sizeof buf, "%s\"%s\":%.3f", ratios_json.empty() ? "" : ",", label.c_str(),
                                          o.seconds / r.seconds);
                            ratios_json += buf;
                        }
            if (cfg.json)
                std::printf(
                    "{\"bench\":\"compare_ggml\",\"engine\":\"%s\",\"type\":\"%s\",\"mode\":\"%s\",\"shape\":\"%s\","
                    "\"rows\":%ld,\"cols\":%ld,\"threads\":%d,\"bits_per_weight\":%.4f,\"bytes\":%.0f,\"us\":%.1f,"
                    "\"gbps\":%.2f,\"dram_gbps\":%.2f,\"bw_fraction\":%.3f,\"copies\":%zu,\"rounds\":%d,"
                    "\"max_rel_err\":%.2e,\"speed_vs_ggml\":{%s}}\n",
                    r.engine.c_str(), r.type.c_str(), r.mode.c_str(), shape_name.c_str(), static_cast<long>(s.rows),
                    static_cast<long>(s.cols), threads, r.bits_per_weight, r.bytes, r.seconds * 1e6, gbps, best_bw,
                    gbps / best_bw, r.copies, cfg.rounds, r.rel_err, ratios_json.c_str());
            else
                std::printf("%-11s %-6s %-5s %-7s %6.3f %8.1f %7.2f %7.2f %6.3f %9.2e  %s\n", shape_name.c_str(),
                            r.engine.c_str(), r.type.c_str(), r.mode.c_str(), r.bits_per_weight, r.seconds * 1e6, gbps,
                            best_bw, gbps / best_bw, r.rel_err, ratios_text.c_str());
            std::fflush(stdout);
        }
    }
    ggml_backend_free(backend);
    ggml_threadpool_free(pool);
    ggml_quantize_free();
    if (probe.sink() == 42) std::printf("#\n");  // keeps the bandwidth loads alive
    if (!all_correct) {
        std::fprintf(stderr, "compare_ggml: a product disagreed with its reference\n");
        return 1;
    }
    return 0;
}
