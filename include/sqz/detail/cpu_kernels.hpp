// sqz/detail/cpu_kernels.hpp - what the cpu back end's kernels share, and its portable kernels.
//
// cpu_matrix_view is the raw form of a cpu_matrix that kernels read. The portable kernels run on any
// processor and for every width and scalar type; the AVX2 and AVX-512 kernels (cpu_kernels_avx2.hpp,
// cpu_kernels_avx512.hpp) cover float with 1..4 bits. All read the same repacked layout
// (cpu_layout.hpp) and implement the same numeric modes, and each row is computed by one thread in a
// fixed order, so results do not depend on the number of threads.
#pragma once

#include <sqz/detail/aligned_buffer.hpp>
#include <sqz/detail/cpu_features.hpp>
#include <sqz/detail/cpu_layout.hpp>
#include <sqz/half.hpp>
#include <sqz/pack.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>

#ifndef SQZ_CODE_PREFETCH
#define SQZ_CODE_PREFETCH 2048
#endif
#ifndef SQZ_CODE_PREFETCH_L2
#define SQZ_CODE_PREFETCH_L2 8192
#endif
#ifndef SQZ_EXACT_CODE_PREFETCH_INTEL
#define SQZ_EXACT_CODE_PREFETCH_INTEL 768
#endif
#ifndef SQZ_EXACT_SPREAD_PREFETCH_INTEL
#define SQZ_EXACT_SPREAD_PREFETCH_INTEL 3072
#endif
#ifndef SQZ_INT8_CODE_PREFETCH_INTEL
#define SQZ_INT8_CODE_PREFETCH_INTEL 1024
#endif
#ifndef SQZ_INT8_CODE_PREFETCH_L2_INTEL
#define SQZ_INT8_CODE_PREFETCH_L2_INTEL 4096
#endif
#ifndef SQZ_INT8_LOW_BITS_PREFETCH_L2_INTEL
#define SQZ_INT8_LOW_BITS_PREFETCH_L2_INTEL 4096
#endif
#ifndef SQZ_SPARSE_PREFETCH_ROWS
#define SQZ_SPARSE_PREFETCH_ROWS 12
#endif

