/* Status strings, the per-thread error message, and the log sink. */
#include "mla_internal.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char last_error[1024];

const char *mla_version_string(void) { return "0.1.0"; }

const char *mla_status_string(mla_status status)
{
    switch (status) {
    case MLA_OK: return "ok";
    case MLA_ERR_INVALID_ARGUMENT: return "invalid argument";
    case MLA_ERR_NULL_POINTER: return "null pointer";
    case MLA_ERR_SHAPE_MISMATCH: return "shape or dtype mismatch";
    case MLA_ERR_UNSUPPORTED: return "unsupported";
    case MLA_ERR_OUT_OF_RANGE: return "index out of range";
    case MLA_ERR_WORKSPACE_TOO_SMALL: return "workspace too small";
    case MLA_ERR_NONFINITE: return "non-finite value";
    case MLA_ERR_BACKEND_UNAVAILABLE: return "backend unavailable";
    case MLA_ERR_NOT_FOUND: return "not found";
    case MLA_ERR_OUT_OF_MEMORY: return "out of memory";
    case MLA_ERR_DEVICE: return "device error";
    case MLA_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

const char *mla_last_error(void) { return last_error; }

void mla_clear_error(void) { last_error[0] = '\0'; }

mla_status mla_set_error(mla_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return status;
}

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static mla_log_fn log_fn;
static void *log_user;

void mla_set_log_callback(mla_log_fn fn, void *user)
{
    pthread_mutex_lock(&log_lock);
    log_fn = fn;
    log_user = user;
    pthread_mutex_unlock(&log_lock);
}

void mla_log(int level, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&log_lock);
    if (log_fn)
        log_fn(level, msg, log_user);
    else
        fprintf(stderr, "libmla: %s%s\n", level ? "warning: " : "", msg);
    pthread_mutex_unlock(&log_lock);
}
