// sqz/detail/cuda_shared.hpp - the CUDA back end's layout and per-thread arithmetic, shared between
// host and device.
//
// Everything here is plain C++ marked __host__ __device__ under nvcc, so the ordinary (g++) test
// suite runs exactly the code the kernels run: the layout builder, the code extraction, one lane's
// share of a row, the warp's reduction tree and both passes of the sparse kernel. The kernels in
// cuda_backend.cuh only add thread indexing, shared memory and memory transfers around them.
//
// Dense layout ("lane-interleaved blocks"): each row is cut into blocks of 1024 columns (the last one
// padded with code 0). In block b, lane l (0..31) of a warp owns the 32 columns b*1024 + l + 32*m,
// m = 0..31, and their codes form a little-endian stream of 32*Bits bits held in Bits 32-bit words.
// Word w of lane l is stored at index (b * Bits + w) * 32 + l of the row, so a warp loads each word
// with one coalesced 128-byte access, and the activations it needs for step m, x[b*1024 + 32*m + l],
// are 32 consecutive values (conflict-free in shared memory).
#pragma once

#include <sqz/error.hpp>
#include <sqz/pack.hpp>
#include <sqz/quantized_matrix.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#if defined(__CUDACC__)
#define SQZ_HOST_DEVICE __host__ __device__
#else
#define SQZ_HOST_DEVICE
#endif

namespace sqz::detail::cuda_layout {

inline constexpr int warp_size = 32;
inline constexpr int block_columns = 1024;  // 32 lanes x 32 codes

constexpr std::size_t blocks_for(std::size_t columns) noexcept { return (columns + block_columns - 1) / block_columns; }

/// 32-bit words per row: Bits words per lane per block.
constexpr std::size_t row_words(std::size_t columns, int bits) noexcept {
    return blocks_for(columns) * static_cast<std::size_t>(bits) * warp_size;
}

/// a * b + c rounded once, on the host as on the device.
SQZ_HOST_DEVICE inline float fused_multiply_add(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
    return fmaf(a, b, c);
#else
    return std::fma(a, b, c);
#endif
}

/// Code m (0..31) of a lane's Bits-word stream. With Bits and m known at compile time (unrolled
/// loops) the word index and shifts fold to constants.
template <int Bits>
SQZ_HOST_DEVICE inline unsigned code_from_words(const std::uint32_t (&words)[Bits], int m) {
    const int bit = m * Bits;
    const int word = bit / 32;
    const int shift = bit % 32;
    unsigned value = words[word] >> shift;
    if (shift + Bits > 32) value |= words[word + 1] << (32 - shift);
    return value & ((1u << Bits) - 1u);
}

/// The lane-interleaved words of a whole matrix (rows * row_words(cols, bits)), built on the host
/// from the canonical packing.
template <class T, int B>
std::vector<std::uint32_t> build_words(const quantized_matrix<T, B>& q) {
    const int bits = q.bits();
    const auto cols = static_cast<std::size_t>(q.cols());
    const std::size_t blocks = blocks_for(cols);
    const std::size_t per_row = row_words(cols, bits);
    std::vector<std::uint32_t> words(static_cast<std::size_t>(q.rows()) * per_row, 0);
    std::vector<std::uint8_t> codes(blocks * block_columns, 0);
    for (Eigen::Index i = 0; i < q.rows(); ++i) {
        unpack(q.row_codes(i), bits, cols, std::span<std::uint8_t>(codes.data(), cols));
        std::uint32_t* row = words.data() + static_cast<std::size_t>(i) * per_row;
        for (std::size_t b = 0; b < blocks; ++b)
            for (int lane = 0; lane < warp_size; ++lane)
                for (int m = 0; m < warp_size; ++m) {
                    const unsigned code = codes[b * block_columns + static_cast<std::size_t>(lane + warp_size * m)];
                    const int bit = m * bits;
                    for (int k = 0; k < bits; ++k)
                        if ((code >> k) & 1u) {
                            const int stream_bit = bit + k;
                            row[(b * static_cast<std::size_t>(bits) + static_cast<std::size_t>(stream_bit / 32)) * warp_size +
                                static_cast<std::size_t>(lane)] |= 1u << (stream_bit % 32);
                        }
                }
    }
    return words;
}

/// One lane's share of one block: sum += LUT[code_m] * x_block[lane + 32 m] for m = 0..31, as fused
/// multiply-adds (rounded identically on host and device).
template <int Bits>
SQZ_HOST_DEVICE inline float lane_block_dot(const std::uint32_t (&words)[Bits], const float* lut, const float* x_block,
                                            int lane, float sum) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int m = 0; m < warp_size; ++m)
        sum = fused_multiply_add(lut[code_from_words<Bits>(words, m)], x_block[lane + warp_size * m], sum);
    return sum;
}

