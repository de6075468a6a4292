"""Tile scheduling and the ReLU shared by the conv kernels."""
import torch
import triton
import triton.language as tl

_SM_COUNTS = {}


def sm_count(device: torch.device) -> int:
    """The number of SMs of a CUDA device (cached), 0 for any other device."""
    if device.type != "cuda":
        return 0
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNTS:
        _SM_COUNTS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNTS[index]


@triton.jit
def grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(row tile, column tile) of program ``pid`` in grouped order: GROUP_M row tiles in a row
    share each weight column tile while it is still in L2."""
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pids_per_group = GROUP_M * num_pid_n
    first_m = (pid // pids_per_group) * GROUP_M
    group_rows = min(num_pid_m - first_m, GROUP_M)
    return first_m + (pid % pids_per_group) % group_rows, (pid % pids_per_group) // group_rows


@triton.jit
def relu_keep_nan(x):
    """max(x, 0) that keeps NaN, as torch.relu does: one max.NaN (FMNMX.NAN on sm_90) per element,
    where a plain max would turn NaN into 0 and the compare-and-select it replaces takes two."""
    return tl.maximum(x, 0.0, propagate_nan=tl.PropagateNan.ALL)
