// sqz/io/safetensors.hpp - reading and writing safetensors files (https://huggingface.co/docs/safetensors).
//
// A safetensors file is an 8-byte little-endian header length N, N bytes of JSON mapping each tensor name
// to {"dtype", "shape", "data_offsets": [begin, end]} (plus an optional "__metadata__" object of strings),
// then the data section, every tensor's bytes at [begin, end) relative to its start.
//
//   safetensors_file   memory-maps a file (or views a buffer) and validates the header completely before
//                      anything is read: the length lies inside the file, the JSON is well formed with the
//                      expected structure, names are unique, non-empty UTF-8 without NUL, every dtype is
//                      known, shape product * dtype size == end - begin with no overflow, and the ranges
//                      tile the data section exactly (inside it, sorted they neither overlap nor leave gaps,
//                      as the format requires). Malformed files give sqz::error naming the file, the tensor
//                      and the problem; nothing is allocated from a size the file merely claims. Reads
//                      convert F16, BF16, F32 and F64 to float or double.
//   safetensors_writer collects tensors in an unnamed spool file (so a large output need not fit in memory)
//                      and publishes the finished file atomically on commit(): header, each tensor aligned
//                      to its element size (8-, 4-, 2- then 1-byte types), flushed to disk, then renamed
//                      over the destination. Without commit() nothing appears.
//
// Needs nlohmann-json (the sqz::io CMake target), POSIX file APIs (Linux: O_TMPFILE and copy_file_range
// are used when available) and a little-endian host.
#pragma once

#include <sqz/error.hpp>
#include <sqz/half.hpp>
#include <sqz/io/detail/posix_file.hpp>
#include <sqz/types.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace sqz::io {

static_assert(std::endian::native == std::endian::little,
              "sqz::io reads and writes safetensors (little-endian) on little-endian hosts only");

/// Element types of the safetensors format.
enum class dtype : std::uint8_t { boolean, u8, i8, f8_e5m2, f8_e4m3, i16, u16, f16, bf16, i32, u32, f32, f64, i64, u64 };

/// The name a dtype has in safetensors headers ("F32", "BF16", ...).
constexpr std::string_view to_string(dtype type) noexcept {
    switch (type) {
        case dtype::boolean: return "BOOL";
        case dtype::u8: return "U8";
        case dtype::i8: return "I8";
        case dtype::f8_e5m2: return "F8_E5M2";
        case dtype::f8_e4m3: return "F8_E4M3";
        case dtype::i16: return "I16";
        case dtype::u16: return "U16";
        case dtype::f16: return "F16";
        case dtype::bf16: return "BF16";
        case dtype::i32: return "I32";
        case dtype::u32: return "U32";
        case dtype::f32: return "F32";
        case dtype::f64: return "F64";
        case dtype::i64: return "I64";
        case dtype::u64: return "U64";
    }
    return "?";
}

/// The dtype named `name` in a header, or nothing for an unknown name.
constexpr std::optional<dtype> parse_dtype(std::string_view name) noexcept {
    for (int i = 0; i <= static_cast<int>(dtype::u64); ++i)
        if (to_string(static_cast<dtype>(i)) == name) return static_cast<dtype>(i);
    return std::nullopt;
}

/// Bytes per element.
constexpr std::size_t dtype_size(dtype type) noexcept {
    switch (type) {
        case dtype::boolean:
        case dtype::u8:
        case dtype::i8:
        case dtype::f8_e5m2:
        case dtype::f8_e4m3: return 1;
        case dtype::i16:
        case dtype::u16:
        case dtype::f16:
        case dtype::bf16: return 2;
        case dtype::i32:
        case dtype::u32:
        case dtype::f32: return 4;
        case dtype::f64:
        case dtype::i64:
        case dtype::u64: return 8;
    }
    return 1;
}

/// The floating-point dtypes that sqz converts to and from float/double.
constexpr bool is_convertible_float(dtype type) noexcept {
    return type == dtype::f16 || type == dtype::bf16 || type == dtype::f32 || type == dtype::f64;
}

