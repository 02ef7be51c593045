/*
 * fetch.c — the public fetch handle: start, cancel, delete, wait, and the
 * accessors. The transfer itself lives in transport.c.
 *
 * References: the caller holds one (dropped by netstash_fetch_del), the loop
 * holds one from start until the fetch is finished, and a queued cancel task
 * holds one. The fetch is freed when the last one goes.
 */
#include "ns_setup.h"

#include <stdarg.h>
#include <stdio.h>

#include "core/log.h"
#include "transport/decode.h"
#include "transport/fetch.h"

void ns_fetch_ref(netstash_fetch *f) { atomic_fetch_add(&f->refs, 1); }

void ns_fetch_detail(netstash_fetch *f, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(f->detail, sizeof(f->detail), fmt, ap);
  va_end(ap);
}

void ns_fetch_unref(netstash_fetch *f) {
  ns_mem mem;
  if (atomic_fetch_sub(&f->refs, 1) != 1)
    return;
  mem = f->mem;
  ns_decoder_del(f->dec);
  ns_buf_free(&f->hdr_arena);
  ns_buf_free(&f->body);
  ns_free(&mem, f->hdrs);
  ns_url_free(&mem, &f->cur);
  ns_free(&mem, f->method_override);
  ns_hc_entry_free(&f->hce);
  ns_headers_free(&f->hc_req);
  ns_buf_free(&f->hc_body);
  netstash_request_del(f->req);
  uv_cond_destroy(&f->cond);
  uv_mutex_destroy(&f->lock);
  ns_free(&mem, f);
}

static void start_task_run(netstash_ctx *ctx, ns_task *t) {
  netstash_fetch *f = NS_CONTAINER_OF(t, netstash_fetch, start_task);
  (void)ctx;
  ns_transport_start(f);
}

static void cancel_task_run(netstash_ctx *ctx, ns_task *t) {
  netstash_fetch *f = NS_CONTAINER_OF(t, netstash_fetch, cancel_task);
  (void)ctx;
  if (f->state != NS_FETCH_DONE)
    ns_transport_cancel(f);
  ns_fetch_unref(f); /* the task's reference */
}

void ns_fetch_finish(netstash_fetch *f, netstash_error err) {
  if (f->state == NS_FETCH_DONE)
    return;
  f->state = NS_FETCH_DONE;
  if (f->t_start)
    f->timing[NETSTASH_TIMING_TOTAL] = ns_now_us() - f->t_start;
  if (err != NETSTASH_OK && !f->detail[0] && err != NETSTASH_E_CANCELED)
    ns_fetch_detail(f, "%s", netstash_strerror(err));
  ns_stat_add(f->ctx, NETSTASH_STAT_FETCHES_ACTIVE, -1);
  uv_mutex_lock(&f->lock);
  f->result = err;
  uv_mutex_unlock(&f->lock);
  if (!atomic_load(&f->orphaned) && f->cbs.on_complete)
    f->cbs.on_complete(f, err, f->ud);
  uv_mutex_lock(&f->lock);
  f->done = 1;
  uv_mutex_unlock(&f->lock);
  /* signalled after the unlock: a waiter woken while the lock is still held
   * would block on it at once (one more context switch per fetch, on a busy
   * CPU); f outlives this — the loop's reference goes below */
  uv_cond_broadcast(&f->cond);
  ns_fetch_unref(f); /* the loop's reference */
}

netstash_error netstash_fetch_start_versioned(netstash_ctx *ctx, netstash_request *req,
                                              int version,
                                              const netstash_fetch_callbacks *cbs,
                                              void *ud, netstash_fetch **out) {
  return ns_fetch_start_ex(ctx, req, version, cbs, ud, NULL, out);
}

