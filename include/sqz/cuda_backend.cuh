// sqz/cuda_backend.cuh - the `cuda` back end (nvcc only; <sqz/sqz.hpp> includes it under nvcc).
//
//   sqz::cuda_matrix a = sqz::prepare<sqz::backend::cuda>(q);     // upload once (2, 3 or 4 bits, float)
//   sqz::matvec<sqz::backend::cuda>(a, x_device, y_device);         // exact mode, fp32 activations
//   sqz::cuda::matvec(a, x_half, y_half, stream);                    // fp16 activations, asynchronous
//   sqz::matvec<sqz::backend::cuda>(q, x_host, y_host);             // one-off: uploads q, x; downloads y
//
// Kernels (see detail/cuda_shared.hpp for the layout and the per-thread arithmetic they share with
// the host tests):
//  - dense: one warp per row, 8 rows per thread block. The block stages 1024 activations at a time in
//    shared memory (converted to float), each warp keeps its row's LUT (<= 16 floats) in shared memory,
//    each lane decodes its 32 codes from Bits coalesced words and accumulates with fused multiply-adds;
//    a butterfly of warp shuffles sums the lanes.
//  - sparse: the nonzeros are split into equal chunks, one thread each, whatever the row lengths
//    (a row with thousands of outliers does not serialize on one thread); two passes combine the
//    partial sums of rows cut by chunk boundaries in a fixed order, so results are deterministic.
// Device memory is owned by device_buffer (RAII); every CUDA error becomes a sqz::cuda_error
// exception, bad arguments a sqz::error.
#pragma once

#if !defined(__CUDACC__)
#error "sqz/cuda_backend.cuh must be compiled by nvcc; from C++ translation units use the cpu back end"
#endif

#include <sqz/backend.hpp>
#include <sqz/detail/cuda_shared.hpp>
#include <sqz/error.hpp>
#include <sqz/quantized_matrix.hpp>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace sqz {

/// A failure reported by the CUDA runtime (no device, out of memory, a failed launch...).
class cuda_error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

namespace cuda {

inline void check(cudaError_t status, const char* what) {
    if (status != cudaSuccess)
        throw cuda_error(std::string("sqz::cuda: ") + what + ": " + cudaGetErrorName(status) + " (" +
                         cudaGetErrorString(status) + ")");
}

/// Number of CUDA devices; 0 when there is none or no driver (never throws).
inline int device_count() noexcept {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
        (void)cudaGetLastError();  // clear the sticky error
        return 0;
    }
    return count;
}

/// Device memory for `count` values of T, freed by the destructor. Move-only.
template <class T>
class device_buffer {
public:
    device_buffer() = default;
    explicit device_buffer(std::size_t count) : size_(count) {
        if (count > 0) check(cudaMalloc(reinterpret_cast<void**>(&data_), count * sizeof(T)), "cudaMalloc");
    }
    explicit device_buffer(std::span<const T> host) : device_buffer(host.size()) { upload(host); }
    ~device_buffer() { release(); }
    device_buffer(device_buffer&& other) noexcept
        : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
    device_buffer& operator=(device_buffer&& other) noexcept {
        if (this != &other) {
            release();
            data_ = std::exchange(other.data_, nullptr);
            size_ = std::exchange(other.size_, 0);
        }
        return *this;
    }
    device_buffer(const device_buffer&) = delete;
    device_buffer& operator=(const device_buffer&) = delete;

    T* data() noexcept { return data_; }
    const T* data() const noexcept { return data_; }
    std::size_t size() const noexcept { return size_; }
    std::span<T> span() noexcept { return {data_, size_}; }
    std::span<const T> span() const noexcept { return {data_, size_}; }

