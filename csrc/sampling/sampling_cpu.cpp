// Sampling without replacement on the CPU: every positive-weight column has
// the Philox key log(u) / w of philox.h (w scaled by a power of two per row),
// the same keys as the CUDA backend, and a per-row selection keeps the k
// largest (see sample_row). Parallel over rows; the draws do not depend on the
// thread count.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Dispatch.h>
#include <ATen/Dispatch_v2.h>
#include <ATen/Parallel.h>
#include <ATen/core/Generator.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <utility>
#include <vector>

#include "sampling.h"

namespace rankdistill {
namespace {

uint64_t draw_seed(const std::optional<at::Generator>& generator, const at::Device& device) {
  check_generator_device(generator, device);
  auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(generator, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  return gen->random64();
}

using Candidate = std::pair<double, int64_t>;  // (key log(u) / w, column)

// Function objects rather than functions, so that nth_element and sort inline them.
constexpr auto drawn_first = [](const Candidate& a, const Candidate& b) {
  return a.first > b.first || (a.first == b.first && a.second < b.second);
};
constexpr auto by_column = [](const Candidate& a, const Candidate& b) { return a.second < b.second; };

// Fills `best` with the row's sample (the k largest keys, unordered): every
// positive-weight column has the key log(u) / w of philox.h, w scaled by the
// row's power of two (the CUDA backend's keys). Candidates collect in `best`;
// when 2k have gathered, the k best are kept and the k-th key becomes the
// threshold, a lower bound of the final k-th key. log(u) <= u - 1 and
// w <= bound give key <= (u - 1) / bound, which rejects most columns below the
// threshold without the log or the exact weight (DCD's tanh). Returns false if
// a weight was invalid.
template <typename Weights>
bool sample_row(const Weights& weights, int64_t row, int64_t stream_row, int64_t num_cols, int64_t k,
                uint64_t seed, std::vector<Candidate>& best) {
  best.clear();
  KeyScale scale;
  if (weights.needs_key_scale()) {
    double largest_order = -INFINITY;
    for (int64_t col = 0; col < num_cols; ++col) {
      const double order = weights.bound_order(row, col);
      largest_order = order > largest_order ? order : largest_order;  // branch-free, NaN skipped
    }
    scale = key_scale(weights.largest_bound(largest_order));
  }
  bool valid = true;
  double threshold = -INFINITY;
  const auto keep_best_k = [&] {
    std::nth_element(best.begin(), best.begin() + (k - 1), best.end(), drawn_first);
    best.resize(k);
    threshold = best[k - 1].first;
  };
  const auto offer = [&](int64_t col, double u, double bound) {
    if (!(bound > 0.0) || bound == INFINITY || k == 0) return;
    // the margin keeps rounding from rejecting a column that could enter
    if (u - 1.0 < threshold * scale.apply(bound) * (1.0 + 1e-9)) return;
    best.emplace_back(key_from_uniform(u, weights(row, col), scale), col);
    if (static_cast<int64_t>(best.size()) == 2 * k) keep_best_k();
  };
  for (int64_t even = 0; even < num_cols; even += 2) {
    const double bound_even = weights.upper(row, even);
    const double bound_odd = even + 1 < num_cols ? weights.upper(row, even + 1) : 0.0;
    valid &= !invalid_weight(bound_even) && !invalid_weight(bound_odd);
    if (!(bound_even > 0.0) && !(bound_odd > 0.0)) continue;  // no random numbers for zero weights
    const UniformPair u = uniform_pair(seed, 0, stream_row, even >> 1);
    offer(even, u.even, bound_even);
    if (even + 1 < num_cols) offer(even + 1, u.odd, bound_odd);
  }
  if (static_cast<int64_t>(best.size()) > k) keep_best_k();
  return valid;
}

template <typename Weights>
at::Tensor sample_rows(const Weights& weights, int64_t num_rows, int64_t num_cols, int64_t k, bool sorted,
                       uint64_t seed, int64_t first_row, const at::TensorOptions& options) {
  at::Tensor out = at::empty({num_rows, k}, options.dtype(at::kLong));
  int64_t* out_data = out.mutable_data_ptr<int64_t>();
  std::atomic<bool> saw_invalid{false};
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(num_cols, 1));
  at::parallel_for(0, num_rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<Candidate> best;
    best.reserve(2 * k);
    for (int64_t row = begin; row < end; ++row) {
      if (!sample_row(weights, row, first_row + row, num_cols, k, seed, best)) {
        saw_invalid.store(true, std::memory_order_relaxed);
      }
      if (sorted) {
        std::sort(best.begin(), best.end(), by_column);
      } else {
        std::sort(best.begin(), best.end(), drawn_first);
      }
      const int64_t taken = static_cast<int64_t>(best.size());
      int64_t* row_out = out_data + row * k;
      for (int64_t j = 0; j < taken; ++j) row_out[j] = best[j].second;
      std::fill(row_out + taken, row_out + k, int64_t{-1});
    }
  });
  TORCH_CHECK_VALUE(!saw_invalid.load(), "sampling weights must be finite and non-negative (found a negative, ",
                    "infinite or NaN weight)");
  return out;
}

at::Tensor weighted_sample_cpu(const at::Tensor& weights, int64_t k, bool sorted,
                               const std::optional<at::Generator>& generator, int64_t first_row) {
  check_weighted_sample_inputs(weights, k, first_row);
  const at::Tensor w = weights.contiguous();
  const uint64_t seed = draw_seed(generator, w.device());
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "weighted_sample_cpu", [&] {
    out = sample_rows(TensorWeights<scalar_t>{w.const_data_ptr<scalar_t>(), w.size(1)}, w.size(0), w.size(1), k,
                      sorted, seed, first_row, w.options());
  });
  return out;
}

at::Tensor discrepancy_sample_cpu(const at::Tensor& student_rank, const at::Tensor& teacher_rank, int64_t k,
                                  double mu, bool under, bool sorted, const std::optional<at::Generator>& generator,
                                  int64_t first_row) {
  check_discrepancy_sample_inputs(student_rank, teacher_rank, k, mu, first_row);
  const at::Tensor student = student_rank.contiguous(), teacher = teacher_rank.contiguous();
  const uint64_t seed = draw_seed(generator, student.device());
  at::Tensor out;
  AT_DISPATCH_V2(
      student.scalar_type(), "discrepancy_sample_cpu", AT_WRAP([&] {
        const DiscrepancyWeights<scalar_t> weights{student.const_data_ptr<scalar_t>(),
                                                   teacher.const_data_ptr<scalar_t>(), student.size(1), mu, under};
        out = sample_rows(weights, student.size(0), student.size(1), k, sorted, seed, first_row, student.options());
      }),
      AT_EXPAND(AT_FLOATING_TYPES), at::kLong, at::kInt);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(rankdistill, CPU, m) {
  m.impl("weighted_sample", &weighted_sample_cpu);
  m.impl("discrepancy_sample", &discrepancy_sample_cpu);
}

}  // namespace rankdistill
