// resnet_fast::add_relu / add_relu_ on CUDA: a memory-bound elementwise kernel, so the whole game is
// bytes per instruction. 16-byte vector loads and stores (4 floats, 8 halves/bfloat16s), fp32 math,
// a grid-stride loop sized to fill the GPU once, a scalar tail, 64-bit indices throughout.

#include "../add_relu.h"

#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace resnet_fast {
namespace {

constexpr int kThreads = 256;

template <typename T>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / sizeof(T);
  T v[kSize];
};

// torch builds with __CUDA_NO_HALF_CONVERSIONS__ (and the bfloat16 twin): convert explicitly.
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

template <typename T>
__device__ __forceinline__ T add_relu_one(T a, T b) {
  const float s = to_float(a) + to_float(b);
  // fmaxf would turn NaN into 0; torch's relu keeps NaN.
  return from_float<T>(s < 0.f ? 0.f : s);
}

// fp64 stays fp64 end to end.
template <>
__device__ __forceinline__ double add_relu_one<double>(double a, double b) {
  const double s = a + b;
  return s < 0.0 ? 0.0 : s;
}

// No __restrict__: the in-place op passes out == a (x += identity), and a restrict-qualified alias
// lets the compiler read through the non-coherent cache (ld.global.nc) memory this kernel writes.
template <typename T>
__global__ void add_relu_vec_kernel(T* out, const T* a, const T* b, int64_t n) {
  using P = Pack<T>;
  const int64_t n_packs = n / P::kSize;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const P* pa = reinterpret_cast<const P*>(a);
  const P* pb = reinterpret_cast<const P*>(b);
  P* po = reinterpret_cast<P*>(out);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n_packs; i += stride) {
    const P x = pa[i];
    const P y = pb[i];
    P r;
#pragma unroll
    for (int k = 0; k < P::kSize; ++k) r.v[k] = add_relu_one(x.v[k], y.v[k]);
    po[i] = r;
  }
  // Scalar tail: at most kSize - 1 elements, handled by the first threads of the grid.
  const int64_t tail = n_packs * P::kSize + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (tail < n) out[tail] = add_relu_one(a[tail], b[tail]);
}

template <typename T>
__global__ void add_relu_scalar_kernel(T* out, const T* a, const T* b, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    out[i] = add_relu_one(a[i], b[i]);
  }
}

int multiprocessor_count() {
  constexpr int kMaxDevices = 64;
  static int cached[kMaxDevices] = {0};
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  if (device >= kMaxDevices) device = kMaxDevices - 1;
  if (cached[device] == 0) {
    int count = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    cached[device] = count;
  }
  return cached[device];
}

template <typename T>
void launch_typed(T* out, const T* a, const T* b, int64_t n) {
  if (n == 0) return;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int sm_count = multiprocessor_count();
  const bool aligned = (reinterpret_cast<uintptr_t>(out) | reinterpret_cast<uintptr_t>(a) |
                        reinterpret_cast<uintptr_t>(b)) % 16 == 0;
  const int64_t work = aligned ? (n + Pack<T>::kSize - 1) / Pack<T>::kSize : n;
  // Enough blocks for ~8 resident per SM; the grid-stride loop covers the rest.
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>((work + kThreads - 1) / kThreads, sm_count * 8LL));
  if (aligned) {
    add_relu_vec_kernel<T><<<blocks, kThreads, 0, stream>>>(out, a, b, n);
  } else {
    add_relu_scalar_kernel<T><<<blocks, kThreads, 0, stream>>>(out, a, b, n);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_flat(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  const int64_t n = out.numel();
  switch (out.scalar_type()) {
    case at::kFloat:
      launch_typed(out.data_ptr<float>(), a.const_data_ptr<float>(), b.const_data_ptr<float>(), n);
      break;
    case at::kDouble:
      launch_typed(out.data_ptr<double>(), a.const_data_ptr<double>(), b.const_data_ptr<double>(), n);
      break;
    case at::kHalf:
      launch_typed(reinterpret_cast<__half*>(out.data_ptr<at::Half>()),
                   reinterpret_cast<const __half*>(a.const_data_ptr<at::Half>()),
                   reinterpret_cast<const __half*>(b.const_data_ptr<at::Half>()), n);
      break;
    case at::kBFloat16:
      launch_typed(reinterpret_cast<__nv_bfloat16*>(out.data_ptr<at::BFloat16>()),
                   reinterpret_cast<const __nv_bfloat16*>(a.const_data_ptr<at::BFloat16>()),
                   reinterpret_cast<const __nv_bfloat16*>(b.const_data_ptr<at::BFloat16>()), n);
      break;
    default:
      TORCH_CHECK(false, "resnet_fast::add_relu: unsupported dtype ", out.scalar_type(),
                  " on CUDA (expected float32, float64, float16 or bfloat16)");
  }
}

// The checks run before the device guard, so that a CPU tensor mixed in gets the op's own message.
at::Tensor add_relu_cuda(const at::Tensor& self, const at::Tensor& other) {
  check_add_relu_inputs(self, other, "resnet_fast::add_relu");
  const c10::cuda::CUDAGuard guard(self.device());
  return add_relu_out_of_place(self, other, &launch_flat);
}

at::Tensor& add_relu_inplace_cuda(at::Tensor& self, const at::Tensor& other) {
  check_add_relu_inputs(self, other, "resnet_fast::add_relu_");
  const c10::cuda::CUDAGuard guard(self.device());
  return add_relu_in_place(self, other, &launch_flat);
}

}  // namespace

TORCH_LIBRARY_IMPL(resnet_fast, CUDA, m) {
  m.impl("add_relu", &add_relu_cuda);
  m.impl("add_relu_", &add_relu_inplace_cuda);
}

}  // namespace resnet_fast
