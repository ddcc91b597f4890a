/* CMSIS-NN-style int8 kernels (edgespool's own, written in the style of Arm's CMSIS-NN s8 kernels: im2col into a
   q15 buffer with the input offset applied, weights read four at a time and sign-extended in pairs with SXTB16,
   dual 16x16 MACs with SMLAD, 2 output channels x 2 output pixels per inner loop; depthwise 3x3 with the row's
   three taps as one SMLAD + one SMLABB/SMLATB).

   Arithmetic = edgespool.runtime.cnn.executor's int8 path exactly: int32 accumulators, float32 per-channel
   multipliers, round half to even (NOT CMSIS-NN's fixed-point multiplier + shift). Weight layout of es_conv_s8 /
   es_gemm_s8 (written by mcu_c.py): per output channel a row of K = (in channels per group) * kh * kw int8 taps in
   (ic, ky, kx) order, zero-padded to k4 = K rounded up to 4, and each group of four stored as [w0, w2, w1, w3] so
   that SXTB16 gives (w0, w1) and SXTB16(ROR 8) gives (w2, w3), matching the natural-order q15 pairs of im2col. */
#include "es_kernels.h"
#include "es_simd.h"

#define AT(v, ch, y, x) ((v)->data[((ch) * (v)->h + ((y) - (v)->y0)) * (v)->w + ((x) - (v)->x0)])

/* One output pixel's receptive field (input channels [c0, c0 + ig)) as int16 (x - zin), 0 for padding taps and
   for the tail up to k4. */
static void es_im2col(const es_view *in, int16_t *col, int32_t c0, int32_t ig, int32_t oy, int32_t ox, int32_t kh,
                      int32_t kw, int32_t sh, int32_t sw, int32_t pt, int32_t pl, int32_t dh, int32_t dw,
                      int32_t zin, int32_t k4) {
    int32_t j = 0, iy0 = oy * sh - pt, ix0 = ox * sw - pl;
    if (kh == 1 && kw == 1) {
        if (iy0 >= 0 && iy0 < in->H && ix0 >= 0 && ix0 < in->W) {
            const int8_t *s = &AT(in, c0, iy0, ix0);
            int32_t plane = in->h * in->w;
            for (; j < ig; j++, s += plane) col[j] = (int16_t)(*s - zin);
        }
    } else {
        for (int32_t ic = 0; ic < ig; ic++)
            for (int32_t ky = 0; ky < kh; ky++) {
                int32_t iy = iy0 + ky * dh;
                if (iy < 0 || iy >= in->H) {
                    for (int32_t kx = 0; kx < kw; kx++) col[j++] = 0;
                    continue;
                }
                const int8_t *row = &AT(in, c0 + ic, iy, in->x0);
                for (int32_t kx = 0; kx < kw; kx++) {
                    int32_t ix = ix0 + kx * dw;
                    col[j++] = (ix < 0 || ix >= in->W) ? 0 : (int16_t)(row[ix - in->x0] - zin);
                }
            }
    }
    for (; j < k4; j++) col[j] = 0;
}

/* acc[0..3] += dot(wa, c0), dot(wa, c1), dot(wb, c0), dot(wb, c1) over k4 (multiple of 4) taps. */
static inline void es_dot_2x2(const int8_t *wa, const int8_t *wb, const int16_t *c0, const int16_t *c1, int32_t k4,
                              int32_t *acc) {
    int32_t a0 = acc[0], a1 = acc[1], b0 = acc[2], b1 = acc[3];
    for (int32_t k = 0; k < k4; k += 4) {
        uint32_t wA = es_rd32(wa + k), wB = es_rd32(wb + k);
        uint32_t wA01 = ES_SXTB16(wA), wA23 = ES_SXTB16_ROR8(wA), wB01 = ES_SXTB16(wB), wB23 = ES_SXTB16_ROR8(wB);
        uint32_t x0a = es_rd32(c0 + k), x0b = es_rd32(c0 + k + 2), x1a = es_rd32(c1 + k), x1b = es_rd32(c1 + k + 2);
        a0 = ES_SMLAD(wA01, x0a, a0); a0 = ES_SMLAD(wA23, x0b, a0);
        a1 = ES_SMLAD(wA01, x1a, a1); a1 = ES_SMLAD(wA23, x1b, a1);
        b0 = ES_SMLAD(wB01, x0a, b0); b0 = ES_SMLAD(wB23, x0b, b0);
        b1 = ES_SMLAD(wB01, x1a, b1); b1 = ES_SMLAD(wB23, x1b, b1);
    }
    acc[0] = a0; acc[1] = a1; acc[2] = b0; acc[3] = b1;
}