/// The dtype that stores a C++ type unchanged.
template <class T>
inline constexpr dtype dtype_of = [] {
    static_assert(sizeof(T) == 0, "sqz::io::dtype_of: no safetensors dtype for this type");
    return dtype::u8;
}();
template <> inline constexpr dtype dtype_of<bool> = dtype::boolean;
template <> inline constexpr dtype dtype_of<std::uint8_t> = dtype::u8;
template <> inline constexpr dtype dtype_of<std::int8_t> = dtype::i8;
template <> inline constexpr dtype dtype_of<std::int16_t> = dtype::i16;
template <> inline constexpr dtype dtype_of<std::uint16_t> = dtype::u16;
template <> inline constexpr dtype dtype_of<std::int32_t> = dtype::i32;
template <> inline constexpr dtype dtype_of<std::uint32_t> = dtype::u32;
template <> inline constexpr dtype dtype_of<float> = dtype::f32;
template <> inline constexpr dtype dtype_of<double> = dtype::f64;
template <> inline constexpr dtype dtype_of<std::int64_t> = dtype::i64;
template <> inline constexpr dtype dtype_of<std::uint64_t> = dtype::u64;

/// Largest header the reader accepts (the limit of the reference implementation).
inline constexpr std::uint64_t max_header_bytes = 100'000'000;
/// Largest number of dimensions the reader accepts.
inline constexpr std::size_t max_rank = 64;

/// One tensor of a safetensors file, as validated from its header.
struct tensor_info {
    std::string name;
    io::dtype type = dtype::u8;
    std::vector<std::int64_t> shape;
    std::uint64_t begin = 0;  ///< byte range [begin, end) in the data section
    std::uint64_t end = 0;

    std::size_t rank() const noexcept { return shape.size(); }
    /// Number of elements (the product of the shape; 1 for a scalar).
    std::uint64_t elements() const noexcept {
        std::uint64_t count = 1;
        for (const auto d : shape) count *= static_cast<std::uint64_t>(d);
        return count;
    }
    std::uint64_t bytes() const noexcept { return end - begin; }
};

namespace detail {

/// `text` with control characters (and, when `ascii`, all non-ASCII bytes) escaped as \xNN, so that
/// names and parser output are safe to print on a terminal.
inline std::string printable(std::string_view text, bool ascii = false) {
    static constexpr char hex[] = "0123456789abcdef";
    std::string out;
    out.reserve(text.size());
    for (const char c : text) {
        const auto byte = static_cast<unsigned char>(c);
        if (byte < 0x20 || byte == 0x7f || (ascii && byte >= 0x80) || c == '\\') {
            out += "\\x";
            out += hex[byte >> 4];
            out += hex[byte & 15];
        } else {
            out += c;
        }
    }
    return out;
}

inline std::string shape_text(std::span<const std::int64_t> shape) {
    std::string out = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
    return out + "]";
}

/// Builds tensor_info records from the header JSON, event by event (nlohmann's SAX interface), so that
/// the structure is checked as it is read and no JSON tree is ever built: memory stays proportional to
/// the header, and deep nesting, duplicates and wrong types stop the parse at once.
class header_parser final : public nlohmann::json_sax<nlohmann::json> {
public:
    std::vector<tensor_info> tensors;
    std::map<std::string, std::string, std::less<>> metadata;
    std::string error;  // set when the structure is wrong; the parse stops

    bool null() override { return unexpected("null"); }
    bool boolean(bool) override { return unexpected("a boolean"); }
    bool number_integer(number_integer_t) override { return unexpected("a negative number"); }
    bool number_float(number_float_t, const string_t&) override {
        return unexpected("a number that is not an integer in 0..2^64-1");
    }
    bool binary(binary_t&) override { return unexpected("binary data"); }

