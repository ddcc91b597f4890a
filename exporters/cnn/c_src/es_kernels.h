/* edgespool int8 CNN kernels (generated; see edgespool/exporters/cnn/mcu_c.py). */
#ifndef ES_KERNELS_H
#define ES_KERNELS_H
#include <stdint.h>

/* A view: buffer `data` [c][h][w] holding rows y0..y0+h-1, cols x0..x0+w-1 of a full [c][H][W] tensor. */
typedef struct { int8_t *data; int32_t c, h, w, y0, x0, H, W; } es_view;
typedef struct { int32_t y0, y1, x0, x1; } es_box;

void es_conv2d(const es_view *in, const es_view *out, es_box ob, const int8_t *w, const int32_t *bias,
               const float *mult, int32_t zin, int32_t zout, int32_t lo, int32_t hi, int32_t cout, int32_t kh,
               int32_t kw, int32_t sh, int32_t sw, int32_t pt, int32_t pl, int32_t dh, int32_t dw, int32_t groups);
void es_maxpool(const es_view *in, const es_view *out, es_box ob, int32_t kh, int32_t kw, int32_t sh, int32_t sw,
                int32_t pt, int32_t pl, int32_t dh, int32_t dw);
void es_avgpool(const es_view *in, const es_view *out, es_box ob, float mult, int32_t zin, int32_t zout,
                int32_t lo, int32_t hi, int32_t kh, int32_t kw, int32_t sh, int32_t sw, int32_t pt, int32_t pl,
                int32_t include_pad);
void es_add(const es_view *a, const es_view *b, const es_view *out, es_box ob, int32_t za, int32_t zb, float m1,
            float m2, int32_t zout, int32_t lo, int32_t hi);
void es_mul(const es_view *a, const es_view *b, const es_view *out, es_box ob, int32_t za, int32_t zb, float m,
            int32_t zout, int32_t lo, int32_t hi);
void es_requant_copy(const es_view *in, const es_view *out, es_box ob, int32_t c_off, int32_t zin, float m,
                     int32_t zout);
void es_lut(const es_view *in, const es_view *out, es_box ob, const int8_t *lut);
void es_gemm(const int8_t *x, int8_t *y, int32_t k, int32_t n, const int8_t *w, const int32_t *bias,
             const float *mult, int32_t zin, int32_t zout, int32_t lo, int32_t hi);
/* CMSIS-NN-style kernels (es_kernels_s8.c): packed weights; scratch: q15 im2col `col` (2 * k4 int16), depthwise
   row buffer `rows` (3 * row stride bytes, see es_kernels_s8.c). */
void es_conv_s8(const es_view *in, const es_view *out, es_box ob, const int8_t *wp, const int32_t *bias,
                const float *mult, int32_t zin, int32_t zout, int32_t lo, int32_t hi, int32_t cout, int32_t kh,
                int32_t kw, int32_t sh, int32_t sw, int32_t pt, int32_t pl, int32_t dh, int32_t dw, int32_t groups,
                int32_t k4, int16_t *col);
void es_dwconv3x3_s8(const es_view *in, const es_view *out, es_box ob, const int8_t *w, const int32_t *bias,
                     const float *mult, int32_t zin, int32_t zout, int32_t lo, int32_t hi, int32_t s, int32_t pt,
                     int32_t pl, int8_t *rows);
void es_gemm_s8(const int8_t *x, int8_t *y, int32_t k, int32_t n, const int8_t *wp, const int32_t *bias,
                const float *mult, int32_t zin, int32_t zout, int32_t lo, int32_t hi, int32_t k4, int16_t *col);
#endif