    void upload(std::span<const T> host) {
        detail::require(host.size() == size_, "sqz::cuda::device_buffer::upload: ", host.size(),
                        " values for a buffer of ", size_);
        if (size_ > 0) check(cudaMemcpy(data_, host.data(), size_ * sizeof(T), cudaMemcpyHostToDevice), "upload");
    }
    void download(std::span<T> host) const {
        detail::require(host.size() == size_, "sqz::cuda::device_buffer::download: room for ", host.size(),
                        " values, the buffer holds ", size_);
        if (size_ > 0) check(cudaMemcpy(host.data(), data_, size_ * sizeof(T), cudaMemcpyDeviceToHost), "download");
    }

private:
    void release() noexcept {
        if (data_ != nullptr) (void)cudaFree(data_);
        data_ = nullptr;
        size_ = 0;
    }

    T* data_ = nullptr;
    std::size_t size_ = 0;
};

}  // namespace cuda

/// A float quantized matrix of 2, 3 or 4 bits uploaded in the cuda back end's layout. One product at
/// a time per matrix: the sparse kernel's scratch lives here.
class cuda_matrix {
public:
    using backend = sqz::backend::cuda;
    using scalar = float;

    /// Sparse nonzeros per thread of the sparse kernel.
    static constexpr std::int32_t sparse_chunk = 32;

    template <int Bits>
    explicit cuda_matrix(const quantized_matrix<float, Bits>& q)
        : rows_(static_cast<int>(q.rows())), cols_(static_cast<int>(q.cols())), bits_(q.bits()) {
        detail::require(backend_traits<sqz::backend::cuda>::supports_bits(bits_), "sqz::prepare<cuda>: bits = ", bits_,
                        " is not supported; the cuda back end has kernels for 2, 3 and 4 bits");
        detail::require(q.rows() <= std::numeric_limits<int>::max() / 2, "sqz::prepare<cuda>: rows = ", q.rows(),
                        " is too large");
        blocks_ = static_cast<int>(detail::cuda_layout::blocks_for(static_cast<std::size_t>(cols_)));
        const auto words = detail::cuda_layout::build_words(q);
        words_ = cuda::device_buffer<std::uint32_t>(std::span<const std::uint32_t>(words));
        lut_ = cuda::device_buffer<float>(std::span<const float>(q.lut().data(), static_cast<std::size_t>(q.lut().size())));
        const auto& s = q.sparse();
        nnz_ = static_cast<std::int32_t>(s.nonZeros());
        if (nnz_ > 0) {
            row_ptr_ = cuda::device_buffer<std::int32_t>(
                std::span<const std::int32_t>(s.outerIndexPtr(), static_cast<std::size_t>(rows_) + 1));
            col_ = cuda::device_buffer<std::int32_t>(std::span<const std::int32_t>(s.innerIndexPtr(), static_cast<std::size_t>(nnz_)));
            val_ = cuda::device_buffer<float>(std::span<const float>(s.valuePtr(), static_cast<std::size_t>(nnz_)));
            chunks_ = (nnz_ + sparse_chunk - 1) / sparse_chunk;
            first_row_ = cuda::device_buffer<int>(static_cast<std::size_t>(chunks_));
            last_row_ = cuda::device_buffer<int>(static_cast<std::size_t>(chunks_));
            head_ = cuda::device_buffer<float>(static_cast<std::size_t>(chunks_));
            tail_ = cuda::device_buffer<float>(static_cast<std::size_t>(chunks_));
        }
        y32_ = cuda::device_buffer<float>(static_cast<std::size_t>(rows_));
    }

    Eigen::Index rows() const noexcept { return rows_; }
    Eigen::Index cols() const noexcept { return cols_; }
    int bits() const noexcept { return bits_; }
    Eigen::Index sparse_nonzeros() const noexcept { return nnz_; }
    /// Bytes a product reads from device memory for the matrix (codes, LUT, sparse part).
    std::size_t bytes_read() const noexcept {
        return words_.size() * 4 + lut_.size() * 4 + static_cast<std::size_t>(nnz_) * 8 +
               (nnz_ > 0 ? row_ptr_.size() * 4 : 0);
    }

private:
    template <class Act>
    friend void run_cuda_product(const cuda_matrix&, const Act*, float*, cudaStream_t);
    template <class Act>
    friend void run_cuda_product_to(const cuda_matrix&, const Act*, Act*, cudaStream_t);

