// sqz - the command-line tool: quantize safetensors models, inspect files, convert to and from the
// SqueezeLLM reference layout, and run the built-in demo.
//
// Exit status: 0 on success, 1 on bad input (with one line "sqz: error: ..." naming the file, the
// tensor and the problem). Output files are written atomically: a failed run leaves none behind.
#include "common.hpp"
#include "inspect.hpp"

#include <sqz/io.hpp>
#include <sqz/version.hpp>

#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>
#include <string>

int main(int argc, char** argv) {
    CLI::App app{"sqz: Dense-and-Sparse (SqueezeLLM) quantization of LLM weight matrices"};
    app.set_version_flag("--version", std::string("sqz ") + sqz::version_string);
    app.require_subcommand(1);

    std::string inspect_path;
    auto* inspect = app.add_subcommand("inspect", "List the tensors of a safetensors file: formats, sizes, bits per weight");
    inspect->add_option("FILE", inspect_path, "a model, an sqz quantized file or a SqueezeLLM checkpoint")->required();

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
        return app.exit(e) == 0 ? 0 : 1;
    }

    try {
        if (*inspect) return sqz::cli::inspect(inspect_path);
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