namespace sqz::detail {

/// How cpu_matrix stores the sparse part's values, chosen once per matrix: in 16 bits when that is
/// exact for every value (fp16: converts to binary16 and back unchanged; bf16: the low 16 bits of the
/// float are zero), otherwise as T. Decoding a 16-bit value gives back the original bits.
enum class sparse_value_type : std::uint8_t { scalar, fp16, bf16 };

/// Sparse value k (stored as V) as T, exactly.
template <class T, sparse_value_type V>
T sparse_value(const void* values, std::int32_t k) noexcept {
    if constexpr (V == sparse_value_type::scalar) {
        return static_cast<const T*>(values)[k];
    } else {
        const std::uint16_t bits = static_cast<const std::uint16_t*>(values)[k];
        return static_cast<T>(V == sparse_value_type::fp16 ? half_bits_to_float(bits) : bfloat16_bits_to_float(bits));
    }
}

/// How far ahead of the code bytes being decoded a kernel asks for codes (software prefetch), in
/// bytes: into L1 (prefetcht0) at l1, into L2 only (prefetcht1) at l2; 0: not at all.
struct code_prefetch {
    std::size_t l1 = 0;
    std::size_t l2 = 0;
};

/// The request that step `step` of `steps` makes in a tile group's code prefetch spread over a
/// kernel's steps (avx2::prefetch_spread): request j, made every max(1, steps / (2 lines)) steps, is
/// for line j / 2 of the group's `lines` lines, into L2 for even j and into L1 for odd j, so that
/// each line is asked for once into each level, at evenly spaced steps. line = -1: none (also for
/// no lines, and for a step outside [0, steps)).
struct spread_request {
    int line = -1;
    bool into_l2 = false;
};
constexpr spread_request spread_request_at(int lines, int steps, int step) noexcept {
    if (lines <= 0 || step < 0 || step >= steps) return {};
    const int requests = 2 * lines;
    const int spacing = steps > requests ? steps / requests : 1;
    if (step % spacing != 0 || step / spacing >= requests) return {};
    const int request = step / spacing;
    return {request / 2, request % 2 == 0};
}

/// The kernels' prefetch but on Intel: 2 KB into L1 and 8 KB into L2 (SQZ_CODE_PREFETCH,
/// SQZ_CODE_PREFETCH_L2; measured on Zen 4, docs/benchmarks.md).
inline constexpr code_prefetch default_code_prefetch{SQZ_CODE_PREFETCH, SQZ_CODE_PREFETCH_L2};

/// The exact kernels' prefetch on Intel before each window of tiles: 768 bytes into L1 and nothing
/// into L2 (SQZ_EXACT_CODE_PREFETCH_INTEL). On a Xeon with AVX-512 that made the exact products 2-24%
/// faster from DRAM than the default (docs/benchmarks.md, "An Intel host"). The AVX-512 kernels keep
/// it at 1 and 2 bits, where they are bound by their instructions: spread over the steps
/// (intel_exact_spread_prefetch) the 2-bit product was 5-13% slower.
inline constexpr code_prefetch intel_exact_code_prefetch{SQZ_EXACT_CODE_PREFETCH_INTEL, 0};

/// The 3- and 4-bit AVX-512 exact kernels' prefetch on Intel, spread over a tile's steps
/// (avx2::prefetch_spread): 3 KB into L1 (SQZ_EXACT_SPREAD_PREFETCH_INTEL). On the Xeon host that
/// made them 6-19% faster from DRAM than intel_exact_code_prefetch before each window of tiles; 2-6 KB
/// measured alike (docs/benchmarks.md, "Spread prefetch").
inline constexpr code_prefetch intel_exact_spread_prefetch{SQZ_EXACT_SPREAD_PREFETCH_INTEL, 0};

/// The int8 kernels' prefetch on Intel: 1 KB into L1 and 4 KB into L2 (SQZ_INT8_CODE_PREFETCH_INTEL,
/// SQZ_INT8_CODE_PREFETCH_L2_INTEL), spread over the tile's steps, in the AVX-512 kernel at 3 and 4
/// bits and in the AVX2 kernel at every width. Before each tile its median times on the Xeon host
/// were 0.4-5.4% shorter than the default's on average over each of three batches (docs/benchmarks.md,
/// "An Intel host"); spread, 512 B-2 KB into L1 and 2-8 KB into L2 measured alike ("Spread prefetch",
/// "The AVX2 int8 kernel on Intel").
inline constexpr code_prefetch intel_int8_code_prefetch{SQZ_INT8_CODE_PREFETCH_INTEL, SQZ_INT8_CODE_PREFETCH_L2_INTEL};

/// The AVX-512 int8 kernel's spread prefetch on Intel at 1 and 2 bits: 4 KB into L2 only
/// (SQZ_INT8_LOW_BITS_PREFETCH_L2_INTEL). At 2 bits int8_tile mode was 9-14% faster with it than with
/// intel_int8_code_prefetch, int8 mode 2-3%; at 4 bits it was 8-13% slower (docs/benchmarks.md,
/// "Spread prefetch").
inline constexpr code_prefetch intel_int8_low_bits_prefetch{0, SQZ_INT8_LOW_BITS_PREFETCH_L2_INTEL};

template <class T>
struct cpu_matrix_view {
    std::size_t rows = 0;
    std::size_t cols = 0;
    int bits = 1;
    bool tiled = false;          ///< 1..4 bits: the tile layout; 5..8 bits: canonical row streams
    std::size_t tiles = 0;       ///< tiles per row (tiled layout)
    std::size_t row_bytes = 0;   ///< bytes of codes per row
    std::size_t tile_bytes = 0;  ///< tiled layout: bytes per tile (32 * bits)

