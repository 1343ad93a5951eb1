// sqz/quantized_matrix.hpp - a dense-and-sparse quantized matrix Q = D + S.
//
// D is stored as one codebook (lookup table, LUT) of 2^bits values per output row plus a bits-wide code
// per entry in the canonical packing of sqz/pack.hpp. Each row is its own bit stream starting on a byte
// boundary, so row i's codes are the bytes [i * row_stride_bytes(), (i + 1) * row_stride_bytes()).
// S is a CSR matrix holding, at the few extracted positions (outliers and sensitive values), the residual
// W_ij - LUT_i[code_ij], so that D + S reproduces those entries.
//
// quantized_matrix<T, Bits> fixes the width at compile time; quantized_matrix<T, dynamic_bits> (the
// default) carries it at run time. Both share one layout and convert into each other.
#pragma once

#include <sqz/error.hpp>
#include <sqz/half.hpp>
#include <sqz/pack.hpp>
#include <sqz/types.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

namespace sqz {

/// Precision the codebooks are stored in. With fp16 every LUT value is exactly representable in binary16
/// (the quantizer rounds centroids before computing residuals), so storing it in 2 bytes is lossless.
enum class lut_format { fp32, fp16 };

inline constexpr std::string_view to_string(lut_format format) noexcept {
    return format == lut_format::fp16 ? "fp16" : "fp32";
}

inline constexpr std::size_t bytes_per_lut_entry(lut_format format) noexcept {
    return format == lut_format::fp16 ? 2 : 4;
}

/// Bytes each part of a quantized matrix takes in storage (what a file or a device buffer holds).
struct storage_breakdown {
    std::size_t lut = 0;             ///< rows * 2^bits entries in the LUT format
    std::size_t codes = 0;           ///< packed codes, rows * row_stride_bytes
    std::size_t sparse_values = 0;   ///< nnz * sizeof(T)
    std::size_t sparse_indices = 0;  ///< nnz column indices (int32)
    std::size_t sparse_row_ptr = 0;  ///< (rows + 1) int32 offsets, only when the sparse part is non-empty

    std::size_t sparse() const noexcept { return sparse_values + sparse_indices + sparse_row_ptr; }
    std::size_t total() const noexcept { return lut + codes + sparse(); }
};

/// Builds a CSR matrix from raw arrays (as stored in files) after validating them: row_ptr has rows + 1
/// non-decreasing offsets from 0 to nnz, column indices lie in [0, cols) and increase strictly within a
/// row, values are finite. Unlike copying an Eigen::Map, malformed input gives sqz::error, never an
/// assertion or out-of-bounds access.
template <working_scalar T>
csr_matrix<T> make_csr(Eigen::Index rows, Eigen::Index cols, std::span<const std::int32_t> row_ptr,
                       std::span<const std::int32_t> col_idx, std::span<const T> values) {
    constexpr const char* where = "sqz::make_csr";
    detail::require(rows >= 0 && cols >= 0, where, ": shape ", rows, " x ", cols, " is negative");
    detail::require(row_ptr.size() == static_cast<std::size_t>(rows) + 1, where, ": row_ptr has ", row_ptr.size(),
                    " entries, ", rows + 1, " expected");
    detail::require(col_idx.size() == values.size(), where, ": col_idx has ", col_idx.size(), " entries but values has ",
                    values.size());
    detail::require(row_ptr[0] == 0, where, ": row_ptr[0] = ", row_ptr[0], ", expected 0");
    detail::require(static_cast<std::size_t>(row_ptr[static_cast<std::size_t>(rows)]) == values.size(), where,
                    ": row_ptr[", rows, "] = ", row_ptr[static_cast<std::size_t>(rows)], " but there are ",
                    values.size(), " values");
    for (Eigen::Index i = 0; i < rows; ++i) {
        const auto begin = row_ptr[static_cast<std::size_t>(i)];
        const auto end = row_ptr[static_cast<std::size_t>(i) + 1];
        detail::require(begin <= end, where, ": row_ptr decreases at row ", i, " (", begin, " > ", end, ")");
        detail::require(static_cast<std::size_t>(end) <= values.size(), where, ": row_ptr[", i + 1, "] = ", end,
                        " exceeds the ", values.size(), " values");
        for (auto k = begin; k < end; ++k) {
            const auto col = col_idx[static_cast<std::size_t>(k)];
            detail::require(col >= 0 && col < cols, where, ": column ", col, " in row ", i, " is outside 0..", cols - 1);
            detail::require(k == begin || col > col_idx[static_cast<std::size_t>(k) - 1], where, ": row ", i,
                            " has column ", col, " out of order or repeated");
            detail::require(std::isfinite(values[static_cast<std::size_t>(k)]), where, ": value at (", i, ", ", col,
                            ") is ", values[static_cast<std::size_t>(k)]);
        }
    }
    csr_matrix<T> out(rows, cols);
    out.resizeNonZeros(static_cast<Eigen::Index>(values.size()));
    std::copy(row_ptr.begin(), row_ptr.end(), out.outerIndexPtr());
    std::copy(col_idx.begin(), col_idx.end(), out.innerIndexPtr());
    std::copy(values.begin(), values.end(), out.valuePtr());
    return out;
}

template <working_scalar T, int Bits = dynamic_bits>
class quantized_matrix {
    static_assert(Bits == dynamic_bits || (Bits >= min_bits && Bits <= max_bits),
                  "sqz::quantized_matrix: Bits must be 1..8 or sqz::dynamic_bits");

public:
    using scalar = T;
    using index = Eigen::Index;
    static constexpr int static_bits = Bits;

