// clippy_rt_native: the segmentation head in CUDA C++. Contract in seg_head.h; the same
// design as the Triton kernels (clippy_rt/kernels/seg_head.py, module docstring):
//
// 1. patch_logits_kernel: the float32 patch logits [B, h*w, K] (K contiguous), a
//    register-tiled matmul (64 x 64 outputs per block of 16 x 16 threads, 4 x 4 each);
//    patch_logits_mma_kernel: the same with tensor cores (WMMA) for float16 / bfloat16
//    operands of one dtype on sm_80 and newer.
// 2. axis_taps_kernel / row_begin_kernel: the per-axis taps (source index i0 and weight
//    l1 of every output row and column, F.interpolate's formula in float32 with every
//    operation rounded as torch's CPU code rounds it) and, for every source row i, the
//    first output row whose i0 >= i. The output rows with i0 == i are then
//    [row_begin[i], row_begin[i + 1]): a band that needs only source rows i and i + 1.
// 3. band_argmax_kernel: one block per (source row i, 32 output columns, image). For each
//    chunk of 32 prompts the block gathers source rows i and min(i + 1, h - 1) at its
//    columns' two neighbours and interpolates them along x once into shared memory
//    (top and bottom - top, [32 prompts][32 columns]); each thread then owns one column and
//    up to four rows of the band and blends them per row with one FMA, keeping a running max /
//    argmax (and the running sum of exponentials for softmax scores) in registers. A
//    patch-logit row is fetched once per band rather than once per output pixel, and
//    labels are written coalesced along x. [B, K, H, W] never exists.
//
// Built with -DCLIPPY_RT_HOST_EMULATION as plain C++ (host_emulation.h), the same kernels
// run on the CPU, block by block, for tests on machines without a GPU.

#include "seg_head.h"

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#ifdef CLIPPY_RT_HOST_EMULATION
#include "host_emulation.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>
#define CLIPPY_LAUNCH(kernel, grid, block, stream, ...) kernel<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__)
static std::string clippy_launch_error() {
    const cudaError_t error = cudaGetLastError();
    return error == cudaSuccess ? std::string() : std::string(cudaGetErrorString(error));
}
#endif

namespace {

thread_local std::string last_error;

int fail(int status, const std::string& message) {
    last_error = message;
    return status;
}

__device__ __forceinline__ float to_float(float value) { return value; }
__device__ __forceinline__ float to_float(__half value) { return __half2float(value); }
__device__ __forceinline__ float to_float(__nv_bfloat16 value) { return __bfloat162float(value); }

// Rounded float32 operations that the compiler may not fuse into an FMA: the taps must
// equal those of the torch reference bit for bit.
__device__ __forceinline__ float add_rn(float a, float b) {
#ifdef CLIPPY_RT_HOST_EMULATION
    volatile float sum = a + b;
    return sum;
#else
    return __fadd_rn(a, b);
#endif
}
__device__ __forceinline__ float mul_rn(float a, float b) {
#ifdef CLIPPY_RT_HOST_EMULATION
    volatile float product = a * b;
    return product;
#else
    return __fmul_rn(a, b);
#endif
}

constexpr int kTileM = 64;   // patch rows per matmul block
constexpr int kTileN = 64;   // prompts per matmul block
constexpr int kTileD = 16;   // feature channels per shared-memory step
constexpr int kTileX = 32;   // output columns per band block (one per thread in x)
constexpr int kThreadsY = 8;     // thread rows per band block
constexpr int kRowsPerThread = 4;  // band rows each thread owns per pass: 32 rows per pass
constexpr int kChunkK = 32;  // prompts staged in shared memory at a time
constexpr int kTapThreads = 256;

// logits[m, k] = sum_d patch[m, d] * text[k, d] in float32, m over the B*h*w patch rows.
// Block (16, 16); thread (tx, ty) computes rows ty + 16 i and prompts tx + 16 j, i, j < 4.
template <typename PatchT, typename TextT>
__global__ void patch_logits_kernel(float* __restrict__ logits, const PatchT* __restrict__ patch,
                                    const TextT* __restrict__ text, int64_t rows, int dim, int num_prompts) {
    // [d][m] and [d][n]: the inner loop reads along m / n; +4 keeps 16-byte rows apart.
    __shared__ float patch_tile[kTileD][kTileM + 4];
    __shared__ float text_tile[kTileD][kTileN + 4];
    const int tx = threadIdx.x;
    const int ty = threadIdx.y;
    const int tid = ty * 16 + tx;
    const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTileM;
    const int k0 = blockIdx.y * kTileN;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            acc[i][j] = 0.0f;
        }
    }
    for (int d0 = 0; d0 < dim; d0 += kTileD) {
        // d fastest across threads: each row's 16 channels are one contiguous read.
        for (int e = tid; e < kTileM * kTileD; e += 256) {
            const int m = e / kTileD;
            const int d = e % kTileD;
            const int64_t row = row0 + m;
            patch_tile[d][m] = (row < rows && d0 + d < dim) ? to_float(patch[row * dim + d0 + d]) : 0.0f;
            const int k = k0 + m;
            text_tile[d][m] =
                (k < num_prompts && d0 + d < dim) ? to_float(text[static_cast<int64_t>(k) * dim + d0 + d]) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int d = 0; d < kTileD; ++d) {
            float a[4];
            float t[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                a[i] = patch_tile[d][ty + 16 * i];
                t[i] = text_tile[d][tx + 16 * i];
            }
#pragma unroll
            for (int i = 0; i < 4; ++i) {
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    acc[i][j] += a[i] * t[j];
                }
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int64_t row = row0 + ty + 16 * i;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int k = k0 + tx + 16 * j;
            if (row < rows && k < num_prompts) {
                logits[row * num_prompts + k] = acc[i][j];
            }
        }
    }
}

