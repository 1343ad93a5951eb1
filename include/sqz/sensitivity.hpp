// sqz/sensitivity.hpp - objective weights for sensitivity-weighted quantization, and the objective.
//
// SqueezeLLM minimises, per output row, sum_j f_ij (W_ij - Q_ij)^2 where f is a sensitivity: the diagonal
// of the Fisher information (mean of squared gradients of the loss) or any other non-negative weight.
// Everything that consumes a sensitivity reads it one row at a time through the sensitivity_provider
// concept, so providers whose rows are all alike (activation statistics, uniform weights) never
// materialise an m x n matrix. An Eigen matrix can be passed wherever a provider is expected.
//
//   uniform_sensitivity        f_ij = 1: plain (unweighted) k-means
//   matrix_sensitivity<S>      a precomputed m x n matrix (e.g. the reference's Fisher checkpoint)
//   fisher_accumulator<A>      sums squared per-sample gradients; f = their mean
//   activation_accumulator<A>  sums squared calibration activations; f_ij = E[x_j^2] for every row i
//                              (the diagonal of the layer-wise Hessian X^T X / N, as GPTQ, AWQ and
//                              llama.cpp's importance matrix use)
//
//   taylor_objective(W, f, Q)          0.5 * sum_ij f_ij (W_ij - Q_ij)^2: the second-order estimate of the
//                                      loss increase when W is replaced by Q (Q dense or quantized_matrix)
//   frobenius_error(W, Q)              ||W - Q||_F
//   relative_frobenius_error(W, Q)     ||W - Q||_F / ||W||_F
#pragma once

#include <sqz/detail/threads.hpp>
#include <sqz/error.hpp>
#include <sqz/quantized_matrix.hpp>
#include <sqz/types.hpp>

#include <cmath>
#include <concepts>
#include <limits>
#include <cstdint>
#include <span>
#include <type_traits>
#include <vector>

namespace sqz {

/// A source of objective weights for an m x n weight matrix, read a row at a time:
/// fill_row(i, out) writes f_i0 .. f_i,n-1 into out (n values). Weights must be finite and >= 0; the
/// functions that consume a provider check that and name the first offending entry.
template <class P>
concept sensitivity_provider = requires(const P& p, Eigen::Index row, std::span<double> out) {
    { p.rows() } -> std::convertible_to<Eigen::Index>;
    { p.cols() } -> std::convertible_to<Eigen::Index>;
    p.fill_row(row, out);
};

/// A dense Eigen matrix or expression of float or double.
template <class M>
concept dense_float_matrix = std::is_base_of_v<Eigen::DenseBase<M>, M> && working_scalar<typename M::Scalar>;

/// What sqz's functions accept as a sensitivity: a provider or a dense Eigen matrix.
template <class S>
concept sensitivity_argument = sensitivity_provider<S> || dense_float_matrix<S>;

/// Equal weights: weighted k-means becomes plain k-means, the Taylor objective half the squared error.
class uniform_sensitivity {
public:
    uniform_sensitivity(Eigen::Index rows, Eigen::Index cols, double value = 1.0) : rows_(rows), cols_(cols), value_(value) {
        detail::require(rows >= 0 && cols >= 0, "sqz::uniform_sensitivity: shape ", rows, " x ", cols, " is negative");
        detail::require(std::isfinite(value) && value >= 0.0, "sqz::uniform_sensitivity: value = ", value,
                        " must be finite and >= 0");
    }
    Eigen::Index rows() const noexcept { return rows_; }
    Eigen::Index cols() const noexcept { return cols_; }
    void fill_row(Eigen::Index, std::span<double> out) const noexcept {
        for (auto& v : out) v = value_;
    }

private:
    Eigen::Index rows_;
    Eigen::Index cols_;
    double value_;
};

/// A view of a dense m x n sensitivity matrix. Row-contiguous storage (row-major, or a single column) is
/// read in place, so the matrix must outlive the view; any other layout or expression is copied once
/// into a row-major matrix the view owns. Not copyable (it may point into itself).
template <working_scalar S>
class matrix_sensitivity {
public:
    template <class Derived>
        requires std::same_as<typename Derived::Scalar, S>
    explicit matrix_sensitivity(const Eigen::DenseBase<Derived>& matrix) : rows_(matrix.rows()), cols_(matrix.cols()) {
        const Derived& m = matrix.derived();
        if constexpr (static_cast<bool>(Derived::Flags & Eigen::DirectAccessBit)) {
            const Eigen::Index row_stride = Derived::IsRowMajor ? m.outerStride() : m.innerStride();
            const Eigen::Index col_stride = Derived::IsRowMajor ? m.innerStride() : m.outerStride();
            if (col_stride == 1 || cols_ <= 1) {
                data_ = m.data();
                row_stride_ = rows_ <= 1 ? cols_ : row_stride;
                return;
            }
        }
        owned_ = m;
        data_ = owned_.data();
        row_stride_ = cols_;
    }
    matrix_sensitivity(const matrix_sensitivity&) = delete;
    matrix_sensitivity& operator=(const matrix_sensitivity&) = delete;

