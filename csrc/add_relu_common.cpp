#include "add_relu.h"

#include <ATen/MemoryOverlap.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>

namespace resnet_fast {

void check_add_relu_inputs(const at::Tensor& self, const at::Tensor& other, const char* op) {
  TORCH_CHECK(self.sizes().equals(other.sizes()), op, ": shape mismatch, self is ", self.sizes(),
              " but other is ", other.sizes());
  TORCH_CHECK(self.scalar_type() == other.scalar_type(), op, ": dtype mismatch, self is ",
              self.scalar_type(), " but other is ", other.scalar_type());
  TORCH_CHECK(self.device() == other.device(), op, ": device mismatch, self is on ", self.device(),
              " but other is on ", other.device());
  TORCH_CHECK(at::isFloatingType(self.scalar_type()), op,
              ": expected a floating-point dtype, got ", self.scalar_type());
}

void check_no_overlap(const at::Tensor& self, const at::Tensor& other) {
  TORCH_CHECK(at::has_internal_overlap(self) != at::MemOverlap::Yes,
              "resnet_fast::add_relu_: self has internally overlapping memory (an expanded view); "
              "it cannot be written in place");
  const auto status = at::get_overlap_status(self, other);
  TORCH_CHECK(status != at::MemOverlapStatus::Full && status != at::MemOverlapStatus::Partial,
              "resnet_fast::add_relu_: other overlaps self in memory; pass a separate tensor");
}

bool same_dense_layout(const at::Tensor& a, const at::Tensor& b) {
  return a.strides().equals(b.strides()) && a.is_non_overlapping_and_dense() &&
         b.is_non_overlapping_and_dense();
}

at::Tensor add_relu_out_of_place(const at::Tensor& self, const at::Tensor& other, FlatLaunch launch) {
  check_add_relu_inputs(self, other, "resnet_fast::add_relu");
  // empty_like keeps self's layout when self is dense (contiguous or channels_last).
  at::Tensor out = at::empty_like(self);
  const at::Tensor a = same_dense_layout(out, self) ? self : out.copy_(self);
  const at::Tensor b = same_dense_layout(out, other) ? other : at::empty_like(out).copy_(other);
  launch(out, a, b);
  return out;
}

at::Tensor& add_relu_in_place(at::Tensor& self, const at::Tensor& other, FlatLaunch launch) {
  check_add_relu_inputs(self, other, "resnet_fast::add_relu_");
  check_no_overlap(self, other);
  if (self.numel() == 0) return self;
  if (same_dense_layout(self, other)) {
    launch(self, self, other);
    return self;
  }
  // General path: a dense buffer in self's layout, then written back through self's strides.
  at::Tensor a = self.is_non_overlapping_and_dense() ? self : self.contiguous();
  at::Tensor b = at::empty_like(a).copy_(other);
  launch(a, a, b);
  if (!a.is_same(self)) self.copy_(a);
  return self;
}

}  // namespace resnet_fast