// The same logits with tensor cores, for float16 or bfloat16 patch features and text of one
// dtype on sm_80 and newer: 64 x 64 outputs per block of 4 warps, each warp 32 x 32 as
// 2 x 2 WMMA tiles of 16 x 16 x 16 with float32 accumulators. Products of half values are
// exact in float32, so only the summation order differs from the kernel above.
constexpr int kMmaThreads = 128;

template <typename HalfT>
__global__ void patch_logits_mma_kernel(float* __restrict__ logits, const HalfT* __restrict__ patch,
                                        const HalfT* __restrict__ text, int64_t rows, int dim, int num_prompts) {
#if defined(CLIPPY_RT_HOST_EMULATION) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800)
    using namespace nvcuda;
    constexpr int kMmaLd = kTileD + 8;  // staged row length in halves: 48 bytes, a multiple of 16
    // WMMA loads and stores need 32-byte aligned tile pointers: every tile below starts at
    // a multiple of 16 rows of 48 bytes, or of 16 x 272 bytes plus 64-byte column steps.
    __shared__ __align__(32) HalfT patch_tile[kTileM][kMmaLd];  // A, row-major [m][d]
    __shared__ __align__(32) HalfT text_tile[kTileN][kMmaLd];   // B = text^T, column-major [n][d]
    __shared__ __align__(32) float out_tile[kTileM][kTileN + 4];
    const int tid = threadIdx.x;
    const int warp = tid / 32;
    const int warp_m = (warp / 2) * 32;
    const int warp_n = (warp % 2) * 32;
    const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTileM;
    const int k0 = blockIdx.y * kTileN;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
    for (int i = 0; i < 2; ++i) {
        for (int j = 0; j < 2; ++j) {
            wmma::fill_fragment(acc[i][j], 0.0f);
        }
    }
    const HalfT zero = HalfT(0.0f);
    for (int d0 = 0; d0 < dim; d0 += kTileD) {
        for (int e = tid; e < kTileM * kTileD; e += kMmaThreads) {
            const int m = e / kTileD;
            const int d = e % kTileD;
            const int64_t row = row0 + m;
            const int k = k0 + m;
            patch_tile[m][d] = (row < rows && d0 + d < dim) ? patch[row * dim + d0 + d] : zero;
            text_tile[m][d] = (k < num_prompts && d0 + d < dim) ? text[static_cast<int64_t>(k) * dim + d0 + d] : zero;
        }
        __syncthreads();
        wmma::fragment<wmma::matrix_a, 16, 16, 16, HalfT, wmma::row_major> a[2];
        wmma::fragment<wmma::matrix_b, 16, 16, 16, HalfT, wmma::col_major> b[2];
        for (int i = 0; i < 2; ++i) {
            wmma::load_matrix_sync(a[i], &patch_tile[warp_m + 16 * i][0], kMmaLd);
            wmma::load_matrix_sync(b[i], &text_tile[warp_n + 16 * i][0], kMmaLd);
        }
        for (int i = 0; i < 2; ++i) {
            for (int j = 0; j < 2; ++j) {
                wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
            }
        }
        __syncthreads();
    }
    for (int i = 0; i < 2; ++i) {
        for (int j = 0; j < 2; ++j) {
            wmma::store_matrix_sync(&out_tile[warp_m + 16 * i][warp_n + 16 * j], acc[i][j], kTileN + 4,
                                    wmma::mem_row_major);
        }
    }
    __syncthreads();
    // Partial tiles: only rows and prompts that exist are written, K-contiguous.
    for (int e = tid; e < kTileM * kTileN; e += kMmaThreads) {
        const int m = e / kTileN;
        const int n = e % kTileN;
        const int64_t row = row0 + m;
        if (row < rows && k0 + n < num_prompts) {
            logits[row * num_prompts + k0 + n] = out_tile[m][n];
        }
    }
#endif
}

