#pragma once
// What the CPU and CUDA samplers share: input checks, the two weight
// definitions (a weight tensor, or DCD's rank discrepancy computed on the
// fly) and the invalid-weight rule.
#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cmath>
#include <type_traits>
#include <utility>

#include "../common/checks.h"
#include "../common/macros.h"
#include "../common/philox.h"

namespace rankdistill {

// Weights must be finite and non-negative; NaN compares false, so it is
// invalid too.
RD_HOST_DEVICE bool invalid_weight(double w) { return !(w >= 0.0) || w == INFINITY; }

// A weights struct gives each cell a value v (value) and, from it, the
// weight (weight_of), whether it is invalid or positive, an upper bound on a
// positive weight that is cheaper to compute (upper_of_positive) and a lower
// bound (lower_of; lower_squared gives its square as num / den, without the
// square root). The CPU sampler bounds keys with them and computes few exact
// weights; the CUDA one computes every weight (operator()).
template <typename scalar_t>
struct TensorWeights {
  const scalar_t* data;  // contiguous [B, C]
  int64_t num_cols;
  RD_HOST_DEVICE double value(int64_t row, int64_t col) const {
    return static_cast<double>(data[row * num_cols + col]);
  }
  RD_HOST_DEVICE static double weight_of(double v) { return v; }
  RD_HOST_DEVICE static bool invalid_value(double v) { return invalid_weight(v); }
  RD_HOST_DEVICE static bool positive_value(double v) { return v > 0.0; }
  RD_HOST_DEVICE static double upper_of_positive(double v) { return v; }
  RD_HOST_DEVICE static double lower_of(double v) { return v; }
  RD_HOST_DEVICE static void lower_squared(double v, double& num, double& den) {
    num = v * v;
    den = 1.0;
  }
  RD_HOST_DEVICE double operator()(int64_t row, int64_t col) const { return value(row, col); }
  // The row's largest bound, which sets its key scale (philox.h), is
  // largest_bound(max over the row of bound_order), NaN skipped: the max may
  // run over something cheaper than the bounds (DCD's gaps).
  RD_HOST_DEVICE double bound_order(int64_t row, int64_t col) const { return value(row, col); }
  RD_HOST_DEVICE double largest_bound(double largest_order) const { return largest_order; }
  // False where every key is a normal double unscaled, so that any key
  // scale gives the same draws: float32 and narrower weights, whose keys
  // |log u| / w lie in [1e-55, 1e47].
  RD_HOST_DEVICE bool needs_key_scale() const { return std::is_same_v<scalar_t, double>; }
};

// DCD's discrepancy weight, tanh(max(mu * gap, 0)), where gap is
// student_rank - teacher_rank ("under": the student ranks the item lower than
// the teacher does) or its negation ("over").
template <typename rank_t>
struct DiscrepancyWeights {
  const rank_t* student;  // contiguous [B, C]
  const rank_t* teacher;  // [B, C], rows contiguous, teacher_row_stride apart (0: one row for all)
  int64_t num_cols;
  double mu;
  bool under;
  int64_t teacher_row_stride;
  RD_HOST_DEVICE double signed_gap(int64_t row, int64_t col) const {
    const double gap = static_cast<double>(student[row * num_cols + col]) -
                       static_cast<double>(teacher[row * teacher_row_stride + col]);
    return under ? gap : -gap;
  }
  // v = mu * gap
  RD_HOST_DEVICE double value(int64_t row, int64_t col) const { return mu * signed_gap(row, col); }
  RD_HOST_DEVICE static double weight_of(double x) {
    if (!(x > 0.0)) return x == x ? 0.0 : x;  // NaN passes through to be reported
    // tanh through one exp (libm's tanh costs several): exact to ~1e-13
    // relative for x >= 1e-4, and x - x^3 / 3 is exact to 1e-16 below that.
    // From x = 20 on, 2 / (exp(2 x) + 1) < 2^-54 and the formula gives 1 exactly.
    if (x >= 20.0) return 1.0;
    return x < 1e-4 ? x * (1.0 - x * x / 3.0) : 1.0 - 2.0 / (std::exp(2.0 * x) + 1.0);
  }
  RD_HOST_DEVICE static bool invalid_value(double x) { return x != x; }
  RD_HOST_DEVICE static bool positive_value(double x) { return x > 0.0; }
  // tanh(x) <= min(x, 1): a bound without the tanh (a minsd).
  RD_HOST_DEVICE static double upper_of_positive(double x) { return x < 1.0 ? x : 1.0; }
  // tanh(x) >= x / sqrt(1 + x^2) for x >= 0 (squared, that is sinh(x) >= x);
  // x is capped, as tanh is increasing, so that x^2 stays finite.
  RD_HOST_DEVICE static double lower_of(double x) {
    const double c = capped(x);
    return c / std::sqrt(1.0 + c * c);
  }
  RD_HOST_DEVICE static void lower_squared(double x, double& num, double& den) {
    const double c = capped(x);
    num = c * c;
    den = 1.0 + num;
  }
  RD_HOST_DEVICE double operator()(int64_t row, int64_t col) const { return weight_of(value(row, col)); }
  // The bound is non-decreasing in the gap, so the largest bound is that of
  // the largest gap (as TensorWeights explains).
  RD_HOST_DEVICE double bound_order(int64_t row, int64_t col) const { return signed_gap(row, col); }
  RD_HOST_DEVICE double largest_bound(double largest_gap) const { return bound_of(mu * largest_gap); }
  // Integer ranks have positive gaps >= 1, so weights in [tanh(mu), 1]
  // whose keys lie in [1e-16, 37 / tanh(mu)]: normal for mu >= 1e-300.
  RD_HOST_DEVICE bool needs_key_scale() const { return !std::is_integral_v<rank_t> || mu < 1e-300; }

