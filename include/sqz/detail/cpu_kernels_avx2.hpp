// sqz/detail/cpu_kernels_avx2.hpp - AVX2 + FMA kernels of the cpu back end (float, 1..4 bits).
//
// Decode: one aligned 256-bit load of a tile vector, a byte mask and 16-bit shifts give the codes of
// two slots (slot_pair, cpu_layout.hpp); the row's LUT, held in registers in the form its width needs
// (cpu_layout::fill_exact_table), turns them into weights.
//  - exact mode, bit-exact LUT values, x permuted once per call into the order in which the decoder
//    produces the weights (permute_for_exact, cpu_layout::exact_column):
//      4 bits: the 16 float entries as four byte planes; four vpshufb fetch the four bytes of 32
//              weights, two rounds of unpacks assemble four vectors of 8 floats.
//      3 bits: odd slots: the 8 float entries in one register; vpermps looks up bits 0-2 of each
//              32-bit lane, so a slot's code bytes shifted right by 0, 8, 16, 24 give four vectors of
//              8 weights. Even slots: byte-pair planes; two vpshufb per 16 weights on the codes
//              paired with code | 8 fetch 16-bit halves, one round of unpacks assembles them.
//      1, 2 bits: the entries repeated in both 128-bit halves; vpermilps on shifted tile vectors.
//    Products and sums are fp32 FMAs; the partial sums of every 4 tiles (1024 columns) of a row are
//    added into a double accumulator, so that long rows lose no accuracy.
//  - int8 mode: one vpshufb through the 7-bit LUT gives 32 unsigned weights, vpmaddubsw multiplies
//    them with 32 int8 activations (pair sums <= 2 * 127 * 127 fit in int16), and vpmaddwd with the
//    slot's 16-bit scale D_b (broadcast from one 32-bit word per slot) both widens to int32 and
//    applies the per-32 scale for free. One float conversion and FMA per tile of 256 columns applies
//    the tile unit e_t.
// Both kernels process the four rows of a layout group together, codes read in storage order (one
// sequential stream, prefetched ahead): the int8 kernel slot by slot, loading each activation
// vector once for four rows; the exact kernel four tiles of a row at a time, row after row,
// reloading each row's table from L1 (it is limited by its shuffles, and registers are scarce).
// The sparse part of a row block is computed just before its dense part (sparse_row_sums), eight
// products per FMA, while the block's first codes are prefetched, and added to y after it; at 4 bits
// the int8 kernels' groups of four rows in group_sparse's steps (the AVX-512 kernel along the dense
// part).
#pragma once

#include <sqz/detail/cpu_features.hpp>
#include <sqz/detail/cpu_kernels.hpp>
#include <sqz/detail/cpu_layout.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>

#if SQZ_HAVE_X86_SIMD
#include <immintrin.h>

namespace sqz::detail::avx2 {

/// The codes of two slots of a tile as vpshufb indices, 32 per vector, one per byte: the code in bits
/// 0..Bits-1, bits Bits..3 and bit 7 clear (vpshufb reads bits 0-3 and zeroes the byte when bit 7 is
/// set), bits 4-6 free to hold another code (vpshufb ignores them).
struct code_pair {
    __m256i first, second;
};

inline constexpr int slot_pairs = static_cast<int>(cpu_layout::slots_per_tile) / 2;

/// The two slots whose codes slot_pair<Bits, Pair> gives (pairs 0..3): below 4 bits, the two codes
/// 4 bits apart in a byte of one tile vector.
template <int Bits>
constexpr std::array<int, 2> pair_slots(int pair) noexcept {
    if constexpr (Bits <= 2) {
        constexpr int pairs_per_vector = 4 / Bits;
        const int base = 8 / Bits * (pair / pairs_per_vector) + pair % pairs_per_vector;
        return {base, base + pairs_per_vector};
    } else {
        return {2 * pair, 2 * pair + 1};
    }
}

/// Byte `b` in all 32 bytes.
SQZ_AVX2_INLINE __m256i every_byte(int b) noexcept { return _mm256_set1_epi8(static_cast<char>(b)); }

/// The codes of slots pair_slots<Bits>(Pair) of a tile (cpu_layout.hpp). Below 4 bits the two codes
/// lie 4 bits apart in a byte, so one mask, (2^Bits - 1) * 0x11 at their position, keeps both and
/// clears every bit that the 16-bit shifts (by the first code's position, and 4 more) then move into
/// bits Bits..3 or 7 of a byte. Per tile: 15 instructions at 3 bits (a mask and a shift per pair of
/// slots 0-5, 9 for slots 6 and 7, whose bit k lies in bits 3 and 7 of V_k), 10 at 2 bits, 11 at 1
/// bit; at 4 bits, where bit 3 of a code is data, 12 (a mask per slot, a shift per pair).
template <int Bits, int Pair>
SQZ_AVX2_INLINE code_pair slot_pair(const std::uint8_t* tile) noexcept {
    static_assert(Bits >= 1 && Bits <= 4 && Pair >= 0 && Pair < slot_pairs, "tiled kernels cover 1..4 bits, 4 pairs of slots");
    const auto* v = reinterpret_cast<const __m256i*>(tile);
    if constexpr (Bits == 4) {  // code bit 3 is data: each nibble needs its own mask
        const __m256i w = _mm256_load_si256(v + Pair);
        return {_mm256_and_si256(w, every_byte(0x0F)), _mm256_and_si256(_mm256_srli_epi16(w, 4), every_byte(0x0F))};
    } else if constexpr (Bits == 3 && Pair == 3) {
        __m256i s = _mm256_and_si256(_mm256_srli_epi16(_mm256_load_si256(v), 3), every_byte(0x11));
        s = _mm256_or_si256(s, _mm256_and_si256(_mm256_srli_epi16(_mm256_load_si256(v + 1), 2), every_byte(0x22)));
        s = _mm256_or_si256(s, _mm256_and_si256(_mm256_srli_epi16(_mm256_load_si256(v + 2), 1), every_byte(0x44)));
        return {s, _mm256_srli_epi16(s, 4)};
    } else {
        constexpr int pairs_per_vector = Bits == 3 ? 1 : 4 / Bits;
        constexpr int shift = Bits * (Pair % pairs_per_vector);
        const __m256i w = _mm256_and_si256(_mm256_load_si256(v + Pair / pairs_per_vector), every_byte(((1 << Bits) - 1) * 0x11 << shift));
        return {shift == 0 ? w : _mm256_srli_epi16(w, shift), _mm256_srli_epi16(w, shift + 4)};
    }
}

/// Stops the compiler from reassociating a chain of integer adds into a tree that needs every
/// partial product live at once (GCC then spills them to the stack).
template <class V>
SQZ_AVX2_TARGET inline void keep_in_register(V& value) noexcept {
    __asm__("" : "+x"(value));
}

SQZ_AVX2_INLINE __m256i broadcast16(const std::uint8_t* p) noexcept {
    return _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

SQZ_AVX2_TARGET inline double horizontal_sum(__m256d v) noexcept {
    const __m128d pair = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(pair, _mm_unpackhi_pd(pair, pair)));
}

SQZ_AVX2_TARGET inline float horizontal_sum(__m256 v) noexcept {
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    return _mm_cvtss_f32(_mm_add_ss(q, _mm_shuffle_ps(q, q, 1)));
}

/// Eight x values at the given columns as one vector, from scalar loads.
template <class Col>
SQZ_AVX2_INLINE __m256 gather8(const float* x, const Col* c) noexcept {
    return _mm256_setr_ps(x[c[0]], x[c[1]], x[c[2]], x[c[3]], x[c[4]], x[c[5]], x[c[6]], x[c[7]]);
}

/// Sparse values k..k+7 (stored as V) as floats, exactly: a load, or a load and vcvtph2ps (fp16),
/// or a zero extension and a shift (bf16).
template <sparse_value_type V>
SQZ_AVX2_INLINE __m256 sparse_values8(const void* values, std::int32_t k) noexcept {
    if constexpr (V == sparse_value_type::scalar) {
        return _mm256_loadu_ps(static_cast<const float*>(values) + k);
    } else {
        const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const std::uint16_t*>(values) + k));
        if constexpr (V == sparse_value_type::fp16) return _mm256_cvtph_ps(bits);
        else return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
    }
}