    /// An empty 0 x 0 matrix (bits = Bits, or 1 for the run-time form).
    quantized_matrix() : bits_(Bits == dynamic_bits ? 1 : Bits), lut_(0, index{1} << bits_), sparse_(0, 0) {}

    /// Builds a matrix from its parts and validates them: bits in 1..8 (and equal to Bits when fixed),
    /// lut is rows x 2^bits and finite (and fp16-representable for lut_format::fp16), packed_codes holds
    /// rows * row_stride_bytes bytes, sparse is rows x cols (or 0 x 0 for "no sparse part") with finite
    /// values and strictly increasing column indices in each row.
    quantized_matrix(index rows, index cols, int bits, row_matrix<T> lut, std::vector<std::uint8_t> packed_codes,
                     csr_matrix<T> sparse = csr_matrix<T>(), lut_format format = lut_format::fp32)
        : rows_(rows), cols_(cols), bits_(bits), format_(format), lut_(std::move(lut)),
          codes_(std::move(packed_codes)), sparse_(std::move(sparse)) {
        validate();
    }

    /// Builds a matrix from unpacked codes (row-major, rows * cols values < 2^bits), packing them.
    static quantized_matrix from_codes(index rows, index cols, int bits, row_matrix<T> lut,
                                       std::span<const std::uint8_t> codes, csr_matrix<T> sparse = csr_matrix<T>(),
                                       lut_format format = lut_format::fp32) {
        detail::check_bits(bits, "sqz::quantized_matrix::from_codes");
        detail::require(rows >= 0 && cols >= 0, "sqz::quantized_matrix::from_codes: shape ", rows, " x ", cols,
                        " is negative");
        detail::require(codes.size() == static_cast<std::size_t>(rows) * static_cast<std::size_t>(cols),
                        "sqz::quantized_matrix::from_codes: codes has ", codes.size(), " entries, shape ", rows, " x ",
                        cols, " needs ", static_cast<std::size_t>(rows) * static_cast<std::size_t>(cols));
        const std::size_t stride = packed_size(static_cast<std::size_t>(cols), bits);
        std::vector<std::uint8_t> packed(stride * static_cast<std::size_t>(rows));
        for (index i = 0; i < rows; ++i) {
            const auto offset = static_cast<std::size_t>(i);
            pack(codes.subspan(offset * static_cast<std::size_t>(cols), static_cast<std::size_t>(cols)), bits,
                 std::span<std::uint8_t>(packed).subspan(offset * stride, stride));
        }
        return quantized_matrix(rows, cols, bits, std::move(lut), std::move(packed), std::move(sparse), format);
    }

