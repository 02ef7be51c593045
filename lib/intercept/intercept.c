/*
 * intercept.c — the resource-interceptor ABI (include/netstash/interceptor.h)
 * over the fetch engine: browser-level request attributes mapped onto the
 * engine's knobs, jobs with push or pull bodies, the synchronous preload
 * fast path.
 */
#include "ns_setup.h"

#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "core/buf.h"
#include "core/ctx.h"
#include "core/reader.h"
#include "core/url.h"
#include "preload/serve.h"
#include "transport/fetch.h"
#include "transport/transport.h"

#define PULL_DEFAULT ((uint64_t)1 << 20)
#define PULL_MIN ((uint64_t)16 << 10)
#define FOLLOW_MAX 20

/* ------------------------------------------------------------ request attributes */

static netstash_error frozen(const netstash_request *r) {
  return atomic_load(&((netstash_request *)r)->frozen) ? NETSTASH_E_ILLEGAL_STATE : NETSTASH_OK;
}

netstash_error netstash_request_set_destination(netstash_request *r, netstash_destination d) {
  if (!r || (unsigned)d > NETSTASH_DEST_OTHER)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (frozen(r))
    return NETSTASH_E_ILLEGAL_STATE;
  r->destination = (int)d;
  return NETSTASH_OK;
}

netstash_error netstash_request_set_mode(netstash_request *r, netstash_request_mode m) {
  if (!r || (unsigned)m > NETSTASH_MODE_NAVIGATE)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (frozen(r))
    return NETSTASH_E_ILLEGAL_STATE;
  r->mode = (int)m;
  return NETSTASH_OK;
}

netstash_error netstash_request_set_credentials(netstash_request *r, netstash_credentials c) {
  if (!r || (unsigned)c > NETSTASH_CREDENTIALS_OMIT)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (frozen(r))
    return NETSTASH_E_ILLEGAL_STATE;
  r->credentials = (int)c;
  return NETSTASH_OK;
}

netstash_error netstash_request_set_from_worker(netstash_request *r, int from_worker) {
  if (!r)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (frozen(r))
    return NETSTASH_E_ILLEGAL_STATE;
  r->from_worker = from_worker ? 1 : 0;
  return NETSTASH_OK;
}

netstash_error netstash_request_set_load_flags(netstash_request *r, uint32_t flags) {
  if (!r || (flags & ~0x1fu))
    return NETSTASH_E_INVALID_ARGUMENT;
  if (frozen(r))
    return NETSTASH_E_ILLEGAL_STATE;
  r->load_flags = flags;
  if (flags & NETSTASH_LOAD_DISABLE_CACHE) {
    r->cache_mode = NETSTASH_CACHE_BYPASS;
    r->no_preload = 1;
  } else if (flags & NETSTASH_LOAD_ONLY_FROM_CACHE) {
    r->cache_mode = NETSTASH_CACHE_ONLY_IF_CACHED;
  } else if (flags & NETSTASH_LOAD_BYPASS_CACHE) {
    r->cache_mode = NETSTASH_CACHE_BYPASS;
  } else if (flags & NETSTASH_LOAD_VALIDATE_CACHE) {
    r->cache_mode = NETSTASH_CACHE_VALIDATE;
  } else if (flags & NETSTASH_LOAD_SKIP_VALIDATION) {
    r->cache_mode = NETSTASH_CACHE_SKIP_VALIDATION;
  } else {
    r->cache_mode = NETSTASH_CACHE_DEFAULT;
  }
  return NETSTASH_OK;
}

netstash_error netstash_request_set_redirect_mode(netstash_request *r, netstash_redirect_mode m) {
  if (!r || (unsigned)m > NETSTASH_REDIRECT_MANUAL)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (frozen(r))
    return NETSTASH_E_ILLEGAL_STATE;
  r->follow = m == NETSTASH_REDIRECT_FOLLOW ? FOLLOW_MAX : 0;
  r->redirect_mode_set = 1;
  return NETSTASH_OK;
}

