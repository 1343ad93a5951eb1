// sqz/pack.hpp - canonical bit-packing of unsigned codes of 1..8 bits.
//
// Format (the canonical storage format of sqz; back ends may convert it to their own layouts):
// a little-endian bit stream. Code i occupies stream bits [i*b, (i+1)*b), its least significant bit
// first, and stream bit s lives in byte s/8 at bit position s%8. Codes may straddle byte boundaries.
// The bits after the last code in the final byte are written as zero and ignored when reading.
//
//   packed_size(n, b)            bytes needed for n codes of b bits: ceil(n*b/8)
//   pack<B>(codes, out)          compile-time width      pack(codes, b, out)    run-time width
//   unpack<B>(packed, n, out)    compile-time width      unpack(packed, b, n, out)
//   packed_code(packed, b, i)    one code, for scalar reference paths
//
// Codes that do not fit in b bits and buffers of the wrong size are rejected with sqz::error.
#pragma once

#include <sqz/error.hpp>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

namespace sqz {

/// Smallest and largest supported code width in bits.
inline constexpr int min_bits = 1;
inline constexpr int max_bits = 8;

namespace detail {

inline void check_bits(int bits, const char* where) {
    require(bits >= min_bits && bits <= max_bits, where, ": bits = ", bits, " is outside 1..8");
}

}  // namespace detail

/// Bytes needed to store `count` codes of `bits` bits in the canonical format.
inline std::size_t packed_size(std::size_t count, int bits) {
    detail::check_bits(bits, "sqz::packed_size");
    detail::require(count <= std::numeric_limits<std::size_t>::max() / 8, "sqz::packed_size: count = ", count,
                    " overflows the byte size");
    return (count * static_cast<std::size_t>(bits) + 7) / 8;
}

namespace detail {

// Shared by the compile-time and run-time entry points; with a constant `bits` the compiler folds the
// shifts and masks, so pack<3> is as fast as hand-written code.
inline void pack_impl(std::span<const std::uint8_t> codes, int bits, std::span<std::uint8_t> out) {
    const std::size_t need = packed_size(codes.size(), bits);
    require(out.size() == need, "sqz::pack: output buffer has ", out.size(), " bytes, ", need, " are needed for ",
            codes.size(), " codes of ", bits, " bits");
    const unsigned limit = 1u << bits;
    std::uint64_t buffer = 0;  // pending stream bits, lowest first
    int pending = 0;           // number of valid bits in buffer (< 8 between codes)
    std::size_t byte = 0;
    for (std::size_t i = 0; i < codes.size(); ++i) {
        const unsigned code = codes[i];
        if (code >= limit) fail("sqz::pack: code ", code, " at index ", i, " does not fit in ", bits, " bits");
        buffer |= static_cast<std::uint64_t>(code) << pending;
        pending += bits;
        while (pending >= 8) {
            out[byte++] = static_cast<std::uint8_t>(buffer);
            buffer >>= 8;
            pending -= 8;
        }
    }
    if (pending > 0) out[byte++] = static_cast<std::uint8_t>(buffer);
}

inline void unpack_impl(std::span<const std::uint8_t> packed, int bits, std::size_t count,
                        std::span<std::uint8_t> out) {
    const std::size_t need = packed_size(count, bits);
    require(packed.size() >= need, "sqz::unpack: packed buffer has ", packed.size(), " bytes, ", need,
            " are needed for ", count, " codes of ", bits, " bits");
    require(out.size() == count, "sqz::unpack: output has room for ", out.size(), " codes, count = ", count);
    const std::uint64_t mask = (std::uint64_t{1} << bits) - 1;
    std::uint64_t buffer = 0;
    int available = 0;
    std::size_t byte = 0;
    for (std::size_t i = 0; i < count; ++i) {
        while (available < bits) {
            buffer |= static_cast<std::uint64_t>(packed[byte++]) << available;
            available += 8;
        }
        out[i] = static_cast<std::uint8_t>(buffer & mask);
        buffer >>= bits;
        available -= bits;
    }
}

}  // namespace detail

/// Packs codes of a compile-time width into `out`, which must hold exactly packed_size(codes.size(), Bits).
template <int Bits>
void pack(std::span<const std::uint8_t> codes, std::span<std::uint8_t> out) {
    static_assert(Bits >= min_bits && Bits <= max_bits, "sqz::pack: Bits must be in 1..8");
    detail::pack_impl(codes, Bits, out);
}

/// Packs codes of a run-time width into `out`, which must hold exactly packed_size(codes.size(), bits).
inline void pack(std::span<const std::uint8_t> codes, int bits, std::span<std::uint8_t> out) {
    detail::check_bits(bits, "sqz::pack");
    detail::pack_impl(codes, bits, out);
}

/// Packs codes into a new buffer.
template <int Bits>
std::vector<std::uint8_t> pack(std::span<const std::uint8_t> codes) {
    std::vector<std::uint8_t> out(packed_size(codes.size(), Bits));
    pack<Bits>(codes, out);
    return out;
}

inline std::vector<std::uint8_t> pack(std::span<const std::uint8_t> codes, int bits) {
    std::vector<std::uint8_t> out(packed_size(codes.size(), bits));
    pack(codes, bits, out);
    return out;
}

/// Unpacks `count` codes of a compile-time width. `packed` must hold at least packed_size(count, Bits)
/// bytes; `out` must hold exactly count codes.
template <int Bits>
void unpack(std::span<const std::uint8_t> packed, std::size_t count, std::span<std::uint8_t> out) {
    static_assert(Bits >= min_bits && Bits <= max_bits, "sqz::unpack: Bits must be in 1..8");
    detail::unpack_impl(packed, Bits, count, out);
}

inline void unpack(std::span<const std::uint8_t> packed, int bits, std::size_t count, std::span<std::uint8_t> out) {
    detail::check_bits(bits, "sqz::unpack");
    detail::unpack_impl(packed, bits, count, out);
}

template <int Bits>
std::vector<std::uint8_t> unpack(std::span<const std::uint8_t> packed, std::size_t count) {
    std::vector<std::uint8_t> out(count);
    unpack<Bits>(packed, count, out);
    return out;
}

inline std::vector<std::uint8_t> unpack(std::span<const std::uint8_t> packed, int bits, std::size_t count) {
    std::vector<std::uint8_t> out(count);
    unpack(packed, bits, count, out);
    return out;
}

/// Reads code `index` from a canonical stream without bounds checks beyond what the stream format
/// needs: the caller guarantees packed.size() >= packed_size(index + 1, bits). For scalar reference
/// paths; bulk decoding should use unpack or a back end's kernel.
inline unsigned packed_code(std::span<const std::uint8_t> packed, int bits, std::size_t index) {
    const std::size_t first_bit = index * static_cast<std::size_t>(bits);
    const std::size_t byte = first_bit / 8;
    const unsigned shift = static_cast<unsigned>(first_bit % 8);
    // A code of at most 8 bits starting at bit `shift` < 8 spans at most two bytes.
    unsigned window = packed[byte];
    if (shift + static_cast<unsigned>(bits) > 8) window |= static_cast<unsigned>(packed[byte + 1]) << 8;
    return (window >> shift) & ((1u << bits) - 1u);
}

}  // namespace sqz
