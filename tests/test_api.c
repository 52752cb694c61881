/* Public API basics: status strings, tensors, config defaults and check, the registry. */
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int count;
    int warnings;
    char last[512];
} log_capture;

static void capture_log(int level, const char *msg, void *user)
{
    log_capture *c = user;
    c->count++;
    if (level) c->warnings++;
    snprintf(c->last, sizeof c->last, "%s", msg);
}

TEST(api_status_strings_are_distinct)
{
    for (int a = 0; a <= MLA_ERR_INTERNAL; a++) {
        CHECK(mla_status_string((mla_status)a) != NULL);
        for (int b = a + 1; b <= MLA_ERR_INTERNAL; b++)
            CHECK(strcmp(mla_status_string((mla_status)a), mla_status_string((mla_status)b)) != 0);
    }
    CHECK(strcmp(mla_status_string((mla_status)999), "unknown status") == 0);
    CHECK(strcmp(mla_version_string(), "0.1.0") == 0);
}

TEST(api_tensor_contiguous_strides)
{
    int64_t shape[4] = {2, 3, 4, 5};
    mla_device cpu = {MLA_DEVICE_CPU, 0};
    mla_tensor t = mla_tensor_contiguous((void *)1, MLA_DTYPE_BF16, cpu, 4, shape);
    CHECK(t.strides[3] == 1 && t.strides[2] == 5 && t.strides[1] == 20 && t.strides[0] == 60);
    CHECK(mla_tensor_numel(&t) == 120);
    CHECK(mla_tensor_is_contiguous(&t));
    t.strides[0] = 61;
    CHECK(!mla_tensor_is_contiguous(&t));
    mla_tensor bad = mla_tensor_contiguous((void *)1, MLA_DTYPE_BF16, cpu, 5, shape);
    CHECK(bad.ndim == -1 && mla_tensor_numel(&bad) == 0);
}

TEST(api_config_defaults_are_deepseek_v3)
{
    mla_config cfg;
    mla_config_init(&cfg);
    CHECK(cfg.struct_size == sizeof cfg);
    CHECK(cfg.num_heads == 128 && cfg.kv_lora_rank == 512 && cfg.qk_rope_head_dim == 64);
    CHECK(cfg.qk_nope_head_dim == 128 && cfg.v_head_dim == 128 && cfg.page_size == 64);
    CHECK(cfg.kv_cache_dtype == MLA_DTYPE_FP8_E4M3);
    CHECK(cfg.decode_fp8_math == 0 && cfg.skip_index_check == 0);
    /* 1/sqrt(192) * (0.1 ln 40 + 1)^2 ~= 0.1352 */
    CHECK(fabsf(cfg.scales.softmax_scale - 0.13523f) < 1e-4f);
}