/// The sparse part of one row: eight products per FMA, x assembled from scalar loads. On Zen 3 this
/// costs ~1.1 cycles per nonzero in the cache against ~1.5 with vgatherdps (a microcoded gather of
/// 8 loads) and ~2.9 for a scalar loop. The last (nnz mod 8) products take one more FMA on a full
/// vector whose lanes past the row are zeroed in both factors (0 * 0, so a NaN or an infinity of x
/// at another row's column cannot leak in); the CSR arrays are padded (sparse_padding) so that it
/// reads inside them. That is 7% faster than a scalar tail (0.54 -> 0.50 ns per nonzero).
template <class Col, sparse_value_type V>
SQZ_AVX2_INLINE double sparse_row_dot(const cpu_matrix_view<float>& m, std::size_t row, const float* x) noexcept {
    const auto* col = static_cast<const Col*>(m.col);
    std::int32_t k = m.row_ptr[row];
    const std::int32_t end = m.row_ptr[row + 1];
    __m256 acc = _mm256_setzero_ps();
    for (; k + 8 <= end; k += 8) acc = _mm256_fmadd_ps(sparse_values8<V>(m.val, k), gather8(x, col + k), acc);
    if (k < end) {
        const __m256 keep = _mm256_castsi256_ps(
            _mm256_cmpgt_epi32(_mm256_set1_epi32(end - k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
        acc = _mm256_fmadd_ps(_mm256_and_ps(keep, sparse_values8<V>(m.val, k)), _mm256_and_ps(keep, gather8(x, col + k)), acc);
    }
    return static_cast<double>(horizontal_sum(acc));
}

/// The sparse part of a group of four rows in steps of eight consecutive CSR entries of the group,
/// whatever rows they belong to, each product added to its row's sums through a lane mask. The
/// AVX-512 int8 kernel at 4 bits takes one step per tile along the group's dense part: there these
/// few instructions run while the core waits for the codes from DRAM, where the pre-pass before the
/// block (sparse_row_sums) runs them while DRAM waits. That pays only where the kernel has spare
/// issue slots and registers, which the AVX-512 int8 kernel has at 4 bits and no other kernel does
/// (docs/design.md). The CSR arrays are then one more sequential stream, read at about a sixteenth
/// of the codes' pace and prefetched ahead.
struct group_sparse {
    std::int32_t next = 0;            ///< the group's next CSR entry
    std::int32_t end = 0;             ///< row_ptr[row + 4]
    __m256i row_end[4];               ///< row_ptr[row + 1 .. row + 4], in every lane
    __m256 sum[4];                    ///< eight partial sums per row
};

/// How many CSR entries ahead of the group's next one a step asks for (512 bytes of 16-bit columns,
/// about 32 tiles ahead at one step per tile).
inline constexpr std::int32_t group_sparse_prefetch_entries = 256;

/// True, with `s` ready, when rows [row, row + 4) have a sparse part.
SQZ_AVX2_TARGET inline bool start_group_sparse(const cpu_matrix_view<float>& m, std::size_t row, group_sparse& s) noexcept {
    if (m.row_ptr == nullptr || m.row_ptr[row] == m.row_ptr[row + 4]) return false;
    s.next = m.row_ptr[row];
    s.end = m.row_ptr[row + 4];
    for (std::size_t r = 0; r < 4; ++r) s.row_end[r] = _mm256_set1_epi32(m.row_ptr[row + 1 + r]);
    for (auto& sum : s.sum) sum = _mm256_setzero_ps();
    return true;
}

/// The products of entries [next, next + 8) of the group: lane e belongs to row r when row_end[r - 1]
/// <= next + e < row_end[r]. A step clears the products of other rows' lanes and of lanes past the
/// group (their bits, so that a NaN or an infinity there cannot leak in); the arrays' padding
/// (sparse_padding) keeps the reads of the last group inside them.
template <class Col, sparse_value_type V>
SQZ_AVX2_INLINE __m256 group_sparse_products(const cpu_matrix_view<float>& m, const float* x, const group_sparse& s) noexcept {
    return _mm256_mul_ps(sparse_values8<V>(m.val, s.next), gather8(x, static_cast<const Col*>(m.col) + s.next));
}

/// The CSR positions next .. next + 7 of a step's lanes, which the row ends are compared with.
SQZ_AVX2_INLINE __m256i group_sparse_lanes(const group_sparse& s) noexcept {
    return _mm256_add_epi32(_mm256_set1_epi32(s.next), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/// One step: group_sparse_products into the rows' sums through masks of ones.
template <class Col, sparse_value_type V>
SQZ_AVX2_INLINE void group_sparse_entries(const cpu_matrix_view<float>& m, const float* x, group_sparse& s) noexcept {
    const __m256 products = group_sparse_products<Col, V>(m, x, s);
    const __m256i entry = group_sparse_lanes(s);
    __m256i before = _mm256_setzero_si256();  // lanes of the rows before r
    SQZ_UNROLL
    for (int r = 0; r < 4; ++r) {
        const __m256i upto = _mm256_cmpgt_epi32(s.row_end[r], entry);  // lanes of rows <= r
        s.sum[r] = _mm256_add_ps(s.sum[r], _mm256_and_ps(_mm256_castsi256_ps(_mm256_andnot_si256(before, upto)), products));
        before = upto;
    }
    s.next += 8;
}

/// Asks for the CSR entries group_sparse_prefetch_entries ahead of the group's next one.
template <class Col, sparse_value_type V>
SQZ_AVX2_INLINE void prefetch_group_sparse(const cpu_matrix_view<float>& m, const group_sparse& s) noexcept {
    constexpr std::size_t value_bytes = V == sparse_value_type::scalar ? sizeof(float) : sizeof(std::uint16_t);
    const auto ahead = static_cast<std::size_t>(s.next + group_sparse_prefetch_entries);
    __builtin_prefetch(static_cast<const char*>(m.col) + ahead * sizeof(Col));
    __builtin_prefetch(static_cast<const char*>(m.val) + ahead * value_bytes);
}

/// Each row's sum added to its dense result in y (in double, rounded once, as grouped_rows adds the
/// pre-pass's sums), once all entries are in.
SQZ_AVX2_TARGET inline void add_group_sparse(const group_sparse& s, std::size_t row, float* y) noexcept {
    for (std::size_t r = 0; r < 4; ++r)
        y[row + r] = static_cast<float>(static_cast<double>(y[row + r]) + static_cast<double>(horizontal_sum(s.sum[r])));
}

/// Before rows [i, i + n) of the sparse pre-pass: their CSR entries sparse_prefetch_rows rows ahead,
/// and as many bytes of the block's codes (from `ahead`, up to codes_end) as they have CSR bytes.
template <std::uintptr_t BytesPerNonzero>
SQZ_AVX2_INLINE void ask_ahead(const cpu_matrix_view<float>& m, std::size_t i, std::size_t n, std::uintptr_t codes_end,
                               std::uintptr_t& ahead) noexcept {
    prefetch_sparse_rows(m, i + sparse_prefetch_rows, i + sparse_prefetch_rows + n);
    const auto csr_bytes = static_cast<std::uintptr_t>(m.row_ptr[i + n] - m.row_ptr[i]) * BytesPerNonzero;
    for (const std::uintptr_t stop = std::min(codes_end, ahead + csr_bytes); ahead < stop; ahead += 64)
        __builtin_prefetch(reinterpret_cast<const void*>(ahead), 0, 2);
}

/// The sparse part of rows [first, end) of a row block, into sums[i - first], computed before the
/// block's dense part. For each row it asks for its CSR entries a few rows ahead and for as many
/// bytes of the block's codes as the row has CSR bytes, so that DRAM keeps streaming the codes the
/// dense kernel will read next instead of idling while the sparse part is computed. (With 16-bit
/// entries that is 4 bytes per nonzero; asking for 8 or 12 made a 0.45%-sparse 2-bit int8 product
/// 2-8% slower, 1 or 2 made no difference.) Groups: whole groups of four rows from `first` in
/// group_sparse's steps (the sums the AVX-512 int8 kernel computes along its dense part at 4 bits,
/// so that the AVX2 kernel, which has no registers to spare for them, gives the same bits), the
/// rows left over one by one.
template <class Col, sparse_value_type V, bool Groups>
SQZ_AVX2_TARGET void sparse_row_sums(const cpu_matrix_view<float>& m, std::size_t first, std::size_t end,
                                     const float* x, double* sums) noexcept {
    const std::uintptr_t codes_begin = reinterpret_cast<std::uintptr_t>(m.row_tiles(first));
    const std::uintptr_t codes_end =
        codes_begin + (end - first + cpu_layout::group_rows - 1) / cpu_layout::group_rows * cpu_layout::group_rows * m.row_bytes;
    constexpr std::uintptr_t bytes_per_nonzero =
        sizeof(Col) + (V == sparse_value_type::scalar ? sizeof(float) : sizeof(std::uint16_t));
    std::uintptr_t ahead = codes_begin;
    std::size_t i = first;
    if constexpr (Groups)
        for (; i + 4 <= end; i += 4) {
            ask_ahead<bytes_per_nonzero>(m, i, 4, codes_end, ahead);
            group_sparse group{};
            if (start_group_sparse(m, i, group))
                while (group.next < group.end) group_sparse_entries<Col, V>(m, x, group);
            for (std::size_t r = 0; r < 4; ++r) sums[i + r - first] = static_cast<double>(horizontal_sum(group.sum[r]));
        }
    for (; i < end; ++i) {
        ask_ahead<bytes_per_nonzero>(m, i, 1, codes_end, ahead);
        sums[i - first] = sparse_row_dot<Col, V>(m, i, x);
    }
}

/// The same for the matrix's storage (picked once per row block).
template <bool Groups = false>
SQZ_AVX2_TARGET inline void sparse_row_sums(const cpu_matrix_view<float>& m, std::size_t first, std::size_t end,
                                            const float* x, double* sums) noexcept {
    with_sparse_storage(m, [&]<class Col, sparse_value_type V>() { sparse_row_sums<Col, V, Groups>(m, first, end, x, sums); });
}

/// The 32 float weights of one slot of a 4-bit tile, in the unpack order of cpu_layout.hpp.
struct slot_weights {
    __m256 w[4];
};

/// Floats from their 16-bit halves: lo01/lo23 hold bytes 0-1 / 2-3 of the first 16 weights, hi01/hi23
/// of the last 16; one round of 16-bit unpacks gives four vectors of 8 floats.
SQZ_AVX2_INLINE slot_weights join_halves(__m256i lo01, __m256i lo23, __m256i hi01, __m256i hi23) noexcept {
    return {{_mm256_castsi256_ps(_mm256_unpacklo_epi16(lo01, lo23)), _mm256_castsi256_ps(_mm256_unpackhi_epi16(lo01, lo23)),
             _mm256_castsi256_ps(_mm256_unpacklo_epi16(hi01, hi23)), _mm256_castsi256_ps(_mm256_unpackhi_epi16(hi01, hi23))}};
}

/// Byte planes: four vpshufb fetch the four bytes of 32 weights, two rounds of unpacks assemble them.
SQZ_AVX2_INLINE slot_weights decode_planes(const __m256i (&planes)[4], __m256i idx) noexcept {
    const __m256i b0 = _mm256_shuffle_epi8(planes[0], idx);
    const __m256i b1 = _mm256_shuffle_epi8(planes[1], idx);
    const __m256i b2 = _mm256_shuffle_epi8(planes[2], idx);
    const __m256i b3 = _mm256_shuffle_epi8(planes[3], idx);
    const __m256i lo01 = _mm256_unpacklo_epi8(b0, b1);
    const __m256i hi01 = _mm256_unpackhi_epi8(b0, b1);
    const __m256i lo23 = _mm256_unpacklo_epi8(b2, b3);
    const __m256i hi23 = _mm256_unpackhi_epi8(b2, b3);
    return join_halves(lo01, lo23, hi01, hi23);
}

/// Byte-pair planes of an 8-entry float LUT (3 bits): plane 0 holds bytes 0 and 1 of the entries
/// (entry k's at k and 8 + k), plane 1 bytes 2 and 3. Each code byte c is paired with c | 8, so one
/// vpshufb gives the 16-bit halves of 16 floats and one round of unpacks assembles them: 10 shuffles
/// per 32 weights, in the unpack order of the 4-bit planes. (Bits 4-6 of the code bytes may be set:
/// vpshufb ignores them.)
SQZ_AVX2_INLINE slot_weights decode_pair_planes(const __m256i& plane01, const __m256i& plane23, __m256i idx) noexcept {
    const __m256i with_high = _mm256_or_si256(idx, _mm256_set1_epi8(8));
    const __m256i pairs_lo = _mm256_unpacklo_epi8(idx, with_high);  // columns 0-7 | 16-23
    const __m256i pairs_hi = _mm256_unpackhi_epi8(idx, with_high);  // columns 8-15 | 24-31
    const __m256i lo01 = _mm256_shuffle_epi8(plane01, pairs_lo);
    const __m256i lo23 = _mm256_shuffle_epi8(plane23, pairs_lo);
    const __m256i hi01 = _mm256_shuffle_epi8(plane01, pairs_hi);
    const __m256i hi23 = _mm256_shuffle_epi8(plane23, pairs_hi);
    return join_halves(lo01, lo23, hi01, hi23);
}

/// A row's exact-mode LUT table (cpu_layout::fill_exact_table) in registers.
template <int Bits>
struct exact_table {
    __m256i v[Bits == 4 ? 4 : Bits == 3 ? 3 : 1];
};

template <int Bits>
SQZ_AVX2_INLINE exact_table<Bits> load_exact_table(const std::uint8_t* table) noexcept {
    exact_table<Bits> t;
    if constexpr (Bits == 3) {
        t.v[0] = broadcast16(table);  // byte-pair planes
        t.v[1] = broadcast16(table + 16);
        t.v[2] = _mm256_load_si256(reinterpret_cast<const __m256i*>(table + 32));  // the 8 entries as floats
    } else {
        for (std::size_t k = 0; k < sizeof(t.v) / sizeof(t.v[0]); ++k) t.v[k] = broadcast16(table + 16 * k);
    }
    return t;
}

/// Decodes one tile of a row into its 32 vectors of 8 float weights and hands vector v (weights of
/// the permuted x positions 8v..8v+7, cpu_layout::exact_column) to consume(v, w), in the order of v.
/// Step is a pair of slots (slot_pair) for 3 and 4 bits and a vector for 1 and 2 bits; the recursion
/// unrolls the tile.
template <int Bits, int Step, class Consumer>
SQZ_AVX2_INLINE void decode_tile(const exact_table<Bits>& table, const std::uint8_t* tile, Consumer& consume) noexcept {
    if constexpr (Bits == 4) {
        const code_pair codes = slot_pair<Bits, Step>(tile);
        const slot_weights even = decode_planes(table.v, codes.first);
        for (int r = 0; r < 4; ++r) consume(8 * Step + r, even.w[r]);
        const slot_weights odd = decode_planes(table.v, codes.second);
        for (int r = 0; r < 4; ++r) consume(8 * Step + 4 + r, odd.w[r]);
    } else if constexpr (Bits == 3) {
        // Even slots through the byte-pair planes (vpshufb), odd slots through vpermps: the two
        // decoders load different execution resources, and alternating them is ~10% faster than
        // either alone (docs/design.md).
        const code_pair codes = slot_pair<Bits, Step>(tile);
        const slot_weights even = decode_pair_planes(table.v[0], table.v[1], codes.first);
        for (int r = 0; r < 4; ++r) consume(8 * Step + r, even.w[r]);
        // vpermps reads bits 0-2 of each 32-bit lane and ignores the rest, so shifting the odd slot's
        // code bytes by 8b selects byte b of every lane without a mask.
        const __m256 lut = _mm256_castsi256_ps(table.v[2]);
        for (int b = 0; b < 4; ++b)
            consume(8 * Step + 4 + b, _mm256_permutevar8x32_ps(lut, b == 0 ? codes.second : _mm256_srli_epi32(codes.second, 8 * b)));
    } else {
        static_assert(Bits == 1 || Bits == 2, "exact decoders cover 1..4 bits");
        constexpr int per_vector = 32 / Bits;  // steps per tile vector
        constexpr int shift = Bits * (Step % per_vector);
        __m256i codes = _mm256_load_si256(reinterpret_cast<const __m256i*>(tile) + Step / per_vector);
        if constexpr (shift != 0) codes = _mm256_srli_epi32(codes, shift);
        consume(Step, _mm256_permutevar_ps(_mm256_castsi256_ps(table.v[0]), codes));
    }
    constexpr int steps = Bits >= 3 ? slot_pairs : 32;
    if constexpr (Step + 1 < steps) decode_tile<Bits, Step + 1>(table, tile, consume);
}

/// Consumer for matrix-vector products: four accumulators (an FMA has a latency of 4 cycles; with
/// fewer independent chains the kernel would wait on them).
struct accumulate_products {
    const float* x;  ///< the tile's 256 permuted activations
    __m256 acc[4];

    SQZ_AVX2_INLINE void operator()(int v, __m256 w) noexcept {
        acc[v % 4] = _mm256_fmadd_ps(w, _mm256_load_ps(x + 8 * v), acc[v % 4]);
    }
    SQZ_AVX2_INLINE __m256 sum() const noexcept { return _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])); }
};

/// Consumer for matmul: keeps the decoded tile.
struct store_weights {
    __m256* out;
    SQZ_AVX2_INLINE void operator()(int v, __m256 w) noexcept { out[v] = w; }
};

/// x permuted tile by tile into the decoder order for `bits` (cpu_layout::exact_column), zero-padded
/// to whole tiles. A scalar copy through a table: a few microseconds for the longest rows.
inline void permute_for_exact(int bits, const float* x, std::size_t cols, std::size_t tiles, float* out) noexcept {
    cpu_layout::permute_columns<cpu_layout::exact_column>(bits, x, cols, tiles, out);
}

/// The int8 activation quantization of cpu_kernels.hpp (quantize_activations) with AVX2: the same
/// IEEE operations in the same order (division, round to nearest even, ceil), so the result is
/// bit-identical to the portable one (slot_scales = false: int8_tile mode, D_b = 1). Returns false
/// when x holds a NaN or an infinity.
SQZ_AVX2_TARGET inline bool quantize_activations(const float* x, std::size_t cols, std::size_t tiles, bool slot_scales,
                                                 int8_activation_buffers<float>& out) {
    using cpu_layout::slots_per_tile;
    using cpu_layout::tile_columns;
    out.q.resize(tiles * tile_columns);
    out.slot_scale.resize(tiles * slots_per_tile);
    out.slot_scale_pairs.resize(tiles * slots_per_tile);
    out.tile_scale.resize(tiles);
    const __m256 magnitude_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 largest = _mm256_set1_ps(std::numeric_limits<float>::max());
    const __m256 high = _mm256_set1_ps(127.0f);
    const __m256 low = _mm256_set1_ps(-127.0f);
    const __m256i pack_order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    alignas(32) float tail[tile_columns];
    double x_hat_sum = 0.0;
    for (std::size_t t = 0; t < tiles; ++t) {
        const float* xt = x + t * tile_columns;
        if ((t + 1) * tile_columns > cols) {
            const std::size_t have = cols - t * tile_columns;
            for (std::size_t j = 0; j < tile_columns; ++j) tail[j] = j < have ? xt[j] : 0.0f;
            xt = tail;
        }
        std::int8_t* qt = out.q.data() + t * tile_columns;
        std::uint32_t* dt = out.slot_scale_pairs.data() + t * slots_per_tile;
        float slot_max[slots_per_tile];
        int finite = 0xff;
        for (std::size_t s = 0; s < slots_per_tile; ++s) {
            __m256 m = _mm256_setzero_ps();
            for (std::size_t k = 0; k < 4; ++k) {
                const __m256 a = _mm256_and_ps(_mm256_loadu_ps(xt + 32 * s + 8 * k), magnitude_mask);
                finite &= _mm256_movemask_ps(_mm256_cmp_ps(a, largest, _CMP_LE_OQ));
                m = _mm256_max_ps(m, a);
            }
            __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            h = _mm_max_ps(h, _mm_movehl_ps(h, h));
            slot_max[s] = _mm_cvtss_f32(_mm_max_ss(h, _mm_shuffle_ps(h, h, 1)));
        }
        if (finite != 0xff) return false;
        float tile_max = 0.0f;
        for (const float m : slot_max) tile_max = std::max(tile_max, m);
        if (!(tile_max >= 127.0f * 255.0f * std::numeric_limits<float>::min())) {
            std::fill_n(qt, tile_columns, std::int8_t{0});
            std::fill_n(out.slot_scale.data() + t * slots_per_tile, slots_per_tile, std::uint8_t{0});
            std::fill_n(dt, slots_per_tile, std::uint32_t{0});
            out.tile_scale[t] = 0.0f;
            continue;
        }
        const float unit = slot_scales ? tile_max / (127.0f * 255.0f) : tile_max / 127.0f;
        out.tile_scale[t] = unit;
        std::int64_t tile_sum = 0;
        for (std::size_t s = 0; s < slots_per_tile; ++s) {
            std::uint8_t d = 0;
            __m256i packed = _mm256_setzero_si256();
            if (slot_max[s] != 0.0f || !slot_scales) {
                const float multiplier =
                    slot_scales ? std::clamp(std::ceil(255.0f * (slot_max[s] / tile_max)), 1.0f, 255.0f) : 1.0f;
                d = static_cast<std::uint8_t>(multiplier);
                const __m256 step = _mm256_set1_ps(unit * multiplier);
                __m256i level[4];
                for (std::size_t k = 0; k < 4; ++k) {
                    const __m256 r = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(xt + 32 * s + 8 * k), step),
                                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                    level[k] = _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(r, low), high));
                }
                const __m256i sum4 =
                    _mm256_add_epi32(_mm256_add_epi32(level[0], level[1]), _mm256_add_epi32(level[2], level[3]));
                __m128i sum = _mm_add_epi32(_mm256_castsi256_si128(sum4), _mm256_extracti128_si256(sum4, 1));
                sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0x4e));
                sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0xb1));
                tile_sum += std::int64_t{_mm_cvtsi128_si32(sum)} * d;
                packed = _mm256_permutevar8x32_epi32(
                    _mm256_packs_epi16(_mm256_packs_epi32(level[0], level[1]), _mm256_packs_epi32(level[2], level[3])),
                    pack_order);
            }
            _mm256_store_si256(reinterpret_cast<__m256i*>(qt + 32 * s), packed);
            out.slot_scale[t * slots_per_tile + s] = d;
            dt[s] = std::uint32_t{d} | std::uint32_t{d} << 16;
        }
        x_hat_sum += static_cast<double>(unit) * static_cast<double>(tile_sum);
    }
    out.x_hat_sum = x_hat_sum;
    out.finite = true;
    return true;
}