netstash_error netstash_request_set_pull_buffer(netstash_request *r, uint64_t bytes) {
  if (!r || bytes < PULL_MIN)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (frozen(r))
    return NETSTASH_E_ILLEGAL_STATE;
  r->pull_buffer = bytes;
  return NETSTASH_OK;
}

/* Chromium's Accept values per destination (net/http/http_util, blink). */
static const char *accept_for(int d) {
  switch (d) {
  case NETSTASH_DEST_DOCUMENT:
  case NETSTASH_DEST_IFRAME:
    return "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
           "*/*;q=0.8";
  case NETSTASH_DEST_STYLE:
    return "text/css,*/*;q=0.1";
  case NETSTASH_DEST_IMAGE:
    return "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8";
  default:
    return "*/*";
  }
}

static netstash_priority priority_for(int d) {
  switch (d) {
  case NETSTASH_DEST_DOCUMENT:
  case NETSTASH_DEST_IFRAME:
  case NETSTASH_DEST_STYLE:
  case NETSTASH_DEST_FONT:
    return NETSTASH_PRIORITY_HIGHEST;
  case NETSTASH_DEST_SCRIPT:
  case NETSTASH_DEST_EMPTY:
  case NETSTASH_DEST_WORKER:
  case NETSTASH_DEST_MANIFEST:
    return NETSTASH_PRIORITY_MEDIUM;
  default:
    return NETSTASH_PRIORITY_LOW;
  }
}

/* scheme://host:port of a normalised URL equals that of origin? */
static int same_origin(const ns_mem *mem, const char *url, const char *origin) {
  ns_url a, b;
  int same;
  if (ns_url_parse(mem, url, &a, NULL, 0) != NETSTASH_OK)
    return 0;
  if (ns_url_parse(mem, origin, &b, NULL, 0) != NETSTASH_OK) {
    ns_url_free(mem, &a);
    return 0;
  }
  same = !strcmp(a.scheme, b.scheme) && !ns_ascii_casecmp(a.host, b.host) && a.port == b.port;
  ns_url_free(mem, &a);
  ns_url_free(mem, &b);
  return same;
}

static int has_header(const netstash_request *r, const char *name) {
  size_t n = strlen(name);
  for (size_t i = 0; i < r->nheaders; i++)
    if (!ns_ascii_casecmp_n(r->headers[i], name, n) && r->headers[i][n] == ':')
      return 1;
  return 0;
}

/* Applies the browser-level attributes to the engine's knobs, before the
 * request is frozen. */
static netstash_error apply(netstash_ctx *ctx, netstash_request *r) {
  netstash_error e = NETSTASH_OK;
  int nav = r->destination == NETSTASH_DEST_DOCUMENT || r->destination == NETSTASH_DEST_IFRAME;
  if (r->mode == NETSTASH_MODE_SAME_ORIGIN && r->initiator.url &&
      !same_origin(&ctx->mem, r->url.url, r->initiator.url))
    return NETSTASH_E_INVALID_ARGUMENT;
  if (r->credentials == NETSTASH_CREDENTIALS_OMIT ||
      (r->credentials == NETSTASH_CREDENTIALS_SAME_ORIGIN && r->initiator.url &&
       !same_origin(&ctx->mem, r->url.url, r->initiator.url)))
    r->no_cookies = 1;
  if (r->from_worker && nav)
    r->no_preload = 1;
  if (!r->redirect_mode_set && !r->follow)
    r->follow = FOLLOW_MAX;
  if (!has_header(r, "accept"))
    e = netstash_request_add_header(r, "Accept", accept_for(r->destination));
  if (!e && !r->priority_set)
    r->priority = priority_for(r->destination);
  return e;
}

/* ------------------------------------------------------------ fast path */

/* Range or conditional fields: a job's (a part, or a 304 when the
 * validators match), not the whole stored answer. One pass over the
 * request's fields (every fast-path hit runs it). */
