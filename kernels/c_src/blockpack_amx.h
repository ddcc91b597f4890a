/* edgespool AMX prefill tiles for the x16 q8_0 / int8 weights (Intel AMX-INT8: Sapphire Rapids and later Xeons),
 * included by blockpack.h in AVX-512 builds compiled with -mamx-tile -mamx-int8 (-march=native on such a host).
 *
 * The x16 layout is already AMX's B-tile layout: a 32-value block of a row group is 8 chunks of 64 bytes, chunk c
 * holding codes 4c..4c+3 of each of the 16 rows (row r at byte 4r), i.e. 8 tile rows of 16 columns x 4 bytes.
 * One `tdpbsud` multiplies an A tile of 16 activation rows x 32 signed codes (one block of each row, row stride n)
 * by that B tile of unsigned codes (u8 = w ^ 0x80) into a C tile of 16 x 16 int32: exactly the 16 x 16 block dots
 * the AVX-512 tile computes with 8 x 16 `vpdpbusd` per block.  C goes to a 1 KiB stack buffer and the float steps
 * are the AVX-512 tile's per lane (acc = dot + so, y += float(acc) x (w scale x a scale), block after block), so the
 * result is bit-identical to pk_tile's.  Activation rows come 16 at a time; fewer than 16 left go to pk_tile.
 *
 * Use needs the CPU (cpuid 7.0 EDX bits 24 / 25), the kernel's permission for the tile data (arch_prctl
 * ARCH_REQ_XCOMP_PERM, Linux 5.16+), and a self-check at first use: one row group against pk_tile bit for bit,
 * q8_0 and int8; any failure leaves the AVX-512 tiles in charge.  Opt-in (EDGESPOOL_AMX=1) since the first run on
 * an AMX host (2026-12-07, the lent H100 machine's Xeon): bit-identical there, but prefill 0.97-0.98x the AVX-512
 * VNNI tiles at 1 and 16 threads (the float steps per block, not the int8 dots, bound the tile). */
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ES_AMX 1
typedef struct {
    uint8_t palette, start_row, rsvd[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((packed)) amx_cfg_t;

/* tiles: 0 / 3 = C (16 x 16 int32) of blocks b / b + 1, 1 / 4 = A (16 rows x 32 codes), 2 / 5 = B (8 x 64 bytes) */
static void amx_config(void) {
    amx_cfg_t c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 6; t += 3) {
        c.rows[t] = 16, c.colsb[t] = 64;
        c.rows[t + 1] = 16, c.colsb[t + 1] = 32;
        c.rows[t + 2] = 8, c.colsb[t + 2] = 64;
    }
    _tile_loadconfig(&c);
}

/* the float steps of block b (its x16 bytes at blk: q8_0's 16 f16 scales first) for 16 activation rows from the
 * C tile in cb (16 x 16 int32) */
AI void amx_post(const int32_t *cb, __m512 *y, const uint8_t *blk, int i8, const float *ad, const int32_t *so,
                 long nb, int b) {
    const __m512 vs = i8 ? _mm512_setzero_ps() : _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)blk));
    for (int i = 0; i < 16; i++) {
        __m512i acc = _mm512_add_epi32(_mm512_load_si512((const void *)(cb + 16 * i)),
                                       _mm512_set1_epi32(so[i * nb + b]));
        __m512 t = _mm512_cvtepi32_ps(acc), da = _mm512_set1_ps(ad[i * nb + b]);
        y[i] = i8 ? _mm512_fmadd_ps(t, da, y[i]) : _mm512_fmadd_ps(t, _mm512_mul_ps(vs, da), y[i]);
    }
}

/* One row group (gp: its x16 bytes) x activation rows 0..15 (codes aq, row stride n; scales ad and offsets so,
 * row stride nb): out[i * ystride + r] for the first `valid` rows r.  The tile config must be loaded. */
