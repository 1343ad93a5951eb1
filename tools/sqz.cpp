// sqz - the command-line tool: quantize safetensors models, inspect files, convert to and from the
// SqueezeLLM reference layout, and run the built-in demo.
//
// Exit status: 0 on success, 1 on bad input (with one line "sqz: error: ..." naming the file, the
// tensor and the problem). Output files are written atomically: a failed run leaves none behind.
#include "common.hpp"
#include "inspect.hpp"
#include "quantize_command.hpp"

#include <compare_methods.hpp>  // examples/: the demo the README's main-job command runs

#include <sqz/io.hpp>
#include <sqz/version.hpp>

#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>
#include <iostream>
#include <string>

int main(int argc, char** argv) {
    CLI::App app{"sqz: Dense-and-Sparse (SqueezeLLM) quantization of LLM weight matrices"};
    app.set_version_flag("--version", std::string("sqz ") + sqz::version_string);
    app.require_subcommand(1);

    std::string inspect_path;
    auto* inspect = app.add_subcommand("inspect", "List the tensors of a safetensors file: formats, sizes, bits per weight");
    inspect->add_option("FILE", inspect_path, "a model, an sqz quantized file or a SqueezeLLM checkpoint")->required();

    sqz::cli::quantize_options q;
    auto* quantize = app.add_subcommand("quantize", "Quantize the 2-D weights of a safetensors model into an sqz quantized file");
    quantize->add_option("MODEL", q.model, "model safetensors file (F32, F16 or BF16 weights)")->required();
    quantize->add_option("-o,--output", q.output, "output safetensors file (written atomically)")->required();
    auto* fisher = quantize->add_option("--fisher", q.fisher, "Fisher diagonal: a safetensors file with the model's weight names and shapes");
    auto* activations = quantize->add_option(
        "--activations", q.activations,
        "activation statistics: per weight name a [in] vector of E[x^2] per input channel, or [tokens, in] raw activations");
    auto* uniform = quantize->add_flag("--uniform", q.uniform, "equal weights: plain k-means (the default without --fisher/--activations)");
    fisher->excludes(activations)->excludes(uniform);
    activations->excludes(uniform);
    quantize->add_option("--bits", q.bits, "bits per code, 1..8")->check(CLI::Range(1, 8))->capture_default_str();
    auto* outliers = quantize->add_option("--outliers", q.outliers_percent, "percent of entries kept exact as percentile outliers (paper: 0.40)")
                         ->check(CLI::Range(0.0, 99.999));
    auto* iqr = quantize->add_option("--iqr", q.iqr, "keep entries beyond the reference's IQR fence with range R instead of --outliers")
                    ->check(CLI::NonNegativeNumber);
    outliers->excludes(iqr);
    quantize->add_option("--sensitive", q.sensitive_percent, "percent of entries kept exact as the most sensitive (paper: 0.05)")
        ->check(CLI::Range(0.0, 99.999));
    quantize->add_flag("--per-row", q.per_row, "count outliers and sensitive values per row instead of per matrix");
    quantize->add_option("--include", q.include, "quantize only tensors whose name matches this regex")->capture_default_str();
    quantize->add_option("--exclude", q.exclude, "keep tensors whose name matches this regex unquantized ('' for none)")->capture_default_str();
    quantize->add_option("--lut", q.lut, "codebook storage precision")->check(CLI::IsMember({"fp16", "fp32"}))->capture_default_str();
    quantize->add_option("--codebook", q.codebook, "kmeans (SqueezeLLM) or rtn (uniform round-to-nearest baseline)")
        ->check(CLI::IsMember({"kmeans", "rtn"}))
        ->capture_default_str();
    quantize->add_option("--kmeans", q.kmeans, "exact (optimal) or lloyd")->check(CLI::IsMember({"exact", "lloyd"}))->capture_default_str();
    quantize->add_option("--threads", q.threads, "threads (0: all)")->check(CLI::NonNegativeNumber);

    sqz::examples::compare_options demo_options;
    std::string demo_lut = "fp16", demo_kmeans = "exact";
    auto* demo = app.add_subcommand("demo", "The built-in default run: RTN vs k-means vs SqueezeLLM vs dense-and-sparse on a "
                                            "4096 x 4096 LLaMA-7B-like matrix (no files needed)");
    demo->add_option("--rows", demo_options.rows, "rows of the demo matrix")->check(CLI::PositiveNumber)->capture_default_str();
    demo->add_option("--cols", demo_options.cols, "columns of the demo matrix")->check(CLI::PositiveNumber)->capture_default_str();
    demo->add_option("--bits", demo_options.bits, "bit widths, one table each")->delimiter(',')->check(CLI::Range(1, 8))->capture_default_str();
    demo->add_option("--seed", demo_options.seed, "seed of the weights (the sensitivity uses seed + 1)")->capture_default_str();
    demo->add_option("--threads", demo_options.threads, "threads (0: all)")->check(CLI::NonNegativeNumber);
    demo->add_option("--lut", demo_lut, "codebook storage precision")->check(CLI::IsMember({"fp16", "fp32"}))->capture_default_str();
    demo->add_option("--kmeans", demo_kmeans, "exact or lloyd")->check(CLI::IsMember({"exact", "lloyd"}))->capture_default_str();
    demo->add_option("--wide-cols", demo_options.wide_cols, "also time 4-bit quantization of rows x N (0 skips it)")
        ->check(CLI::NonNegativeNumber)
        ->capture_default_str();

    std::string convert_input, convert_output, convert_to;
    auto* convert = app.add_subcommand("convert", "Convert between sqz quantized files and SqueezeLLM reference checkpoints");
    convert->add_option("INPUT", convert_input, "input safetensors file")->required();
    convert->add_option("-o,--output", convert_output, "output safetensors file")->required();
    convert->add_option("--to", convert_to, "target layout: 'squeezellm' (from an sqz file) or 'sqz' (from a SqueezeLLM checkpoint)")
        ->required()
        ->check(CLI::IsMember({"squeezellm", "sqz"}));

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
        std::fprintf(stderr, "sqz: error: %s (see sqz --help)\n", sqz::cli::one_line(e.what()).c_str());
        return 1;
    }

    try {
        if (*inspect) return sqz::cli::inspect(inspect_path);
        if (*quantize) return sqz::cli::quantize_model(q);
        if (*demo) {
            demo_options.format = demo_lut == "fp32" ? sqz::lut_format::fp32 : sqz::lut_format::fp16;
            demo_options.method = demo_kmeans == "lloyd" ? sqz::kmeans_method::lloyd : sqz::kmeans_method::exact;
            return sqz::examples::run_compare_methods(demo_options, std::cout);
        }
        if (*convert) {
            if (convert_to == "squeezellm") {
                sqz::io::squeezellm::export_checkpoint(sqz::io::quantized_reader(convert_input), convert_output);
            } else {
                const sqz::io::safetensors_file reference(convert_input);
                if (sqz::io::squeezellm::find_layers(reference).empty())
                    throw sqz::cli::input_error("file '" + convert_input + "': no SqueezeLLM layers (<name>.qweight with <name>.lookup_table)");
                sqz::io::squeezellm::import_checkpoint(reference, convert_output);
            }
            std::printf("wrote %s\n", convert_output.c_str());
            return 0;
        }
    } catch (const sqz::error& e) {
        std::fprintf(stderr, "sqz: error: %s\n", sqz::cli::one_line(e.what()).c_str());
        return 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "sqz: error: %s\n", sqz::cli::one_line(e.what()).c_str());
        return 1;
    }
    return 0;
}
