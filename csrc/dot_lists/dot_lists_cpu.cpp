// dot_lists on the CPU. The forward is parallel over the lists; the backward
// is one serial pass, since any two pairs may add to the same table row, and
// its B * M * d multiply-adds take microseconds at a student's d.
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "dot_lists.h"

namespace rankdistill {
namespace {

constexpr int64_t kPairGrain = 4096;  // pairs per task of the forward (whole lists), at least

at::Tensor dot_lists_cpu(const at::Tensor& row_table, const at::Tensor& rows, const at::Tensor& col_table,
                         const at::Tensor& cols) {
  const DotListsInputs in(row_table, rows, col_table, cols);
  const int64_t width = in.width, dim = in.dim;
  at::Tensor out = at::empty({in.num_lists, width}, row_table.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, row_table.scalar_type(), "dot_lists_cpu", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
    const scalar_t* row_data = in.row_table.const_data_ptr<scalar_t>();
    const scalar_t* col_data = in.col_table.const_data_ptr<scalar_t>();
    const int64_t* row_id = in.rows.const_data_ptr<int64_t>();
    const int64_t* col_id = in.cols.const_data_ptr<int64_t>();
    scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, in.num_lists, std::max<int64_t>(1, kPairGrain / width), [&](int64_t begin, int64_t end) {
      for (int64_t list = begin; list < end; ++list) {
        const scalar_t* row = row_data + row_id[list] * dim;
        for (int64_t m = list * width; m < (list + 1) * width; ++m) {
          out_data[m] = static_cast<scalar_t>(table_row_dot<scalar_t, acc_t>(row, col_data + col_id[m] * dim, dim));
        }
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> dot_lists_backward_cpu(const at::Tensor& grad, const at::Tensor& row_table,
                                                          const at::Tensor& rows, const at::Tensor& col_table,
                                                          const at::Tensor& cols) {
  const DotListsInputs in(row_table, rows, col_table, cols, &grad);
  const at::Tensor grad_values = grad.contiguous();
  const int64_t width = in.width, dim = in.dim;
  auto [grad_rows, grad_cols] = in.zero_gradients();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, row_table.scalar_type(), "dot_lists_backward_cpu", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/true>;
    const scalar_t* row_data = in.row_table.const_data_ptr<scalar_t>();
    const scalar_t* col_data = in.col_table.const_data_ptr<scalar_t>();
    const scalar_t* grad_data = grad_values.const_data_ptr<scalar_t>();
    const int64_t* row_id = in.rows.const_data_ptr<int64_t>();
    const int64_t* col_id = in.cols.const_data_ptr<int64_t>();
    acc_t* grad_row_data = grad_rows.mutable_data_ptr<acc_t>();
    acc_t* grad_col_data = grad_cols.mutable_data_ptr<acc_t>();
    std::vector<acc_t> row(dim), row_sum(dim);
    for (int64_t list = 0; list < in.num_lists; ++list) {
      const scalar_t* row_in = row_data + row_id[list] * dim;
      for (int64_t k = 0; k < dim; ++k) {
        row[k] = static_cast<acc_t>(row_in[k]);
        row_sum[k] = 0;
      }
      for (int64_t m = list * width; m < (list + 1) * width; ++m) {
        const acc_t g = static_cast<acc_t>(grad_data[m]);
        const scalar_t* col_in = col_data + col_id[m] * dim;
        acc_t* grad_col = grad_col_data + col_id[m] * dim;
        for (int64_t k = 0; k < dim; ++k) {
          row_sum[k] += g * static_cast<acc_t>(col_in[k]);
          grad_col[k] += g * row[k];
        }
      }
      acc_t* grad_row = grad_row_data + row_id[list] * dim;
      for (int64_t k = 0; k < dim; ++k) grad_row[k] += row_sum[k];
    }
  });
  return {grad_rows.to(row_table.scalar_type()), grad_cols.to(row_table.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(rankdistill, CPU, m) {
  m.impl("dot_lists", &dot_lists_cpu);
  m.impl("dot_lists_backward", &dot_lists_backward_cpu);
}

}  // namespace rankdistill