// index[dst] = i0, weight[dst] = l1 of one axis:
//   s = max(offset + scale * (dst + 0.5) - 0.5, 0), i0 = min(floor(s), size_in - 1),
//   l1 = clamp(s - i0, 0, 1).
__global__ void axis_taps_kernel(int* __restrict__ index, float* __restrict__ weight, int size_in, int size_out,
                                 float offset, float scale) {
    const int dst = blockIdx.x * blockDim.x + threadIdx.x;
    if (dst >= size_out) {
        return;
    }
    const float src =
        fmaxf(add_rn(add_rn(offset, mul_rn(scale, add_rn(static_cast<float>(dst), 0.5f))), -0.5f), 0.0f);
    const int i0 = min(static_cast<int>(floorf(src)), size_in - 1);
    index[dst] = i0;
    weight[dst] = fminf(fmaxf(src - static_cast<float>(i0), 0.0f), 1.0f);
}

// row_begin[i] = the first output row y with row_index[y] >= i (out_h if none), i <= grid_h.
// row_index is non-decreasing in y.
__global__ void row_begin_kernel(int* __restrict__ row_begin, const int* __restrict__ row_index, int out_h,
                                 int grid_h) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i > grid_h) {
        return;
    }
    int low = 0;
    int high = out_h;
    while (low < high) {
        const int mid = low + (high - low) / 2;
        if (row_index[mid] < i) {
            low = mid + 1;
        } else {
            high = mid;
        }
    }
    row_begin[i] = low;
}

