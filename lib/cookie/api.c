/*
 * api.c — the public cookie API (include/netstash/cookie.h) over the jars of
 * a context (lib/cookie/jar.h), under the context's cookie lock.
 */
#include "ns_setup.h"

#include <stdio.h>
#include <time.h>

#include "cookie/jar.h"
#include "core/ctx.h"
#include "core/url.h"

/* netstash_cookie is an ns_cookie seen from outside. */
#define C(c) ((const ns_cookie *)(const void *)(c))
#define PUB(c) ((const netstash_cookie *)(const void *)(c))

const char *netstash_cookie_name(const netstash_cookie *c) { return c ? C(c)->name : ""; }
const char *netstash_cookie_value(const netstash_cookie *c) { return c ? C(c)->value : ""; }
const char *netstash_cookie_domain(const netstash_cookie *c) { return c ? C(c)->domain : ""; }
const char *netstash_cookie_path(const netstash_cookie *c) { return c ? C(c)->path : ""; }
const char *netstash_cookie_partition(const netstash_cookie *c) {
  return c ? C(c)->partition : NULL;
}
int64_t netstash_cookie_expires_ms(const netstash_cookie *c) {
  if (!c || C(c)->expiry_ms == NS_COOKIE_EXPIRY_SESSION || !C(c)->persistent)
    return -1;
  return C(c)->expiry_ms;
}
uint32_t netstash_cookie_flags(const netstash_cookie *c) {
  uint32_t f = 0;
  if (!c)
    return 0;
  if (C(c)->secure)
    f |= NETSTASH_COOKIE_SECURE;
  if (C(c)->http_only)
    f |= NETSTASH_COOKIE_HTTP_ONLY;
  if (C(c)->host_only)
    f |= NETSTASH_COOKIE_HOST_ONLY;
  if (C(c)->persistent)
    f |= NETSTASH_COOKIE_PERSISTENT;
  return f;
}
netstash_same_site netstash_cookie_same_site(const netstash_cookie *c) {
  return c ? (netstash_same_site)C(c)->same_site : NETSTASH_SAME_SITE_UNSET;
}

static int64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---------------------------------------------------------------- hooks */

typedef struct hook {
  ns_list node;
  netstash_ctx *ctx;
  char name[NS_COOKIE_JAR_NAME_MAX + 1];
  netstash_cookie_listener_cb listener;
  void *listener_ud;
  netstash_cookie_policy_cb policy;
  void *policy_ud;
} hook;

void ns_cookie_hooks_free(netstash_ctx *ctx) {
  while (!ns_list_empty(&ctx->cookie_hooks)) {
    hook *h = ns_list_entry(ctx->cookie_hooks.next, hook, node);
    ns_list_remove(&h->node);
    ns_free(&ctx->mem, h);
  }
}

static hook *hook_for(netstash_ctx *ctx, const char *name) {
  ns_list *pos, *tmp;
  hook *h;
  ns_list_foreach_safe(pos, tmp, &ctx->cookie_hooks) {
    h = ns_list_entry(pos, hook, node);
    if (strcmp(h->name, name) == 0)
      return h;
  }
  h = ns_calloc(&ctx->mem, 1, sizeof(*h));
  if (!h)
    return NULL;
  h->ctx = ctx;
  snprintf(h->name, sizeof(h->name), "%s", name);
  ns_list_insert_tail(&ctx->cookie_hooks, &h->node);
  return h;
}

static void listener_tramp(ns_cookie_jar *jar, const ns_cookie *c, ns_cookie_change change,
                           void *ud) {
  hook *h = ud;
  (void)jar;
  if (h->listener)
    h->listener(h->name, PUB(c), (netstash_cookie_change)change, h->listener_ud);
}

/* The cookie a policy callback may modify right now (set only during the
 * callback, under the context's cookie lock: one at a time per context;
 * thread-local so that contexts on different threads do not mix). */
static _Thread_local ns_cookie *modifiable;

