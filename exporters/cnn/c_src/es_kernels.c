/* edgespool int8 CNN kernels (generated). Same arithmetic as edgespool.runtime.cnn.executor (int8 mode). */
#include "es_kernels.h"

/* round half to even without libm (|v| < 2^30 after the clamp) */
static int32_t es_rint(float v) {
    if (v > 1073741824.0f) v = 1073741824.0f;
    if (v < -1073741824.0f) v = -1073741824.0f;
    int32_t i = (int32_t)v;
    if (v < 0.0f && (float)i != v) i--;          /* floor */
    float d = v - (float)i;                       /* exact */
    if (d > 0.5f || (d == 0.5f && (i & 1))) i++;
    return i;
}
static int8_t es_sat(int32_t q, int32_t lo, int32_t hi) { return (int8_t)(q < lo ? lo : (q > hi ? hi : q)); }
#define AT(v, ch, y, x) ((v)->data[((ch) * (v)->h + ((y) - (v)->y0)) * (v)->w + ((x) - (v)->x0)])
/* Run BODY for each in-bounds tap (iy, ix) of output (oy, ox)'s kh x kw window (stride s, padding p, dilation d);
   ky and kx are the tap's indices. Out-of-bounds taps (the padding) are skipped. */
#define ES_FOR_TAPS(in, oy, ox, kh, kw, sh, sw, pt, pl, dh, dw, BODY)                                          \
    for (int32_t ky = 0; ky < (kh); ky++) {                                                                     \
        int32_t iy = (oy) * (sh) - (pt) + ky * (dh);                                                            \
        if (iy < 0 || iy >= (in)->H) continue;                                                                  \
        for (int32_t kx = 0; kx < (kw); kx++) {                                                                 \
            int32_t ix = (ox) * (sw) - (pl) + kx * (dw);                                                        \
            if (ix < 0 || ix >= (in)->W) continue;                                                              \
            BODY                                                                                                \
        }                                                                                                       \
    }

void es_conv2d(const es_view *in, const es_view *out, es_box ob, const int8_t *w, const int32_t *bias,
               const float *mult, int32_t zin, int32_t zout, int32_t lo, int32_t hi, int32_t cout, int32_t kh,
               int32_t kw, int32_t sh, int32_t sw, int32_t pt, int32_t pl, int32_t dh, int32_t dw, int32_t groups) {
    int32_t ig = in->c / groups, og = cout / groups;
    for (int32_t o = 0; o < cout; o++) {
        int32_t g = o / og;
        const int8_t *wo = w + o * ig * kh * kw;
        for (int32_t oy = ob.y0; oy < ob.y1; oy++) {
            for (int32_t ox = ob.x0; ox < ob.x1; ox++) {
                int32_t acc = bias[o];
                for (int32_t ic = 0; ic < ig; ic++) {
                    int32_t c = g * ig + ic;
                    ES_FOR_TAPS(in, oy, ox, kh, kw, sh, sw, pt, pl, dh, dw,
                                acc += ((int32_t)AT(in, c, iy, ix) - zin) * (int32_t)wo[(ic * kh + ky) * kw + kx];)
                }
                float v = (float)acc * mult[o];
                AT(out, o, oy, ox) = es_sat(es_rint(v) + zout, lo, hi);
            }
        }
    }
}

void es_maxpool(const es_view *in, const es_view *out, es_box ob, int32_t kh, int32_t kw, int32_t sh, int32_t sw,
                int32_t pt, int32_t pl, int32_t dh, int32_t dw) {
    for (int32_t c = 0; c < in->c; c++)
        for (int32_t oy = ob.y0; oy < ob.y1; oy++)
            for (int32_t ox = ob.x0; ox < ob.x1; ox++) {
                int32_t m = -128;
                ES_FOR_TAPS(in, oy, ox, kh, kw, sh, sw, pt, pl, dh, dw, {
                    int32_t v = AT(in, c, iy, ix);
                    if (v > m) m = v;
                })
                AT(out, c, oy, ox) = (int8_t)m;
            }
}

