/* MinConvGRU / MinConvLSTM on the CPU: gate coefficients and the linear recurrence
 * h_t = a_t h_{t-1} + b_t in one pass over time forward, and one reverse pass backward.
 *
 * PyTorch computes the coefficients and the scan as a dozen passes over whole (B, T, F, H, W)
 * tensors; here each lane's state stays in a small stack array while time advances, so the
 * forward reads the gate pre-activations k once and writes h once, and the backward reads k,
 * h and dh once and writes dk once, recomputing the gates instead of storing them.
 *
 * Modes (k's gate blocks, each F channels, in this order):
 *   0  MinConvGRU (z, h~):   a = 1 - sigmoid(z),  b = sigmoid(z) g(h~)
 *   1  MinConvLSTM (f, i, h~): f' = s(f) / (s(f) + s(i)),  a = f',  b = (1 - f') g(h~)
 *   2  MinConvLSTM, exponential gating: f' = sigmoid(f - i),  a = f',  b = (1 - f') g(h~)
 * with g(x) = x + 0.5 for x >= 0, sigmoid(x) otherwise.
 *
 * Layout: lanes are (b, o, i), i contiguous; k at b*kB + t*kT + o*kO + i, gate j adds j*kG;
 * h and dh at b*hB + t*hT + o*hO + i; h0 and dh0 at b*nO*nI + o*hO + i. For NCHW tensors
 * o = channel and i = pixel; for channels-last ones (the layout oneDNN's convolution prefers)
 * o = pixel and i = channel. h keeps k's layout: writing NCHW h from channels-last lanes
 * (stride H*W between neighbouring lanes) ran ~1.7x slower. Rows r = b*nO + o, a call handles
 * rows [row0, row1). h0 and dh0 may be NULL (zero state / not needed).
 */
#include "common.h"

/* sigmoid(x) and its complement from one exp of a non-positive argument (no overflow). */
static inline void sigmoid_pair(float x, float *s, float *one_minus_s)
{
    const float q = exp_approx(x >= 0.0f ? -x : x); /* exp(-|x|) */
    const float r = 1.0f / (1.0f + q);
    *s = x >= 0.0f ? r : q * r;
    *one_minus_s = x >= 0.0f ? q * r : r;
}

/* g(x) and g'(x). */
static inline void g_pair(float x, float *g, float *dg)
{
    const float e = exp_approx(x >= 0.0f ? 0.0f : x);
    const float r = 1.0f / (1.0f + e);
    *g = x >= 0.0f ? x + 0.5f : e * r;
    *dg = x >= 0.0f ? 1.0f : e * r * r;
}

/* The coefficients of one time step for n lanes: a, the candidate gv = g(h~) and its slope dg,
 * and what the backward needs of the gates: for the GRU and exponential gating w = a (1 - a)
 * (d a / d gate), for the normalized LSTM wf, wi with d f'/d f = wf, d f'/d i = -wi. */
static void coefficients(int mode, const float *restrict k0, const float *restrict k1,
                         const float *restrict k2, int64_t n, float *restrict a,
                         float *restrict gv, float *restrict dg, float *restrict wf,
                         float *restrict wi)
{
    const float *kh = mode == 0 ? k1 : k2;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j)
        g_pair(kh[j], &gv[j], &dg[j]);
    if (mode == 0) {
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) {
            float s, c;
            sigmoid_pair(k0[j], &s, &c);
            a[j] = c;
            wf[j] = s * c;
        }
    } else if (mode == 2) {
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) {
            float s, c;
            sigmoid_pair(k0[j] - k1[j], &s, &c);
            a[j] = s;
            wf[j] = s * c;
        }
    } else {
        /* f' = 1 / (1 + s(i)/s(f)), s(i)/s(f) = exp(min(i,0) - min(f,0)) (1+e^-|f|)/(1+e^-|i|):
         * every exp but the first has a non-positive argument, and that one is clamped. */
        float qf[BLK], qi[BLK];
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) {
            qf[j] = exp_approx(k0[j] >= 0.0f ? -k0[j] : k0[j]);
            qi[j] = exp_approx(k1[j] >= 0.0f ? -k1[j] : k1[j]);
        }
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) {
            const float mi = k1[j] < 0.0f ? k1[j] : 0.0f, mf = k0[j] < 0.0f ? k0[j] : 0.0f;
            const float ratio = exp_approx(mi - mf) * (1.0f + qf[j]) / (1.0f + qi[j]);
            const float fp = 1.0f / (1.0f + ratio);
            const float w = fp * (1.0f - fp);
            /* 1 - s(x) = (x >= 0 ? e^-|x| : 1) / (1 + e^-|x|) */
            const float cf = (k0[j] >= 0.0f ? qf[j] : 1.0f) / (1.0f + qf[j]);
            const float ci = (k1[j] >= 0.0f ? qi[j] : 1.0f) / (1.0f + qi[j]);
            a[j] = fp;
            wf[j] = w * cf;
            wi[j] = w * ci;
        }
    }
}

/* Lanes are processed in groups of consecutive rows holding at most CAP values, time innermost
 * over the group: each step then reads one contiguous stretch per gate block (R rows x nI),
 * which the hardware prefetchers follow. One row at a time would jump a whole time slice
 * (0.5 MB at the benchmark's size) between steps, and ran latency-bound at a third the speed. */
enum { CAP = 4096 };

struct group {
    int64_t b, o, rows, i0, m; /* rows o..o+rows-1 of batch b, lanes i0..i0+m-1 of each */
};

