/* Stride-1 depthwise 2-D convolution with zero padding, and its weight gradient, for float32
 * NCHW tensors on the CPU. oneDNN reorders NCHW planes to its blocked layout and back around
 * a depthwise convolution, which at the cells' sizes (16 channels, 64 x 64) costs ~40x a pass
 * over the tensor; these loops run over each plane directly, vectorized along rows.
 *
 * Planes p = n * C + c, each H x W in, Ho x Wo out, weights w (C, kh, kw), dilation d, padding
 * (ph, pw) before (and whatever makes Ho, Wo after). A call handles planes [p0, p1). The input
 * gradient is the forward convolution of the output gradient with the flipped kernel. */
#include <stdint.h>
#include <string.h>

void faex_depthwise_forward(const float *restrict x, const float *restrict w, float *restrict y,
                            int64_t C, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
                            int64_t kh, int64_t kw, int64_t d, int64_t ph, int64_t pw,
                            int64_t p0, int64_t p1)
{
    for (int64_t p = p0; p < p1; ++p) {
        const float *xp = x + p * H * W, *wp = w + (p % C) * kh * kw;
        float *yp = y + p * Ho * Wo;
        memset(yp, 0, Ho * Wo * sizeof *yp);
        for (int64_t r = 0; r < Ho; ++r) {
            float *yr = yp + r * Wo;
            for (int64_t i = 0; i < kh; ++i) {
                const int64_t rr = r + i * d - ph;
                if (rr < 0 || rr >= H)
                    continue;
                const float *xr = xp + rr * W;
                for (int64_t j = 0; j < kw; ++j) {
                    const float wij = wp[i * kw + j];
                    const int64_t s = j * d - pw; /* y[col] += wij * x[col + s] */
                    const int64_t lo = s < 0 ? -s : 0, hi = W - s < Wo ? W - s : Wo;
#pragma omp simd
                    for (int64_t col = lo; col < hi; ++col)
                        yr[col] += wij * xr[col + s];
                }
            }
        }
    }
}

/* gw receives per-plane sums (planes, kh * kw); the caller adds them up over the batch. */
void faex_depthwise_weight_grad(const float *restrict x, const float *restrict g,
                                double *restrict gw, int64_t H, int64_t W, int64_t Ho,
                                int64_t Wo, int64_t kh, int64_t kw, int64_t d, int64_t ph,
                                int64_t pw, int64_t p0, int64_t p1)
{
    for (int64_t p = p0; p < p1; ++p) {
        const float *xp = x + p * H * W, *gp = g + p * Ho * Wo;
        for (int64_t i = 0; i < kh; ++i) {
            for (int64_t j = 0; j < kw; ++j) {
                const int64_t s = j * d - pw;
                const int64_t lo = s < 0 ? -s : 0, hi = W - s < Wo ? W - s : Wo;
                double acc = 0.0;
                for (int64_t r = 0; r < Ho; ++r) {
                    const int64_t rr = r + i * d - ph;
                    if (rr < 0 || rr >= H)
                        continue;
                    const float *xr = xp + rr * W, *gr = gp + r * Wo;
                    float part = 0.0f;
#pragma omp simd reduction(+ : part)
                    for (int64_t col = lo; col < hi; ++col)
                        part += gr[col] * xr[col + s];
                    acc += part;
                }
                gw[p * kh * kw + i * kw + j] = acc;
            }
        }
    }
}
