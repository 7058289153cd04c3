// Test of clippy_rt_native's seg head against a CPU implementation of the same math.
// Exit codes: 0 pass, 1 fail, 77 skipped (no CUDA device; ctest's SKIP_RETURN_CODE).

#include "seg_head.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

namespace {

constexpr float kScoreTolerance = 1e-5f;  // float32 summation order
constexpr float kLabelGap = 1e-5f;        // labels compared where the top-2 gap exceeds this

struct Case {
    int batch, grid_h, grid_w, dim, prompts, out_h, out_w, dtype;
    bool use_window;
    double window[4];
    float temperature;
};

#define CHECK_CUDA(call)                                                                     \
    do {                                                                                     \
        cudaError_t error_ = (call);                                                         \
        if (error_ != cudaSuccess) {                                                         \
            std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(error_)); \
            return false;                                                                    \
        }                                                                                    \
    } while (0)

// Round to the input dtype and back, so the CPU side sees exactly what the GPU reads.
float round_to(int dtype, float value) {
    if (dtype == CLIPPY_DTYPE_FLOAT16) return __half2float(__float2half(value));
    if (dtype == CLIPPY_DTYPE_BFLOAT16) return __bfloat162float(__float2bfloat16(value));
    return value;
}

std::vector<unsigned char> encode(int dtype, const std::vector<float>& values) {
    const size_t width = dtype == CLIPPY_DTYPE_FLOAT32 ? 4 : 2;
    std::vector<unsigned char> bytes(values.size() * width);
    for (size_t i = 0; i < values.size(); ++i) {
        if (dtype == CLIPPY_DTYPE_FLOAT16) {
            const __half h = __float2half(values[i]);
            std::memcpy(&bytes[i * 2], &h, 2);
        } else if (dtype == CLIPPY_DTYPE_BFLOAT16) {
            const __nv_bfloat16 h = __float2bfloat16(values[i]);
            std::memcpy(&bytes[i * 2], &h, 2);
        } else {
            std::memcpy(&bytes[i * 4], &values[i], 4);
        }
    }
    return bytes;
}

std::vector<float> unit_rows(int rows, int dim, int dtype, std::mt19937& rng) {
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> values(static_cast<size_t>(rows) * dim);
    for (int r = 0; r < rows; ++r) {
        double norm = 0.0;
        for (int d = 0; d < dim; ++d) {
            const float v = normal(rng);
            values[static_cast<size_t>(r) * dim + d] = v;
            norm += static_cast<double>(v) * v;
        }
        for (int d = 0; d < dim; ++d) {
            float& v = values[static_cast<size_t>(r) * dim + d];
            v = round_to(dtype, static_cast<float>(v / std::sqrt(norm)));
        }
    }
    return values;
}

void taps(double offset, double scale, int dst, int size, int& i0, int& i1, float& w0, float& w1) {
    const float src = std::max(static_cast<float>(offset) + static_cast<float>(scale) * (dst + 0.5f) - 0.5f, 0.0f);
    i0 = std::min(static_cast<int>(src), size - 1);
    i1 = std::min(i0 + 1, size - 1);
    w1 = std::min(src - static_cast<float>(i0), 1.0f);
    w0 = 1.0f - w1;
}

