// sqz/io/quantized_file.hpp - quantized matrices inside safetensors files (format version 1, see
// docs/format.md).
//
// A quantized matrix W (rows x cols, bits b) is stored as up to five tensors named after it,
//   W.lut                F16 or F32 (F64 for double matrices)   [rows, 2^b]     per-row codebooks
//   W.qweight            U8                                      [rows, ceil(cols*b/8)]  canonical packing
//   W.sparse.row_ptr     I32                                     [rows + 1]      } CSR residuals, present
//   W.sparse.col_idx     I32                                     [nnz]           } only when nnz > 0
//   W.sparse.values      F32 (F64 for double matrices)           [nnz]           }
// plus a "__metadata__" entry "sqz.quantized.W" holding a JSON object with bits, shape, lut_dtype, nnz
// and how it was made (method, fractions), and "sqz.format" / "sqz.format_version" for the file. Any
// other tensor is an unquantized tensor passed through unchanged.
//
//   write_quantized(writer, name, q, note)   adds one quantized matrix to a safetensors_writer
//   quantized_reader                         opens a file, checks the format and every quantized entry's
//                                            parts, and loads matrices with full validation
//   save_quantized / load_quantized          a whole quantized_model at once; load(save(Q)) == Q
#pragma once

#include <sqz/error.hpp>
#include <sqz/io/safetensors.hpp>
#include <sqz/quantized_matrix.hpp>
#include <sqz/types.hpp>
#include <sqz/version.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <limits>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace sqz::io {

/// Version of the quantized file layout written by this sqz; files with a higher version are rejected.
inline constexpr int quantized_format_version = 1;
/// Value of the "sqz.format" metadata entry.
inline constexpr std::string_view quantized_format_name = "sqz-quantized";
/// Prefix of the per-matrix metadata keys: "sqz.quantized.<name>".
inline constexpr std::string_view quantized_key_prefix = "sqz.quantized.";

/// How a matrix was quantized. Stored next to it for people and tools; loading does not need it.
struct quantization_note {
    std::string method;             ///< e.g. "squeezellm", "rtn", "squeezellm-import"
    double outlier_fraction = 0.0;  ///< fraction of entries kept exact as outliers
    double sensitive_fraction = 0.0;  ///< fraction of entries kept exact as most sensitive
};

/// What the header says about one quantized matrix (checked against its parts when the file is opened).
struct quantized_tensor_info {
    std::string name;
    int bits = 0;
    Eigen::Index rows = 0;
    Eigen::Index cols = 0;
    dtype lut_type = dtype::f32;     ///< F16 (lut_format::fp16), F32 or F64 (lut_format::fp32)
    dtype values_type = dtype::f32;  ///< dtype of the sparse values (F32 or F64)
    std::int64_t nnz = 0;
    quantization_note note;

    lut_format format() const noexcept { return lut_type == dtype::f16 ? lut_format::fp16 : lut_format::fp32; }
};

/// Names of the parts of quantized matrix `name`.
struct quantized_part_names {
    std::string lut, qweight, row_ptr, col_idx, values;
    explicit quantized_part_names(std::string_view name)
        : lut(std::string(name) + ".lut"), qweight(std::string(name) + ".qweight"),
          row_ptr(std::string(name) + ".sparse.row_ptr"), col_idx(std::string(name) + ".sparse.col_idx"),
          values(std::string(name) + ".sparse.values") {}
};