void es_avgpool(const es_view *in, const es_view *out, es_box ob, float mult, int32_t zin, int32_t zout,
                int32_t lo, int32_t hi, int32_t kh, int32_t kw, int32_t sh, int32_t sw, int32_t pt, int32_t pl,
                int32_t include_pad) {
    for (int32_t c = 0; c < in->c; c++)
        for (int32_t oy = ob.y0; oy < ob.y1; oy++)
            for (int32_t ox = ob.x0; ox < ob.x1; ox++) {
                int32_t s = 0, n = 0;
                ES_FOR_TAPS(in, oy, ox, kh, kw, sh, sw, pt, pl, 1, 1, {
                    s += (int32_t)AT(in, c, iy, ix) - zin;
                    n++;
                })
                if (include_pad) n = kh * kw;
                float v = ((float)s * mult) / (float)n;
                AT(out, c, oy, ox) = es_sat(es_rint(v) + zout, lo, hi);
            }
}

void es_add(const es_view *a, const es_view *b, const es_view *out, es_box ob, int32_t za, int32_t zb, float m1,
            float m2, int32_t zout, int32_t lo, int32_t hi) {
    /* onnxruntime QLinearAdd's arithmetic (MLAS x86-64 AVX2 kernel; edgespool.runtime.cnn.qadd) on uint8 codes
       (int8 + 128): two fused multiply-adds (VFMA.F32 on an FPv4/FPv5 Cortex-M, libm fmaf on the host). */
    const float fx = (float)(zout + 128) - __builtin_fmaf(m1, (float)(za + 128), m2 * (float)(zb + 128));
    for (int32_t c = 0; c < out->c; c++)
        for (int32_t y = ob.y0; y < ob.y1; y++)
            for (int32_t x = ob.x0; x < ob.x1; x++) {
                float v = __builtin_fmaf((float)((int32_t)AT(a, c, y, x) + 128), m1,
                                         __builtin_fmaf((float)((int32_t)AT(b, c, y, x) + 128), m2, fx));
                int32_t q = es_rint(v);
                q = (q < 0 ? 0 : (q > 255 ? 255 : q)) - 128;
                AT(out, c, y, x) = es_sat(q, lo, hi);
            }
}

void es_mul(const es_view *a, const es_view *b, const es_view *out, es_box ob, int32_t za, int32_t zb, float m,
            int32_t zout, int32_t lo, int32_t hi) {
    int32_t bcast = (b->H == 1 && b->W == 1 && a->H * a->W > 1);
    for (int32_t c = 0; c < out->c; c++)
        for (int32_t y = ob.y0; y < ob.y1; y++)
            for (int32_t x = ob.x0; x < ob.x1; x++) {
                int32_t bv = bcast ? b->data[c] : AT(b, c, y, x);
                float v = (float)(((int32_t)AT(a, c, y, x) - za) * (bv - zb)) * m;
                AT(out, c, y, x) = es_sat(es_rint(v) + zout, lo, hi);
            }
}

void es_requant_copy(const es_view *in, const es_view *out, es_box ob, int32_t c_off, int32_t zin, float m,
                     int32_t zout) {
    for (int32_t c = 0; c < in->c; c++)
        for (int32_t y = ob.y0; y < ob.y1; y++)
            for (int32_t x = ob.x0; x < ob.x1; x++) {
                float v = (float)((int32_t)AT(in, c, y, x) - zin) * m;
                AT(out, c + c_off, y, x) = es_sat(es_rint(v) + zout, -128, 127);
            }
}

void es_lut(const es_view *in, const es_view *out, es_box ob, const int8_t *lut) {
    for (int32_t c = 0; c < in->c; c++)
        for (int32_t y = ob.y0; y < ob.y1; y++)
            for (int32_t x = ob.x0; x < ob.x1; x++) AT(out, c, y, x) = lut[(int32_t)AT(in, c, y, x) + 128];
}

void es_gemm(const int8_t *x, int8_t *y, int32_t k, int32_t n, const int8_t *w, const int32_t *bias,
             const float *mult, int32_t zin, int32_t zout, int32_t lo, int32_t hi) {
    for (int32_t o = 0; o < n; o++) {
        int32_t acc = bias[o];
        const int8_t *wo = w + o * k;
        for (int32_t i = 0; i < k; i++) acc += ((int32_t)x[i] - zin) * (int32_t)wo[i];
        y[o] = es_sat(es_rint((float)acc * mult[o]) + zout, lo, hi);
    }
}
