/*
 * warm.c — the preload warmer: manifest + signature, diff against the
 * store, DNS prefetch, prioritised concurrent fetches with retries, budgets,
 * pause/resume/cancel and progress, verification on arrival, publication.
 * Offline bundles take the same path with bodies from the archive.
 *
 * Everything after netstash_warm_start runs on the context's loop thread
 * (fetch callbacks, timers, store writes), except a bundle install, which
 * runs on libuv's thread pool (it reads and hashes a whole archive).
 */
#include "ns_setup.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <uv.h>

#include "core/buf.h"
#include "core/ctx.h"
#include "core/url.h"
#include "core/log.h"
#include "preload/bundle.h"
#include "preload/install.h"
#include "preload/manifest.h"
#include "preload/sign.h"

enum { SRC_URL, SRC_FILE, SRC_BUNDLE };
enum { RS_QUEUED = 0, RS_RUNNING, RS_WAIT_RETRY, RS_VERIFIED, RS_DONE, RS_PRESENT, RS_FAILED };

/* A body is reported done once committed: verified bodies wait in the
 * installer's batch at most this long (a kill -9 loses no more). */
#define COMMIT_WINDOW_MS 100
#define POOL_MAX 64            /* idle body buffers kept */
#define POOL_BUF_MAX (4u << 20) /* larger ones are freed */
#define OUT_MAX 512            /* buffers out with the installer */

typedef struct slot {
  struct netstash_warm *w;
  netstash_fetch *f;
  size_t i; /* resource */
  ns_buf body;
  int fallback; /* fetching from the manifest's fallback base */
  int in_use;
} slot;

typedef struct res_state {
  uint8_t st;
  uint8_t attempts;
  uint8_t tried_fallback;
  uint8_t budgeted;
  uint64_t retry_at_ms;
} res_state;

struct netstash_warm {
  ns_mem mem;
  netstash_ctx *ctx;
  atomic_int refs;
  char *source;
  int kind;

  /* knobs */
  uint32_t concurrency, retries, timeout_ms;
  uint64_t max_bytes;
  char **resolve;
  size_t nresolve;
  int metered;
  netstash_warm_event_cb cb;
  void *ud;

  ns_task start_task, ctl_task;
  atomic_int started, cancel_req, pause_req, ctl_pending;
  uv_mutex_t lock;
  uv_cond_t cond;
  int done;
  netstash_error result;
  char detail[512];
  char id[256];
  uint64_t version;
  char key_id[NS_KEY_ID_LEN + 1];
  _Atomic uint64_t c[NETSTASH_WARM_PUBLISHED + 1];

  /* ---- loop thread ---- */
  uint64_t t0_ms;
  ns_buf mbuf, sbuf; /* manifest and signature bytes */
  int sig_missing;
  int crit_nomem; /* a critical resource failed for lack of memory */
  /* conditional manifest fetch: validators recorded by the last install from
   * this URL, the bytes they stand for, and what the server sent now */
  char *v_etag, *v_lastmod, *etag, *lastmod;
  uint8_t *v_mbytes, *v_sig;
  size_t v_mlen, v_siglen;
  int not_modified;
  int pending_meta;   /* manifest fetches outstanding */
  netstash_error meta_err;
  netstash_fetch *mf, *sf;
  ns_manifest *m;
  ns_pl_install *in;
  res_state *rs;
  size_t *order, norder, next;
  slot *slots;
  uint32_t active;
  int paused;
  int finishing;
  uint64_t budget_used; /* bytes planned for fetches started */
  size_t uncommitted;   /* resources RS_VERIFIED */
  uint64_t first_uncommitted_ms;
  /* batches commit on libuv's thread pool while the loop keeps reading */
  uv_work_t cwork;
  ns_pl_batch *cbatch;
  /* body buffers: handed to the installer, recycled after their commit */
  struct {
    uint8_t *p;
    size_t cap;
  } pool[POOL_MAX], out[OUT_MAX];
  size_t npool, nout;
  netstash_error cerr;
  int committing;
  int want_all_done;
  int finish_pending;
  netstash_error finish_err;
  uv_timer_t timer, ctimer; /* retries; commit window */
  int timer_init, closing;
  uint64_t last_progress_ms, rate_t_ms, rate_bytes;
  double rate; /* bytes per ms, smoothed */
  /* bundle */
  uv_work_t work;
  ns_pl_bundle *bundle;
};

static uint64_t mono_ms(void) {
  return uv_hrtime() / 1000000u;
}

static void warm_unref(netstash_warm *w);

/* ------------------------------------------------------------ public knobs */

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), m = strlen(suffix);
  return n >= m && !strcasecmp(s + n - m, suffix);
}

static int looks_like_bundle(const char *path) {
  return ends_with(path, ".tar") || ends_with(path, ".tar.gz") || ends_with(path, ".tgz") ||
         ends_with(path, ".zip") || ends_with(path, ".bundle");
}

netstash_error netstash_warm_new(netstash_ctx *ctx, const char *source, netstash_warm **out) {
  netstash_warm *w;
  if (!out)
    return NETSTASH_E_INVALID_ARGUMENT;
  *out = NULL;
  if (!ctx || !source || !*source)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (!ctx->store)
    return NETSTASH_E_ILLEGAL_STATE;
  w = ns_calloc(&ctx->mem, 1, sizeof(*w));
  if (!w)
    return NETSTASH_E_NOMEM;
  w->mem = ctx->mem;
  w->ctx = ctx;
  w->source = ns_strdup(&w->mem, source);
  if (!w->source || uv_mutex_init(&w->lock) != 0) {
    ns_free(&w->mem, w->source);
    ns_free(&w->mem, w);
    return NETSTASH_E_NOMEM;
  }
  if (uv_cond_init(&w->cond) != 0) {
    uv_mutex_destroy(&w->lock);
    ns_free(&w->mem, w->source);
    ns_free(&w->mem, w);
    return NETSTASH_E_INTERNAL;
  }
  atomic_init(&w->refs, 1);
  w->concurrency = 16;
  w->retries = 2;
  w->timeout_ms = 60000;
  w->result = NETSTASH_E_ILLEGAL_STATE;
  ns_buf_init(&w->mbuf, &w->mem, NS_MANIFEST_MAX_LEN);
  ns_buf_init(&w->sbuf, &w->mem, NS_SIG_MAX_LEN);
  if (!strncmp(source, "https://", 8) || !strncmp(source, "http://", 7))
    w->kind = SRC_URL;
  else if (ns_pl_bundle_sniff(source) || looks_like_bundle(source))
    w->kind = SRC_BUNDLE; /* a damaged archive is reported as one */
  else
    w->kind = SRC_FILE;
  *out = w;
  return NETSTASH_OK;
}

#define KNOB_GUARD(w)                                                                              \
  do {                                                                                             \
    if (!(w))                                                                                      \
      return NETSTASH_E_INVALID_ARGUMENT;                                                          \
    if (atomic_load(&(w)->started))                                                                \
      return NETSTASH_E_ILLEGAL_STATE;                                                             \
  } while (0)

netstash_error netstash_warm_set_concurrency(netstash_warm *w, uint32_t n) {
  KNOB_GUARD(w);
  if (n < 1 || n > 256)
    return NETSTASH_E_INVALID_ARGUMENT;
  w->concurrency = n;
  return NETSTASH_OK;
}

