// sqz/detail/cpu_kernels_avx512.hpp - AVX-512 kernels of the cpu back end (float, 1..4 bits).
//
// They read the same tiles as the AVX2 kernels (cpu_layout.hpp) and replace their decoders, which
// are bound by the shuffle pipes, with wider lookups:
//  - exact mode: vpermps on 512-bit registers looks up 16 floats at once from bits 0-3 of each
//    32-bit lane, through the row's LUT (cpu_matrix_view::lut) held in one register with its 2^Bits
//    entries repeated to 16, so the bits above a code in its lane are ignored. A 64-byte chunk of a
//    tile shifted right by m code widths gives step m (2 bits: loads at byte offsets 0-3 and shifts
//    by 0, 2, 4, 6): one vpermps and at most one shift per 16 weights, x permuted once per call into
//    that order (cpu_layout::exact_column_512). At 3 bits the second chunk is V_2 with the codes of
//    slots 6 and 7, gathered from the spare bits (two vpternlogd). The four rows of a layout group
//    are decoded together, so each activation vector is loaded once for four rows (32 registers
//    hold four LUTs, eight accumulators and the codes). Products are fp32 FMAs; every 4 tiles (1024
//    columns) of a row are added into a double accumulator, as in the AVX2 kernel.
//  - int8 mode: vpermb (VBMI) looks up 64 weights at once through the row's 7-bit LUT repeated
//    across the register (so, again, only bits 0..Bits-1 of each code byte count: no masks), two
//    slots per register (the two 32-byte halves), vpmaddubsw multiplies them with the activations,
//    and vpdpwssd (VNNI) applies the slot scales D_b and accumulates in one instruction. Below 4
//    bits the activations are reordered once per call so that a step's two slots are one 64-byte
//    load (int8_activation_buffers::q_avx512; at 4 bits that form was slower from DRAM). At 3 bits
//    slots 4-7 (V_2 and the codes gathered from the spare bits) take 256-bit steps, added to the low
//    half, so no insert joins them. The two halves are added per tile, which gives exactly the AVX2
//    kernel's eight 32-bit sums (integer sums do not depend on their order), converted and scaled the
//    same way: the results are bit-identical to the AVX2 kernel's.
// Both process the four rows of a layout group together as the AVX2 kernels do; the sparse part,
// the activation quantization and the code prefetch are the AVX2 ones (cpu_kernels_avx2.hpp), except
// that at 4 bits the int8 kernel adds a group's sparse part itself, one step of eight entries per
// tile (avx2::group_sparse, with mask registers: masked_sparse_entries), and that on Intel both
// kernels (the exact one at 3 and 4 bits) spread the code prefetch over a tile's steps
// (avx2::prefetch_spread) instead of asking for a tile's lines before them.
#pragma once

#include <sqz/detail/cpu_features.hpp>
#include <sqz/detail/cpu_kernels.hpp>
#include <sqz/detail/cpu_kernels_avx2.hpp>
#include <sqz/detail/cpu_layout.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#if SQZ_HAVE_X86_SIMD
#include <immintrin.h>

// The warnings of GCC bug 105593 are off for the kernels below (cpu_features.hpp).
SQZ_AVX512_WARNINGS_OFF

