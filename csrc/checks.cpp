#include "add_relu.h"

#include <ATen/MemoryOverlap.h>
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

}  // namespace resnet_fast
