// sqz/io/squeezellm.hpp - interoperability with the SqueezeLLM reference implementation's checkpoints.
//
// The reference's QuantLinearLUT layer (m outputs, n inputs, b bits) keeps
//   qweight       int32 [n/32*b, m]  the codes of output row i packed down column i, along the input
//                                     dimension: 32 codes per b consecutive words, least significant bit
//                                     first. For b = 4 word k holds codes 8k..8k+7 at bits 4j; for b = 3
//                                     three words hold 32 codes, codes 0-9 at bits 3j of word 0, code 10
//                                     split (low 2 bits in bits 30-31 of word 0, high bit in bit 0 of word
//                                     1), codes 11-20 at bits 3j+1 of word 1, code 21 split (low bit in bit
//                                     31 of word 1, high 2 bits in bits 0-1 of word 2), codes 22-31 at bits
//                                     3j+2 of word 2.
//   lookup_table  float [m, 2^b]     one codebook per output row
//   rows, cols, vals                  CSR (int32 row offsets [m+1], int32 columns, float values) of
//                                     W - LUT[code] at the extracted positions
// and the checkpoint records each layer's nnz as "sparse_threshold.<layer>".
//
// Read as one bit stream per output row, those words are exactly sqz's canonical packing (code j at stream
// bits [j*b, (j+1)*b), least significant first) cut into little-endian 32-bit words, for every b the
// reference packs (2, 3, 4, 8), so conversion is a transpose of words. Requirements: n a multiple of 32.
// The reference's own layer class and CUDA kernels run only b = 3 and 4, and its kernels also assume n
// and m are multiples of 128.
//
//   to_reference(q) / from_reference(layer)           one matrix <-> the reference's buffers
//   import_checkpoint(file) / export_checkpoint(...)  whole safetensors checkpoints; a layer "P" of the
//                                                     reference becomes sqz matrix "P.weight" and back
#pragma once

#include <sqz/error.hpp>
#include <sqz/io/quantized_file.hpp>
#include <sqz/io/safetensors.hpp>
#include <sqz/quantized_matrix.hpp>
#include <sqz/types.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace sqz::io::squeezellm {

/// Code widths whose qweight layout the reference defines (its packer handles 2, 3, 4 and 8 bits).
constexpr bool packable_bits(int bits) noexcept { return bits == 2 || bits == 3 || bits == 4 || bits == 8; }

/// One quantized layer in the reference's buffers, each row-major as in PyTorch.
struct layer {
    int bits = 0;
    Eigen::Index rows = 0;  ///< outfeatures m
    Eigen::Index cols = 0;  ///< infeatures n, a multiple of 32
    std::vector<std::int32_t> qweight;       ///< [cols / 32 * bits, rows]
    std::vector<float> lookup_table;         ///< [rows, 2^bits]
    std::vector<std::int32_t> sparse_rows;   ///< [rows + 1], empty when there is no sparse part
    std::vector<std::int32_t> sparse_cols;   ///< [nnz]
    std::vector<float> sparse_vals;          ///< [nnz]
};

namespace detail {

inline void check_layer_shape(int bits, Eigen::Index rows, Eigen::Index cols, const char* where) {
    sqz::detail::require(packable_bits(bits), where, ": bits = ", bits, " has no SqueezeLLM layout (2, 3, 4 or 8)");
    sqz::detail::require(rows >= 0 && cols >= 0, where, ": shape ", rows, " x ", cols, " is negative");
    sqz::detail::require(cols % 32 == 0, where, ": cols = ", cols, " is not a multiple of 32 (the SqueezeLLM layout packs 32 codes per ",
                         bits, " words)");
}

}  // namespace detail

/// The reference's qweight [cols/32*bits, rows] for quantized matrix `q`.
template <working_scalar T, int Bits>
std::vector<std::int32_t> pack_qweight(const quantized_matrix<T, Bits>& q) {
    detail::check_layer_shape(q.bits(), q.rows(), q.cols(), "sqz::io::squeezellm::pack_qweight");
    const auto rows = static_cast<std::size_t>(q.rows());
    const std::size_t words = static_cast<std::size_t>(q.cols()) / 32 * static_cast<std::size_t>(q.bits());
    std::vector<std::int32_t> qweight(words * rows);
    for (std::size_t i = 0; i < rows; ++i) {
        const auto stream = q.row_codes(static_cast<Eigen::Index>(i));  // words * 4 bytes
        for (std::size_t k = 0; k < words; ++k) std::memcpy(&qweight[k * rows + i], stream.data() + 4 * k, 4);
    }
    return qweight;
}

