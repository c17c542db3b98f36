/* One greedy step of the self draft (a cheap copy of the target's Whisper decoder) as a single call.

   Why: the draft's step in PyTorch is ~300 small operations, each dispatched from Python. The step reads
   only ~67 MB for base (49 MB of int8 weights, 18 MB of bf16 cross-attention keys/values), and reading them
   is its floor; the PyTorch step takes well above it, mostly in dispatch. Here the whole step is one OpenMP
   region, close to that floor: int8 matrix-vector products over groups of rows split between threads (AVX2
   integer products where the CPU has them, see gemv_rows), attention split by head. Figures: README, Speed.

   The draft only proposes: the target checks every token, so nothing here has to match the target's
   arithmetic. It rounds differently (fp32 activations, a polynomial exp, GELU's tanh form); what counts is
   that it agrees with the target as often as the PyTorch draft does (tests/test_native_draft.py).

   Built at first use by asr/native_draft.py with the machine's C compiler (-O3 -march=native -fopenmp) and
   loaded into the Python process after torch, so its OpenMP regions run on torch's own thread pool (the
   same libgomp.so.1), not on a second pool competing for the same cores.

   The kernel owns its calling convention: the order of its pointer tables and dims (asr_draft_layout, by
   name) and the size of its work space (asr_draft_work_size). asr/native_draft.py fills the tables by those
   names and allocates what asr_draft_work_size asks for, so neither is written down twice. */

#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

/* The version of the exported functions' signatures (asr/native_draft.py declares them to ctypes, and
   checks this first): bump it when one changes. */
#define ABI_VERSION 3

int asr_draft_abi(void) { return ABI_VERSION; }

/* Pointers per decoder layer, in this order (names below). */
enum {
    /* a linear layer is three pointers: packed int8 weights, then float32 scales and biases */
    ATTN_LN_W, ATTN_LN_B, QKV, OUT = QKV + 3,
    CROSS_LN_W = OUT + 3, CROSS_LN_B, CQ, COUT = CQ + 3,
    MLP_LN_W = COUT + 3, MLP_LN_B, FC1, FC2 = FC1 + 3,
    CROSS_KT = FC2 + 3, /* bf16, shape = (n_head, d_head, n_audio_ctx): transposed, so scores need no reductions */
    CROSS_V,  /* bf16, shape = (n_head, n_audio_ctx, d_head) */
    SELF_K,   /* fp32, shape = (n_head, n_ctx, d_head): this layer's rows of the draft's KV cache */
    SELF_V,
    N_LAYER_PTRS
};

/* Pointers shared by the layers. */
enum { TOKEN_EMB, POS_EMB, LN_W, LN_B, HEAD, N_GLOBAL_PTRS = HEAD + 2 /* the head has no biases */ };

/* Integers describing the model. */
enum { N_LAYER, D_MODEL, N_HEAD, D_FF, N_VOCAB, N_AUDIO_CTX, N_CTX, N_DIMS };

/* The slots' names, for asr/native_draft.py, which fills the tables by name; indexed by the enums above, so
   the order is theirs alone. A linear layer's slots are "<layer>.int8" (packed as below, see GROUP),
   "<layer>.scale" and "<layer>.bias"; the layers are named after the PyTorch decoder's modules. */
static const char *const LAYER_NAMES[N_LAYER_PTRS] = {
    [ATTN_LN_W] = "attn_ln.weight",
    [ATTN_LN_B] = "attn_ln.bias",
    [QKV] = "attn.qkv.int8",
    [QKV + 1] = "attn.qkv.scale",
    [QKV + 2] = "attn.qkv.bias",
    [OUT] = "attn.out.int8",
    [OUT + 1] = "attn.out.scale",
    [OUT + 2] = "attn.out.bias",
    [CROSS_LN_W] = "cross_attn_ln.weight",
    [CROSS_LN_B] = "cross_attn_ln.bias",
    [CQ] = "cross_attn.q.int8",
    [CQ + 1] = "cross_attn.q.scale",
    [CQ + 2] = "cross_attn.q.bias",
    [COUT] = "cross_attn.out.int8",
    [COUT + 1] = "cross_attn.out.scale",
    [COUT + 2] = "cross_attn.out.bias",
    [MLP_LN_W] = "mlp_ln.weight",
    [MLP_LN_B] = "mlp_ln.bias",
    [FC1] = "fc1.int8",
    [FC1 + 1] = "fc1.scale",
    [FC1 + 2] = "fc1.bias",
    [FC2] = "fc2.int8",
    [FC2 + 1] = "fc2.scale",
    [FC2 + 2] = "fc2.bias",
    [CROSS_KT] = "cross_kt",
    [CROSS_V] = "cross_v",
    [SELF_K] = "self_k",
    [SELF_V] = "self_v",
};