// ---- exact mode, matvec ----

/// Adds the 8 float lanes of `s` into the 4 double lanes of `total`.
SQZ_AVX2_TARGET inline __m256d add_to_double(__m256d total, __m256 s) noexcept {
    return _mm256_add_pd(total, _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(s)), _mm256_cvtps_pd(_mm256_extractf128_ps(s, 1))));
}

/// Asks for the code bytes ahead of [p, p + bytes) of the row group's stream: the row blocks are
/// read sequentially, and the hardware prefetcher alone does not keep enough lines in flight for one
/// core to approach the DRAM bandwidth (docs/benchmarks.md). Lines far ahead are asked into L2 only
/// (prefetcht1), near ones into L1: a core has few L1 miss buffers, and L2 prefetches do not take
/// them, so the far requests add lines in flight that the near ones alone could not.
/// (Addresses past the end of the codes are harmless to a prefetch; they are formed as integers.)
/// The distances are `plan`'s (prefetch_codes_tuned below).
[[gnu::always_inline]] inline void prefetch_codes(const std::uint8_t* p, std::size_t bytes,
                                                  code_prefetch plan = default_code_prefetch) noexcept {
    const auto start = reinterpret_cast<std::uintptr_t>(p);
    if (plan.l2 != 0)
        for (std::size_t o = 0; o < bytes; o += 64)
            __builtin_prefetch(reinterpret_cast<const void*>(start + plan.l2 + o), 0, 2);
    if (plan.l1 != 0)
        for (std::size_t o = 0; o < bytes; o += 64)
            __builtin_prefetch(reinterpret_cast<const void*>(start + plan.l1 + o));
}