    Eigen::Index rows() const noexcept { return rows_; }
    Eigen::Index cols() const noexcept { return cols_; }
    void fill_row(Eigen::Index row, std::span<double> out) const noexcept {
        const S* source = data_ + row * row_stride_;
        for (std::size_t j = 0; j < out.size(); ++j) out[j] = static_cast<double>(source[j]);
    }

private:
    Eigen::Index rows_;
    Eigen::Index cols_;
    const S* data_ = nullptr;
    Eigen::Index row_stride_ = 0;
    row_matrix<S> owned_;
};

template <class Derived>
matrix_sensitivity(const Eigen::DenseBase<Derived>&) -> matrix_sensitivity<typename Derived::Scalar>;

namespace detail {

template <class Derived>
void require_all_finite(const Eigen::MatrixBase<Derived>& m, const char* where, const char* what) {
    for (Eigen::Index i = 0; i < m.rows(); ++i)
        for (Eigen::Index j = 0; j < m.cols(); ++j)
            require(std::isfinite(m(i, j)), where, ": ", what, "(", i, ", ", j, ") = ", m(i, j), " is not finite");
}

}  // namespace detail

/// Accumulates the Fisher-information diagonal from per-sample gradients of the loss with respect to one
/// weight matrix: sum_s g_s^2 in Acc (double by default; float halves the memory). As a provider it yields
/// the mean, sum / samples, the Fisher estimate whose scale makes the Taylor objective a loss increase.
template <working_scalar Acc = double>
class fisher_accumulator {
public:
    fisher_accumulator(Eigen::Index rows, Eigen::Index cols) {
        detail::require(rows >= 0 && cols >= 0, "sqz::fisher_accumulator: shape ", rows, " x ", cols, " is negative");
        sum_ = row_matrix<Acc>::Zero(rows, cols);
    }

    /// Adds one sample's gradient (same shape as the weight matrix, finite).
    template <class Derived>
    void add(const Eigen::MatrixBase<Derived>& gradient) {
        check_shape(gradient, "sqz::fisher_accumulator::add");
        detail::require_all_finite(gradient, "sqz::fisher_accumulator::add", "gradient");
        for (Eigen::Index i = 0; i < rows(); ++i)
            for (Eigen::Index j = 0; j < cols(); ++j) {
                const auto g = static_cast<Acc>(gradient(i, j));
                sum_(i, j) += g * g;
            }
        ++samples_;
    }

    /// Adds a sum of squared gradients over `samples` samples computed elsewhere (another process, the
    /// reference's gradient tool); entries must be finite and >= 0.
    template <class Derived>
    void add_sum_of_squares(const Eigen::MatrixBase<Derived>& squares, std::int64_t samples) {
        check_shape(squares, "sqz::fisher_accumulator::add_sum_of_squares");
        detail::require(samples > 0, "sqz::fisher_accumulator::add_sum_of_squares: samples = ", samples,
                        " must be positive");
        for (Eigen::Index i = 0; i < rows(); ++i)
            for (Eigen::Index j = 0; j < cols(); ++j)
                detail::require(std::isfinite(squares(i, j)) && squares(i, j) >= 0,
                                "sqz::fisher_accumulator::add_sum_of_squares: entry (", i, ", ", j, ") = ", squares(i, j),
                                " must be finite and >= 0");
        sum_ += squares.template cast<Acc>();
        samples_ += samples;
    }

    Eigen::Index rows() const noexcept { return sum_.rows(); }
    Eigen::Index cols() const noexcept { return sum_.cols(); }
    std::int64_t samples() const noexcept { return samples_; }
    const row_matrix<Acc>& sum_of_squares() const noexcept { return sum_; }