    bool number_unsigned(number_unsigned_t value) override {
        if (state_ == state::shape) {
            if (tensors.back().shape.size() >= max_rank)
                return fail_tensor("has more than ", max_rank, " dimensions");
            if (value > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
                return fail_tensor("dimension ", value, " is too large");
            tensors.back().shape.push_back(static_cast<std::int64_t>(value));
            return true;
        }
        if (state_ == state::offsets) {
            if (offset_count_ >= 2) return fail_tensor("\"data_offsets\" has more than 2 entries");
            (offset_count_ == 0 ? tensors.back().begin : tensors.back().end) = value;
            ++offset_count_;
            return true;
        }
        return unexpected("a number");
    }

    bool string(string_t& value) override {
        if (state_ == state::metadata_value) {
            metadata.emplace(std::move(pending_key_), std::move(value));
            state_ = state::metadata;
            return true;
        }
        if (state_ == state::field_value && field_ == field::dtype) {
            const auto type = parse_dtype(value);
            if (!type) return fail_tensor("unknown dtype \"", printable(value), "\"");
            tensors.back().type = *type;
            state_ = state::tensor;
            return true;
        }
        return unexpected("a string");
    }

    bool start_object(std::size_t) override {
        if (state_ == state::start) {
            state_ = state::root;
            return true;
        }
        if (state_ == state::entry_value) {
            if (pending_key_ == "__metadata__") {
                state_ = state::metadata;
            } else {
                tensors.push_back(tensor_info{std::move(pending_key_), dtype::u8, {}, 0, 0});
                seen_fields_ = 0;
                state_ = state::tensor;
            }
            return true;
        }
        return unexpected("an object");
    }

    bool key(string_t& name) override {
        if (state_ == state::root) {
            if (name.empty()) return fail("a tensor name is empty");
            if (name.find('\0') != std::string::npos)
                return fail("tensor name \"", printable(name), "\" contains a NUL character");
            if (!root_keys_.insert(name).second) return fail("\"", printable(name), "\" appears twice in the header");
            pending_key_ = std::move(name);
            state_ = state::entry_value;
            return true;
        }
        if (state_ == state::metadata) {
            if (metadata.count(name) != 0) return fail("__metadata__ key \"", printable(name), "\" appears twice");
            pending_key_ = std::move(name);
            state_ = state::metadata_value;
            return true;
        }
        if (state_ == state::tensor) {
            if (name == "dtype") field_ = field::dtype;
            else if (name == "shape") field_ = field::shape;
            else if (name == "data_offsets") field_ = field::offsets;
            else return fail_tensor("unknown field \"", printable(name), "\"");
            const unsigned bit = 1u << static_cast<unsigned>(field_);
            if ((seen_fields_ & bit) != 0) return fail_tensor("field \"", printable(name), "\" appears twice");
            seen_fields_ |= bit;
            state_ = state::field_value;
            return true;
        }
        return unexpected("a key");
    }

    bool end_object() override {
        if (state_ == state::root) {
            state_ = state::done;
            return true;
        }
        if (state_ == state::metadata) {
            state_ = state::root;
            return true;
        }
        if (state_ == state::tensor) {
            if (seen_fields_ != 7u)
                return fail_tensor("lacks \"", (seen_fields_ & 1u) == 0 ? "dtype" : (seen_fields_ & 2u) == 0 ? "shape" : "data_offsets",
                                   "\"");
            state_ = state::root;
            return true;
        }
        return unexpected("the end of an object");
    }

    bool start_array(std::size_t) override {
        if (state_ == state::field_value && field_ == field::shape) {
            state_ = state::shape;
            return true;
        }
        if (state_ == state::field_value && field_ == field::offsets) {
            offset_count_ = 0;
            state_ = state::offsets;
            return true;
        }
        return unexpected("an array");
    }

    bool end_array() override {
        if (state_ == state::shape) {
            state_ = state::tensor;
            return true;
        }
        if (state_ == state::offsets) {
            if (offset_count_ != 2) return fail_tensor("\"data_offsets\" has ", offset_count_, " entries, expected 2");
            state_ = state::tensor;
            return true;
        }
        return unexpected("the end of an array");
    }

    bool parse_error(std::size_t position, const std::string&, const nlohmann::detail::exception& ex) override {
        if (error.empty()) error = "header is not valid JSON (byte " + std::to_string(position) + "): " + printable(ex.what(), true);
        return false;
    }

private:
    enum class state { start, root, entry_value, metadata, metadata_value, tensor, field_value, shape, offsets, done };
    enum class field : unsigned { dtype = 0, shape = 1, offsets = 2 };

    template <class... Parts>
    bool fail(Parts&&... parts) {
        std::ostringstream out;
        (out << ... << std::forward<Parts>(parts));
        if (error.empty()) error = out.str();
        return false;
    }
    template <class... Parts>
    bool fail_tensor(Parts&&... parts) {
        return fail("tensor '", printable(tensors.back().name), "': ", std::forward<Parts>(parts)...);
    }
    bool unexpected(const char* what) {
        switch (state_) {
            case state::start: return fail("header is not a JSON object (found ", what, ")");
            case state::entry_value:
                return pending_key_ == "__metadata__" ? fail("__metadata__ must be an object of strings, found ", what)
                                                      : fail("tensor '", printable(pending_key_),
                                                             "': entry must be an object, found ", what);
            case state::metadata_value:
                return fail("__metadata__ value of \"", printable(pending_key_), "\" must be a string, found ", what);
            case state::field_value:
                return field_ == field::dtype ? fail_tensor("\"dtype\" must be a string, found ", what)
                       : field_ == field::shape
                           ? fail_tensor("\"shape\" must be an array of non-negative integers, found ", what)
                           : fail_tensor("\"data_offsets\" must be an array of two non-negative integers, found ", what);
            case state::shape: return fail_tensor("\"shape\" must hold non-negative integers, found ", what);
            case state::offsets: return fail_tensor("\"data_offsets\" must hold non-negative integers, found ", what);
            default: return fail("unexpected ", what, " in the header");
        }
    }

    state state_ = state::start;
    field field_ = field::dtype;
    unsigned seen_fields_ = 0;
    std::size_t offset_count_ = 0;
    std::string pending_key_;
    std::set<std::string, std::less<>> root_keys_;
};

/// Converts `count` little-endian elements of a floating-point dtype to T.
template <working_scalar T>
void convert_floats(dtype type, const std::uint8_t* source, std::size_t count, T* out) noexcept {
    switch (type) {
        case dtype::f32:
            for (std::size_t i = 0; i < count; ++i) {
                float v;
                std::memcpy(&v, source + 4 * i, 4);
                out[i] = static_cast<T>(v);
            }
            break;
        case dtype::f64:
            for (std::size_t i = 0; i < count; ++i) {
                double v;
                std::memcpy(&v, source + 8 * i, 8);
                out[i] = static_cast<T>(v);
            }
            break;
        case dtype::bf16:
            for (std::size_t i = 0; i < count; ++i) {
                std::uint16_t v;
                std::memcpy(&v, source + 2 * i, 2);
                out[i] = static_cast<T>(bfloat16_bits_to_float(v));
            }
            break;
        case dtype::f16:
            for (std::size_t i = 0; i < count; ++i) {
                std::uint16_t v;
                std::memcpy(&v, source + 2 * i, 2);
                out[i] = static_cast<T>(half_bits_to_float(v));
            }
            break;
        default: break;  // callers check is_convertible_float first
    }
}

}  // namespace detail

/// A validated, read-only safetensors file (memory-mapped) or buffer. Cheap to copy: copies share the
/// mapping. All member functions are const and may be called from several threads at once.
class safetensors_file {
public:
    /// Maps and validates the file at `path`.
    explicit safetensors_file(const std::filesystem::path& path) : source_(path.string()) {
        std::shared_ptr<detail::mapped_file> mapping;
        try {
            mapping = std::make_shared<detail::mapped_file>(path);
        } catch (const sqz::error& e) {
            fail(e.what());
        }
        bytes_ = mapping->bytes();
        mapping_ = mapping.get();
        keep_alive_ = std::move(mapping);
        parse();
    }