static ns_cookie_verdict policy_tramp(ns_cookie_jar *jar, ns_cookie_op op,
                                      const ns_cookie_request *req, ns_cookie *c, void *ud) {
  hook *h = ud;
  int cross;
  ns_cookie_verdict verdict;
  (void)jar;
  if (!h->policy)
    return NS_COOKIE_ALLOW;
  cross = req ? ns_cookie_jars_cross_site(h->ctx->cookies, req) : 0;
  /* modifications are allowed while this SET/SCRIPT_SET call runs */
  modifiable = (op == NS_COOKIE_OP_SET || op == NS_COOKIE_OP_SCRIPT_SET) ? c : NULL;
  verdict = h->policy(h->name, (netstash_cookie_op)op, (netstash_cookie *)(void *)c,
                      req && req->url ? req->url->url : NULL, cross, h->policy_ud)
                ? NS_COOKIE_BLOCK
                : NS_COOKIE_ALLOW;
  modifiable = NULL;
  return verdict;
}

netstash_error netstash_cookie_modify_expiry(netstash_cookie *pc, int64_t expires_ms) {
  ns_cookie *c = (ns_cookie *)(void *)pc;
  if (!c || c != modifiable)
    return NETSTASH_E_ILLEGAL_STATE;
  if (expires_ms < 0) {
    c->persistent = 0;
    c->expiry_ms = NS_COOKIE_EXPIRY_SESSION;
  } else {
    c->persistent = 1;
    c->expiry_ms = expires_ms;
  }
  return NETSTASH_OK;
}

netstash_error netstash_cookie_modify_flags(netstash_cookie *pc, uint32_t set, uint32_t clear) {
  ns_cookie *c = (ns_cookie *)(void *)pc;
  if (!c || c != modifiable)
    return NETSTASH_E_ILLEGAL_STATE;
  if ((set | clear) & ~(NETSTASH_COOKIE_SECURE | NETSTASH_COOKIE_HTTP_ONLY))
    return NETSTASH_E_INVALID_ARGUMENT;
  if (set & NETSTASH_COOKIE_SECURE)
    c->secure = 1;
  if (clear & NETSTASH_COOKIE_SECURE)
    c->secure = 0;
  if (set & NETSTASH_COOKIE_HTTP_ONLY)
    c->http_only = 1;
  if (clear & NETSTASH_COOKIE_HTTP_ONLY)
    c->http_only = 0;
  return NETSTASH_OK;
}

netstash_error netstash_cookie_modify_same_site(netstash_cookie *pc, netstash_same_site ss) {
  ns_cookie *c = (ns_cookie *)(void *)pc;
  if (!c || c != modifiable)
    return NETSTASH_E_ILLEGAL_STATE;
  if ((int)ss < NETSTASH_SAME_SITE_UNSET || ss > NETSTASH_SAME_SITE_STRICT)
    return NETSTASH_E_INVALID_ARGUMENT;
  c->same_site = (uint8_t)ss;
  return NETSTASH_OK;
}

/* ---------------------------------------------------------------- calls */

static netstash_error open_locked(netstash_ctx *ctx, const char *name, int private_jar,
                                  ns_cookie_jar **out) {
  *out = ns_cookie_jars_get(ctx->cookies, name);
  if (*out)
    return NETSTASH_OK;
  return ns_cookie_jars_open(ctx->cookies, name, private_jar ? NS_COOKIE_JAR_MEMORY : 0, wall_ms(),
                             out);
}

#define WITH_JAR(ctx, name, jar, ...)                                                   \
  do {                                                                                 \
    netstash_error rv_;                                                                \
    if (!(ctx) || !(name))                                                             \
      return NETSTASH_E_INVALID_ARGUMENT;                                              \
    uv_mutex_lock(&(ctx)->cookie_lock);                                                \
    rv_ = open_locked((ctx), (name), 0, &(jar));                                       \
    if (rv_ == NETSTASH_OK) {                                                          \
      __VA_ARGS__                                                                      \
    }                                                                                  \
    uv_mutex_unlock(&(ctx)->cookie_lock);                                              \
    return rv_;                                                                        \
  } while (0)