static const char *const GLOBAL_NAMES[N_GLOBAL_PTRS] = {
    [TOKEN_EMB] = "token_embedding.weight",
    [POS_EMB] = "positional_embedding",
    [LN_W] = "ln.weight",
    [LN_B] = "ln.bias",
    [HEAD] = "head.int8", /* the token embedding, quantised: Whisper ties its head to it */
    [HEAD + 1] = "head.scale",
};

static const char *const DIMS_NAMES[N_DIMS] = {
    [N_LAYER] = "n_layer",
    [D_MODEL] = "d_model",
    [N_HEAD] = "n_head",
    [D_FF] = "d_ff",
    [N_VOCAB] = "n_vocab",
    [N_AUDIO_CTX] = "n_audio_ctx",
    [N_CTX] = "n_ctx",
};

/* The names of `table`'s slots in order (0: the per-layer table, 1: the shared one, 2: dims), through
   `names`; returns their number, or -1 (and `names` untouched) for no such table. */
int asr_draft_layout(int table, const char *const **names) {
    switch (table) {
    case 0: *names = LAYER_NAMES; return N_LAYER_PTRS;
    case 1: *names = GLOBAL_NAMES; return N_GLOBAL_PTRS;
    case 2: *names = DIMS_NAMES; return N_DIMS;
    default: return -1;
    }
}

/* Where asr_draft_step's scratch arrays start in its work space, in floats, and where the last one ends:
   the token's state x, its layer norm h, the fused q, k, v (3 d_model), an attention output, the MLP's
   hidden layer (d_ff), and one row of scores per head (as long as the longer of the two contexts). */
struct scratch { size_t x, h, qkv, att, f, scores, end; };

static struct scratch scratch_of(const int *dims) {
    const size_t d = (size_t)dims[D_MODEL], d_ff = (size_t)dims[D_FF], n_head = (size_t)dims[N_HEAD];
    const size_t span = (size_t)(dims[N_AUDIO_CTX] > dims[N_CTX] ? dims[N_AUDIO_CTX] : dims[N_CTX]);
    struct scratch s;
    s.x = 0;
    s.h = s.x + d;
    s.qkv = s.h + d;
    s.att = s.qkv + 3 * d;
    s.f = s.att + d;
    s.scores = s.f + d_ff;
    s.end = s.scores + n_head * span;
    return s;
}

/* The floats asr_draft_step's `work` must hold for a model of these dims:
   6 * d_model + d_ff + n_head * max(n_audio_ctx, n_ctx). */
size_t asr_draft_work_size(const int *dims) { return scratch_of(dims).end; }

static inline float bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v;
    v.u = (uint32_t)h << 16;
    return v.f;
}

/* exp(x) for x <= 0 (softmax after subtracting the maximum), relative error ~2e-7; vectorises. */
static inline float exp_neg(float x) {
    x = x < -87.0f ? -87.0f : x;
    float y = x * 1.4426950408889634f;
    float n = floorf(y + 0.5f);
    float f = y - n;
    float p = 1.5353362e-4f;
    p = p * f + 1.3398874e-3f;
    p = p * f + 9.6184373e-3f;
    p = p * f + 5.5503325e-2f;
    p = p * f + 2.4022648e-1f;
    p = p * f + 6.9314720e-1f;
    p = p * f + 1.0f;
    union { int32_t i; float f; } s;
    s.i = ((int32_t)n + 127) << 23;
    return p * s.f;
}

/* GELU's tanh form: tanh(z) = 1 - 2 / (1 + exp(2z)), with exp(2z) taken as 1 / exp(-2|z|). */
static inline float gelu(float x) {
    float z = 0.7978845608f * (x + 0.044715f * x * x * x);
    float e = exp_neg(-2.0f * fabsf(z));
    float t = (1.0f - e) / (1.0f + e);
    t = z < 0.0f ? -t : t;
    return 0.5f * x * (1.0f + t);
}

