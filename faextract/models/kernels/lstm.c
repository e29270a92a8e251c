/* Fused LSTM pointwise step (sigmoid gates, tanh candidate and output, optional peepholes)
 * for float32 NCHW tensors on the CPU: one pass forward, one pass backward.
 *
 * Layout: z (B, 4F, H, W) gate pre-activations in order (i, f, c, o), to which bias (4F) is
 * added; c, c_new, h, dh, dc (B, F, H, W); peep (3, F) for (i, f, o). Work is split by rows r = b * F + f (HW contiguous
 * values each): a call handles rows [row0, row1), so callers run disjoint ranges in parallel.
 * The backward recomputes the activations from z and c instead of storing them (compute is
 * cheap here, memory traffic is not). Compiled and called by faextract/models/kernels/__init__.py;
 * its flags matter: without -fno-trapping-math GCC leaves these loops scalar, and ISO C mode
 * (-std=c11) turns off the fused multiply-adds.
 */
#include "common.h"

void faex_lstm_forward(const float *restrict z, const float *restrict bias,
                       const float *restrict c, const float *restrict peep,
                       float *restrict h, float *restrict c_new,
                       int64_t F, int64_t HW, int64_t row0, int64_t row1)
{
    for (int64_t r = row0; r < row1; ++r) {
        const int64_t b = r / F, f = r % F;
        const float *zi = z + (b * 4 * F + f) * HW;
        const float *zf = zi + F * HW, *zc = zf + F * HW, *zo = zc + F * HW;
        const float *cp = c + r * HW;
        float *hp = h + r * HW, *cn = c_new + r * HW;
        const float pi = peep[f], pf = peep[F + f], po = peep[2 * F + f];
        const float bi = bias[f], bf = bias[F + f], bc = bias[2 * F + f], bo = bias[3 * F + f];
        for (int64_t k0 = 0; k0 < HW; k0 += BLK) {
            const int64_t n = HW - k0 < BLK ? HW - k0 : BLK;
            const float *zi_ = zi + k0, *zf_ = zf + k0, *zc_ = zc + k0, *zo_ = zo + k0;
            const float *cp_ = cp + k0;
            float *hp_ = hp + k0, *cn_ = cn + k0;
            float ig[BLK], fg[BLK];
#pragma omp simd
            for (int64_t j = 0; j < n; ++j) {
                ig[j] = sigmoid(zi_[j] + bi + pi * cp_[j]);
                fg[j] = sigmoid(zf_[j] + bf + pf * cp_[j]);
            }
#pragma omp simd
            for (int64_t j = 0; j < n; ++j) {
                const float cnew = fg[j] * cp_[j] + ig[j] * tanh_approx(zc_[j] + bc);
                cn_[j] = cnew;
                fg[j] = tanh_approx(cnew);
            }
#pragma omp simd
            for (int64_t j = 0; j < n; ++j)
                hp_[j] = sigmoid(zo_[j] + bo + po * cn_[j]) * fg[j];
        }
    }
}

/* sums receives per-row sums (rows, 7): the gradients of the four gate biases (i, f, c, o) and
 * of the three peepholes (i, f, o); the caller reduces them over the batch. */
void faex_lstm_backward(const float *restrict z, const float *restrict bias,
                        const float *restrict c, const float *restrict c_new,
                        const float *restrict peep,
                        const float *restrict dh, const float *restrict dcn,
                        float *restrict dz, float *restrict dc, double *restrict sums,
                        int64_t F, int64_t HW, int64_t row0, int64_t row1)
{
    for (int64_t r = row0; r < row1; ++r) {
        const int64_t b = r / F, f = r % F;
        const int64_t zoff = (b * 4 * F + f) * HW;
        const float pi = peep[f], pf = peep[F + f], po = peep[2 * F + f];
        const float bi = bias[f], bf = bias[F + f], bc = bias[2 * F + f], bo = bias[3 * F + f];
        double si = 0.0, sf = 0.0, so = 0.0, bsi = 0.0, bsf = 0.0, bsc = 0.0, bso = 0.0;
        for (int64_t k0 = 0; k0 < HW; k0 += BLK) {
            const int64_t n = HW - k0 < BLK ? HW - k0 : BLK;
            const float *zi = z + zoff + k0, *zf = zi + F * HW, *zc = zf + F * HW;
            const float *zo = zc + F * HW;
            float *dzi = dz + zoff + k0, *dzf = dzi + F * HW, *dzc = dzf + F * HW;
            float *dzo = dzc + F * HW;
            const float *cp = c + r * HW + k0, *cn = c_new + r * HW + k0;
            const float *gh = dh + r * HW + k0, *gc = dcn + r * HW + k0;
            float *dcp = dc + r * HW + k0;
            float ai[BLK], af[BLK], ag[BLK], ao[BLK], at[BLK];
#pragma omp simd
            for (int64_t j = 0; j < n; ++j) {
                ai[j] = sigmoid(zi[j] + bi + pi * cp[j]);
                af[j] = sigmoid(zf[j] + bf + pf * cp[j]);
            }
#pragma omp simd
            for (int64_t j = 0; j < n; ++j) {
                ag[j] = tanh_approx(zc[j] + bc);
                ao[j] = sigmoid(zo[j] + bo + po * cn[j]);
            }
#pragma omp simd
            for (int64_t j = 0; j < n; ++j)
                at[j] = tanh_approx(cn[j]);
#pragma omp simd reduction(+ : si, sf, so, bsi, bsf, bsc, bso)
            for (int64_t j = 0; j < n; ++j) {
                const float i = ai[j], fg = af[j], g = ag[j], o = ao[j], tc = at[j];
                const float go = gh[j] * tc * o * (1.0f - o);
                const float dct = gh[j] * o * (1.0f - tc * tc) + gc[j] + go * po;
                const float gi = dct * g * i * (1.0f - i);
                const float gf = dct * cp[j] * fg * (1.0f - fg);
                dzi[j] = gi;
                dzf[j] = gf;
                const float gg = dct * i * (1.0f - g * g);
                dzc[j] = gg;
                dzo[j] = go;
                bsi += (double)gi;
                bsf += (double)gf;
                bsc += (double)gg;
                bso += (double)go;
                dcp[j] = dct * fg + gi * pi + gf * pf;
                si += (double)(gi * cp[j]);
                sf += (double)(gf * cp[j]);
                so += (double)(go * cn[j]);
            }
        }
        double *out = sums + 7 * r;
        out[0] = bsi, out[1] = bsf, out[2] = bsc, out[3] = bso;
        out[4] = si, out[5] = sf, out[6] = so;
    }
}