 private:
  RD_HOST_DEVICE static double bound_of(double x) { return x > 0.0 ? (x < 1.0 ? x : 1.0) : (x == x ? 0.0 : x); }
  RD_HOST_DEVICE static double capped(double x) { return x < 1e8 ? x : 1e8; }
};

// first_row: row r draws the random numbers of row first_row + r, so that
// rows drawn in blocks (or by several processes) with one seed draw what the
// whole matrix would.
inline void check_sample_size(int64_t k, int64_t num_rows, int64_t num_cols, int64_t first_row) {
  TORCH_CHECK_VALUE(k >= 0, "k must be non-negative, got ", k);
  TORCH_CHECK_VALUE(k <= num_cols, "k (", k, ") is larger than the number of columns (", num_cols,
                    "): cannot draw that many distinct columns");
  TORCH_CHECK_VALUE(first_row >= 0, "first_row must be non-negative, got ", first_row);
  // The random stream is addressed by 32-bit row and column counters.
  TORCH_CHECK_VALUE(num_rows < (int64_t{1} << 32) - first_row && num_cols < (int64_t{1} << 32),
                    "at most 2^32 - 1 rows (first_row included) and columns are supported, got ", num_rows,
                    " x ", num_cols, " from row ", first_row);
}

// A generator of another device would draw from the wrong stream (or fail
// deep inside PyTorch): say so in the op's own words.
inline void check_generator_device(const std::optional<at::Generator>& generator, const at::Device& device) {
  if (!generator.has_value() || !generator->defined()) return;
  TORCH_CHECK_VALUE(generator->device() == device, "generator is on ", generator->device(),
                    " but the inputs are on ", device, ": pass a generator of the inputs' device");
}

inline void check_weighted_sample_inputs(const at::Tensor& weights, int64_t k, int64_t first_row) {
  check_dim(weights, 2, "weights");
  check_floating(weights, "weights");
  check_sample_size(k, weights.size(0), weights.size(1), first_row);
}

// The teacher's ranks as the samplers read them, with their row stride: a
// row broadcast to every row (DCD's teacher ranks 0..C-1) is read in place
// rather than copied.
inline std::pair<at::Tensor, int64_t> teacher_rows(const at::Tensor& teacher_rank) {
  if (teacher_rank.dim() == 2 && teacher_rank.size(0) > 1 && teacher_rank.stride(0) == 0 &&
      (teacher_rank.size(1) <= 1 || teacher_rank.stride(1) == 1)) {
    return {teacher_rank, 0};
  }
  const at::Tensor contiguous = teacher_rank.contiguous();
  return {contiguous, contiguous.size(1)};
}

inline void check_discrepancy_sample_inputs(const at::Tensor& student_rank, const at::Tensor& teacher_rank,
                                            int64_t k, double mu, int64_t first_row) {
  check_dim(student_rank, 2, "student_rank");
  check_dim(teacher_rank, 2, "teacher_rank");
  check_same_device(teacher_rank, student_rank, "teacher_rank", "student_rank");
  TORCH_CHECK_VALUE(student_rank.sizes() == teacher_rank.sizes(), "student_rank and teacher_rank must have ",
                    "the same shape, got ", student_rank.sizes(), " and ", teacher_rank.sizes());
  TORCH_CHECK_TYPE(student_rank.scalar_type() == teacher_rank.scalar_type(),
                   "student_rank and teacher_rank must have the same dtype, got ", student_rank.scalar_type(),
                   " and ", teacher_rank.scalar_type());
  const auto dtype = student_rank.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kLong || dtype == at::kInt || dtype == at::kFloat || dtype == at::kDouble,
                   "ranks must be int64, int32, float32 or float64, got ", dtype);
  TORCH_CHECK_VALUE(std::isfinite(mu) && mu > 0.0, "mu must be positive and finite, got ", mu);
  check_sample_size(k, student_rank.size(0), student_rank.size(1), first_row);
}

}  // namespace rankdistill