/// Adds quantized matrix `q` under `name` to a safetensors file being written, with its metadata.
template <working_scalar T, int Bits>
void write_quantized(safetensors_writer& out, const std::string& name, const quantized_matrix<T, Bits>& q,
                     const quantization_note& note = {}) {
    const quantized_part_names parts(name);
    const dtype lut_type = q.format() == lut_format::fp16 ? dtype::f16 : dtype_of<T>;
    const auto rows = static_cast<std::int64_t>(q.rows());
    const auto nnz = static_cast<std::int64_t>(q.sparse_nonzeros());

    nlohmann::ordered_json info = {{"bits", q.bits()},
                                   {"shape", {rows, static_cast<std::int64_t>(q.cols())}},
                                   {"lut_dtype", std::string(to_string(lut_type))},
                                   {"values_dtype", std::string(to_string(dtype_of<T>))},
                                   {"nnz", nnz},
                                   {"method", note.method},
                                   {"outlier_fraction", note.outlier_fraction},
                                   {"sensitive_fraction", note.sensitive_fraction}};
    std::string info_text;
    try {
        info_text = info.dump();
    } catch (const nlohmann::json::exception&) {
        sqz::detail::fail("sqz::io::write_quantized: matrix '", io::detail::printable(name), "': method \"",
                     io::detail::printable(note.method, true), "\" is not valid UTF-8");
    }
    out.set_metadata("sqz.format", std::string(quantized_format_name));
    out.set_metadata("sqz.format_version", std::to_string(quantized_format_version));
    out.set_metadata(std::string(quantized_key_prefix) + name, info_text);

    out.add_as<T>(parts.lut, {rows, static_cast<std::int64_t>(q.levels())},
                  std::span<const T>(q.lut().data(), static_cast<std::size_t>(q.lut().size())), lut_type);
    out.add<std::uint8_t>(parts.qweight, {rows, static_cast<std::int64_t>(q.row_stride_bytes())}, q.codes());
    if (nnz > 0) {
        const auto& s = q.sparse();  // compressed (the constructor guarantees it)
        out.add<std::int32_t>(parts.row_ptr, {rows + 1}, std::span<const std::int32_t>(s.outerIndexPtr(), static_cast<std::size_t>(rows) + 1));
        out.add<std::int32_t>(parts.col_idx, {nnz}, std::span<const std::int32_t>(s.innerIndexPtr(), static_cast<std::size_t>(nnz)));
        out.add<T>(parts.values, {nnz}, std::span<const T>(s.valuePtr(), static_cast<std::size_t>(nnz)));
    }
}

/// A quantized file opened for reading. Opening checks the format version, every "sqz.quantized.*"
/// entry and the dtypes and shapes of its parts; load() then reads and validates the contents.
class quantized_reader {
public:
    explicit quantized_reader(const std::filesystem::path& path) : quantized_reader(safetensors_file(path)) {}

    explicit quantized_reader(safetensors_file file) : file_(std::move(file)) {
        const auto& metadata = file_.metadata();
        const auto version = metadata.find("sqz.format_version");
        if (version == metadata.end())
            file_.fail("is not an sqz quantized file (no \"sqz.format_version\" in __metadata__)");
        const auto format = metadata.find("sqz.format");
        if (format == metadata.end() || format->second != quantized_format_name)
            file_.fail("\"sqz.format\" is not \"", quantized_format_name, "\"");
        if (version->second != std::to_string(quantized_format_version)) {
            const bool newer = !version->second.empty() && version->second.size() < 10 &&
                               version->second.find_first_not_of("0123456789") == std::string::npos &&
                               std::stoi(version->second) > quantized_format_version;
            if (newer)
                file_.fail("quantized format version ", version->second, " is newer than this sqz reads (",
                           quantized_format_version, ")");
            file_.fail("quantized format version \"", io::detail::printable(version->second),
                       "\" is not supported (this sqz reads ", quantized_format_version, ")");
        }
        for (auto it = metadata.lower_bound(quantized_key_prefix); it != metadata.end(); ++it) {
            if (!std::string_view(it->first).starts_with(quantized_key_prefix)) break;
            matrices_.push_back(parse_entry(it->first.substr(quantized_key_prefix.size()), it->second));
        }
        for (const auto& m : matrices_) check_parts(m);
        for (const auto& info : file_.tensors())
            if (owner_.count(info.name) == 0) passthrough_.push_back(&info);
    }

    const safetensors_file& file() const noexcept { return file_; }
    /// The quantized matrices, sorted by name.
    const std::vector<quantized_tensor_info>& quantized() const noexcept { return matrices_; }
    const quantized_tensor_info* find(std::string_view name) const noexcept {
        for (const auto& m : matrices_)
            if (m.name == name) return &m;
        return nullptr;
    }
    /// Tensors that belong to no quantized matrix, in data order.
    const std::vector<const tensor_info*>& passthrough() const noexcept { return passthrough_; }