/// prefetch_codes with the default's distances, or with `intel_plan` (a kernel's Intel distances,
/// intel_exact_code_prefetch or intel_int8_code_prefetch) where the view says so
/// (cpu_matrix_view::intel_tuning); both inline as constants.
template <class T>
[[gnu::always_inline]] inline void prefetch_codes_tuned(const cpu_matrix_view<T>& m, const std::uint8_t* p, std::size_t bytes,
                                                        code_prefetch intel_plan) noexcept {
    if (m.intel_tuning)
        prefetch_codes(p, bytes, intel_plan);
    else
        prefetch_codes(p, bytes);
}

/// Step `step` of a tile group's code prefetch spread over its kernel's `Steps` steps, the form the
/// AVX-512 kernels and the AVX2 int8 kernel take on Intel: the request of spread_request_at,
/// `plan`'s distance ahead of the line (a distance of 0: no request). prefetch_codes asks for all
/// of a tile's lines before its steps, and on the Xeon host such bursts of 8-16 prefetches held a
/// synthetic stream at 19-21 GB/s where the same requests, one per 64 bytes, read 26
/// (docs/benchmarks.md, "Spread prefetch").
/// `group` null: none. Steps and step are constants in the unrolled kernels, so the schedule folds.
template <std::size_t Lines, int Steps>
[[gnu::always_inline]] inline void prefetch_spread(const std::uint8_t* group, code_prefetch plan, int step) noexcept {
    const spread_request request = spread_request_at(static_cast<int>(Lines), Steps, step);
    if (group == nullptr || request.line < 0) return;
    const auto line = reinterpret_cast<std::uintptr_t>(group) + 64 * static_cast<std::uintptr_t>(request.line);
    if (request.into_l2) {
        if (plan.l2 != 0) __builtin_prefetch(reinterpret_cast<const void*>(line + plan.l2), 0, 2);
    } else if (plan.l1 != 0) {
        __builtin_prefetch(reinterpret_cast<const void*>(line + plan.l1));
    }
}