    /// Converts between the compile-time and run-time forms; throws when the widths disagree.
    template <int OtherBits>
        requires(OtherBits != Bits)
    explicit quantized_matrix(const quantized_matrix<T, OtherBits>& other)
        : quantized_matrix(other.rows(), other.cols(), other.bits(), other.lut(),
                           std::vector<std::uint8_t>(other.codes().begin(), other.codes().end()), other.sparse(),
                           other.format()) {}

    index rows() const noexcept { return rows_; }
    index cols() const noexcept { return cols_; }
    int bits() const noexcept { return Bits == dynamic_bits ? bits_ : Bits; }
    /// Codebook size 2^bits.
    index levels() const noexcept { return index{1} << bits(); }
    lut_format format() const noexcept { return format_; }

    /// rows x 2^bits codebooks, one per row.
    const row_matrix<T>& lut() const noexcept { return lut_; }
    std::span<const T> lut_row(index row) const noexcept {
        return {lut_.data() + row * levels(), static_cast<std::size_t>(levels())};
    }

    /// Bytes per row in the canonical packing: packed_size(cols, bits).
    std::size_t row_stride_bytes() const noexcept {
        return (static_cast<std::size_t>(cols_) * static_cast<std::size_t>(bits()) + 7) / 8;
    }
    std::span<const std::uint8_t> codes() const noexcept { return codes_; }
    std::span<const std::uint8_t> row_codes(index row) const noexcept {
        return std::span<const std::uint8_t>(codes_).subspan(static_cast<std::size_t>(row) * row_stride_bytes(),
                                                             row_stride_bytes());
    }
    /// Code of entry (row, col); a scalar accessor for reference paths and tests.
    unsigned code(index row, index col) const noexcept {
        return packed_code(row_codes(row), bits(), static_cast<std::size_t>(col));
    }
    /// Value of the dense part D at (row, col).
    T dense_value(index row, index col) const noexcept { return lut_(row, code(row, col)); }

    /// The sparse part S (rows x cols, compressed CSR). It holds W - D at the extracted positions.
    const csr_matrix<T>& sparse() const noexcept { return sparse_; }
    index sparse_nonzeros() const noexcept { return sparse_.nonZeros(); }

    /// D + S as a dense matrix.
    row_matrix<T> dequantize() const {
        row_matrix<T> out(rows_, cols_);
        std::vector<std::uint8_t> scratch(static_cast<std::size_t>(cols_));
        for (index i = 0; i < rows_; ++i)
            decode_row(i, std::span<T>(out.data() + i * cols_, static_cast<std::size_t>(cols_)), scratch);
        return out;
    }

    /// Row `row` of D + S into `out` (cols() values): LUT_i[code_ij], plus S_ij where S has an entry, added
    /// in T exactly as dequantize() does.
    void dequantize_row(index row, std::span<T> out) const {
        detail::require(row >= 0 && row < rows_, "sqz::quantized_matrix::dequantize_row: row = ", row,
                        " is outside 0..", rows_ - 1);
        detail::require(out.size() == static_cast<std::size_t>(cols_),
                        "sqz::quantized_matrix::dequantize_row: output has ", out.size(), " values, cols = ", cols_);
        std::vector<std::uint8_t> scratch(static_cast<std::size_t>(cols_));
        decode_row(row, out, scratch);
    }

    /// Storage of each part, as written to a file: LUT in its format, packed codes, CSR values in T with
    /// int32 column indices and (when non-empty) int32 row offsets.
    storage_breakdown storage_bytes() const noexcept {
        storage_breakdown s;
        s.lut = static_cast<std::size_t>(rows_) * static_cast<std::size_t>(levels()) * bytes_per_lut_entry(format_);
        s.codes = codes_.size();
        const auto nnz = static_cast<std::size_t>(sparse_.nonZeros());
        s.sparse_values = nnz * sizeof(T);
        s.sparse_indices = nnz * sizeof(std::int32_t);
        s.sparse_row_ptr = nnz > 0 ? (static_cast<std::size_t>(rows_) + 1) * sizeof(std::int32_t) : 0;
        return s;
    }