netstash_error netstash_warm_set_max_bytes(netstash_warm *w, uint64_t bytes) {
  KNOB_GUARD(w);
  w->max_bytes = bytes;
  return NETSTASH_OK;
}

netstash_error netstash_warm_set_retries(netstash_warm *w, uint32_t n) {
  KNOB_GUARD(w);
  if (n > 10)
    return NETSTASH_E_INVALID_ARGUMENT;
  w->retries = n;
  return NETSTASH_OK;
}

netstash_error netstash_warm_set_timeout_ms(netstash_warm *w, uint32_t ms) {
  KNOB_GUARD(w);
  if (!ms)
    return NETSTASH_E_INVALID_ARGUMENT;
  w->timeout_ms = ms;
  return NETSTASH_OK;
}

netstash_error netstash_warm_add_resolve(netstash_warm *w, const char *entry) {
  char **n;
  KNOB_GUARD(w);
  if (!entry || !*entry)
    return NETSTASH_E_INVALID_ARGUMENT;
  n = ns_realloc(&w->mem, w->resolve, (w->nresolve + 1) * sizeof(*n));
  if (!n)
    return NETSTASH_E_NOMEM;
  w->resolve = n;
  if (!(n[w->nresolve] = ns_strdup(&w->mem, entry)))
    return NETSTASH_E_NOMEM;
  w->nresolve++;
  return NETSTASH_OK;
}

netstash_error netstash_warm_set_metered(netstash_warm *w, int metered) {
  KNOB_GUARD(w);
  w->metered = metered ? 1 : 0;
  return NETSTASH_OK;
}

netstash_error netstash_warm_set_event_cb(netstash_warm *w, netstash_warm_event_cb cb, void *ud) {
  KNOB_GUARD(w);
  w->cb = cb;
  w->ud = ud;
  return NETSTASH_OK;
}

/* ------------------------------------------------------------ accessors */

netstash_error netstash_warm_result(const netstash_warm *w) {
  netstash_error r;
  if (!w)
    return NETSTASH_E_INVALID_ARGUMENT;
  uv_mutex_lock((uv_mutex_t *)&w->lock);
  r = w->done ? w->result : NETSTASH_E_ILLEGAL_STATE;
  uv_mutex_unlock((uv_mutex_t *)&w->lock);
  return r;
}

const char *netstash_warm_error_detail(const netstash_warm *w) {
  return w ? w->detail : "";
}
const char *netstash_warm_manifest_id(const netstash_warm *w) {
  return w ? w->id : "";
}
uint64_t netstash_warm_manifest_version(const netstash_warm *w) {
  return w ? w->version : 0;
}
const char *netstash_warm_key_id(const netstash_warm *w) {
  return w ? w->key_id : "";
}

uint64_t netstash_warm_counter(const netstash_warm *w, netstash_warm_counter_id which) {
  if (!w || (unsigned)which > NETSTASH_WARM_PUBLISHED)
    return 0;
  if (which == NETSTASH_WARM_ELAPSED_MS && w->t0_ms) {
    uv_mutex_lock((uv_mutex_t *)&w->lock);
    int d = w->done;
    uv_mutex_unlock((uv_mutex_t *)&w->lock);
    if (!d)
      return mono_ms() - w->t0_ms;
  }
  return atomic_load(&((netstash_warm *)w)->c[which]);
}

static void cnt_add(netstash_warm *w, netstash_warm_counter_id k, uint64_t v) {
  atomic_fetch_add(&w->c[k], v);
}
static void cnt_set(netstash_warm *w, netstash_warm_counter_id k, uint64_t v) {
  atomic_store(&w->c[k], v);
}

static void emit(netstash_warm *w, netstash_warm_event ev, const char *url, netstash_error err) {
  if (w->cb)
    w->cb(w, ev, url, err, w->ud);
}

/* ------------------------------------------------------------ the end */

static void timer_closed(uv_handle_t *h) {
  netstash_warm *w = h->data;
  if (--w->closing == 0)
    warm_unref(w);
}

static void free_loop_state(netstash_warm *w) {
  ns_pl_install_free(w->in);
  w->in = NULL;
  for (size_t k = 0; k < w->npool; k++)
    ns_free(&w->mem, w->pool[k].p);
  w->npool = 0;
  w->nout = 0;
  ns_manifest_del(w->m);
  w->m = NULL;
  if (w->slots)
    for (uint32_t k = 0; k < w->concurrency; k++)
      ns_buf_free(&w->slots[k].body);
  ns_free(&w->mem, w->slots);
  w->slots = NULL;
  ns_free(&w->mem, w->rs);
  w->rs = NULL;
  ns_free(&w->mem, w->order);
  w->order = NULL;
  ns_buf_free(&w->mbuf);
  ns_buf_free(&w->sbuf);
  ns_free(&w->mem, w->v_etag);
  ns_free(&w->mem, w->v_lastmod);
  ns_free(&w->mem, w->etag);
  ns_free(&w->mem, w->lastmod);
  ns_free(&w->mem, w->v_mbytes);
  ns_free(&w->mem, w->v_sig);
  w->v_etag = w->v_lastmod = w->etag = w->lastmod = NULL;
  w->v_mbytes = w->v_sig = NULL;
}

/* Terminal: record the result, tell the caller, release the loop's ref. */
static void finish(netstash_warm *w, netstash_error err) {
  if (w->finishing && !w->finish_pending)
    return;
  w->finishing = 1;
  if (w->committing) { /* the batch in flight holds w->in: end after it */
    if (!w->finish_pending)
      w->finish_err = err;
    w->finish_pending = 1;
    return;
  }
  if (w->finish_pending)
    err = w->finish_err;
  w->finish_pending = 0;
  if (w->in && (err == NETSTASH_E_CANCELED || err == NETSTASH_E_INCOMPLETE)) {
    /* keep what was verified for the next warm */
    netstash_error fe = ns_pl_install_flush(w->in);
    if (fe != NETSTASH_OK && err == NETSTASH_E_INCOMPLETE)
      err = fe;
  }
  /* nothing published because memory ran out, not because the origin
   * failed: say so (the caller may retry once memory is back) */
  if (err == NETSTASH_E_INCOMPLETE && w->crit_nomem)
    err = NETSTASH_E_NOMEM;
  cnt_set(w, NETSTASH_WARM_ELAPSED_MS, mono_ms() - w->t0_ms);
  cnt_set(w, NETSTASH_WARM_ETA_MS, 0);
  if (err != NETSTASH_OK && !w->detail[0])
    ns_detailf(w->detail, sizeof(w->detail), "%s", netstash_strerror(err));
  if (err == NETSTASH_E_STORE_FULL) { /* say what to do */
    char d[sizeof(w->detail)];
    snprintf(d, sizeof(d), "%s", w->detail);
    ns_detailf(w->detail, sizeof(w->detail),
               "%s: free disk space or lower the profile's cache size, then warm again "
               "(verified bodies already committed are kept)",
               d);
  }
  free_loop_state(w);
  /* the event first: a waiter woken below may delete w's callback */
  emit(w, NETSTASH_WARM_EV_DONE, NULL, err);
  uv_mutex_lock(&w->lock);
  w->result = err;
  w->done = 1;
  uv_cond_broadcast(&w->cond);
  uv_mutex_unlock(&w->lock);
  if (w->timer_init) {
    w->closing = 2;
    uv_close((uv_handle_t *)&w->timer, timer_closed); /* the last drops the loop's ref */
    uv_close((uv_handle_t *)&w->ctimer, timer_closed);
  } else
    warm_unref(w);
}

