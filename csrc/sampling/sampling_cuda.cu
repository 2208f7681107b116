// Sampling without replacement on CUDA, with the keys of the CPU version:
// every positive-weight column gets the Philox key log(u) / w of philox.h (w
// scaled by the power of two of its row, from the row's largest weight bound)
// and each row keeps its k largest keys. Two paths:
//  - C <= kMaxSortCols: a block per row finds the row's largest bound, computes
//    the row's (key, column) pairs into shared memory, bitonic-sorts them (key
//    descending, ties by column), keeps the first min(k, #positive) and, when
//    `sorted`, sorts those by column. One launch, no global temporaries.
//  - larger rows: a kernel finds each row's key scale, another writes every
//    key to a [B, C] float64 tensor and at::topk selects the k largest per
//    row; entries with key -inf (non-positive weights) become -1 padding, and
//    `sorted` re-sorts the selected columns with the padding kept last. It costs a [B, C]
//    temporary, which rows too long for shared memory cannot avoid simply.
// The random stream is the CUDA generator's Philox (seed, offset), so CPU and
// CUDA draw from the same distribution but give different samples for the
// same torch.manual_seed.
#include <ATen/Dispatch.h>
#include <ATen/Dispatch_v2.h>
#include <ATen/core/Generator.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/cuda/PhiloxUtils.cuh>
#include <ATen/ops/empty.h>
#include <ATen/ops/isneginf.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/topk.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <mutex>

#include "../common/bitonic_sort.cuh"
#include "sampling.h"

namespace rankdistill {
namespace {

constexpr int kMaxSortCols = 2048;
constexpr int kMaxThreads = 512;
constexpr int kScaleThreads = 256;  // a power of two, for block_max
// Grid caps: blocks loop over the rows (or cells) beyond them.
constexpr int64_t kMaxRowBlocks = 65535;
constexpr int64_t kMaxCellBlocks = int64_t{1} << 20;

// PyTorch's own CUDA kernels draw Philox blocks under the generator's seed
// as key, at counters that can coincide with this op's (pair, row, offset)
// counters; a different key makes this op's stream independent of theirs.
constexpr uint64_t kStreamKeySalt = 0x9E3779B97F4A7C15ull;

// The CPU's key; -inf marks the columns that cannot be drawn (no random
// numbers are spent on them).
__device__ __forceinline__ double draw_key(uint64_t seed, uint64_t offset, int64_t row, int64_t col, double w,
                                           const KeyScale& scale) {
  if (!(w > 0.0) || w == INFINITY) return -INFINITY;
  return sampling_key(seed ^ kStreamKeySalt, offset, row, col, w, scale);
}

// The largest of the block's values; blockDim.x is a power of two and
// `scratch` has room for blockDim.x doubles of shared memory. Every thread
// gets the result, and may overwrite `scratch` after the call.
__device__ double block_max(double value, double* scratch) {
  scratch[threadIdx.x] = value;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) scratch[threadIdx.x] = fmax(scratch[threadIdx.x], scratch[threadIdx.x + stride]);
    __syncthreads();
  }
  const double result = scratch[0];
  __syncthreads();
  return result;
}

// The key scale of a row, from its largest weight bound as on the CPU (NaN
// is skipped: it is reported as an invalid weight).
template <typename Weights>
__device__ KeyScale row_key_scale(const Weights& weights, int64_t row, int64_t num_cols, double* scratch) {
  if (!weights.needs_key_scale()) return KeyScale{};  // the same for every thread: no divergent barrier
  double largest_order = -INFINITY;
  for (int64_t c = threadIdx.x; c < num_cols; c += blockDim.x) {
    const double order = weights.bound_order(row, c);
    if (order > largest_order) largest_order = order;
  }
  return key_scale(weights.largest_bound(block_max(largest_order, scratch)));
}