static void amx_tile_q8(int wt, const uint8_t *gp, int nb, const int8_t *aq, int n, const float *ad,
                        const int32_t *so, float *out, long ystride, int valid) {
    const int i8 = wt == W_INT8;
    const long bb = i8 ? 512 : 544, co = i8 ? 0 : 32;
    const uint8_t *base = gp + (i8 ? 64 : 0);
    int32_t cb[2][256] __attribute__((aligned(64)));
    __m512 y[16];
    for (int i = 0; i < 16; i++) y[i] = _mm512_setzero_ps();
    int b = 0;
    for (; b + 2 <= nb; b += 2) {
        const uint8_t *b0 = base + b * bb, *b1 = b0 + bb;
        _tile_zero(0);
        _tile_zero(3);
        _tile_loadd(1, aq + 32 * b, n);
        _tile_loadd(2, b0 + co, 64);
        _tile_loadd(4, aq + 32 * (b + 1), n);
        _tile_loadd(5, b1 + co, 64);
        _tile_dpbsud(0, 1, 2);
        _tile_dpbsud(3, 4, 5);
        _tile_stored(0, cb[0], 64);
        _tile_stored(3, cb[1], 64);
        amx_post(cb[0], y, b0, i8, ad, so, nb, b);
        amx_post(cb[1], y, b1, i8, ad, so, nb, b + 1);
    }
    if (b < nb) {
        const uint8_t *b0 = base + b * bb;
        _tile_zero(0);
        _tile_loadd(1, aq + 32 * b, n);
        _tile_loadd(2, b0 + co, 64);
        _tile_dpbsud(0, 1, 2);
        _tile_stored(0, cb[0], 64);
        amx_post(cb[0], y, b0, i8, ad, so, nb, b);
    }
    __m512 rs = i8 ? _mm512_loadu_ps((const float *)gp) : _mm512_setzero_ps();
    int nv = valid < 16 ? valid : 16;
    for (int i = 0; i < 16; i++) {
        __m512 v = i8 ? _mm512_mul_ps(y[i], rs) : y[i];
        float *o = out + (long)i * ystride;
        if (nv >= 16) _mm512_storeu_ps(o, v);
        else _mm512_mask_storeu_ps(o, (__mmask16)((1u << nv) - 1u), v);
    }
}

/* 1 when the self-check's AMX results equal pk_tile's bit for bit (q8_0 and int8, one row group, 3 blocks) */
static int amx_selfcheck(void) {
    enum { N = 96, NB = N / 32 };
    static const int wts[2] = {W_Q8_0, W_INT8};
    uint8_t w[64 + NB * 544] __attribute__((aligned(64)));
    int8_t q[16 * N];
    float d[16 * NB], y0[16 * 16], y1[16 * 16];
    int32_t s[16 * NB], so[16 * NB];
    uint32_t r = 12345u;
    for (int k = 0; k < 2; k++) {
        const int wt = wts[k];
        for (size_t i = 0; i < sizeof w; i++) r = r * 1664525u + 1013904223u, w[i] = (uint8_t)(r >> 24);
        const long bb = wt == W_INT8 ? 512 : 544;
        for (int b = 0; b < NB; b++) /* sane scales: f16 0.0039-0.5 (q8_0), f32 row scales (int8) */
            for (int l = 0; l < 16 && wt == W_Q8_0; l++) {
                uint16_t h = (uint16_t)(0x1C00 + (l * 97 + b * 31) % 0x1400);
                memcpy(w + b * bb + 2 * l, &h, 2);
            }
        for (int l = 0; l < 16 && wt == W_INT8; l++) {
            float f = 0.001f * (float)(l + 1);
            memcpy(w + 4 * l, &f, 4);
        }
        for (int i = 0; i < 16; i++)
            for (int b = 0; b < NB; b++) {
                int sum = 0;
                for (int t = 0; t < 32; t++) {
                    r = r * 1664525u + 1013904223u;
                    int8_t v = (int8_t)((int)(r >> 24) % 255 - 127);
                    q[i * N + 32 * b + t] = v, sum += v;
                }
                d[i * NB + b] = 0.01f + 0.001f * (float)(i + b), s[i * NB + b] = sum, so[i * NB + b] = -128 * sum;
            }
        amx_config();
        amx_tile_q8(wt, w, NB, q, N, d, so, y0, 16, 16);
        _tile_release();
        for (int i0 = 0; i0 < 16; i0 += MAXNA) {
            act_t a[MAXNA];
            const int32_t *sp[MAXNA];
            for (int i = 0; i < MAXNA; i++)
                a[i] = (act_t){q + (i0 + i) * N, d + (i0 + i) * NB, s + (i0 + i) * NB, d}, sp[i] = so + (i0 + i) * NB;
            pk_tile(wt, w, 0, NB, a, sp, y1 + i0 * 16, 16, 16, 1, MAXNA);
        }
        if (memcmp(y0, y1, sizeof y0)) return 0;
    }
    return 1;
}

static int es_amx_state;
static pthread_once_t es_amx_once = PTHREAD_ONCE_INIT;
static void amx_init(void) {
    const char *e = getenv("EDGESPOOL_AMX");
    unsigned a, b, c, d;
    if (!e || e[0] != '1') return; /* opt-in: measured no faster than the AVX-512 tiles (docs/KERNELS.md) */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 24)) || !(d & (1u << 25))) return;
    if (syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) != 0) return;
    es_amx_state = amx_selfcheck();
}
/* Whether the AMX tiles run the q8_0 / int8 prefill here (checked once a process). */
static int amx_on(void) {
    pthread_once(&es_amx_once, amx_init);
    return es_amx_state;
}
