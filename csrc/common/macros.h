#pragma once

// Functions marked RD_HOST_DEVICE are shared, letter for letter, by the CPU
// and the CUDA kernels, so both backends compute the same thing.
#if defined(__CUDACC__)
#define RD_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define RD_HOST_DEVICE inline
#endif
