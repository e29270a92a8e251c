/* Helpers shared by the kernels of this folder (static inline: each source gets its own copy). */
#ifndef FAEXTRACT_KERNELS_COMMON_H
#define FAEXTRACT_KERNELS_COMMON_H

#include <stdint.h>

/* exp(x) = 2^n exp(r), |r| <= ln2 / 2, Cephes' polynomial: relative error ~1e-7, no branches,
 * so that the loops below vectorize. */
static inline float exp_approx(float x)
{
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * r * r + r + 1.0f;
    union { int32_t i; float f; } scale = {((int32_t)n + 127) << 23};
    return y * scale.f;
}

static inline float sigmoid(float x) { return 1.0f / (1.0f + exp_approx(-x)); }

static inline float tanh_approx(float x) { return 1.0f - 2.0f / (exp_approx(2.0f * x) + 1.0f); }

/* Loops run over blocks of BLK values, one activation per loop: an exp() is a long chain of
 * dependent instructions, and a loop body holding all five of them is latency-bound (measured
 * 2.5x slower than these short loops, whose iterations the CPU overlaps). */
enum { BLK = 256 };

#endif