/// The canonical packed codes (rows * row_stride bytes) from the reference's qweight.
inline std::vector<std::uint8_t> unpack_qweight(std::span<const std::int32_t> qweight, int bits, Eigen::Index rows,
                                                Eigen::Index cols) {
    detail::check_layer_shape(bits, rows, cols, "sqz::io::squeezellm::unpack_qweight");
    const auto m = static_cast<std::size_t>(rows);
    const std::size_t words = static_cast<std::size_t>(cols) / 32 * static_cast<std::size_t>(bits);
    sqz::detail::require(qweight.size() == words * m, "sqz::io::squeezellm::unpack_qweight: qweight has ", qweight.size(),
                         " words, ", words, " x ", m, " expected for ", rows, " x ", cols, " at ", bits, " bits");
    std::vector<std::uint8_t> codes(words * 4 * m);
    for (std::size_t i = 0; i < m; ++i)
        for (std::size_t k = 0; k < words; ++k) std::memcpy(codes.data() + (i * words + k) * 4, &qweight[k * m + i], 4);
    return codes;
}

/// Converts a quantized matrix to the reference's buffers. The LUT and sparse values become float.
template <working_scalar T, int Bits>
layer to_reference(const quantized_matrix<T, Bits>& q) {
    layer out;
    out.bits = q.bits();
    out.rows = q.rows();
    out.cols = q.cols();
    out.qweight = pack_qweight(q);
    out.lookup_table.assign(q.lut().data(), q.lut().data() + q.lut().size());
    if (q.sparse_nonzeros() > 0) {
        const auto& s = q.sparse();
        out.sparse_rows.assign(s.outerIndexPtr(), s.outerIndexPtr() + q.rows() + 1);
        out.sparse_cols.assign(s.innerIndexPtr(), s.innerIndexPtr() + s.nonZeros());
        out.sparse_vals.assign(s.valuePtr(), s.valuePtr() + s.nonZeros());
    }
    return out;
}

/// Converts the reference's buffers to a quantized matrix, validating all of them (fp32 LUT format).
template <working_scalar T = float>
quantized_matrix<T> from_reference(const layer& in) {
    constexpr const char* where = "sqz::io::squeezellm::from_reference";
    detail::check_layer_shape(in.bits, in.rows, in.cols, where);
    const Eigen::Index levels = Eigen::Index{1} << in.bits;
    sqz::detail::require(in.lookup_table.size() == static_cast<std::size_t>(in.rows * levels), where, ": lookup_table has ",
                         in.lookup_table.size(), " values, ", in.rows, " x ", levels, " expected");
    row_matrix<T> lut(in.rows, levels);
    std::copy(in.lookup_table.begin(), in.lookup_table.end(), lut.data());
    csr_matrix<T> sparse(in.rows, in.cols);
    if (!in.sparse_rows.empty()) {
        const std::vector<T> values(in.sparse_vals.begin(), in.sparse_vals.end());
        sparse = make_csr<T>(in.rows, in.cols, in.sparse_rows, in.sparse_cols, values);
    } else {
        sqz::detail::require(in.sparse_cols.empty() && in.sparse_vals.empty(), where,
                             ": sparse_cols/sparse_vals given without sparse_rows");
    }
    return quantized_matrix<T>(in.rows, in.cols, in.bits, std::move(lut), unpack_qweight(in.qweight, in.bits, in.rows, in.cols),
                               std::move(sparse), lut_format::fp32);
}

/// The reference's layer name for an sqz matrix name: "P.weight" -> "P".
inline std::string layer_name(std::string_view matrix_name) {
    constexpr std::string_view suffix = ".weight";
    if (matrix_name.size() > suffix.size() && matrix_name.ends_with(suffix))
        return std::string(matrix_name.substr(0, matrix_name.size() - suffix.size()));
    return std::string(matrix_name);
}