static void layer_norm(const float *x, const float *w, const float *b, float *y, int d) {
    float mean = 0.0f, var = 0.0f;
    for (int i = 0; i < d; i++) mean += x[i];
    mean /= (float)d;
    for (int i = 0; i < d; i++) var += (x[i] - mean) * (x[i] - mean);
    float inv = 1.0f / sqrtf(var / (float)d + 1e-5f);
    for (int i = 0; i < d; i++) y[i] = (x[i] - mean) * inv * w[i] + b[i];
}

enum { STORE, ADD, GELU };

static inline float epilogue(float acc, const float *s, const float *b, int o) {
    return acc * s[o] + (b ? b[o] : 0.0f);
}

static inline void put(float *y, int o, float v, int mode) {
    if (mode == ADD) y[o] += v;
    else if (mode == GELU) y[o] = gelu(v);
    else y[o] = v;
}

/* An int8 matrix of shape (n_out, n_in) is laid out in groups of 16 rows (asr/native_draft.py packs it):
   group g, inputs 4i..4i+3 of its 16 rows are the 64 bytes at W + (g * n_in4 + i) * 64, where n_in4 is
   n_in / 4 rounded up to a multiple of 4 (zero-padded), rows past n_out are zeros. One 64-byte load then
   feeds 16 outputs at once: no horizontal sums, and the weights stream in order. */
#define GROUP 16

#if defined(__AVX2__)
/* x quantised to 15 bits against its largest magnitude (padding inputs 0), for AVX2's int16 products. */
static float quantise(const float *x, int n, int n_padded, int16_t *q) {
    float m = 0.0f;
    for (int i = 0; i < n; i++) m = fabsf(x[i]) > m ? fabsf(x[i]) : m;
    float step = m > 0.0f ? m / 16383.0f : 1.0f, inv = 1.0f / step;
    for (int i = 0; i < n_padded; i++) q[i] = (int16_t)(i < n ? lrintf(x[i] * inv) : 0);
    return step;
}

/* sums[0..16) = the 16 rows of group `wg` . x: per 64 weight bytes, four widenings to int16 and four
   pairwise products (vpmaddwd) against x's 4 values repeated; each int32 lane holds one row's pair of
   products. Sums move to floats every 256 blocks, before 256 x 2 x 127 x 16383 could overflow. */
static inline void dot16(const int8_t *wg, const int16_t *q, int n_in4, float step, float *sums) {
    __m256 total[4];
    for (int u = 0; u < 4; u++) total[u] = _mm256_setzero_ps();
    for (int start = 0; start < n_in4; start += 256) {
        int end = start + 256 < n_in4 ? start + 256 : n_in4;
        __m256i acc[4];
        for (int u = 0; u < 4; u++) acc[u] = _mm256_setzero_si256();
        for (int i = start; i < end; i++) {
            int64_t x4;
            memcpy(&x4, q + 4 * i, sizeof x4);
            __m256i xv = _mm256_set1_epi64x(x4);
            const int8_t *block = wg + (size_t)i * 64;
            for (int u = 0; u < 4; u++) {
                __m256i w16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(block + 16 * u)));
                acc[u] = _mm256_add_epi32(acc[u], _mm256_madd_epi16(w16, xv));
            }
        }
        for (int u = 0; u < 4; u++) total[u] = _mm256_add_ps(total[u], _mm256_cvtepi32_ps(acc[u]));
    }
    float lanes[4 * 8]; /* lane 8u + k: row 4u + k / 2 */
    for (int u = 0; u < 4; u++) _mm256_storeu_ps(lanes + 8 * u, total[u]);
    for (int r = 0; r < GROUP; r++) sums[r] = (lanes[2 * r] + lanes[2 * r + 1]) * step;
}
/* dot16 for two inputs at once: each 64-byte block of weights is widened once and multiplied by both (the
   same sums, in the same order, as dot16 gives each: a row's result does not depend on its neighbour). */