netstash_error netstash_cookie_jar_open(netstash_ctx *ctx, const char *name, int private_jar) {
  ns_cookie_jar *jar;
  netstash_error rv;
  if (!ctx || !name)
    return NETSTASH_E_INVALID_ARGUMENT;
  uv_mutex_lock(&ctx->cookie_lock);
  rv = open_locked(ctx, name, private_jar, &jar);
  uv_mutex_unlock(&ctx->cookie_lock);
  return rv;
}

static netstash_error script_req(const char *url, const char *top, ns_url *u, ns_url *t,
                                 ns_cookie_request *cr) {
  netstash_error rv;
  memset(u, 0, sizeof(*u));
  memset(t, 0, sizeof(*t));
  memset(cr, 0, sizeof(*cr));
  if (!url)
    return NETSTASH_E_INVALID_ARGUMENT;
  rv = ns_url_parse(ns_mem_default(), url, u, NULL, 0);
  if (rv == NETSTASH_OK && top)
    rv = ns_url_parse(ns_mem_default(), top, t, NULL, 0);
  cr->url = u;
  cr->site_for_cookies = top ? t : u; /* a document's site for cookies */
  cr->top_level_site = top ? t : NULL;
  cr->method = "GET";
  return rv;
}

netstash_error netstash_cookie_script_get(netstash_ctx *ctx, const char *name, const char *url,
                                          const char *top, char **out) {
  ns_cookie_jar *jar;
  ns_url u, t;
  ns_cookie_request cr;
  if (!out)
    return NETSTASH_E_INVALID_ARGUMENT;
  *out = NULL;
  WITH_JAR(ctx, name, jar, {
    ns_buf b;
    rv_ = script_req(url, top, &u, &t, &cr);
    ns_buf_init(&b, &ctx->mem, 1u << 20);
    if (rv_ == NETSTASH_OK)
      rv_ = ns_cookie_jar_script_get(jar, &cr, wall_ms(), &b);
    if (rv_ == NETSTASH_OK && !b.data && ns_buf_append(&b, "x", 1) == NETSTASH_OK)
      b.data[0] = 0, b.len = 0;
    if (rv_ == NETSTASH_OK && !b.data)
      rv_ = NETSTASH_E_NOMEM;
    if (rv_ == NETSTASH_OK)
      *out = (char *)ns_buf_steal(&b, NULL);
    ns_buf_free(&b);
    ns_url_free(ns_mem_default(), &u);
    ns_url_free(ns_mem_default(), &t);
  });
}

netstash_error netstash_cookie_script_set(netstash_ctx *ctx, const char *name, const char *url,
                                          const char *top, const char *str, int *stored) {
  ns_cookie_jar *jar;
  ns_url u, t;
  ns_cookie_request cr;
  if (stored)
    *stored = 0;
  if (!str)
    return NETSTASH_E_INVALID_ARGUMENT;
  WITH_JAR(ctx, name, jar, {
    ns_cookie_status st = NS_COOKIE_REJ_SYNTAX;
    rv_ = script_req(url, top, &u, &t, &cr);
    if (rv_ == NETSTASH_OK)
      rv_ = ns_cookie_jar_script_set(jar, &cr, str, strlen(str), wall_ms(), &st);
    if (rv_ == NETSTASH_OK && stored)
      *stored = st == NS_COOKIE_STORED;
    ns_url_free(ns_mem_default(), &u);
    ns_url_free(ns_mem_default(), &t);
  });
}

typedef struct visit {
  netstash_cookie_visit_cb fn;
  void *ud;
} visit;

static int visit_one(const ns_cookie *c, void *ud) {
  visit *v = ud;
  v->fn(PUB(c), v->ud);
  return 0;
}

