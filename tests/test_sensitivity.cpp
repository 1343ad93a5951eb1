#include <sqz/sensitivity.hpp>
#include <sqz/synthetic.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

namespace {

using matrix = sqz::row_matrix<float>;

template <class Provider>
Eigen::MatrixXd materialise(const Provider& p) {
    Eigen::MatrixXd out(p.rows(), p.cols());
    std::vector<double> row(static_cast<std::size_t>(p.cols()));
    for (Eigen::Index i = 0; i < p.rows(); ++i) {
        p.fill_row(i, row);
        for (Eigen::Index j = 0; j < p.cols(); ++j) out(i, j) = row[static_cast<std::size_t>(j)];
    }
    return out;
}

matrix random_matrix(Eigen::Index rows, Eigen::Index cols, std::uint64_t seed) {
    sqz::synthetic::rng random(seed);
    matrix m(rows, cols);
    for (Eigen::Index k = 0; k < m.size(); ++k) m.data()[k] = static_cast<float>(random.normal());
    return m;
}

}  // namespace

TEST_CASE("providers satisfy the concept and Eigen matrices are accepted as sensitivities", "[sensitivity]") {
    STATIC_REQUIRE(sqz::sensitivity_provider<sqz::uniform_sensitivity>);
    STATIC_REQUIRE(sqz::sensitivity_provider<sqz::matrix_sensitivity<float>>);
    STATIC_REQUIRE(sqz::sensitivity_provider<sqz::fisher_accumulator<double>>);
    STATIC_REQUIRE(sqz::sensitivity_provider<sqz::activation_accumulator<float>>);
    STATIC_REQUIRE(sqz::sensitivity_argument<Eigen::MatrixXd>);
    STATIC_REQUIRE(sqz::sensitivity_argument<matrix>);
    STATIC_REQUIRE_FALSE(sqz::sensitivity_argument<Eigen::MatrixXi>);
    STATIC_REQUIRE_FALSE(sqz::sensitivity_argument<std::vector<double>>);
}

TEST_CASE("uniform and matrix sensitivities read rows of any layout", "[sensitivity]") {
    CHECK(materialise(sqz::uniform_sensitivity(2, 3)) == Eigen::MatrixXd::Ones(2, 3));
    CHECK(materialise(sqz::uniform_sensitivity(2, 3, 0.5)) == Eigen::MatrixXd::Constant(2, 3, 0.5));
    CHECK_THROWS_WITH(sqz::uniform_sensitivity(2, 3, -1.0), Catch::Contains("value = -1"));

    const matrix row_major = random_matrix(4, 6, 1).cwiseAbs();
    const Eigen::MatrixXf col_major = row_major;
    const Eigen::MatrixXd expected = row_major.cast<double>();
    const sqz::matrix_sensitivity a(row_major);
    const sqz::matrix_sensitivity b(col_major);
    CHECK(materialise(a) == expected);
    CHECK(materialise(b) == expected);
    // An expression, a strided block of a row-major matrix and a block of a column-major one.
    const sqz::matrix_sensitivity square(row_major.array().square().matrix());
    CHECK(materialise(square) == row_major.array().square().matrix().cast<double>().eval());
    const sqz::matrix_sensitivity block(row_major.block(1, 2, 3, 3));
    CHECK(materialise(block) == expected.block(1, 2, 3, 3));
    const sqz::matrix_sensitivity col_block(col_major.block(1, 2, 3, 3));
    CHECK(materialise(col_block) == expected.block(1, 2, 3, 3));
    const Eigen::VectorXd column = Eigen::VectorXd::LinSpaced(5, 1.0, 5.0);
    const sqz::matrix_sensitivity as_column(column);
    CHECK(materialise(as_column) == column);
    const Eigen::RowVectorXd row = column.transpose();
    const sqz::matrix_sensitivity as_row(row);
    CHECK(materialise(as_row) == row);
}