    /// Row of the mean squared gradient; throws when nothing was added.
    void fill_row(Eigen::Index row, std::span<double> out) const {
        detail::require(samples_ > 0, "sqz::fisher_accumulator: no gradients were added");
        const double scale = 1.0 / static_cast<double>(samples_);
        for (std::size_t j = 0; j < out.size(); ++j)
            out[j] = static_cast<double>(sum_(row, static_cast<Eigen::Index>(j))) * scale;
    }

private:
    template <class Derived>
    void check_shape(const Eigen::MatrixBase<Derived>& m, const char* where) const {
        detail::require(m.rows() == rows() && m.cols() == cols(), where, ": matrix is ", m.rows(), " x ", m.cols(),
                        ", expected ", rows(), " x ", cols());
    }

    row_matrix<Acc> sum_;
    std::int64_t samples_ = 0;
};

/// Accumulates calibration activations X (tokens x cols: one row per token, the layer's inputs) and
/// weights every entry of column j by E[x_j^2], for all `rows` output rows: the diagonal of the layer-wise
/// Hessian of ||W X^T - Q X^T||^2 up to a constant factor. For users without gradients.
template <working_scalar Acc = double>
class activation_accumulator {
public:
    activation_accumulator(Eigen::Index rows, Eigen::Index cols) : rows_(rows) {
        detail::require(rows >= 0 && cols >= 0, "sqz::activation_accumulator: shape ", rows, " x ", cols,
                        " is negative");
        sum_ = Eigen::Matrix<Acc, Eigen::Dynamic, 1>::Zero(cols);
    }

    /// Adds a batch of activations, tokens x cols, finite.
    template <class Derived>
    void add(const Eigen::MatrixBase<Derived>& activations) {
        detail::require(activations.cols() == cols(), "sqz::activation_accumulator::add: activations have ",
                        activations.cols(), " columns, expected ", cols());
        detail::require_all_finite(activations, "sqz::activation_accumulator::add", "activation");
        for (Eigen::Index t = 0; t < activations.rows(); ++t)
            for (Eigen::Index j = 0; j < cols(); ++j) {
                const auto x = static_cast<Acc>(activations(t, j));
                sum_(j) += x * x;
            }
        tokens_ += static_cast<std::int64_t>(activations.rows());
    }

    Eigen::Index rows() const noexcept { return rows_; }
    Eigen::Index cols() const noexcept { return sum_.size(); }
    std::int64_t samples() const noexcept { return tokens_; }

    /// E[x_j^2] per input column; throws when nothing was added.
    Eigen::VectorXd mean_squares() const {
        detail::require(tokens_ > 0, "sqz::activation_accumulator: no activations were added");
        return sum_.template cast<double>() / static_cast<double>(tokens_);
    }