static int partial_or_conditional(const netstash_request *req) {
  static const char *const names[] = {"range",    "if-none-match",       "if-modified-since",
                                      "if-match", "if-unmodified-since", "if-range"};
  for (size_t i = 0; i < req->nheaders; i++) {
    const char *h = req->headers[i];
    size_t n = strcspn(h, ":");
    if (h[n] != ':' || (n != 5 && (n < 8 || ns_ascii_casecmp_n(h, "if-", 3) != 0)))
      continue; /* neither "range" nor an If- field: most of them */
    for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++)
      if (strlen(names[k]) == n && !ns_ascii_casecmp_n(h, names[k], n))
        return 1;
  }
  return 0;
}

/* May the preload store answer req (as a job would let it)? */
static int preload_may(const netstash_request *req) {
  return !(req->method && strcmp(req->method, "GET") != 0) && !req->has_body && !req->no_preload &&
         req->cache_mode != NETSTASH_CACHE_BYPASS && !partial_or_conditional(req) &&
         !(req->from_worker && (req->destination == NETSTASH_DEST_DOCUMENT ||
                                req->destination == NETSTASH_DEST_IFRAME));
}

/* May a fresh stored answer be served for req without a request of its own? */
static int cache_may(const netstash_request *req) {
  return !(req->method && strcmp(req->method, "GET") != 0) && !req->has_body &&
         req->cache_mode == NETSTASH_CACHE_DEFAULT && req->load_flags == 0 &&
         !partial_or_conditional(req);
}

netstash_error netstash_intercept_preloaded(const netstash_request *req,
                                            netstash_preload_hit *hit) {
  if (!req || !hit)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (!preload_may(req))
    return NETSTASH_E_NOT_FOUND;
  return netstash_preload_lookup(hit, req->url.url);
}

netstash_error netstash_intercept_cached(const netstash_request *req, netstash_preload_hit *hit) {
  if (!req || !hit)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (!cache_may(req))
    return NETSTASH_E_NOT_FOUND;
  return ns_preload_hit_cached(hit, req, 0);
}

netstash_error netstash_intercept_lookup(const netstash_request *req, netstash_preload_hit *hit) {
  int pre, cache;
  if (!req || !hit)
    return NETSTASH_E_INVALID_ARGUMENT;
  pre = preload_may(req);
  cache = cache_may(req);
  if (pre && cache && ns_preload_hit_remote(hit))
    return ns_preload_hit_cached(hit, req, 1); /* netd tries both: one round trip */
  if (pre) {
    netstash_error e = netstash_preload_lookup(hit, req->url.url);
    if (e == NETSTASH_OK || !cache)
      return e;
  }
  return cache ? ns_preload_hit_cached(hit, req, 0) : NETSTASH_E_NOT_FOUND;
}

/* ------------------------------------------------------------ jobs */

struct netstash_job {
  ns_mem mem;
  netstash_ctx *ctx;
  netstash_fetch *f;
  netstash_job_callbacks cbs;
  void *ud;
  atomic_int refs; /* caller + the fetch's callbacks */
  atomic_int orphaned;       /* the caller let go: no more callbacks */
  atomic_int resume_pending; /* resume_task queued */
  int destination, from_worker;
  int manual;
  int head; /* a HEAD request: no body follows its head */
  char *redirect_url;

  /* pull mode, guarded by lock */
  int pull;
  uv_mutex_t lock;
  ns_buf q;
  size_t q_off;
  ns_buf q2;   /* what arrives while the caller holds a view of q (peek) */
  int viewing; /* netstash_job_peek's view of q is out: q must not move */
  uint64_t pull_max;
  uint64_t expect, got; /* a stored answer's announced body length, bytes so far */
  int paused;
  int ended;
  netstash_error result;
  ns_task resume_task;
};

static void job_unref(netstash_job *j) {
  if (atomic_fetch_sub(&j->refs, 1) != 1)
    return;
  netstash_fetch_del(j->f);
  ns_buf_free(&j->q);
  ns_buf_free(&j->q2);
  ns_free(&j->mem, j->redirect_url);
  uv_mutex_destroy(&j->lock);
  ns_mem mem = j->mem;
  ns_free(&mem, j);
}

static int live(netstash_job *j) {
  return !atomic_load(&j->orphaned);
}

