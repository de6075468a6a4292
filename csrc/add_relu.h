// Shared by the CPU and CUDA kernels of resnet_fast::add_relu / add_relu_.
#pragma once

#include <ATen/core/Tensor.h>

namespace resnet_fast {

// Shape, dtype, device and floating-point checks with the op's name in the message.
void check_add_relu_inputs(const at::Tensor& self, const at::Tensor& other, const char* op);

// In-place op only: `other` must not share memory with `self`, and `self` must not alias itself.
void check_no_overlap(const at::Tensor& self, const at::Tensor& other);

// True when both tensors cover their storage densely with identical strides: the kernels may then
// walk both as flat arrays in storage order, whatever the layout (contiguous or channels_last).
bool same_dense_layout(const at::Tensor& a, const at::Tensor& b);

// A device kernel over three same-layout dense tensors of one dtype: out = relu(a + b), elementwise
// in storage order (out may be a).
using FlatLaunch = void (*)(at::Tensor& out, const at::Tensor& a, const at::Tensor& b);

// The ops around a device's flat kernel: checks, then the fast path when layouts already match,
// else dense copies in self's layout (mixed layouts, strided views). Shared by CPU and CUDA.
at::Tensor add_relu_out_of_place(const at::Tensor& self, const at::Tensor& other, FlatLaunch launch);
at::Tensor& add_relu_in_place(at::Tensor& self, const at::Tensor& other, FlatLaunch launch);

}  // namespace resnet_fast
