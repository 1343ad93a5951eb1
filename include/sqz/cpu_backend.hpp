// sqz/cpu_backend.hpp - the `cpu` back end: OpenMP over row blocks, AVX-512, AVX2 or portable kernels.
//
//   sqz::cpu_matrix<float> p = sqz::prepare<sqz::backend::cpu>(q);   // repack once
//   sqz::matvec<sqz::backend::cpu>(p, x, y);                          // exact mode
//   sqz::matvec<sqz::backend::cpu>(p, x, y, {.mode = sqz::numeric_mode::int8});
//
// cpu_matrix repacks 1..4-bit codes into 256-column tiles (detail/cpu_layout.hpp) and keeps each row's
// LUT in the form its width's exact decoder reads (cpu_layout::fill_exact_table) and as 7-bit integers
// with a scale and an offset (int8 mode);
// 5..8-bit codes stay in the canonical packing and use the portable kernels. The sparse part is kept
// as CSR in its narrowest exact form: 16-bit column indices when cols <= 65536, 16-bit values (bf16 or
// fp16) when every value converts exactly (copy_sparse). The AVX-512 and AVX2+FMA(+F16C) kernels
// (float, 1..4 bits) are picked at run time when the processor has them (choose_kernel);
// matvec_options::kernel can force one of them or the portable ones, and cpu_kernel_used says which
// runs. Every row is computed by one thread in a fixed order: the result is the same for any number
// of threads.
#pragma once

#include <sqz/backend.hpp>
#include <sqz/detail/aligned_buffer.hpp>
#include <sqz/detail/cpu_features.hpp>
#include <sqz/detail/cpu_kernels.hpp>
#include <sqz/detail/cpu_kernels_avx2.hpp>
#include <sqz/detail/cpu_kernels_avx512.hpp>
#include <sqz/detail/cpu_layout.hpp>
#include <sqz/detail/threads.hpp>
#include <sqz/error.hpp>
#include <sqz/half.hpp>
#include <sqz/quantized_matrix.hpp>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <type_traits>
#include <vector>

namespace sqz {

/// A quantized matrix in the cpu back end's layout. Made once by prepare<backend::cpu>(q) (or the
/// constructor); independent of q afterwards.
template <working_scalar T>
class cpu_matrix {
public:
    using backend = sqz::backend::cpu;
    using scalar = T;
    using index = Eigen::Index;

    cpu_matrix() = default;

    template <int Bits>
    explicit cpu_matrix(const quantized_matrix<T, Bits>& q)
        : rows_(static_cast<std::size_t>(q.rows())), cols_(static_cast<std::size_t>(q.cols())), bits_(q.bits()) {
        namespace layout = detail::cpu_layout;
        tiled_ = bits_ <= layout::max_tiled_bits;
        tiles_ = layout::tiles_for(cols_);
        lut_stride_ = tiled_ ? 16 : (std::size_t{1} << bits_);
        row_bytes_ = tiled_ ? tiles_ * layout::tile_bytes(bits_) : q.row_stride_bytes();
        // The tiled layout stores groups of four rows (padded with code-0 rows).
        const std::size_t stored_rows =
            tiled_ ? (rows_ + layout::group_rows - 1) / layout::group_rows * layout::group_rows : rows_;
        // The AVX-512 exact decoder's loads at byte offsets read up to 3 bytes past the last tile.
        codes_.assign(stored_rows * row_bytes_ + (tiled_ ? code_padding : 0), 0);
        lut_.assign(rows_ * lut_stride_, T(0));
        u7_.assign(rows_ * lut_stride_, 0);
        int8_lo_.assign(rows_, T(0));
        int8_scale_.assign(rows_, T(0));
        if constexpr (std::is_same_v<T, float>)
            if (tiled_) exact_tables_.assign(rows_ * layout::exact_table_bytes, 0);

        std::vector<std::uint8_t> row_codes(tiles_ * layout::tile_columns, 0);
        std::array<std::uint8_t, layout::tile_columns> tile_codes{};
        for (std::size_t i = 0; i < rows_; ++i) {
            const auto lut = q.lut_row(static_cast<index>(i));
            std::copy(lut.begin(), lut.end(), lut_.begin() + static_cast<std::ptrdiff_t>(i * lut_stride_));
            fill_int8_lut(i, lut);
            if constexpr (std::is_same_v<T, float>)
                if (tiled_) {
                    std::array<std::uint32_t, 16> words{};
                    for (std::size_t k = 0; k < lut.size(); ++k) words[k] = std::bit_cast<std::uint32_t>(lut[k]);
                    layout::fill_exact_table(bits_, std::span<const std::uint32_t>(words.data(), lut.size()),
                                             std::span<std::uint8_t, layout::exact_table_bytes>(
                                                 exact_tables_.data() + i * layout::exact_table_bytes, layout::exact_table_bytes));
                }
            const auto canonical = q.row_codes(static_cast<index>(i));
            if (!tiled_) {
                std::copy(canonical.begin(), canonical.end(), codes_.data() + i * row_bytes_);
                continue;
            }
            const std::size_t tile_bytes = layout::tile_bytes(bits_);
            std::uint8_t* out = codes_.data() + layout::row_offset(i, row_bytes_, tile_bytes);
            detail::unpack_impl(canonical, bits_, cols_, std::span<std::uint8_t>(row_codes.data(), cols_));
            for (std::size_t t = 0; t < tiles_; ++t) {
                std::copy_n(row_codes.begin() + static_cast<std::ptrdiff_t>(t * layout::tile_columns),
                            layout::tile_columns, tile_codes.begin());
                layout::encode_tile(tile_codes, bits_,
                                    std::span<std::uint8_t>(out + t * layout::tile_stride(tile_bytes), tile_bytes));
            }
        }

        copy_sparse(q.sparse());
    }

