// The one place where the schemas of rankdistill's ops are defined.
// Kernels are registered per dispatch key next to their implementation
// (csrc/<op>/<op>_cpu.cpp, csrc/<op>/<op>_cuda.cu); fake (meta) kernels and
// autograd are registered from Python (rankdistill/ops.py).
#include <Python.h>

#include <ATen/core/Tensor.h>
#include <torch/library.h>
#include <torch/version.h>

// What this build was compiled against: setup.py defines the torch version
// (torch.__version__, e.g. "2.14.1+cu130") and the CUDA version of the CUDA
// kernels ("none" for a CPU-only build). The C++ ABI of custom ops is not
// stable across torch releases, so rankdistill/_build.py reads this line from
// the file itself before loading it (under another torch, loading can already
// fail on a missing symbol) and refuses a build made for another torch.
#ifndef RANKDISTILL_TORCH_VERSION
#define RANKDISTILL_TORCH_VERSION TORCH_VERSION  // compiled without setup.py: the release only
#endif
#ifndef RANKDISTILL_CUDA_VERSION
#define RANKDISTILL_CUDA_VERSION "unknown"
#endif
static const char kBuildInfo[] =
    "rankdistill-build-info torch=" RANKDISTILL_TORCH_VERSION " cuda=" RANKDISTILL_CUDA_VERSION "\n";

// `import rankdistill._C` loads this shared library, which runs the
// TORCH_LIBRARY static initialisers below; `rankdistill._C.build_info` is the
// line above.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module != nullptr && PyModule_AddStringConstant(module, "build_info", kBuildInfo) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}

TORCH_LIBRARY(rankdistill, m) {
  m.def(
      "rank_positions(Tensor scores, Tensor? targets, Tensor? exclude_indptr, "
      "Tensor? exclude_indices) -> Tensor");
  // rank_positions(row_embeddings @ col_embeddings.T, targets, ...) without the score matrix.
  m.def(
      "dot_rank_positions(Tensor row_embeddings, Tensor col_embeddings, Tensor targets, "
      "Tensor? exclude_indptr, Tensor? exclude_indices) -> Tensor");
  // Each row's k best columns of row_embeddings @ col_embeddings.T, without the score matrix.
  m.def(
      "dot_top_columns(Tensor row_embeddings, Tensor col_embeddings, int k, "
      "Tensor? exclude_indptr, Tensor? exclude_indices) -> Tensor");
  // Scores of lists of pairs of a dot-product model:
  // out[b, m] = <row_table[rows[b]], col_table[cols[b, m]]>; the backward
  // returns the two tables' (dense) gradients.
  m.def("dot_lists(Tensor row_table, Tensor rows, Tensor col_table, Tensor cols) -> Tensor");
  m.def(
      "dot_lists_backward(Tensor grad, Tensor row_table, Tensor rows, Tensor col_table, "
      "Tensor cols) -> (Tensor, Tensor)");
  m.def(
      "weighted_sample(Tensor weights, int k, bool sorted, Generator? generator, int first_row=0) -> Tensor",
      {at::Tag::nondeterministic_seeded});
  m.def(
      "discrepancy_sample(Tensor student_rank, Tensor teacher_rank, int k, float mu, "
      "bool under, bool sorted, Generator? generator, int first_row=0) -> Tensor",
      {at::Tag::nondeterministic_seeded});
  // Returns the per-row loss and the per-entry denominators D_k, which the
  // backward reads instead of recomputing.
  m.def(
      "relaxed_listmle(Tensor ranked, Tensor tail, Tensor? ranked_mask, "
      "Tensor? tail_mask) -> (Tensor, Tensor)");
  m.def(
      "relaxed_listmle_backward(Tensor grad_loss, Tensor ranked, Tensor tail, "
      "Tensor? ranked_mask, Tensor? tail_mask, Tensor denominators) -> (Tensor, Tensor)");
}