static void warm_free(netstash_warm *w) {
  for (size_t k = 0; k < w->nresolve; k++)
    ns_free(&w->mem, w->resolve[k]);
  ns_free(&w->mem, w->resolve);
  ns_free(&w->mem, w->source);
  free_loop_state(w);
  uv_cond_destroy(&w->cond);
  uv_mutex_destroy(&w->lock);
  ns_mem mem = w->mem;
  ns_free(&mem, w);
}

static void warm_unref(netstash_warm *w) {
  if (atomic_fetch_sub(&w->refs, 1) == 1)
    warm_free(w);
}

/* ------------------------------------------------------------ resources */

static void pump(netstash_warm *w);
static void timer_cb(uv_timer_t *t);

static void progress(netstash_warm *w, int force) {
  uint64_t now = mono_ms();
  uint64_t done = atomic_load(&w->c[NETSTASH_WARM_BYTES_DONE]);
  if (!force && now - w->last_progress_ms < 100)
    return;
  if (w->rate_t_ms && now > w->rate_t_ms) {
    double inst = (double)(done - w->rate_bytes) / (double)(now - w->rate_t_ms);
    w->rate = w->rate > 0 ? 0.7 * w->rate + 0.3 * inst : inst;
  }
  w->rate_t_ms = now;
  w->rate_bytes = done;
  uint64_t need = atomic_load(&w->c[NETSTASH_WARM_BYTES_NEEDED]);
  cnt_set(w, NETSTASH_WARM_ETA_MS,
          w->rate > 0 && need > done ? (uint64_t)((double)(need - done) / w->rate) : 0);
  w->last_progress_ms = now;
  emit(w, NETSTASH_WARM_EV_PROGRESS, NULL, NETSTASH_OK);
}

/* Reports the verified bodies the installer has committed since. */
static void report_committed(netstash_warm *w) {
  if (!w->uncommitted)
    return;
  for (size_t i = 0; i < w->m->n_resources; i++)
    if (w->rs[i].st == RS_VERIFIED && ns_pl_install_held(w->in, i)) {
      w->rs[i].st = RS_DONE;
      w->uncommitted--;
      cnt_add(w, NETSTASH_WARM_RESOURCES_DONE, 1);
      emit(w, NETSTASH_WARM_EV_RESOURCE_DONE, w->m->resources[i].url, NETSTASH_OK);
    }
}

static void all_done(netstash_warm *w);
static void maybe_commit(netstash_warm *w, int force);

static void commit_work(uv_work_t *r) {
  netstash_warm *w = r->data;
  w->cerr = ns_pl_batch_commit(w->in, w->cbatch);
}

/* A commit failed or could not be started: the warm stops (running fetches
 * are canceled) and ends with e once none is left (the caller finishes at
 * once when nothing runs, or pump() does). */
static void commit_failed(netstash_warm *w, netstash_error e) {
  if (atomic_load(&w->cancel_req) && w->finish_err)
    return; /* already stopping for a store error */
  ns_detailf(w->detail, sizeof(w->detail), "committing verified bodies: %s",
             netstash_strerror(e));
  atomic_store(&w->cancel_req, 1);
  for (uint32_t k = 0; k < w->concurrency; k++)
    if (w->slots[k].in_use && w->slots[k].f)
      netstash_fetch_cancel(w->slots[k].f);
  w->finish_err = e;
}

static void commit_after(uv_work_t *r, int status) {
  netstash_warm *w = r->data;
  netstash_error e = status ? NETSTASH_E_INTERNAL : w->cerr;
  ns_pl_install_batch_done(w->in, w->cbatch, e);
  w->cbatch = NULL;
  w->committing = 0;
  if (w->finish_pending) {
    finish(w, w->finish_err);
    return;
  }
  if (e != NETSTASH_OK) {
    /* the store refused (full, busy, corrupt): stop, keep what is in */
    commit_failed(w, e);
    if (!w->active)
      finish(w, e);
    return;
  }
  report_committed(w);
  if (w->want_all_done)
    all_done(w);
  else
    maybe_commit(w, 0);
}

/* Starts a commit of the queued bodies when due (force: now). */
static void maybe_commit(netstash_warm *w, int force) {
  size_t n = ns_pl_install_queued(w->in);
  if (w->committing || !n)
    return;
  if (!force && ns_pl_install_queued_bytes(w->in) < NS_PL_BATCH_BYTES &&
      n < NS_PL_BATCH_BODIES && mono_ms() - w->first_uncommitted_ms < COMMIT_WINDOW_MS)
    return;
  w->cbatch = ns_pl_install_take_batch(w->in);
  if (!w->cbatch) { /* n > 0: out of memory. Returning quietly would leave a
                     * warm waiting for a commit that never comes (hang). */
    commit_failed(w, NETSTASH_E_NOMEM);
    if (!w->active) {
      if (w->timer_init) /* end from the loop, not inside our caller */
        uv_timer_start(&w->timer, timer_cb, 0, 0);
      else
        finish(w, NETSTASH_E_NOMEM);
    }
    return;
  }
  w->committing = 1;
  w->cwork.data = w;
  if (uv_queue_work(&w->ctx->loop, &w->cwork, commit_work, commit_after) != 0) {
    commit_work(&w->cwork); /* no thread pool: commit here */
    commit_after(&w->cwork, 0);
  }
}

static void all_done(netstash_warm *w) {
  netstash_error e;
  int was_fill = ns_pl_install_plan(w->in) == NS_PL_PLAN_FILL;
  if (w->committing || ns_pl_install_queued(w->in)) {
    w->want_all_done = 1; /* after the last batch */
    maybe_commit(w, 1);
    return;
  }
  w->want_all_done = 0;
  progress(w, 1);
  e = ns_pl_install_publish(w->in);
  if (e != NETSTASH_OK) {
    if (!w->detail[0])
      ns_detailf(w->detail, sizeof(w->detail), "%s", netstash_strerror(e));
    finish(w, e);
    return;
  }
  if (!was_fill) {
    cnt_set(w, NETSTASH_WARM_PUBLISHED, 1);
    emit(w, NETSTASH_WARM_EV_PUBLISHED, NULL, NETSTASH_OK);
  }
  if (atomic_load(&w->c[NETSTASH_WARM_RESOURCES_FAILED]) && !w->detail[0])
    ns_detailf(w->detail, sizeof(w->detail),
               "%llu non-critical resources failed: published without them (warm again to "
               "complete)",
               (unsigned long long)atomic_load(&w->c[NETSTASH_WARM_RESOURCES_FAILED]));
  finish(w, NETSTASH_OK);
}

static void resource_failed(netstash_warm *w, size_t i, netstash_error err, const char *why) {
  const ns_manifest_resource *r = &w->m->resources[i];
  w->rs[i].st = RS_FAILED;
  cnt_add(w, NETSTASH_WARM_RESOURCES_FAILED, 1);
  if (r->priority == NS_MANIFEST_PRIO_CRITICAL && err == NETSTASH_E_NOMEM)
    w->crit_nomem = 1;
  if (r->priority == NS_MANIFEST_PRIO_CRITICAL && !w->detail[0])
    ns_detailf(w->detail, sizeof(w->detail), "critical resource %s: %s", r->url, why);
  emit(w, NETSTASH_WARM_EV_RESOURCE_FAILED, r->url, err);
}