/// Tiles a row's exact kernel multiplies in fp32 before it adds their sum into its double accumulator:
/// 1024 columns, 32 fp32 partial sums of 32 products each (relative rounding error a few 1e-7 at worst),
/// and the table load, the horizontal sum and the double conversion paid once per 1024 weights instead
/// of once per 256.
inline constexpr std::size_t exact_float_tiles = 4;

/// Tiles [first, first + count) of one row (tile t at tiles + t * stride), decoded through the row's
/// exact table and multiplied with the permuted activations in fp32 (four accumulators); returns
/// total plus their sum in double.
template <int Bits>
SQZ_AVX2_INLINE __m256d exact_tiles(const std::uint8_t* table_bytes, const std::uint8_t* tiles, std::size_t stride,
                                    const float* xp, std::size_t first, std::size_t count, __m256d total) noexcept {
    const exact_table<Bits> table = load_exact_table<Bits>(table_bytes);
    accumulate_products products{xp, {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()}};
    for (std::size_t t = first; t < first + count; ++t) {
        products.x = xp + t * cpu_layout::tile_columns;
        decode_tile<Bits, 0>(table, tiles + t * stride, products);
    }
    return add_to_double(total, products.sum());
}

/// Row `row` alone (the rows after the last whole layout group): y = D x, x permuted (`xp`); the
/// sparse part is added by the caller (sparse_row_sums).
template <int Bits>
SQZ_AVX2_TARGET void exact_row(const cpu_matrix_view<float>& m, std::size_t row, const float* xp, float* y) noexcept {
    const std::uint8_t* table = m.exact_tables + row * cpu_layout::exact_table_bytes;
    const std::uint8_t* tiles = m.row_tiles(row);
    __m256d total = _mm256_setzero_pd();
    for (std::size_t t = 0; t < m.tiles; t += exact_float_tiles)
        total = exact_tiles<Bits>(table, tiles, m.tile_stride(), xp, t, std::min(exact_float_tiles, m.tiles - t), total);
    y[row] = static_cast<float>(horizontal_sum(total));
}