    /// Validates a file image in memory without copying it; `bytes` must outlive the object and its copies.
    static safetensors_file view(std::span<const std::uint8_t> bytes, std::string source_name = "<memory>") {
        return safetensors_file(bytes, nullptr, std::move(source_name));
    }

    /// Validates a file image in memory, taking ownership of it.
    static safetensors_file from_buffer(std::vector<std::uint8_t> bytes, std::string source_name = "<memory>") {
        auto owned = std::make_shared<std::vector<std::uint8_t>>(std::move(bytes));
        const std::span<const std::uint8_t> view(*owned);
        return safetensors_file(view, std::move(owned), std::move(source_name));
    }

    /// The file name (or the name given to a buffer), used in every error message.
    const std::string& source() const noexcept { return source_; }
    std::uint64_t file_size() const noexcept { return bytes_.size(); }
    /// Bytes of the JSON header, padding included (the data section starts at 8 + header_size()).
    std::uint64_t header_size() const noexcept { return data_start_ - 8; }

    /// All tensors in the order of their data.
    const std::vector<tensor_info>& tensors() const noexcept { return tensors_; }
    /// The "__metadata__" entries (empty when the header has none).
    const std::map<std::string, std::string, std::less<>>& metadata() const noexcept { return metadata_; }

    const tensor_info* find(std::string_view name) const noexcept {
        const auto it = index_.find(name);
        return it == index_.end() ? nullptr : &tensors_[it->second];
    }
    bool contains(std::string_view name) const noexcept { return find(name) != nullptr; }
    /// The tensor called `name`; throws sqz::error naming the file when there is none.
    const tensor_info& at(std::string_view name) const {
        const tensor_info* info = find(name);
        if (info == nullptr) fail("tensor '", detail::printable(name), "' is not in the file");
        return *info;
    }