    /// Tiled layout: tile t of `row` is at row_tiles(row) + t * tile_stride() (cpu_layout.hpp).
    const std::uint8_t* row_tiles(std::size_t row) const noexcept {
        return codes + cpu_layout::row_offset(row, row_bytes, tile_bytes);
    }
    std::size_t tile_stride() const noexcept { return cpu_layout::tile_stride(tile_bytes); }
    const std::uint8_t* codes = nullptr;
    std::size_t code_bytes = 0;  ///< bytes of codes as stored (row groups padded to four rows)
    const T* lut = nullptr;      ///< rows x lut_stride
    std::size_t lut_stride = 0;  ///< 16 for the tiled layout (zero-padded), 2^bits otherwise
    const std::uint8_t* exact_tables = nullptr;  ///< float, tiled: cpu_layout::fill_exact_table, 64 bytes per row
    const std::uint8_t* u7 = nullptr;      ///< int8 mode LUT, rows x lut_stride
    const T* int8_lo = nullptr;
    const T* int8_scale = nullptr;
    /// CSR of the sparse part; null when it is empty. Column indices are uint16 when the matrix has
    /// at most 65536 columns (col16), int32 otherwise; values as val_type says (T or uint16 patterns).
    const std::int32_t* row_ptr = nullptr;
    const void* col = nullptr;
    bool col16 = false;
    const void* val = nullptr;
    sparse_value_type val_type = sparse_value_type::scalar;
    /// The kernels' choices for Intel (cpu_is_intel, set by cpu_matrix::view): the code prefetch of
    /// intel_exact_code_prefetch and intel_int8_code_prefetch instead of the default's (all constants
    /// in the kernels, a branch between them), and the 4-bit int8_tile kernel without its narrow form,
    /// which was 8-13% slower there (docs/benchmarks.md, "An Intel host"). The tests set it either way
    /// to run every path on any processor.
    bool intel_tuning = false;

