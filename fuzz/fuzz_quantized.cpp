// libFuzzer target: the quantized-file loader and the SqueezeLLM checkpoint reader on arbitrary bytes.
// Every matrix that loads must be internally consistent; anything but sqz::error for bad input is a bug.
#include <sqz/io/quantized_file.hpp>
#include <sqz/io/squeezellm.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>

namespace {

template <class Q>
void check(const Q& q) {
    // dequantize() reads every code through the LUT and adds the sparse part: sanitizers catch any
    // out-of-bounds access, and a loaded matrix may hold only finite values.
    const auto dense = q.dequantize();
    if (dense.rows() != q.rows() || dense.cols() != q.cols()) __builtin_trap();
    for (Eigen::Index i = 0; i < dense.size(); ++i)
        if (!std::isfinite(dense.data()[i]) && q.sparse_nonzeros() == 0) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    try {
        const auto file = sqz::io::safetensors_file::view({data, size}, "fuzz-input");
        try {
            const sqz::io::quantized_reader reader(file);
            for (const auto& m : reader.quantized()) check(reader.load<float>(m.name));
        } catch (const sqz::error&) {
        }
        for (const auto& prefix : sqz::io::squeezellm::find_layers(file)) {
            try {
                check(sqz::io::squeezellm::read_layer<float>(file, prefix));
            } catch (const sqz::error&) {
            }
        }
    } catch (const sqz::error&) {
    }
    return 0;
}