    /// The raw little-endian bytes of a tensor.
    std::span<const std::uint8_t> data(const tensor_info& info) const noexcept {
        return bytes_.subspan(static_cast<std::size_t>(data_start_ + info.begin), static_cast<std::size_t>(info.bytes()));
    }

    /// Converts a floating-point tensor (F16, BF16, F32, F64) of any shape into `out`, which must hold
    /// exactly its number of elements.
    template <working_scalar T>
    void read_into(const tensor_info& info, std::span<T> out) const {
        require_float(info);
        if (out.size() != info.elements())
            fail_tensor(info, "has ", info.elements(), " elements but the output holds ", out.size());
        detail::convert_floats(info.type, data(info).data(), out.size(), out.data());
    }

    /// Converts rows [first, first + count) of a floating-point tensor of rank >= 1 (a row is one index
    /// of the first dimension) into `out`, which must hold exactly count rows; for streaming large tensors.
    template <working_scalar T>
    void read_rows(const tensor_info& info, std::uint64_t first, std::uint64_t count, std::span<T> out) const {
        require_float(info);
        if (info.rank() == 0) fail_tensor(info, "is a scalar, it has no rows");
        const auto rows = static_cast<std::uint64_t>(info.shape[0]);
        if (first > rows || count > rows - first)
            fail_tensor(info, "has ", rows, " rows, cannot read rows ", first, "..", first + count);
        const std::uint64_t row_elements = rows == 0 ? 0 : info.elements() / rows;
        if (out.size() != count * row_elements)
            fail_tensor(info, "rows of ", row_elements, " elements: ", count, " rows need ", count * row_elements,
                        " values but the output holds ", out.size());
        const std::size_t offset = static_cast<std::size_t>(first * row_elements * dtype_size(info.type));
        detail::convert_floats(info.type, data(info).data() + offset, out.size(), out.data());
    }

    /// A floating-point tensor of any shape, flattened in row-major order and converted to T.
    template <working_scalar T>
    std::vector<T> read_vector(std::string_view name) const {
        const tensor_info& info = at(name);
        require_float(info);
        std::vector<T> out(static_cast<std::size_t>(info.elements()));
        read_into<T>(info, out);
        return out;
    }

    /// A 2-D floating-point tensor as a row-major matrix of T.
    template <working_scalar T>
    row_matrix<T> read_matrix(std::string_view name) const {
        const tensor_info& info = at(name);
        require_float(info);
        if (info.rank() != 2) fail_tensor(info, "has shape ", detail::shape_text(info.shape), ", expected 2 dimensions");
        row_matrix<T> out(info.shape[0], info.shape[1]);
        read_into<T>(info, std::span<T>(out.data(), static_cast<std::size_t>(out.size())));
        return out;
    }

    /// An integer (or bool) tensor whose dtype is exactly Int's, flattened.
    template <class Int>
    std::vector<Int> read_integers(std::string_view name) const {
        const tensor_info& info = at(name);
        if (info.type != dtype_of<Int>)
            fail_tensor(info, "has dtype ", to_string(info.type), ", expected ", to_string(dtype_of<Int>));
        std::vector<Int> out(static_cast<std::size_t>(info.elements()));
        if (!out.empty()) std::memcpy(out.data(), data(info).data(), out.size() * sizeof(Int));
        return out;
    }

    /// Drops a tensor's pages from memory once it has been converted (a memory-mapped file only; a hint
    /// that never changes what is read).
    void release(const tensor_info& info) const noexcept {
        if (mapping_ != nullptr) mapping_->release(static_cast<std::size_t>(data_start_ + info.begin), static_cast<std::size_t>(info.bytes()));
    }

    /// Throws sqz::error "sqz::io: file '<source>': tensor '<name>': <parts>".
    template <class... Parts>
    [[noreturn]] void fail_tensor(const tensor_info& info, Parts&&... parts) const {
        fail("tensor '", detail::printable(info.name), "': ", std::forward<Parts>(parts)...);
    }
    /// Throws sqz::error "sqz::io: file '<source>': <parts>".
    template <class... Parts>
    [[noreturn]] void fail(Parts&&... parts) const {
        sqz::detail::fail("sqz::io: file '", detail::printable(source_), "': ", std::forward<Parts>(parts)...);
    }

private:
    safetensors_file(std::span<const std::uint8_t> bytes, std::shared_ptr<const void> keep_alive, std::string source)
        : source_(std::move(source)), bytes_(bytes), keep_alive_(std::move(keep_alive)) {
        parse();
    }

