// `sqz quantize`: a whole safetensors model in, an sqz quantized file out, one tensor at a time.
//
// Memory: the model and the sensitivity file are memory-mapped; only the tensor being quantized is
// converted to fp32 (its mapped pages are dropped right after), the Fisher rows are converted on demand
// inside the quantizer, and finished tensors go to the writer's spool file on disk. Peak memory is
// therefore about one fp32 tensor plus the quantizer's working set, whatever the model's size.
#pragma once

#include "common.hpp"

#include <sqz/io.hpp>
#include <sqz/quantize.hpp>
#include <sqz/sensitivity.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <regex>
#include <span>
#include <string>
#include <vector>

namespace sqz::cli {

struct quantize_options {
    std::string model;
    std::string output;
    std::string fisher;       ///< Fisher-diagonal checkpoint: same names and shapes as the model
    std::string activations;  ///< per weight: E[x^2] per input channel [n], or raw activations [tokens, n]
    bool uniform = false;
    int bits = 3;
    double outliers_percent = 0.0;
    double sensitive_percent = 0.0;
    double iqr = 0.0;
    bool per_row = false;
    std::string include = ".*";
    std::string exclude = "embed|lm_head";
    std::string lut = "fp16";
    std::string codebook = "kmeans";
    std::string kmeans = "exact";
    int threads = 0;
};

/// Row i of a Fisher tensor, converted to double when the quantizer asks for it (no m x n copy in memory).
class mapped_sensitivity {
public:
    mapped_sensitivity(const io::safetensors_file& file, const io::tensor_info& info) : file_(&file), info_(&info) {}
    Eigen::Index rows() const noexcept { return info_->shape[0]; }
    Eigen::Index cols() const noexcept { return info_->shape[1]; }
    void fill_row(Eigen::Index row, std::span<double> out) const { file_->read_rows<double>(*info_, static_cast<std::uint64_t>(row), 1, out); }

private:
    const io::safetensors_file* file_;
    const io::tensor_info* info_;
};

/// The same weights for every row: E[x_j^2] of the layer's input channel j.
class column_sensitivity {
public:
    column_sensitivity(Eigen::Index rows, std::vector<double> weights) : rows_(rows), weights_(std::move(weights)) {}
    Eigen::Index rows() const noexcept { return rows_; }
    Eigen::Index cols() const noexcept { return static_cast<Eigen::Index>(weights_.size()); }
    void fill_row(Eigen::Index, std::span<double> out) const { std::copy(weights_.begin(), weights_.end(), out.begin()); }

private:
    Eigen::Index rows_;
    std::vector<double> weights_;
};

/// E[x_j^2] for weight `name` (n inputs) from an activations file: a 1-D [n] tensor holds it directly,
/// a 2-D [tokens, n] tensor holds raw activations whose column mean squares are taken (row by row).
inline std::vector<double> activation_weights(const io::safetensors_file& file, const std::string& name, Eigen::Index n) {
    const io::tensor_info* info = file.find(name);
    if (info == nullptr) file.fail("tensor '", io::detail::printable(name), "' is missing (needed for the weight of that name)");
    if (!io::is_convertible_float(info->type)) file.fail_tensor(*info, "has dtype ", io::to_string(info->type), ", expected a float dtype");
    if (info->rank() == 1 && info->shape[0] == n) return file.read_vector<double>(name);
    if (info->rank() == 2 && info->shape[1] == n && info->shape[0] > 0) {
        std::vector<double> sum(static_cast<std::size_t>(n), 0.0), row(static_cast<std::size_t>(n));
        for (std::int64_t t = 0; t < info->shape[0]; ++t) {
            file.read_rows<double>(*info, static_cast<std::uint64_t>(t), 1, row);
            for (std::size_t j = 0; j < row.size(); ++j) sum[j] += row[j] * row[j];
        }
        for (auto& s : sum) s /= static_cast<double>(info->shape[0]);
        return sum;
    }
    file.fail_tensor(*info, "has shape ", io::detail::shape_text(info->shape), ", expected [", n, "] (E[x^2] per input channel) or [tokens, ",
                     n, "] (raw activations)");
}

struct tensor_row {
    std::string name;
    std::string shape;
    quantization_report report;
};

inline quantize_config make_config(const quantize_options& o) {
    quantize_config config;
    config.bits = o.bits;
    config.codebook = o.codebook == "rtn" ? codebook_method::rtn : codebook_method::kmeans;
    config.kmeans.method = o.kmeans == "lloyd" ? kmeans_method::lloyd : kmeans_method::exact;
    config.split.outlier_fraction = o.outliers_percent / 100.0;
    config.split.sensitive_fraction = o.sensitive_percent / 100.0;
    config.split.iqr_range = o.iqr;
    config.split.per_row = o.per_row;
    config.format = o.lut == "fp32" ? lut_format::fp32 : lut_format::fp16;
    config.threads = o.threads;
    return config;
}

inline int quantize_model(const quantize_options& o) {
    const auto start = std::chrono::steady_clock::now();
    const auto config = make_config(o);
    const io::safetensors_file model(o.model);
    std::optional<io::safetensors_file> fisher, activations;
    if (!o.fisher.empty()) fisher.emplace(o.fisher);
    if (!o.activations.empty()) activations.emplace(o.activations);

    std::regex include, exclude;
    try {
        include = std::regex(o.include);
    } catch (const std::regex_error& e) {
        throw input_error("--include '" + o.include + "' is not a valid regular expression: " + e.what());
    }
    try {
        exclude = std::regex(o.exclude);
    } catch (const std::regex_error& e) {
        throw input_error("--exclude '" + o.exclude + "' is not a valid regular expression: " + e.what());
    }

    // Plan first and check every input before the long part starts.
    std::vector<const io::tensor_info*> selected;
    for (const auto& t : model.tensors()) {
        const bool matrix = t.rank() == 2 && io::is_convertible_float(t.type) && t.shape[0] > 0 && t.shape[1] > 0;
        if (matrix && std::regex_search(t.name, include) && (o.exclude.empty() || !std::regex_search(t.name, exclude)))
            selected.push_back(&t);
    }
    if (selected.empty())
        throw input_error("file '" + o.model + "': no 2-D floating-point tensor matches --include '" + o.include + "' and not --exclude '" +
                          o.exclude + "'");
    for (const io::tensor_info* t : selected) {
        if (fisher) {
            const io::tensor_info& f = fisher->at(t->name);
            if (f.shape != t->shape)
                fisher->fail_tensor(f, "has shape ", io::detail::shape_text(f.shape), " but the model's tensor has ", io::detail::shape_text(t->shape));
            if (!io::is_convertible_float(f.type)) fisher->fail_tensor(f, "has dtype ", io::to_string(f.type), ", expected a float dtype");
        }
        if (activations) {
            const io::tensor_info& a = activations->at(t->name);
            const bool fits = (a.rank() == 1 && a.shape[0] == t->shape[1]) || (a.rank() == 2 && a.shape[1] == t->shape[1] && a.shape[0] > 0);
            if (!fits)
                activations->fail_tensor(a, "has shape ", io::detail::shape_text(a.shape), ", expected [", t->shape[1], "] or [tokens, ",
                                         t->shape[1], "] for the model's ", io::detail::shape_text(t->shape), " weight");
        }
    }

    io::safetensors_writer out(o.output);
    for (const auto& [key, value] : model.metadata()) out.set_metadata(key, value);
    out.set_metadata("sqz.format", std::string(io::quantized_format_name));
    out.set_metadata("sqz.format_version", std::to_string(io::quantized_format_version));
    out.set_metadata("sqz.library_version", version_string);
    const std::string method = o.codebook == "rtn" ? "rtn"
                               : fisher        ? "squeezellm-fisher"
                               : activations   ? "squeezellm-activations"
                                               : "kmeans-uniform";
    out.set_metadata("sqz.command", "sqz quantize --bits " + std::to_string(o.bits) + " sensitivity=" + method);

    std::vector<tensor_row> rows;
    progress_bar progress(selected.size());
    std::size_t done = 0;
    std::uint64_t quantized_input_bytes = 0;
    for (const auto& t : model.tensors()) {
        const bool quantize_it = std::find(selected.begin(), selected.end(), &t) != selected.end();
        if (!quantize_it) {
            out.add_bytes(t.name, t.type, t.shape, model.data(t));
            model.release(t);
            continue;
        }
        progress.update(done, t.name);
        quantized_input_bytes += t.bytes();
        quantization_result<float> result{quantized_matrix<float>(), {}};
        try {
            const row_matrix<float> w = model.read_matrix<float>(t.name);
            model.release(t);
            if (fisher) {
                const io::tensor_info& f = fisher->at(t.name);
                result = quantize_with_report(w, mapped_sensitivity(*fisher, f), config);
                fisher->release(f);
            } else if (activations) {
                result = quantize_with_report(w, column_sensitivity(w.rows(), activation_weights(*activations, t.name, w.cols())), config);
            } else {
                result = quantize_with_report(w, uniform_sensitivity(w.rows(), w.cols()), config);
            }
        } catch (const input_error&) {
            throw;
        } catch (const sqz::error& e) {
            const std::string message = one_line(e.what());
            // Library errors about the input already name the file; the quantizer's name the value only.
            if (message.starts_with("file '")) throw input_error(message);
            throw input_error("file '" + o.model + "': tensor '" + io::detail::printable(t.name) + "': " + message);
        }
        io::write_quantized(out, t.name, result.matrix,
                            io::quantization_note{method, config.split.outlier_fraction, config.split.sensitive_fraction});
        rows.push_back({t.name, shape_text(t.shape), result.report});
        ++done;
    }
    progress.update(done, "writing " + o.output);
    out.commit();
    progress.finish();

    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const auto output_bytes = std::filesystem::file_size(o.output);
    std::printf("%-44s %-13s %7s %8s %9s %11s %7s\n", "tensor", "shape", "bits/w", "sparse", "rel.err", "taylor", "time");
    double weights = 0, quantized_bytes = 0, taylor = 0;
    for (const auto& r : rows) {
        std::printf("%-44s %-13s %7.3f %7.3f%% %9.5f %11.4e %6.2fs\n", io::detail::printable(r.name).c_str(), r.shape.c_str(), r.report.bits_per_weight,
                    100.0 * r.report.sparse_fraction, r.report.relative_error, r.report.taylor_objective, r.report.seconds);
        weights += static_cast<double>(r.report.rows) * static_cast<double>(r.report.cols);
        quantized_bytes += static_cast<double>(r.report.storage.total());
        taylor += r.report.taylor_objective;
    }
    std::printf("\nquantized %zu of %zu tensors (%.0f weights) to %d bits in %s; sensitivity: %s\n", rows.size(), model.tensors().size(),
                weights, o.bits, duration_text(seconds).c_str(), method.c_str());
    std::printf("quantized tensors: %s -> %s, %.3f bits per weight, %.2fx smaller; taylor objective total %.4e\n",
                human_bytes(static_cast<double>(quantized_input_bytes)).c_str(), human_bytes(quantized_bytes).c_str(),
                weights > 0 ? 8.0 * quantized_bytes / weights : 0.0, quantized_bytes > 0 ? static_cast<double>(quantized_input_bytes) / quantized_bytes : 0.0,
                taylor);
    std::printf("file: %s (%s) -> %s (%s), %.2fx smaller\n", o.model.c_str(), human_bytes(static_cast<double>(model.file_size())).c_str(),
                o.output.c_str(), human_bytes(static_cast<double>(output_bytes)).c_str(),
                static_cast<double>(model.file_size()) / static_cast<double>(output_bytes));
    return 0;
}

}  // namespace sqz::cli