/// Rows [row, row + 4), one layout group (row a multiple of 4): a few tiles of each row in turn
/// (exact_float_tiles), so the codes are read as one sequential stream (prefetched ahead) in windows
/// of a few KB. Each row's table is reloaded from L1 for every window (loads are cheap here;
/// registers are not).
template <int Bits>
SQZ_AVX2_TARGET void exact_group(const cpu_matrix_view<float>& m, std::size_t row, const float* xp, float* y) noexcept {
    constexpr std::size_t R = cpu_layout::group_rows;
    const std::uint8_t* tables = m.exact_tables + row * cpu_layout::exact_table_bytes;
    const std::uint8_t* base = m.row_tiles(row);
    const std::size_t stride = m.tile_stride();
    __m256d total[R];
    for (std::size_t r = 0; r < R; ++r) total[r] = _mm256_setzero_pd();
    for (std::size_t t = 0; t < m.tiles; t += exact_float_tiles) {
        const std::size_t count = std::min(exact_float_tiles, m.tiles - t);
        prefetch_codes_tuned(m, base + t * stride, count * stride, intel_exact_code_prefetch);
        for (std::size_t r = 0; r < R; ++r)
            total[r] = exact_tiles<Bits>(tables + r * cpu_layout::exact_table_bytes, base + r * m.tile_bytes, stride, xp, t,
                                         count, total[r]);
    }
    for (std::size_t r = 0; r < R; ++r)
        y[row + r] = static_cast<float>(horizontal_sum(total[r]));
}

