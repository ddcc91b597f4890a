/* One decoder layer for one decode row in one C call (issue 12: the numpy and Python work between the kernels of a
 * decode step did not shrink with threads).  Included at the end of blockdot.c: it runs the same entry points
 * the Python layer calls (es_linear_packed_multi, es_linear_packed, es_attention_prefill, es_silu_mul) and does
 * the elementwise work between them itself, with numpy's float32 operations in numpy's order, so the result is
 * bit-identical to the engine's Python path (runtime/decoder/engine.py) for the layers it serves:
 *
 *   h = rmsnorm(x, attn_norm)              numpy: add.reduce(x * x) (pairwise sum) / H, x * (1 / sqrt(var + eps)) * w
 *   q, k, v = h @ Wq/Wk/Wv^T (+ bias)      one pool job (es_linear_packed_multi), bias added after
 *   q, k = rope(q), rope(k)                x * cos + rotate_half(x) * sin (two products, then the add: no FMA)
 *   K[pos], V[pos] = k, v                  the layer's float32 cache rows
 *   a = attention(q, K[0..pos], V[0..pos]) es_attention_prefill with one query row
 *   x += a @ Wo^T
 *   h = rmsnorm(x, ffn_norm)
 *   g, u = h @ Wgate/Wup^T                 one pool job
 *   t = silu(g) * u                        es_silu_mul (phase 0) or the caller's numpy (phases 1 / 2)
 *   x += t @ Wdown^T
 *
 * Phase 0 runs all of it; phase 1 stops after g, u (the caller computes t with numpy's tanh, which differs from
 * tanhf in the last bit: below SILU_MIN_THREADS threads the Python path uses numpy's); phase 2 runs the down
 * projection and the residual from t.  Nothing of x is written before every check has passed and the attention
 * has succeeded, so a caller can redo the layer its own way on an error. */

typedef struct {
    int H, nh, nkv, D, I, max_len;
    float eps, scale;
    const float *attn_norm, *ffn_norm, *bq, *bk, *bv; /* biases NULL when absent */
    int wt[7];                                        /* q k v o gate up down: packed weight-type codes */
    const uint8_t *w[7];                              /* their x16 packed buffers */
    float *K, *V;                                     /* this layer's float32 cache [nkv, max_len, D] */
} es_layer_t;

/* Floats of workspace es_decoder_layer needs: h[H] q[nh D] k[nkv D] v[nkv D] a[nh D] g[I] u[I] t[I] f[H], in this
 * order (the caller of phases 1 / 2 reads g and u and writes t at these offsets). */
long es_layer_ws_floats(const es_layer_t *L) {
    return 2L * L->H + 2L * L->nh * L->D + 2L * L->nkv * L->D + 3L * L->I;
}

/* Bytes of activation scratch (8-byte aligned) es_decoder_layer needs. */
long es_layer_scratch_bytes(const es_layer_t *L) {
    int n = L->H > L->I ? L->H : L->I;
    if (L->nh * L->D > n) n = L->nh * L->D;
    return es_multi_act_bytes(n, 1, 3);
}

#pragma GCC push_options
#pragma GCC optimize("fp-contract=off") /* numpy rounds every product before the add */

/* numpy's float32 pairwise sum (pairwise_sum of loops_utils.h: 8 partial sums up to 128 values, halves in
 * multiples of 8 above), added to the reduction's identity 0 as np.add.reduce does. */
static float np_pairwise_sum(const float *a, long n) {
    if (n < 8) {
        float r = 0.f;
        for (long i = 0; i < n; i++) r += a[i];
        return r;
    }
    if (n <= 128) {
        float r[8];
        for (int j = 0; j < 8; j++) r[j] = a[j];
        long i = 8;
        for (; i < n - (n % 8); i += 8)
            for (int j = 0; j < 8; j++) r[j] += a[i + j];
        float res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) res += a[i];
        return res;
    }
    long n2 = n / 2;
    n2 -= n2 % 8;
    return np_pairwise_sum(a, n2) + np_pairwise_sum(a + n2, n - n2);
}

/* y = rmsnorm(x) * w as kernels/rmsnorm.py computes it; tmp: n floats. */
static void np_rmsnorm(const float *x, const float *w, int n, float eps, float *y, float *tmp) {
    for (int i = 0; i < n; i++) tmp[i] = x[i] * x[i];
    float var = (0.f + np_pairwise_sum(tmp, n)) / (float)n;
    float inv = 1.f / sqrtf(var + eps);
    for (int i = 0; i < n; i++) {
        float v = x[i] * inv;
        y[i] = v * w[i];
    }
}

/* es_rmsnorm_rows: rows x n values of x, each RMS-normalised and scaled by w into y exactly as kernels/rmsnorm.py
 * computes them (np_rmsnorm: numpy's pairwise sum, bit-identical), rows split over the pool (prefill: 2 x layers
 * calls of [T, H], single-threaded numpy before).  Returns 0; -1 for a width it does not serve (n < 1 or above
 * ES_RMS_MAX_N: the caller's numpy runs). */
#define ES_RMS_MAX_N 16384
typedef struct { const float *x, *w; float *y; int n; float eps; } rms_ctx_t;

static void rms_task(const void *vj, int i0, int i1) {
    const rms_ctx_t *c = (const rms_ctx_t *)((const job_t *)vj)->ctx;
    float tmp[ES_RMS_MAX_N];
    for (long r = i0; r < i1; r++)
        np_rmsnorm(c->x + r * c->n, c->w, c->n, c->eps, c->y + r * c->n, tmp);
}