    index rows() const noexcept { return static_cast<index>(rows_); }
    index cols() const noexcept { return static_cast<index>(cols_); }
    int bits() const noexcept { return bits_; }
    index sparse_nonzeros() const noexcept { return static_cast<index>(nonzeros_); }
    /// How the sparse part's values are stored: in 16 bits (fp16 or bf16) when that is exact for
    /// every value, otherwise as T (`scalar`).
    detail::sparse_value_type sparse_value_storage() const noexcept { return val_type_; }
    /// True when the sparse part's column indices are stored in 16 bits (at most 65536 columns).
    bool sparse_columns_16bit() const noexcept { return cols_ <= max_16bit_columns; }
    /// True for 1..4 bits: the tiled layout that the SIMD kernels read.
    bool tiled() const noexcept { return tiled_; }

    /// Bytes a product reads from this layout: codes, the LUT form of the mode, and the sparse part as
    /// stored (16- or 32-bit columns and values, with their padding, and the row offsets).
    std::size_t bytes_read(numeric_mode mode) const noexcept {
        const std::size_t lut = quantizes_activations(mode) ? rows_ * (lut_stride_ + 2 * sizeof(T))
                                : exact_tables_.empty()    ? lut_.size() * sizeof(T)
                                                           : exact_tables_.size();
        return stored_code_bytes() + lut + col16_.size() * sizeof(std::uint16_t) + col32_.size() * sizeof(std::int32_t) +
               val16_.size() * sizeof(std::uint16_t) + val_.size() * sizeof(T) + row_ptr_.size() * sizeof(std::int32_t);
    }

    /// The raw view the kernels use.
    detail::cpu_matrix_view<T> view() const noexcept {
        detail::cpu_matrix_view<T> v;
        v.rows = rows_;
        v.cols = cols_;
        v.bits = bits_;
        v.tiled = tiled_;
        v.tiles = tiles_;
        v.row_bytes = row_bytes_;
        v.tile_bytes = tiled_ ? detail::cpu_layout::tile_bytes(bits_) : 0;
        v.codes = codes_.data();
        v.code_bytes = stored_code_bytes();
        v.lut = lut_.data();
        v.lut_stride = lut_stride_;
        v.exact_tables = exact_tables_.empty() ? nullptr : exact_tables_.data();
        v.u7 = u7_.data();
        v.int8_lo = int8_lo_.data();
        v.int8_scale = int8_scale_.data();
        v.intel_tuning = detail::cpu_is_intel();
        if (nonzeros_ > 0) {
            v.row_ptr = row_ptr_.data();
            v.col16 = !col16_.empty();
            v.col = v.col16 ? static_cast<const void*>(col16_.data()) : static_cast<const void*>(col32_.data());
            v.val_type = val_type_;
            v.val = val_type_ == detail::sparse_value_type::scalar ? static_cast<const void*>(val_.data())
                                                                   : static_cast<const void*>(val16_.data());
        }
        return v;
    }

private:
    static constexpr std::size_t max_16bit_columns = std::size_t{1} << 16;
    static constexpr std::size_t code_padding = 64;