TEST_CASE("the Fisher accumulator keeps the mean of squared gradients", "[sensitivity]") {
    sqz::fisher_accumulator<double> fisher(3, 4);
    sqz::fisher_accumulator<float> fisher_float(3, 4);
    Eigen::MatrixXd sum = Eigen::MatrixXd::Zero(3, 4);
    for (std::uint64_t s = 0; s < 5; ++s) {
        const matrix g = random_matrix(3, 4, 10 + s);
        fisher.add(g);
        fisher_float.add(g);
        sum += g.cast<double>().array().square().matrix();
    }
    CHECK(fisher.samples() == 5);
    CHECK(fisher.sum_of_squares().isApprox(sum, 1e-15));
    CHECK(materialise(fisher).isApprox(sum / 5.0, 1e-15));
    CHECK(materialise(fisher_float).isApprox(sum / 5.0, 1e-6));
    // A precomputed partial sum over 3 more samples (e.g. from another process).
    fisher.add_sum_of_squares(Eigen::MatrixXd::Constant(3, 4, 6.0), 3);
    CHECK(fisher.samples() == 8);
    CHECK(materialise(fisher).isApprox((sum.array() + 6.0).matrix() / 8.0, 1e-15));

    CHECK_THROWS_WITH(fisher.add(matrix::Zero(3, 5)), Catch::Contains("matrix is 3 x 5, expected 3 x 4"));
    matrix bad = matrix::Zero(3, 4);
    bad(1, 2) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH(fisher.add(bad), Catch::Contains("gradient(1, 2) = nan"));
    CHECK_THROWS_WITH(fisher.add_sum_of_squares(Eigen::MatrixXd::Constant(3, 4, -1.0), 1), Catch::Contains("entry (0, 0) = -1"));
    CHECK_THROWS_WITH(fisher.add_sum_of_squares(Eigen::MatrixXd::Zero(3, 4), 0), Catch::Contains("samples = 0"));
    CHECK(fisher.samples() == 8);  // failed calls leave it unchanged
    const sqz::fisher_accumulator<double> empty(2, 2);
    std::vector<double> row(2);
    CHECK_THROWS_WITH(empty.fill_row(0, row), Catch::Contains("no gradients"));
}

TEST_CASE("the activation accumulator weights column j by E[x_j^2] in every row", "[sensitivity]") {
    sqz::activation_accumulator<double> acts(3, 4);
    const matrix x1 = random_matrix(5, 4, 1);
    const matrix x2 = random_matrix(2, 4, 2);
    acts.add(x1);
    acts.add(x2);
    CHECK(acts.samples() == 7);
    Eigen::VectorXd expected(4);
    for (Eigen::Index j = 0; j < 4; ++j)
        expected(j) = (x1.col(j).cast<double>().squaredNorm() + x2.col(j).cast<double>().squaredNorm()) / 7.0;
    CHECK(acts.mean_squares().isApprox(expected, 1e-15));
    const Eigen::MatrixXd f = materialise(acts);
    CHECK(f.rows() == 3);
    for (Eigen::Index i = 0; i < 3; ++i) CHECK(f.row(i).transpose().isApprox(expected, 1e-15));
    CHECK_THROWS_WITH(acts.add(matrix::Zero(2, 3)), Catch::Contains("3 columns, expected 4"));
    matrix bad = matrix::Zero(2, 4);
    bad(1, 0) = std::numeric_limits<float>::infinity();
    CHECK_THROWS_WITH(acts.add(bad), Catch::Contains("activation(1, 0) = inf"));
    CHECK_THROWS_WITH(sqz::activation_accumulator<float>(2, 2).mean_squares(), Catch::Contains("no activations"));
}

TEST_CASE("the Taylor objective and Frobenius errors equal direct sums", "[sensitivity]") {
    const matrix w = random_matrix(7, 9, 3);
    const matrix q = random_matrix(7, 9, 4);
    const matrix f = random_matrix(7, 9, 5).cwiseAbs();
    double weighted = 0.0;
    double squared = 0.0;
    double reference = 0.0;
    for (Eigen::Index i = 0; i < 7; ++i)
        for (Eigen::Index j = 0; j < 9; ++j) {
            const double d = static_cast<double>(w(i, j)) - static_cast<double>(q(i, j));
            weighted += static_cast<double>(f(i, j)) * d * d;
            squared += d * d;
            reference += static_cast<double>(w(i, j)) * static_cast<double>(w(i, j));
        }
    CHECK(sqz::taylor_objective(w, f, q) == Approx(0.5 * weighted).epsilon(1e-13));
    CHECK(sqz::frobenius_error(w, q) == Approx(std::sqrt(squared)).epsilon(1e-13));
    CHECK(sqz::relative_frobenius_error(w, q) == Approx(std::sqrt(squared / reference)).epsilon(1e-13));
    // Same result from a provider, from a column-major sensitivity and for any thread count.
    const sqz::matrix_sensitivity view(f);
    CHECK(sqz::taylor_objective(w, view, q) == sqz::taylor_objective(w, f, q));
    CHECK(sqz::taylor_objective(w, Eigen::MatrixXf(f), q, 2) == sqz::taylor_objective(w, f, q, 1));
    CHECK(sqz::taylor_objective(w, sqz::uniform_sensitivity(7, 9), q) == Approx(0.5 * squared).epsilon(1e-13));
    CHECK(sqz::relative_frobenius_error(matrix(matrix::Zero(2, 2)), matrix(matrix::Zero(2, 2))) == 0.0);
}