// ---- int8 mode, matvec ----

/// Slots a row multiplies per step of the int8 kernel: below 4 bits a row's two slots share their
/// mask (slot_pair), so both are multiplied together; at 4 bits they share nothing, and one slot at a
/// time keeps two registers fewer live (1% faster).
template <int Bits>
inline constexpr int int8_slots_together = Bits == 4 ? 1 : 2;

/// The steps of the int8 kernel on one tile of R rows (a row's slots taken together, per pair).
template <int Bits, int R>
inline constexpr int int8_tile_steps = R * slot_pairs * 2 / int8_slots_together<Bits>;

/// Step `step` of the int8 kernel's code prefetch on Intel, spread over the tile's steps
/// (prefetch_spread) with intel_int8_code_prefetch; spread: the tile group's codes, or null.
template <int Bits, int R>
[[gnu::always_inline]] inline void spread_int8_prefetch(const std::uint8_t* spread, int step) noexcept {
    prefetch_spread<cpu_layout::tile_stride(cpu_layout::tile_bytes(Bits)) / 64, int8_tile_steps<Bits, R>>(
        spread, intel_int8_code_prefetch, step);
}

/// The products of the slots pair_slots<Bits>(Pair) and the following pairs, added to acc.
template <int Bits, int R, int Pair>
SQZ_AVX2_TARGET inline void int8_slots(const __m256i (&luts)[R], const std::uint8_t* const (&tiles)[R],
                                       const std::int8_t* xq, const std::uint32_t* scales, __m256i (&acc)[R],
                                       const std::uint8_t* spread) noexcept {
    constexpr std::array<int, 2> slots = pair_slots<Bits>(Pair);
    constexpr int together = int8_slots_together<Bits>;
    SQZ_UNROLL
    for (int first = 0; first < 2; first += together) {
        __m256i xv[2], dv[2];
        for (int h = first; h < first + together; ++h) {
            xv[h] = _mm256_load_si256(reinterpret_cast<const __m256i*>(xq + slots[h] * static_cast<int>(cpu_layout::slot_columns)));
            dv[h] = _mm256_set1_epi32(static_cast<int>(scales[slots[h]]));
        }
        SQZ_UNROLL
        for (int r = 0; r < R; ++r) {
            spread_int8_prefetch<Bits, R>(spread, (Pair * (2 / together) + first / together) * R + r);
            const code_pair codes = slot_pair<Bits, Pair>(tiles[r]);
            for (int h = first; h < first + together; ++h) {
                const __m256i w = _mm256_shuffle_epi8(luts[r], h == 0 ? codes.first : codes.second);
                acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(_mm256_maddubs_epi16(w, xv[h]), dv[h]));
                keep_in_register(acc[r]);
            }
        }
    }
    if constexpr (Pair + 1 < slot_pairs) int8_slots<Bits, R, Pair + 1>(luts, tiles, xq, scales, acc, spread);
}

/// Whether the int8 kernels compute a group's sparse part in group_sparse's steps at this width:
/// the AVX-512 kernel along the group's dense part, the AVX2 kernel in its pre-pass (sparse_row_sums
/// with Groups), so that the two give the same bits (but for the sign of a zero dense result in a
/// group without sparse entries, to which the pre-pass adds +0). At the other widths both use the row
/// pre-pass.
template <int Bits>
inline constexpr bool int8_sparse_by_groups = Bits == 4;