netstash_error netstash_cookie_list(netstash_ctx *ctx, const char *name,
                                    netstash_cookie_visit_cb fn, void *ud) {
  ns_cookie_jar *jar;
  if (!fn)
    return NETSTASH_E_INVALID_ARGUMENT;
  WITH_JAR(ctx, name, jar, {
    visit v = {fn, ud};
    ns_cookie_jar_foreach(jar, visit_one, &v);
  });
}

netstash_error netstash_cookie_delete(netstash_ctx *ctx, const char *name, const char *domain,
                                      const char *cname, size_t *n) {
  ns_cookie_jar *jar;
  WITH_JAR(ctx, name, jar, { rv_ = ns_cookie_jar_delete(jar, domain, cname, n); });
}

netstash_error netstash_cookie_import(netstash_ctx *ctx, const char *name, const char *text,
                                      size_t len, size_t *imported, size_t *skipped) {
  ns_cookie_jar *jar;
  if (!text && len)
    return NETSTASH_E_INVALID_ARGUMENT;
  WITH_JAR(ctx, name, jar, {
    rv_ = ns_cookie_jar_import_netscape(jar, text ? text : "", len, wall_ms(), imported, skipped);
  });
}

netstash_error netstash_cookie_export(netstash_ctx *ctx, const char *name, char **text,
                                      size_t *len) {
  ns_cookie_jar *jar;
  if (!text)
    return NETSTASH_E_INVALID_ARGUMENT;
  *text = NULL;
  WITH_JAR(ctx, name, jar, {
    ns_buf b;
    ns_buf_init(&b, &ctx->mem, 64u << 20);
    size_t l;
    rv_ = ns_cookie_jar_export_netscape(jar, wall_ms(), &b, NULL);
    l = b.len;
    /* ns_buf keeps a NUL after the data; an empty buffer has no allocation */
    if (rv_ == NETSTASH_OK && !b.data && ns_buf_append(&b, "x", 1) == NETSTASH_OK)
      b.data[0] = 0, b.len = 0;
    if (rv_ == NETSTASH_OK && !b.data)
      rv_ = NETSTASH_E_NOMEM;
    if (rv_ == NETSTASH_OK) {
      *text = (char *)ns_buf_steal(&b, NULL);
      if (len)
        *len = l;
    }
    ns_buf_free(&b);
  });
}

netstash_error netstash_cookie_set_listener(netstash_ctx *ctx, const char *name,
                                            netstash_cookie_listener_cb cb, void *ud) {
  ns_cookie_jar *jar;
  WITH_JAR(ctx, name, jar, {
    hook *h = hook_for(ctx, name);
    if (!h) {
      rv_ = NETSTASH_E_NOMEM;
    } else {
      h->listener = cb;
      h->listener_ud = ud;
      ns_cookie_jar_set_listener(jar, cb ? listener_tramp : NULL, h);
    }
  });
}

netstash_error netstash_cookie_set_policy(netstash_ctx *ctx, const char *name,
                                          netstash_cookie_policy_cb cb, void *ud) {
  ns_cookie_jar *jar;
  WITH_JAR(ctx, name, jar, {
    hook *h = hook_for(ctx, name);
    if (!h) {
      rv_ = NETSTASH_E_NOMEM;
    } else {
      h->policy = cb;
      h->policy_ud = ud;
      ns_cookie_jar_set_policy(jar, cb ? policy_tramp : NULL, h);
    }
  });
}

netstash_error netstash_cookie_load_public_suffixes(netstash_ctx *ctx, const char *path) {
  netstash_error rv;
  if (!ctx || !path)
    return NETSTASH_E_INVALID_ARGUMENT;
  uv_mutex_lock(&ctx->cookie_lock);
  rv = ns_cookie_jars_load_psl(ctx->cookies, path);
  uv_mutex_unlock(&ctx->cookie_lock);
  return rv;
}

netstash_error netstash_cookie_sweep(netstash_ctx *ctx, const char *name, size_t *n) {
  ns_cookie_jar *jar;
  WITH_JAR(ctx, name, jar, { rv_ = ns_cookie_jar_sweep(jar, wall_ms(), n); });
}