    /// Average storage per weight in bits, LUT and sparse overhead included.
    double bits_per_weight() const noexcept {
        const double weights = static_cast<double>(rows_) * static_cast<double>(cols_);
        return weights > 0 ? 8.0 * static_cast<double>(storage_bytes().total()) / weights : 0.0;
    }

    friend bool operator==(const quantized_matrix& a, const quantized_matrix& b) {
        if (a.rows_ != b.rows_ || a.cols_ != b.cols_ || a.bits() != b.bits() || a.format_ != b.format_) return false;
        if (a.lut_ != b.lut_ || a.codes_ != b.codes_) return false;
        if (a.sparse_.nonZeros() != b.sparse_.nonZeros()) return false;
        for (index i = 0; i < a.rows_; ++i) {
            typename csr_matrix<T>::InnerIterator x(a.sparse_, i);
            typename csr_matrix<T>::InnerIterator y(b.sparse_, i);
            for (; x && y; ++x, ++y)
                if (x.col() != y.col() || x.value() != y.value()) return false;
            if (x || y) return false;
        }
        return true;
    }

private:
    void decode_row(index row, std::span<T> out, std::vector<std::uint8_t>& scratch) const {
        unpack(row_codes(row), bits(), scratch.size(), scratch);
        const T* table = lut_.data() + row * levels();
        for (std::size_t j = 0; j < out.size(); ++j) out[j] = table[scratch[j]];
        for (typename csr_matrix<T>::InnerIterator it(sparse_, row); it; ++it)
            out[static_cast<std::size_t>(it.col())] += it.value();
    }

    void validate() {
        constexpr const char* where = "sqz::quantized_matrix";
        detail::check_bits(bits_, where);
        detail::require(Bits == dynamic_bits || bits_ == Bits, where, ": bits = ", bits_,
                        " does not match the compile-time width ", Bits);
        detail::require(rows_ >= 0 && cols_ >= 0, where, ": shape ", rows_, " x ", cols_, " is negative");
        detail::require(cols_ <= index{std::numeric_limits<std::int32_t>::max()}, where, ": cols = ", cols_,
                        " exceeds the int32 column index range");
        detail::require(lut_.rows() == rows_ && lut_.cols() == levels(), where, ": lut is ", lut_.rows(), " x ",
                        lut_.cols(), ", expected ", rows_, " x ", levels());
        for (index i = 0; i < lut_.size(); ++i) {
            const T v = lut_.data()[i];
            detail::require(std::isfinite(v), where, ": lut entry ", i % levels(), " of row ", i / levels(), " is ", v);
            if (format_ == lut_format::fp16)
                detail::require(static_cast<T>(round_to_half(static_cast<float>(v))) == v, where, ": lut entry ",
                                i % levels(), " of row ", i / levels(), " = ", v,
                                " is not representable in the fp16 LUT format");
        }
        const std::size_t expected_codes = static_cast<std::size_t>(rows_) * row_stride_bytes();
        detail::require(codes_.size() == expected_codes, where, ": packed codes have ", codes_.size(), " bytes, ",
                        rows_, " rows of ", row_stride_bytes(), " bytes need ", expected_codes);
        if (sparse_.rows() == 0 && sparse_.cols() == 0) sparse_.resize(rows_, cols_);
        detail::require(sparse_.rows() == rows_ && sparse_.cols() == cols_, where, ": sparse part is ", sparse_.rows(),
                        " x ", sparse_.cols(), ", expected ", rows_, " x ", cols_);
        sparse_.makeCompressed();
        for (index i = 0; i < rows_; ++i) {
            index previous = -1;
            for (typename csr_matrix<T>::InnerIterator it(sparse_, i); it; ++it) {
                detail::require(it.col() > previous, where, ": sparse row ", i, " has column ", it.col(),
                                " out of order or repeated");
                detail::require(std::isfinite(it.value()), where, ": sparse value at (", i, ", ", it.col(), ") is ",
                                it.value());
                previous = it.col();
            }
        }
    }

    index rows_ = 0;
    index cols_ = 0;
    int bits_ = 1;
    lut_format format_ = lut_format::fp32;
    row_matrix<T> lut_;
    std::vector<std::uint8_t> codes_;
    csr_matrix<T> sparse_;
};

}  // namespace sqz