static inline void dot16_pair(const int8_t *wg, const int16_t *qa, const int16_t *qb, int n_in4, float step_a,
                              float step_b, float *sums_a, float *sums_b) {
    __m256 total_a[4], total_b[4];
    for (int u = 0; u < 4; u++) total_a[u] = total_b[u] = _mm256_setzero_ps();
    for (int start = 0; start < n_in4; start += 256) {
        int end = start + 256 < n_in4 ? start + 256 : n_in4;
        __m256i acc_a[4], acc_b[4];
        for (int u = 0; u < 4; u++) acc_a[u] = acc_b[u] = _mm256_setzero_si256();
        for (int i = start; i < end; i++) {
            int64_t xa, xb;
            memcpy(&xa, qa + 4 * i, sizeof xa);
            memcpy(&xb, qb + 4 * i, sizeof xb);
            __m256i va = _mm256_set1_epi64x(xa), vb = _mm256_set1_epi64x(xb);
            const int8_t *block = wg + (size_t)i * 64;
            for (int u = 0; u < 4; u++) {
                __m256i w16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(block + 16 * u)));
                acc_a[u] = _mm256_add_epi32(acc_a[u], _mm256_madd_epi16(w16, va));
                acc_b[u] = _mm256_add_epi32(acc_b[u], _mm256_madd_epi16(w16, vb));
            }
        }
        for (int u = 0; u < 4; u++) {
            total_a[u] = _mm256_add_ps(total_a[u], _mm256_cvtepi32_ps(acc_a[u]));
            total_b[u] = _mm256_add_ps(total_b[u], _mm256_cvtepi32_ps(acc_b[u]));
        }
    }
    float lanes_a[4 * 8], lanes_b[4 * 8];
    for (int u = 0; u < 4; u++) {
        _mm256_storeu_ps(lanes_a + 8 * u, total_a[u]);
        _mm256_storeu_ps(lanes_b + 8 * u, total_b[u]);
    }
    for (int r = 0; r < GROUP; r++) {
        sums_a[r] = (lanes_a[2 * r] + lanes_a[2 * r + 1]) * step_a;
        sums_b[r] = (lanes_b[2 * r] + lanes_b[2 * r + 1]) * step_b;
    }
}
#define HAVE_AVX2 1
#else
/* The portable path: the same layout, float products. */
static inline void dot16_float(const int8_t *wg, const float *x, int n_in, float *sums) {
    float acc[GROUP] = {0};
    for (int i = 0; i < n_in; i++) {
        const int8_t *w = wg + (size_t)(i / 4) * 64 + i % 4;
        float xi = x[i];
#pragma omp simd
        for (int r = 0; r < GROUP; r++) acc[r] += (float)w[4 * r] * xi;
    }
    for (int r = 0; r < GROUP; r++) sums[r] = acc[r];
}
#endif

/* Whether this build has the fast (AVX2) products. Without them the portable loops are slower than the
   PyTorch draft (README, Speed): asr/native_draft.py then keeps the PyTorch draft unless told otherwise. */
int asr_draft_fast(void) {
#if defined(HAVE_AVX2)
    return 1;
#else
    return 0;
#endif
}

/* y[r][o] (=, +=, = gelu) s[o] * (W[o] . x[r]) + b[o] for o < n_out and each of n_rows inputs, W packed as
   above, the weights read once for all inputs (a group of 16 rows of W stays in the cache while every input
   takes its products); y[r] does not depend on the other inputs. Called inside a parallel region: the groups
   of rows are split between its threads. */
#define MAX_ROWS 16
static void gemv_rows(const int8_t *W, const float *s, const float *b, int n_rows, float *const *x,
                      float *const *y, int n_out, int n_in, int mode) {
    int n_groups = (n_out + GROUP - 1) / GROUP, n_in4 = ((n_in + 3) / 4 + 3) / 4 * 4;
#if defined(HAVE_AVX2)
    int16_t q[n_rows][4 * n_in4];
    float step[MAX_ROWS];
    for (int r = 0; r < n_rows; r++) step[r] = quantise(x[r], n_in, 4 * n_in4, q[r]);
#endif
#pragma omp for schedule(static)
    for (int g = 0; g < n_groups; g++) {
        const int8_t *wg = W + (size_t)g * n_in4 * 64;
        int o = g * GROUP, n_out_rows = n_out - o < GROUP ? n_out - o : GROUP;
        for (int r = 0; r < n_rows; r += 2) {
            float sums[2][GROUP];
#if defined(HAVE_AVX2)
            if (r + 1 < n_rows)
                dot16_pair(wg, q[r], q[r + 1], n_in4, step[r], step[r + 1], sums[0], sums[1]);
            else
                dot16(wg, q[r], n_in4, step[r], sums[0]);
#else
            dot16_float(wg, x[r], n_in, sums[0]);
            if (r + 1 < n_rows) dot16_float(wg, x[r + 1], n_in, sums[1]);
#endif
            for (int k = 0; k < 2 && r + k < n_rows; k++)
                for (int j = 0; j < n_out_rows; j++) put(y[r + k], o + j, epilogue(sums[k][j], s, b, o + j), mode);
        }
    }
}