static void on_redirect_hook(netstash_fetch *f, int status, const char *location, void *ud) {
  netstash_job *j = ud;
  (void)f;
  if (live(j) && j->cbs.on_redirect)
    j->cbs.on_redirect(j, status, location, j->ud);
}

/* Pull mode, an answer from a store (delivered whole, at once): the body
 * length it announces, so that a buffer that must grow grows once to hold
 * all that is still to come (on_data) instead of doubling into it chunk by
 * chunk (a 4 MiB stored body took 1, 2, 4 and 8 MiB reallocs, each a copy of
 * what came before). A reader that drains each piece as it comes (netd's
 * fronts, from on_readable) keeps the buffer at one piece. Not for the
 * network: its bodies pause at the pull bound. 0: unknown. */
#define STORED_EXPECT_MAX ((uint64_t)64 << 20)
static uint64_t stored_length(const netstash_job *j, netstash_fetch *f, int status) {
  const char *cl = netstash_fetch_header(f, "content-length");
  ns_reader r;
  uint64_t n = 0;
  int sat = 0;
  if (!cl || j->head || status < 200 || status == 204 || status == 304 ||
      netstash_fetch_source(f) == NETSTASH_SOURCE_NETWORK)
    return 0;
  ns_reader_init(&r, cl, strlen(cl));
  /* not a plain length (a list, garbage) or a huge one: no hint (a wrong
   * one would only cost a realloc) */
  if (!ns_reader_uint(&r, STORED_EXPECT_MAX, &n, &sat) || sat || !ns_reader_eof(&r))
    return 0;
  return n;
}

static void on_response(netstash_fetch *f, void *ud) {
  netstash_job *j = ud;
  int st = netstash_fetch_status(f);
  if (j->pull) {
    uv_mutex_lock(&j->lock);
    j->expect = stored_length(j, f, st);
    j->got = 0;
    uv_mutex_unlock(&j->lock);
  }
  if (j->manual && st >= 300 && st < 400 && st != 304) {
    const char *loc = netstash_fetch_header(f, "location");
    ns_url u;
    if (loc && ns_url_resolve(&j->mem, netstash_fetch_effective_url(f), loc, &u, NULL, 0) ==
                   NETSTASH_OK) {
      j->redirect_url = ns_strdup(&j->mem, u.url);
      ns_url_free(&j->mem, &u);
    }
  }
  if (live(j) && j->cbs.on_response)
    j->cbs.on_response(j, j->ud);
}

static void on_data(netstash_fetch *f, const uint8_t *data, size_t len, void *ud) {
  netstash_job *j = ud;
  ns_buf *t;
  int notify;
  if (!j->pull) {
    if (live(j))
      j->cbs.on_data(j, data, len, j->ud);
    return;
  }
  if (!live(j))
    return;
  uv_mutex_lock(&j->lock);
  notify = j->q.len == j->q_off && j->q2.len == 0;
  /* q may not move while the caller holds a view of it, and what follows
   * data already in q2 goes there too (order) */
  t = j->viewing || j->q2.len ? &j->q2 : &j->q;
  j->got += len;
  if (t->len && t->len + len >= t->cap && j->expect > j->got)
    (void)ns_buf_reserve(t, len + (size_t)(j->expect - j->got)); /* a failure shows below */
  if (ns_buf_append(t, data, len) != NETSTASH_OK) {
    uv_mutex_unlock(&j->lock);
    /* out of memory: the fetch ends with NOMEM (transport.c deliver()
     * checks f->fail after this callback), never as a cut body taken for a
     * complete one */
    f->fail = NETSTASH_E_NOMEM;
    ns_fetch_detail(f, "out of memory buffering the body for netstash_job_read");
    return;
  }
  if (!j->paused && j->q.len - j->q_off + j->q2.len >= j->pull_max &&
      ns_transport_pause(f, 1) == NETSTASH_OK)
    j->paused = 1;
  uv_mutex_unlock(&j->lock);
  if (notify && live(j) && j->cbs.on_readable)
    j->cbs.on_readable(j, j->ud);
}

