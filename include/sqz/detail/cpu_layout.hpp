// sqz/detail/cpu_layout.hpp - the cpu back end's repacked code layout for 1..4 bits ("tiles").
//
// Each row is cut into tiles of 256 columns (the last one padded with code 0). A tile of b-bit codes
// takes 32*b bytes: b vectors V_0..V_{b-1} of 32 bytes. Column 32*s + t of the tile ("slot" s = 0..7,
// lane t = 0..31) lives in byte t of the vectors, so that one 256-bit load, a mask and shifts give the
// 32 codes of a slot as bytes, ready for a byte shuffle (vpshufb) through the row's LUT:
//   4 bits: V_k byte t = code(2k) | code(2k+1) << 4                          (k = 0..3)
//   2 bits: V_k byte t = code(4k) | code(4k+1) << 2 | code(4k+2) << 4 | code(4k+3) << 6   (k = 0, 1)
//   1 bit:  V_0 byte t = sum_s code(s) << s
//   3 bits: V_k byte t = code(2k) | bit k of code(6) << 3 | code(2k+1) << 4 | bit k of code(7) << 7
//           (k = 0..2): slots 6 and 7 fill the spare bits 3 and 7 of the three vectors, so that one
//           mask (0x77) gives the codes of slots 2k and 2k+1 in bits 0-2 and 4-6 with bits 3 and 7
//           clear, which vpshufb needs: the mask and one 16-bit shift by 4 give both slots.
// where code(s) is the code at column 32*s + t. The portable kernels decode the same layout with
// tile_code(); the AVX2 kernels with masks and shifts, one mask for two slots below 4 bits
// (slot_pair in cpu_kernels_avx2.hpp).
//
// Exact mode reads each row's LUT in a form made for its width ("exact table", 64 bytes per row, see
// fill_exact_table) and x permuted within each tile into the order in which that width's decoder
// produces the weights (exact_column):
//   4 bits: byte planes; four vpshufb give the four bytes of a slot's 32 weights, two rounds of unpacks
//           assemble floats in the order (0-3, 16-19), (4-7, 20-23), (8-11, 24-27), (12-15, 28-31).
//   3 bits: bytes 0-31: byte-pair planes (byte p of entry k at 16 (p / 2) + 8 (p % 2) + k); the even
//           slots pair each code c with c | 8, two vpshufb fetch the 16-bit halves of 16 floats and
//           one round of unpacks assembles them, in the 4-bit order below. Bytes 32-63: the 8 entries
//           as floats (L0..L7); for the odd slots vpermps looks the weights up from bits 0-2 of each
//           32-bit lane, so the slot's code bytes shifted by 8b give step b: lane i of vector 4s + b
//           holds the code of byte 4i + b of slot s.
//   1, 2 bits: the LUT as floats (2 bits: L0..L3; 1 bit: L0, L1, L0, L1) in both 128-bit halves of a
//           register; vpermilps looks the weights up from bits 0-1 of each 32-bit lane, so one shift
//           of a tile vector by Bits * n gives step n: lane i of step n holds the code of byte 4i + b
//           at slot position m, where n = (8 / Bits) * b + m.
// Rows are stored in groups of four, tile-interleaved: tile t of row 4g + r is at byte offset
// g * 4 * row_bytes + (4 t + r) * tile_bytes, where row_bytes = tiles * tile_bytes (the row count is
// padded to a multiple of four with code-0 rows). The int8 kernel, which works on four rows at once,
// then reads one purely sequential stream; with separate rows it read four streams a short row apart,
// which the hardware prefetcher followed badly (14336 x 4096 was 40% slower than 4096 x 14336).
#pragma once

#include <sqz/error.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