/* The next group starting at row *r (advances *r and *i0). */
static struct group next_group(int64_t *r, int64_t *i0, int64_t row1, int64_t nO, int64_t nI)
{
    struct group g = {*r / nO, *r % nO, 1, *i0, nI};
    if (nI <= CAP) {
        int64_t rows = CAP / nI;
        rows = rows < row1 - *r ? rows : row1 - *r;
        rows = rows < nO - g.o ? rows : nO - g.o;
        g.rows = rows;
        *r += rows;
        return g;
    }
    g.m = nI - *i0 < CAP ? nI - *i0 : CAP;
    *i0 += g.m;
    if (*i0 >= nI) {
        *i0 = 0;
        *r += 1;
    }
    return g;
}

void faex_minscan_forward(const float *restrict k, const float *restrict h0, float *restrict h,
                          int64_t mode, int64_t T, int64_t nO, int64_t nI, int64_t kB,
                          int64_t kT, int64_t kO, int64_t kG, int64_t hB, int64_t hT,
                          int64_t hO, int64_t row0, int64_t row1)
{
    float state[CAP], a[BLK], gv[BLK], dg[BLK], wf[BLK], wi[BLK];
    int64_t r = row0, i0 = 0;
    while (r < row1) {
        const struct group g = next_group(&r, &i0, row1, nO, nI);
        for (int64_t q = 0; q < g.rows; ++q) {
            const float *s0 = h0 ? h0 + g.b * nO * nI + (g.o + q) * hO + g.i0 : 0;
            for (int64_t j = 0; j < g.m; ++j)
                state[q * g.m + j] = s0 ? s0[j] : 0.0f;
        }
        for (int64_t t = 0; t < T; ++t) {
            for (int64_t q = 0; q < g.rows; ++q) {
                const float *kr = k + g.b * kB + t * kT + (g.o + q) * kO + g.i0;
                float *hr = h + g.b * hB + t * hT + (g.o + q) * hO + g.i0;
                for (int64_t j0 = 0; j0 < g.m; j0 += BLK) {
                    const int64_t n = g.m - j0 < BLK ? g.m - j0 : BLK;
                    const float *kt = kr + j0;
                    float *ht = hr + j0, *st = state + q * g.m + j0;
                    coefficients((int)mode, kt, kt + kG, kt + 2 * kG, n, a, gv, dg, wf, wi);
#pragma omp simd
                    for (int64_t j = 0; j < n; ++j) {
                        st[j] = a[j] * st[j] + (1.0f - a[j]) * gv[j];
                        ht[j] = st[j];
                    }
                }
            }
        }
    }
}

/* dk receives the gradients of all gate blocks; dh0 (when not NULL) that of the initial state. */
void faex_minscan_backward(const float *restrict k, const float *restrict h0,
                           const float *restrict h, const float *restrict dh,
                           float *restrict dk, float *restrict dh0, int64_t mode, int64_t T,
                           int64_t nO, int64_t nI, int64_t kB, int64_t kT, int64_t kO,
                           int64_t kG, int64_t hB, int64_t hT, int64_t hO, int64_t row0,
                           int64_t row1)
{
    float carry[CAP], a[BLK], gv[BLK], dg[BLK], wf[BLK], wi[BLK];
    int64_t r = row0, i0 = 0;
    while (r < row1) {
        const struct group g = next_group(&r, &i0, row1, nO, nI);
        for (int64_t j = 0; j < g.rows * g.m; ++j)
            carry[j] = 0.0f;
        for (int64_t t = T - 1; t >= 0; --t) {
            for (int64_t q = 0; q < g.rows; ++q) {
                const int64_t koff = g.b * kB + t * kT + (g.o + q) * kO + g.i0;
                const int64_t hoff = g.b * hB + t * hT + (g.o + q) * hO + g.i0;
                const int64_t soff = g.b * nO * nI + (g.o + q) * hO + g.i0;
                for (int64_t j0 = 0; j0 < g.m; j0 += BLK) {
                    const int64_t n = g.m - j0 < BLK ? g.m - j0 : BLK;
                    const float *kt = k + koff + j0, *dht = dh + hoff + j0;
                    const float *hp = t > 0 ? h + hoff - hT + j0 : (h0 ? h0 + soff + j0 : 0);
                    float *d0 = dk + koff + j0, *d1 = d0 + kG, *d2 = d1 + kG;
                    float *cr = carry + q * g.m + j0;
                    coefficients((int)mode, kt, kt + kG, kt + 2 * kG, n, a, gv, dg, wf, wi);
#pragma omp simd
                    for (int64_t j = 0; j < n; ++j) {
                        const float gr = dht[j] + cr[j];
                        const float prev = hp ? hp[j] : 0.0f;
                        /* h = a prev + (1 - a) gv: dL/da = gr (prev - gv), dL/dgv = gr (1 - a) */
                        const float ga = gr * (prev - gv[j]);
                        const float dcand = gr * (1.0f - a[j]) * dg[j];
                        if (mode == 0) { /* a = 1 - sigmoid(z): da/dz = -s (1 - s) */
                            d0[j] = -ga * wf[j];
                            d1[j] = dcand;
                        } else if (mode == 2) { /* a = sigmoid(f - i) */
                            d0[j] = ga * wf[j];
                            d1[j] = -ga * wf[j];
                            d2[j] = dcand;
                        } else {
                            d0[j] = ga * wf[j];
                            d1[j] = -ga * wi[j];
                            d2[j] = dcand;
                        }
                        cr[j] = a[j] * gr;
                    }
                }
            }
        }
        if (dh0) {
            for (int64_t q = 0; q < g.rows; ++q)
                for (int64_t j = 0; j < g.m; ++j)
                    dh0[g.b * nO * nI + (g.o + q) * hO + g.i0 + j] = carry[q * g.m + j];
        }
    }
}