/* URL of resource i under the manifest's fallback base: the fallback's
 * origin and path prefix + the resource's path without its leading '/'. */
static char *fallback_url(netstash_warm *w, size_t i) {
  const char *u = w->m->resources[i].url, *p = strstr(u, "://");
  const char *fb = w->m->fallback;
  size_t fl;
  char *out;
  p = p ? strchr(p + 3, '/') : NULL;
  if (!fb || !p)
    return NULL;
  fl = strlen(fb);
  out = ns_malloc(&w->mem, fl + strlen(p) + 2);
  if (!out)
    return NULL;
  memcpy(out, fb, fl);
  if (fl && fb[fl - 1] == '/')
    p++;
  strcpy(out + fl, p);
  if (!strcmp(out, u)) {
    ns_free(&w->mem, out);
    return NULL;
  }
  return out;
}

static int retryable(netstash_error e, int status) {
  if (e == NETSTASH_E_INTEGRITY || e == NETSTASH_E_TOO_LARGE || e == NETSTASH_E_STORE_FULL)
    return 0;
  if (e != NETSTASH_OK)
    return 1;
  return status == 408 || status == 429 || status >= 500;
}

static void on_res_data(netstash_fetch *f, const uint8_t *data, size_t len, void *ud) {
  slot *s = ud;
  (void)f;
  if (ns_buf_append(&s->body, data, len) != NETSTASH_OK)
    netstash_fetch_cancel(f); /* over the declared size: on_complete sees it */
  cnt_add(s->w, NETSTASH_WARM_BYTES_DONE, len);
  progress(s->w, 0);
}

/* A buffer the installer is done with: back to the pool. */
static void recycle(void *ud, uint8_t *data) {
  netstash_warm *w = ud;
  size_t cap = 0;
  for (size_t k = 0; k < w->nout; k++)
    if (w->out[k].p == data) {
      cap = w->out[k].cap;
      w->out[k] = w->out[--w->nout];
      break;
    }
  if (cap && cap <= POOL_BUF_MAX && w->npool < POOL_MAX) {
    w->pool[w->npool].p = data;
    w->pool[w->npool].cap = cap;
    w->npool++;
  } else {
    ns_free(&w->mem, data);
  }
}

/* A pooled buffer of at least need bytes for slot s, if any. */
static void take_pooled(netstash_warm *w, slot *s, size_t need) {
  size_t best = SIZE_MAX;
  for (size_t k = 0; k < w->npool; k++)
    if (w->pool[k].cap >= need && (best == SIZE_MAX || w->pool[k].cap < w->pool[best].cap))
      best = k;
  if (best == SIZE_MAX)
    return;
  s->body.data = w->pool[best].p;
  s->body.cap = w->pool[best].cap;
  s->body.len = 0;
  w->pool[best] = w->pool[--w->npool];
}

/* The commit window ran out with no new body: commit what is verified. */
static void ctimer_cb(uv_timer_t *t) {
  netstash_warm *w = t->data;
  if (!w->finishing && w->uncommitted)
    maybe_commit(w, 1);
}

static void on_res_complete(netstash_fetch *f, netstash_error err, void *ud) {
  slot *s = ud;
  netstash_warm *w = s->w;
  size_t i = s->i;
  const ns_manifest_resource *r = &w->m->resources[i];
  int status = err == NETSTASH_OK ? netstash_fetch_status(f) : 0;
  char why[256];

  s->in_use = 0;
  s->f = NULL;
  w->active--;
  netstash_fetch_del(f);
  if (w->finishing)
    return;
  if (w->paused && err == NETSTASH_E_CANCELED) {
    w->rs[i].st = RS_QUEUED; /* requeued: fetched again on resume */
    w->rs[i].attempts--;
    ns_buf_reset(&s->body);
    return;
  }
  if (atomic_load(&w->cancel_req)) {
    ns_buf_reset(&s->body);
    if (!w->active)
      finish(w, w->finish_err ? w->finish_err : NETSTASH_E_CANCELED);
    return;
  }
  if (err == NETSTASH_E_CANCELED && s->body.len > r->size)
    err = NETSTASH_E_TOO_LARGE;
  why[0] = '\0';
  if (err == NETSTASH_OK && status == 200) {
    size_t blen, bcap = s->body.cap;
    uint8_t *body = ns_buf_steal(&s->body, &blen); /* handed over, not copied */
    if (body && w->nout < OUT_MAX) {
      w->out[w->nout].p = body;
      w->out[w->nout].cap = bcap;
      w->nout++;
    }
    if (!body)
      body = ns_malloc(&w->mem, 1), blen = 0;
    err = body ? ns_pl_install_body_take(w->in, i, body, blen) : NETSTASH_E_NOMEM;
    if (err == NETSTASH_OK) {
      w->rs[i].st = RS_VERIFIED;
      if (!w->uncommitted++ || !ns_pl_install_queued(w->in))
        w->first_uncommitted_ms = mono_ms();
      maybe_commit(w, 0);
      if (w->uncommitted && w->timer_init)
        uv_timer_start(&w->ctimer, ctimer_cb, COMMIT_WINDOW_MS, 0);
    }
    if (err == NETSTASH_E_INTEGRITY) {
      snprintf(why, sizeof(why), "body (%zu bytes) does not match its integrity %s", blen,
               s->fallback ? "(from the fallback)" : "");
    } else if (err != NETSTASH_OK) {
      snprintf(why, sizeof(why), "cannot store: %s", netstash_strerror(err));
    }
  } else if (err == NETSTASH_OK) {
    err = NETSTASH_E_PROTOCOL;
    snprintf(why, sizeof(why), "HTTP status %d", status);
  } else {
    snprintf(why, sizeof(why), "%s", netstash_strerror(err));
  }
  ns_buf_reset(&s->body);
  if (why[0]) {
    res_state *st = &w->rs[i];
    if (retryable(err, status) && st->attempts <= w->retries) {
      st->st = RS_WAIT_RETRY;
      st->retry_at_ms = mono_ms() + (200u << (st->attempts - 1 < 6 ? st->attempts - 1 : 6));
      emit(w, NETSTASH_WARM_EV_RETRY, r->url, err);
    } else if (w->m->fallback && !st->tried_fallback) {
      st->tried_fallback = 1;
      st->st = RS_QUEUED;
      emit(w, NETSTASH_WARM_EV_RETRY, r->url, err);
    } else {
      if (err == NETSTASH_E_STORE_FULL || err == NETSTASH_E_STORE_CORRUPT) {
        ns_detailf(w->detail, sizeof(w->detail), "%s: %s", r->url, why);
        resource_failed(w, i, err, why);
        if (!w->active)
          finish(w, err);
        else
          atomic_store(&w->cancel_req, 1);
        return;
      }
      resource_failed(w, i, err, why);
    }
  }
  pump(w);
}