TEST_CASE("the Taylor objective of a quantized matrix decodes D + S", "[sensitivity]") {
    // LUT, codes and a sparse entry by hand; the objective against a scalar decode.
    sqz::row_matrix<float> lut(2, 4);
    lut << -1.0f, 0.0f, 0.5f, 2.0f,  //
        -0.25f, 0.25f, 1.0f, 4.0f;
    const std::vector<std::uint8_t> codes{0, 1, 2, 3, 3, 2, 1, 0};
    sqz::csr_matrix<float> sparse(2, 4);
    sparse.insert(1, 2) = 0.125f;
    const auto q = sqz::quantized_matrix<float>::from_codes(2, 4, 2, lut, codes, sparse);
    matrix w(2, 4);
    w << -0.9f, 0.1f, 0.5f, 1.0f,  //
        3.0f, 1.2f, 0.5f, -0.5f;
    matrix f(2, 4);
    f << 1.0f, 2.0f, 3.0f, 4.0f,  //
        0.5f, 1.5f, 2.5f, 0.0f;
    double expected = 0.0;
    for (Eigen::Index i = 0; i < 2; ++i)
        for (Eigen::Index j = 0; j < 4; ++j) {
            const float decoded = lut(i, codes[static_cast<std::size_t>(i * 4 + j)]) + (i == 1 && j == 2 ? 0.125f : 0.0f);
            const double d = static_cast<double>(w(i, j)) - static_cast<double>(decoded);
            expected += static_cast<double>(f(i, j)) * d * d;
        }
    CHECK(sqz::taylor_objective(w, f, q) == Approx(0.5 * expected).epsilon(1e-14));
    CHECK(sqz::taylor_objective(w, f, q) == Approx(sqz::taylor_objective(w, f, q.dequantize())).epsilon(1e-15));
    CHECK(sqz::frobenius_error(w, q) == Approx(sqz::frobenius_error(w, q.dequantize())).epsilon(1e-15));
    std::vector<float> row(4);
    q.dequantize_row(1, row);
    CHECK(row == std::vector<float>{4.0f, 1.0f, 0.375f, -0.25f});
    CHECK_THROWS_WITH(q.dequantize_row(2, row), Catch::Contains("row = 2"));
}

TEST_CASE("objective functions reject mismatched shapes and bad values", "[sensitivity]") {
    const matrix w = random_matrix(3, 4, 1);
    const matrix f = matrix::Ones(3, 4);
    CHECK_THROWS_WITH(sqz::taylor_objective(w, f, matrix(matrix::Zero(3, 5))), Catch::Contains("Q is 3 x 5, W is 3 x 4"));
    CHECK_THROWS_WITH(sqz::taylor_objective(w, matrix(matrix::Ones(4, 4)), w), Catch::Contains("sensitivity is 4 x 4"));
    matrix bad = f;
    bad(0, 2) = -0.5f;
    CHECK_THROWS_WITH(sqz::taylor_objective(w, bad, w), Catch::Contains("sensitivity(0, 2) = -0.5 is negative"));
    bad(0, 2) = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH(sqz::taylor_objective(w, bad, w), Catch::Contains("sensitivity(0, 2) = nan is not finite"));
    matrix bad_w = w;
    bad_w(2, 3) = -std::numeric_limits<float>::infinity();
    CHECK_THROWS_WITH(sqz::frobenius_error(bad_w, w), Catch::Contains("W(2, 3) = -inf"));
    const sqz::fisher_accumulator<double> empty(3, 4);
    CHECK_THROWS_WITH(sqz::taylor_objective(w, empty, w, 2), Catch::Contains("no gradients"));
}
