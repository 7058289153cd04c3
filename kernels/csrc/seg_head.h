/*
 * clippy_rt_native: the segmentation head in CUDA C++ (for Jetson, where Triton is
 * often unavailable). Same contract as clippy_rt.kernels.seg_head:
 *
 *   patch_logits[b, i, j, k] = <P[b, i, j, :], T[k, :]>                 (float32)
 *   logits[b, k, y, x]       = bilinear(patch_logits[b, :, :, k])(y, x)
 *   labels[b, y, x]          = argmax_k logits[b, k, y, x]    (lowest k on ties)
 *   scores[b, y, x]          = max_k logits, or softmax_k(temperature * logits)[label]
 *
 * Bilinear sampling is F.interpolate(align_corners=False) with its edge clamping over
 * the window (y0, x0, y1, x1) of the model input frame in [0, 1] coordinates: row y
 * samples s = y0*h + (y1 - y0)*h/H * (y + 0.5) - 0.5, clamped at 0, neighbours
 * floor(s) and floor(s) + 1 clamped to h - 1.
 *
 * All pointers except `window` are device pointers; tensors are contiguous row-major:
 * patch_features [B, h, w, D], text_embeds [K, D], labels [B, H, W] (uint8 or int32),
 * scores [B, H, W] float32. Work is queued on `stream`; the call does not synchronise.
 */
#ifndef CLIPPY_RT_SEG_HEAD_H
#define CLIPPY_RT_SEG_HEAD_H

#include <stddef.h>

#if defined(_WIN32)
#define CLIPPY_RT_API __declspec(dllexport)
#else
#define CLIPPY_RT_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped whenever a signature below changes; the Python loader checks it. */
#define CLIPPY_RT_NATIVE_ABI_VERSION 2

typedef enum {
    CLIPPY_DTYPE_FLOAT32 = 0,
    CLIPPY_DTYPE_FLOAT16 = 1,
    CLIPPY_DTYPE_BFLOAT16 = 2
} clippy_dtype;

typedef enum {
    CLIPPY_STATUS_OK = 0,
    CLIPPY_STATUS_INVALID_ARGUMENT = 1,
    CLIPPY_STATUS_WORKSPACE_TOO_SMALL = 2,
    CLIPPY_STATUS_CUDA_ERROR = 3
} clippy_status;

CLIPPY_RT_API int clippy_rt_native_abi_version(void);

/* Bytes of device workspace clippy_seg_head needs (the float32 patch logits and the
 * per-axis sampling tables). */
CLIPPY_RT_API size_t clippy_seg_head_workspace_bytes(int batch, int grid_h, int grid_w, int num_prompts,
                                                     int out_h, int out_w);

/*
 * labels_bytes: 1 (uint8, needs num_prompts <= 255) or 4 (int32).
 * scores: NULL for no scores.
 * window: host pointer to 4 doubles (y0, x0, y1, x1), or NULL for (0, 0, 1, 1).
 * temperature: > 0 for softmax scores, 0 for the winning logit.
 * stream: a cudaStream_t (NULL: the default stream).
 * Returns a clippy_status; on CLIPPY_STATUS_CUDA_ERROR, clippy_last_error() says which.
 */
CLIPPY_RT_API int clippy_seg_head(
    void* labels, int labels_bytes,
    float* scores,
    const void* patch_features, int patch_dtype,
    const void* text_embeds, int text_dtype,
    int batch, int grid_h, int grid_w, int dim, int num_prompts,
    int out_h, int out_w,
    const double* window, float temperature,
    void* workspace, size_t workspace_bytes,
    void* stream);

/* A description of the last failure of a call on this thread ("" when none). */
CLIPPY_RT_API const char* clippy_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* CLIPPY_RT_SEG_HEAD_H */