    /// Bytes of codes as stored (row groups padded to four rows), without the trailing padding, which
    /// is never read as codes.
    std::size_t stored_code_bytes() const noexcept { return codes_.size() - (tiled_ ? code_padding : 0); }

    // The sparse part in its narrowest exact form: columns in 16 bits when they fit, values in 16 bits
    // when every one of them converts to fp16 (or bf16) and back unchanged. Decided once per matrix,
    // so the kernels pick their storage types once per call and no result changes.
    void copy_sparse(const csr_matrix<T>& s) {
        nonzeros_ = static_cast<std::size_t>(s.nonZeros());
        if (nonzeros_ == 0) return;
        row_ptr_.assign(s.outerIndexPtr(), s.outerIndexPtr() + rows_ + 1);
        const std::int32_t* columns = s.innerIndexPtr();
        if (cols_ <= max_16bit_columns) {
            col16_.resize(nonzeros_);  // each index < cols <= 65536
            std::transform(columns, columns + nonzeros_, col16_.begin(),
                           [](std::int32_t c) { return static_cast<std::uint16_t>(c); });
        } else {
            col32_.assign(columns, columns + nonzeros_);
        }
        const std::span<const T> values(s.valuePtr(), nonzeros_);
        // A value fits a 16-bit form when T -> float -> 16 bits -> float -> T gives back its bits.
        const auto same_bits = [](T a, T b) { return std::memcmp(&a, &b, sizeof(T)) == 0; };
        const auto fits = [&](auto to_bits, auto from_bits) {
            return std::all_of(values.begin(), values.end(), [&](T v) {
                if (!(std::abs(v) <= static_cast<T>(std::numeric_limits<float>::max()))) return false;  // keeps NaN, Inf as T
                return same_bits(static_cast<T>(from_bits(to_bits(static_cast<float>(v)))), v);
            });
        };
        if (fits(float_to_bfloat16_bits, bfloat16_bits_to_float)) {  // the cheaper decode when both fit
            val_type_ = detail::sparse_value_type::bf16;
            val16_.resize(nonzeros_);
            std::transform(values.begin(), values.end(), val16_.begin(),
                           [](T v) { return float_to_bfloat16_bits(static_cast<float>(v)); });
        } else if (fits(float_to_half_bits, half_bits_to_float)) {
            val_type_ = detail::sparse_value_type::fp16;
            val16_.resize(nonzeros_);
            std::transform(values.begin(), values.end(), val16_.begin(),
                           [](T v) { return float_to_half_bits(static_cast<float>(v)); });
        } else {
            val_.assign(values.begin(), values.end());
        }
        // Zero entries past the end, so that the AVX2 kernel's last vector of a row stays inside the
        // arrays (its lanes past the row are masked off); column 0 is a valid index.
        for (auto* stored : {&col16_, &val16_})
            if (!stored->empty()) stored->resize(nonzeros_ + detail::sparse_padding, 0);
        if (!col32_.empty()) col32_.resize(nonzeros_ + detail::sparse_padding, 0);
        if (!val_.empty()) val_.resize(nonzeros_ + detail::sparse_padding, T(0));
    }

    // The int8 specification's LUT: lo + scale * u with u in 0..127 (reference_backend.hpp).
    void fill_int8_lut(std::size_t row, std::span<const T> lut) {
        const auto [lo_it, hi_it] = std::minmax_element(lut.begin(), lut.end());
        const T lo = *lo_it;
        const T scale = (*hi_it - lo) / T(127);
        int8_lo_[row] = lo;
        int8_scale_[row] = scale;
        if (scale > T(0))
            for (std::size_t k = 0; k < lut.size(); ++k)
                u7_[row * lut_stride_ + k] =
                    static_cast<std::uint8_t>(std::clamp(std::nearbyint((lut[k] - lo) / scale), T(0), T(127)));
    }

