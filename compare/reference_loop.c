/* A hand-fused single-thread C loop of the tutorial's training: the speed reference for jax_rnn.
 *
 * The same arithmetic as jax_rnn.train_epoch (TASK.md): S_t = tanh([onehot(x_t), S_{t-1}] @ W + b),
 * logits = S_t @ U + b_p, mean sparse softmax cross-entropy over a [batch, num_steps] window, the
 * gradient by hand (BPTT inside the window, the state carried between windows with no gradient),
 * TF1 Adagrad (accumulator from 0.1, no epsilon). float32 throughout, like the frameworks.
 *
 * Usage: reference_loop IN OUT REPEATS
 *   IN:  int32 header [epoch_size, batch, num_steps, num_classes, state_size], float32 lr, then
 *        float32 W[(n+d)*d], b[d], U[d*n], b_p[n], then int32 x[E*B*T], y[E*B*T] (the windows).
 *   OUT: float32 losses[E] of the last repeat, then float64 seconds of each repeat (training only).
 * Each repeat trains one epoch from the same initial parameters.
 * Build: cc -O3 -march=native -ffast-math -o reference_loop reference_loop.c -lm (-ffast-math lets the
 * compiler use glibc's vector tanhf/expf/logf and reorder the sums: the losses still match to ~1e-6).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static void read_all(FILE *f, void *dst, size_t size, size_t count) {
    if (fread(dst, size, count, f) != count) { fprintf(stderr, "reference_loop: short input\n"); exit(2); }
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: reference_loop IN OUT REPEATS\n"); return 2; }
    FILE *in = fopen(argv[1], "rb");
    if (!in) { perror(argv[1]); return 2; }
    int hdr[5];
    float lr;
    read_all(in, hdr, sizeof(int), 5);
    read_all(in, &lr, sizeof(float), 1);
    const int E = hdr[0], B = hdr[1], T = hdr[2], n = hdr[3], d = hdr[4], R = n + d;
    int repeats = atoi(argv[3]);
    if (E < 1 || B < 1 || T < 1 || n < 1 || d < 1 || repeats < 1) {
        fprintf(stderr, "reference_loop: bad sizes E=%d B=%d T=%d n=%d d=%d or REPEATS=%d\n", E, B, T, n, d, repeats);
        return 2;
    }
    const int np_ = R * d + d + d * n + n;               /* all parameters, one flat vector */
    float *init = malloc(sizeof(float) * np_);
    read_all(in, init, sizeof(float), np_);
    int *x = malloc(sizeof(int) * (size_t)E * B * T), *y = malloc(sizeof(int) * (size_t)E * B * T);
    read_all(in, x, sizeof(int), (size_t)E * B * T);
    read_all(in, y, sizeof(int), (size_t)E * B * T);
    fclose(in);

    /* Batch-inner layout, like jax_rnn's: every inner loop runs over the batch (contiguous), so the
     * compiler vectorises it. h[t][k][i]: state k of sequence i after step t (h[0] = the carried state). */
    float *prm = malloc(sizeof(float) * np_), *acc = malloc(sizeof(float) * np_), *g = malloc(sizeof(float) * np_);
    float *h = malloc(sizeof(float) * (size_t)(T + 1) * d * B), *p = malloc(sizeof(float) * (size_t)T * n * B);
    float *dh = malloc(sizeof(float) * d * B), *dz = malloc(sizeof(float) * d * B), *tmp = malloc(sizeof(float) * B);
    float *lossv = malloc(sizeof(float) * B), *losses = malloc(sizeof(float) * E);
    int *xt = malloc(sizeof(int) * B * T), *yt = malloc(sizeof(int) * B * T);
    double *seconds = malloc(sizeof(double) * repeats);

    for (int rep = 0; rep < repeats; rep++) {
        memcpy(prm, init, sizeof(float) * np_);
        for (int q = 0; q < np_; q++) acc[q] = 0.1f;
        memset(h, 0, sizeof(float) * d * B);
        double start = now();
        for (int e = 0; e < E; e++) {
            float *W = prm, *b = W + R * d, *U = b + d, *bp = U + d * n;
            float *gW = g, *gb = gW + R * d, *gU = gb + d, *gbp = gU + d * n;
            const float scale = 1.0f / (B * T);
            memset(g, 0, sizeof(float) * np_);
            for (int i = 0; i < B; i++)                            /* the window, time-major */
                for (int t = 0; t < T; t++) {
                    xt[t * B + i] = x[((size_t)e * B + i) * T + t];
                    yt[t * B + i] = y[((size_t)e * B + i) * T + t];
                }
            for (int i = 0; i < B; i++) lossv[i] = 0.0f;
            for (int t = 0; t < T; t++) {                          /* forward */
                const float *hp = h + (size_t)t * d * B;
                float *ht = h + (size_t)(t + 1) * d * B, *pt = p + (size_t)t * n * B;
                const int *xs = xt + t * B, *ys = yt + t * B;
                for (int j = 0; j < d; j++) {
                    float *z = ht + j * B;
                    for (int i = 0; i < B; i++) z[i] = W[xs[i] * d + j] + b[j];
                    for (int k = 0; k < d; k++) {
                        const float w = W[(n + k) * d + j], *hk = hp + k * B;
                        for (int i = 0; i < B; i++) z[i] += w * hk[i];
                    }
                    for (int i = 0; i < B; i++) z[i] = tanhf(z[i]);
                }
                for (int c = 0; c < n; c++) {
                    float *l = pt + c * B;
                    for (int i = 0; i < B; i++) l[i] = bp[c];
                    for (int k = 0; k < d; k++) {
                        const float u = U[k * n + c], *hk = ht + k * B;
                        for (int i = 0; i < B; i++) l[i] += u * hk[i];
                    }
                }
                for (int i = 0; i < B; i++) tmp[i] = pt[i];       /* softmax over classes, per sequence */
                for (int c = 1; c < n; c++) for (int i = 0; i < B; i++) tmp[i] = fmaxf(tmp[i], pt[c * B + i]);
                float *sum = dz;                                   /* scratch */
                for (int i = 0; i < B; i++) sum[i] = 0.0f;
                for (int c = 0; c < n; c++) for (int i = 0; i < B; i++) {
                    pt[c * B + i] = expf(pt[c * B + i] - tmp[i]);
                    sum[i] += pt[c * B + i];
                }
                for (int c = 0; c < n; c++) for (int i = 0; i < B; i++) pt[c * B + i] /= sum[i];
                for (int i = 0; i < B; i++) lossv[i] -= logf(pt[ys[i] * B + i]);
            }
            double loss = 0.0;
            for (int i = 0; i < B; i++) loss += lossv[i];
            losses[e] = (float)(loss / (B * T));
            memset(dh, 0, sizeof(float) * d * B);
            for (int t = T - 1; t >= 0; t--) {                     /* backward through the window */
                const float *ht = h + (size_t)(t + 1) * d * B, *hp = h + (size_t)t * d * B;
                float *pt = p + (size_t)t * n * B;
                const int *xs = xt + t * B, *ys = yt + t * B;
                for (int c = 0; c < n; c++) {
                    float *dl = pt + c * B, sb = 0.0f;             /* dlogits in place */
                    for (int i = 0; i < B; i++) { dl[i] = (dl[i] - (ys[i] == c)) * scale; sb += dl[i]; }
                    gbp[c] += sb;
                    for (int k = 0; k < d; k++) {
                        const float u = U[k * n + c], *hk = ht + k * B;
                        float *dhk = dh + k * B, su = 0.0f;
                        for (int i = 0; i < B; i++) { su += hk[i] * dl[i]; dhk[i] += u * dl[i]; }
                        gU[k * n + c] += su;
                    }
                }
                for (int j = 0; j < d; j++) {
                    const float *hj = ht + j * B, *dhj = dh + j * B;
                    float *dzj = dz + j * B, sb = 0.0f;
                    for (int i = 0; i < B; i++) { dzj[i] = dhj[i] * (1.0f - hj[i] * hj[i]); sb += dzj[i]; }
                    gb[j] += sb;
                    for (int i = 0; i < B; i++) gW[xs[i] * d + j] += dzj[i];
                }
                for (int k = 0; k < d; k++) {
                    const float *hk = hp + k * B;
                    float *dhk = dh + k * B;
                    for (int i = 0; i < B; i++) dhk[i] = 0.0f;
                    for (int j = 0; j < d; j++) {
                        const float w = W[(n + k) * d + j], *dzj = dz + j * B;
                        float sw = 0.0f;
                        for (int i = 0; i < B; i++) { sw += hk[i] * dzj[i]; dhk[i] += w * dzj[i]; }
                        gW[(n + k) * d + j] += sw;
                    }
                }
            }
            memcpy(h, h + (size_t)T * d * B, sizeof(float) * d * B); /* the state carried to the next window */
            for (int q = 0; q < np_; q++) {                          /* TF1 Adagrad */
                acc[q] += g[q] * g[q];
                prm[q] -= lr * g[q] / sqrtf(acc[q]);
            }
        }
        seconds[rep] = now() - start;
    }
    FILE *out = fopen(argv[2], "wb");
    if (!out) { perror(argv[2]); return 2; }
    fwrite(losses, sizeof(float), E, out);
    fwrite(seconds, sizeof(double), repeats, out);
    fclose(out);
    return 0;
}