bool run_case(const Case& c, int index) {
    std::mt19937 rng(1234 + index);
    const int rows = c.batch * c.grid_h * c.grid_w;
    const std::vector<float> patch = unit_rows(rows, c.dim, c.dtype, rng);
    const std::vector<float> text = unit_rows(c.prompts, c.dim, c.dtype, rng);

    // CPU: patch logits in double, then the same float32 interpolation formula.
    std::vector<float> logits(static_cast<size_t>(rows) * c.prompts);
    for (int r = 0; r < rows; ++r) {
        for (int k = 0; k < c.prompts; ++k) {
            double acc = 0.0;
            for (int d = 0; d < c.dim; ++d) {
                acc += static_cast<double>(patch[static_cast<size_t>(r) * c.dim + d]) *
                       text[static_cast<size_t>(k) * c.dim + d];
            }
            logits[static_cast<size_t>(r) * c.prompts + k] = static_cast<float>(acc);
        }
    }
    const double y0 = c.use_window ? c.window[0] : 0.0, x0 = c.use_window ? c.window[1] : 0.0;
    const double y1 = c.use_window ? c.window[2] : 1.0, x1 = c.use_window ? c.window[3] : 1.0;
    const double offset_y = static_cast<double>(y0) * c.grid_h, scale_y = (static_cast<double>(y1) - y0) * c.grid_h / c.out_h;
    const double offset_x = static_cast<double>(x0) * c.grid_w, scale_x = (static_cast<double>(x1) - x0) * c.grid_w / c.out_w;

    const size_t pixels = static_cast<size_t>(c.batch) * c.out_h * c.out_w;
    const int labels_bytes = c.prompts <= 255 ? 1 : 4;
    std::vector<int> cpu_labels(pixels);
    std::vector<float> cpu_scores(pixels), cpu_gap(pixels);
    std::vector<float> values(c.prompts);
    for (int b = 0; b < c.batch; ++b) {
        for (int y = 0; y < c.out_h; ++y) {
            int iy0, iy1;
            float wy0, wy1;
            taps(offset_y, scale_y, y, c.grid_h, iy0, iy1, wy0, wy1);
            for (int x = 0; x < c.out_w; ++x) {
                int ix0, ix1;
                float wx0, wx1;
                taps(offset_x, scale_x, x, c.grid_w, ix0, ix1, wx0, wx1);
                auto at = [&](int i, int j, int k) {
                    return logits[(static_cast<size_t>(b * c.grid_h + i) * c.grid_w + j) * c.prompts + k];
                };
                int best_k = 0;
                for (int k = 0; k < c.prompts; ++k) {
                    values[k] = wy0 * (wx0 * at(iy0, ix0, k) + wx1 * at(iy0, ix1, k)) +
                                wy1 * (wx0 * at(iy1, ix0, k) + wx1 * at(iy1, ix1, k));
                    if (values[k] > values[best_k]) best_k = k;
                }
                float second = -INFINITY;
                double sum = 0.0;
                for (int k = 0; k < c.prompts; ++k) {
                    if (k != best_k) second = std::max(second, values[k]);
                    sum += std::exp(static_cast<double>(c.temperature) * (values[k] - values[best_k]));
                }
                const size_t p = (static_cast<size_t>(b) * c.out_h + y) * c.out_w + x;
                cpu_labels[p] = best_k;
                cpu_gap[p] = values[best_k] - second;
                cpu_scores[p] = c.temperature > 0 ? static_cast<float>(1.0 / sum) : values[best_k];
            }
        }
    }

    const std::vector<unsigned char> patch_bytes = encode(c.dtype, patch), text_bytes = encode(c.dtype, text);
    void *d_patch = nullptr, *d_text = nullptr, *d_labels = nullptr, *d_workspace = nullptr;
    float* d_scores = nullptr;
    const size_t workspace = clippy_seg_head_workspace_bytes(c.batch, c.grid_h, c.grid_w, c.prompts, c.out_h, c.out_w);
    CHECK_CUDA(cudaMalloc(&d_patch, patch_bytes.size()));
    CHECK_CUDA(cudaMalloc(&d_text, text_bytes.size()));
    CHECK_CUDA(cudaMalloc(&d_labels, pixels * labels_bytes));
    CHECK_CUDA(cudaMalloc(&d_scores, pixels * sizeof(float)));
    CHECK_CUDA(cudaMalloc(&d_workspace, workspace));
    CHECK_CUDA(cudaMemcpy(d_patch, patch_bytes.data(), patch_bytes.size(), cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(d_text, text_bytes.data(), text_bytes.size(), cudaMemcpyHostToDevice));
    const int status = clippy_seg_head(d_labels, labels_bytes, d_scores, d_patch, c.dtype, d_text, c.dtype, c.batch,
                                       c.grid_h, c.grid_w, c.dim, c.prompts, c.out_h, c.out_w,
                                       c.use_window ? c.window : nullptr, c.temperature, d_workspace, workspace,
                                       nullptr);
    if (status != CLIPPY_STATUS_OK) {
        std::fprintf(stderr, "case %d: clippy_seg_head returned %d: %s\n", index, status, clippy_last_error());
        return false;
    }
    CHECK_CUDA(cudaDeviceSynchronize());
    std::vector<unsigned char> label_bytes(pixels * labels_bytes);
    std::vector<float> gpu_scores(pixels);
    CHECK_CUDA(cudaMemcpy(label_bytes.data(), d_labels, label_bytes.size(), cudaMemcpyDeviceToHost));
    CHECK_CUDA(cudaMemcpy(gpu_scores.data(), d_scores, pixels * sizeof(float), cudaMemcpyDeviceToHost));
    cudaFree(d_patch);
    cudaFree(d_text);
    cudaFree(d_labels);
    cudaFree(d_scores);
    cudaFree(d_workspace);

    size_t label_mismatches = 0, score_mismatches = 0, decided = 0;
    float worst = 0.0f;
    for (size_t p = 0; p < pixels; ++p) {
        int label;
        if (labels_bytes == 1) {
            label = label_bytes[p];
        } else {
            int32_t value;
            std::memcpy(&value, &label_bytes[p * 4], 4);
            label = value;
        }
        if (cpu_gap[p] > kLabelGap) {
            ++decided;
            label_mismatches += label != cpu_labels[p];
        }
        const float error = std::fabs(gpu_scores[p] - cpu_scores[p]);
        const float allowed = c.temperature > 0 ? 1e-4f * cpu_scores[p] + 1e-6f : kScoreTolerance;
        score_mismatches += !(error <= allowed);
        worst = std::max(worst, error);
    }
    const bool ok = label_mismatches == 0 && score_mismatches == 0 && decided > pixels * 9 / 10;
    std::printf("case %d: B=%d grid=%dx%d D=%d K=%d out=%dx%d dtype=%d window=%d temperature=%g: "
                "%zu/%zu decided labels differ, %zu scores out of tolerance (max error %.3g) %s\n",
                index, c.batch, c.grid_h, c.grid_w, c.dim, c.prompts, c.out_h, c.out_w, c.dtype, c.use_window,
                c.temperature, label_mismatches, decided, score_mismatches, worst, ok ? "ok" : "FAIL");
    return ok;
}

bool invalid_arguments_are_rejected() {
    float dummy = 0.0f;
    // uint8 labels cannot hold 300 prompts.
    const int status = clippy_seg_head(&dummy, 1, nullptr, &dummy, CLIPPY_DTYPE_FLOAT32, &dummy, CLIPPY_DTYPE_FLOAT32,
                                       1, 2, 2, 4, 300, 4, 4, nullptr, 0.0f, &dummy, 1 << 20, nullptr);
    const double bad_window[4] = {0.5, 0.0, 0.5, 1.0};
    const int window_status = clippy_seg_head(&dummy, 1, nullptr, &dummy, CLIPPY_DTYPE_FLOAT32, &dummy,
                                              CLIPPY_DTYPE_FLOAT32, 1, 2, 2, 4, 3, 4, 4, bad_window, 0.0f, &dummy,
                                              1 << 20, nullptr);
    const bool ok = status == CLIPPY_STATUS_INVALID_ARGUMENT && window_status == CLIPPY_STATUS_INVALID_ARGUMENT &&
                    clippy_last_error()[0] != '\0';
    std::printf("invalid arguments rejected: %s\n", ok ? "ok" : "FAIL");
    return ok;
}

}  // namespace