static inline int32_t es_dot_1x1(const int8_t *wa, const int16_t *c0, int32_t k4, int32_t a0) {
    for (int32_t k = 0; k < k4; k += 4) {
        uint32_t wA = es_rd32(wa + k);
        a0 = ES_SMLAD(ES_SXTB16(wA), es_rd32(c0 + k), a0);
        a0 = ES_SMLAD(ES_SXTB16_ROR8(wA), es_rd32(c0 + k + 2), a0);
    }
    return a0;
}

void es_conv_s8(const es_view *in, const es_view *out, es_box ob, const int8_t *wp, const int32_t *bias,
                const float *mult, int32_t zin, int32_t zout, int32_t lo, int32_t hi, int32_t cout, int32_t kh,
                int32_t kw, int32_t sh, int32_t sw, int32_t pt, int32_t pl, int32_t dh, int32_t dw, int32_t groups,
                int32_t k4, int16_t *col) {
    int32_t ig = in->c / groups, og = cout / groups;
    int32_t ow = ob.x1 - ob.x0, npx = (ob.y1 - ob.y0) * ow;
    int16_t *c0 = col, *c1 = col + k4;
    for (int32_t g = 0; g < groups; g++) {
        for (int32_t p = 0; p < npx; p += 2) {
            int32_t two = p + 1 < npx;
            int32_t oy0 = ob.y0 + p / ow, ox0 = ob.x0 + p % ow;
            int32_t oy1 = ob.y0 + (p + 1) / ow, ox1 = ob.x0 + (p + 1) % ow;
            es_im2col(in, c0, g * ig, ig, oy0, ox0, kh, kw, sh, sw, pt, pl, dh, dw, zin, k4);
            if (two) es_im2col(in, c1, g * ig, ig, oy1, ox1, kh, kw, sh, sw, pt, pl, dh, dw, zin, k4);
            int32_t o = g * og, oend = o + og, plane = out->h * out->w;
            int8_t *y0 = &AT(out, 0, oy0, ox0), *y1 = two ? &AT(out, 0, oy1, ox1) : y0;
            for (; o + 1 < oend; o += 2) {
                int32_t acc[4] = {bias[o], bias[o], bias[o + 1], bias[o + 1]};
                if (two) {
                    es_dot_2x2(wp + o * k4, wp + (o + 1) * k4, c0, c1, k4, acc);
                } else {
                    acc[0] = es_dot_1x1(wp + o * k4, c0, k4, acc[0]);
                    acc[2] = es_dot_1x1(wp + (o + 1) * k4, c0, k4, acc[2]);
                }
                y0[o * plane] = es_requant((float)acc[0] * mult[o], zout, lo, hi);
                y0[(o + 1) * plane] = es_requant((float)acc[2] * mult[o + 1], zout, lo, hi);
                if (two) {
                    y1[o * plane] = es_requant((float)acc[1] * mult[o], zout, lo, hi);
                    y1[(o + 1) * plane] = es_requant((float)acc[3] * mult[o + 1], zout, lo, hi);
                }
            }
            if (o < oend) {
                y0[o * plane] = es_requant((float)es_dot_1x1(wp + o * k4, c0, k4, bias[o]) * mult[o], zout,
                                           lo, hi);
                if (two)
                    y1[o * plane] = es_requant((float)es_dot_1x1(wp + o * k4, c1, k4, bias[o]) * mult[o],
                                                      zout, lo, hi);
            }
        }
    }
}

