// sqz/detail/cpu_layout.hpp - the cpu back end's repacked code layout for 1..4 bits ("tiles").
//
// Each row is cut into tiles of 256 columns (the last one padded with code 0). A tile of b-bit codes
// takes 32*b bytes: b vectors V_0..V_{b-1} of 32 bytes. Column 32*s + t of the tile ("slot" s = 0..7,
// lane t = 0..31) lives in byte t of the vectors, so that one 256-bit load, a shift and a mask give the
// 32 codes of a slot as bytes, ready for a byte shuffle (vpshufb) through the row's LUT:
//   4 bits: V_k byte t = code(2k) | code(2k+1) << 4                          (k = 0..3)
//   2 bits: V_k byte t = code(4k) | code(4k+1) << 2 | code(4k+2) << 4 | code(4k+3) << 6   (k = 0, 1)
//   1 bit:  V_0 byte t = sum_s code(s) << s
//   3 bits: V_0 byte t = code(0) | code(1) << 3 | (code(6) & 3) << 6
//           V_1 byte t = code(2) | code(3) << 3 | (code(6) >> 2) << 6 | (code(7) & 1) << 7
//           V_2 byte t = code(4) | code(5) << 3 | (code(7) >> 1) << 6
//           (slots 6 and 7 fill the two spare bits of each vector: two shifts, two masks and an or each)
// where code(s) is the code at column 32*s + t. The portable kernels decode the same layout with
// tile_code(); the AVX2 kernels with shifts and masks (cpu_kernels_avx2.hpp).
//
// Rows are stored in groups of four, tile-interleaved: tile t of row 4g + r is at byte offset
// g * 4 * row_bytes + (4 t + r) * tile_bytes, where row_bytes = tiles * tile_bytes (the row count is
// padded to a multiple of four with code-0 rows). The int8 kernel, which works on four rows at once,
// then reads one purely sequential stream; with separate rows it read four streams a short row apart,
// which the hardware prefetcher followed badly (14336 x 4096 was 40% slower than 4096 x 14336).
#pragma once

#include <sqz/error.hpp>

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
                tile[t] = static_cast<std::uint8_t>(code(0, t) | code(1, t) << 3 | (code(6, t) & 3u) << 6);
                tile[32 + t] = static_cast<std::uint8_t>(code(2, t) | code(3, t) << 3 | (code(6, t) >> 2) << 6 |
                                                         (code(7, t) & 1u) << 7);
                tile[64 + t] = static_cast<std::uint8_t>(code(4, t) | code(5, t) << 3 | (code(7, t) >> 1) << 6);
                break;
            default:
                for (std::size_t k = 0; k < 4; ++k)
                    tile[32 * k + t] = static_cast<std::uint8_t>(code(2 * k, t) | code(2 * k + 1, t) << 4);
                break;
        }
    }
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
        case 3:
            if (s < 6) return (tile[32 * (s / 2) + t] >> (3 * (s % 2))) & 7u;
            if (s == 6) return (tile[t] >> 6) | ((tile[32 + t] >> 6) & 1u) << 2;
            return (tile[32 + t] >> 7) | (tile[64 + t] >> 6) << 1;
        default:
            return (tile[32 * (s / 2) + t] >> (4 * (s % 2))) & 15u;
    }
}

}  // namespace sqz::detail::cpu_layout