    void require_float(const tensor_info& info) const {
        if (!is_convertible_float(info.type))
            fail_tensor(info, "has dtype ", to_string(info.type), ", expected a floating-point dtype (F16, BF16, F32, F64)");
    }

    void parse() {
        const std::uint64_t size = bytes_.size();
        if (size < 8) fail("is ", size, " bytes long, too short for the 8-byte header length");
        std::uint64_t header_length = 0;
        std::memcpy(&header_length, bytes_.data(), 8);
        if (header_length > size - 8)
            fail("header length ", header_length, " exceeds the ", size - 8, " bytes after the length field (truncated or not a safetensors file)");
        if (header_length > max_header_bytes) fail("header length ", header_length, " exceeds the limit of ", max_header_bytes, " bytes");
        data_start_ = 8 + header_length;

        const auto* first = reinterpret_cast<const char*>(bytes_.data() + 8);
        // JSON text never holds a raw NUL, and nlohmann's lexer would take one as the end of input,
        // silently ignoring what follows.
        if (const void* nul = std::memchr(first, 0, static_cast<std::size_t>(header_length)))
            fail("header is not valid JSON: NUL byte at header offset ", static_cast<const char*>(nul) - first);
        detail::header_parser parser;
        bool parsed = false;
        try {
            parsed = nlohmann::json::sax_parse(first, first + header_length, &parser, nlohmann::json::input_format_t::json, true);
        } catch (const nlohmann::json::exception& e) {
            if (parser.error.empty()) parser.error = std::string("header is not valid JSON: ") + detail::printable(e.what(), true);
        }
        if (!parsed || !parser.error.empty()) fail(parser.error.empty() ? std::string("header is not valid JSON") : parser.error);

        const std::uint64_t data_size = size - data_start_;
        for (const auto& info : parser.tensors) check_tensor(info, data_size);
        tensors_ = std::move(parser.tensors);
        metadata_ = std::move(parser.metadata);
        check_layout(data_size);
        for (std::size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
    }

    void check_tensor(const tensor_info& info, std::uint64_t data_size) const {
        std::uint64_t bytes = dtype_size(info.type);
        for (const auto d : info.shape) {
            const auto dimension = static_cast<std::uint64_t>(d);
            if (dimension != 0 && bytes > std::numeric_limits<std::uint64_t>::max() / dimension)
                fail_tensor(info, "shape ", detail::shape_text(info.shape), " of dtype ", to_string(info.type),
                            " overflows 64-bit sizes");
            bytes *= dimension;
        }
        if (info.begin > info.end)
            fail_tensor(info, "data_offsets [", info.begin, ", ", info.end, "] are reversed");
        if (info.end - info.begin != bytes)
            fail_tensor(info, "shape ", detail::shape_text(info.shape), " of dtype ", to_string(info.type), " needs ", bytes,
                        " bytes but data_offsets [", info.begin, ", ", info.end, "] span ", info.end - info.begin);
        if (info.end > data_size)
            fail_tensor(info, "data_offsets [", info.begin, ", ", info.end, "] end beyond the ", data_size,
                        "-byte data section (file truncated?)");
    }

    // The ranges must tile the data section: sorted by offset, each starts where the previous one ended.
    void check_layout(std::uint64_t data_size) {
        std::stable_sort(tensors_.begin(), tensors_.end(), [](const tensor_info& a, const tensor_info& b) {
            return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
        });
        std::uint64_t expected = 0;
        const tensor_info* previous = nullptr;
        for (const auto& info : tensors_) {
            if (info.begin < expected)
                fail_tensor(info, "data_offsets [", info.begin, ", ", info.end, "] overlap tensor '",
                            detail::printable(previous->name), "' at [", previous->begin, ", ", previous->end, "]");
            if (info.begin > expected)
                fail_tensor(info, "data_offsets [", info.begin, ", ", info.end, "] leave bytes ", expected, "..",
                            info.begin, " of the data section unused");
            expected = info.end;
            previous = &info;
        }
        if (expected != data_size)
            fail("the data section has ", data_size - expected, " bytes after the last tensor (", data_size,
                 " bytes, tensors cover ", expected, ")");
    }

    std::string source_;
    std::span<const std::uint8_t> bytes_;
    std::shared_ptr<const void> keep_alive_;
    const detail::mapped_file* mapping_ = nullptr;
    std::uint64_t data_start_ = 8;
    std::vector<tensor_info> tensors_;
    std::map<std::string, std::string, std::less<>> metadata_;
    std::map<std::string, std::size_t, std::less<>> index_;
};

/// Writes a safetensors file atomically. Tensors are spooled to an unnamed temporary file as they are
/// added; commit() writes the header and the data into a new file next to the destination and renames
/// it over the destination. If commit() is never reached (an exception, a crash), the destination is
/// untouched and no temporary file remains.
class safetensors_writer {
public:
    explicit safetensors_writer(std::filesystem::path destination) : destination_(std::move(destination)) {
        try {
            spool_ = io::detail::anonymous_file(io::detail::directory_of(destination_));
        } catch (const sqz::error& e) {
            fail(e.what());
        }
    }
    safetensors_writer(const safetensors_writer&) = delete;
    safetensors_writer& operator=(const safetensors_writer&) = delete;

