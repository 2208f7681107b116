#pragma once
// What the CPU and CUDA kernels of dot_lists share: the input checks and the
// dot product of two table rows. The op scores lists of pairs of a
// dot-product model, out[b, m] = <row_table[rows[b]], col_table[cols[b, m]]>,
// and its backward scatters the gradient straight into the two tables'
// gradients: the composite form (gather [B, M, d] rows, multiply, sum; in the
// backward two zero-filled tables, index_add and the products' gradients)
// spends far more on dispatch and memory traffic than on the B * M * d
// multiplications themselves when d is small, as in a student.
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>

#include <utility>

#include "../common/accumulate.h"
#include "../common/checks.h"
#include "../common/macros.h"

namespace rankdistill {

// Eight partial sums combined in a fixed order: the compiler vectorises the
// loop without reassociating anything, and a pair's score is the same
// wherever it is computed (whatever the other pairs of the call).
template <typename scalar_t, typename acc_t>
RD_HOST_DEVICE acc_t table_row_dot(const scalar_t* a, const scalar_t* b, int64_t dim) {
  acc_t partial[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 8 <= dim; k += 8) {
    for (int j = 0; j < 8; ++j) partial[j] += static_cast<acc_t>(a[k + j]) * static_cast<acc_t>(b[k + j]);
  }
  acc_t rest = 0;
  for (; k < dim; ++k) rest += static_cast<acc_t>(a[k]) * static_cast<acc_t>(b[k]);
  return ((partial[0] + partial[4]) + (partial[1] + partial[5])) +
         ((partial[2] + partial[6]) + (partial[3] + partial[7])) + rest;
}

inline void check_dot_lists_inputs(const at::Tensor& row_table, const at::Tensor& rows, const at::Tensor& col_table,
                                   const at::Tensor& cols) {
  check_dim(row_table, 2, "row_table");
  check_dim(col_table, 2, "col_table");
  check_floating(row_table, "row_table");
  TORCH_CHECK_TYPE(col_table.scalar_type() == row_table.scalar_type(), "col_table must have the dtype of row_table (",
                   row_table.scalar_type(), "), got ", col_table.scalar_type());
  check_same_device(col_table, row_table, "col_table", "row_table");
  TORCH_CHECK_VALUE(col_table.size(1) == row_table.size(1),
                    "row_table and col_table must have the same dimension, got ", row_table.size(1), " and ",
                    col_table.size(1));
  check_dim(rows, 1, "rows");
  check_dim(cols, 2, "cols");
  check_dtype(rows, at::kLong, "rows");
  check_dtype(cols, at::kLong, "cols");
  check_same_device(rows, row_table, "rows", "row_table");
  check_same_device(cols, row_table, "cols", "row_table");
  TORCH_CHECK_VALUE(cols.size(0) == rows.size(0), "cols must have one row per entry of rows (", rows.size(0),
                    "), got ", cols.size(0));
  check_index_range(rows, row_table.size(0), "rows", "the rows of row_table");
  check_index_range(cols, col_table.size(0), "cols", "the rows of col_table");
}

inline void check_dot_lists_backward_inputs(const at::Tensor& grad, const at::Tensor& row_table,
                                            const at::Tensor& rows, const at::Tensor& col_table,
                                            const at::Tensor& cols) {
  check_dot_lists_inputs(row_table, rows, col_table, cols);
  check_same_device(grad, row_table, "grad", "row_table");
  TORCH_CHECK_TYPE(grad.scalar_type() == row_table.scalar_type(), "grad must have the dtype of the tables (",
                   row_table.scalar_type(), "), got ", grad.scalar_type());
  TORCH_CHECK_VALUE(grad.sizes() == cols.sizes(), "grad must have the shape of cols ", cols.sizes(), ", got ",
                    grad.sizes());
}

// A call's inputs, checked (with the gradient for the backward), then made
// contiguous for the kernels.
struct DotListsInputs {
  at::Tensor row_table, rows, col_table, cols;
  int64_t num_lists, width, dim;

  DotListsInputs(const at::Tensor& row_table_in, const at::Tensor& rows_in, const at::Tensor& col_table_in,
                 const at::Tensor& cols_in, const at::Tensor* grad = nullptr) {
    if (grad == nullptr) {
      check_dot_lists_inputs(row_table_in, rows_in, col_table_in, cols_in);
    } else {
      check_dot_lists_backward_inputs(*grad, row_table_in, rows_in, col_table_in, cols_in);
    }
    row_table = row_table_in.contiguous();
    rows = rows_in.contiguous();
    col_table = col_table_in.contiguous();
    cols = cols_in.contiguous();
    num_lists = cols.size(0);
    width = cols.size(1);
    dim = row_table.size(1);
  }

  // The backward's two gradients, zero, in the accumulation type (the sums
  // build up there; the caller casts them to the tables' dtype).
  std::pair<at::Tensor, at::Tensor> zero_gradients() const {
    const auto options = row_table.options().dtype(accumulate_dtype(row_table.scalar_type()));
    return {at::zeros(row_table.sizes(), options), at::zeros(col_table.sizes(), options)};
  }
};

}  // namespace rankdistill
