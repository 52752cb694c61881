/*
 * Calls libmla through its C API (the real header, compiled by the C compiler) so the Python
 * tests can check that the ctypes binding gives bit-identical results.
 *
 *   c_driver decode DIR   DIR/params: backend heads rank rope page kv_dtype q_dtype batch q_len
 *                                     num_pages max_pages causal softmax_scale o_scale want_lse
 *                         DIR/{q,kv,bt,sl}.bin -> DIR/{out,lse}.bin
 *   c_driver prefill DIR  DIR/params: backend heads nope rope v_dim dtype batch total_q
 *                                     total_kv causal softmax_scale want_lse
 *                         DIR/{q,k,v,cuq,cukv}.bin -> DIR/{out,lse}.bin
 *   c_driver merge DIR    DIR/params: tokens heads dim dtype_a dtype_b dtype_o
 *                         DIR/{oa,la,ob,lb}.bin -> DIR/{o,lse}.bin
 * Exit status 0 on success; on a library error prints the message and exits 2.
 */
#include "mla.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char g_dir[4096];

static void *read_file(const char *name, size_t bytes)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", path);
        exit(3);
    }
    void *buf = malloc(bytes ? bytes : 1);
    if (!buf || fread(buf, 1, bytes, f) != bytes) {
        fprintf(stderr, "short read %s\n", path);
        exit(3);
    }
    fclose(f);
    return buf;
}

static void write_file(const char *name, const void *buf, size_t bytes)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(buf, 1, bytes, f) != bytes) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(3);
    }
    fclose(f);
}

static FILE *open_params(void)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/params", g_dir);
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", path);
        exit(3);
    }
    return f;
}

static void check(mla_status st, const char *what)
{
    if (st != MLA_OK) {
        printf("%s: %s: %s\n", what, mla_status_string(st), mla_last_error());
        exit(2);
    }
}

static mla_tensor tensor(void *data, mla_dtype dt, int ndim, int64_t a, int64_t b, int64_t c,
                         int64_t d)
{
    int64_t shape[4] = {a, b, c, d};
    mla_device cpu = {MLA_DEVICE_CPU, 0};
    return mla_tensor_contiguous(data, dt, cpu, ndim, shape);
}

static int run_decode(void)
{
    char backend[64];
    int heads, rank, rope, page, kv_dt, q_dt, batch, q_len, num_pages, max_pages, causal, lse_on;
    float scale, o_scale;
    FILE *p = open_params();
    if (fscanf(p, "%63s %d %d %d %d %d %d %d %d %d %d %d %f %f %d", backend, &heads, &rank, &rope,
               &page, &kv_dt, &q_dt, &batch, &q_len, &num_pages, &max_pages, &causal, &scale,
               &o_scale, &lse_on) != 15)
        return 3;
    fclose(p);
    int d = rank + rope;
    size_t nq = (size_t)batch * q_len * heads * d, nkv = (size_t)num_pages * page * d;
    size_t nout = (size_t)batch * q_len * heads * rank, nlse = (size_t)batch * q_len * heads;
    void *q = read_file("q.bin", nq * mla_dtype_size((mla_dtype)q_dt));
    void *kv = read_file("kv.bin", nkv * mla_dtype_size((mla_dtype)kv_dt));
    void *bt = read_file("bt.bin", (size_t)batch * max_pages * 4);
    void *sl = read_file("sl.bin", (size_t)batch * 4);
    uint16_t *out = malloc(nout * 2 + 2);
    float *lse = malloc(nlse * 4 + 4);
    memset(out, 0xff, nout * 2);
    memset(lse, 0xff, nlse * 4);

    mla_config cfg;
    mla_config_init(&cfg);
    cfg.num_heads = heads;
    cfg.kv_lora_rank = rank;
    cfg.qk_rope_head_dim = rope;
    cfg.page_size = page;
    cfg.kv_cache_dtype = (mla_dtype)kv_dt;
    cfg.max_q_len = q_len;
    mla_backend *be = NULL;
    check(mla_backend_create(backend, &cfg, &be), "create");
    mla_scales sc = {scale, 1.0f, 1.0f, 1.0f, o_scale};
    mla_decode_args a;
    memset(&a, 0, sizeof a);
    a.q = tensor(q, (mla_dtype)q_dt, 4, batch, q_len, heads, d);
    a.kv_cache = tensor(kv, (mla_dtype)kv_dt, 3, num_pages, page, d, 0);
    a.block_table = tensor(bt, MLA_DTYPE_I32, 2, batch, max_pages, 0, 0);
    a.seq_lens = tensor(sl, MLA_DTYPE_I32, 1, batch, 0, 0, 0);
    a.out = tensor(out, MLA_DTYPE_BF16, 4, batch, q_len, heads, rank);
    if (lse_on)
        a.lse = tensor(lse, MLA_DTYPE_F32, 3, batch, q_len, heads, 0);
    a.no_causal_mask = !causal;
    a.scales = &sc;
    check(mla_decode(be, &a), "decode");
    write_file("out.bin", out, nout * 2);
    if (lse_on)
        write_file("lse.bin", lse, nlse * 4);
    mla_backend_destroy(be);
    free(q), free(kv), free(bt), free(sl), free(out), free(lse);
    return 0;
}