namespace sqz::detail::avx512 {

// Zero-masked forms with a full mask, which compile to the same instructions as the unmasked ones:
// GCC 12 implements the unmasked ones (and the 512/256-bit casts) with a self-initialized operand
// (see SQZ_AVX512_WARNINGS_OFF above); these helpers keep the kernels free of most of them.
SQZ_AVX512_INLINE __m512 permute_floats(__m512i index, __m512 table) noexcept {
    return _mm512_maskz_permutexvar_ps(0xffff, index, table);
}
SQZ_AVX512_INLINE __m512i permute_bytes(__m512i index, __m512i table) noexcept {
    return _mm512_maskz_permutexvar_epi8(~__mmask64{0}, index, table);
}
SQZ_AVX512_INLINE __m512i broadcast_16_bytes(const std::uint8_t* p) noexcept {
    return _mm512_maskz_broadcast_i32x4(0xffff, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
SQZ_AVX512_INLINE __m512i broadcast_32_bytes(const std::uint8_t* p) noexcept {
    return _mm512_maskz_broadcast_i64x4(0xff, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
SQZ_AVX512_INLINE __m256d low_half(__m512d v) noexcept { return _mm512_maskz_extractf64x4_pd(0xff, v, 0); }
SQZ_AVX512_INLINE __m256d high_half(__m512d v) noexcept { return _mm512_maskz_extractf64x4_pd(0xff, v, 1); }
SQZ_AVX512_INLINE __m256 low_half(__m512 v) noexcept { return _mm256_castpd_ps(low_half(_mm512_castps_pd(v))); }
SQZ_AVX512_INLINE __m256 high_half(__m512 v) noexcept { return _mm256_castpd_ps(high_half(_mm512_castps_pd(v))); }
SQZ_AVX512_INLINE __m256i low_half(__m512i v) noexcept { return _mm512_maskz_extracti64x4_epi64(0xff, v, 0); }
SQZ_AVX512_INLINE __m256i high_half(__m512i v) noexcept { return _mm512_maskz_extracti64x4_epi64(0xff, v, 1); }
/// low in bytes 0-31, high in bytes 32-63.
SQZ_AVX512_INLINE __m512i join_halves(__m256i low, __m256i high) noexcept {
    const __m512i wide = _mm512_castsi256_si512(low);
    return _mm512_mask_inserti64x4(wide, 0xff, wide, high, 1);
}
SQZ_AVX512_INLINE double horizontal_sum(__m512d v) noexcept { return avx2::horizontal_sum(_mm256_add_pd(low_half(v), high_half(v))); }

/// A row's float LUT in one register, its 2^Bits entries repeated to 16 (m.lut is zero-padded).
template <int Bits>
SQZ_AVX512_INLINE __m512 load_float_lut(const float* lut16) noexcept {
    const __m512 lut = _mm512_loadu_ps(lut16);
    if constexpr (Bits == 4) return lut;
    const __m512i entry = _mm512_and_si512(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32((1 << Bits) - 1));
    return permute_floats(entry, lut);
}

/// The codes of slots 6 and 7 of a 3-bit tile (bit k of each in bits 3 and 7 of V_k) as V_3 would
/// hold them: slot 6 in bits 0-2 of each byte, slot 7 in bits 4-6; bits 3 and 7 hold other bits,
/// which the lookups ignore.
SQZ_AVX512_INLINE __m256i spare_bit_codes(const std::uint8_t* tile) noexcept {
    const auto* v = reinterpret_cast<const __m256i*>(tile);
    constexpr int select = 0xca;  // a ? b : c, bit by bit
    const __m256i bits01 = _mm256_ternarylogic_epi32(_mm256_set1_epi8(0x11), _mm256_srli_epi16(_mm256_load_si256(v), 3),
                                                     _mm256_srli_epi16(_mm256_load_si256(v + 1), 2), select);
    return _mm256_ternarylogic_epi32(_mm256_set1_epi8(0x33), bits01, _mm256_srli_epi16(_mm256_load_si256(v + 2), 1), select);
}

/// Chunk z (64 bytes) of a 3- or 4-bit tile: V_2z | V_2z+1, at 3 bits V_2 | the codes of slots 6
/// and 7 for z = 1. (A 3-bit tile is 96 bytes, so every other tile's chunk 0 crosses a cache line;
/// two 32-byte loads and an insert instead were 5% slower.)
template <int Bits>
SQZ_AVX512_INLINE __m512i chunk_codes(const std::uint8_t* tile, int z) noexcept {
    if (Bits == 4 || z == 0) return _mm512_loadu_si512(tile + 64 * z);
    return join_halves(_mm256_load_si256(reinterpret_cast<const __m256i*>(tile + 64)), spare_bit_codes(tile));
}

/// Makes the compiler keep `value` in a register: with -mtune=znver4 GCC otherwise folds the load of
/// a code chunk into each of its shifts and the activation load into each row's FMA, repeating the
/// loads (15% slower from L2).
template <class V>
SQZ_AVX512_INLINE void in_register(V& value) noexcept {
    __asm__("" : "+v"(value));
}

/// Step `shift` of each row's code chunk looked up through the row's LUT, handed to consume(n, w).
/// (Kernel helpers are functions, or lambdas marked SQZ_AVX512_LAMBDA: a lambda does not inherit its
/// enclosing function's target attribute, so without -mavx512f it could not use these instructions.)
template <int R, class Consumer>
SQZ_AVX512_INLINE void lookup_step(int n, const __m512 (&luts)[R], const __m512i (&codes)[R], int shift, Consumer& consume) noexcept {
    __m512 w[R];
    SQZ_UNROLL
    for (int r = 0; r < R; ++r)
        w[r] = permute_floats(shift == 0 ? codes[r] : _mm512_srli_epi32(codes[r], static_cast<unsigned>(shift)), luts[r]);
    consume(n, w);
}

/// Decodes one tile of each of R rows (row r's tile at tiles[r], its LUT in luts[r]) into 16 vectors
/// of 16 float weights per row and hands vector n of every row (the weights of the permuted x
/// positions 16n..16n+15, cpu_layout::exact_column_512) to consume(n, w), w[r] for row r, in the
/// order of n: the rows of a layout group share each activation load.
template <int Bits, int R, class Consumer>
SQZ_AVX512_INLINE void decode_tiles(const __m512 (&luts)[R], const std::uint8_t* const (&tiles)[R], Consumer& consume) noexcept {
    static_assert(Bits >= 1 && Bits <= 4, "exact decoders cover 1..4 bits");
    const auto lookup = [&](int n, const __m512i (&codes)[R], int shift) SQZ_AVX512_LAMBDA {
        lookup_step<R>(n, luts, codes, shift, consume);
    };
    __m512i codes[R];
    // At 3 and 4 bits every step shifts a 64-byte load: loads at byte offsets 1-3 instead of the
    // shifts by 8, 16, 24 were 15% slower (each crosses a cache line). At 2 bits, where a load serves
    // four steps rather than two, the loads at byte offsets were faster (measured before the rows
    // shared their activation loads). (The last tile's offset loads read up to 3 bytes past it:
    // cpu_matrix pads its codes.)
    if constexpr (Bits >= 3) {
        SQZ_UNROLL
        for (int z = 0; z < 2; ++z) {
            SQZ_UNROLL
            for (int r = 0; r < R; ++r) {
                codes[r] = chunk_codes<Bits>(tiles[r], z);
                in_register(codes[r]);
            }
            SQZ_UNROLL
            for (int m = 0; m < 8; ++m) lookup(8 * z + m, codes, 4 * m);
        }
    } else if constexpr (Bits == 2) {
        SQZ_UNROLL
        for (int b = 0; b < 4; ++b) {
            SQZ_UNROLL
            for (int r = 0; r < R; ++r) {
                codes[r] = _mm512_loadu_si512(tiles[r] + b);
                in_register(codes[r]);
            }
            SQZ_UNROLL
            for (int j = 0; j < 4; ++j) lookup(4 * b + j, codes, 2 * j);
        }
    } else {
        SQZ_UNROLL
        for (int r = 0; r < R; ++r)
            codes[r] = _mm512_srlv_epi32(broadcast_32_bytes(tiles[r]), _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 4, 4, 4, 4));
        SQZ_UNROLL
        for (int m = 0; m < 16; ++m) lookup(m, codes, 8 * (m / 4) + m % 4);
    }
}

/// Adds the 16 float lanes of s into the 8 double lanes of total.
SQZ_AVX512_INLINE __m512d add_to_double(__m512d total, __m512 s) noexcept {
    return _mm512_add_pd(total, _mm512_add_pd(_mm512_cvtps_pd(low_half(s)), _mm512_cvtps_pd(high_half(s))));
}

/// Consumer for matrix-vector products: two accumulators per row (FMA latency 4, one 512-bit FMA
/// per cycle: R = 4 rows give 8 independent chains), x loaded once for all rows. With `spread` set
/// (Intel) each of a tile's 16 steps also takes its step of the group's code prefetch
/// (avx2::prefetch_spread over the group's Lines lines).
template <int R, std::size_t Lines = 0>
struct accumulate_products {
    static constexpr int chains = R == 1 ? 4 : 2;  ///< accumulators per row
    const float* x;  ///< the tile's 256 permuted activations
    __m512 acc[R][chains];
    const std::uint8_t* spread = nullptr;  ///< the tile group's codes, or null

    SQZ_AVX512_INLINE void operator()(int n, const __m512 (&w)[R]) noexcept {
        if constexpr (Lines > 0) avx2::prefetch_spread<Lines, 16>(spread, intel_exact_spread_prefetch, n);
        __m512 xv = _mm512_load_ps(x + 16 * n);
        if constexpr (R > 1) in_register(xv);
        SQZ_UNROLL
        for (int r = 0; r < R; ++r) acc[r][n % chains] = _mm512_fmadd_ps(w[r], xv, acc[r][n % chains]);
    }
    SQZ_AVX512_INLINE __m512 sum(int r) const noexcept {
        __m512 s = acc[r][0];
        SQZ_UNROLL
        for (int c = 1; c < chains; ++c) s = _mm512_add_ps(s, acc[r][c]);
        return s;
    }
};

/// Rows [row, row + R) over tiles [first, first + count), decoded together (x shared) or, with
/// R = 1, one row; adds each row's fp32 sum to its double total. spread: the code prefetch spread
/// over the steps (Intel, a layout group), else none here.
template <int Bits, int R>
SQZ_AVX512_INLINE void exact_window(const __m512 (&luts)[R], const std::uint8_t* const (&first_tiles)[R], std::size_t stride,
                                    const float* xp, std::size_t first, std::size_t count, __m512d (&total)[R],
                                    bool spread) noexcept {
    accumulate_products<R, cpu_layout::tile_stride(cpu_layout::tile_bytes(Bits)) / 64> products{xp, {}};
    SQZ_UNROLL
    for (auto& row_acc : products.acc)
        SQZ_UNROLL
        for (auto& a : row_acc) a = _mm512_setzero_ps();
    for (std::size_t u = first; u < first + count; ++u) {
        products.x = xp + u * cpu_layout::tile_columns;
        products.spread = spread ? first_tiles[0] + u * stride : nullptr;
        const std::uint8_t* tiles[R];
        SQZ_UNROLL
        for (int r = 0; r < R; ++r) tiles[r] = first_tiles[r] + u * stride;
        decode_tiles<Bits, R>(luts, tiles, products);
    }
    SQZ_UNROLL
    for (int r = 0; r < R; ++r) total[r] = add_to_double(total[r], products.sum(r));
}

/// Consumer for matmul and tests: keeps the decoded tile.
struct store_weights {
    float* out;  ///< 256 floats, 64-byte aligned
    SQZ_AVX512_INLINE void operator()(int n, const __m512 (&w)[1]) noexcept { _mm512_store_ps(out + 16 * n, w[0]); }
};

/// One tile decoded into 256 floats in the permuted order (exact_column_512), from the row's LUT
/// (`lut16`, 16 floats, entries past 2^bits ignored); out must be 64-byte aligned.
SQZ_AVX512_TARGET inline void decode_tile_floats(int bits, const float* lut16, const std::uint8_t* tile, float* out) noexcept {
    store_weights keep{out};
    const std::uint8_t* const tiles[1] = {tile};
    switch (bits) {
        case 1: decode_tiles<1, 1>({load_float_lut<1>(lut16)}, tiles, keep); break;
        case 2: decode_tiles<2, 1>({load_float_lut<2>(lut16)}, tiles, keep); break;
        case 3: decode_tiles<3, 1>({load_float_lut<3>(lut16)}, tiles, keep); break;
        default: decode_tiles<4, 1>({load_float_lut<4>(lut16)}, tiles, keep); break;
    }
}

/// x permuted tile by tile into the decoder order for `bits` (cpu_layout::exact_column_512),
/// zero-padded to whole tiles.
inline void permute_for_exact(int bits, const float* x, std::size_t cols, std::size_t tiles, float* out) noexcept {
    cpu_layout::permute_columns<cpu_layout::exact_column_512>(bits, x, cols, tiles, out);
}

// ---- exact mode, matvec ----

/// Rows [row, row + R) of a layout group (or one row, R = 1) against the permuted x: fp32 products,
/// each row's window of avx2::exact_float_tiles tiles (1024 columns) added into its double total.
template <int Bits, int R>
SQZ_AVX512_TARGET void exact_rows(const cpu_matrix_view<float>& m, std::size_t row, const float* xp, float* y) noexcept {
    const std::size_t stride = m.tile_stride();
    __m512 luts[R];
    __m512d total[R];
    const std::uint8_t* first_tiles[R];
    SQZ_UNROLL
    for (int r = 0; r < R; ++r) {
        luts[r] = load_float_lut<Bits>(m.lut + (row + r) * m.lut_stride);
        total[r] = _mm512_setzero_pd();
        first_tiles[r] = m.row_tiles(row + r);
    }
    // A layout group prefetches its codes: on Intel at 3 and 4 bits spread over each tile's steps,
    // otherwise before each window.
    constexpr bool group = R == static_cast<int>(cpu_layout::group_rows);
    const bool spread = group && m.intel_tuning && Bits >= 3;
    for (std::size_t t = 0; t < m.tiles; t += avx2::exact_float_tiles) {
        const std::size_t count = std::min(avx2::exact_float_tiles, m.tiles - t);
        if (group && !spread)
            avx2::prefetch_codes_tuned(m, first_tiles[0] + t * stride, count * stride, intel_exact_code_prefetch);
        exact_window<Bits, R>(luts, first_tiles, stride, xp, t, count, total, spread);
    }
    for (int r = 0; r < R; ++r) y[row + r] = static_cast<float>(horizontal_sum(total[r]));
}

// ---- int8 mode, matvec ----

/// The widest matrix (in tiles: 8192 columns) on which the 4-bit int8_tile kernel multiplies with
/// vpdpbusd and leaves the code stream to the hardware prefetchers. A row group re-reads its whole
/// activation vector (one byte per column) while 2 bytes of codes per column stream past it; up to
/// about 8 KB of activations the stream then runs at the bandwidth of a plain read, and the faster
/// vpdpbusd form gains 7-12% from DRAM (docs/benchmarks.md, "The activation window"). Over 14 KB
/// (14336 columns) the same consumer streamed 20-30% slower, with or without the code prefetch, and
/// there the vpmaddubsw + vpdpwssd form with the prefetch is the faster one.
inline constexpr std::size_t int8_window_tiles = 32;

/// The byte positions 0..63.
SQZ_AVX512_INLINE __m512i lut_positions() noexcept {
    alignas(64) static constexpr std::array<std::uint8_t, 64> positions = [] {
        std::array<std::uint8_t, 64> p{};
        for (std::size_t i = 0; i < 64; ++i) p[i] = static_cast<std::uint8_t>(i);
        return p;
    }();
    return _mm512_load_si512(positions.data());
}

/// A row's 7-bit LUT in every byte position modulo 2^Bits, for vpermb (which reads bits 0-5 of each
/// index byte): only bits 0..Bits-1 of a code byte count.
template <int Bits>
SQZ_AVX512_INLINE __m512i load_int8_lut(const std::uint8_t* u7) noexcept {
    const __m512i lut = broadcast_16_bytes(u7);
    if constexpr (Bits == 4) return lut;
    else return permute_bytes(_mm512_and_si512(lut_positions(), _mm512_set1_epi8((1 << Bits) - 1)), lut);
}

/// The 64 codes of chunk `Chunk` of a tile for the int8 decoder, step 0 (the codes of later steps are
/// this shifted right by Bits per step): 4 bits: chunk 0 is V_0 | V_1, chunk 1 V_2 | V_3; 3 bits: chunk
/// 0 is V_0 | V_1 (slots 4-7: int8_spare_products); 2 bits: V_0 | V_1; 1 bit: V_0 | V_0 >> 4.
template <int Bits, int Chunk>
SQZ_AVX512_INLINE __m512i int8_chunk(const std::uint8_t* tile) noexcept {
    if constexpr (Bits == 1) {
        const __m256i v = _mm256_load_si256(reinterpret_cast<const __m256i*>(tile));
        return join_halves(v, _mm256_srli_epi16(v, 4));
    } else {
        return _mm512_loadu_si512(tile + 64 * Chunk);
    }
}

/// The slots in the two halves of step `step` of chunk `chunk` (int8_chunk): 4, 3 bits: the chunk's
/// low nibbles hold slots 4c and 4c + 2, its high nibbles 4c + 1 and 4c + 3; 2 bits: code j of each
/// byte holds slots j and 4 + j; 1 bit: bit j holds slots j and 4 + j.
template <int Bits>
constexpr std::array<int, 2> int8_step_slots(int chunk, int step) noexcept {
    if constexpr (Bits >= 3) return {4 * chunk + step, 4 * chunk + step + 2};
    else return {step, step + 4};
}

/// Bits between the codes of consecutive steps in a byte (3 bits: nibbles).
template <int Bits>
inline constexpr int code_step = Bits == 3 ? 4 : Bits;
template <int Bits>
inline constexpr int int8_chunks = Bits == 4 ? 2 : 1;
template <int Bits>
inline constexpr int int8_steps = Bits >= 3 ? 2 : 4;  // steps per chunk

/// The order of a tile's slots in int8_activation_buffers::q_avx512 (1-3 bits): the slots of step n (int8_step_slots,
/// chunk by chunk) at positions 2n and 2n + 1, so that a step's activations are one 64-byte load; at 3
/// bits slots 4-7 follow in their order (int8_spare_products reads them one by one).
template <int Bits>
constexpr std::array<int, cpu_layout::slots_per_tile> int8_slot_order() noexcept {
    std::array<int, cpu_layout::slots_per_tile> order{0, 1, 2, 3, 4, 5, 6, 7};
    int n = 0;
    for (int c = 0; c < int8_chunks<Bits>; ++c)
        for (int step = 0; step < int8_steps<Bits>; ++step, ++n) {
            order[static_cast<std::size_t>(2 * n)] = int8_step_slots<Bits>(c, step)[0];
            order[static_cast<std::size_t>(2 * n + 1)] = int8_step_slots<Bits>(c, step)[1];
        }
    return order;
}

/// Fills a.q_avx512 from a.q for a matrix of `bits` bits (int8_slot_order).
inline void order_activations(int bits, std::size_t tiles, int8_activation_buffers<float>& a) {
    static constexpr std::array<std::array<int, cpu_layout::slots_per_tile>, cpu_layout::max_tiled_bits + 1> orders{
        {{}, int8_slot_order<1>(), int8_slot_order<2>(), int8_slot_order<3>(), int8_slot_order<4>()}};
    const auto& order = orders[static_cast<std::size_t>(bits)];
    a.q_avx512.resize(tiles * cpu_layout::tile_columns);
    for (std::size_t t = 0; t < tiles; ++t)
        for (std::size_t p = 0; p < cpu_layout::slots_per_tile; ++p)
            std::copy_n(a.q.data() + t * cpu_layout::tile_columns + static_cast<std::size_t>(order[p]) * cpu_layout::slot_columns,
                        cpu_layout::slot_columns, a.q_avx512.data() + t * cpu_layout::tile_columns + p * cpu_layout::slot_columns);
}

/// The scales D of slots s0 and s1 (both 16-bit halves of each 32-bit lane, as vpdpwssd multiplies
/// them) in the two halves of a register: two broadcasts and a blend (a merge-masked broadcast
/// instead costs as much as a multiply on Zen 4).
SQZ_AVX512_INLINE __m512i pair_scales(const std::uint32_t* scales, int s0, int s1) noexcept {
    __m512i d0 = _mm512_set1_epi32(static_cast<int>(scales[s0]));
    __m512i d1 = _mm512_set1_epi32(static_cast<int>(scales[s1]));
    in_register(d0);  // else GCC merges them into the masked broadcast
    in_register(d1);
    return _mm512_mask_blend_epi32(0xff00, d0, d1);
}

/// The steps of the int8 kernel on one tile of R rows: R per step of each chunk, and at 3 bits R per
/// slot of int8_spare_products.
template <int Bits, int R>
inline constexpr int int8_tile_steps = R * (int8_chunks<Bits> * int8_steps<Bits> + (Bits == 3 ? 4 : 0));

/// Step `step` of the int8 kernel's code prefetch on Intel, spread over the tile's steps
/// (avx2::prefetch_spread); spread: the tile group's codes, or null.
template <int Bits, int R>
SQZ_AVX512_INLINE void spread_int8_prefetch(const std::uint8_t* spread, int step) noexcept {
    constexpr code_prefetch plan = Bits <= 2 ? intel_int8_low_bits_prefetch : intel_int8_code_prefetch;
    avx2::prefetch_spread<cpu_layout::tile_stride(cpu_layout::tile_bytes(Bits)) / 64, int8_tile_steps<Bits, R>>(
        spread, plan, step);
}

/// The products of chunk `Chunk` of one tile of each row, added to acc; xq: the tile's activations, in
/// int8_slot_order below 4 bits, in column order at 4 bits. At 4 bits the kernel keeps its earlier
/// form (two loads joined by an insert, a merge-masked broadcast of the scales, the codes reloaded
/// into the shifts, the code prefetch as a loop): the form used below 4 bits made it 14% faster from
/// the cache but 5-8% slower from DRAM on two threads of an idle host (docs/benchmarks.md), where the
/// 4-bit product is bound by memory, not by its instructions. Without SlotScales (int8_tile mode,
/// D_b = 1 in every slot) one vpdpbusd multiplies and accumulates below 4 bits. At 4 bits int8_tile
/// takes the vpmaddubsw + vpdpwssd form with its D_b (all 1): with vpdpbusd it was 33% faster from
/// the cache but 15-20% slower from DRAM (one thread, and two on an idle host; design.md), like the
/// faster 4-bit int8 form above. That slowness is the activation window's (int8_window_tiles): on
/// matrices of at most int8_window_tiles tiles the 4-bit int8_tile kernel takes vpdpbusd too
/// (Narrow), without the code prefetch.
template <int Bits, int R, int Chunk, bool SlotScales, bool Narrow>
SQZ_AVX512_INLINE void int8_chunk_products(const __m512i (&luts)[R], const std::uint8_t* const (&tiles)[R], const std::int8_t* xq,
                                           const std::uint32_t* scales, __m512i (&acc)[R], const std::uint8_t* spread) noexcept {
    constexpr bool byte_dot = !SlotScales && (Bits != 4 || Narrow);  // one vpdpbusd per step
    __m512i codes[R];
    SQZ_UNROLL
    for (int r = 0; r < R; ++r) {
        codes[r] = int8_chunk<Bits, Chunk>(tiles[r]);
        if constexpr (Bits != 4) in_register(codes[r]);  // else GCC reloads the codes into each shift (2% slower)
    }
    SQZ_UNROLL
    for (int step = 0; step < int8_steps<Bits>; ++step) {
        const std::array<int, 2> slots = int8_step_slots<Bits>(Chunk, step);
        __m512i x;
        [[maybe_unused]] __m512i d;  // the slot scales (int8 mode)
        if constexpr (Bits == 4) {
            const auto* q = reinterpret_cast<const __m256i*>(xq);
            x = join_halves(_mm256_load_si256(q + slots[0]), _mm256_load_si256(q + slots[1]));
            d = _mm512_mask_set1_epi32(_mm512_set1_epi32(static_cast<int>(scales[slots[0]])), 0xff00, static_cast<int>(scales[slots[1]]));
        } else {
            x = _mm512_load_si512(xq + 2 * cpu_layout::slot_columns * static_cast<std::size_t>(Chunk * int8_steps<Bits> + step));
            if constexpr (R > 1) in_register(x);
            if constexpr (!byte_dot) d = pair_scales(scales, slots[0], slots[1]);
        }
        SQZ_UNROLL
        for (int r = 0; r < R; ++r) {
            spread_int8_prefetch<Bits, R>(spread, (Chunk * int8_steps<Bits> + step) * R + r);
            const __m512i shifted = step == 0 ? codes[r] : _mm512_srli_epi16(codes[r], static_cast<unsigned>(code_step<Bits> * step));
            if constexpr (byte_dot)
                acc[r] = _mm512_dpbusd_epi32(acc[r], permute_bytes(shifted, luts[r]), x);
            else
                acc[r] = _mm512_dpwssd_epi32(acc[r], _mm512_maddubs_epi16(permute_bytes(shifted, luts[r]), x), d);
        }
    }
}

/// 3 bits: the products of slots 4-7 of one tile of each row, added to acc: 256-bit steps through V_2
/// and the codes of slots 6 and 7 (spare_bit_codes), which then need no insert into a 512-bit register.
template <int R, bool SlotScales>
SQZ_AVX512_INLINE void int8_spare_products(const __m512i (&luts)[R], const std::uint8_t* const (&tiles)[R], const std::int8_t* xq,
                                           const std::uint32_t* scales, __m256i (&acc)[R], const std::uint8_t* spread) noexcept {
    __m256i v2[R], spare[R];
    SQZ_UNROLL
    for (int r = 0; r < R; ++r) {
        v2[r] = _mm256_load_si256(reinterpret_cast<const __m256i*>(tiles[r] + 64));
        spare[r] = spare_bit_codes(tiles[r]);
    }
    SQZ_UNROLL
    for (int q = 0; q < 4; ++q) {
        const int slot = 4 + q;
        __m256i x = _mm256_load_si256(reinterpret_cast<const __m256i*>(xq + slot * static_cast<int>(cpu_layout::slot_columns)));
        if constexpr (R > 1) in_register(x);
        [[maybe_unused]] const __m256i d = _mm256_set1_epi32(SlotScales ? static_cast<int>(scales[slot]) : 0);
        SQZ_UNROLL
        for (int r = 0; r < R; ++r) {
            spread_int8_prefetch<3, R>(spread, int8_steps<3> * R + q * R + r);
            const __m256i codes = q < 2 ? v2[r] : spare[r];
            const __m256i shifted = q % 2 == 0 ? codes : _mm256_srli_epi16(codes, 4);
            const __m256i w = _mm256_maskz_permutexvar_epi8(~__mmask32{0}, shifted, _mm512_castsi512_si256(luts[r]));
            if constexpr (SlotScales)
                acc[r] = _mm256_dpwssd_epi32(acc[r], _mm256_maddubs_epi16(w, x), d);
            else
                acc[r] = _mm256_dpbusd_epi32(acc[r], w, x);
        }
    }
}

/// avx2::group_sparse_entries with mask registers: each product goes into its row's sums through a
/// masked add, fewer instructions than the AVX2 form's masks of ones and the same sums (a sum that
/// starts at +0 never becomes -0, and adding +0 leaves every other value as it is), so the two
/// kernels stay bit-identical.
template <class Col, sparse_value_type V>
SQZ_AVX512_INLINE void masked_sparse_entries(const cpu_matrix_view<float>& m, const float* x, avx2::group_sparse& s) noexcept {
    const __m256 products = avx2::group_sparse_products<Col, V>(m, x, s);
    const __m256i entry = avx2::group_sparse_lanes(s);
    __mmask8 before = 0;  // lanes of the rows before r
    SQZ_UNROLL
    for (int r = 0; r < 4; ++r) {
        const __mmask8 upto = _mm256_cmpgt_epi32_mask(s.row_end[r], entry);  // lanes of rows <= r
        s.sum[r] = _mm256_mask_add_ps(s.sum[r], static_cast<__mmask8>(upto & ~before), s.sum[r], products);
        before = upto;
    }
    s.next += 8;
}

/// Rows [row, row + R): y = scale * (sum_t e_t I_t) + lo * x_hat_sum, the integer dot products I_t of
/// each tile as the AVX2 kernel computes them (its eight 32-bit lane sums, then the same float steps).
/// Below 4 bits a.q_avx512 must hold the activations in int8_slot_order<Bits> (order_activations).
/// SlotScales = false: int8_tile mode (a quantized with D_b = 1 everywhere): the same integer sums,
/// without the multiplications by D.
/// Col = void: without the rows' sparse part, else with it (avx2::group_sparse, R = 4), its storage
/// types Col and V. Narrow (4 bits, int8_tile, at most int8_window_tiles tiles): vpdpbusd and no
/// code prefetch (int8_window_tiles).
template <int Bits, int R, bool SlotScales, bool Narrow, class Col, sparse_value_type V>
[[gnu::noinline]] SQZ_AVX512_TARGET void int8_rows_with(const cpu_matrix_view<float>& m, std::size_t row,
                                                        const int8_activation_buffers<float>& a, float* y, const float* x,
                                                        avx2::group_sparse sparse) noexcept {
    constexpr bool with_sparse = !std::is_void_v<Col>;
    __m512i luts[R];
    __m256 total[R];
    SQZ_UNROLL
    for (int r = 0; r < R; ++r) {
        luts[r] = load_int8_lut<Bits>(m.u7 + (row + r) * m.lut_stride);
        total[r] = _mm256_setzero_ps();
    }
    // The tiled layout of Bits bits (a constant, so that the code prefetch below is unrolled).
    constexpr std::size_t stride = cpu_layout::tile_stride(cpu_layout::tile_bytes(Bits));
    const std::uint8_t* base = m.row_tiles(row);
    for (std::size_t t = 0; t < m.tiles; ++t) {
        // The code prefetch for a layout group: on Intel spread over the tile's steps, elsewhere
        // before them (at 4 bits a loop over a run-time length: see int8_chunk_products).
        const std::uint8_t* spread = nullptr;
        if constexpr (R == static_cast<int>(cpu_layout::group_rows) && !Narrow) {
            if (m.intel_tuning)
                spread = base + t * stride;
            else
                avx2::prefetch_codes(base + t * stride, Bits == 4 ? m.tile_stride() : stride);
        }
        const std::int8_t* xq = (Bits == 4 ? a.q : a.q_avx512).data() + t * cpu_layout::tile_columns;
        const std::uint32_t* scales = a.slot_scale_pairs.data() + t * cpu_layout::slots_per_tile;
        __m512i acc[R];
        SQZ_UNROLL
        for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_si512();
        const std::uint8_t* tiles[R];
        SQZ_UNROLL
        for (int r = 0; r < R; ++r) tiles[r] = m.row_tiles(row + r) + t * stride;
        int8_chunk_products<Bits, R, 0, SlotScales, Narrow>(luts, tiles, xq, scales, acc, spread);
        if constexpr (Bits == 4) int8_chunk_products<Bits, R, 1, SlotScales, Narrow>(luts, tiles, xq, scales, acc, spread);
        // The low half of each row's sums; at 3 bits the products of slots 4-7 are added to it.
        __m256i low[R];
        SQZ_UNROLL
        for (int r = 0; r < R; ++r) low[r] = _mm512_castsi512_si256(acc[r]);
        if constexpr (Bits == 3) int8_spare_products<R, SlotScales>(luts, tiles, xq, scales, low, spread);
        const __m256 unit = _mm256_set1_ps(a.tile_scale[t]);
        SQZ_UNROLL
        for (int r = 0; r < R; ++r) {
            const __m256i sums = _mm256_add_epi32(low[r], high_half(acc[r]));
            total[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), unit, total[r]);
        }
        if constexpr (with_sparse)
            if (sparse.next < sparse.end) {
                avx2::prefetch_group_sparse<Col, V>(m, sparse);
                masked_sparse_entries<Col, V>(m, x, sparse);
            }
    }
    SQZ_UNROLL
    for (int r = 0; r < R; ++r) {
        const std::size_t i = row + r;
        y[i] = static_cast<float>(static_cast<double>(m.int8_scale[i]) * static_cast<double>(avx2::horizontal_sum(total[r])) +
                                  static_cast<double>(m.int8_lo[i]) * a.x_hat_sum);
    }
    if constexpr (with_sparse) {
        while (sparse.next < sparse.end) masked_sparse_entries<Col, V>(m, x, sparse);
        avx2::add_group_sparse(sparse, row, y);
    }
}

/// x: given for groups of four rows at 4 bits (avx2::int8_sparse_by_groups), whose sparse part the
/// kernel then adds along their dense part; otherwise the caller adds the sparse part. Narrow holds
/// for groups without a sparse part only: with one, the Narrow form without the code prefetch made
/// 0.45%-sparse products 1.6-1.7x slower from DRAM (docs/benchmarks.md, "The activation window").
template <int Bits, int R, bool SlotScales = true, bool Narrow = false>
SQZ_AVX512_TARGET void int8_rows(const cpu_matrix_view<float>& m, std::size_t row, const int8_activation_buffers<float>& a,
                                 float* y, const float* x = nullptr) noexcept {
    if constexpr (R == 4 && avx2::int8_sparse_by_groups<Bits>) {
        avx2::group_sparse sparse;
        if (x != nullptr && avx2::start_group_sparse(m, row, sparse)) {
            with_sparse_storage(m, [&]<class Col, sparse_value_type V>() {
                int8_rows_with<Bits, R, SlotScales, false, Col, V>(m, row, a, y, x, sparse);
            });
            return;
        }
    }
    int8_rows_with<Bits, R, SlotScales, Narrow, void, sparse_value_type::scalar>(m, row, a, y, x, {});
}

// ---- matmul, exact mode: decode each tile once, then every column ----

/// One row against k columns; xp holds the k columns permuted for this decoder, each tiles * 256
/// floats apart.
template <int Bits>
SQZ_AVX512_TARGET void exact_row_columns(const cpu_matrix_view<float>& m, std::size_t row, const float* xp,
                                         std::size_t column_stride, std::size_t k, double* out) noexcept {
    const __m512 luts[1] = {load_float_lut<Bits>(m.lut + row * m.lut_stride)};
    __m512d total[16];
    for (std::size_t c = 0; c < k; ++c) total[c] = _mm512_setzero_pd();
    alignas(64) float weights[cpu_layout::tile_columns];
    store_weights keep{weights};
    for (std::size_t t = 0; t < m.tiles; ++t) {
        const std::uint8_t* const tiles[1] = {m.row_tiles(row) + t * m.tile_stride()};
        decode_tiles<Bits, 1>(luts, tiles, keep);
        for (std::size_t c = 0; c < k; ++c) {
            const float* x = xp + c * column_stride + t * cpu_layout::tile_columns;
            __m512 a0 = _mm512_setzero_ps();
            __m512 a1 = _mm512_setzero_ps();
            SQZ_UNROLL
            for (int n = 0; n < 16; n += 2) {
                a0 = _mm512_fmadd_ps(_mm512_load_ps(weights + 16 * n), _mm512_load_ps(x + 16 * n), a0);
                a1 = _mm512_fmadd_ps(_mm512_load_ps(weights + 16 * n + 16), _mm512_load_ps(x + 16 * n + 16), a1);
            }
            total[c] = add_to_double(total[c], _mm512_add_ps(a0, a1));
        }
    }
    for (std::size_t c = 0; c < k; ++c) out[c] = horizontal_sum(total[c]);
}

}  // namespace sqz::detail::avx512

SQZ_AVX512_WARNINGS_ON

#endif  // SQZ_HAVE_X86_SIMD