    std::size_t rows_ = 0;
    std::size_t cols_ = 0;
    int bits_ = 1;
    bool tiled_ = true;
    std::size_t tiles_ = 0;
    std::size_t lut_stride_ = 16;
    std::size_t row_bytes_ = 0;
    detail::aligned_vector<std::uint8_t> codes_;
    std::vector<T> lut_;
    detail::aligned_vector<std::uint8_t> exact_tables_;
    detail::aligned_vector<std::uint8_t> u7_;
    std::vector<T> int8_lo_;
    std::vector<T> int8_scale_;
    std::size_t nonzeros_ = 0;
    std::vector<std::int32_t> row_ptr_;
    std::vector<std::uint16_t> col16_;  // when cols <= 65536
    std::vector<std::int32_t> col32_;   // otherwise
    detail::sparse_value_type val_type_ = detail::sparse_value_type::scalar;
    std::vector<std::uint16_t> val16_;  // fp16 or bf16 patterns
    std::vector<T> val_;                // T, when a value fits neither
};

namespace detail::cpu {

using index_t = Eigen::Index;

/// Rows per unit of work handed to a thread: at least 32 rows and about 256 KB of codes, so that a
/// thread streams long stretches of memory (short rows in small blocks made 14336 x 4096 40% slower
/// than 4096 x 14336), and a multiple of 4 so that row groups start at block boundaries. It depends
/// on the matrix only, never on the number of threads.
template <class T>
std::size_t rows_per_block(const cpu_matrix_view<T>& m) noexcept {
    const std::size_t by_bytes = (std::size_t{256} << 10) / std::max<std::size_t>(m.row_bytes, 1);
    return std::max<std::size_t>(32, by_bytes / 4 * 4);
}
/// Rows the AVX2 int8 kernel processes together (shared activation loads).
inline constexpr int int8_rows_together = 4;

inline int thread_count(const matvec_options& options) {
    require(options.threads >= 0, "sqz::matvec<cpu>: threads = ", options.threads, " is negative");
    return resolve_threads(options.threads);
}

/// The SIMD kernels a product runs: none (portable), AVX2, or AVX-512 (its own exact and int8
/// matvec kernels; everything else, the sparse part included, AVX2 code).
enum class simd_kernel { none, avx2, avx512 };

template <class T>
simd_kernel choose_kernel(const cpu_matrix_view<T>& m, const matvec_options& options) {
    const bool eligible = std::is_same_v<T, float> && m.tiled;
    const auto require_eligible = [&](const char* name) {
        require(eligible, "sqz::matvec<cpu>: kernel = ", name, " covers float matrices of 1..4 bits, not ",
                std::is_same_v<T, float> ? "float" : "double", " with ", m.bits, " bits");
    };
    switch (options.kernel) {
        case cpu_kernel::portable: return simd_kernel::none;
        case cpu_kernel::avx2:
            require(cpu_has_avx2_fma(), "sqz::matvec<cpu>: kernel = avx2 but this processor (or compiler) has no AVX2+FMA+F16C");
            require_eligible("avx2");
            return simd_kernel::avx2;
        case cpu_kernel::avx512:
            require(cpu_has_avx512(), "sqz::matvec<cpu>: kernel = avx512 but this processor (or compiler, or operating "
                                      "system) has no AVX-512 F/VL/BW/DQ/VBMI/VNNI");
            require_eligible("avx512");
            return simd_kernel::avx512;
        default:
            if (!eligible) return simd_kernel::none;
            // AVX-512 measured faster in every mode and width on Zen 4 (docs/benchmarks.md).
            if (cpu_has_avx512()) return simd_kernel::avx512;
            return cpu_has_avx2_fma() ? simd_kernel::avx2 : simd_kernel::none;
    }
}

/// Runs body(first_row, end_row) over the matrix's row blocks on `threads` threads. Threads take
/// runs of consecutive blocks, about two per thread, so that each reads one long stream of codes: with
/// one block at a time every block started a new stream, which the prefetches and the hardware
/// prefetcher reach only after its first kilobytes (10-16% slower from DRAM on an idle host,
/// docs/benchmarks.md). Two runs per thread rather than one leave some balancing when a core is busy.
template <class T, class Body>
void for_row_blocks(const cpu_matrix_view<T>& m, int threads, Body&& body) {
    const std::size_t rows = m.rows;
    const std::size_t row_block = rows_per_block(m);
    const std::size_t blocks = (rows + row_block - 1) / row_block;
    const auto run = [&](std::size_t b) { body(b * row_block, std::min(rows, (b + 1) * row_block)); };
#if defined(_OPENMP)
    if (threads > 1 && blocks > 1) {
        const std::size_t run_blocks = std::max<std::size_t>(1, blocks / (2 * static_cast<std::size_t>(threads)));
#pragma omp parallel for num_threads(threads) schedule(dynamic, run_blocks)
        for (std::ptrdiff_t b = 0; b < static_cast<std::ptrdiff_t>(blocks); ++b) run(static_cast<std::size_t>(b));
        return;
    }
#else
    (void)threads;
#endif
    for (std::size_t b = 0; b < blocks; ++b) run(b);
}

#if SQZ_HAVE_X86_SIMD
/// Where grouped_rows computes the sparse part: in a pre-pass over the block, row by row
/// (avx2::sparse_row_sums) or for whole groups in avx2::group_sparse's steps, or, for whole groups,
/// in the group kernel along their dense part (the AVX-512 int8 kernel at 4 bits); the rows left
/// over always in the pre-pass.
enum class sparse_pass { rows_before, groups_before, groups_in_kernel };

/// Rows [first, end) in groups of R (`group`), the rest one by one (`one`), with the sparse part
/// around them: its row sums are computed first, into per-thread scratch, while the block's first
/// codes are prefetched (avx2::sparse_row_sums), and added to y after the dense part. Otherwise
/// DRAM would sit idle while the sparse part is computed (docs/design.md).
template <int R, sparse_pass Pass, class Kernel1, class KernelR>
void grouped_rows(const cpu_matrix_view<float>& m, std::size_t first, std::size_t end, const float* x, float* y,
                  Kernel1&& one, KernelR&& group) {
    const std::size_t grouped_end = first + (end - first) / R * R;
    const std::size_t pass_first = Pass == sparse_pass::groups_in_kernel ? grouped_end : first;
    const bool sparse = m.row_ptr != nullptr && m.row_ptr[pass_first] != m.row_ptr[end];
    thread_local std::vector<double> sparse_sums;
    if (sparse) {
        sparse_sums.resize(end - pass_first);
        avx2::sparse_row_sums<Pass == sparse_pass::groups_before>(m, pass_first, end, x, sparse_sums.data());
    }
    for (std::size_t i = first; i < grouped_end; i += R) group(i);
    for (std::size_t i = grouped_end; i < end; ++i) one(i);
    if (sparse)
        for (std::size_t i = pass_first; i < end; ++i)
            y[i] = static_cast<float>(static_cast<double>(y[i]) + sparse_sums[i - pass_first]);
}

template <int Bits>
void avx512_exact(const cpu_matrix_view<float>& m, const float* xp, const float* x, float* y, int threads) {
    for_row_blocks(m, threads, [&](std::size_t first, std::size_t end) {
        grouped_rows<cpu_layout::group_rows, sparse_pass::rows_before>(
            m, first, end, x, y, [&](std::size_t i) { avx512::exact_rows<Bits, 1>(m, i, xp, y); },
            [&](std::size_t i) { avx512::exact_rows<Bits, static_cast<int>(cpu_layout::group_rows)>(m, i, xp, y); });
    });
}

/// SlotScales = false: int8_tile mode (a quantized with D_b = 1 in every slot). At 4 bits int8_tile
/// mode takes the kernel's Narrow form on matrices of at most avx512::int8_window_tiles tiles, but
/// not on Intel (cpu_matrix_view::intel_tuning).
template <int Bits, bool SlotScales>
void avx512_int8(const cpu_matrix_view<float>& m, const int8_activation_buffers<float>& a, const float* x, float* y,
                 int threads) {
    for_row_blocks(m, threads, [&](std::size_t first, std::size_t end) {
        constexpr sparse_pass pass = avx2::int8_sparse_by_groups<Bits> ? sparse_pass::groups_in_kernel : sparse_pass::rows_before;
        const auto rows = [&]<bool Narrow>() {
            grouped_rows<int8_rows_together, pass>(
                m, first, end, x, y, [&](std::size_t i) { avx512::int8_rows<Bits, 1, SlotScales, Narrow>(m, i, a, y); },
                [&](std::size_t i) { avx512::int8_rows<Bits, int8_rows_together, SlotScales, Narrow>(m, i, a, y, x); });
        };
        if constexpr (Bits == 4 && !SlotScales)
            if (!m.intel_tuning && m.tiles <= avx512::int8_window_tiles) return rows.template operator()<true>();
        rows.template operator()<false>();
    });
}

template <int Bits>
void avx2_exact(const cpu_matrix_view<float>& m, const float* xp, const float* x, float* y, int threads) {
    for_row_blocks(m, threads, [&](std::size_t first, std::size_t end) {
        grouped_rows<cpu_layout::group_rows, sparse_pass::rows_before>(
            m, first, end, x, y, [&](std::size_t i) { avx2::exact_row<Bits>(m, i, xp, y); },
            [&](std::size_t i) { avx2::exact_group<Bits>(m, i, xp, y); });
    });
}

template <int Bits>
void avx2_int8(const cpu_matrix_view<float>& m, const int8_activation_buffers<float>& a, const float* x, float* y,
               int threads) {
    for_row_blocks(m, threads, [&](std::size_t first, std::size_t end) {
        constexpr sparse_pass pass = avx2::int8_sparse_by_groups<Bits> ? sparse_pass::groups_before : sparse_pass::rows_before;
        grouped_rows<int8_rows_together, pass>(
            m, first, end, x, y, [&](std::size_t i) { avx2::int8_rows<Bits, 1>(m, i, a, y); },
            [&](std::size_t i) { avx2::int8_rows<Bits, int8_rows_together>(m, i, a, y); });
    });
}

/// Calls f.template operator()<Bits>() with the matrix's width as a constant (1..4).
template <class F>
void with_tiled_bits(int bits, F&& f) {
    switch (bits) {
        case 1: f.template operator()<1>(); break;
        case 2: f.template operator()<2>(); break;
        case 3: f.template operator()<3>(); break;
        default: f.template operator()<4>(); break;
    }
}
#endif

/// Per-thread scratch buffers for the activations, reused across calls so that a product allocates
/// nothing once warm.
template <class T>
struct activation_scratch {
    int8_activation_buffers<T> int8;
    aligned_vector<float> permuted;
};

template <class T>
activation_scratch<T>& scratch() {
    thread_local activation_scratch<T> buffers;
    return buffers;
}

/// Quantizes one activation vector with the kernels' quantizer for `mode` (int8 or int8_tile); false
/// when x is not finite.
template <class T>
bool quantize_for(const cpu_matrix_view<T>& m, simd_kernel simd, numeric_mode mode, std::span<const T> x,
                  int8_activation_buffers<T>& out) {
    const bool slot_scales = mode == numeric_mode::int8;
#if SQZ_HAVE_X86_SIMD
    if constexpr (std::is_same_v<T, float>)
        if (simd != simd_kernel::none) return avx2::quantize_activations(x.data(), m.cols, m.tiles, slot_scales, out);
#endif
    (void)simd;
    return quantize_activations(x, m.tiles, slot_scales, out);
}

/// The product on a view of a cpu_matrix (the tests change a view's per-processor choices,
/// intel_tuning, to run every kernel form on any processor).
template <class T>
void matvec_view(const cpu_matrix_view<T>& m, std::span<const T> x, std::span<T> y, const matvec_options& options) {
    check_matvec_sizes("sqz::matvec<cpu>", static_cast<index_t>(m.rows), static_cast<index_t>(m.cols), x.size(), y.size());
    const int threads = thread_count(options);
    const simd_kernel simd = choose_kernel(m, options);
    if (m.rows == 0) return;
    activation_scratch<T>& buffers = scratch<T>();
    if (quantizes_activations(options.mode)) {
        const int8_activation_buffers<T>& act = buffers.int8;
        if (quantize_for(m, simd, options.mode, x, buffers.int8)) {
#if SQZ_HAVE_X86_SIMD
            if constexpr (std::is_same_v<T, float>) {
                if (simd == simd_kernel::avx512) {
                    if (m.bits != 4) avx512::order_activations(m.bits, m.tiles, buffers.int8);
                    with_tiled_bits(m.bits, [&]<int Bits>() {
                        if (options.mode == numeric_mode::int8)
                            avx512_int8<Bits, true>(m, act, x.data(), y.data(), threads);
                        else
                            avx512_int8<Bits, false>(m, act, x.data(), y.data(), threads);
                    });
                    return;
                }
                if (simd == simd_kernel::avx2) {
                    with_tiled_bits(m.bits, [&]<int Bits>() { avx2_int8<Bits>(m, act, x.data(), y.data(), threads); });
                    return;
                }
            }
#endif
            for_row_blocks(m, threads, [&](std::size_t first, std::size_t end) {
                for (std::size_t i = first; i < end; ++i) y[i] = portable::int8_row(m, i, act, x.data());
            });
            return;
        }
        // x holds NaN or Inf: int8 cannot represent it; compute this call exactly (documented).
    }
#if SQZ_HAVE_X86_SIMD
    if constexpr (std::is_same_v<T, float>)
        if (simd != simd_kernel::none) {
            aligned_vector<float>& xp = buffers.permuted;
            xp.resize(m.tiles * cpu_layout::tile_columns);
            if (simd == simd_kernel::avx512) {
                avx512::permute_for_exact(m.bits, x.data(), m.cols, m.tiles, xp.data());
                with_tiled_bits(m.bits, [&]<int Bits>() { avx512_exact<Bits>(m, xp.data(), x.data(), y.data(), threads); });
            } else {
                avx2::permute_for_exact(m.bits, x.data(), m.cols, m.tiles, xp.data());
                with_tiled_bits(m.bits, [&]<int Bits>() { avx2_exact<Bits>(m, xp.data(), x.data(), y.data(), threads); });
            }
            return;
        }
#endif
    for_row_blocks(m, threads, [&](std::size_t first, std::size_t end) {
        for (std::size_t i = first; i < end; ++i) y[i] = portable::exact_row(m, i, x.data());
    });
}

template <class T>
void matvec(const cpu_matrix<T>& a, std::span<const T> x, std::span<T> y, const matvec_options& options) {
    matvec_view(a.view(), x, y, options);
}

template <class T>
void matmul(const cpu_matrix<T>& a, matrix_cref<T> x, matrix_ref<T> y, const matvec_options& options) {
    constexpr int max_columns = backend_traits<backend::cpu>::max_matmul_columns;
    check_matmul_sizes("sqz::matmul<cpu>", a.rows(), a.cols(), x.rows(), x.cols(), y.rows(), y.cols(), max_columns);
    const int threads = thread_count(options);
    const cpu_matrix_view<T> m = a.view();
    const simd_kernel simd = choose_kernel(m, options);
    const auto k = static_cast<std::size_t>(x.cols());
    if (m.rows == 0) return;
    // Contiguous copies of the columns (X may be a strided block).
    std::vector<std::vector<T>> columns(k, std::vector<T>(m.cols));
    for (std::size_t c = 0; c < k; ++c)
        for (std::size_t j = 0; j < m.cols; ++j) columns[c][j] = x(static_cast<index_t>(j), static_cast<index_t>(c));
    const auto sparse_into = [&](std::size_t i, std::size_t c, double dense) {
        y(static_cast<index_t>(i), static_cast<index_t>(c)) = static_cast<T>(dense + sparse_row_dot(m, i, columns[c].data()));
    };

    bool int8 = quantizes_activations(options.mode);
    std::vector<int8_activation_buffers<T>> act(int8 ? k : 0);
    for (std::size_t c = 0; c < act.size() && int8; ++c)
        int8 = quantize_for(m, simd, options.mode, std::span<const T>(columns[c]), act[c]);

    if (int8) {
#if SQZ_HAVE_X86_SIMD
        if constexpr (std::is_same_v<T, float>)
            if (simd != simd_kernel::none) {  // the AVX2 kernel under kernel = avx512 too (docs/design.md)
                with_tiled_bits(m.bits, [&]<int Bits>() {
                    for_row_blocks(m, threads, [&](std::size_t first, std::size_t end) {
                        std::array<double, max_columns> dense{};
                        for (std::size_t i = first; i < end; ++i) {
                            avx2::int8_row_columns<Bits>(m, i, act.data(), k, dense.data());
                            for (std::size_t c = 0; c < k; ++c)
                                sparse_into(i, c, static_cast<double>(m.int8_scale[i]) * dense[c] +
                                                      static_cast<double>(m.int8_lo[i]) * act[c].x_hat_sum);
                        }
                    });
                });
                return;
            }
#endif
        for_row_blocks(m, threads, [&](std::size_t first, std::size_t end) {
            for (std::size_t i = first; i < end; ++i)
                for (std::size_t c = 0; c < k; ++c)
                    y(static_cast<index_t>(i), static_cast<index_t>(c)) = portable::int8_row(m, i, act[c], columns[c].data());
        });
        return;
    }
#if SQZ_HAVE_X86_SIMD
    if constexpr (std::is_same_v<T, float>)
        if (simd != simd_kernel::none) {
            const std::size_t stride = m.tiles * cpu_layout::tile_columns;
            aligned_vector<float> xp(stride * k);
            const auto permute = simd == simd_kernel::avx512 ? avx512::permute_for_exact : avx2::permute_for_exact;
            for (std::size_t c = 0; c < k; ++c) permute(m.bits, columns[c].data(), m.cols, m.tiles, xp.data() + c * stride);
            with_tiled_bits(m.bits, [&]<int Bits>() {
                for_row_blocks(m, threads, [&](std::size_t first, std::size_t end) {
                    std::array<double, max_columns> dense{};
                    for (std::size_t i = first; i < end; ++i) {
                        if (simd == simd_kernel::avx512)
                            avx512::exact_row_columns<Bits>(m, i, xp.data(), stride, k, dense.data());
                        else
                            avx2::exact_row_columns<Bits>(m, i, xp.data(), stride, k, dense.data());
                        for (std::size_t c = 0; c < k; ++c) sparse_into(i, c, dense[c]);
                    }
                });
            });
            return;
        }
#endif
    for_row_blocks(m, threads, [&](std::size_t first, std::size_t end) {
        for (std::size_t i = first; i < end; ++i)
            for (std::size_t c = 0; c < k; ++c)
                y(static_cast<index_t>(i), static_cast<index_t>(c)) = portable::exact_row(m, i, columns[c].data());
    });
}

}  // namespace detail::cpu

/// The kernel that sqz::matvec<cpu> and sqz::matmul<cpu> run for `a` with `options`: `automatic`
/// resolved to avx512, avx2 or portable for this processor and matrix (e.g. to log what ran). Throws
/// sqz::error, as the products do, when options.kernel names a kernel that cannot run here.
template <class T>
cpu_kernel cpu_kernel_used(const cpu_matrix<T>& a, const matvec_options& options = {}) {
    switch (detail::cpu::choose_kernel(a.view(), options)) {
        case detail::cpu::simd_kernel::avx512: return cpu_kernel::avx512;
        case detail::cpu::simd_kernel::avx2: return cpu_kernel::avx2;
        default: return cpu_kernel::portable;
    }
}

template <>
struct backend_impl<backend::cpu> {
    template <class T, int Bits>
    static cpu_matrix<T> prepare(const quantized_matrix<T, Bits>& q) {
        return cpu_matrix<T>(q);
    }