int main() {
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
        std::printf("no CUDA device: test skipped\n");
        return 77;
    }
    if (clippy_rt_native_abi_version() != CLIPPY_RT_NATIVE_ABI_VERSION) {
        std::printf("ABI version mismatch\n");
        return 1;
    }
    const Case cases[] = {
        {1, 1, 1, 16, 2, 5, 3, CLIPPY_DTYPE_FLOAT32, false, {0, 0, 1, 1}, 0.0f},
        {2, 7, 9, 64, 21, 30, 25, CLIPPY_DTYPE_FLOAT32, false, {0, 0, 1, 1}, 0.0f},
        {2, 14, 14, 768, 21, 224, 224, CLIPPY_DTYPE_FLOAT16, false, {0, 0, 1, 1}, 0.0f},
        {1, 28, 37, 128, 150, 61, 45, CLIPPY_DTYPE_BFLOAT16, true, {0.125f, 0.0f, 0.875f, 1.0f}, 0.0f},
        {1, 14, 14, 64, 21, 100, 133, CLIPPY_DTYPE_FLOAT16, true, {0.0f, 0.2f, 1.0f, 0.8f}, 100.0f},
        {1, 5, 9, 32, 1000, 11, 7, CLIPPY_DTYPE_FLOAT32, false, {0, 0, 1, 1}, 0.0f},
    };
    bool ok = invalid_arguments_are_rejected();
    int index = 0;
    for (const Case& c : cases) {
        ok = run_case(c, index++) && ok;
    }
    std::printf("%s\n", ok ? "all passed" : "FAILED");
    return ok ? 0 : 1;
}