    int rows_ = 0;
    int cols_ = 0;
    int bits_ = 2;
    int blocks_ = 0;
    std::int32_t nnz_ = 0;
    int chunks_ = 0;
    cuda::device_buffer<std::uint32_t> words_;
    cuda::device_buffer<float> lut_;
    cuda::device_buffer<std::int32_t> row_ptr_;
    cuda::device_buffer<std::int32_t> col_;
    cuda::device_buffer<float> val_;
    mutable cuda::device_buffer<int> first_row_;
    mutable cuda::device_buffer<int> last_row_;
    mutable cuda::device_buffer<float> head_;
    mutable cuda::device_buffer<float> tail_;
    mutable cuda::device_buffer<float> y32_;
};

namespace detail::cuda_kernels {

inline constexpr int rows_per_block = 8;
inline constexpr int threads_per_block = rows_per_block * cuda_layout::warp_size;

__host__ __device__ inline float to_float(float v) { return v; }
__host__ __device__ inline float to_float(__half v) { return __half2float(v); }

template <class Act>
struct activation_loader {
    const Act* x;
    __host__ __device__ float operator()(std::int32_t j) const { return to_float(x[j]); }
};

template <int Bits, class Act>
__global__ void __launch_bounds__(threads_per_block)
    dense(const std::uint32_t* __restrict__ words, const float* __restrict__ lut, const Act* __restrict__ x,
          float* __restrict__ y, int rows, int cols, int blocks) {
    constexpr int levels = 1 << Bits;
    constexpr int block_columns = cuda_layout::block_columns;
    __shared__ float x_block[block_columns];
    __shared__ float luts[rows_per_block][levels];
    const int warp = static_cast<int>(threadIdx.x) / cuda_layout::warp_size;
    const int lane = static_cast<int>(threadIdx.x) % cuda_layout::warp_size;
    const int row = static_cast<int>(blockIdx.x) * rows_per_block + warp;
    const bool active = row < rows;
    if (active && lane < levels) luts[warp][lane] = lut[static_cast<std::size_t>(row) * levels + lane];
    const std::size_t row_words = static_cast<std::size_t>(blocks) * Bits * cuda_layout::warp_size;
    const std::uint32_t* row_base = words + static_cast<std::size_t>(active ? row : 0) * row_words;
    // The codes of block b + 1 are loaded into registers while block b is staged and multiplied, so
    // each warp keeps a block's worth of loads in flight.
    std::uint32_t next[Bits] = {};
    const auto load_block = [&](int b) {
#pragma unroll
        for (int i = 0; i < Bits; ++i)
            next[i] = __ldg(row_base + (static_cast<std::size_t>(b) * Bits + i) * cuda_layout::warp_size + lane);
    };
    if (active && blocks > 0) load_block(0);
    float sum = 0.0f;
    for (int b = 0; b < blocks; ++b) {
        std::uint32_t w[Bits];
#pragma unroll
        for (int i = 0; i < Bits; ++i) w[i] = next[i];
        if (active && b + 1 < blocks) load_block(b + 1);
        __syncthreads();  // the previous block's activations are no longer read
        for (int k = static_cast<int>(threadIdx.x); k < block_columns; k += threads_per_block) {
            const int j = b * block_columns + k;
            x_block[k] = j < cols ? to_float(x[j]) : 0.0f;
        }
        __syncthreads();
        if (active) sum = cuda_layout::lane_block_dot<Bits>(w, luts[warp], x_block, lane, sum);
    }
    if (!active) return;
#pragma unroll
    for (int offset = cuda_layout::warp_size / 2; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    if (lane == 0) y[row] = sum;
}

template <class Act>
__global__ void sparse_first(const std::int32_t* row_ptr, const std::int32_t* col, const float* val, int rows,
                             std::int32_t nnz, std::int32_t chunk, int chunks, const Act* x, float* y, int* first_row,
                             int* last_row, float* head, float* tail) {
    const int t = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
    if (t >= chunks) return;
    cuda_layout::sparse_first_pass(t, row_ptr, col, val, rows, nnz, chunk, activation_loader<Act>{x}, y, first_row,
                                   last_row, head, tail);
}

// Templates so that the header can be included by several translation units.
template <class Index = std::int32_t>
__global__ void sparse_second(const Index* row_ptr, std::int32_t nnz, std::int32_t chunk, int chunks,
                                     const int* last_row, const float* head, const float* tail, float* y) {
    const int t = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
    if (t >= chunks) return;
    cuda_layout::sparse_second_pass(t, chunks, row_ptr, nnz, chunk, last_row, head, tail, y);
}

template <class Out>
__global__ void store_rounded(const float* y32, Out* y, int rows) {
    const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
    if (i < rows) y[i] = static_cast<Out>(y32[i]);
}

inline unsigned grid_for(long long work, int per_block) {
    return static_cast<unsigned>((work + per_block - 1) / per_block);
}

}  // namespace detail::cuda_kernels

/// Launches y32 = (D + S) x on `stream` (asynchronous). x and y32 are device pointers.
template <class Act>
void run_cuda_product(const cuda_matrix& a, const Act* x, float* y32, cudaStream_t stream) {
    namespace k = detail::cuda_kernels;
    if (a.rows_ == 0) return;
    const unsigned grid = k::grid_for(a.rows_, k::rows_per_block);
    switch (a.bits_) {
        case 2:
            k::dense<2, Act><<<grid, k::threads_per_block, 0, stream>>>(a.words_.data(), a.lut_.data(), x, y32, a.rows_,
                                                                       a.cols_, a.blocks_);
            break;
        case 3:
            k::dense<3, Act><<<grid, k::threads_per_block, 0, stream>>>(a.words_.data(), a.lut_.data(), x, y32, a.rows_,
                                                                       a.cols_, a.blocks_);
            break;
        default:
            k::dense<4, Act><<<grid, k::threads_per_block, 0, stream>>>(a.words_.data(), a.lut_.data(), x, y32, a.rows_,
                                                                       a.cols_, a.blocks_);
            break;
    }
    cuda::check(cudaGetLastError(), "dense kernel launch");
    if (a.nnz_ == 0) return;
    const unsigned sparse_grid = k::grid_for(a.chunks_, 256);
    k::sparse_first<Act><<<sparse_grid, 256, 0, stream>>>(a.row_ptr_.data(), a.col_.data(), a.val_.data(), a.rows_,
                                                           a.nnz_, cuda_matrix::sparse_chunk, a.chunks_, x, y32,
                                                           a.first_row_.data(), a.last_row_.data(), a.head_.data(),
                                                           a.tail_.data());
    cuda::check(cudaGetLastError(), "sparse kernel launch");
    k::sparse_second<std::int32_t><<<sparse_grid, 256, 0, stream>>>(a.row_ptr_.data(), a.nnz_, cuda_matrix::sparse_chunk, a.chunks_,
                                                      a.last_row_.data(), a.head_.data(), a.tail_.data(), y32);
    cuda::check(cudaGetLastError(), "sparse kernel launch");
}

/// fp16 output: accumulate in the matrix's float scratch, then round once.
template <class Act>
void run_cuda_product_to(const cuda_matrix& a, const Act* x, Act* y, cudaStream_t stream) {
    if constexpr (std::is_same_v<Act, float>) {
        run_cuda_product(a, x, y, stream);
    } else {
        run_cuda_product(a, x, a.y32_.data(), stream);
        if (a.rows_ == 0) return;
        detail::cuda_kernels::store_rounded<Act><<<detail::cuda_kernels::grid_for(a.rows_, 256), 256, 0, stream>>>(a.y32_.data(), y,
                                                                                                            a.rows_);
        cuda::check(cudaGetLastError(), "store kernel launch");
    }
}

namespace cuda {

/// y = (D + S) x with device pointers, fp32 activations; asynchronous on `stream`.
inline void matvec(const cuda_matrix& a, std::span<const float> x, std::span<float> y, cudaStream_t stream = nullptr) {
    sqz::detail::check_matvec_sizes("sqz::cuda::matvec", a.rows(), a.cols(), x.size(), y.size());
    run_cuda_product_to<float>(a, x.data(), y.data(), stream);
}

/// y = (D + S) x with device pointers, fp16 activations and result (float accumulation); asynchronous.
inline void matvec(const cuda_matrix& a, std::span<const __half> x, std::span<__half> y, cudaStream_t stream = nullptr) {
    sqz::detail::check_matvec_sizes("sqz::cuda::matvec", a.rows(), a.cols(), x.size(), y.size());
    run_cuda_product_to<__half>(a, x.data(), y.data(), stream);
}

}  // namespace cuda

template <>
struct backend_impl<backend::cuda> {
    static void check_mode(const matvec_options& options, const char* where) {
        detail::require(options.mode == numeric_mode::exact, where, ": mode = ", to_string(options.mode),
                        "; the cuda back end computes exact (fp32 or fp16 activation) products only");
    }