static void on_complete(netstash_fetch *f, netstash_error err, void *ud) {
  netstash_job *j = ud;
  (void)f;
  uv_mutex_lock(&j->lock);
  j->ended = 1;
  j->result = err;
  uv_mutex_unlock(&j->lock);
  if (j->pull && live(j) && j->cbs.on_readable)
    j->cbs.on_readable(j, j->ud);
  if (live(j) && j->cbs.on_complete)
    j->cbs.on_complete(j, err, j->ud);
  job_unref(j); /* the callbacks' reference */
}

static void resume_task_run(netstash_ctx *ctx, ns_task *t) {
  netstash_job *j = (netstash_job *)((char *)t - offsetof(netstash_job, resume_task));
  (void)ctx;
  atomic_store(&j->resume_pending, 0);
  uv_mutex_lock(&j->lock);
  int was = j->paused;
  j->paused = 0;
  uv_mutex_unlock(&j->lock);
  if (was)
    ns_transport_pause(j->f, 0);
  job_unref(j);
}

netstash_error netstash_job_start_versioned(netstash_ctx *ctx, netstash_request *req,
                                            int version, const netstash_job_callbacks *cbs,
                                            void *ud, netstash_job **out) {
  netstash_job *j;
  netstash_error e;
  netstash_fetch_callbacks fc = {on_response, on_data, on_complete};
  ns_fetch_hooks hooks;
  if (!out)
    return NETSTASH_E_INVALID_ARGUMENT;
  *out = NULL;
  if (!ctx || !req || (cbs && version < NETSTASH_JOB_CALLBACKS_V1))
    return NETSTASH_E_INVALID_ARGUMENT;
  if (atomic_load(&req->frozen))
    return NETSTASH_E_ILLEGAL_STATE;
  if ((e = apply(ctx, req)) != NETSTASH_OK)
    return e;
  j = ns_calloc(&ctx->mem, 1, sizeof(*j));
  if (!j)
    return NETSTASH_E_NOMEM;
  j->mem = ctx->mem;
  j->ctx = ctx;
  if (cbs)
    j->cbs = *cbs; /* V1 is the only layout so far */
  j->ud = ud;
  j->destination = req->destination;
  j->from_worker = req->from_worker;
  j->manual = req->follow == 0;
  j->head = req->method && strcmp(req->method, "HEAD") == 0;
  j->pull = !j->cbs.on_data;
  j->pull_max = req->pull_buffer ? req->pull_buffer : PULL_DEFAULT;
  j->result = NETSTASH_E_ILLEGAL_STATE;
  j->resume_task.run = resume_task_run;
  ns_buf_init(&j->q, &j->mem, SIZE_MAX);
  ns_buf_init(&j->q2, &j->mem, SIZE_MAX);
  if (uv_mutex_init(&j->lock) != 0) {
    ns_free(&ctx->mem, j);
    return NETSTASH_E_INTERNAL;
  }
  atomic_init(&j->refs, 2);
  hooks.on_redirect = on_redirect_hook;
  hooks.ud = j;
  *out = j; /* before any callback can run (ns_fetch_start_ex) */
  e = ns_fetch_start_ex(ctx, req, NETSTASH_FETCH_CALLBACKS_VERSION, &fc, j, &hooks, &j->f);
  if (e != NETSTASH_OK) {
    *out = NULL;
    atomic_store(&j->refs, 1);
    job_unref(j);
    return e;
  }
  return NETSTASH_OK;
}

netstash_error netstash_job_cancel(netstash_job *j) {
  return j ? netstash_fetch_cancel(j->f) : NETSTASH_E_INVALID_ARGUMENT;
}

void netstash_job_del(netstash_job *j) {
  if (!j)
    return;
  atomic_store(&j->orphaned, 1);
  netstash_fetch_cancel(j->f);
  job_unref(j);
}

netstash_error netstash_job_wait(netstash_job *j, uint32_t timeout_ms) {
  return j ? netstash_fetch_wait(j->f, timeout_ms) : NETSTASH_E_INVALID_ARGUMENT;
}

/* Under j->lock: q read to its end is emptied, and what arrived meanwhile in
 * q2 takes its place (no copy: the buffers swap). */