/// The layers of a reference checkpoint: every P with tensors P.qweight and P.lookup_table.
inline std::vector<std::string> find_layers(const safetensors_file& file) {
    std::vector<std::string> layers;
    constexpr std::string_view suffix = ".qweight";
    for (const auto& info : file.tensors()) {
        const std::string_view name = info.name;
        if (name.size() > suffix.size() && name.ends_with(suffix)) {
            const std::string prefix(name.substr(0, name.size() - suffix.size()));
            if (file.contains(prefix + ".lookup_table")) layers.push_back(prefix);
        }
    }
    std::sort(layers.begin(), layers.end());
    return layers;
}

/// Reads layer `prefix` of a reference checkpoint, checking every tensor; errors name the file and tensor.
template <working_scalar T = float>
quantized_matrix<T> read_layer(const safetensors_file& file, const std::string& prefix) {
    const tensor_info& qweight = file.at(prefix + ".qweight");
    const tensor_info& table = file.at(prefix + ".lookup_table");
    if (table.rank() != 2) file.fail_tensor(table, "has shape ", io::detail::shape_text(table.shape), ", expected [rows, 2^bits]");
    int bits = 0;
    while (bits < 9 && (std::int64_t{1} << bits) != table.shape[1]) ++bits;
    if (!packable_bits(bits))
        file.fail_tensor(table, "has ", table.shape[1], " entries per row; SqueezeLLM codebooks have 4, 8, 16 or 256");
    if (qweight.type != dtype::i32 && qweight.type != dtype::u32)
        file.fail_tensor(qweight, "has dtype ", to_string(qweight.type), ", expected I32");
    if (qweight.rank() != 2 || qweight.shape[1] != table.shape[0] || qweight.shape[0] % bits != 0)
        file.fail_tensor(qweight, "has shape ", io::detail::shape_text(qweight.shape), ", expected [cols/32*", bits, ", ",
                         table.shape[0], "]");
    if (qweight.shape[0] / bits * 32 > std::numeric_limits<std::int32_t>::max())
        file.fail_tensor(qweight, "has shape ", io::detail::shape_text(qweight.shape), ": too many columns");
    layer in;
    in.bits = bits;
    in.rows = table.shape[0];
    in.cols = qweight.shape[0] / bits * 32;
    in.qweight.resize(static_cast<std::size_t>(qweight.elements()));
    if (!in.qweight.empty()) std::memcpy(in.qweight.data(), file.data(qweight).data(), in.qweight.size() * 4);
    in.lookup_table = file.read_vector<float>(table.name);
    if (const tensor_info* rows = file.find(prefix + ".rows")) {
        const tensor_info& cols = file.at(prefix + ".cols");
        const tensor_info& vals = file.at(prefix + ".vals");
        for (const tensor_info* part : {rows, &cols, &vals})
            if (part->rank() != 1) file.fail_tensor(*part, "has shape ", io::detail::shape_text(part->shape), ", expected 1-D");
        in.sparse_rows = file.read_integers<std::int32_t>(rows->name);
        in.sparse_cols = file.read_integers<std::int32_t>(cols.name);
        in.sparse_vals = file.read_vector<float>(vals.name);
    }
    // The reference's hybrid kernel adds dense rows from "full_rows"; its packer never fills them, so
    // all-zero buffers are ignored and anything else is refused rather than silently dropped.
    if (const tensor_info* dense = file.find(prefix + ".full_rows")) {
        const auto values = file.read_vector<float>(dense->name);
        if (std::any_of(values.begin(), values.end(), [](float v) { return v != 0.0f; }))
            file.fail_tensor(*dense, "holds hybrid dense rows, which sqz does not import");
    }
    try {
        return from_reference<T>(in);
    } catch (const sqz::error& e) {
        file.fail("layer '", io::detail::printable(prefix), "': ", e.what());
    }
}