static netstash_error start_resource(netstash_warm *w, slot *s, size_t i) {
  const ns_manifest_resource *r = &w->m->resources[i];
  netstash_request *req = NULL;
  netstash_fetch_callbacks cbs = {NULL, on_res_data, on_res_complete};
  char *fb = NULL;
  const char *url = r->url;
  netstash_error e;
  if (w->rs[i].tried_fallback) {
    fb = fallback_url(w, i);
    if (fb)
      url = fb;
  }
  e = netstash_request_new(&req, url);
  if (!e)
    e = netstash_request_set_cache_mode(req, NETSTASH_CACHE_BYPASS);
  if (!e)
    e = netstash_request_set_cookies(req, 0);
  if (!e)
    e = netstash_request_set_timeout_ms(req, w->timeout_ms);
  if (!e)
    e = netstash_request_set_max_body(req, r->size ? r->size : 1);
  if (!e)
    e = netstash_request_set_priority(req, r->priority == NS_MANIFEST_PRIO_CRITICAL
                                               ? NETSTASH_PRIORITY_HIGHEST
                                           : r->priority == NS_MANIFEST_PRIO_HIGH
                                               ? NETSTASH_PRIORITY_MEDIUM
                                               : NETSTASH_PRIORITY_LOW);
  for (size_t k = 0; !e && k < w->nresolve; k++)
    e = netstash_request_add_resolve(req, w->resolve[k]);
  s->body.max = (size_t)r->size + 1;
  if (!s->body.data)
    take_pooled(w, s, (size_t)r->size + 1);
  if (!s->body.data)
    (void)ns_buf_reserve(&s->body, (size_t)r->size); /* one allocation, handed over */
  s->w = w;
  s->i = i;
  s->fallback = fb != NULL;
  if (!e)
    e = netstash_fetch_start(w->ctx, req, &cbs, s, &s->f);
  netstash_request_del(req);
  ns_free(&w->mem, fb);
  if (e != NETSTASH_OK)
    return e;
  s->in_use = 1;
  w->active++;
  w->rs[i].st = RS_RUNNING;
  w->rs[i].attempts++;
  cnt_add(w, NETSTASH_WARM_REQUESTS, 1);
  return NETSTASH_OK;
}

static void timer_cb(uv_timer_t *t) {
  netstash_warm *w = t->data;
  if (!w->finishing)
    pump(w);
}

static void pump(netstash_warm *w) {
  uint64_t now = mono_ms(), next_due = 0;
  int waiting = 0;
  if (w->finishing || w->paused)
    return;
  if (atomic_load(&w->cancel_req)) {
    if (!w->active)
      finish(w, w->finish_err ? w->finish_err : NETSTASH_E_CANCELED);
    return;
  }
  for (size_t k = 0; k < w->norder && w->active < w->concurrency; k++) {
    size_t i = w->order[k];
    res_state *st = &w->rs[i];
    const ns_manifest_resource *r = &w->m->resources[i];
    if (st->st == RS_WAIT_RETRY) {
      if (st->retry_at_ms > now) {
        if (!next_due || st->retry_at_ms < next_due)
          next_due = st->retry_at_ms;
        waiting = 1;
        continue;
      }
      st->st = RS_QUEUED;
    }
    if (st->st != RS_QUEUED)
      continue;
    if (!st->budgeted && w->max_bytes && w->budget_used + r->size > w->max_bytes) {
      char why[160];
      snprintf(why, sizeof(why), "over the warm's byte budget (%llu bytes)",
               (unsigned long long)w->max_bytes);
      resource_failed(w, i, NETSTASH_E_TOO_LARGE, why);
      continue;
    }
    slot *s = NULL;
    for (uint32_t j = 0; j < w->concurrency && !s; j++)
      if (!w->slots[j].in_use)
        s = &w->slots[j];
    if (!st->budgeted)
      w->budget_used += r->size;
    st->budgeted = 1;
    netstash_error e = start_resource(w, s, i);
    if (e != NETSTASH_OK) {
      resource_failed(w, i, e, netstash_strerror(e));
      if (e == NETSTASH_E_SHUTDOWN) {
        finish(w, e);
        return;
      }
    }
  }
  /* anything left? */
  if (!w->active) {
    int pending = 0;
    for (size_t k = 0; k < w->norder && !pending; k++)
      pending = w->rs[w->order[k]].st == RS_QUEUED;
    if (!pending && !waiting) {
      all_done(w);
      return;
    }
  }
  if (waiting && w->timer_init) {
    uint64_t due = next_due > now ? next_due - now : 1;
    uv_timer_start(&w->timer, timer_cb, due, 0);
  }
}

/* ------------------------------------------------------------ manifest */

static int cmp_prio(const void *a, const void *b, void *m_) {
  const ns_manifest *m = m_;
  size_t x = *(const size_t *)a, y = *(const size_t *)b;
  int pa = (int)m->resources[x].priority, pb = (int)m->resources[y].priority;
  if (pa != pb)
    return pa - pb;
  return x < y ? -1 : x > y;
}

/* Verifies and parses the manifest bytes in w->mbuf / w->sbuf and begins
 * the install. On error: the result (finish not called). */
static netstash_error accept_manifest(netstash_warm *w) {
  const ns_config *cfg = &w->ctx->cfg;
  ns_manifest_diags *diags = NULL;
  ns_manifest_check chk;
  netstash_error e;
  ns_pl_device dev = {cfg->app_version, cfg->kernel_version, cfg->device_id};

  if (w->sig_missing) {
    if (!cfg->allow_unsigned) {
      ns_detailf(w->detail, sizeof(w->detail),
                 "the manifest is not signed (no %s.sig): sign it with `netstash manifest "
                 "sign`, or allow unsigned manifests (development only)",
                 w->kind == SRC_BUNDLE ? "manifest.json" : w->source);
      return NETSTASH_E_SIGNATURE;
    }
  } else {
    const char *keys[16];
    size_t nk = 0;
    char *copy = cfg->trusted_keys ? ns_strdup(&w->mem, cfg->trusted_keys) : NULL;
    if (cfg->trusted_keys && !copy)
      return NETSTASH_E_NOMEM;
    for (char *p = copy, *sv = NULL, *t; (t = strtok_r(p, "\n", &sv)) && nk < 16; p = NULL)
      keys[nk++] = t;
    if (!nk) {
      ns_free(&w->mem, copy);
      ns_detailf(w->detail, sizeof(w->detail),
                 "no trusted key: pin the publisher's public key (--trust KEYFILE.pub)");
      return NETSTASH_E_SIGNATURE;
    }
    e = ns_sign_verify(w->mbuf.data, w->mbuf.len, w->sbuf.data, w->sbuf.len, keys, nk,
                       w->key_id, w->detail, sizeof(w->detail));
    ns_free(&w->mem, copy);
    if (e != NETSTASH_OK)
      return e;
  }
  memset(&chk, 0, sizeof(chk));
  chk.now_s = (int64_t)time(NULL);
  diags = ns_calloc(&w->mem, 1, sizeof(*diags));
  if (!diags)
    return NETSTASH_E_NOMEM;
  e = ns_manifest_parse(&w->mem, w->mbuf.data, w->mbuf.len, &chk, &w->m, diags);
  if (e != NETSTASH_OK) {
    if (diags->n)
      ns_detailf(w->detail, sizeof(w->detail), "%s%s", diags->d[0].msg,
                 diags->n > 1 ? " (and more: netstash manifest lint)" : "");
    ns_free(&w->mem, diags);
    return e;
  }
  ns_free(&w->mem, diags);
  snprintf(w->id, sizeof(w->id), "%s", w->m->id);
  w->version = w->m->version;
  cnt_set(w, NETSTASH_WARM_RESOURCES, w->m->n_resources);
  cnt_set(w, NETSTASH_WARM_BYTES_TOTAL, w->m->total_bytes);
  if (w->m->network == NS_MANIFEST_NET_UNMETERED && w->metered) {
    ns_detailf(w->detail, sizeof(w->detail),
               "budgets.network is \"unmetered\" and the network is metered: warm later");
    return NETSTASH_E_DEFERRED;
  }
  ns_pl_source src = {w->source, w->etag, w->lastmod};
  e = ns_pl_install_begin_ex(w->ctx->store, &w->mem, w->mbuf.data, w->mbuf.len,
                             w->sig_missing ? NULL : w->sbuf.data,
                             w->sig_missing ? 0 : w->sbuf.len, w->key_id, w->m, &dev,
                             w->kind == SRC_URL && !w->not_modified ? &src : NULL, &w->in,
                             w->detail, sizeof(w->detail));
  if (e != NETSTASH_OK)
    return e;
  emit(w, NETSTASH_WARM_EV_MANIFEST, NULL, NETSTASH_OK);
  return NETSTASH_OK;
}