netstash_error ns_fetch_start_ex(netstash_ctx *ctx, netstash_request *req, int version,
                                 const netstash_fetch_callbacks *cbs, void *ud,
                                 const ns_fetch_hooks *hooks, netstash_fetch **out) {
  netstash_fetch *f;
  netstash_error rv;
  if (!out)
    return NETSTASH_E_INVALID_ARGUMENT;
  *out = NULL;
  if (!ctx || !req || (cbs && version < NETSTASH_FETCH_CALLBACKS_V1))
    return NETSTASH_E_INVALID_ARGUMENT;
  if (req->http_version == NETSTASH_HTTP_3 && strcmp(req->url.scheme, "https") != 0)
    return NETSTASH_E_UNSUPPORTED; /* HTTP/3 is https only */
  f = ns_calloc(&ctx->mem, 1, sizeof(*f));
  if (!f)
    return NETSTASH_E_NOMEM;
  f->mem = ctx->mem;
  f->ctx = ctx;
  if (uv_mutex_init(&f->lock) != 0) {
    ns_free(&ctx->mem, f);
    return NETSTASH_E_INTERNAL;
  }
  if (uv_cond_init(&f->cond) != 0) {
    uv_mutex_destroy(&f->lock);
    ns_free(&ctx->mem, f);
    return NETSTASH_E_INTERNAL;
  }
  if (cbs)
    f->cbs = *cbs; /* V1 is the only layout so far */
  if (hooks)
    f->hooks = *hooks;
  f->ud = ud;
  atomic_init(&f->refs, 2); /* caller + loop */
  atomic_init(&f->cancel_requested, 0);
  atomic_init(&f->orphaned, 0);
  f->result = NETSTASH_E_ILLEGAL_STATE;
  ns_list_init(&f->node);
  ns_buf_init(&f->hdr_arena, &f->mem, 256 * 1024);
  ns_buf_init(&f->body, &f->mem, 0);
  ns_hc_entry_init(&f->hce, &f->mem);
  ns_headers_init(&f->hc_req, &f->mem);
  ns_buf_init(&f->hc_body, &f->mem, 32u << 20);
  atomic_store(&req->frozen, 1);
  ns_request_ref(req);
  f->req = req;
  f->start_task.run = start_task_run;
  f->cancel_task.run = cancel_task_run;
  f->t_start = ns_now_us();
  ns_stat_add(ctx, NETSTASH_STAT_FETCHES_STARTED, 1);
  ns_stat_add(ctx, NETSTASH_STAT_FETCHES_ACTIVE, 1);
  /* *out before the post: the loop thread may run the whole fetch, callbacks
   * included, before this call returns, and a caller's callbacks may read the
   * pointer (the interceptor's job does: j->f) — the post's mutex orders it */
  *out = f;
  rv = ns_ctx_post(ctx, &f->start_task);
  if (rv != NETSTASH_OK) {
    *out = NULL;
    ns_stat_add(ctx, NETSTASH_STAT_FETCHES_ACTIVE, -1);
    atomic_store(&f->refs, 1);
    ns_fetch_unref(f);
    return rv;
  }
  return NETSTASH_OK;
}

netstash_error netstash_fetch_cancel(netstash_fetch *f) {
  int done;
  if (!f)
    return NETSTASH_E_INVALID_ARGUMENT;
  uv_mutex_lock(&f->lock);
  done = f->done;
  uv_mutex_unlock(&f->lock);
  if (done || atomic_exchange(&f->cancel_requested, 1))
    return NETSTASH_OK;
  ns_fetch_ref(f);
  if (ns_ctx_post(f->ctx, &f->cancel_task) != NETSTASH_OK)
    ns_fetch_unref(f); /* shutting down: the context cancels it anyway */
  return NETSTASH_OK;
}

void netstash_fetch_del(netstash_fetch *f) {
  if (!f)
    return;
  atomic_store(&f->orphaned, 1);
  netstash_fetch_cancel(f);
  ns_fetch_unref(f);
}

netstash_error netstash_fetch_wait(netstash_fetch *f, uint32_t timeout_ms) {
  netstash_error rv;
  if (!f)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (ns_ctx_on_loop(f->ctx)) {
    uv_mutex_lock(&f->lock);
    rv = f->done ? f->result : NETSTASH_E_WOULD_DEADLOCK;
    uv_mutex_unlock(&f->lock);
    return rv;
  }
  uv_mutex_lock(&f->lock);
  if (timeout_ms == 0) {
    while (!f->done)
      uv_cond_wait(&f->cond, &f->lock);
  } else {
    uint64_t deadline = uv_hrtime() + (uint64_t)timeout_ms * 1000000u;
    while (!f->done) {
      uint64_t now = uv_hrtime();
      if (now >= deadline || uv_cond_timedwait(&f->cond, &f->lock, deadline - now) != 0)
        break;
    }
  }
  rv = f->done ? f->result : NETSTASH_E_WAIT_TIMEOUT;
  uv_mutex_unlock(&f->lock);
  return rv;
}

netstash_error netstash_fetch_sync(netstash_ctx *ctx, netstash_request *req,
                                   netstash_fetch **out) {
  netstash_error rv;
  if (!out)
    return NETSTASH_E_INVALID_ARGUMENT;
  rv = netstash_fetch_start(ctx, req, NULL, NULL, out);
  if (rv != NETSTASH_OK)
    return rv;
  return netstash_fetch_wait(*out, 0);
}