/// Tensors of a reference checkpoint that are derived from the layers and not carried over on import.
inline bool is_derived_tensor(std::string_view name, const std::set<std::string, std::less<>>& layers) {
    if (name.starts_with("sparse_threshold.")) return layers.count(name.substr(17)) != 0;
    for (const std::string_view suffix : {".qweight", ".lookup_table", ".rows", ".cols", ".vals", ".startrows", ".full_rows",
                                          ".full_row_indices"})
        if (name.size() > suffix.size() && name.ends_with(suffix) && layers.count(name.substr(0, name.size() - suffix.size())) != 0)
            return true;
    return false;
}

/// Converts a reference checkpoint (safetensors) into an sqz quantized file, layer by layer. Layer P
/// becomes matrix "P.weight"; other tensors (embeddings, norms, biases) pass through unchanged; derived
/// buffers (sparse_threshold.*, startrows) are dropped.
inline void import_checkpoint(const safetensors_file& reference, const std::filesystem::path& output) {
    const auto layers = find_layers(reference);
    const std::set<std::string, std::less<>> layer_set(layers.begin(), layers.end());
    safetensors_writer out(output);
    out.set_metadata("sqz.format", std::string(quantized_format_name));
    out.set_metadata("sqz.format_version", std::to_string(quantized_format_version));
    out.set_metadata("sqz.library_version", version_string);
    for (const auto& prefix : layers) {
        const auto q = read_layer<float>(reference, prefix);
        write_quantized(out, prefix + ".weight", q, quantization_note{"squeezellm-import", 0.0, 0.0});
    }
    for (const auto& info : reference.tensors()) {
        if (is_derived_tensor(info.name, layer_set)) continue;
        if (out.contains(info.name)) reference.fail_tensor(info, "clashes with a converted layer's tensor");
        out.add_bytes(info.name, info.type, info.shape, reference.data(info));
        reference.release(info);
    }
    out.commit();
}

/// Converts an sqz quantized file into a reference checkpoint (safetensors): matrix "P.weight" becomes
/// layer P (P.qweight, P.lookup_table and, when any matrix has a sparse part, P.rows, P.cols, P.vals for
/// every layer plus "sparse_threshold.P" = nnz as an I64 scalar); passthrough tensors are copied.
inline void export_checkpoint(const quantized_reader& in, const std::filesystem::path& output) {
    for (const auto& m : in.quantized()) {
        try {
            detail::check_layer_shape(m.bits, m.rows, m.cols, "sqz::io::squeezellm::export_checkpoint");
        } catch (const sqz::error& e) {
            in.file().fail("quantized matrix '", io::detail::printable(m.name), "': ", e.what());
        }
    }
    const bool sparse = std::any_of(in.quantized().begin(), in.quantized().end(), [](const auto& m) { return m.nnz > 0; });
    safetensors_writer out(output);
    for (const auto& m : in.quantized()) {
        const std::string prefix = layer_name(m.name);
        const auto q = in.load<float>(m.name);
        const layer l = to_reference(q);
        const auto rows = static_cast<std::int64_t>(l.rows);
        out.add<std::int32_t>(prefix + ".qweight", {l.cols / 32 * l.bits, rows}, l.qweight);
        out.add<float>(prefix + ".lookup_table", {rows, std::int64_t{1} << l.bits}, l.lookup_table);
        if (sparse) {
            std::vector<std::int32_t> row_ptr = l.sparse_rows;
            if (row_ptr.empty()) row_ptr.assign(static_cast<std::size_t>(rows) + 1, 0);
            const auto nnz = static_cast<std::int64_t>(l.sparse_vals.size());
            out.add<std::int32_t>(prefix + ".rows", {rows + 1}, row_ptr);
            out.add<std::int32_t>(prefix + ".cols", {nnz}, l.sparse_cols);
            out.add<float>(prefix + ".vals", {nnz}, l.sparse_vals);
            out.add<std::int64_t>("sparse_threshold." + prefix, {}, std::span<const std::int64_t>(&nnz, 1));
        }
    }
    for (const tensor_info* info : in.passthrough()) {
        if (out.contains(info->name)) in.file().fail_tensor(*info, "clashes with an exported layer's tensor");
        out.add_bytes(info->name, info->type, info->shape, in.file().data(*info));
        in.file().release(*info);
    }
    out.commit();
}

}  // namespace sqz::io::squeezellm
