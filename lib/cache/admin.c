/*
 * lib/cache/admin.c — the HTTP cache as tools see it: netstash_cache_list
 * and netstash_cache_remove (include/netstash/cache.h). Both work on the
 * profile's store from the calling thread, with a reader or a write
 * transaction of their own, as the preload admin calls do.
 */
#include "ns_setup.h"

#include <jansson.h>
#include <time.h>

#include "cache/cache.h"
#include "cache/httpcache.h"
#include "core/ctx.h"
#include "core/jsonout.h"
#include "core/log.h"
#include "store/store.h"
#include "transport/decode.h"

#define MOD "cache"
#define LIST_OUT_MAX ((size_t)256 << 20)

static netstash_error need_store(netstash_ctx *ctx, const char *fn) {
  if (!ctx)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (!ctx->store) {
    NS_ERR(ctx, MOD, "%s: the context has no profile directory, so no HTTP cache "
                     "(netstash_options_set_profile_dir)", fn);
    return NETSTASH_E_ILLEGAL_STATE;
  }
  return NETSTASH_OK;
}

static int64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

typedef struct list_ctx {
  json_t *entries;
  int64_t now_ms;
  int oom;
} list_ctx;

static json_t *jstr_span(ns_span s) { return json_stringn(s.p, s.len); }

static int set(json_t *o, const char *k, json_t *v) {
  return v ? json_object_set_new(o, k, v) : -1;
}

static int list_one(const ns_hc_walked *w, void *ud) {
  list_ctx *c = ud;
  const ns_hc_entry *e = w->e;
  ns_cache_stored st = {e->status, &e->headers, &e->vary, e->request_time_ms,
                        e->response_time_ms, NULL};
  ns_cache_request rq = {"GET", NULL, NULL};
  ns_cache_decision d;
  ns_headers none;
  const ns_header_field *f;
  size_t it = 0;
  json_t *o = json_object(), *vary = json_object();
  int bad = !o || !vary;
  uint64_t a, b, n;
  ns_headers_init(&none, ns_mem_default());
  rq.headers = &none;
  ns_cache_decide(NULL, &rq, &st, c->now_ms, &d);
  while (!bad && (f = ns_headers_next(&e->vary, &it, NULL)) != NULL)
    bad = set(vary, f->name, json_stringn(f->value, f->value_len)) != 0;
  bad = bad || set(o, "url", jstr_span(w->url)) || set(o, "site", jstr_span(w->site)) ||
        set(o, "status", json_integer(e->status)) ||
        set(o, "size", json_integer((json_int_t)w->size)) ||
        set(o, "coding", json_string(ns_coding_name(w->coding))) ||
        set(o, "stored", json_integer(e->response_time_ms)) ||
        set(o, "age", json_integer(d.age_ms / 1000)) ||
        set(o, "lifetime", json_integer(d.lifetime_ms / 1000)) ||
        set(o, "fresh", json_boolean(!d.stale)) ||
        set(o, "decision", json_string(d.reason)) ||
        set(o, "last_used", json_integer(w->atime_ms));
  if (!bad && e->status == 206 && ns_cache_piece(&e->headers, &a, &b, &n)) {
    char r[80];
    snprintf(r, sizeof(r), "bytes %llu-%llu/%llu", (unsigned long long)a,
             (unsigned long long)b, (unsigned long long)n);
    bad = set(o, "range", json_string(r)) != 0;
  }
  if (!bad) {
    bad = json_object_set_new(o, "vary", vary) != 0;
    vary = NULL;
  }
  if (!bad) {
    bad = json_array_append_new(c->entries, o) != 0;
    o = NULL;
  }
  json_decref(vary);
  json_decref(o);
  ns_headers_free(&none);
  c->oom |= bad;
  return bad;
}

netstash_error netstash_cache_list(netstash_ctx *ctx, const char *url_prefix, char **json) {
  list_ctx c;
  json_t *o = NULL;
  netstash_error rv;
  if (json)
    *json = NULL;
  if (!json)
    return NETSTASH_E_INVALID_ARGUMENT;
  if ((rv = need_store(ctx, "netstash_cache_list")) != NETSTASH_OK)
    return rv;
  memset(&c, 0, sizeof(c));
  c.now_ms = wall_ms();
  if (!(c.entries = json_array()))
    return NETSTASH_E_NOMEM;
  rv = ns_httpcache_walk(ctx->store, &ctx->mem, url_prefix, list_one, &c);
  if (rv == NETSTASH_OK && c.oom)
    rv = NETSTASH_E_NOMEM;
  if (rv == NETSTASH_OK) {
    o = json_object();
    if (!o || json_object_set_new(o, "count", json_integer((json_int_t)json_array_size(c.entries))) ||
        json_object_set(o, "entries", c.entries))
      rv = NETSTASH_E_NOMEM;
  }
  if (rv == NETSTASH_OK)
    rv = ns_json_text(&ctx->mem, o, LIST_OUT_MAX, json);
  if (rv != NETSTASH_OK)
    NS_WARN(ctx, MOD, "netstash_cache_list: %s", netstash_strerror(rv));
  json_decref(o);
  json_decref(c.entries);
  return rv;
}

netstash_error netstash_cache_remove(netstash_ctx *ctx, const char *url, unsigned *removed) {
  ns_cache_policy pol;
  netstash_error rv;
  if (removed)
    *removed = 0;
  if (!url)
    return NETSTASH_E_INVALID_ARGUMENT;
  if ((rv = need_store(ctx, "netstash_cache_remove")) != NETSTASH_OK)
    return rv;
  ns_cache_policy_init(&pol);
  rv = ns_httpcache_remove_url(ctx->store, &ctx->mem, &pol, url, removed);
  if (rv != NETSTASH_OK && rv != NETSTASH_E_NOT_FOUND)
    NS_WARN(ctx, MOD, "netstash_cache_remove %s: %s", url, netstash_strerror(rv));
  return rv;
}
