// Runs the CUDA kernels of seg_head.cu on the CPU, for checking their logic where there is
// no GPU. Compile seg_head.cu as C++ with -DCLIPPY_RT_HOST_EMULATION (the CUDA headers give
// the half types and dim3 to host code): every block runs in turn, each of its threads as a
// std::thread, __syncthreads() is a std::barrier, __shared__ variables are statics (one
// block at a time uses them), and a thread that returns drops out of the barrier as an
// exited CUDA thread does; nvcuda::wmma is emulated per warp-wide tile. Pointers passed to
// the entry points are host pointers.
#ifndef CLIPPY_RT_HOST_EMULATION_H
#define CLIPPY_RT_HOST_EMULATION_H

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <barrier>
#include <cmath>
#include <string>
#include <thread>
#include <vector>

#undef __shared__
#define __shared__ static

using std::max;
using std::min;

namespace clippy_emulation {

inline thread_local uint3 thread_index;
inline thread_local uint3 block_index;
inline dim3 block_dim;
inline dim3 grid_dim;
inline std::barrier<>* block_barrier = nullptr;

// Runs body() as every thread of every block of the grid.
template <typename Body>
void launch(dim3 grid, dim3 block, Body body) {
    grid_dim = grid;
    block_dim = block;
    const unsigned threads = block.x * block.y * block.z;
    for (unsigned bz = 0; bz < grid.z; ++bz) {
        for (unsigned by = 0; by < grid.y; ++by) {
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                std::barrier<> barrier(threads);
                block_barrier = &barrier;
                std::vector<std::thread> workers;
                workers.reserve(threads);
                for (unsigned t = 0; t < threads; ++t) {
                    workers.emplace_back([&, t] {
                        block_index = uint3{bx, by, bz};
                        thread_index = uint3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                        body();
                        block_barrier->arrive_and_drop();
                    });
                }
                for (auto& worker : workers) {
                    worker.join();
                }
            }
        }
    }
}

}  // namespace clippy_emulation

#define threadIdx (::clippy_emulation::thread_index)
#define blockIdx (::clippy_emulation::block_index)
#define blockDim (::clippy_emulation::block_dim)
#define gridDim (::clippy_emulation::grid_dim)

inline void __syncthreads() { clippy_emulation::block_barrier->arrive_and_wait(); }

// nvcuda::wmma for 16 x 16 x 16 tiles. Each emulated thread holds the whole tile and
// computes the warp's result itself; only lane 0 of the warp stores it.
namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
    float x[16 * 16];  // element (r, c) of the 16 x 16 tile at x[16 r + c]
};

inline float to_float_emulated(float value) { return value; }
inline float to_float_emulated(__half value) { return __half2float(value); }
inline float to_float_emulated(__nv_bfloat16 value) { return __bfloat162float(value); }

template <typename Use, typename T, typename Layout>
void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& f, float value) {
    std::fill(f.x, f.x + 256, value);
}

template <typename T>
void load_matrix_sync(fragment<matrix_a, 16, 16, 16, T, row_major>& f, const T* p, unsigned ldm) {
    for (int r = 0; r < 16; ++r)
        for (int c = 0; c < 16; ++c) f.x[16 * r + c] = to_float_emulated(p[r * ldm + c]);
}

template <typename T>
void load_matrix_sync(fragment<matrix_b, 16, 16, 16, T, col_major>& f, const T* p, unsigned ldm) {
    for (int r = 0; r < 16; ++r)
        for (int c = 0; c < 16; ++c) f.x[16 * r + c] = to_float_emulated(p[c * ldm + r]);
}

template <typename T>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, T, row_major>& a,
              const fragment<matrix_b, 16, 16, 16, T, col_major>& b,
              const fragment<accumulator, 16, 16, 16, float>& c) {
    float result[256];
    for (int r = 0; r < 16; ++r) {
        for (int col = 0; col < 16; ++col) {
            float sum = c.x[16 * r + col];
            for (int k = 0; k < 16; ++k) sum += a.x[16 * r + k] * b.x[16 * k + col];
            result[16 * r + col] = sum;
        }
    }
    std::copy(result, result + 256, d.x);
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm,
                              layout_t layout) {
    const unsigned lane = (::clippy_emulation::thread_index.x +
                           ::clippy_emulation::block_dim.x * (::clippy_emulation::thread_index.y +
                                                              ::clippy_emulation::block_dim.y *
                                                                  ::clippy_emulation::thread_index.z)) % 32;
    if (lane != 0) return;
    for (int r = 0; r < 16; ++r)
        for (int c = 0; c < 16; ++c)
            p[layout == mem_row_major ? r * ldm + c : c * ldm + r] = f.x[16 * r + c];
}

}  // namespace wmma
}  // namespace nvcuda

#define CLIPPY_LAUNCH(kernel, grid, block, stream, ...) \
    ::clippy_emulation::launch((grid), (block), [&] { kernel(__VA_ARGS__); })

// Launch errors do not exist here.
inline std::string clippy_launch_error() { return std::string(); }

#endif  // CLIPPY_RT_HOST_EMULATION_H