    template <class T>
    static void matvec(const cpu_matrix<T>& a, std::span<const T> x, std::span<T> y, const matvec_options& options) {
        detail::cpu::matvec(a, x, y, options);
    }

    template <class T, int Bits>
    static void matvec(const quantized_matrix<T, Bits>& q, std::span<const T> x, std::span<T> y,
                       const matvec_options& options) {
        detail::check_matvec_sizes("sqz::matvec<cpu>", q.rows(), q.cols(), x.size(), y.size());
        detail::cpu::matvec(cpu_matrix<T>(q), x, y, options);
    }

    template <class T>
    static void matmul(const cpu_matrix<T>& a, matrix_cref<T> x, matrix_ref<T> y, const matvec_options& options) {
        detail::cpu::matmul(a, x, y, options);
    }

    template <class T, int Bits>
    static void matmul(const quantized_matrix<T, Bits>& q, matrix_cref<T> x, matrix_ref<T> y,
                       const matvec_options& options) {
        detail::check_matmul_sizes("sqz::matmul<cpu>", q.rows(), q.cols(), x.rows(), x.cols(), y.rows(), y.cols(),
                                   backend_traits<backend::cpu>::max_matmul_columns);
        detail::cpu::matmul(cpu_matrix<T>(q), x, y, options);
    }
};

}  // namespace sqz