/* Network warm: plan the fetches and go. */
static void start_resources(netstash_warm *w) {
  const ns_manifest *m = w->m;
  uint64_t need = 0;
  const char *hosts[64];
  size_t nh = 0;
  if (ns_pl_install_plan(w->in) == NS_PL_PLAN_CONTROL) {
    finish(w, NETSTASH_OK);
    return;
  }
  ns_pl_install_set_auto_flush(w->in, 0);
  ns_pl_install_set_recycle(w->in, recycle, w);
  w->rs = ns_calloc(&w->mem, m->n_resources + 1, sizeof(*w->rs));
  w->order = ns_calloc(&w->mem, m->n_resources + 1, sizeof(*w->order));
  w->slots = ns_calloc(&w->mem, w->concurrency, sizeof(*w->slots));
  if (!w->rs || !w->order || !w->slots) {
    finish(w, NETSTASH_E_NOMEM);
    return;
  }
  for (uint32_t k = 0; k < w->concurrency; k++)
    ns_buf_init(&w->slots[k].body, &w->mem, 1);
  for (size_t i = 0; i < m->n_resources; i++) {
    if (!ns_pl_install_needed(w->in, i)) {
      w->rs[i].st = RS_PRESENT;
      cnt_add(w, NETSTASH_WARM_RESOURCES_PRESENT, 1);
      emit(w, NETSTASH_WARM_EV_RESOURCE_PRESENT, m->resources[i].url, NETSTASH_OK);
      continue;
    }
    w->order[w->norder++] = i;
    need += m->resources[i].size;
  }
  cnt_set(w, NETSTASH_WARM_BYTES_NEEDED, need);
  w->paused = atomic_load(&w->pause_req) && !atomic_load(&w->cancel_req);
  qsort_r(w->order, w->norder, sizeof(*w->order), cmp_prio, (void *)m);
  /* DNS for every host of what is needed, before the first fetch */
  ns_url u;
  char *hostbuf[64];
  for (size_t k = 0; k < w->norder && nh < 64; k++) {
    if (ns_url_parse(&w->mem, m->resources[w->order[k]].url, &u, NULL, 0) != NETSTASH_OK)
      continue;
    size_t j;
    for (j = 0; j < nh; j++)
      if (!strcmp(hosts[j], u.host))
        break;
    if (j == nh && !u.host_is_ip && (hostbuf[nh] = ns_strdup(&w->mem, u.host)))
      hosts[nh] = hostbuf[nh], nh++;
    ns_url_free(&w->mem, &u);
  }
  if (nh && !w->nresolve)
    netstash_dns_prefetch(w->ctx, hosts, nh, NULL, NULL);
  for (size_t j = 0; j < nh; j++)
    ns_free(&w->mem, hostbuf[j]);
  if (uv_timer_init(&w->ctx->loop, &w->timer) == 0) {
    if (uv_timer_init(&w->ctx->loop, &w->ctimer) == 0) {
      w->timer.data = w->ctimer.data = w;
      w->timer_init = 1;
    } else {
      uv_close((uv_handle_t *)&w->timer, NULL);
    }
  }
  pump(w);
}

/* ------------------------------------------------------------ bundle */

/* Thread pool: every body of the archive, matched to resources by size
 * and integrity, then publication. */
static void bundle_work(uv_work_t *req) {
  netstash_warm *w = req->data;
  const ns_manifest *m = w->m;
  netstash_error e = NETSTASH_OK;
  uint64_t maxb = 0;
  for (size_t i = 0; i < m->n_resources; i++)
    if (m->resources[i].size > maxb)
      maxb = m->resources[i].size;
  for (;;) {
    uint8_t h[32];
    const uint8_t *data;
    size_t len;
    char det[256] = "";
    e = ns_pl_bundle_next_body(w->bundle, maxb, h, &data, &len, det, sizeof(det));
    if (e == NETSTASH_E_NOT_FOUND) {
      e = NETSTASH_OK;
      break;
    }
    if (e == NETSTASH_E_TOO_LARGE || e == NETSTASH_E_INTEGRITY) {
      /* that entry only (larger than any resource, or damaged): the
       * resources it would have served stay missing */
      NS_WARN(w->ctx, "preload", "bundle %s: %s", w->source, det[0] ? det : netstash_strerror(e));
      e = NETSTASH_OK;
      continue;
    }
    if (e != NETSTASH_OK) {
      ns_detailf(w->detail, sizeof(w->detail), "bundle: %s", det[0] ? det : netstash_strerror(e));
      break;
    }
    cnt_add(w, NETSTASH_WARM_BYTES_DONE, len);
    for (size_t i = 0; i < m->n_resources && e == NETSTASH_OK; i++) {
      if (w->rs[i].st != RS_QUEUED || m->resources[i].size != len)
        continue;
      netstash_error be = ns_pl_install_body(w->in, i, data, len);
      if (be == NETSTASH_OK)
        w->rs[i].st = RS_DONE;
      else if (be != NETSTASH_E_INTEGRITY)
        e = be;
    }
    if (e != NETSTASH_OK)
      break;
  }
  if (e == NETSTASH_OK)
    e = ns_pl_install_flush(w->in);
  w->meta_err = e;
}

static void bundle_after(uv_work_t *req, int status) {
  netstash_warm *w = req->data;
  netstash_error e = status == UV_ECANCELED ? NETSTASH_E_CANCELED : w->meta_err;
  ns_pl_bundle_close(w->bundle);
  w->bundle = NULL;
  if (e != NETSTASH_OK) {
    finish(w, e);
    return;
  }
  for (size_t i = 0; i < w->m->n_resources; i++) {
    const ns_manifest_resource *r = &w->m->resources[i];
    if (w->rs[i].st == RS_DONE) {
      cnt_add(w, NETSTASH_WARM_RESOURCES_DONE, 1);
      emit(w, NETSTASH_WARM_EV_RESOURCE_DONE, r->url, NETSTASH_OK);
    } else if (w->rs[i].st == RS_QUEUED) {
      resource_failed(w, i, NETSTASH_E_NOT_FOUND, "not in the bundle (or damaged)");
    }
  }
  all_done(w);
}