static int run_prefill(void)
{
    char backend[64];
    int heads, nope, rope, v_dim, dt, batch, total_q, total_kv, causal, lse_on;
    float scale;
    FILE *p = open_params();
    if (fscanf(p, "%63s %d %d %d %d %d %d %d %d %d %f %d", backend, &heads, &nope, &rope, &v_dim,
               &dt, &batch, &total_q, &total_kv, &causal, &scale, &lse_on) != 12)
        return 3;
    fclose(p);
    int qk = nope + rope;
    size_t es = mla_dtype_size((mla_dtype)dt);
    void *q = read_file("q.bin", (size_t)total_q * heads * qk * es);
    void *k = read_file("k.bin", (size_t)total_kv * heads * qk * es);
    void *v = read_file("v.bin", (size_t)total_kv * heads * v_dim * es);
    void *cuq = read_file("cuq.bin", (size_t)(batch + 1) * 4);
    void *cukv = read_file("cukv.bin", (size_t)(batch + 1) * 4);
    size_t nout = (size_t)total_q * heads * v_dim, nlse = (size_t)total_q * heads;
    uint16_t *out = malloc(nout * 2 + 2);
    float *lse = malloc(nlse * 4 + 4);
    memset(out, 0xff, nout * 2);
    memset(lse, 0xff, nlse * 4);

    mla_config cfg;
    mla_config_init(&cfg);
    cfg.num_heads = heads;
    cfg.qk_nope_head_dim = nope;
    cfg.qk_rope_head_dim = rope;
    cfg.v_head_dim = v_dim;
    mla_backend *be = NULL;
    check(mla_backend_create(backend, &cfg, &be), "create");
    mla_scales sc = {scale, 1.0f, 1.0f, 1.0f, 1.0f};
    mla_prefill_args a;
    memset(&a, 0, sizeof a);
    a.q = tensor(q, (mla_dtype)dt, 3, total_q, heads, qk, 0);
    a.k = tensor(k, (mla_dtype)dt, 3, total_kv, heads, qk, 0);
    a.v = tensor(v, (mla_dtype)dt, 3, total_kv, heads, v_dim, 0);
    a.cu_seqlens_q = tensor(cuq, MLA_DTYPE_I32, 1, batch + 1, 0, 0, 0);
    a.cu_seqlens_kv = tensor(cukv, MLA_DTYPE_I32, 1, batch + 1, 0, 0, 0);
    a.causal = causal;
    a.out = tensor(out, MLA_DTYPE_BF16, 3, total_q, heads, v_dim, 0);
    if (lse_on)
        a.lse = tensor(lse, MLA_DTYPE_F32, 2, total_q, heads, 0, 0);
    a.scales = &sc;
    check(mla_prefill(be, &a), "prefill");
    write_file("out.bin", out, nout * 2);
    if (lse_on)
        write_file("lse.bin", lse, nlse * 4);
    mla_backend_destroy(be);
    free(q), free(k), free(v), free(cuq), free(cukv), free(out), free(lse);
    return 0;
}

static int run_merge(void)
{
    int tokens, heads, dim, dta, dtb, dto;
    FILE *p = open_params();
    if (fscanf(p, "%d %d %d %d %d %d", &tokens, &heads, &dim, &dta, &dtb, &dto) != 6)
        return 3;
    fclose(p);
    size_t n = (size_t)tokens * heads * dim, nl = (size_t)tokens * heads;
    void *oa = read_file("oa.bin", n * mla_dtype_size((mla_dtype)dta));
    void *ob = read_file("ob.bin", n * mla_dtype_size((mla_dtype)dtb));
    void *la = read_file("la.bin", nl * 4);
    void *lb = read_file("lb.bin", nl * 4);
    size_t obytes = n * mla_dtype_size((mla_dtype)dto);
    void *o = malloc(obytes + 4);
    float *lse = malloc(nl * 4 + 4);
    memset(o, 0xff, obytes);
    memset(lse, 0xff, nl * 4);
    mla_config cfg;
    mla_config_init(&cfg);
    mla_backend *be = NULL;
    check(mla_backend_create("cpu", &cfg, &be), "create");
    mla_merge_state_args a;
    memset(&a, 0, sizeof a);
    a.o_a = tensor(oa, (mla_dtype)dta, 3, tokens, heads, dim, 0);
    a.o_b = tensor(ob, (mla_dtype)dtb, 3, tokens, heads, dim, 0);
    a.lse_a = tensor(la, MLA_DTYPE_F32, 2, tokens, heads, 0, 0);
    a.lse_b = tensor(lb, MLA_DTYPE_F32, 2, tokens, heads, 0, 0);
    a.o = tensor(o, (mla_dtype)dto, 3, tokens, heads, dim, 0);
    a.lse = tensor(lse, MLA_DTYPE_F32, 2, tokens, heads, 0, 0);
    check(mla_merge_state(be, &a), "merge");
    write_file("o.bin", o, obytes);
    write_file("lse.bin", lse, nl * 4);
    mla_backend_destroy(be);
    free(oa), free(ob), free(la), free(lb), free(o), free(lse);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 3 || strlen(argv[2]) >= sizeof g_dir) {
        fprintf(stderr, "usage: c_driver decode|prefill|merge DIR\n");
        return 3;
    }
    strcpy(g_dir, argv[2]);
    if (!strcmp(argv[1], "decode"))
        return run_decode();
    if (!strcmp(argv[1], "prefill"))
        return run_prefill();
    if (!strcmp(argv[1], "merge"))
        return run_merge();
    fprintf(stderr, "unknown op %s\n", argv[1]);
    return 3;
}