namespace sqz::detail::cpu_layout {

inline constexpr std::size_t tile_columns = 256;
inline constexpr std::size_t slot_columns = 32;
inline constexpr std::size_t slots_per_tile = tile_columns / slot_columns;
inline constexpr int max_tiled_bits = 4;
inline constexpr std::size_t group_rows = 4;

constexpr std::size_t tile_bytes(int bits) noexcept { return 32 * static_cast<std::size_t>(bits); }
constexpr std::size_t tiles_for(std::size_t columns) noexcept { return (columns + tile_columns - 1) / tile_columns; }

/// Byte offset of tile 0 of `row`, and the distance between consecutive tiles of a row.
constexpr std::size_t row_offset(std::size_t row, std::size_t row_bytes, std::size_t tile_bytes) noexcept {
    return row / group_rows * group_rows * row_bytes + row % group_rows * tile_bytes;
}
constexpr std::size_t tile_stride(std::size_t tile_bytes) noexcept { return group_rows * tile_bytes; }

/// Writes the 256 codes of one tile (code of tile column c in codes[c], each < 2^bits) into `tile`
/// (tile_bytes(bits) bytes).
inline void encode_tile(std::span<const std::uint8_t, tile_columns> codes, int bits, std::span<std::uint8_t> tile) {
    require(bits >= 1 && bits <= max_tiled_bits, "sqz::cpu_layout::encode_tile: bits = ", bits, " is outside 1..4");
    require(tile.size() == tile_bytes(bits), "sqz::cpu_layout::encode_tile: tile has ", tile.size(), " bytes, ",
            tile_bytes(bits), " expected");
    auto code = [&](std::size_t slot, std::size_t lane) { return static_cast<unsigned>(codes[slot * slot_columns + lane]); };
    for (std::size_t t = 0; t < slot_columns; ++t) {
        switch (bits) {
            case 1: {
                unsigned byte = 0;
                for (std::size_t s = 0; s < 8; ++s) byte |= code(s, t) << s;
                tile[t] = static_cast<std::uint8_t>(byte);
                break;
            }
            case 2:
                for (std::size_t k = 0; k < 2; ++k)
                    tile[32 * k + t] = static_cast<std::uint8_t>(code(4 * k, t) | code(4 * k + 1, t) << 2 |
                                                                 code(4 * k + 2, t) << 4 | code(4 * k + 3, t) << 6);
                break;
            case 3:
                for (std::size_t k = 0; k < 3; ++k)
                    tile[32 * k + t] = static_cast<std::uint8_t>(code(2 * k, t) | ((code(6, t) >> k) & 1u) << 3 |
                                                                 code(2 * k + 1, t) << 4 | ((code(7, t) >> k) & 1u) << 7);
                break;
            default:
                for (std::size_t k = 0; k < 4; ++k)
                    tile[32 * k + t] = static_cast<std::uint8_t>(code(2 * k, t) | code(2 * k + 1, t) << 4);
                break;
        }
    }
}

/// Bytes of a row's exact-mode LUT table (fill_exact_table).
inline constexpr std::size_t exact_table_bytes = 64;

/// Writes one row's LUT (2^bits floats, given by their IEEE bit patterns) in the form that the exact
/// decoder for `bits` reads (see the top of this file); unused bytes are zero.
inline void fill_exact_table(int bits, std::span<const std::uint32_t> lut, std::span<std::uint8_t, exact_table_bytes> out) {
    require(bits >= 1 && bits <= max_tiled_bits, "sqz::cpu_layout::fill_exact_table: bits = ", bits, " is outside 1..4");
    require(lut.size() == std::size_t{1} << bits, "sqz::cpu_layout::fill_exact_table: ", lut.size(), " LUT entries for ",
            bits, " bits");
    std::fill(out.begin(), out.end(), std::uint8_t{0});
    const auto byte = [&](std::size_t k, std::size_t p) { return static_cast<std::uint8_t>(lut[k] >> (8 * p)); };
    for (std::size_t k = 0; k < lut.size(); ++k)
        for (std::size_t p = 0; p < 4; ++p) {
            switch (bits) {
                case 4: out[16 * p + k] = byte(k, p); break;  // byte planes
                case 3:                                         // byte-pair planes, then L0..L7
                    out[16 * (p / 2) + 8 * (p % 2) + k] = byte(k, p);
                    out[32 + 4 * k + p] = byte(k, p);
                    break;
                case 1:                                         // L0, L1, L0, L1
                    out[8 + 4 * k + p] = byte(k, p);
                    [[fallthrough]];
                default: out[4 * k + p] = byte(k, p); break;    // 2 bits: L0..L3
            }
        }
}

/// The tile column whose weight the exact decoder for `bits` produces at position p (0..255) of a
/// tile: x is permuted so that position p of a tile holds x at this column.
constexpr std::size_t exact_column(int bits, std::size_t p) noexcept {
    const std::size_t v = p / 8;  // which vector of 8 weights
    const std::size_t i = p % 8;  // lane
    switch (bits) {
        case 4: {
            const std::size_t s = v / 4;
            const std::size_t r = v % 4;
            return slot_columns * s + (i < 4 ? 4 * r + i : 16 + 4 * r + (i - 4));
        }
        case 3: {  // odd slots (vpermps): vector v = 4 s + b: byte b of each 32-bit lane of slot s
            if (v / 4 % 2 == 1) return slot_columns * (v / 4) + 4 * i + v % 4;
            return exact_column(4, p);  // even slots (byte-pair planes): the 4-bit unpack order
        }
        case 2: {  // vector v = 16 k + n of tile vector V_k, n = 4 b + m
            const std::size_t k = v / 16;
            const std::size_t n = v % 16;
            return slot_columns * (4 * k + n % 4) + 4 * i + n / 4;
        }
        default: {  // n = 8 b + s
            return slot_columns * (v % 8) + 4 * i + v / 8;
        }
    }
}

/// The tile column whose weight the AVX-512 exact decoder for `bits` produces at position p (0..255)
/// of a tile (cpu_kernels_avx512.hpp): vector n = p / 16 of 16 floats, lane i = p % 16. Every width
/// reads 64 bytes as 16 32-bit lanes (lane i: bytes 4i..4i+3) and looks up bits 0-3 of each lane
/// (vpermps), so step m of a 64-byte chunk is the chunk shifted right by m times the code width:
///   4, 3 bits: chunk z = n / 8 is V_2z | V_2z+1 (3 bits, z = 1: V_2 | the codes of slots 6 and 7
///              gathered from the spare bits like V_3), step m = n % 8: byte b = m / 2 of each lane,
///              nibble h = m % 2: column 32 (2k + h) + t for byte q = 4i + b, k = 2z + q / 32, t = q % 32.
///   2 bits:    chunk V_0 | V_1, step m = n: byte b = m / 4, code j = m % 4 of the byte:
///              column 32 (4k + j) + t for byte q = 4i + b, k = q / 32, t = q % 32.
///   1 bit:     V_0 in lanes 0-7 and V_0 >> 4 in lanes 8-15, step m = n: byte b = m / 4, bit j = m % 4
///              (+ 4 in lanes 8-15): column 32 (j + 4 (i / 8)) + 4 (i % 8) + b.
constexpr std::size_t exact_column_512(int bits, std::size_t p) noexcept {
    const std::size_t n = p / 16;
    const std::size_t i = p % 16;
    if (bits >= 3) {
        const std::size_t z = n / 8, m = n % 8;
        const std::size_t q = 4 * i + m / 2;
        return slot_columns * (2 * (2 * z + q / 32) + m % 2) + q % 32;
    }
    if (bits == 2) {
        const std::size_t q = 4 * i + n / 4;
        return slot_columns * (4 * (q / 32) + n % 4) + q % 32;
    }
    return slot_columns * (n % 4 + 4 * (i / 8)) + 4 * (i % 8) + n / 4;
}

/// The code at tile column `column` (0..255) of a tile in the layout above; the scalar inverse of
/// encode_tile, used by the portable kernels.
inline unsigned tile_code(const std::uint8_t* tile, int bits, std::size_t column) noexcept {
    const std::size_t s = column / slot_columns;
    const std::size_t t = column % slot_columns;
    switch (bits) {
        case 1:
            return (tile[t] >> s) & 1u;
        case 2:
            return (tile[32 * (s / 4) + t] >> (2 * (s % 4))) & 3u;
        case 3: {
            if (s < 6) return (tile[32 * (s / 2) + t] >> (4 * (s % 2))) & 7u;
            const std::size_t spare = 3 + 4 * (s - 6);  // bit of V_k that holds bit k of the code
            return ((tile[t] >> spare) & 1u) | ((tile[32 + t] >> spare) & 1u) << 1 | ((tile[64 + t] >> spare) & 1u) << 2;
        }
        default:
            return (tile[32 * (s / 2) + t] >> (4 * (s % 2))) & 15u;
    }
}

/// x permuted tile by tile into a decoder's order, zero-padded to whole tiles: position p of tile t
/// of `out` holds x at column 256 t + ColumnOf(bits, p) (or 0 past `cols`). A scalar copy through a
/// table built at compile time: a few microseconds for the longest rows.
template <std::size_t (*ColumnOf)(int, std::size_t) noexcept>
void permute_columns(int bits, const float* x, std::size_t cols, std::size_t tiles, float* out) noexcept {
    static constexpr auto orders = [] {
        std::array<std::array<std::uint8_t, tile_columns>, max_tiled_bits + 1> o{};
        for (int b = 1; b <= max_tiled_bits; ++b)
            for (std::size_t p = 0; p < tile_columns; ++p) o[static_cast<std::size_t>(b)][p] = static_cast<std::uint8_t>(ColumnOf(b, p));
        return o;
    }();
    const auto& order = orders[static_cast<std::size_t>(bits)];
    const std::size_t whole = cols / tile_columns;
    for (std::size_t t = 0; t < whole; ++t)
        for (std::size_t p = 0; p < tile_columns; ++p) out[t * tile_columns + p] = x[t * tile_columns + order[p]];
    for (std::size_t t = whole; t < tiles; ++t)
        for (std::size_t p = 0; p < tile_columns; ++p) {
            const std::size_t j = t * tile_columns + order[p];
            out[t * tile_columns + p] = j < cols ? x[j] : 0.0f;
        }
}

}  // namespace sqz::detail::cpu_layout