static void start_bundle(netstash_warm *w) {
  const ns_manifest *m = w->m;
  uint64_t need = 0;
  if (ns_pl_install_plan(w->in) == NS_PL_PLAN_CONTROL) {
    finish(w, NETSTASH_OK);
    return;
  }
  w->rs = ns_calloc(&w->mem, m->n_resources + 1, sizeof(*w->rs));
  if (!w->rs) {
    finish(w, NETSTASH_E_NOMEM);
    return;
  }
  for (size_t i = 0; i < m->n_resources; i++) {
    if (!ns_pl_install_needed(w->in, i)) {
      w->rs[i].st = RS_PRESENT;
      cnt_add(w, NETSTASH_WARM_RESOURCES_PRESENT, 1);
      emit(w, NETSTASH_WARM_EV_RESOURCE_PRESENT, m->resources[i].url, NETSTASH_OK);
    } else {
      need += m->resources[i].size;
    }
  }
  cnt_set(w, NETSTASH_WARM_BYTES_NEEDED, need);
  w->work.data = w;
  if (uv_queue_work(&w->ctx->loop, &w->work, bundle_work, bundle_after) != 0)
    finish(w, NETSTASH_E_INTERNAL);
}

/* ------------------------------------------------------------ start */

static void manifest_ready(netstash_warm *w) {
  netstash_error e = accept_manifest(w);
  if (e != NETSTASH_OK) {
    if (e == NETSTASH_E_NOT_TARGETED && w->in)
      emit(w, NETSTASH_WARM_EV_MANIFEST, NULL, e);
    finish(w, e);
    return;
  }
  if (w->kind == SRC_BUNDLE)
    start_bundle(w);
  else
    start_resources(w);
}

static void on_meta_data(netstash_fetch *f, const uint8_t *data, size_t len, void *ud) {
  netstash_warm *w = ud;
  ns_buf *b = f == w->mf ? &w->mbuf : &w->sbuf;
  if (ns_buf_append(b, data, len) != NETSTASH_OK)
    netstash_fetch_cancel(f);
}

static void on_meta_complete(netstash_fetch *f, netstash_error err, void *ud) {
  netstash_warm *w = ud;
  int is_sig = f == w->sf;
  int status = err == NETSTASH_OK ? netstash_fetch_status(f) : 0;
  const char *what = is_sig ? "signature" : "manifest";
  if (err == NETSTASH_E_CANCELED && (is_sig ? w->sbuf.len : w->mbuf.len))
    err = NETSTASH_E_TOO_LARGE;
  if (!is_sig && err == NETSTASH_OK && status == 304 && w->v_mbytes) {
    w->not_modified = 1; /* the recorded version is current */
  } else if (!is_sig && err == NETSTASH_OK && status == 200) {
    const char *et = netstash_fetch_header(f, "etag"), *lm = netstash_fetch_header(f, "last-modified");
    w->etag = et ? ns_strdup(&w->mem, et) : NULL;
    w->lastmod = lm ? ns_strdup(&w->mem, lm) : NULL;
  } else if (is_sig && err == NETSTASH_OK && (status == 404 || status == 410)) {
    w->sig_missing = 1;
  } else if (err == NETSTASH_OK && status != 200) {
    if (!w->meta_err) {
      w->meta_err = NETSTASH_E_PROTOCOL;
      ns_detailf(w->detail, sizeof(w->detail), "%s: HTTP status %d from %s%s", what, status,
                 w->source, is_sig ? ".sig" : "");
    }
  } else if (err != NETSTASH_OK && !w->meta_err) {
    w->meta_err = err;
    ns_detailf(w->detail, sizeof(w->detail), "%s %s%s: %s%s%s", what, w->source,
               is_sig ? ".sig" : "", netstash_strerror(err),
               netstash_fetch_error_detail(f)[0] ? ": " : "", netstash_fetch_error_detail(f));
  }
  if (is_sig)
    w->sf = NULL;
  else
    w->mf = NULL;
  netstash_fetch_del(f);
  if (--w->pending_meta)
    return;
  if (atomic_load(&w->cancel_req)) {
    finish(w, NETSTASH_E_CANCELED);
    return;
  }
  if (w->meta_err) {
    finish(w, w->meta_err);
    return;
  }
  if (w->not_modified) {
    /* 304: the bytes (and signature) recorded with the validators */
    ns_buf_reset(&w->mbuf);
    ns_buf_reset(&w->sbuf);
    w->sig_missing = w->v_siglen == 0;
    if (ns_buf_append(&w->mbuf, w->v_mbytes, w->v_mlen) ||
        ns_buf_append(&w->sbuf, w->v_sig, w->v_siglen)) {
      finish(w, NETSTASH_E_NOMEM);
      return;
    }
  }
  manifest_ready(w);
}

static netstash_error fetch_meta(netstash_warm *w, const char *url, uint64_t max, int conditional,
                                 netstash_fetch **out) {
  netstash_request *req = NULL;
  netstash_fetch_callbacks cbs = {NULL, on_meta_data, on_meta_complete};
  netstash_error e = netstash_request_new(&req, url);
  /* not through the HTTP cache: the installer records the manifest and its
   * validators itself (no second copy, no extra commit before warming) */
  if (!e)
    e = netstash_request_set_cache_mode(req, NETSTASH_CACHE_BYPASS);
  if (!e && conditional && w->v_etag)
    e = netstash_request_add_header(req, "If-None-Match", w->v_etag);
  if (!e && conditional && w->v_lastmod)
    e = netstash_request_add_header(req, "If-Modified-Since", w->v_lastmod);
  if (!e)
    e = netstash_request_set_cookies(req, 0);
  if (!e)
    e = netstash_request_set_timeout_ms(req, w->timeout_ms);
  if (!e)
    e = netstash_request_set_max_body(req, max);
  if (!e)
    e = netstash_request_set_follow_redirects(req, 5);
  for (size_t k = 0; !e && k < w->nresolve; k++)
    e = netstash_request_add_resolve(req, w->resolve[k]);
  if (!e)
    e = netstash_fetch_start(w->ctx, req, &cbs, w, out);
  netstash_request_del(req);
  if (!e) {
    w->pending_meta++;
    cnt_add(w, NETSTASH_WARM_REQUESTS, 1);
  }
  return e;
}

static netstash_error read_file(netstash_warm *w, const char *path, ns_buf *b, int *missing) {
  FILE *fp = fopen(path, "rb");
  uint8_t tmp[16384];
  size_t n;
  if (!fp) {
    if (missing && errno == ENOENT) {
      *missing = 1;
      return NETSTASH_OK;
    }
    ns_detailf(w->detail, sizeof(w->detail), "cannot read %s: %s", path, strerror(errno));
    return NETSTASH_E_IO;
  }
  while ((n = fread(tmp, 1, sizeof(tmp), fp)) > 0) {
    netstash_error e = ns_buf_append(b, tmp, n);
    if (e != NETSTASH_OK) { /* TOO_LARGE (over b->max) or NOMEM */
      fclose(fp);
      if (e == NETSTASH_E_TOO_LARGE)
        ns_detailf(w->detail, sizeof(w->detail), "%s is larger than %zu bytes", path, b->max);
      else
        ns_detailf(w->detail, sizeof(w->detail), "reading %s: %s", path, netstash_strerror(e));
      return e;
    }
  }
  int bad = ferror(fp);
  fclose(fp);
  if (bad) {
    ns_detailf(w->detail, sizeof(w->detail), "cannot read %s", path);
    return NETSTASH_E_IO;
  }
  return NETSTASH_OK;
}

