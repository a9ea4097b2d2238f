/* Winograd F(4x4, 3x3) tile transforms for zoo.nn.winograd (3x3 convolutions, stride 1, zero padding 1, fp32).

   Why C: the transforms are a few additions per value, but written with torch ops they are copies through memory
   (unfold, permute) that cost as much as the multiplies Winograd saves (bench/bench_winograd.py). Here each tile
   row of an image is transposed to channels-innermost in a small scratch buffer that stays in cache, and every
   transform loop runs over channels, which the compiler vectorises (8 floats at a time with AVX2). The multiplies
   themselves are batched matrix products done by torch (zoo/nn/winograd.py).

   Layouts: images are any strided (N, C, H, W) tensor, given by its element strides sn, sc, sh, sw (NCHW: torch's
   default; NHWC: channels_last, whose rows are copied as they are); a tile is 4x4 outputs (6x6 inputs with its 1-pixel halo), tiles are
   numbered p = (n * th + ti) * tw + tj with th = ceil(H / 4), tw = ceil(W / 4), and every function handles the
   tiles p0 <= p < p1 (the caller works in cache-sized chunks). Transformed tensors are (36, p1 - p0, channels): one
   matrix per position of the 6x6 transform, so the products are 36 matrix multiplies.

   Matrices (Lavin & Gray, points 0, +-1, +-2, infinity): forward Y = AT [(G g GT) . (BT d B)] A; the weight
   gradient of one tile is GT [(A dY AT) . (BT d B)] G, summed over tiles, for one (output, input) channel pair. */

#include <stdlib.h>
#include <string.h>

#define ZOO_WINOGRAD_ABI 1

int zoo_winograd_abi(void) { return ZOO_WINOGRAD_ABI; }

/* BT (6x6) applied to six vectors of C floats. */
static void bt_pass(const float* const* in, float* const* out, int C) {
  const float *z0 = in[0], *z1 = in[1], *z2 = in[2], *z3 = in[3], *z4 = in[4], *z5 = in[5];
  float *o0 = out[0], *o1 = out[1], *o2 = out[2], *o3 = out[3], *o4 = out[4], *o5 = out[5];
#pragma GCC ivdep
  for (int c = 0; c < C; c++) {
    float a0 = z0[c], a1 = z1[c], a2 = z2[c], a3 = z3[c], a4 = z4[c], a5 = z5[c];
    o0[c] = 4.f * a0 - 5.f * a2 + a4;
    o1[c] = -4.f * (a1 + a2) + a3 + a4;
    o2[c] = 4.f * (a1 - a2) - a3 + a4;
    o3[c] = 2.f * (a3 - a1) - a2 + a4;
    o4[c] = 2.f * (a1 - a3) - a2 + a4;
    o5[c] = 4.f * a1 - 5.f * a3 + a5;
  }
}

/* A = AT transposed (6x4) applied to four vectors. */
static void a_pass(const float* const* in, float* const* out, int C) {
  const float *y0 = in[0], *y1 = in[1], *y2 = in[2], *y3 = in[3];
  float *o0 = out[0], *o1 = out[1], *o2 = out[2], *o3 = out[3], *o4 = out[4], *o5 = out[5];
#pragma GCC ivdep
  for (int c = 0; c < C; c++) {
    float a0 = y0[c], a1 = y1[c], a2 = y2[c], a3 = y3[c];
    float e = a0 + a2, f = a1 + a3, g = a0 + 4.f * a2, h = 2.f * a1 + 8.f * a3;
    o0[c] = a0;
    o1[c] = e + f;
    o2[c] = e - f;
    o3[c] = g + h;
    o4[c] = g - h;
    o5[c] = a3;
  }
}

/* AT (4x6) applied to six vectors. */
static void at_pass(const float* const* in, float* const* out, int C) {
  const float *m0 = in[0], *m1 = in[1], *m2 = in[2], *m3 = in[3], *m4 = in[4], *m5 = in[5];
  float *o0 = out[0], *o1 = out[1], *o2 = out[2], *o3 = out[3];
#pragma GCC ivdep
  for (int c = 0; c < C; c++) {
    float a1 = m1[c], a2 = m2[c], a3 = m3[c], a4 = m4[c];
    float s12 = a1 + a2, d12 = a1 - a2, s34 = a3 + a4, d34 = a3 - a4;
    o0[c] = m0[c] + s12 + s34;
    o1[c] = d12 + 2.f * d34;
    o2[c] = s12 + 4.f * s34;
    o3[c] = d12 + 8.f * d34 + m5[c];
  }
}

