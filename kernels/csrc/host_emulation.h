// Runs the CUDA kernels of seg_head.cu on the CPU, for checking their logic where there is
// no GPU. Compile seg_head.cu as C++ with -DCLIPPY_RT_HOST_EMULATION (the CUDA headers give
// the half types and dim3 to host code): every block runs in turn, each of its threads as a
// std::thread, __syncthreads() is a std::barrier, __shared__ variables are statics (one
// block at a time uses them), and a thread that returns drops out of the barrier as an
// exited CUDA thread does. Pointers passed to the entry points are host pointers.
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

#define CLIPPY_LAUNCH(kernel, grid, block, stream, ...) \
    ::clippy_emulation::launch((grid), (block), [&] { kernel(__VA_ARGS__); })

// Launch errors do not exist here.
inline std::string clippy_launch_error() { return std::string(); }

#endif  // CLIPPY_RT_HOST_EMULATION_H
