// resnet_fast::add_relu / add_relu_: schemas (defined once, here) and the CPU kernels.
//
// relu(self + other) is the residual join of a ResNet block. One pass reads both inputs and writes
// the result, instead of torch's add_ then relu_ (two passes over the output).

#include "add_relu.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <Python.h>
#include <torch/library.h>

namespace resnet_fast {
namespace {

template <typename scalar_t>
void add_relu_flat(scalar_t* out, const scalar_t* a, const scalar_t* b, int64_t n) {
  using Vec = at::vec::Vectorized<scalar_t>;
  // ~32k elements per task: big enough to amortise the thread hand-off, small enough to balance.
  at::parallel_for(0, n, 32768, [&](int64_t begin, int64_t end) {
    const Vec zero(scalar_t(0));
    int64_t i = begin;
    for (; i + Vec::size() <= end; i += Vec::size()) {
      // Reduced-precision Vectorized types do the add in fp32 and round once, as torch's add does.
      at::vec::maximum(Vec::loadu(a + i) + Vec::loadu(b + i), zero).store(out + i);
    }
    using opmath_t = at::opmath_type<scalar_t>;  // float for half/bfloat16, else the type itself
    for (; i < end; ++i) {
      const scalar_t sum = static_cast<scalar_t>(static_cast<opmath_t>(a[i]) + static_cast<opmath_t>(b[i]));
      out[i] = static_cast<opmath_t>(sum) < opmath_t(0) ? scalar_t(0) : sum;  // NaN passes through
    }
  });
}

void launch_flat(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "add_relu_cpu", [&] {
    add_relu_flat<scalar_t>(out.data_ptr<scalar_t>(), a.const_data_ptr<scalar_t>(),
                            b.const_data_ptr<scalar_t>(), out.numel());
  });
}

at::Tensor add_relu_cpu(const at::Tensor& self, const at::Tensor& other) {
  return add_relu_out_of_place(self, other, &launch_flat);
}

at::Tensor& add_relu_inplace_cpu(at::Tensor& self, const at::Tensor& other) {
  return add_relu_in_place(self, other, &launch_flat);
}

}  // namespace

TORCH_LIBRARY(resnet_fast, m) {
  m.def("add_relu(Tensor self, Tensor other) -> Tensor");
  m.def("add_relu_(Tensor(a!) self, Tensor other) -> Tensor(a!)");
}

TORCH_LIBRARY_IMPL(resnet_fast, CPU, m) {
  m.impl("add_relu", &add_relu_cpu);
  m.impl("add_relu_", &add_relu_inplace_cpu);
}

}  // namespace resnet_fast

// A plain CPython module so that `from resnet_fast import _C` loads the library (and with it the
// registrations above); no Python bindings are needed: everything goes through torch.ops.
#ifndef RESNET_FAST_WITH_CUDA
#define RESNET_FAST_WITH_CUDA 0
#endif

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  if (module != nullptr) PyModule_AddIntConstant(module, "WITH_CUDA", RESNET_FAST_WITH_CUDA);
  return module;
}