/* Input row iy of channel c, columns [ixa, ixa + n), into dst; columns (or the whole row) outside the tensor are
   the padding, written as zin (whose offset-corrected value x - zin is 0). */
static void es_dw_fill(int8_t *dst, const es_view *in, int32_t c, int32_t iy, int32_t ixa, int32_t n, int32_t zin) {
    int32_t a = 0, e = n;
    if (iy < 0 || iy >= in->H) {
        e = 0;
    } else {
        if (ixa < 0) a = -ixa < n ? -ixa : n;
        if (ixa + n > in->W) e = in->W - ixa > a ? in->W - ixa : a;
        const int8_t *src = &AT(in, c, iy, ixa + a);
        int32_t j = a;
        for (; j + 4 <= e; j += 4, src += 4) {  /* word copies (unaligned LDR/STR are fine on M4/M7) */
            uint32_t v = es_rd32(src);
            memcpy(dst + j, &v, 4);
        }
        for (; j < e; j++) dst[j] = *src++;
    }
    for (int32_t j = 0; j < a; j++) dst[j] = (int8_t)zin;
    for (int32_t j = e; j < n; j++) dst[j] = (int8_t)zin;
}

/* Depthwise (multiplier 1) 3x3, dilation 1, stride s in both axes. The three input rows an output row needs sit in
   a 3-row rolling buffer (`rows`, 3 * row stride bytes of scratch) with the padding written as zin, so every pixel
   takes one path: per input row one 4-byte load, SXTB16 -> (x0, x2) and (x1, x3); taps 0 and 2 by one SMLAD with
   (w0, w2), tap 1 by SMLABB/SMLATB; at stride 1 two output pixels share the loads. The bias absorbs the input
   offset (bias - zin * sum(w)), exact in int32. */