    void fill_row(Eigen::Index, std::span<double> out) const {
        detail::require(tokens_ > 0, "sqz::activation_accumulator: no activations were added");
        const double scale = 1.0 / static_cast<double>(tokens_);
        for (std::size_t j = 0; j < out.size(); ++j) out[j] = static_cast<double>(sum_(static_cast<Eigen::Index>(j))) * scale;
    }

private:
    Eigen::Index rows_;
    Eigen::Matrix<Acc, Eigen::Dynamic, 1> sum_;
    std::int64_t tokens_ = 0;
};

namespace detail {

/// Calls fn(provider) with the provider behind a sensitivity argument: the object itself, or a
/// matrix_sensitivity view of an Eigen matrix that lives for the duration of the call.
template <class S, class Fn>
decltype(auto) with_provider(const S& sensitivity, Fn&& fn) {
    if constexpr (sensitivity_provider<S>) {
        return fn(sensitivity);
    } else {
        static_assert(dense_float_matrix<S>, "sqz: a sensitivity must be a sensitivity_provider or a dense Eigen "
                                             "matrix of float or double");
        const matrix_sensitivity<typename S::Scalar> view(sensitivity);
        return fn(view);
    }
}

/// Checks the provider's shape against rows x cols and every weight for being finite and >= 0, naming the
/// first offending entry (lowest row, then column).
template <sensitivity_provider P>
void require_sensitivity_shape(const P& provider, Eigen::Index rows, Eigen::Index cols, const char* where) {
    require(static_cast<Eigen::Index>(provider.rows()) == rows && static_cast<Eigen::Index>(provider.cols()) == cols,
            where, ": sensitivity is ", static_cast<Eigen::Index>(provider.rows()), " x ",
            static_cast<Eigen::Index>(provider.cols()), ", weights are ", rows, " x ", cols);
}

/// Checks one row of weights for being finite and >= 0, naming the first offending entry.
inline void check_sensitivity_row(std::span<const double> f, Eigen::Index row, const char* where) {
    constexpr double largest = std::numeric_limits<double>::max();
    // An unsigned flag: GCC does not vectorise the same reduction over a bool.
    unsigned invalid = 0;
    for (const double v : f) invalid |= !((v >= 0.0) & (v <= largest)) ? 1u : 0u;  // NaN, inf, negatives
    if (invalid == 0) return;
    for (std::size_t j = 0; j < f.size(); ++j)
        if (!(std::isfinite(f[j]) && f[j] >= 0.0))
            fail(where, ": sensitivity(", row, ", ", j, ") = ", f[j], std::isfinite(f[j]) ? " is negative" : " is not finite");
}

/// Checks one row of values for being finite, naming the first offending entry as what(row, j).
template <working_scalar T>
void check_finite_row(std::span<const T> values, Eigen::Index row, const char* where, const char* what) {
    constexpr T largest = std::numeric_limits<T>::max();
    unsigned invalid = 0;  // unsigned, not bool, so that it vectorises
    for (const T v : values) invalid |= !((v >= -largest) & (v <= largest)) ? 1u : 0u;  // NaN and inf
    if (invalid == 0) return;
    for (std::size_t j = 0; j < values.size(); ++j)
        if (!std::isfinite(values[j])) fail(where, ": ", what, "(", row, ", ", j, ") = ", values[j], " is not finite");
}

template <sensitivity_provider P>
void validate_sensitivity(const P& provider, Eigen::Index rows, Eigen::Index cols, const char* where, int threads) {
    require_sensitivity_shape(provider, rows, cols, where);
    std::vector<std::vector<double>> scratch(static_cast<std::size_t>(resolve_threads(threads)),
                                             std::vector<double>(static_cast<std::size_t>(cols)));
    parallel_for(rows, threads, [&](Eigen::Index i, int thread) {
        auto& f = scratch[static_cast<std::size_t>(thread)];
        provider.fill_row(i, f);
        check_sensitivity_row(f, i, where);
    });
}

/// Checks every entry of a row-major matrix for being finite, naming the first offending one.
template <working_scalar T>
void validate_finite_rows(const Eigen::Ref<const row_matrix<T>>& w, const char* where, const char* what, int threads) {
    parallel_for(w.rows(), threads, [&](Eigen::Index i, int) {
        check_finite_row(std::span<const T>(w.data() + i * w.outerStride(), static_cast<std::size_t>(w.cols())), i,
                         where, what);
    });
}

/// Sums over all entries, accumulated per row in double and added in row order (thread-count independent).
struct error_sums {
    double weighted = 0.0;   ///< sum f (W - Q)^2
    double squared = 0.0;    ///< sum (W - Q)^2
    double reference = 0.0;  ///< sum W^2
};

/// ReadQ: read_q(row, std::span<double> out) writes row `row` of Q. provider may be null (weighted = 0).
template <working_scalar T, class Provider, class ReadQ>
error_sums accumulate_errors(const Eigen::Ref<const row_matrix<T>>& w, const Provider* provider, ReadQ&& read_q,
                             int threads) {
    const Eigen::Index rows = w.rows();
    const auto cols = static_cast<std::size_t>(w.cols());
    const auto team = static_cast<std::size_t>(resolve_threads(threads));
    std::vector<std::vector<double>> q_rows(team, std::vector<double>(cols));
    std::vector<std::vector<double>> f_rows(team, std::vector<double>(cols));
    std::vector<error_sums> per_row(static_cast<std::size_t>(rows));
    parallel_for(rows, threads, [&](Eigen::Index i, int thread) {
        auto& q = q_rows[static_cast<std::size_t>(thread)];
        auto& f = f_rows[static_cast<std::size_t>(thread)];
        read_q(i, std::span<double>(q));
        if (provider != nullptr) provider->fill_row(i, std::span<double>(f));
        const T* row = w.data() + i * w.outerStride();
        error_sums s;
        for (std::size_t j = 0; j < cols; ++j) {
            const double wj = static_cast<double>(row[j]);
            const double d = wj - q[j];
            s.squared += d * d;
            s.reference += wj * wj;
            if (provider != nullptr) s.weighted += f[j] * d * d;
        }
        per_row[static_cast<std::size_t>(i)] = s;
    });
    error_sums total;
    for (const auto& s : per_row) {
        total.weighted += s.weighted;
        total.squared += s.squared;
        total.reference += s.reference;
    }
    return total;
}

/// A row reader for an Eigen matrix Q (values converted to double).
template <class Derived>
auto dense_row_reader(const Eigen::MatrixBase<Derived>& q) {
    return [&q](Eigen::Index row, std::span<double> out) {
        for (std::size_t j = 0; j < out.size(); ++j) out[j] = static_cast<double>(q(row, static_cast<Eigen::Index>(j)));
    };
}

/// A row reader for a quantized matrix, through dequantize_row (so D + S is summed in T, as stored).
template <working_scalar T, int Bits>
auto quantized_row_reader(const quantized_matrix<T, Bits>& q) {
    return [&q](Eigen::Index row, std::span<double> out) {
        thread_local std::vector<T> decoded;
        decoded.resize(out.size());
        q.dequantize_row(row, std::span<T>(decoded));
        for (std::size_t j = 0; j < out.size(); ++j) out[j] = static_cast<double>(decoded[j]);
    };
}

template <class DW, class Q>
void require_same_shape(const Eigen::MatrixBase<DW>& w, const Q& q, const char* where) {
    require(w.rows() == q.rows() && w.cols() == q.cols(), where, ": Q is ", q.rows(), " x ", q.cols(), ", W is ",
            w.rows(), " x ", w.cols());
}

template <class DW, class Q, class S>
error_sums error_sums_of(const Eigen::MatrixBase<DW>& w_in, const Q& q, const S* sensitivity, const char* where,
                         int threads) {
    using T = typename DW::Scalar;
    static_assert(working_scalar<T>, "sqz: W must be a matrix of float or double");
    require_same_shape(w_in, q, where);
    const Eigen::Ref<const row_matrix<T>> w(w_in.derived());
    validate_finite_rows<T>(w, where, "W", threads);
    const auto read_q = [&] {
        if constexpr (std::is_base_of_v<Eigen::DenseBase<Q>, Q>)
            return dense_row_reader(q);
        else
            return quantized_row_reader(q);
    }();
    if constexpr (std::is_void_v<S>) {
        return accumulate_errors<T, uniform_sensitivity>(w, nullptr, read_q, threads);
    } else {
        return with_provider(*sensitivity, [&](const auto& provider) {
            validate_sensitivity(provider, w.rows(), w.cols(), where, threads);
            return accumulate_errors<T>(w, &provider, read_q, threads);
        });
    }
}

}  // namespace detail

/// 0.5 * sum_ij f_ij (W_ij - Q_ij)^2, summed in double. Q is a dense Eigen matrix or a quantized_matrix
/// (decoded row by row, D + S added in its scalar type). Shapes must agree; W must be finite and f finite
/// and >= 0 (sqz::error otherwise).
template <class DW, sensitivity_argument S, class Q>
double taylor_objective(const Eigen::MatrixBase<DW>& w, const S& sensitivity, const Q& q, int threads = 0) {
    return 0.5 * detail::error_sums_of(w, q, &sensitivity, "sqz::taylor_objective", threads).weighted;
}

/// ||W - Q||_F.
template <class DW, class Q>
double frobenius_error(const Eigen::MatrixBase<DW>& w, const Q& q, int threads = 0) {
    return std::sqrt(detail::error_sums_of<DW, Q, void>(w, q, nullptr, "sqz::frobenius_error", threads).squared);
}

/// ||W - Q||_F / ||W||_F (0 when both are 0, infinity when only W is 0).
template <class DW, class Q>
double relative_frobenius_error(const Eigen::MatrixBase<DW>& w, const Q& q, int threads = 0) {
    const auto s = detail::error_sums_of<DW, Q, void>(w, q, nullptr, "sqz::relative_frobenius_error", threads);
    if (s.reference == 0.0) return s.squared == 0.0 ? 0.0 : std::numeric_limits<double>::infinity();
    return std::sqrt(s.squared / s.reference);
}

}  // namespace sqz