/* ------------------------------------------------------------ accessors */

int netstash_fetch_status(const netstash_fetch *f) { return f ? f->status : 0; }

size_t netstash_fetch_header_count(const netstash_fetch *f) { return f ? f->nhdrs : 0; }

netstash_error netstash_fetch_header_at(const netstash_fetch *f, size_t i,
                                        const char **name, const char **value) {
  if (!f || i >= f->nhdrs)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (name)
    *name = (const char *)f->hdr_arena.data + f->hdrs[i].name_off;
  if (value)
    *value = (const char *)f->hdr_arena.data + f->hdrs[i].value_off;
  return NETSTASH_OK;
}

const char *netstash_fetch_header(const netstash_fetch *f, const char *name) {
  size_t i;
  if (!f || !name)
    return NULL;
  for (i = 0; i < f->nhdrs; i++) {
    const char *n = (const char *)f->hdr_arena.data + f->hdrs[i].name_off;
    if (ns_ascii_casecmp(n, name) == 0)
      return (const char *)f->hdr_arena.data + f->hdrs[i].value_off;
  }
  return NULL;
}

netstash_http_version netstash_fetch_protocol(const netstash_fetch *f) {
  return f ? f->proto : NETSTASH_HTTP_ANY;
}

const char *netstash_fetch_protocol_name(const netstash_fetch *f) {
  if (!f)
    return "";
  switch (f->proto) {
  case NETSTASH_HTTP_1_1:
    return "http/1.1";
  case NETSTASH_HTTP_2:
    return "h2";
  case NETSTASH_HTTP_3:
    return "h3";
  case NETSTASH_HTTP_ANY:
    break;
  }
  return "";
}

const char *netstash_fetch_tls_version(const netstash_fetch *f) {
  return f ? f->tls_version : "";
}

const char *netstash_fetch_tls_cipher(const netstash_fetch *f) {
  return f ? f->tls_cipher : "";
}

const char *netstash_fetch_effective_url(const netstash_fetch *f) {
  if (!f)
    return "";
  return f->cur.url ? f->cur.url : f->req->url.url;
}

netstash_source netstash_fetch_source(const netstash_fetch *f) {
  if (!f || !f->status)
    return NETSTASH_SOURCE_NONE;
  return f->source ? f->source : NETSTASH_SOURCE_NETWORK;
}

const char *netstash_fetch_cache_reason(const netstash_fetch *f) {
  return f ? f->cache_reason : "";
}

netstash_error ns_fetch_start_detached(netstash_ctx *ctx, netstash_request *req) {
  netstash_fetch *f = NULL;
  netstash_error rv = netstash_fetch_start(ctx, req, NULL, NULL, &f);
  if (rv != NETSTASH_OK)
    return rv;
  f->detached = 1;
  atomic_store(&f->orphaned, 1);
  ns_fetch_unref(f); /* no caller: the loop's reference keeps it */
  return NETSTASH_OK;
}

const char *netstash_fetch_error_detail(const netstash_fetch *f) {
  return f ? f->detail : "";
}

netstash_error netstash_fetch_result(const netstash_fetch *f) {
  netstash_error rv;
  netstash_fetch *m = (netstash_fetch *)(uintptr_t)f;
  if (!f)
    return NETSTASH_E_INVALID_ARGUMENT;
  uv_mutex_lock(&m->lock);
  rv = f->done ? f->result : NETSTASH_E_ILLEGAL_STATE;
  uv_mutex_unlock(&m->lock);
  return rv;
}

uint64_t netstash_fetch_timing_us(const netstash_fetch *f, netstash_timing which) {
  if (!f || (unsigned)which >= NS_ARRAY_LEN(f->timing))
    return 0;
  return f->timing[which];
}

uint64_t netstash_fetch_body_bytes(const netstash_fetch *f) { return f ? f->body_bytes : 0; }
uint64_t netstash_fetch_wire_bytes(const netstash_fetch *f) { return f ? f->wire_bytes : 0; }
uint32_t netstash_fetch_new_connections(const netstash_fetch *f) {
  return f ? f->new_conns : 0;
}

netstash_error netstash_fetch_body(const netstash_fetch *f, const uint8_t **data,
                                   size_t *len) {
  if (!f || !data || !len)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (!f->req->collect)
    return NETSTASH_E_ILLEGAL_STATE;
  *data = f->body.data ? f->body.data : (const uint8_t *)"";
  *len = f->body.len;
  return NETSTASH_OK;
}
