/* Stride-1 depthwise 2-D convolution with zero padding, and its weight gradient, for float32
 * NCHW tensors on the CPU. oneDNN reorders NCHW planes to its blocked layout and back around
 * a depthwise convolution, which at the cells' sizes (16 channels, 64 x 64) costs ~40x a pass
 * over the tensor; these loops run over each plane directly, vectorized along rows.
 *
 * Planes p = n * C + c, each H x W in, Ho x Wo out, weights w (C, kh, kw), dilation d, padding
 * (ph, pw) before (and whatever makes Ho, Wo after). A call handles planes [p0, p1). The input
 * gradient is the forward convolution of the output gradient with the flipped kernel.
 *
 * Each plane is first copied into a zero-padded buffer, so that every tap reads a full output
 * row with no bounds: with the bounds inside the loops, rows one shorter than the output left
 * a scalar remainder per tap and row, and the kernel ran ~10x under what the loads allow. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef float v16 __attribute__((vector_size(64)));

/* xp (Hp x Wp): plane p of x at offset (ph, pw) in zeros, Hp = Ho + (kh-1) d, Wp likewise. */
static void pad_plane(const float *restrict x, float *restrict xp, int64_t H, int64_t W,
                      int64_t Hp, int64_t Wp, int64_t ph, int64_t pw)
{
    memset(xp, 0, (size_t)(Hp * Wp) * sizeof *xp);
    const int64_t c0 = pw < 0 ? -pw : 0, c1 = W < Wp - pw ? W : Wp - pw;
    if (c1 <= c0)
        return;
    for (int64_t r = 0; r < H; ++r) {
        const int64_t rp = r + ph;
        if (rp >= 0 && rp < Hp)
            memcpy(xp + rp * Wp + pw + c0, x + r * W + c0, (size_t)(c1 - c0) * sizeof *x);
    }
}

void faex_depthwise_forward(const float *restrict x, const float *restrict w, float *restrict y,
                            int64_t C, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
                            int64_t kh, int64_t kw, int64_t d, int64_t ph, int64_t pw,
                            int64_t p0, int64_t p1)
{
    const int64_t Hp = Ho + (kh - 1) * d, Wp = Wo + (kw - 1) * d;
    float *buf = malloc((size_t)(Hp * Wp) * sizeof *buf);
    if (!buf)
        abort();
    for (int64_t p = p0; p < p1; ++p) {
        const float *wp = w + (p % C) * kh * kw;
        pad_plane(x + p * H * W, buf, H, W, Hp, Wp, ph, pw);
        for (int64_t r = 0; r < Ho; ++r) {
            float *yr = y + p * Ho * Wo + r * Wo;
            const float *row = buf + r * Wp;
            int64_t c0 = 0;
            /* 16 outputs in one vector register through all taps (GCC/Clang vector types:
             * AVX-512 where there is one, pairs or quads of narrower registers otherwise). */
            for (; c0 + 16 <= Wo; c0 += 16) {
                v16 acc = {0};
                for (int64_t i = 0; i < kh; ++i)
                    for (int64_t j = 0; j < kw; ++j) {
                        v16 xv;
                        memcpy(&xv, row + i * d * Wp + j * d + c0, sizeof xv);
                        acc += wp[i * kw + j] * xv;
                    }
                memcpy(yr + c0, &acc, sizeof acc);
            }
            for (; c0 < Wo; ++c0) {
                float acc = 0.0f;
                for (int64_t i = 0; i < kh; ++i)
                    for (int64_t j = 0; j < kw; ++j)
                        acc += wp[i * kw + j] * row[i * d * Wp + j * d + c0];
                yr[c0] = acc;
            }
        }
    }
    free(buf);
}

/* gw receives per-plane sums (planes, kh * kw); the caller adds them up over the batch. */
void faex_depthwise_weight_grad(const float *restrict x, const float *restrict g,
                                double *restrict gw, int64_t H, int64_t W, int64_t Ho,
                                int64_t Wo, int64_t kh, int64_t kw, int64_t d, int64_t ph,
                                int64_t pw, int64_t p0, int64_t p1)
{
    const int64_t Hp = Ho + (kh - 1) * d, Wp = Wo + (kw - 1) * d;
    float *buf = malloc((size_t)(Hp * Wp) * sizeof *buf);
    if (!buf)
        abort();
    for (int64_t p = p0; p < p1; ++p) {
        const float *gp = g + p * Ho * Wo;
        pad_plane(x + p * H * W, buf, H, W, Hp, Wp, ph, pw);
        for (int64_t i = 0; i < kh; ++i) {
            for (int64_t j = 0; j < kw; ++j) {
                double acc = 0.0;
                for (int64_t r = 0; r < Ho; ++r) {
                    const float *xr = buf + (r + i * d) * Wp + j * d, *gr = gp + r * Wo;
                    float part = 0.0f;
#pragma omp simd reduction(+ : part)
                    for (int64_t col = 0; col < Wo; ++col)
                        part += gr[col] * xr[col];
                    acc += part;
                }
                gw[p * kh * kw + i * kw + j] = acc;
            }
        }
    }
    free(buf);
}
