// Must NOT compile: backend::cuda used by a translation unit that nvcc does not compile. CTest expects
// the back end's static_assert message ("this back end is not compiled in").
#include <sqz/sqz.hpp>

#include <vector>

int main() {
    const auto q = sqz::quantized_matrix<float>::from_codes(1, 1, 2, sqz::row_matrix<float>::Zero(1, 4),
                                                            std::vector<std::uint8_t>{0});
    std::vector<float> x(1), y(1);
    sqz::matvec<sqz::backend::cuda>(q, x, y);
    return 0;
}