    /// Reads quantized matrix `name`, validating every part (finite LUT and sparse values, a well-formed
    /// CSR); errors name the file and the matrix.
    template <working_scalar T = float, int Bits = dynamic_bits>
    quantized_matrix<T, Bits> load(std::string_view name) const {
        const quantized_tensor_info* m = find(name);
        if (m == nullptr) file_.fail("no quantized matrix '", io::detail::printable(name), "' in the file");
        const quantized_part_names parts(m->name);
        try {
            row_matrix<T> lut(m->rows, Eigen::Index{1} << m->bits);
            file_.read_into<T>(file_.at(parts.lut), std::span<T>(lut.data(), static_cast<std::size_t>(lut.size())));
            const auto codes = file_.data(file_.at(parts.qweight));
            csr_matrix<T> sparse(m->rows, m->cols);
            if (m->nnz > 0) {
                const auto row_ptr = file_.read_integers<std::int32_t>(parts.row_ptr);
                const auto col_idx = file_.read_integers<std::int32_t>(parts.col_idx);
                const auto values = file_.read_vector<T>(parts.values);
                sparse = make_csr<T>(m->rows, m->cols, row_ptr, col_idx, values);
            }
            quantized_matrix<T> q(m->rows, m->cols, m->bits, std::move(lut), std::vector<std::uint8_t>(codes.begin(), codes.end()),
                                  std::move(sparse), m->format());
            if constexpr (Bits == dynamic_bits) return q;
            else return quantized_matrix<T, Bits>(q);
        } catch (const sqz::error& e) {
            if (std::string_view(e.what()).starts_with("sqz::io: file")) throw;
            file_.fail("quantized matrix '", io::detail::printable(m->name), "': ", e.what());
        }
    }

private:
    quantized_tensor_info parse_entry(const std::string& name, const std::string& text) const {
        quantized_tensor_info m;
        m.name = name;
        const auto bad = [&](auto&&... parts) {
            file_.fail("quantized matrix '", io::detail::printable(name), "': metadata ", parts...);
        };
        if (name.empty()) file_.fail("metadata key \"", quantized_key_prefix, "\" names no matrix");
        const nlohmann::json info = nlohmann::json::parse(text, nullptr, false);
        if (info.is_discarded() || !info.is_object()) bad("is not a JSON object");
        const auto integer = [&](const char* key, std::int64_t low, std::int64_t high) -> std::int64_t {
            const auto it = info.find(key);
            if (it == info.end()) bad("lacks \"", key, "\"");
            if (!it->is_number_integer()) bad("\"", key, "\" is not an integer");
            if (it->is_number_unsigned() ? it->get<std::uint64_t>() > static_cast<std::uint64_t>(high)
                                         : (it->get<std::int64_t>() < low || it->get<std::int64_t>() > high))
                bad("\"", key, "\" = ", io::detail::printable(it->dump(), true), " is outside ", low, "..", high);
            return it->get<std::int64_t>();
        };
        const auto type = [&](const char* key) -> dtype {
            const auto it = info.find(key);
            if (it == info.end() || !it->is_string()) bad("lacks the string \"", key, "\"");
            const auto parsed = parse_dtype(it->get<std::string>());
            if (!parsed) bad("\"", key, "\" = ", io::detail::printable(it->dump(), true), " is not a dtype");
            return *parsed;
        };
        m.bits = static_cast<int>(integer("bits", min_bits, max_bits));
        const auto shape = info.find("shape");
        if (shape == info.end() || !shape->is_array() || shape->size() != 2 || !(*shape)[0].is_number_unsigned() ||
            !(*shape)[1].is_number_unsigned())
            bad("\"shape\" is not an array of two non-negative integers");
        const auto rows = (*shape)[0].get<std::uint64_t>();
        const auto cols = (*shape)[1].get<std::uint64_t>();
        if (rows > static_cast<std::uint64_t>(std::numeric_limits<std::int32_t>::max() - 1) ||
            cols > static_cast<std::uint64_t>(std::numeric_limits<std::int32_t>::max()))
            bad("\"shape\" [", rows, ", ", cols, "] exceeds the int32 index range");
        m.rows = static_cast<Eigen::Index>(rows);
        m.cols = static_cast<Eigen::Index>(cols);
        m.lut_type = type("lut_dtype");
        if (m.lut_type != dtype::f16 && m.lut_type != dtype::f32 && m.lut_type != dtype::f64)
            bad("\"lut_dtype\" ", to_string(m.lut_type), " is not F16, F32 or F64");
        m.values_type = info.contains("values_dtype") ? type("values_dtype") : dtype::f32;
        if (m.values_type != dtype::f32 && m.values_type != dtype::f64)
            bad("\"values_dtype\" ", to_string(m.values_type), " is not F32 or F64");
        m.nnz = integer("nnz", 0, std::numeric_limits<std::int32_t>::max());
        if (const auto it = info.find("method"); it != info.end() && it->is_string()) m.note.method = it->get<std::string>();
        if (const auto it = info.find("outlier_fraction"); it != info.end() && it->is_number())
            m.note.outlier_fraction = it->get<double>();
        if (const auto it = info.find("sensitive_fraction"); it != info.end() && it->is_number())
            m.note.sensitive_fraction = it->get<double>();
        return m;
    }