// Labels (and scores) of the output rows [row_begin[i], row_begin[i + 1]) of image b,
// columns [32 bx, 32 bx + 32): grid (cdiv(W, 32), h, B), block (32, 8).
template <typename LabelT>
__global__ void band_argmax_kernel(LabelT* __restrict__ labels, float* __restrict__ scores,
                                   const float* __restrict__ logits, const int* __restrict__ row_index,
                                   const float* __restrict__ row_weight, const int* __restrict__ col_index,
                                   const float* __restrict__ col_weight, const int* __restrict__ row_begin,
                                   int grid_h, int grid_w, int num_prompts, int out_h, int out_w,
                                   float temperature) {
    // [prompt][column]: a thread reads its own column (no bank conflict; threads of one
    // column share a word); the fill writes consecutive prompts, 33 words apart.
    __shared__ float top[kChunkK][kTileX + 1];
    __shared__ float step[kChunkK][kTileX + 1];  // bottom - top
    __shared__ int col_j0[kTileX];
    __shared__ int col_j1[kTileX];
    __shared__ float col_l1[kTileX];

    const int source_row = blockIdx.y;
    const int first_row = row_begin[source_row];
    const int end_row = row_begin[source_row + 1];
    if (first_row >= end_row) {
        return;  // no output row samples between this source row and the next (downsampling)
    }
    const int tx = threadIdx.x;
    const int ty = threadIdx.y;
    const int tid = ty * kTileX + tx;
    const int x_base = blockIdx.x * kTileX;
    const int x = x_base + tx;
    const int64_t b = blockIdx.z;
    const int i0 = source_row;
    const int i1 = min(i0 + 1, grid_h - 1);
    const int64_t row_stride = static_cast<int64_t>(grid_w) * num_prompts;
    const float* image = logits + b * grid_h * row_stride;
    const float* upper = image + i0 * row_stride;
    const float* lower = image + i1 * row_stride;
    const bool softmax = temperature > 0.0f;
    const int64_t pixels = static_cast<int64_t>(out_h) * out_w;

    if (tid < kTileX) {
        const int column = min(x_base + tid, out_w - 1);
        col_j0[tid] = col_index[column];
        col_j1[tid] = min(col_index[column] + 1, grid_w - 1);
        col_l1[tid] = col_weight[column];
    }
    __syncthreads();

    for (int pass = first_row; pass < end_row; pass += kThreadsY * kRowsPerThread) {
        float l1[kRowsPerThread];
        float best[kRowsPerThread];
        int best_k[kRowsPerThread];
        float sum_exp[kRowsPerThread];  // sum_k exp(temperature * (logit_k - best))
#pragma unroll
        for (int r = 0; r < kRowsPerThread; ++r) {
            const int y = pass + ty + r * kThreadsY;
            l1[r] = y < end_row ? row_weight[y] : 0.0f;
            best[r] = -INFINITY;
            best_k[r] = 0;
            sum_exp[r] = 0.0f;
        }
        for (int k0 = 0; k0 < num_prompts; k0 += kChunkK) {
            for (int e = tid; e < kChunkK * kTileX; e += kTileX * kThreadsY) {
                const int k = e % kChunkK;
                const int column = e / kChunkK;
                float upper_value = 0.0f;
                float lower_value = 0.0f;
                if (k0 + k < num_prompts) {
                    const int64_t j0 = static_cast<int64_t>(col_j0[column]) * num_prompts + k0 + k;
                    const int64_t j1 = static_cast<int64_t>(col_j1[column]) * num_prompts + k0 + k;
                    const float w1 = col_l1[column];
                    const float w0 = 1.0f - w1;
                    upper_value = w0 * upper[j0] + w1 * upper[j1];
                    lower_value = w0 * lower[j0] + w1 * lower[j1];
                }
                top[k][column] = upper_value;
                step[k][column] = lower_value - upper_value;
            }
            __syncthreads();
            const int chunk = min(kChunkK, num_prompts - k0);
            for (int k = 0; k < chunk; ++k) {
                const float upper_value = top[k][tx];
                const float step_value = step[k][tx];
#pragma unroll
                for (int r = 0; r < kRowsPerThread; ++r) {
                    // l0 * top + l1 * bottom as one FMA (equal up to rounding).
                    const float value = upper_value + l1[r] * step_value;
                    if (value > best[r]) {  // strict: ties keep the lowest k, as torch.argmax
                        if (softmax) {
                            sum_exp[r] = sum_exp[r] * expf(temperature * (best[r] - value)) + 1.0f;
                        }
                        best[r] = value;
                        best_k[r] = k0 + k;
                    } else if (softmax) {
                        sum_exp[r] += expf(temperature * (value - best[r]));
                    }
                }
            }
            __syncthreads();
        }
        if (x < out_w) {
#pragma unroll
            for (int r = 0; r < kRowsPerThread; ++r) {
                const int y = pass + ty + r * kThreadsY;
                if (y < end_row) {
                    const int64_t offset = b * pixels + static_cast<int64_t>(y) * out_w + x;
                    labels[offset] = static_cast<LabelT>(best_k[r]);
                    if (scores != nullptr) {
                        scores[offset] = softmax ? 1.0f / sum_exp[r] : best[r];
                    }
                }
            }
        }
    }
}