TEST(registry_lists_cpu_and_hopper)
{
    int n = mla_backend_count();
    CHECK(n >= 2);
    int saw_cpu = 0, saw_hopper = 0;
    for (int i = 0; i < n; i++) {
        mla_backend_info info;
        CHECK_STATUS(mla_backend_get_info(i, &info), MLA_OK);
        if (strcmp(info.name, "cpu") == 0) {
            saw_cpu = 1;
            CHECK(info.available);
            CHECK(info.caps.device_type == MLA_DEVICE_CPU);
        }
        if (strcmp(info.name, "hopper") == 0) {
            saw_hopper = 1;
            CHECK(info.caps.min_sm_arch == 90 && info.caps.kv_lora_rank == 512);
            /* CI has no GPU: the reason must say why. */
            if (!info.available) CHECK(strlen(info.reason) > 10);
        }
    }
    CHECK(saw_cpu && saw_hopper);
    mla_backend_info info;
    CHECK_STATUS(mla_backend_get_info(n, &info), MLA_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mla_backend_get_info(-1, &info), MLA_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(mla_backend_get_info(0, NULL), MLA_ERR_NULL_POINTER);
    CHECK_STATUS(mla_backend_find("cpu", &info), MLA_OK);
    CHECK_STATUS(mla_backend_find("no-such", &info), MLA_ERR_NOT_FOUND);
    CHECK(strstr(mla_last_error(), "no-such") && strstr(mla_last_error(), "'cpu'"));
}

TEST(registry_create_by_name_and_unknown_name)
{
    mla_config cfg;
    mla_config_init(&cfg);
    cfg.num_heads = 16;
    mla_backend *be = NULL;
    CHECK_STATUS(mla_backend_create("cpu", &cfg, &be), MLA_OK);
    CHECK(be && strcmp(mla_backend_name(be), "cpu") == 0);
    CHECK(mla_backend_config(be)->num_heads == 16);
    mla_backend_destroy(be);
    mla_backend_destroy(NULL);
    be = (mla_backend *)&cfg;
    CHECK_STATUS(mla_backend_create("flashmla", &cfg, &be), MLA_ERR_NOT_FOUND);
    CHECK(be == NULL);
    CHECK_STATUS(mla_backend_create(NULL, &cfg, &be), MLA_ERR_NULL_POINTER);
    CHECK_STATUS(mla_backend_create("cpu", NULL, &be), MLA_ERR_NULL_POINTER);
    CHECK_STATUS(mla_backend_create("cpu", &cfg, NULL), MLA_ERR_NULL_POINTER);
}

TEST(registry_unavailable_backend_has_reason)
{
    mla_backend_info info;
    CHECK_STATUS(mla_backend_find("hopper", &info), MLA_OK);
    if (info.available) return; /* on a Hopper machine this case cannot be produced */
    mla_config cfg;
    mla_config_init(&cfg);
    cfg.device.type = MLA_DEVICE_CUDA;
    mla_backend *be = NULL;
    CHECK_STATUS(mla_backend_create("hopper", &cfg, &be), MLA_ERR_BACKEND_UNAVAILABLE);
    CHECK(be == NULL);
    CHECK(strstr(mla_last_error(), "hopper") && strstr(mla_last_error(), info.reason));
}

TEST(config_check_adjusts_page_size_with_message)
{
    log_capture cap = {0};
    mla_set_log_callback(capture_log, &cap);
    const int requested[] = {1, 16, 33, 48, 100, 128};
    const int expected[] = {32, 32, 32, 64, 64, 64};
    for (int i = 0; i < 6; i++) {
        mla_config cfg;
        mla_config_init(&cfg);
        cfg.page_size = requested[i];
        int before = cap.count;
        CHECK_STATUS(mla_config_check("cpu", &cfg), MLA_OK);
        CHECK_MSG(cfg.page_size == expected[i], "page %d -> %d, expected %d", requested[i],
                  cfg.page_size, expected[i]);
        CHECK(cap.count == before + 1 && strstr(cap.last, "page_size"));
    }
    mla_config cfg;
    mla_config_init(&cfg);
    int before = cap.count;
    CHECK_STATUS(mla_config_check("cpu", &cfg), MLA_OK); /* 64 is fine: no message */
    CHECK(cap.count == before && cfg.page_size == 64);
    cfg.page_size = 0;
    CHECK_STATUS(mla_config_check("cpu", &cfg), MLA_ERR_INVALID_ARGUMENT);
    cfg.page_size = -64;
    CHECK_STATUS(mla_config_check("cpu", &cfg), MLA_ERR_INVALID_ARGUMENT);
    mla_set_log_callback(NULL, NULL);
}

TEST(config_check_k_scale_warning_printed_once)
{
    log_capture cap = {0};
    mla_set_log_callback(capture_log, &cap);
    for (int i = 0; i < 3; i++) {
        mla_config cfg;
        mla_config_init(&cfg);
        cfg.kv_cache_dtype = MLA_DTYPE_BF16;
        cfg.has_k_scale = 1;
        CHECK_STATUS(mla_config_check("cpu", &cfg), MLA_OK);
    }
    /* Once per process; no test that runs before this one (alphabetical order) sets
     * has_k_scale with a bf16 cache. */
    CHECK(cap.warnings == 1 && strstr(cap.last, "k_scale") && strstr(cap.last, "ignored"));
    mla_config cfg;
    mla_config_init(&cfg);
    cfg.has_k_scale = 1; /* fp8 cache: k_scale applies, nothing to warn about */
    CHECK_STATUS(mla_config_check("cpu", &cfg), MLA_OK);
    CHECK(cap.warnings == 1);
    mla_set_log_callback(NULL, NULL);
}

TEST(config_check_rejects_each_bad_field)
{
    mla_config cfg;
#define EXPECT_BAD(field_stmt, status, needle)                                           \
    do {                                                                               \
        mla_config_init(&cfg);                                                         \
        field_stmt;                                                                    \
        CHECK_STATUS(mla_config_check("cpu", &cfg), status);                           \
        CHECK_MSG(strstr(mla_last_error(), needle), "message '%s' lacks '%s'",         \
                  mla_last_error(), needle);                                           \
    } while (0)
    EXPECT_BAD(cfg.num_heads = 0, MLA_ERR_UNSUPPORTED, "num_heads");
    EXPECT_BAD(cfg.num_heads = 129, MLA_ERR_UNSUPPORTED, "num_heads");
    EXPECT_BAD(cfg.kv_lora_rank = 0, MLA_ERR_INVALID_ARGUMENT, "kv_lora_rank");
    EXPECT_BAD(cfg.qk_rope_head_dim = -1, MLA_ERR_INVALID_ARGUMENT, "qk_rope_head_dim");
    EXPECT_BAD(cfg.v_head_dim = 100000, MLA_ERR_INVALID_ARGUMENT, "v_head_dim");
    EXPECT_BAD(cfg.kv_cache_dtype = MLA_DTYPE_F32, MLA_ERR_UNSUPPORTED, "kv_cache_dtype");
    EXPECT_BAD(cfg.kv_cache_dtype = (mla_dtype)42, MLA_ERR_UNSUPPORTED, "kv_cache_dtype");
    EXPECT_BAD(cfg.max_q_len = 0, MLA_ERR_UNSUPPORTED, "max_q_len");
    EXPECT_BAD(cfg.max_q_len = 9, MLA_ERR_UNSUPPORTED, "max_q_len");
    EXPECT_BAD(cfg.max_batch = -1, MLA_ERR_INVALID_ARGUMENT, "max_batch");
    EXPECT_BAD(cfg.decode_fp8_math = 2, MLA_ERR_INVALID_ARGUMENT, "decode_fp8_math");
    EXPECT_BAD(cfg.decode_fp8_math = -1, MLA_ERR_INVALID_ARGUMENT, "decode_fp8_math");
    EXPECT_BAD(cfg.scales.softmax_scale = NAN, MLA_ERR_INVALID_ARGUMENT, "softmax_scale");
    EXPECT_BAD(cfg.scales.k_scale = 0.0f, MLA_ERR_INVALID_ARGUMENT, "k_scale");
    EXPECT_BAD(cfg.scales.q_scale = INFINITY, MLA_ERR_INVALID_ARGUMENT, "q_scale");
    EXPECT_BAD(cfg.struct_size = 8, MLA_ERR_INVALID_ARGUMENT, "struct_size");
    EXPECT_BAD(cfg.device.type = MLA_DEVICE_CUDA, MLA_ERR_INVALID_ARGUMENT, "cfg.device");
    EXPECT_BAD(cfg.device.index = 3, MLA_ERR_INVALID_ARGUMENT, "device.index");
#undef EXPECT_BAD
    CHECK_STATUS(mla_config_check("cpu", NULL), MLA_ERR_NULL_POINTER);
    mla_config_init(&cfg);
    CHECK_STATUS(mla_config_check(NULL, &cfg), MLA_ERR_NULL_POINTER);
}

TEST(config_check_hopper_fixed_dims)
{
    /* Dims outside what the Hopper kernels implement are refused before any device work, on
     * machines with or without a GPU (unavailability is reported first when there is none). */
    mla_backend_info info;
    CHECK_STATUS(mla_backend_find("hopper", &info), MLA_OK);
    mla_config cfg;
    mla_config_init(&cfg);
    cfg.device.type = MLA_DEVICE_CUDA;
    cfg.kv_lora_rank = 256;
    mla_status st = mla_config_check("hopper", &cfg);
    if (info.available) {
        CHECK(st == MLA_ERR_UNSUPPORTED && strstr(mla_last_error(), "kv_lora_rank = 512"));
    } else {
        CHECK(st == MLA_ERR_BACKEND_UNAVAILABLE);
    }
}

TEST(backend_create_destroy_many_times)
{
    /* Leaks show up under the sanitizer build (LeakSanitizer). */
    mla_config cfg;
    mla_config_init(&cfg);
    cfg.num_heads = 4;
    cfg.max_batch = 4;
    for (int i = 0; i < 200; i++) {
        mla_backend *a = NULL, *b = NULL;
        CHECK_STATUS(mla_backend_create("cpu", &cfg, &a), MLA_OK);
        CHECK_STATUS(mla_backend_create("cpu", &cfg, &b), MLA_OK);
        mla_backend_destroy(a);
        mla_backend_destroy(b);
    }
}

TEST(api_last_error_is_per_thread_and_cleared)
{
    mla_backend_info info;
    CHECK_STATUS(mla_backend_find("nope", &info), MLA_ERR_NOT_FOUND);
    CHECK(mla_last_error()[0] != '\0');
    CHECK_STATUS(mla_backend_find("cpu", &info), MLA_OK);
    mla_config cfg;
    mla_config_init(&cfg);
    CHECK_STATUS(mla_config_check("cpu", &cfg), MLA_OK);
    CHECK(mla_last_error()[0] == '\0');
}