    void check_part(const quantized_tensor_info& m, const std::string& part, std::initializer_list<dtype> types,
                    std::vector<std::int64_t> shape) {
        const tensor_info* info = file_.find(part);
        if (info == nullptr)
            file_.fail("quantized matrix '", io::detail::printable(m.name), "': part '", io::detail::printable(part), "' is missing");
        if (std::find(types.begin(), types.end(), info->type) == types.end())
            file_.fail_tensor(*info, "has dtype ", to_string(info->type), ", expected ", to_string(*types.begin()));
        if (info->shape != shape)
            file_.fail_tensor(*info, "has shape ", io::detail::shape_text(info->shape), ", expected ",
                              io::detail::shape_text(shape), " for quantized matrix '", io::detail::printable(m.name), "'");
        if (!owner_.emplace(part, m.name).second)
            file_.fail_tensor(*info, "belongs to two quantized matrices");
    }

    void check_parts(const quantized_tensor_info& m) {
        if (file_.contains(m.name))
            file_.fail("tensor '", io::detail::printable(m.name), "' is stored both plain and quantized");
        const quantized_part_names parts(m.name);
        const std::int64_t stride = static_cast<std::int64_t>((static_cast<std::uint64_t>(m.cols) * static_cast<std::uint64_t>(m.bits) + 7) / 8);
        check_part(m, parts.lut, {m.lut_type}, {m.rows, std::int64_t{1} << m.bits});
        check_part(m, parts.qweight, {dtype::u8}, {m.rows, stride});
        if (m.nnz > 0) {
            check_part(m, parts.row_ptr, {dtype::i32}, {m.rows + 1});
            check_part(m, parts.col_idx, {dtype::i32}, {m.nnz});
            check_part(m, parts.values, {m.values_type}, {m.nnz});
        } else {
            for (const auto* part : {&parts.row_ptr, &parts.col_idx, &parts.values})
                if (file_.contains(*part))
                    file_.fail("quantized matrix '", io::detail::printable(m.name), "' has nnz = 0 but a part '",
                               io::detail::printable(*part), "'");
        }
    }

    safetensors_file file_;
    std::vector<quantized_tensor_info> matrices_;
    std::map<std::string, std::string, std::less<>> owner_;  // part tensor -> its quantized matrix
    std::vector<const tensor_info*> passthrough_;
};

/// A tensor kept as it is: its dtype, shape and raw little-endian bytes.
struct plain_tensor {
    dtype type = dtype::f32;
    std::vector<std::int64_t> shape;
    std::vector<std::uint8_t> bytes;
    friend bool operator==(const plain_tensor&, const plain_tensor&) = default;
};

/// A whole quantized model in memory: quantized matrices, unquantized tensors and user metadata.
template <working_scalar T = float>
struct quantized_model {
    struct entry {
        quantized_matrix<T> matrix;
        quantization_note note;
    };
    std::map<std::string, entry> quantized;
    std::map<std::string, plain_tensor> passthrough;
    std::map<std::string, std::string> metadata;  ///< user entries; keys starting with "sqz." are reserved
};

/// Writes a quantized model atomically (see safetensors_writer).
template <working_scalar T>
void save_quantized(const std::filesystem::path& path, const quantized_model<T>& model) {
    safetensors_writer out(path);
    for (const auto& [key, value] : model.metadata) {
        sqz::detail::require(!key.starts_with("sqz."), "sqz::io::save_quantized: metadata key \"", key,
                        "\" uses the reserved prefix \"sqz.\"");
        out.set_metadata(key, value);
    }
    // An empty model is still a quantized file.
    out.set_metadata("sqz.format", std::string(quantized_format_name));
    out.set_metadata("sqz.format_version", std::to_string(quantized_format_version));
    out.set_metadata("sqz.library_version", version_string);
    for (const auto& [name, e] : model.quantized) write_quantized(out, name, e.matrix, e.note);
    for (const auto& [name, t] : model.passthrough) {
        sqz::detail::require(!model.quantized.contains(name), "sqz::io::save_quantized: '", name,
                        "' is both quantized and passed through");
        out.add_bytes(name, t.type, t.shape, t.bytes);
    }
    out.commit();
}

/// Reads a whole quantized model written by save_quantized or by `sqz quantize`.
template <working_scalar T = float>
quantized_model<T> load_quantized(const std::filesystem::path& path) {
    const quantized_reader reader(path);
    quantized_model<T> model;
    for (const auto& m : reader.quantized())
        model.quantized.emplace(m.name, typename quantized_model<T>::entry{reader.load<T>(m.name), m.note});
    for (const tensor_info* info : reader.passthrough()) {
        const auto bytes = reader.file().data(*info);
        model.passthrough.emplace(info->name, plain_tensor{info->type, info->shape, {bytes.begin(), bytes.end()}});
    }
    for (const auto& [key, value] : reader.file().metadata())
        if (!key.starts_with("sqz.")) model.metadata.emplace(key, value);
    return model;
}

}  // namespace sqz::io