// Whether the current device has the sm_80 tensor-core instructions the MMA kernel uses.
bool tensor_cores_available() {
#ifdef CLIPPY_RT_HOST_EMULATION
    return true;  // the emulation runs the MMA kernel whenever a real GPU would
#else
    int device = 0;
    int major = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
        return false;
    }
    return major >= 8;
#endif
}

template <typename PatchT, typename TextT>
void launch_patch_logits(float* logits, const void* patch, const void* text, int64_t rows, int dim,
                         int num_prompts, cudaStream_t stream) {
    const dim3 grid(static_cast<unsigned>((rows + kTileM - 1) / kTileM),
                    static_cast<unsigned>((num_prompts + kTileN - 1) / kTileN));
    constexpr bool same_half = std::is_same<PatchT, TextT>::value && !std::is_same<PatchT, float>::value;
    if constexpr (same_half) {
        if (tensor_cores_available()) {
            auto kernel = patch_logits_mma_kernel<PatchT>;
            CLIPPY_LAUNCH(kernel, grid, dim3(kMmaThreads), stream, logits, static_cast<const PatchT*>(patch),
                          static_cast<const TextT*>(text), rows, dim, num_prompts);
            return;
        }
    }
    auto kernel = patch_logits_kernel<PatchT, TextT>;
    CLIPPY_LAUNCH(kernel, grid, dim3(16, 16), stream, logits, static_cast<const PatchT*>(patch),
                  static_cast<const TextT*>(text), rows, dim, num_prompts);
}

template <typename PatchT>
bool dispatch_text(int text_dtype, float* logits, const void* patch, const void* text, int64_t rows, int dim,
                   int num_prompts, cudaStream_t stream) {
    switch (text_dtype) {
        case CLIPPY_DTYPE_FLOAT32:
            launch_patch_logits<PatchT, float>(logits, patch, text, rows, dim, num_prompts, stream);
            return true;
        case CLIPPY_DTYPE_FLOAT16:
            launch_patch_logits<PatchT, __half>(logits, patch, text, rows, dim, num_prompts, stream);
            return true;
        case CLIPPY_DTYPE_BFLOAT16:
            launch_patch_logits<PatchT, __nv_bfloat16>(logits, patch, text, rows, dim, num_prompts, stream);
            return true;
        default:
            return false;
    }
}

bool valid_dtype(int dtype) {
    return dtype == CLIPPY_DTYPE_FLOAT32 || dtype == CLIPPY_DTYPE_FLOAT16 || dtype == CLIPPY_DTYPE_BFLOAT16;
}

size_t align_up(size_t bytes) { return (bytes + 255) / 256 * 256; }

// Byte offsets of the workspace parts: logits, row taps, column taps, row_begin.
struct WorkspaceLayout {
    size_t row_index, row_weight, col_index, col_weight, row_begin, total;
};

WorkspaceLayout workspace_layout(int batch, int grid_h, int grid_w, int num_prompts, int out_h, int out_w) {
    WorkspaceLayout layout;
    layout.row_index = align_up(static_cast<size_t>(batch) * grid_h * grid_w * num_prompts * sizeof(float));
    layout.row_weight = layout.row_index + align_up(static_cast<size_t>(out_h) * sizeof(int));
    layout.col_index = layout.row_weight + align_up(static_cast<size_t>(out_h) * sizeof(float));
    layout.col_weight = layout.col_index + align_up(static_cast<size_t>(out_w) * sizeof(int));
    layout.row_begin = layout.col_weight + align_up(static_cast<size_t>(out_w) * sizeof(float));
    layout.total = layout.row_begin + align_up(static_cast<size_t>(grid_h + 1) * sizeof(int));
    return layout;
}

}  // namespace