static void q_settle(netstash_job *j) {
  if (j->q_off < j->q.len || j->viewing)
    return;
  ns_buf_reset(&j->q);
  j->q_off = 0;
  if (j->q2.len) {
    ns_buf t = j->q;
    j->q = j->q2;
    j->q2 = t;
  }
}

/* Under j->lock: the read side took bytes; 1 when the fetch should resume. */
static int q_taken(netstash_job *j) {
  q_settle(j);
  return j->paused && j->q.len - j->q_off + j->q2.len < j->pull_max / 2;
}

static void post_resume(netstash_job *j) {
  if (!atomic_exchange(&j->resume_pending, 1)) {
    atomic_fetch_add(&j->refs, 1); /* the queued task's */
    if (ns_ctx_post(j->ctx, &j->resume_task) != NETSTASH_OK) {
      atomic_store(&j->resume_pending, 0);
      job_unref(j);
    }
  }
}

netstash_error netstash_job_read(netstash_job *j, uint8_t *buf, size_t cap, size_t *n) {
  size_t avail;
  int resume = 0;
  netstash_error e = NETSTASH_OK;
  if (!j || !n || (cap && !buf))
    return NETSTASH_E_INVALID_ARGUMENT;
  *n = 0;
  if (!j->pull)
    return NETSTASH_E_ILLEGAL_STATE;
  uv_mutex_lock(&j->lock);
  j->viewing = 0; /* a read ends a view */
  q_settle(j);
  avail = j->q.len - j->q_off;
  if (avail) {
    size_t k = avail < cap ? avail : cap;
    memcpy(buf, j->q.data + j->q_off, k);
    j->q_off += k;
    *n = k;
    resume = q_taken(j);
  } else if (j->ended) {
    e = j->result;
  } else {
    e = NETSTASH_E_AGAIN;
  }
  uv_mutex_unlock(&j->lock);
  if (resume)
    post_resume(j);
  return e;
}

netstash_error netstash_job_peek(netstash_job *j, const uint8_t **data, size_t *len) {
  netstash_error e = NETSTASH_OK;
  if (!j || !data || !len)
    return NETSTASH_E_INVALID_ARGUMENT;
  *data = NULL;
  *len = 0;
  if (!j->pull)
    return NETSTASH_E_ILLEGAL_STATE;
  uv_mutex_lock(&j->lock);
  j->viewing = 0;
  q_settle(j);
  if (j->q.len > j->q_off) {
    *data = j->q.data + j->q_off;
    *len = j->q.len - j->q_off;
    j->viewing = 1;
  } else if (j->ended) {
    e = j->result;
  } else {
    e = NETSTASH_E_AGAIN;
  }
  uv_mutex_unlock(&j->lock);
  return e;
}

netstash_error netstash_job_consume(netstash_job *j, size_t n) {
  int resume;
  if (!j)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (!j->pull)
    return NETSTASH_E_ILLEGAL_STATE;
  uv_mutex_lock(&j->lock);
  if (!j->viewing || n > j->q.len - j->q_off) {
    uv_mutex_unlock(&j->lock);
    return NETSTASH_E_INVALID_ARGUMENT; /* more than the view showed */
  }
  j->q_off += n;
  j->viewing = 0;
  resume = q_taken(j);
  uv_mutex_unlock(&j->lock);
  if (resume)
    post_resume(j);
  return NETSTASH_OK;
}

const netstash_fetch *netstash_job_fetch(const netstash_job *j) {
  return j ? j->f : NULL;
}
netstash_source netstash_job_source(const netstash_job *j) {
  return j ? netstash_fetch_source(j->f) : NETSTASH_SOURCE_NONE;
}
int netstash_job_status(const netstash_job *j) {
  return j ? netstash_fetch_status(j->f) : 0;
}
const char *netstash_job_redirect_url(const netstash_job *j) {
  return j ? j->redirect_url : NULL;
}
netstash_destination netstash_job_destination(const netstash_job *j) {
  return j ? (netstash_destination)j->destination : NETSTASH_DEST_EMPTY;
}
int netstash_job_from_worker(const netstash_job *j) {
  return j ? j->from_worker : 0;
}