template <int Bits, int R>
SQZ_AVX2_TARGET void int8_rows(const cpu_matrix_view<float>& m, std::size_t row, const int8_activation_buffers<float>& a,
                               float* y) noexcept {
    __m256i luts[R];
    __m256 total[R];
    for (int r = 0; r < R; ++r) {
        luts[r] = broadcast16(m.u7 + (row + r) * m.lut_stride);
        total[r] = _mm256_setzero_ps();
    }
    const std::size_t stride = m.tile_stride();
    for (std::size_t t = 0; t < m.tiles; ++t) {
        // The code prefetch for a layout group: on Intel spread over the tile's steps, elsewhere
        // before them.
        const std::uint8_t* spread = nullptr;
        if constexpr (R == static_cast<int>(cpu_layout::group_rows)) {
            if (m.intel_tuning)
                spread = m.row_tiles(row) + t * stride;
            else
                prefetch_codes(m.row_tiles(row) + t * stride, stride);
        }
        const std::uint8_t* tiles[R];
        __m256i acc[R];
        for (int r = 0; r < R; ++r) {
            tiles[r] = m.row_tiles(row + r) + t * stride;
            acc[r] = _mm256_setzero_si256();
        }
        int8_slots<Bits, R, 0>(luts, tiles, a.q.data() + t * cpu_layout::tile_columns,
                               a.slot_scale_pairs.data() + t * cpu_layout::slots_per_tile, acc, spread);
        const __m256 unit = _mm256_set1_ps(a.tile_scale[t]);
        for (int r = 0; r < R; ++r) total[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[r]), unit, total[r]);
    }
    for (int r = 0; r < R; ++r) {
        const std::size_t i = row + r;
        y[i] = static_cast<float>(static_cast<double>(m.int8_scale[i]) * static_cast<double>(horizontal_sum(total[r])) +
                                  static_cast<double>(m.int8_lo[i]) * a.x_hat_sum);
    }
}

// ---- matmul: decode each tile once, then every column ----

/// One row against k columns; xp holds the k permuted columns, each tiles * 256 floats apart.
template <int Bits>
SQZ_AVX2_TARGET void exact_row_columns(const cpu_matrix_view<float>& m, std::size_t row, const float* xp,
                                       std::size_t column_stride, std::size_t k, double* out) noexcept {
    const exact_table<Bits> table = load_exact_table<Bits>(m.exact_tables + row * cpu_layout::exact_table_bytes);
    __m256d total[16];
    for (std::size_t c = 0; c < k; ++c) total[c] = _mm256_setzero_pd();
    alignas(32) __m256 weights[32];
    store_weights keep{weights};
    for (std::size_t t = 0; t < m.tiles; ++t) {
        decode_tile<Bits, 0>(table, m.row_tiles(row) + t * m.tile_stride(), keep);
        for (std::size_t c = 0; c < k; ++c) {
            const float* x = xp + c * column_stride + t * cpu_layout::tile_columns;
            __m256 a0 = _mm256_setzero_ps();
            __m256 a1 = _mm256_setzero_ps();
            for (int v = 0; v < 32; v += 2) {
                a0 = _mm256_fmadd_ps(weights[v], _mm256_load_ps(x + 8 * v), a0);
                a1 = _mm256_fmadd_ps(weights[v + 1], _mm256_load_ps(x + 8 * v + 8), a1);
            }
            total[c] = add_to_double(total[c], _mm256_add_ps(a0, a1));
        }
    }
    for (std::size_t c = 0; c < k; ++c) out[c] = horizontal_sum(total[c]);
}

template <int Bits, int Pair>
SQZ_AVX2_TARGET inline void decode_tile_int8(__m256i lut, const std::uint8_t* tile, __m256i* out) noexcept {
    constexpr std::array<int, 2> slots = pair_slots<Bits>(Pair);
    const code_pair codes = slot_pair<Bits, Pair>(tile);
    out[slots[0]] = _mm256_shuffle_epi8(lut, codes.first);
    out[slots[1]] = _mm256_shuffle_epi8(lut, codes.second);
    if constexpr (Pair + 1 < slot_pairs) decode_tile_int8<Bits, Pair + 1>(lut, tile, out);
}

/// One row against k int8-quantized columns; returns sum_t e_t * I_t per column (before the row's
/// scale and offset are applied).
template <int Bits>
SQZ_AVX2_TARGET void int8_row_columns(const cpu_matrix_view<float>& m, std::size_t row,
                                      const int8_activation_buffers<float>* columns, std::size_t k,
                                      double* out) noexcept {
    const __m256i lut = broadcast16(m.u7 + row * m.lut_stride);
    __m256 total[16];
    for (std::size_t c = 0; c < k; ++c) total[c] = _mm256_setzero_ps();
    alignas(32) __m256i weights[8];
    for (std::size_t t = 0; t < m.tiles; ++t) {
        decode_tile_int8<Bits, 0>(lut, m.row_tiles(row) + t * m.tile_stride(), weights);
        for (std::size_t c = 0; c < k; ++c) {
            const auto& a = columns[c];
            const std::int8_t* xq = a.q.data() + t * cpu_layout::tile_columns;
            const std::uint32_t* scales = a.slot_scale_pairs.data() + t * cpu_layout::slots_per_tile;
            __m256i acc = _mm256_setzero_si256();
            for (int s = 0; s < 8; ++s) {
                const __m256i xv = _mm256_load_si256(reinterpret_cast<const __m256i*>(xq + 32 * s));
                const __m256i dv = _mm256_set1_epi32(static_cast<int>(scales[s]));
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(weights[s], xv), dv));
            }
            total[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), _mm256_set1_ps(a.tile_scale[t]), total[c]);
        }
    }
    for (std::size_t c = 0; c < k; ++c) out[c] = static_cast<double>(horizontal_sum(total[c]));
}

}  // namespace sqz::detail::avx2

#endif  // SQZ_HAVE_X86_SIMD
