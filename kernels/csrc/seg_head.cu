// clippy_rt_native: the segmentation head in CUDA C++. Contract in seg_head.h.
//
// Two kernels, as in the Triton version: a tiled matmul for the float32 patch logits
// [B, h*w, K] (K contiguous), then one thread per output pixel that reads the four
// neighbour rows, interpolates each of the K logits and keeps a running max / argmax
// (and the running sum of exponentials for softmax scores). [B, K, H, W] never exists.

#include "seg_head.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <string>

namespace {

thread_local std::string last_error;

int fail(int status, const std::string& message) {
    last_error = message;
    return status;
}

__device__ __forceinline__ float to_float(float value) { return value; }
__device__ __forceinline__ float to_float(__half value) { return __half2float(value); }
__device__ __forceinline__ float to_float(__nv_bfloat16 value) { return __bfloat162float(value); }

constexpr int kTile = 16;
constexpr int kPixelsPerBlock = 256;

// logits[m, k] = sum_d patch[m, d] * text[k, d] in float32, m over the B*h*w patch rows.
// Block (kTile, kTile): threadIdx.y picks the row, threadIdx.x the prompt.
template <typename PatchT, typename TextT>
__global__ void patch_logits_kernel(float* __restrict__ logits, const PatchT* __restrict__ patch,
                                    const TextT* __restrict__ text, int64_t rows, int dim, int num_prompts) {
    // +1 column: the inner loop reads text_tile along a column; padding avoids bank conflicts.
    __shared__ float patch_tile[kTile][kTile + 1];
    __shared__ float text_tile[kTile][kTile + 1];
    const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kTile;
    const int k0 = blockIdx.y * kTile;
    const int64_t load_row = row0 + threadIdx.y;
    const int load_k = k0 + threadIdx.y;
    float acc = 0.0f;
    for (int d0 = 0; d0 < dim; d0 += kTile) {
        const int d = d0 + threadIdx.x;
        patch_tile[threadIdx.y][threadIdx.x] =
            (load_row < rows && d < dim) ? to_float(patch[load_row * dim + d]) : 0.0f;
        text_tile[threadIdx.y][threadIdx.x] =
            (load_k < num_prompts && d < dim) ? to_float(text[static_cast<int64_t>(load_k) * dim + d]) : 0.0f;
        __syncthreads();
#pragma unroll
        for (int i = 0; i < kTile; ++i) {
            acc += patch_tile[threadIdx.y][i] * text_tile[threadIdx.x][i];
        }
        __syncthreads();
    }
    const int64_t row = row0 + threadIdx.y;
    const int k = k0 + threadIdx.x;
    if (row < rows && k < num_prompts) {
        logits[row * num_prompts + k] = acc;
    }
}

// F.interpolate's source index, neighbours and weights for one output coordinate.
__device__ __forceinline__ void source_taps(float offset, float scale, int dst, int size, int& i0, int& i1,
                                            float& w0, float& w1) {
    const float src = fmaxf(offset + scale * (static_cast<float>(dst) + 0.5f) - 0.5f, 0.0f);
    i0 = min(static_cast<int>(src), size - 1);  // src >= 0: truncation is floor
    i1 = min(i0 + 1, size - 1);
    w1 = fminf(src - static_cast<float>(i0), 1.0f);
    w0 = 1.0f - w1;
}

template <typename LabelT>
__global__ void upsample_argmax_kernel(LabelT* __restrict__ labels, float* __restrict__ scores,
                                       const float* __restrict__ logits, int grid_h, int grid_w, int num_prompts,
                                       int out_h, int out_w, float offset_y, float scale_y, float offset_x,
                                       float scale_x, float temperature) {
    const int64_t pixels = static_cast<int64_t>(out_h) * out_w;
    const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const int64_t b = blockIdx.y;
    if (p >= pixels) {
        return;
    }
    const int y = static_cast<int>(p / out_w);
    const int x = static_cast<int>(p % out_w);
    int y0, y1, x0, x1;
    float wy0, wy1, wx0, wx1;
    source_taps(offset_y, scale_y, y, grid_h, y0, y1, wy0, wy1);
    source_taps(offset_x, scale_x, x, grid_w, x0, x1, wx0, wx1);

    const float* image = logits + b * grid_h * grid_w * num_prompts;
    const float* r00 = image + (static_cast<int64_t>(y0) * grid_w + x0) * num_prompts;
    const float* r01 = image + (static_cast<int64_t>(y0) * grid_w + x1) * num_prompts;
    const float* r10 = image + (static_cast<int64_t>(y1) * grid_w + x0) * num_prompts;
    const float* r11 = image + (static_cast<int64_t>(y1) * grid_w + x1) * num_prompts;
    const bool softmax = temperature > 0.0f;

    float best = -INFINITY;
    int best_k = 0;
    float sum_exp = 0.0f;  // sum_k exp(temperature * (logit_k - best))
    for (int k = 0; k < num_prompts; ++k) {
        const float top = wx0 * r00[k] + wx1 * r01[k];
        const float bottom = wx0 * r10[k] + wx1 * r11[k];
        const float value = wy0 * top + wy1 * bottom;
        if (value > best) {  // strict: ties keep the lowest k, as torch.argmax
            if (softmax) {
                sum_exp = sum_exp * expf(temperature * (best - value)) + 1.0f;
            }
            best = value;
            best_k = k;
        } else if (softmax) {
            sum_exp += expf(temperature * (value - best));
        }
    }
    labels[b * pixels + p] = static_cast<LabelT>(best_k);
    if (scores != nullptr) {
        scores[b * pixels + p] = softmax ? 1.0f / sum_exp : best;
    }
}

template <typename PatchT, typename TextT>
void launch_patch_logits(float* logits, const void* patch, const void* text, int64_t rows, int dim,
                         int num_prompts, cudaStream_t stream) {
    const dim3 block(kTile, kTile);
    const dim3 grid(static_cast<unsigned>((rows + kTile - 1) / kTile),
                    static_cast<unsigned>((num_prompts + kTile - 1) / kTile));
    patch_logits_kernel<PatchT, TextT><<<grid, block, 0, stream>>>(
        logits, static_cast<const PatchT*>(patch), static_cast<const TextT*>(text), rows, dim, num_prompts);
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

}  // namespace

extern "C" {

int clippy_rt_native_abi_version(void) { return CLIPPY_RT_NATIVE_ABI_VERSION; }

size_t clippy_seg_head_workspace_bytes(int batch, int grid_h, int grid_w, int num_prompts) {
    if (batch < 0 || grid_h < 0 || grid_w < 0 || num_prompts < 0) {
        return 0;
    }
    return static_cast<size_t>(batch) * grid_h * grid_w * num_prompts * sizeof(float);
}

const char* clippy_last_error(void) { return last_error.c_str(); }

int clippy_seg_head(void* labels, int labels_bytes, float* scores, const void* patch_features, int patch_dtype,
                    const void* text_embeds, int text_dtype, int batch, int grid_h, int grid_w, int dim,
                    int num_prompts, int out_h, int out_w, const float* window, float temperature, void* workspace,
                    size_t workspace_bytes, void* stream) {
    last_error.clear();
    if (batch < 0 || grid_h < 1 || grid_w < 1 || dim < 1 || num_prompts < 1 || out_h < 1 || out_w < 1) {
        return fail(CLIPPY_STATUS_INVALID_ARGUMENT,
                    "sizes must be batch >= 0 and h, w, D, K, H, W >= 1; got B=" + std::to_string(batch) +
                        " h=" + std::to_string(grid_h) + " w=" + std::to_string(grid_w) + " D=" + std::to_string(dim) +
                        " K=" + std::to_string(num_prompts) + " H=" + std::to_string(out_h) +
                        " W=" + std::to_string(out_w));
    }
    if (batch > 65535) {
        return fail(CLIPPY_STATUS_INVALID_ARGUMENT, "batch must be <= 65535, got " + std::to_string(batch));
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
    float y0 = 0.0f, x0 = 0.0f, y1 = 1.0f, x1 = 1.0f;
    if (window != nullptr) {
        y0 = window[0];
        x0 = window[1];
        y1 = window[2];
        x1 = window[3];
        const bool inside = y0 >= 0.0f && x0 >= 0.0f && y1 <= 1.0f && x1 <= 1.0f;
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
    const size_t needed = clippy_seg_head_workspace_bytes(batch, grid_h, grid_w, num_prompts);
    if (workspace_bytes < needed) {
        return fail(CLIPPY_STATUS_WORKSPACE_TOO_SMALL, "workspace holds " + std::to_string(workspace_bytes) +
                                                           " bytes, needs " + std::to_string(needed));
    }

    cudaStream_t cuda_stream = static_cast<cudaStream_t>(stream);
    float* logits = static_cast<float*>(workspace);
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
    const float offset_y = static_cast<float>(static_cast<double>(y0) * grid_h);
    const float scale_y = static_cast<float>((static_cast<double>(y1) - y0) * grid_h / out_h);
    const float offset_x = static_cast<float>(static_cast<double>(x0) * grid_w);
    const float scale_x = static_cast<float>((static_cast<double>(x1) - x0) * grid_w / out_w);
    const int64_t pixels = static_cast<int64_t>(out_h) * out_w;
    const dim3 grid(static_cast<unsigned>((pixels + kPixelsPerBlock - 1) / kPixelsPerBlock),
                    static_cast<unsigned>(batch));
    if (labels_bytes == 1) {
        upsample_argmax_kernel<uint8_t><<<grid, kPixelsPerBlock, 0, cuda_stream>>>(
            static_cast<uint8_t*>(labels), scores, logits, grid_h, grid_w, num_prompts, out_h, out_w, offset_y,
            scale_y, offset_x, scale_x, temperature);
    } else {
        upsample_argmax_kernel<int32_t><<<grid, kPixelsPerBlock, 0, cuda_stream>>>(
            static_cast<int32_t*>(labels), scores, logits, grid_h, grid_w, num_prompts, out_h, out_w, offset_y,
            scale_y, offset_x, scale_x, temperature);
    }
    const cudaError_t error = cudaGetLastError();
    if (error != cudaSuccess) {
        return fail(CLIPPY_STATUS_CUDA_ERROR, std::string("kernel launch failed: ") + cudaGetErrorString(error));
    }
    return CLIPPY_STATUS_OK;
}

}  // extern "C"