    std::size_t sparse_column_bytes() const noexcept { return col16 ? sizeof(std::uint16_t) : sizeof(std::int32_t); }
    std::size_t sparse_value_bytes() const noexcept {
        return val_type == sparse_value_type::scalar ? sizeof(T) : sizeof(std::uint16_t);
    }
};

/// Zero entries that cpu_matrix stores after the sparse part's columns and values: the AVX2 kernel
/// reads a row's last (nnz mod 8) entries as one vector of eight.
inline constexpr std::size_t sparse_padding = 7;

/// Calls f.template operator()<Col, V>() with the sparse part's storage types (Col = std::uint16_t or
/// std::int32_t, V its sparse_value_type) as constants, so that a kernel picks its storage once per
/// call and its inner loops do not branch on it.
template <class T, class F>
decltype(auto) with_sparse_storage(const cpu_matrix_view<T>& m, F&& f) {
    const auto values = [&]<class Col>() -> decltype(auto) {
        switch (m.val_type) {
            case sparse_value_type::fp16: return f.template operator()<Col, sparse_value_type::fp16>();
            case sparse_value_type::bf16: return f.template operator()<Col, sparse_value_type::bf16>();
            default: return f.template operator()<Col, sparse_value_type::scalar>();
        }
    };
    if (m.col16) return values.template operator()<std::uint16_t>();
    return values.template operator()<std::int32_t>();
}

/// How many rows ahead of the rows being multiplied the kernels ask for the sparse part's entries.
inline constexpr std::size_t sparse_prefetch_rows = SQZ_SPARSE_PREFETCH_ROWS;

/// The sparse part of one row against x. Four independent sums in T, so that a row's few dozen
/// products do not form one chain of dependent additions (which would cost ~10% of the time of a
/// 0.45%-sparse product); a row's sparse part is small, so T's precision is ample.
template <class T, class Col, sparse_value_type V>
double sparse_row_dot(const cpu_matrix_view<T>& m, std::size_t row, const T* x) noexcept {
    const auto* col = static_cast<const Col*>(m.col);
    T sum[4] = {T(0), T(0), T(0), T(0)};
    std::int32_t k = m.row_ptr[row];
    const std::int32_t end = m.row_ptr[row + 1];
    for (; k + 4 <= end; k += 4)
        for (int u = 0; u < 4; ++u) sum[u] += sparse_value<T, V>(m.val, k + u) * x[col[k + u]];
    for (; k < end; ++k) sum[0] += sparse_value<T, V>(m.val, k) * x[col[k]];
    return static_cast<double>((sum[0] + sum[1]) + (sum[2] + sum[3]));
}

/// The same for one row of any storage (the storage is picked per row: these callers spend far more
/// time on the row's dense part).
template <class T>
double sparse_row_dot(const cpu_matrix_view<T>& m, std::size_t row, const T* x) noexcept {
    if (m.row_ptr == nullptr) return 0.0;
    return with_sparse_storage(m, [&]<class Col, sparse_value_type V>() { return sparse_row_dot<T, Col, V>(m, row, x); });
}

/// Asks for the sparse part (column indices and values) of rows [first, end) to be brought into the
/// cache. The sparse pre-pass (avx2::sparse_row_sums) calls it sparse_prefetch_rows rows ahead of
/// the row it computes: the CSR arrays are read in short bursts between long runs of codes, which the
/// hardware prefetcher does not anticipate, and waiting on DRAM for them costs far more than the
/// products themselves.
template <class T>
void prefetch_sparse_rows(const cpu_matrix_view<T>& m, std::size_t first, std::size_t end) noexcept {
    if (m.row_ptr == nullptr || first >= end) return;
    end = std::min(end, m.rows);
    if (first >= end) return;
    const auto begin = static_cast<std::size_t>(m.row_ptr[first]);
    const auto stop = static_cast<std::size_t>(m.row_ptr[end]);
    constexpr std::size_t line = 64;
    const auto* col = static_cast<const char*>(m.col);
    const auto* val = static_cast<const char*>(m.val);
    for (std::size_t b = begin * m.sparse_column_bytes(); b < stop * m.sparse_column_bytes(); b += line)
        __builtin_prefetch(col + b);
    for (std::size_t b = begin * m.sparse_value_bytes(); b < stop * m.sparse_value_bytes(); b += line)
        __builtin_prefetch(val + b);
}

/// Activations quantized per the int8 specification (docs/design.md, reference_backend.hpp), padded
/// with zeros to whole tiles.
template <class T>
struct int8_activation_buffers {
    aligned_vector<std::int8_t> q;        ///< tiles * 256
    std::vector<std::uint8_t> slot_scale; ///< D_b per slot of 32 columns
    /// D_b in both 16-bit halves, per slot: the AVX2 kernels broadcast it (a load, no shuffle) as the
    /// vpmaddwd operand; 4 bytes per slot keep the activations' L1 footprint small.
    std::vector<std::uint32_t> slot_scale_pairs;
    /// q with each tile's eight slots of 32 in the order the AVX-512 int8 kernel reads them
    /// (avx512::int8_slot_order), so that the two slots of a 64-byte step are one plain load; filled
    /// only for that kernel below 4 bits (avx512::order_activations).
    aligned_vector<std::int8_t> q_avx512;
    std::vector<T> tile_scale;            ///< e_t per tile
    double x_hat_sum = 0.0;               ///< sum of the dequantized activations
    bool finite = true;
};

/// Quantizes x (cols entries) for int8 mode (slot_scales = false: int8_tile mode, e_t = a_t / 127 and
/// D_b = 1 in every slot); returns false (and leaves `out` unusable) when x holds a NaN or an infinity, which the
/// callers answer with an exact product. The AVX2 kernels use their own bit-identical version that
/// also fills slot_scale_pairs (cpu_kernels_avx2.hpp).
template <class T>
bool quantize_activations(std::span<const T> x, std::size_t tiles, bool slot_scales, int8_activation_buffers<T>& out) {
    using cpu_layout::slot_columns;
    using cpu_layout::tile_columns;
    const std::size_t n = x.size();
    bool finite = true;
    for (const T v : x) finite &= std::isfinite(v);
    out.finite = finite;
    if (!finite) return false;
    out.q.assign(tiles * tile_columns, 0);
    out.slot_scale.assign(tiles * cpu_layout::slots_per_tile, 0);
    out.tile_scale.assign(tiles, T(0));
    double x_hat_sum = 0.0;
    for (std::size_t t = 0; t < tiles; ++t) {
        const std::size_t begin = t * tile_columns;
        const std::size_t end = std::min(n, begin + tile_columns);
        std::array<T, cpu_layout::slots_per_tile> slot_max{};
        for (std::size_t j = begin; j < end; ++j) {
            T& m = slot_max[(j - begin) / slot_columns];
            m = std::max(m, std::abs(x[j]));
        }
        const T tile_max = *std::max_element(slot_max.begin(), slot_max.end());
        if (!(tile_max >= T(127 * 255) * std::numeric_limits<T>::min())) continue;  // zero (or negligible) tile
        const T unit = slot_scales ? tile_max / T(127 * 255) : tile_max / T(127);
        out.tile_scale[t] = unit;
        std::int64_t tile_sum = 0;
        for (std::size_t s = 0; s < cpu_layout::slots_per_tile; ++s) {
            if (slot_max[s] == T(0) && slot_scales) continue;
            const T multiplier = slot_scales ? std::clamp(std::ceil(T(255) * (slot_max[s] / tile_max)), T(1), T(255)) : T(1);
            const auto d = static_cast<std::uint8_t>(multiplier);
            out.slot_scale[t * cpu_layout::slots_per_tile + s] = d;
            const T step = unit * multiplier;
            const std::size_t slot_begin = begin + s * slot_columns;
            const std::size_t slot_end = std::min(end, slot_begin + slot_columns);
            std::int64_t slot_sum = 0;
            for (std::size_t j = slot_begin; j < slot_end; ++j) {
                const auto level = static_cast<std::int8_t>(std::clamp(std::nearbyint(x[j] / step), T(-127), T(127)));
                out.q[j] = level;
                slot_sum += level;
            }
            tile_sum += slot_sum * d;
        }
        x_hat_sum += static_cast<double>(unit) * static_cast<double>(tile_sum);
    }
    out.x_hat_sum = x_hat_sum;
    return true;
}

namespace portable {

/// The codes of columns [256 t, 256 t + 256) of a row (zero past the end of the row).
template <class T>
void row_chunk_codes(const cpu_matrix_view<T>& m, std::size_t row, std::size_t t,
                     std::array<std::uint8_t, cpu_layout::tile_columns>& codes) {
    if (m.tiled) {
        const std::uint8_t* tile = m.row_tiles(row) + t * m.tile_stride();
        for (std::size_t c = 0; c < cpu_layout::tile_columns; ++c)
            codes[c] = static_cast<std::uint8_t>(cpu_layout::tile_code(tile, m.bits, c));
        return;
    }
    // Canonical stream: 256 codes of b bits are 32 b whole bytes, so chunk t starts on byte 32 b t.
    const std::uint8_t* row_codes = m.codes + row * m.row_bytes;
    const std::size_t first = t * cpu_layout::tile_columns;
    const std::size_t count = std::min(cpu_layout::tile_columns, m.cols - first);
    const std::size_t offset = first * static_cast<std::size_t>(m.bits) / 8;
    codes.fill(0);
    unpack_impl(std::span<const std::uint8_t>(row_codes + offset, m.row_bytes - offset), m.bits, count,
                std::span<std::uint8_t>(codes.data(), count));
}

/// Exact mode, one row: products in T, eight partial sums per 256 columns, tiles summed in double.
template <class T>
T exact_row(const cpu_matrix_view<T>& m, std::size_t row, const T* x) {
    std::array<std::uint8_t, cpu_layout::tile_columns> codes{};
    const T* lut = m.lut + row * m.lut_stride;
    double total = 0.0;
    for (std::size_t t = 0; t < m.tiles; ++t) {
        row_chunk_codes(m, row, t, codes);
        const std::size_t first = t * cpu_layout::tile_columns;
        const std::size_t count = std::min(cpu_layout::tile_columns, m.cols - first);
        std::array<T, 8> partial{};
        for (std::size_t c = 0; c < count; ++c) partial[c % 8] += lut[codes[c]] * x[first + c];
        T tile_sum = 0;
        for (const T p : partial) tile_sum += p;
        total += static_cast<double>(tile_sum);
    }
    return static_cast<T>(total + sparse_row_dot(m, row, x));
}

/// Int8 mode, one row: exact integer dot products per tile, scaled in double.
template <class T>
T int8_row(const cpu_matrix_view<T>& m, std::size_t row, const int8_activation_buffers<T>& a, const T* x) {
    std::array<std::uint8_t, cpu_layout::tile_columns> codes{};
    const std::uint8_t* u7 = m.u7 + row * m.lut_stride;
    double dense = 0.0;
    for (std::size_t t = 0; t < m.tiles; ++t) {
        row_chunk_codes(m, row, t, codes);
        const std::size_t first = t * cpu_layout::tile_columns;
        std::int64_t tile_sum = 0;
        for (std::size_t s = 0; s < cpu_layout::slots_per_tile; ++s) {
            std::int32_t slot_sum = 0;
            for (std::size_t c = s * cpu_layout::slot_columns; c < (s + 1) * cpu_layout::slot_columns; ++c)
                slot_sum += std::int32_t{u7[codes[c]]} * a.q[first + c];
            tile_sum += std::int64_t{slot_sum} * a.slot_scale[t * cpu_layout::slots_per_tile + s];
        }
        dense += static_cast<double>(a.tile_scale[t]) * static_cast<double>(tile_sum);
    }
    return static_cast<T>(static_cast<double>(m.int8_scale[row]) * dense +
                          static_cast<double>(m.int8_lo[row]) * a.x_hat_sum + sparse_row_dot(m, row, x));
}

}  // namespace portable
}  // namespace sqz::detail