template <typename Weights>
__global__ void sample_rows_kernel(Weights weights, int64_t num_rows, int num_cols, int64_t k, bool sorted,
                                   at::PhiloxCudaState state, int64_t first_row, int64_t* out, int* saw_invalid) {
  __shared__ double keys[kMaxSortCols];
  __shared__ int cols[kMaxSortCols];
  __shared__ int num_drawable;
  const auto [seed, offset] = at::cuda::philox::unpack(state);
  const int padded = next_pow2(num_cols);
  for (int64_t row = blockIdx.x; row < num_rows; row += gridDim.x) {
    // keys serves as the reduction's scratch: blockDim.x <= kMaxThreads <= kMaxSortCols
    const KeyScale scale = row_key_scale(weights, row, num_cols, keys);
    bool invalid = false;
    // Padding sorts after every real column: key -inf, column >= num_cols.
    for (int c = threadIdx.x; c < padded; c += blockDim.x) {
      double key = -INFINITY;
      if (c < num_cols) {
        const double w = weights(row, c);
        invalid |= invalid_weight(w);
        key = draw_key(seed, offset, first_row + row, c, w, scale);
      }
      keys[c] = key;
      cols[c] = c;
    }
    if (invalid) *saw_invalid = 1;
    if (threadIdx.x == 0) num_drawable = 0;
    __syncthreads();
    bitonic_sort(
        padded,
        [&](int a, int b) { return keys[a] > keys[b] || (keys[a] == keys[b] && cols[a] < cols[b]); },
        [&](int a, int b) { swap_entries(a, b, keys, cols); });
    // The drawable entries (key > -inf) now form a prefix; one thread sees its end.
    for (int c = threadIdx.x; c < padded; c += blockDim.x) {
      if (keys[c] > -INFINITY && (c + 1 == padded || keys[c + 1] == -INFINITY)) num_drawable = c + 1;
    }
    __syncthreads();
    const int taken = static_cast<int>(std::min<int64_t>(k, num_drawable));
    if (sorted && taken > 1) {
      const int taken_padded = next_pow2(taken);
      for (int c = taken + threadIdx.x; c < taken_padded; c += blockDim.x) cols[c] = INT_MAX;
      __syncthreads();
      bitonic_sort(
          taken_padded, [&](int a, int b) { return cols[a] < cols[b]; },
          [&](int a, int b) { swap_entries(a, b, cols); });
    }
    int64_t* row_out = out + row * k;
    for (int64_t j = threadIdx.x; j < k; j += blockDim.x) row_out[j] = j < taken ? cols[j] : -1;
    __syncthreads();  // the shared arrays are reused by the block's next row
  }
}

// The key scale of every row, a block per row.
template <typename Weights>
__global__ void __launch_bounds__(kScaleThreads)
    key_scales_kernel(Weights weights, int64_t num_rows, int64_t num_cols, KeyScale* scales) {
  __shared__ double scratch[kScaleThreads];
  for (int64_t row = blockIdx.x; row < num_rows; row += gridDim.x) {
    const KeyScale scale = row_key_scale(weights, row, num_cols, scratch);
    if (threadIdx.x == 0) scales[row] = scale;
  }
}

// Writes the key of every cell to `keys` ([B, C] contiguous) with its row's
// scale from `scales`, or only checks the weights when keys is nullptr.
template <typename Weights>
__global__ void sampling_keys_kernel(Weights weights, int64_t num_rows, int64_t num_cols,
                                     at::PhiloxCudaState state, int64_t first_row, const KeyScale* scales,
                                     double* keys, int* saw_invalid) {
  const auto [seed, offset] = at::cuda::philox::unpack(state);
  bool invalid = false;
  const int64_t total = num_rows * num_cols;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / num_cols, col = i - row * num_cols;
    const double w = weights(row, col);
    invalid |= invalid_weight(w);
    if (keys != nullptr) keys[i] = draw_key(seed, offset, first_row + row, col, w, scales[row]);
  }
  if (invalid) *saw_invalid = 1;
}

