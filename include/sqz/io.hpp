// sqz/io.hpp - umbrella header of sqz's file I/O: safetensors reading and writing, the quantized file
// format (docs/format.md) and SqueezeLLM checkpoint interop. Needs nlohmann-json: link the CMake target
// sqz::io (which also makes <sqz/sqz.hpp> include this header).
#pragma once

#include <sqz/io/quantized_file.hpp>
#include <sqz/io/safetensors.hpp>
#include <sqz/io/squeezellm.hpp>