    const std::filesystem::path& destination() const noexcept { return destination_; }
    std::size_t size() const noexcept { return entries_.size(); }
    bool contains(std::string_view name) const noexcept { return names_.count(name) != 0; }

    /// Sets a "__metadata__" entry (replacing an earlier value for the same key).
    void set_metadata(std::string key, std::string value) {
        check_text(key, "metadata key");
        check_text(value, "metadata value");
        metadata_[std::move(key)] = std::move(value);
    }

    /// Adds a tensor from raw little-endian bytes, which must be exactly shape product * dtype size.
    void add_bytes(std::string name, dtype type, std::vector<std::int64_t> shape, std::span<const std::uint8_t> bytes) {
        const std::uint64_t size = begin_tensor(name, type, shape);
        if (bytes.size() != size)
            fail("tensor '", io::detail::printable(name), "' of shape ", io::detail::shape_text(shape), " and dtype ",
                 to_string(type), " needs ", size, " bytes, got ", bytes.size());
        append(bytes);
        end_tensor(std::move(name), type, std::move(shape), size);
    }

    /// Adds a tensor stored in T's own dtype (float -> F32, int32_t -> I32, ...).
    template <class T>
    void add(std::string name, std::vector<std::int64_t> shape, std::span<const T> values) {
        add_bytes(std::move(name), dtype_of<T>, std::move(shape),
                  std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(values.data()), values.size_bytes()));
    }

    /// Adds a floating-point tensor converted to `target` (F16, BF16, F32 or F64), rounding to nearest even.
    template <working_scalar T>
    void add_as(std::string name, std::vector<std::int64_t> shape, std::span<const T> values, dtype target) {
        if (!is_convertible_float(target))
            fail("tensor '", io::detail::printable(name), "': cannot store floating-point values as ", to_string(target));
        const std::uint64_t size = begin_tensor(name, target, shape);
        if (values.size() * dtype_size(target) != size)
            fail("tensor '", io::detail::printable(name), "' of shape ", io::detail::shape_text(shape), " needs ",
                 size / dtype_size(target), " values, got ", values.size());
        constexpr std::size_t chunk = 16384;
        std::vector<std::uint8_t> buffer(std::min(values.size(), chunk) * dtype_size(target));
        for (std::size_t first = 0; first < values.size(); first += chunk) {
            const std::size_t count = std::min(chunk, values.size() - first);
            std::uint8_t* out = buffer.data();
            for (std::size_t i = 0; i < count; ++i) {
                const T v = values[first + i];
                switch (target) {
                    case dtype::f32: {
                        const auto f = static_cast<float>(v);
                        std::memcpy(out + 4 * i, &f, 4);
                    } break;
                    case dtype::f64: {
                        const auto d = static_cast<double>(v);
                        std::memcpy(out + 8 * i, &d, 8);
                    } break;
                    case dtype::f16: {
                        const std::uint16_t h = float_to_half_bits(static_cast<float>(v));
                        std::memcpy(out + 2 * i, &h, 2);
                    } break;
                    default: {
                        const std::uint16_t b = float_to_bfloat16_bits(static_cast<float>(v));
                        std::memcpy(out + 2 * i, &b, 2);
                    } break;
                }
            }
            append(std::span<const std::uint8_t>(buffer.data(), count * dtype_size(target)));
        }
        end_tensor(std::move(name), target, std::move(shape), size);
    }