static void start_task_run(netstash_ctx *ctx, ns_task *t) {
  netstash_warm *w = (netstash_warm *)((char *)t - offsetof(netstash_warm, start_task));
  netstash_error e = NETSTASH_OK;
  (void)ctx;
  w->t0_ms = mono_ms();
  if (atomic_load(&w->cancel_req)) {
    finish(w, NETSTASH_E_CANCELED);
    return;
  }
  if (w->kind == SRC_URL) {
    size_t n = strlen(w->source);
    char *sig = ns_malloc(&w->mem, n + 5);
    if (!sig) {
      finish(w, NETSTASH_E_NOMEM);
      return;
    }
    memcpy(sig, w->source, n);
    memcpy(sig + n, ".sig", 5);
    if (ns_pl_source_get(w->ctx->store, &w->mem, w->source, &w->v_etag, &w->v_lastmod,
                         &w->v_mbytes, &w->v_mlen, &w->v_sig, &w->v_siglen) != NETSTASH_OK) {
      w->v_etag = w->v_lastmod = NULL;
      w->v_mbytes = w->v_sig = NULL;
    }
    e = fetch_meta(w, w->source, NS_MANIFEST_MAX_LEN, w->v_mbytes != NULL, &w->mf);
    if (!e)
      e = fetch_meta(w, sig, NS_SIG_MAX_LEN, 0, &w->sf);
    ns_free(&w->mem, sig);
    if (e != NETSTASH_OK) {
      if (w->pending_meta) {
        w->meta_err = e;
        atomic_store(&w->cancel_req, 1);
        if (w->mf)
          netstash_fetch_cancel(w->mf);
      } else {
        finish(w, e);
      }
    }
    return;
  }
  if (w->kind == SRC_BUNDLE) {
    const uint8_t *p;
    size_t len;
    e = ns_pl_bundle_open(&w->mem, w->source, &w->bundle, w->detail, sizeof(w->detail));
    if (!e && (p = ns_pl_bundle_manifest(w->bundle, &len)))
      e = ns_buf_append(&w->mbuf, p, len);
    if (!e) {
      p = ns_pl_bundle_sig(w->bundle, &len);
      if (p)
        e = ns_buf_append(&w->sbuf, p, len);
      else
        w->sig_missing = 1;
    }
  } else {
    size_t n = strlen(w->source);
    char *sig = ns_malloc(&w->mem, n + 5);
    if (!sig) {
      finish(w, NETSTASH_E_NOMEM);
      return;
    }
    memcpy(sig, w->source, n);
    memcpy(sig + n, ".sig", 5);
    e = read_file(w, w->source, &w->mbuf, NULL);
    if (!e)
      e = read_file(w, sig, &w->sbuf, &w->sig_missing);
    ns_free(&w->mem, sig);
  }
  if (e != NETSTASH_OK) {
    ns_pl_bundle_close(w->bundle);
    w->bundle = NULL;
    finish(w, e);
    return;
  }
  manifest_ready(w);
  if (w->finishing && w->bundle) {
    ns_pl_bundle_close(w->bundle);
    w->bundle = NULL;
  }
}

/* Pause, resume, cancel: applied on the loop. */
static void ctl_task_run(netstash_ctx *ctx, ns_task *t) {
  netstash_warm *w = (netstash_warm *)((char *)t - offsetof(netstash_warm, ctl_task));
  int pause, cancel;
  (void)ctx;
  atomic_store(&w->ctl_pending, 0); /* a later request posts again */
  pause = atomic_load(&w->pause_req);
  cancel = atomic_load(&w->cancel_req);
  if (w->finishing || !w->slots) {
    /* manifest phase or bundle: cancel the metadata fetches only */
    if (cancel) {
      if (w->mf)
        netstash_fetch_cancel(w->mf);
      if (w->sf)
        netstash_fetch_cancel(w->sf);
      if (w->kind == SRC_BUNDLE && w->bundle)
        uv_cancel((uv_req_t *)&w->work);
    }
    warm_unref(w);
    return;
  }
  if (cancel || (pause && !w->paused)) {
    w->paused = pause && !cancel;
    for (uint32_t k = 0; k < w->concurrency; k++)
      if (w->slots[k].in_use && w->slots[k].f)
        netstash_fetch_cancel(w->slots[k].f);
    if (cancel && !w->active)
      finish(w, NETSTASH_E_CANCELED);
  } else if (!pause && w->paused) {
    w->paused = 0;
    pump(w);
  }
  warm_unref(w);
}

static netstash_error post_ctl(netstash_warm *w) {
  netstash_error e;
  if (!atomic_load(&w->started))
    return NETSTASH_OK;
  if (atomic_exchange(&w->ctl_pending, 1))
    return NETSTASH_OK; /* queued already: it reads the flags when it runs */
  atomic_fetch_add(&w->refs, 1); /* the queued task's */
  e = ns_ctx_post(w->ctx, &w->ctl_task);
  if (e != NETSTASH_OK) {
    atomic_store(&w->ctl_pending, 0);
    warm_unref(w);
  }
  return e;
}

netstash_error netstash_warm_start(netstash_warm *w) {
  netstash_error e;
  if (!w)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (atomic_exchange(&w->started, 1))
    return NETSTASH_E_ILLEGAL_STATE;
  w->start_task.run = start_task_run;
  w->ctl_task.run = ctl_task_run;
  atomic_fetch_add(&w->refs, 1); /* the loop's */
  e = ns_ctx_post(w->ctx, &w->start_task);
  if (e != NETSTASH_OK) {
    uv_mutex_lock(&w->lock);
    w->done = 1;
    w->result = e;
    uv_mutex_unlock(&w->lock);
    warm_unref(w);
  }
  return e;
}

netstash_error netstash_warm_pause(netstash_warm *w) {
  if (!w)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (atomic_exchange(&w->pause_req, 1))
    return NETSTASH_OK;
  return post_ctl(w);
}

netstash_error netstash_warm_resume(netstash_warm *w) {
  if (!w)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (!atomic_exchange(&w->pause_req, 0))
    return NETSTASH_OK;
  return post_ctl(w);
}

netstash_error netstash_warm_cancel(netstash_warm *w) {
  if (!w)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (atomic_exchange(&w->cancel_req, 1))
    return NETSTASH_OK;
  return post_ctl(w);
}

netstash_error netstash_warm_wait(netstash_warm *w, uint32_t timeout_ms) {
  netstash_error rv;
  if (!w)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (!atomic_load(&w->started))
    return NETSTASH_E_ILLEGAL_STATE;
  uv_mutex_lock(&w->lock);
  if (ns_ctx_on_loop(w->ctx)) {
    rv = w->done ? w->result : NETSTASH_E_WOULD_DEADLOCK;
    uv_mutex_unlock(&w->lock);
    return rv;
  }
  if (timeout_ms == 0) {
    while (!w->done)
      uv_cond_wait(&w->cond, &w->lock);
  } else {
    uint64_t deadline = uv_hrtime() + (uint64_t)timeout_ms * 1000000u;
    while (!w->done) {
      uint64_t now = uv_hrtime();
      if (now >= deadline || uv_cond_timedwait(&w->cond, &w->lock, deadline - now) != 0)
        break;
    }
  }
  rv = w->done ? w->result : NETSTASH_E_WAIT_TIMEOUT;
  uv_mutex_unlock(&w->lock);
  return rv;
}

void netstash_warm_del(netstash_warm *w) {
  if (!w)
    return;
  w->cb = NULL; /* no more events for a caller that let go */
  netstash_warm_cancel(w);
  warm_unref(w);
}