void es_dwconv3x3_s8(const es_view *in, const es_view *out, es_box ob, const int8_t *w, const int32_t *bias,
                     const float *mult, int32_t zin, int32_t zout, int32_t lo, int32_t hi, int32_t s, int32_t pt,
                     int32_t pl, int8_t *rows) {
    int32_t n = ob.x1 - ob.x0, ncols = (n - 1) * s + 3, rs = (ncols + 4 + 3) & ~3, ixa = ob.x0 * s - pl;
    for (int32_t c = 0; c < in->c; c++) {
        const int8_t *wc = w + c * 9;
        uint32_t w0 = es_pack16(wc[0], wc[2]), w1 = es_pack16(wc[3], wc[5]), w2 = es_pack16(wc[6], wc[8]);
        uint32_t wm01 = es_pack16(wc[1], wc[4]), wm2 = es_pack16(wc[7], 0);  /* middle taps of rows 0, 1 / row 2 */
        int32_t wsum = 0;
        for (int32_t k = 0; k < 9; k++) wsum += wc[k];
        int32_t bin = bias[c] - zin * wsum;
        float m = mult[c];
        int32_t held[3] = {-0x40000000, -0x40000000, -0x40000000};  /* input row each slot holds */
        int8_t *yrow = &AT(out, c, ob.y0, ob.x0);
        for (int32_t oy = ob.y0; oy < ob.y1; oy++, yrow += out->w) {
            const int8_t *p[3];
            for (int32_t r = 0; r < 3; r++) {
                int32_t iy = oy * s - pt + r, slot = (iy + 3 * 4096) % 3;
                if (held[slot] != iy) {
                    es_dw_fill(rows + slot * rs, in, c, iy, ixa, ncols, zin);
                    held[slot] = iy;
                }
                p[r] = rows + slot * rs;
            }
            const int8_t *p0 = p[0], *p1 = p[1], *p2 = p[2];
            int8_t *y = yrow;
            int32_t k = 0;
            if (s == 1) {
                for (; k + 1 < n; k += 2, y += 2) {
                    int32_t a0 = bin, a1 = bin;
                    uint32_t v = es_rd32(p0 + k), e = ES_SXTB16(v), o = ES_SXTB16_ROR8(v);  /* (x0,x2), (x1,x3) */
                    a0 = ES_SMLAD(e, w0, a0); a0 = ES_SMLABB(o, wm01, a0);
                    a1 = ES_SMLAD(o, w0, a1); a1 = ES_SMLATB(e, wm01, a1);
                    v = es_rd32(p1 + k); e = ES_SXTB16(v); o = ES_SXTB16_ROR8(v);
                    a0 = ES_SMLAD(e, w1, a0); a0 = ES_SMLABT(o, wm01, a0);
                    a1 = ES_SMLAD(o, w1, a1); a1 = ES_SMLATT(e, wm01, a1);
                    v = es_rd32(p2 + k); e = ES_SXTB16(v); o = ES_SXTB16_ROR8(v);
                    a0 = ES_SMLAD(e, w2, a0); a0 = ES_SMLABB(o, wm2, a0);
                    a1 = ES_SMLAD(o, w2, a1); a1 = ES_SMLATB(e, wm2, a1);
                    y[0] = es_requant((float)a0 * m, zout, lo, hi);
                    y[1] = es_requant((float)a1 * m, zout, lo, hi);
                }
            }
            for (; k < n; k++, y++) {  /* stride 2, or the odd last pixel at stride 1 */
                int32_t j = k * s, a0 = bin;
                uint32_t v = es_rd32(p0 + j);
                a0 = ES_SMLAD(ES_SXTB16(v), w0, a0); a0 = ES_SMLABB(ES_SXTB16_ROR8(v), wm01, a0);
                v = es_rd32(p1 + j);
                a0 = ES_SMLAD(ES_SXTB16(v), w1, a0); a0 = ES_SMLABT(ES_SXTB16_ROR8(v), wm01, a0);
                v = es_rd32(p2 + j);
                a0 = ES_SMLAD(ES_SXTB16(v), w2, a0); a0 = ES_SMLABB(ES_SXTB16_ROR8(v), wm2, a0);
                y[0] = es_requant((float)a0 * m, zout, lo, hi);
            }
        }
    }
}

void es_gemm_s8(const int8_t *x, int8_t *y, int32_t k, int32_t n, const int8_t *wp, const int32_t *bias,
                const float *mult, int32_t zin, int32_t zout, int32_t lo, int32_t hi, int32_t k4, int16_t *col) {
    for (int32_t i = 0; i < k; i++) col[i] = (int16_t)(x[i] - zin);
    for (int32_t i = k; i < k4; i++) col[i] = 0;
    int32_t o = 0;
    for (; o + 1 < n; o += 2) {
        const int8_t *wa = wp + o * k4, *wb = wa + k4;
        int32_t a = bias[o], b = bias[o + 1];
        for (int32_t j = 0; j < k4; j += 4) {
            uint32_t wA = es_rd32(wa + j), wB = es_rd32(wb + j), xa = es_rd32(col + j), xb = es_rd32(col + j + 2);
            a = ES_SMLAD(ES_SXTB16(wA), xa, a); a = ES_SMLAD(ES_SXTB16_ROR8(wA), xb, a);
            b = ES_SMLAD(ES_SXTB16(wB), xa, b); b = ES_SMLAD(ES_SXTB16_ROR8(wB), xb, b);
        }
        y[o] = es_requant((float)a * mult[o], zout, lo, hi);
        y[o + 1] = es_requant((float)b * mult[o + 1], zout, lo, hi);
    }
    if (o < n) y[o] = es_requant((float)es_dot_1x1(wp + o * k4, col, k4, bias[o]) * mult[o], zout, lo, hi);
}