    template <class T, int Bits>
    static cuda_matrix prepare(const quantized_matrix<T, Bits>& q) {
        static_assert(std::is_same_v<T, float>, "sqz: the cuda back end takes float matrices");
        return cuda_matrix(q);
    }

    /// x and y in device memory; waits for the result so that errors surface here.
    static void matvec(const cuda_matrix& a, std::span<const float> x, std::span<float> y, const matvec_options& options) {
        check_mode(options, "sqz::matvec<cuda>");
        cuda::matvec(a, x, y);
        cuda::check(cudaDeviceSynchronize(), "matvec");
    }

    /// x and y on the host: uploads the matrix and x, downloads y.
    template <class T, int Bits>
    static void matvec(const quantized_matrix<T, Bits>& q, std::span<const T> x, std::span<T> y,
                       const matvec_options& options) {
        static_assert(std::is_same_v<T, float>, "sqz: the cuda back end takes float matrices");
        detail::check_matvec_sizes("sqz::matvec<cuda>", q.rows(), q.cols(), x.size(), y.size());
        check_mode(options, "sqz::matvec<cuda>");
        const cuda_matrix a(q);
        cuda::device_buffer<float> xd(x);
        cuda::device_buffer<float> yd(y.size());
        matvec(a, xd.span(), yd.span(), options);
        yd.download(y);
    }