/* One image row of C channels (element strides sc, sw) -> dst (W, C), in 16x16 blocks so both sides stay in
   cache; a channels-innermost row is one copy. */
static void row_to_cl(const float* src, long sc, long sw, int C, int W, float* dst) {
  if (sc == 1 && sw == C) {
    memcpy(dst, src, sizeof(float) * (long)W * C);
    return;
  }
  for (int c0 = 0; c0 < C; c0 += 16) {
    int ce = c0 + 16 < C ? c0 + 16 : C;
    for (int w0 = 0; w0 < W; w0 += 16) {
      int we = w0 + 16 < W ? w0 + 16 : W;
      for (int w = w0; w < we; w++)
        for (int c = c0; c < ce; c++) dst[(long)w * C + c] = src[c * sc + w * sw];
    }
  }
}

/* The inverse: (W, C) -> one image row (element strides sc, sw), plus bias[c] when given. */
static void cl_to_row(const float* src, int C, int W, const float* bias, float* dst, long sc, long sw) {
  if (sc == 1 && sw == C) {
    for (int w = 0; w < W; w++)
#pragma GCC ivdep
      for (int c = 0; c < C; c++) dst[(long)w * C + c] = src[(long)w * C + c] + (bias ? bias[c] : 0.f);
    return;
  }
  for (int c0 = 0; c0 < C; c0 += 16) {
    int ce = c0 + 16 < C ? c0 + 16 : C;
    for (int w0 = 0; w0 < W; w0 += 16) {
      int we = w0 + 16 < W ? w0 + 16 : W;
      for (int c = c0; c < ce; c++) {
        float b = bias ? bias[c] : 0.f;
        for (int w = w0; w < we; w++) dst[c * sc + w * sw] = src[(long)w * C + c] + b;
      }
    }
  }
}

/* x (N, C, H, W) -> V (36, p1 - p0, C): BT d B for each tile's 6x6 input (zero outside the image). */
int zoo_winograd_input(const float* x, int N, int C, int H, int W, long sn, long sc, long sh, long sw, long p0,
                       long p1, float* V) {
  int th = (H + 3) / 4, tw = (W + 3) / 4;
  long Pc = p1 - p0;
  if (p0 < 0 || p0 > p1 || p1 > (long)N * th * tw) return -3;
  float* rows = (float*)malloc(sizeof(float) * 6 * (long)W * C); /* the tile row's 6 input rows, (6, W, C) */
  float* zero = (float*)calloc(C, sizeof(float));
  float* tmp = (float*)malloc(sizeof(float) * 36 * (long)C);
  if (!rows || !zero || !tmp) {
    free(rows), free(zero), free(tmp);
    return -1;
  }
  const float* in[6];
  float* out[6];
  long loaded = -1; /* which (n, ti) the rows hold */
  for (long p = p0; p < p1; p++) {
    long nt = p / tw;
    int tj = (int)(p % tw), ti = (int)(nt % th);
    long n = nt / th;
    if (nt != loaded) {
      for (int r = 0; r < 6; r++) {
        int h = 4 * ti - 1 + r;
        float* dst = rows + (long)r * W * C;
        if (h >= 0 && h < H)
          row_to_cl(x + n * sn + h * sh, sc, sw, C, W, dst);
        else
          memset(dst, 0, sizeof(float) * (long)W * C);
      }
      loaded = nt;
    }
    for (int s = 0; s < 6; s++) { /* columns: BT down each column -> tmp */
      int w = 4 * tj - 1 + s;
      for (int r = 0; r < 6; r++) {
        in[r] = (w >= 0 && w < W) ? rows + ((long)r * W + w) * C : zero;
        out[r] = tmp + (r * 6 + s) * (long)C;
      }
      bt_pass(in, out, C);
    }
    for (int i = 0; i < 6; i++) { /* rows: B along each row -> V */
      for (int s = 0; s < 6; s++) {
        in[s] = tmp + (i * 6 + s) * (long)C;
        out[s] = V + ((long)(i * 6 + s) * Pc + (p - p0)) * C;
      }
      bt_pass(in, out, C);
    }
  }
  free(rows), free(zero), free(tmp);
  return 0;
}