/* Softmax of scores[0..n) in place; returns nothing, the weights sum to 1. */
static void softmax(float *scores, int n) {
    float m = -INFINITY;
    for (int t = 0; t < n; t++) m = scores[t] > m ? scores[t] : m;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int t = 0; t < n; t++) {
        float e = exp_neg(scores[t] - m);
        scores[t] = e;
        sum += e;
    }
    float inv = 1.0f / sum;
#pragma omp simd
    for (int t = 0; t < n; t++) scores[t] *= inv;
}

/* One step for n_rows (at most MAX_ROWS) rows of one window at once: row r feeds tokens[r] at positions[r]
   through its own per-layer table tables[r] (its own KV cache; the weights and the window's cross-attention
   keys/values must be the same for every row), writes its next-token logits to logits[r] (no logits at all
   if `logits` is NULL) and uses works[r] as its work space. The weights are read once for all rows, which
   is what a step costs; a row's results do not depend on the others. */
static void step_rows(const void *const *const *tables, const void *const *globals, const int *dims, int n_rows,
                      const int *tokens, const int *positions, float *const *logits, float *const *works,
                      int n_threads) {
    const int n_layer = dims[N_LAYER], d = dims[D_MODEL], n_head = dims[N_HEAD], d_ff = dims[D_FF];
    const int n_vocab = dims[N_VOCAB], n_audio = dims[N_AUDIO_CTX], n_ctx = dims[N_CTX];
    const int dh = d / n_head;
    const int span = n_audio > n_ctx ? n_audio : n_ctx;
    const float scale = 1.0f / sqrtf((float)dh);
    const struct scratch s = scratch_of(dims);
    float *x[MAX_ROWS], *h[MAX_ROWS], *qkv[MAX_ROWS], *att[MAX_ROWS], *f[MAX_ROWS], *scores[MAX_ROWS];
    for (int r = 0; r < n_rows; r++) {
        x[r] = works[r] + s.x, h[r] = works[r] + s.h, qkv[r] = works[r] + s.qkv, att[r] = works[r] + s.att;
        f[r] = works[r] + s.f, scores[r] = works[r] + s.scores;
        const float *tok = (const float *)globals[TOKEN_EMB] + (size_t)tokens[r] * d;
        const float *pe = (const float *)globals[POS_EMB] + (size_t)positions[r] * d;
        for (int i = 0; i < d; i++) x[r][i] = tok[i] + pe[i];
    }

#pragma omp parallel num_threads(n_threads)
    {
        for (int l = 0; l < n_layer; l++) {
            const void *const *p = tables[0] + (size_t)l * N_LAYER_PTRS;
#define F32(i) ((const float *)p[i])
#define LINEAR(i) (const int8_t *)p[i], F32(i + 1), F32(i + 2)
#pragma omp single
            for (int r = 0; r < n_rows; r++) layer_norm(x[r], F32(ATTN_LN_W), F32(ATTN_LN_B), h[r], d);
            gemv_rows(LINEAR(QKV), n_rows, h, qkv, 3 * d, d, STORE);
#pragma omp for schedule(static)
            for (int rh = 0; rh < n_rows * n_head; rh++) {
                int r = rh / n_head, hd = rh % n_head, pos = positions[r];
                const void *const *pr = tables[r] + (size_t)l * N_LAYER_PTRS;
                float *K = (float *)pr[SELF_K] + (size_t)hd * n_ctx * dh;
                float *V = (float *)pr[SELF_V] + (size_t)hd * n_ctx * dh;
                const float *q = qkv[r] + hd * dh;
                memcpy(K + (size_t)pos * dh, qkv[r] + d + hd * dh, dh * sizeof(float));
                memcpy(V + (size_t)pos * dh, qkv[r] + 2 * d + hd * dh, dh * sizeof(float));
                float *sc = scores[r] + (size_t)hd * span;
                for (int t = 0; t <= pos; t++) {
                    float a = 0.0f;
#pragma omp simd reduction(+ : a)
                    for (int j = 0; j < dh; j++) a += q[j] * K[(size_t)t * dh + j];
                    sc[t] = a * scale;
                }
                softmax(sc, pos + 1);
                float *o = att[r] + hd * dh;
                for (int j = 0; j < dh; j++) o[j] = 0.0f;
                for (int t = 0; t <= pos; t++) {
                    float w = sc[t];
#pragma omp simd
                    for (int j = 0; j < dh; j++) o[j] += w * V[(size_t)t * dh + j];
                }
            }
            gemv_rows(LINEAR(OUT), n_rows, att, x, d, d, ADD);

#pragma omp single
            for (int r = 0; r < n_rows; r++) layer_norm(x[r], F32(CROSS_LN_W), F32(CROSS_LN_B), h[r], d);
            gemv_rows(LINEAR(CQ), n_rows, h, qkv, d, d, STORE);
            const uint16_t *kt = (const uint16_t *)p[CROSS_KT], *cv = (const uint16_t *)p[CROSS_V];
#pragma omp for schedule(static)
            for (int hd = 0; hd < n_head; hd++) {
                /* each row of keys and values is read once for every row's query */
                for (int r = 0; r < n_rows; r++) {
                    float *sc = scores[r] + (size_t)hd * span;
                    for (int t = 0; t < n_audio; t++) sc[t] = 0.0f;
                }
                for (int j = 0; j < dh; j++) {
                    const uint16_t *row = kt + ((size_t)hd * dh + j) * n_audio;
                    for (int r = 0; r < n_rows; r++) {
                        float *sc = scores[r] + (size_t)hd * span;
                        float qj = qkv[r][hd * dh + j] * scale;
#pragma omp simd
                        for (int t = 0; t < n_audio; t++) sc[t] += qj * bf16_to_f32(row[t]);
                    }
                }
                for (int r = 0; r < n_rows; r++) {
                    softmax(scores[r] + (size_t)hd * span, n_audio);
                    float *o = att[r] + hd * dh;
                    for (int j = 0; j < dh; j++) o[j] = 0.0f;
                }
                const uint16_t *V = cv + (size_t)hd * n_audio * dh;
                for (int t = 0; t < n_audio; t++) {
                    for (int r = 0; r < n_rows; r++) {
                        float w = scores[r][(size_t)hd * span + t];
                        float *o = att[r] + hd * dh;
#pragma omp simd
                        for (int j = 0; j < dh; j++) o[j] += w * bf16_to_f32(V[(size_t)t * dh + j]);
                    }
                }
            }
            gemv_rows(LINEAR(COUT), n_rows, att, x, d, d, ADD);

#pragma omp single
            for (int r = 0; r < n_rows; r++) layer_norm(x[r], F32(MLP_LN_W), F32(MLP_LN_B), h[r], d);
            gemv_rows(LINEAR(FC1), n_rows, h, f, d_ff, d, GELU);
            gemv_rows(LINEAR(FC2), n_rows, f, x, d, d_ff, ADD);
#undef F32
#undef LINEAR
        }
        if (logits) {
#pragma omp single
            for (int r = 0; r < n_rows; r++)
                layer_norm(x[r], (const float *)globals[LN_W], (const float *)globals[LN_B], h[r], d);
            gemv_rows((const int8_t *)globals[HEAD], (const float *)globals[HEAD + 1], NULL, n_rows, h, logits,
                      n_vocab, d, STORE);
        }
    }
}

/* Feed `token` at position `pos` (the draft's cache holds positions < pos): its keys/values go into the
   cache, and if `logits` is not NULL the next-token logits (n_vocab floats) are written there.
   work: asr_draft_work_size(dims) floats. */
void asr_draft_step(const void *const *layers, const void *const *globals, const int *dims, int token,
                    int pos, float *logits, float *work, int n_threads) {
    const void *const *tables[1] = {layers};
    float *row_logits[1] = {logits}, *works[1] = {work};
    step_rows(tables, globals, dims, 1, &token, &pos, logits ? row_logits : NULL, works, n_threads);
}

/* step_rows for the rows of one window, each row's logits bit for bit what asr_draft_step gives it alone.
   Returns 0, or -1 for too many rows. */
int asr_draft_step_rows(const void *const *const *tables, const void *const *globals, const int *dims,
                        int n_rows, const int *tokens, const int *positions, float *const *logits,
                        float *const *works, int n_threads) {
    if (n_rows < 1 || n_rows > MAX_ROWS) return -1;
    step_rows(tables, globals, dims, n_rows, tokens, positions, logits, works, n_threads);
    return 0;
}