int es_rmsnorm_rows(void *vp, const float *x, const float *w, float *y, long rows, int n, float eps, int nthreads) {
    if (n < 1 || n > ES_RMS_MAX_N || rows < 1 || rows > 0x7fffffff) return -1;
    pool_t *p = (pool_t *)vp;
    rms_ctx_t c = {x, w, y, n, eps};
    job_t j;
    memset(&j, 0, sizeof j);
    j.task = rms_task, j.ctx = &c, j.m = (int)rows, j.rows = (int)rows, j.tchunk = 1;
    int nth = nthreads < 1 ? 1 : nthreads;
    if (p && nth > p->nworkers + 1) nth = p->nworkers + 1;
    j.nth = nth;
    if (!p || nth == 1 || rows < 2) {
        rms_task(&j, 0, (int)rows);
        return 0;
    }
    j.tchunk = j.rows / (4 * nth) > 1 ? j.rows / (4 * nth) : 1;
    pool_try_run(p, &j);
    return 0;
}

/* x[heads, D] rotated in place like kernels/rope.py apply_rope: x * cos + rotate_half(x) * sin. */
static void np_rope(float *x, int heads, int D, const float *cos, const float *sin) {
    int half = D / 2;
    float tmp[1024];
    for (int h = 0; h < heads; h++) {
        float *xh = x + (long)h * D;
        for (int j = 0; j < D; j++) tmp[j] = xh[j];
        for (int j = 0; j < half; j++) {
            float a = tmp[j] * cos[j], b = -tmp[j + half] * sin[j];
            xh[j] = a + b;
        }
        for (int j = half; j < D; j++) {
            float a = tmp[j] * cos[j], b = tmp[j - half] * sin[j];
            xh[j] = a + b;
        }
    }
}

static void add_into(float *y, const float *b, long n) {
    for (long i = 0; i < n; i++) y[i] = y[i] + b[i];
}

#pragma GCC pop_options

/* One decoder layer for the decode row x[H] (updated in place) at position pos (its RoPE row cos / sin [D]);
 * ws: es_layer_ws_floats floats, scratch: es_layer_scratch_bytes bytes.  phase 0: the whole layer (SiLU through
 * es_silu_mul); 1: up to g, u; 2: from t (ws) to the end.  Returns 0; -1 for a shape, weight type or position
 * that does not fit (nothing written); -2 when the attention could not allocate its scores (x untouched; the
 * KV cache row written). */
int es_decoder_layer(void *vp, const es_layer_t *L, float *x, int pos, const float *cos, const float *sin,
                     float *ws, uint8_t *scratch, int nthreads, int phase) {
#ifdef ES_PACKED
    int H = L->H, nh = L->nh, nkv = L->nkv, D = L->D, I = L->I;
    if (H <= 0 || nkv <= 0 || nh % nkv || D <= 0 || D > 1024 || D % 2 || I <= 0 || pos < 0 || pos >= L->max_len ||
        phase < 0 || phase > 2)
        return -1;
    const int n_in[7] = {H, H, H, nh * D, H, H, I};
    for (int k = 0; k < 7; k++)
        if (!es_pack_kind(L->wt[k]) || n_in[k] % wt_values(L->wt[k])) return -1;
    float *h = ws, *q = h + H, *kk = q + (long)nh * D, *vv = kk + (long)nkv * D, *a = vv + (long)nkv * D;
    float *g = a + (long)nh * D, *u = g + I, *t = u + I, *f = t + I;
    if (phase != 2) {
        np_rmsnorm(x, L->attn_norm, H, L->eps, h, f);
        const int wt3[3] = {L->wt[0], L->wt[1], L->wt[2]}, rows3[3] = {nh * D, nkv * D, nkv * D};
        const uint8_t *w3[3] = {L->w[0], L->w[1], L->w[2]};
        float *y3[3] = {q, kk, vv};
        if (es_linear_packed_multi(vp, 3, wt3, w3, rows3, H, h, 1, y3, scratch, nthreads)) return -1;
        if (L->bq) add_into(q, L->bq, (long)nh * D);
        if (L->bk) add_into(kk, L->bk, (long)nkv * D);
        if (L->bv) add_into(vv, L->bv, (long)nkv * D);
        np_rope(q, nh, D, cos, sin);
        np_rope(kk, nkv, D, cos, sin);
        long hs = (long)L->max_len * D;
        for (int hk = 0; hk < nkv; hk++) {
            memcpy(L->K + hk * hs + (long)pos * D, kk + (long)hk * D, sizeof(float) * D);
            memcpy(L->V + hk * hs + (long)pos * D, vv + (long)hk * D, sizeof(float) * D);
        }
        int rc = es_attention_prefill(vp, q, L->K, hs, L->V, hs, a, 1, nh, nkv, D, pos + 1, L->scale, pos, 0,
                                      nthreads);
        if (rc) return rc;
        if (es_linear_packed(vp, L->wt[3], L->w[3], H, nh * D, a, 1, f, scratch, nthreads)) return -1;
        add_into(x, f, H);
        np_rmsnorm(x, L->ffn_norm, H, L->eps, h, f);
        const int wt2[2] = {L->wt[4], L->wt[5]}, rows2[2] = {I, I};
        const uint8_t *w2[2] = {L->w[4], L->w[5]};
        float *y2[2] = {g, u};
        es_linear_packed_multi(vp, 2, wt2, w2, rows2, H, h, 1, y2, scratch, nthreads);
        if (phase == 1) return 0;
        es_silu_mul(vp, g, u, t, I, nthreads);
    }
    es_linear_packed(vp, L->wt[6], L->w[6], H, I, t, 1, f, scratch, nthreads);
    add_into(x, f, H);
    return 0;
#else
    (void)vp; (void)L; (void)x; (void)pos; (void)cos; (void)sin; (void)ws; (void)scratch; (void)nthreads;
    (void)phase;
    return -1;
#endif
}