extern "C" {

int clippy_rt_native_abi_version(void) { return CLIPPY_RT_NATIVE_ABI_VERSION; }

size_t clippy_seg_head_workspace_bytes(int batch, int grid_h, int grid_w, int num_prompts, int out_h, int out_w) {
    if (batch < 0 || grid_h < 0 || grid_w < 0 || num_prompts < 0 || out_h < 0 || out_w < 0) {
        return 0;
    }
    return workspace_layout(batch, grid_h, grid_w, num_prompts, out_h, out_w).total;
}

const char* clippy_last_error(void) { return last_error.c_str(); }

int clippy_seg_head(void* labels, int labels_bytes, float* scores, const void* patch_features, int patch_dtype,
                    const void* text_embeds, int text_dtype, int batch, int grid_h, int grid_w, int dim,
                    int num_prompts, int out_h, int out_w, const double* window, float temperature,
                    void* workspace, size_t workspace_bytes, void* stream) {
    last_error.clear();
    if (batch < 0 || grid_h < 1 || grid_w < 1 || dim < 1 || num_prompts < 1 || out_h < 1 || out_w < 1) {
        return fail(CLIPPY_STATUS_INVALID_ARGUMENT,
                    "sizes must be batch >= 0 and h, w, D, K, H, W >= 1; got B=" + std::to_string(batch) +
                        " h=" + std::to_string(grid_h) + " w=" + std::to_string(grid_w) + " D=" + std::to_string(dim) +
                        " K=" + std::to_string(num_prompts) + " H=" + std::to_string(out_h) +
                        " W=" + std::to_string(out_w));
    }
    if (batch > 65535 || grid_h > 65535) {
        return fail(CLIPPY_STATUS_INVALID_ARGUMENT, "batch and h must be <= 65535 (CUDA grid limits), got B=" +
                                                        std::to_string(batch) + " h=" + std::to_string(grid_h));
    }
    if (!valid_dtype(patch_dtype) || !valid_dtype(text_dtype)) {
        return fail(CLIPPY_STATUS_INVALID_ARGUMENT, "dtypes must be 0 (float32), 1 (float16) or 2 (bfloat16); got " +
                                                        std::to_string(patch_dtype) + " and " +
                                                        std::to_string(text_dtype));
    }
    if (labels_bytes != 1 && labels_bytes != 4) {
        return fail(CLIPPY_STATUS_INVALID_ARGUMENT,
                    "labels_bytes must be 1 (uint8) or 4 (int32), got " + std::to_string(labels_bytes));
    }
    if (labels_bytes == 1 && num_prompts > 255) {
        return fail(CLIPPY_STATUS_INVALID_ARGUMENT,
                    "uint8 labels hold at most 255 prompts, got K=" + std::to_string(num_prompts));
    }
    if (!(temperature >= 0.0f) || std::isinf(temperature)) {
        return fail(CLIPPY_STATUS_INVALID_ARGUMENT, "temperature must be finite and >= 0 (0: no softmax)");
    }
    double y0 = 0.0, x0 = 0.0, y1 = 1.0, x1 = 1.0;
    if (window != nullptr) {
        y0 = window[0];
        x0 = window[1];
        y1 = window[2];
        x1 = window[3];
        const bool inside = y0 >= 0.0 && x0 >= 0.0 && y1 <= 1.0 && x1 <= 1.0;
        if (!inside || !(y1 > y0) || !(x1 > x0)) {
            return fail(CLIPPY_STATUS_INVALID_ARGUMENT,
                        "window must be (y0, x0, y1, x1) in [0, 1] with y1 > y0 and x1 > x0");
        }
    }
    if (batch == 0) {
        return CLIPPY_STATUS_OK;
    }
    if (labels == nullptr || patch_features == nullptr || text_embeds == nullptr || workspace == nullptr) {
        return fail(CLIPPY_STATUS_INVALID_ARGUMENT, "labels, patch_features, text_embeds and workspace must be set");
    }
    const WorkspaceLayout layout = workspace_layout(batch, grid_h, grid_w, num_prompts, out_h, out_w);
    if (workspace_bytes < layout.total) {
        return fail(CLIPPY_STATUS_WORKSPACE_TOO_SMALL, "workspace holds " + std::to_string(workspace_bytes) +
                                                           " bytes, needs " + std::to_string(layout.total));
    }

    cudaStream_t cuda_stream = static_cast<cudaStream_t>(stream);
    char* base = static_cast<char*>(workspace);
    float* logits = reinterpret_cast<float*>(base);
    int* row_index = reinterpret_cast<int*>(base + layout.row_index);
    float* row_weight = reinterpret_cast<float*>(base + layout.row_weight);
    int* col_index = reinterpret_cast<int*>(base + layout.col_index);
    float* col_weight = reinterpret_cast<float*>(base + layout.col_weight);
    int* row_begin = reinterpret_cast<int*>(base + layout.row_begin);

    const int64_t rows = static_cast<int64_t>(batch) * grid_h * grid_w;
    bool launched = false;
    switch (patch_dtype) {
        case CLIPPY_DTYPE_FLOAT32:
            launched = dispatch_text<float>(text_dtype, logits, patch_features, text_embeds, rows, dim, num_prompts,
                                            cuda_stream);
            break;
        case CLIPPY_DTYPE_FLOAT16:
            launched = dispatch_text<__half>(text_dtype, logits, patch_features, text_embeds, rows, dim,
                                             num_prompts, cuda_stream);
            break;
        default:
            launched = dispatch_text<__nv_bfloat16>(text_dtype, logits, patch_features, text_embeds, rows, dim,
                                                    num_prompts, cuda_stream);
            break;
    }
    if (!launched) {
        return fail(CLIPPY_STATUS_INVALID_ARGUMENT, "unsupported dtype combination");
    }

    // Computed in double and rounded once, as the Python launcher does: for the full
    // window the scale is float32(h / H), the one F.interpolate uses.
    const float offset_y = static_cast<float>(y0 * grid_h);
    const float scale_y = static_cast<float>((y1 - y0) * grid_h / out_h);
    const float offset_x = static_cast<float>(x0 * grid_w);
    const float scale_x = static_cast<float>((x1 - x0) * grid_w / out_w);
    const unsigned row_blocks = static_cast<unsigned>((out_h + kTapThreads - 1) / kTapThreads);
    const unsigned col_blocks = static_cast<unsigned>((out_w + kTapThreads - 1) / kTapThreads);
    const unsigned begin_blocks = static_cast<unsigned>((grid_h + 1 + kTapThreads - 1) / kTapThreads);
    CLIPPY_LAUNCH(axis_taps_kernel, dim3(row_blocks), dim3(kTapThreads), cuda_stream, row_index, row_weight,
                  grid_h, out_h, offset_y, scale_y);
    CLIPPY_LAUNCH(axis_taps_kernel, dim3(col_blocks), dim3(kTapThreads), cuda_stream, col_index, col_weight,
                  grid_w, out_w, offset_x, scale_x);
    CLIPPY_LAUNCH(row_begin_kernel, dim3(begin_blocks), dim3(kTapThreads), cuda_stream, row_begin, row_index,
                  out_h, grid_h);

    const dim3 grid(static_cast<unsigned>((out_w + kTileX - 1) / kTileX), static_cast<unsigned>(grid_h),
                    static_cast<unsigned>(batch));
    const dim3 block(kTileX, kThreadsY);
    if (labels_bytes == 1) {
        auto kernel = band_argmax_kernel<uint8_t>;
        CLIPPY_LAUNCH(kernel, grid, block, cuda_stream, static_cast<uint8_t*>(labels), scores, logits, row_index,
                      row_weight, col_index, col_weight, row_begin, grid_h, grid_w, num_prompts, out_h, out_w,
                      temperature);
    } else {
        auto kernel = band_argmax_kernel<int32_t>;
        CLIPPY_LAUNCH(kernel, grid, block, cuda_stream, static_cast<int32_t*>(labels), scores, logits, row_index,
                      row_weight, col_index, col_weight, row_begin, grid_h, grid_w, num_prompts, out_h, out_w,
                      temperature);
    }
    const std::string error = clippy_launch_error();
    if (!error.empty()) {
        return fail(CLIPPY_STATUS_CUDA_ERROR, "kernel launch failed: " + error);
    }
    return CLIPPY_STATUS_OK;
}

}  // extern "C"