/// The warp's butterfly reduction (__shfl_xor_sync with offsets 16, 8, 4, 2, 1), written for 32
/// values on the host: lane 0's result, in the order the device adds.
SQZ_HOST_DEVICE inline float butterfly_sum_lane0(float (&lanes)[warp_size]) {
    for (int offset = warp_size / 2; offset > 0; offset /= 2) {
        float next[warp_size];
        for (int l = 0; l < warp_size; ++l) next[l] = lanes[l] + lanes[l ^ offset];
        for (int l = 0; l < warp_size; ++l) lanes[l] = next[l];
    }
    return lanes[0];
}

// ---- the sparse part: a balanced split of the nonzeros, deterministic ----
//
// The nnz nonzeros are cut into chunks of `chunk` consecutive entries, one thread each, whatever the
// rows. Pass 1: a thread adds each row segment that lies entirely inside its chunk straight into y
// (no other thread touches that row) and stores the partial sums of the segments cut by its chunk's
// ends: head[t] for the first row of the chunk, tail[t] for the last. Pass 2: the chunk in which a cut
// row starts adds that row's partial sums, its own tail then the following chunks' heads in order,
// and adds the total into y. Every nonzero is counted once and the order of the additions is fixed,
// so the result does not depend on scheduling.

/// The row holding nonzero k (0 <= k < nnz): the last row r with row_ptr[r] <= k (empty rows skipped).
SQZ_HOST_DEVICE inline int row_of_nonzero(const std::int32_t* row_ptr, int rows, std::int32_t k) {
    int low = 0;  // row_ptr[low] <= k
    int high = rows;  // row_ptr[high] = nnz > k
    while (high - low > 1) {
        const int mid = low + (high - low) / 2;
        if (row_ptr[mid] <= k)
            low = mid;
        else
            high = mid;
    }
    return low;
}

template <class LoadX>
SQZ_HOST_DEVICE inline void sparse_first_pass(int t, const std::int32_t* row_ptr, const std::int32_t* col, const float* val,
                                              int rows, std::int32_t nnz, std::int32_t chunk, LoadX x, float* y,
                                              int* first_row, int* last_row, float* head, float* tail) {
    const std::int32_t k0 = t * chunk;
    const std::int32_t k1 = k0 + chunk < nnz ? k0 + chunk : nnz;
    int r = row_of_nonzero(row_ptr, rows, k0);
    first_row[t] = r;
    head[t] = 0.0f;
    tail[t] = 0.0f;
    std::int32_t k = k0;
    bool first = true;
    for (;;) {
        const std::int32_t end = k1 < row_ptr[r + 1] ? k1 : row_ptr[r + 1];
        float sum = 0.0f;
        for (; k < end; ++k) sum = fused_multiply_add(val[k], x(col[k]), sum);
        const bool inside = row_ptr[r] >= k0 && row_ptr[r + 1] <= k1;
        if (inside) {
            y[r] += sum;
        } else {
            if (first) head[t] = sum;
            if (end == k1) tail[t] = sum;
        }
        if (end == k1) {
            last_row[t] = r;
            return;
        }
        first = false;
        do ++r;
        while (row_ptr[r + 1] == row_ptr[r]);  // the next row with a nonzero
    }
}

SQZ_HOST_DEVICE inline void sparse_second_pass(int t, int chunks, const std::int32_t* row_ptr, std::int32_t nnz,
                                               std::int32_t chunk, const int* last_row, const float* head,
                                               const float* tail, float* y) {
    const std::int32_t k0 = t * chunk;
    const std::int32_t k1 = k0 + chunk < nnz ? k0 + chunk : nnz;
    const int r = last_row[t];
    if (!(row_ptr[r] >= k0 && row_ptr[r + 1] > k1)) return;  // chunk t does not start a cut row
    float sum = tail[t];
    for (int next = t + 1; next < chunks; ++next) {
        sum += head[next];
        const std::int32_t next_end = (next + 1) * chunk < nnz ? (next + 1) * chunk : nnz;
        if (row_ptr[r + 1] <= next_end) break;
    }
    y[r] += sum;
}

}  // namespace sqz::detail::cuda_layout
