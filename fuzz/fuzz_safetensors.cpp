// libFuzzer target: the safetensors reader on arbitrary bytes. Any outcome other than a valid file or
// sqz::error (a crash, a sanitizer report, another exception type, a huge allocation) is a bug.
#include <sqz/io/safetensors.hpp>

#include <cstddef>
#include <cstdint>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    try {
        const auto file = sqz::io::safetensors_file::view({data, size}, "fuzz-input");
        std::uint64_t total = 0;
        for (const auto& t : file.tensors()) {
            const auto bytes = file.data(t);
            total += bytes.size();
            if (!bytes.empty() && bytes.front() == 0xa5 && bytes.back() == 0x5a) total += 1;  // touch both ends
            if (sqz::io::is_convertible_float(t.type)) {
                std::vector<double> values(static_cast<std::size_t>(t.elements()));
                file.read_into<double>(t, values);
                if (t.rank() == 2) (void)file.read_matrix<float>(t.name);
            } else if (t.type == sqz::io::dtype::i32) {
                (void)file.read_integers<std::int32_t>(t.name);
            }
            (void)file.find(t.name);
        }
        // The tensors tile the data section exactly.
        if (total > file.file_size()) __builtin_trap();
    } catch (const sqz::error&) {
    }
    return 0;
}