// The default generator is the one of the current device, which the caller's
// CUDAGuard has set to the inputs' device.
at::PhiloxCudaState draw_state(const std::optional<at::Generator>& generator, const at::Device& device) {
  check_generator_device(generator, device);
  auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(generator,
                                                                  at::cuda::detail::getDefaultCUDAGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  return gen->philox_cuda_state(4);
}

template <typename Weights>
at::Tensor sample_rows(const Weights& weights, int64_t num_rows, int64_t num_cols, int64_t k, bool sorted,
                       const at::PhiloxCudaState& state, int64_t first_row, const at::TensorOptions& options) {
  at::Tensor out = at::empty({num_rows, k}, options.dtype(at::kLong));
  if (num_rows == 0 || num_cols == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor saw_invalid = at::zeros({}, options.dtype(at::kInt));
  int* invalid_flag = saw_invalid.mutable_data_ptr<int>();
  const auto blocks_for_cells =
      static_cast<unsigned int>(std::min<int64_t>((num_rows * num_cols + 255) / 256, kMaxCellBlocks));
  if (k == 0) {
    // Nothing to draw, but invalid weights are reported as on the CPU.
    sampling_keys_kernel<<<blocks_for_cells, 256, 0, stream>>>(weights, num_rows, num_cols, state, first_row,
                                                               nullptr, nullptr, invalid_flag);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else if (num_cols <= kMaxSortCols) {
    const int threads = std::clamp(next_pow2(static_cast<int>(num_cols)) / 2, 32, kMaxThreads);
    sample_rows_kernel<<<static_cast<unsigned int>(std::min(num_rows, kMaxRowBlocks)), threads, 0, stream>>>(
        weights, num_rows, static_cast<int>(num_cols), k, sorted, state, first_row,
        out.mutable_data_ptr<int64_t>(), invalid_flag);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    static_assert(sizeof(KeyScale) == 2 * sizeof(double), "a row's KeyScale is two doubles");
    at::Tensor scales = at::empty({num_rows, 2}, options.dtype(at::kDouble));
    auto* scale_data = reinterpret_cast<KeyScale*>(scales.mutable_data_ptr<double>());
    key_scales_kernel<<<static_cast<unsigned int>(std::min(num_rows, kMaxRowBlocks)), kScaleThreads, 0, stream>>>(
        weights, num_rows, num_cols, scale_data);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    at::Tensor keys = at::empty({num_rows, num_cols}, options.dtype(at::kDouble));
    sampling_keys_kernel<<<blocks_for_cells, 256, 0, stream>>>(weights, num_rows, num_cols, state, first_row,
                                                               scale_data, keys.mutable_data_ptr<double>(),
                                                               invalid_flag);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const auto [top_keys, top_cols] = at::topk(keys, k, /*dim=*/1, /*largest=*/true, /*sorted=*/true);
    const at::Tensor undrawn = at::isneginf(top_keys);
    if (sorted) {
      // Padding as column C sorts last; then it becomes -1.
      const at::Tensor by_column = std::get<0>(at::sort(top_cols.masked_fill(undrawn, num_cols), /*dim=*/1));
      out.copy_(by_column.masked_fill(by_column.eq(num_cols), -1));
    } else {
      out.copy_(top_cols.masked_fill(undrawn, -1));
    }
  }
  TORCH_CHECK_VALUE(saw_invalid.item<int>() == 0, "sampling weights must be finite and non-negative (found a ",
                    "negative, infinite or NaN weight)");
  return out;
}

at::Tensor weighted_sample_cuda(const at::Tensor& weights, int64_t k, bool sorted,
                                const std::optional<at::Generator>& generator, int64_t first_row) {
  check_weighted_sample_inputs(weights, k, first_row);
  const c10::cuda::CUDAGuard device_guard(weights.device());
  const at::Tensor w = weights.contiguous();
  const at::PhiloxCudaState state = draw_state(generator, w.device());
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "weighted_sample_cuda", [&] {
    out = sample_rows(TensorWeights<scalar_t>{w.const_data_ptr<scalar_t>(), w.size(1)}, w.size(0), w.size(1), k,
                      sorted, state, first_row, w.options());
  });
  return out;
}

at::Tensor discrepancy_sample_cuda(const at::Tensor& student_rank, const at::Tensor& teacher_rank, int64_t k,
                                   double mu, bool under, bool sorted,
                                   const std::optional<at::Generator>& generator, int64_t first_row) {
  check_discrepancy_sample_inputs(student_rank, teacher_rank, k, mu, first_row);
  const c10::cuda::CUDAGuard device_guard(student_rank.device());
  const at::Tensor student = student_rank.contiguous();
  const auto [teacher, teacher_row_stride] = teacher_rows(teacher_rank);
  const at::PhiloxCudaState state = draw_state(generator, student.device());
  at::Tensor out;
  AT_DISPATCH_V2(
      student.scalar_type(), "discrepancy_sample_cuda", AT_WRAP([&] {
        const DiscrepancyWeights<scalar_t> weights{student.const_data_ptr<scalar_t>(),
                                                   teacher.const_data_ptr<scalar_t>(), student.size(1), mu, under,
                                                   teacher_row_stride};
        out = sample_rows(weights, student.size(0), student.size(1), k, sorted, state, first_row,
                          student.options());
      }),
      AT_EXPAND(AT_FLOATING_TYPES), at::kLong, at::kInt);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(rankdistill, CUDA, m) {
  m.impl("weighted_sample", &weighted_sample_cuda);
  m.impl("discrepancy_sample", &discrepancy_sample_cuda);
}

}  // namespace rankdistill
