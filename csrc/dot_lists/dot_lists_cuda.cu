// dot_lists on CUDA: one thread per pair. The forward runs the shared
// table_row_dot; the backward adds each pair's two products into the tables'
// gradients with atomics in the accumulation type (float or double), so, as
// with index_add on CUDA, the order of those additions (and the last bits of
// the gradients) may vary from run to run: under
// torch.use_deterministic_algorithms(True) it raises, as PyTorch's own such ops do.
#include <ATen/AccumulateType.h>
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "dot_lists.h"

namespace rankdistill {
namespace {

constexpr int kThreads = 256;

unsigned int pair_blocks(int64_t num_pairs) { return static_cast<unsigned int>((num_pairs + kThreads - 1) / kThreads); }

template <typename scalar_t, typename acc_t>
__global__ void dot_lists_kernel(const scalar_t* row_table, const int64_t* rows, const scalar_t* col_table,
                                 const int64_t* cols, int64_t num_pairs, int64_t width, int64_t dim,
                                 scalar_t* out) {
  const int64_t pair = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (pair >= num_pairs) return;
  out[pair] = static_cast<scalar_t>(
      table_row_dot<scalar_t, acc_t>(row_table + rows[pair / width] * dim, col_table + cols[pair] * dim, dim));
}

template <typename scalar_t, typename acc_t>
__global__ void dot_lists_backward_kernel(const scalar_t* grad, const scalar_t* row_table, const int64_t* rows,
                                          const scalar_t* col_table, const int64_t* cols, int64_t num_pairs,
                                          int64_t width, int64_t dim, acc_t* grad_rows, acc_t* grad_cols) {
  const int64_t pair = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (pair >= num_pairs) return;
  const acc_t g = static_cast<acc_t>(grad[pair]);
  const int64_t row = rows[pair / width], col = cols[pair];
  for (int64_t k = 0; k < dim; ++k) {
    atomicAdd(grad_rows + row * dim + k, g * static_cast<acc_t>(col_table[col * dim + k]));
    atomicAdd(grad_cols + col * dim + k, g * static_cast<acc_t>(row_table[row * dim + k]));
  }
}

at::Tensor dot_lists_cuda(const at::Tensor& row_table, const at::Tensor& rows, const at::Tensor& col_table,
                          const at::Tensor& cols) {
  const DotListsInputs in(row_table, rows, col_table, cols);
  const c10::cuda::CUDAGuard device_guard(row_table.device());
  at::Tensor out = at::empty({in.num_lists, in.width}, row_table.options());
  const int64_t num_pairs = out.numel();
  if (num_pairs == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, row_table.scalar_type(), "dot_lists_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
    dot_lists_kernel<scalar_t, acc_t><<<pair_blocks(num_pairs), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        in.row_table.const_data_ptr<scalar_t>(), in.rows.const_data_ptr<int64_t>(),
        in.col_table.const_data_ptr<scalar_t>(), in.cols.const_data_ptr<int64_t>(), num_pairs, in.width, in.dim,
        out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> dot_lists_backward_cuda(const at::Tensor& grad, const at::Tensor& row_table,
                                                           const at::Tensor& rows, const at::Tensor& col_table,
                                                           const at::Tensor& cols) {
  const DotListsInputs in(row_table, rows, col_table, cols, &grad);
  at::globalContext().alertNotDeterministic("rankdistill::dot_lists_backward (CUDA: atomic additions)");
  const c10::cuda::CUDAGuard device_guard(row_table.device());
  const at::Tensor grad_values = grad.contiguous();
  auto [grad_rows, grad_cols] = in.zero_gradients();
  const int64_t num_pairs = grad.numel();
  if (num_pairs > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, row_table.scalar_type(), "dot_lists_backward_cuda", [&] {
      using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
      dot_lists_backward_kernel<scalar_t, acc_t>
          <<<pair_blocks(num_pairs), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
              grad_values.const_data_ptr<scalar_t>(), in.row_table.const_data_ptr<scalar_t>(),
              in.rows.const_data_ptr<int64_t>(), in.col_table.const_data_ptr<scalar_t>(),
              in.cols.const_data_ptr<int64_t>(), num_pairs, in.width, in.dim, grad_rows.mutable_data_ptr<acc_t>(),
              grad_cols.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {grad_rows.to(row_table.scalar_type()), grad_cols.to(row_table.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(rankdistill, CUDA, m) {
  m.impl("dot_lists", &dot_lists_cuda);
  m.impl("dot_lists_backward", &dot_lists_backward_cuda);
}

}  // namespace rankdistill
