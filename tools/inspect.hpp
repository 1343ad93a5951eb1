// `sqz inspect FILE`: what a safetensors file holds. Understands plain models, sqz quantized files and
// SqueezeLLM reference checkpoints.
#pragma once

#include "common.hpp"

#include <sqz/io.hpp>

#include <bit>
#include <cstdio>
#include <functional>
#include <set>
#include <string>
#include <vector>

namespace sqz::cli {

inline void print_plain_table(const std::vector<const io::tensor_info*>& tensors, double& weights, double& bytes) {
    std::printf("%-48s %-6s %-18s %12s %8s\n", "tensor", "dtype", "shape", "size", "bits/w");
    for (const io::tensor_info* t : tensors) {
        std::printf("%-48s %-6s %-18s %12s %8.2f\n", io::detail::printable(t->name).c_str(), std::string(io::to_string(t->type)).c_str(),
                    shape_text(t->shape).c_str(), human_bytes(static_cast<double>(t->bytes())).c_str(),
                    8.0 * static_cast<double>(io::dtype_size(t->type)));
        weights += static_cast<double>(t->elements());
        bytes += static_cast<double>(t->bytes());
    }
}

inline int inspect(const std::string& path) {
    const io::safetensors_file file(path);
    double weights = 0, bytes = 0;
    std::printf("%s: %zu tensors, %s\n", path.c_str(), file.tensors().size(), human_bytes(static_cast<double>(file.file_size())).c_str());
    if (file.metadata().count("sqz.format_version") != 0) {
        const io::quantized_reader reader(file);
        std::printf("sqz quantized file, format version %s, %zu quantized matrices, %zu other tensors\n\n",
                    file.metadata().at("sqz.format_version").c_str(), reader.quantized().size(), reader.passthrough().size());
        if (!reader.quantized().empty()) {
            std::printf("%-48s %-13s %4s %4s %8s %12s %8s  %s\n", "quantized matrix", "shape", "bits", "LUT", "sparse", "size",
                        "bits/w", "method");
            for (const auto& m : reader.quantized()) {
                const io::quantized_part_names parts(m.name);
                std::uint64_t size = 0;
                for (const auto* part : {&parts.lut, &parts.qweight, &parts.row_ptr, &parts.col_idx, &parts.values})
                    if (const auto* t = file.find(*part)) size += t->bytes();
                const double count = static_cast<double>(m.rows) * static_cast<double>(m.cols);
                std::printf("%-48s %-13s %4d %4s %7.3f%% %12s %8.3f  %s\n", io::detail::printable(m.name).c_str(),
                            (std::to_string(m.rows) + " x " + std::to_string(m.cols)).c_str(), m.bits,
                            std::string(io::to_string(m.lut_type)).c_str(), count > 0 ? 100.0 * static_cast<double>(m.nnz) / count : 0.0,
                            human_bytes(static_cast<double>(size)).c_str(), count > 0 ? 8.0 * static_cast<double>(size) / count : 0.0,
                            io::detail::printable(m.note.method).c_str());
                weights += count;
                bytes += static_cast<double>(size);
            }
            std::printf("\n");
        }
        if (!reader.passthrough().empty()) print_plain_table(reader.passthrough(), weights, bytes);
    } else if (const auto layers = io::squeezellm::find_layers(file); !layers.empty()) {
        std::printf("SqueezeLLM reference checkpoint, %zu quantized layers\n\n", layers.size());
        std::printf("%-48s %-13s %4s %8s %12s %8s\n", "layer", "shape", "bits", "sparse", "size", "bits/w");
        std::set<std::string, std::less<>> layer_set(layers.begin(), layers.end());
        for (const auto& prefix : layers) {
            const auto& qweight = file.at(prefix + ".qweight");
            const auto& table = file.at(prefix + ".lookup_table");
            std::uint64_t size = 0, nnz = 0;
            for (const char* part : {".qweight", ".lookup_table", ".rows", ".cols", ".vals"})
                if (const auto* t = file.find(prefix + part)) size += t->bytes();
            if (const auto* vals = file.find(prefix + ".vals")) nnz = vals->elements();
            const int bits = table.rank() == 2 && table.shape[1] > 0 ? std::countr_zero(static_cast<std::uint64_t>(table.shape[1])) : 0;
            const double rows = table.rank() == 2 ? static_cast<double>(table.shape[0]) : 0.0;
            const double cols = qweight.rank() == 2 && bits > 0 ? static_cast<double>(qweight.shape[0] / bits * 32) : 0.0;
            const double count = rows * cols;
            std::printf("%-48s %-13s %4d %7.3f%% %12s %8.3f\n", io::detail::printable(prefix).c_str(),
                        (std::to_string(static_cast<long long>(rows)) + " x " + std::to_string(static_cast<long long>(cols))).c_str(), bits,
                        count > 0 ? 100.0 * static_cast<double>(nnz) / count : 0.0, human_bytes(static_cast<double>(size)).c_str(),
                        count > 0 ? 8.0 * static_cast<double>(size) / count : 0.0);
            weights += count;
            bytes += static_cast<double>(size);
        }
        std::printf("\n");
        std::vector<const io::tensor_info*> others;
        for (const auto& t : file.tensors())
            if (!io::squeezellm::is_derived_tensor(t.name, layer_set)) others.push_back(&t);
        if (!others.empty()) print_plain_table(others, weights, bytes);
    } else {
        std::vector<const io::tensor_info*> all;
        for (const auto& t : file.tensors()) all.push_back(&t);
        print_plain_table(all, weights, bytes);
    }
    std::printf("\ntotal: %.0f weights in %s, %.3f bits per weight\n", weights, human_bytes(bytes).c_str(),
                weights > 0 ? 8.0 * bytes / weights : 0.0);
    for (const auto& [key, value] : file.metadata())
        if (!key.starts_with("sqz.quantized.")) std::printf("metadata %s = %s\n", io::detail::printable(key).c_str(), io::detail::printable(value).c_str());
    return 0;
}

}  // namespace sqz::cli