/* dy (N, O, H, W) -> U (36, p1 - p0, O): A dY AT for each tile's 4x4 output gradient (zero outside the image). */
int zoo_winograd_grad(const float* dy, int N, int O, int H, int W, long sn, long sc, long sh, long sw, long p0,
                      long p1, float* U) {
  int th = (H + 3) / 4, tw = (W + 3) / 4;
  long Pc = p1 - p0;
  if (p0 < 0 || p0 > p1 || p1 > (long)N * th * tw) return -3;
  float* rows = (float*)malloc(sizeof(float) * 4 * (long)W * O);
  float* zero = (float*)calloc(O, sizeof(float));
  float* tmp = (float*)malloc(sizeof(float) * 24 * (long)O);
  if (!rows || !zero || !tmp) {
    free(rows), free(zero), free(tmp);
    return -1;
  }
  const float* in[6];
  float* out[6];
  long loaded = -1;
  for (long p = p0; p < p1; p++) {
    long nt = p / tw;
    int tj = (int)(p % tw), ti = (int)(nt % th);
    long n = nt / th;
    if (nt != loaded) {
      for (int r = 0; r < 4; r++) {
        int h = 4 * ti + r;
        float* dst = rows + (long)r * W * O;
        if (h < H)
          row_to_cl(dy + n * sn + h * sh, sc, sw, O, W, dst);
        else
          memset(dst, 0, sizeof(float) * (long)W * O);
      }
      loaded = nt;
    }
    for (int s = 0; s < 4; s++) {
      int w = 4 * tj + s;
      for (int r = 0; r < 4; r++) in[r] = (w < W) ? rows + ((long)r * W + w) * O : zero;
      for (int i = 0; i < 6; i++) out[i] = tmp + (i * 4 + s) * (long)O;
      a_pass(in, out, O);
    }
    for (int i = 0; i < 6; i++) {
      for (int s = 0; s < 4; s++) in[s] = tmp + (i * 4 + s) * (long)O;
      for (int j = 0; j < 6; j++) out[j] = U + ((long)(i * 6 + j) * Pc + (p - p0)) * O;
      a_pass(in, out, O);
    }
  }
  free(rows), free(zero), free(tmp);
  return 0;
}

/* M (36, p1 - p0, O) -> y (N, O, H, W): AT M A per tile, cropped to the image, plus bias (may be NULL). The tiles
   of one tile row are gathered in a (4, 4 * tw, O) buffer and written out when the row is complete, so a chunk
   must start and end on tile-row boundaries (returns -2 otherwise; the caller's chunks do). */
int zoo_winograd_output(const float* M, int N, int O, int H, int W, long sn, long sc, long sh, long sw, long p0,
                        long p1, const float* bias, float* y) {
  int th = (H + 3) / 4, tw = (W + 3) / 4, Wp = 4 * tw;
  long Pc = p1 - p0;
  if (p0 < 0 || p0 > p1 || p1 > (long)N * th * tw) return -3;
  if (p0 % tw != 0 || p1 % tw != 0) return -2;
  float* rows = (float*)malloc(sizeof(float) * 4 * (long)Wp * O);
  float* tmp = (float*)malloc(sizeof(float) * 24 * (long)O);
  if (!rows || !tmp) {
    free(rows), free(tmp);
    return -1;
  }
  const float* in[6];
  float* out[6];
  for (long p = p0; p < p1; p++) {
    long nt = p / tw;
    int tj = (int)(p % tw), ti = (int)(nt % th);
    long n = nt / th;
    for (int j = 0; j < 6; j++) {
      for (int i = 0; i < 6; i++) in[i] = M + ((long)(i * 6 + j) * Pc + (p - p0)) * O;
      for (int r = 0; r < 4; r++) out[r] = tmp + (r * 6 + j) * (long)O;
      at_pass(in, out, O);
    }
    for (int r = 0; r < 4; r++) {
      for (int j = 0; j < 6; j++) in[j] = tmp + (r * 6 + j) * (long)O;
      for (int s = 0; s < 4; s++) out[s] = rows + ((long)r * Wp + 4 * tj + s) * O;
      at_pass(in, out, O);
    }
    if (tj == tw - 1) { /* the tile row is done: write its image rows, cropped to H x W */
      for (int r = 0; r < 4 && 4 * ti + r < H; r++)
        cl_to_row(rows + (long)r * Wp * O, O, W, bias, y + n * sn + (4 * ti + r) * sh, sc, sw);
    }
  }
  free(rows), free(tmp);
  return 0;
}