    /// Writes the file and atomically replaces the destination with it. The writer is finished afterwards.
    void commit() {
        if (committed_) fail("commit() was already called");
        // Natural alignment for every tensor: 8-byte types first, then 4, 2, 1 (stable within a class).
        std::vector<const entry*> order;
        for (const auto& e : entries_) order.push_back(&e);
        std::stable_sort(order.begin(), order.end(),
                         [](const entry* a, const entry* b) { return dtype_size(a->type) > dtype_size(b->type); });

        nlohmann::ordered_json header = nlohmann::ordered_json::object();
        if (!metadata_.empty()) header["__metadata__"] = metadata_;
        std::uint64_t offset = 0;
        for (const entry* e : order) {
            header[e->name] = {{"dtype", std::string(to_string(e->type))}, {"shape", e->shape}, {"data_offsets", {offset, offset + e->size}}};
            offset += e->size;
        }
        std::string text;
        try {
            text = header.dump();
        } catch (const nlohmann::json::exception& e) {
            fail("cannot encode the header: ", io::detail::printable(e.what(), true));
        }
        text.append((8 - text.size() % 8) % 8, ' ');  // the data section starts 8-byte aligned
        if (text.size() > max_header_bytes) fail("the header would be ", text.size(), " bytes, over the limit of ", max_header_bytes);

        const std::string what = "'" + destination_.string() + "'";
        try {
            io::detail::pending_file out(destination_);
            std::uint8_t length[8];
            const std::uint64_t header_length = text.size();
            std::memcpy(length, &header_length, 8);
            io::detail::write_all(out.fd(), length, what);
            io::detail::write_all(out.fd(), std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(text.data()), text.size()), what);
            for (const entry* e : order) io::detail::copy_range(spool_.get(), e->spool_offset, out.fd(), e->size, what);
            out.publish();
        } catch (const sqz::error& e) {
            fail(e.what());
        }
        committed_ = true;
        spool_.reset();
    }

private:
    struct entry {
        std::string name;
        dtype type;
        std::vector<std::int64_t> shape;
        std::uint64_t spool_offset;
        std::uint64_t size;
    };

    template <class... Parts>
    [[noreturn]] void fail(Parts&&... parts) const {
        sqz::detail::fail("sqz::io: writing '", io::detail::printable(destination_.string()), "': ", std::forward<Parts>(parts)...);
    }

    void check_text(const std::string& text, const char* what) const {
        // nlohmann's dump() rejects invalid UTF-8; check here so the error names the offending string.
        try {
            (void)nlohmann::json(text).dump();
        } catch (const nlohmann::json::exception&) {
            fail(what, " \"", io::detail::printable(text, true), "\" is not valid UTF-8");
        }
    }

    std::uint64_t begin_tensor(const std::string& name, dtype type, const std::vector<std::int64_t>& shape) const {
        if (committed_) fail("tensor '", io::detail::printable(name), "' added after commit()");
        if (name.empty()) fail("a tensor name is empty");
        if (name == "__metadata__") fail("\"__metadata__\" cannot name a tensor");
        if (name.find('\0') != std::string::npos) fail("tensor name \"", io::detail::printable(name), "\" contains a NUL character");
        check_text(name, "tensor name");
        if (contains(name)) fail("tensor '", io::detail::printable(name), "' is added twice");
        if (shape.size() > max_rank) fail("tensor '", io::detail::printable(name), "' has more than ", max_rank, " dimensions");
        std::uint64_t size = dtype_size(type);
        for (const auto d : shape) {
            if (d < 0) fail("tensor '", io::detail::printable(name), "' has a negative dimension in ", io::detail::shape_text(shape));
            const auto dimension = static_cast<std::uint64_t>(d);
            if (dimension != 0 && size > std::numeric_limits<std::uint64_t>::max() / dimension)
                fail("tensor '", io::detail::printable(name), "' shape ", io::detail::shape_text(shape), " overflows");
            size *= dimension;
        }
        return size;
    }

    void append(std::span<const std::uint8_t> bytes) {
        try {
            io::detail::write_all(spool_.get(), bytes, "the spool file");
        } catch (const sqz::error& e) {
            fail(e.what());
        }
        spool_size_ += bytes.size();
    }

    void end_tensor(std::string name, dtype type, std::vector<std::int64_t> shape, std::uint64_t size) {
        names_.insert(name);
        entries_.push_back(entry{std::move(name), type, std::move(shape), spool_size_ - size, size});
    }

    std::filesystem::path destination_;
    io::detail::unique_fd spool_;
    std::uint64_t spool_size_ = 0;
    std::vector<entry> entries_;
    std::set<std::string, std::less<>> names_;
    std::map<std::string, std::string> metadata_;
    bool committed_ = false;
};

}  // namespace sqz::io
