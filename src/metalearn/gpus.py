"""Whether CUDA can run here, asked of the CUDA driver (libcuda) rather than of torch: the workflow
gives each training and evaluation job a GPU when there is one (workflow/rules/common.smk), and
importing torch only to learn that cost every Snakemake start seconds."""
from __future__ import annotations

import ctypes
from typing import Callable

DRIVER = "libcuda.so.1"
CUDA_SUCCESS = 0


def cuda_available(load: Callable[[str], object] = ctypes.CDLL) -> bool:
    """Whether the CUDA driver initialises and counts at least one device, as torch.cuda.is_available():
    cuInit(0), then cuDeviceGetCount. The driver applies CUDA_VISIBLE_DEVICES itself when it
    initialises, so the devices it hides are not counted (CUDA_VISIBLE_DEVICES="" or "-1": cuInit fails
    with CUDA_ERROR_NO_DEVICE). No driver library, a failed call or no device: False."""
    try:
        driver = load(DRIVER)
        if driver.cuInit(0) != CUDA_SUCCESS:
            return False
        count = ctypes.c_int(0)
        if driver.cuDeviceGetCount(ctypes.byref(count)) != CUDA_SUCCESS:
            return False
    except (OSError, AttributeError):  # no driver (no GPU, another system), or a library without these calls
        return False
    return count.value > 0