    /// X and Y on the host (column-major, 1..16 columns): one device product per column.
    static void matmul(const cuda_matrix& a, matrix_cref<float> x, matrix_ref<float> y, const matvec_options& options) {
        detail::check_matmul_sizes("sqz::matmul<cuda>", a.rows(), a.cols(), x.rows(), x.cols(), y.rows(), y.cols(),
                                   backend_traits<backend::cuda>::max_matmul_columns);
        check_mode(options, "sqz::matmul<cuda>");
        std::vector<float> column(static_cast<std::size_t>(a.cols()));
        std::vector<float> result(static_cast<std::size_t>(a.rows()));
        cuda::device_buffer<float> xd(column.size());
        cuda::device_buffer<float> yd(result.size());
        for (Eigen::Index c = 0; c < x.cols(); ++c) {
            for (Eigen::Index j = 0; j < a.cols(); ++j) column[static_cast<std::size_t>(j)] = x(j, c);
            xd.upload(column);
            matvec(a, xd.span(), yd.span(), options);
            yd.download(result);
            for (Eigen::Index i = 0; i < a.rows(); ++i) y(i, c) = result[static_cast<std::size_t>(i)];
        }
    }

    template <class T, int Bits>
    static void matmul(const quantized_matrix<T, Bits>& q, matrix_cref<T> x, matrix_ref<T> y, const matvec_options& options) {
        static_assert(std::is_same_v<T, float>, "sqz: the cuda back end takes float matrices");
        detail::check_matmul_sizes("sqz::matmul<cuda>", q.rows(), q.cols(), x.rows(), x.cols(), y.rows(), y.cols(),
                                   backend_traits<backend::cuda>::max_matmul_columns);
        matmul(cuda_matrix(q), x, y, options);
    }
};

}  // namespace sqz
