/*
 * warmer.c — netd's background warming (netd.h, "warmer"; doc/DESIGN.md,
 * "netd").
 *
 * One schedule per configured manifest (cfg.warms[i]): a uv_timer on the
 * context's loop. The first run comes a few seconds after start (2-5 s,
 * uniformly drawn, so several manifests and several devices do not start
 * together), later runs every interval +- jitter_pct (uniform). A run is one
 * netstash_warm: its manifest fetch is conditional (the library remembers
 * ETag / Last-Modified per source), so an unchanged manifest costs one 304.
 *
 * Failures back off: interval/8, doubling, capped at the interval (jittered
 * too, so devices that failed together do not retry together); a success
 * resets it. NETSTASH_E_NOT_TARGETED counts as a success (the manifest was
 * read; asking again sooner changes nothing).
 *
 * Host signals (d->metered, d->low_battery, d->foreground): while any is set,
 * running warms are paused and a run that falls due is marked deferred (one
 * warm_deferred per deferral); netd_warmer_signals() resumes the paused ones
 * and starts the deferred ones once all are clear. A kick (POST /warm) obeys
 * the signals too: under them it defers instead of starting.
 *
 * Stop cancels running warms (the library keeps every verified body and the
 * next run resumes without refetching them) and closes the timers; the
 * warmer frees itself when the last timer is closed.
 *
 * Thread rule: loop thread only, like the rest of netd. The warms' event
 * callbacks run there too, so nothing here is locked.
 */
#include "netd.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "netstash/preload.h"

#define FIRST_RUN_MIN_MS 2000u
#define FIRST_RUN_SPAN_MS 3000u

typedef enum wstate {
  WS_IDLE = 0, /* scheduled (timer armed) */
  WS_RUNNING,
  WS_PAUSED,   /* running, paused by host signals */
  WS_DEFERRED, /* due while host signals were set: runs when they clear */
  WS_BACKOFF   /* the last run failed: timer armed for the retry */
} wstate;

static const char *const state_names[] = {"idle", "running", "paused", "deferred", "backoff"};

typedef struct wentry {
  netd_warmer *wr;
  netd_warm_entry cfg; /* a copy: a reload frees d->cfg.warms under us */
  uv_timer_t timer;
  netstash_warm *w; /* the run in progress, NULL otherwise */
  wstate state;
  uint64_t due_ms;     /* loop time of the next run (IDLE, BACKOFF) */
  uint64_t backoff_ms; /* delay after the last failure, 0: none */
  int has_result;
  netstash_error last_result;
  char last_detail[256];
  int64_t last_run; /* unix seconds, 0: never */
  uint64_t runs, failures, last_bytes;
} wentry;

struct netd_warmer {
  netd *d;
  wentry *e;
  size_t n;
  size_t open;   /* timers not closed yet */
  char *resolve; /* copy of d->cfg.resolve */
  uint64_t rng;
  int blocked; /* host signals at the last look */
  int stopping;
};

/* ------------------------------------------------------------ helpers */

/* splitmix64: small, good enough for jitter, seeded from the OS. */
static uint64_t rnd(netd_warmer *wr) {
  uint64_t z = (wr->rng += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* Uniform in [0, 1). */
static double rnd_unit(netd_warmer *wr) {
  return (double)(rnd(wr) >> 11) * (1.0 / 9007199254740992.0);
}

static void seed(netd_warmer *wr) {
  uint64_t s = 0;
  if (uv_random(NULL, NULL, &s, sizeof(s), 0, NULL) != 0 || s == 0)
    s = uv_hrtime() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)time(NULL);
  wr->rng = s;
}

static uint64_t interval_ms(const wentry *e) {
  uint32_t s = e->cfg.interval_s ? e->cfg.interval_s : 1;
  return (uint64_t)s * 1000u;
}

/* base +- jitter_pct, uniformly; at least 1 s. */
static uint64_t jittered(wentry *e, uint64_t base_ms) {
  uint32_t pct = e->cfg.jitter_pct > 100 ? 100 : e->cfg.jitter_pct;
  double span = (double)base_ms * (double)pct / 100.0;
  double v = (double)base_ms + span * (2.0 * rnd_unit(e->wr) - 1.0);
  return v < 1000.0 ? 1000u : (uint64_t)v;
}

static int signals_set(const netd *d) {
  return atomic_load(&d->metered) || atomic_load(&d->low_battery) || atomic_load(&d->foreground);
}

static void on_timer(uv_timer_t *t);

static void schedule(wentry *e, uint64_t delay_ms, wstate st) {
  e->state = st;
  e->due_ms = uv_now(e->wr->d->loop) + delay_ms;
  uv_timer_start(&e->timer, on_timer, delay_ms, 0);
}

/* ------------------------------------------------------------ runs */

static int run_start(wentry *e, const char *why);

static int is_success(netstash_error err) {
  return err == NETSTASH_OK || err == NETSTASH_E_NOT_TARGETED;
}

static void run_ended(wentry *e, netstash_error err, const char *detail) {
  netd *d = e->wr->d;
  e->has_result = 1;
  e->last_result = err;
  snprintf(e->last_detail, sizeof(e->last_detail), "%s", detail ? detail : "");
  if (is_success(err) || err == NETSTASH_E_DEFERRED) {
    /* DEFERRED: the library's own metered rule (the manifest's budget asks
     * for an unmetered network); the next regular check asks again */
    if (err == NETSTASH_E_DEFERRED)
      atomic_fetch_add(&d->metrics.warm_deferred, 1);
    else
      atomic_fetch_add(&d->metrics.warm_ok, 1);
    e->backoff_ms = 0;
    schedule(e, jittered(e, interval_ms(e)), WS_IDLE);
    return;
  }
  e->failures++;
  atomic_fetch_add(&d->metrics.warm_failed, 1);
  if (e->backoff_ms == 0)
    e->backoff_ms = interval_ms(e) / 8;
  else
    e->backoff_ms *= 2;
  if (e->backoff_ms > interval_ms(e))
    e->backoff_ms = interval_ms(e);
  if (e->backoff_ms < 1000)
    e->backoff_ms = 1000;
  schedule(e, jittered(e, e->backoff_ms), WS_BACKOFF);
  netd_log(d, NETSTASH_LOG_WARN, "warm %s: %s%s%s; retry in %" PRIu64 " s", e->cfg.manifest,
           netstash_error_name(err), e->last_detail[0] ? ": " : "", e->last_detail,
           (e->due_ms - uv_now(d->loop) + 999) / 1000);
}

static void on_event(netstash_warm *w, netstash_warm_event ev, const char *url, netstash_error err,
                     void *ud) {
  wentry *e = ud;
  netd *d = e->wr->d;
  switch (ev) {
  case NETSTASH_WARM_EV_MANIFEST:
    netd_log(d, NETSTASH_LOG_DEBUG,
             "warm %s: manifest %s version %" PRIu64 ", %" PRIu64 " resources", e->cfg.manifest,
             netstash_warm_manifest_id(w), netstash_warm_manifest_version(w),
             netstash_warm_counter(w, NETSTASH_WARM_RESOURCES));
    break;
  case NETSTASH_WARM_EV_RESOURCE_FAILED:
    netd_log(d, NETSTASH_LOG_DEBUG, "warm %s: %s: %s", e->cfg.manifest, url ? url : "-",
             netstash_error_name(err));
    break;
  case NETSTASH_WARM_EV_PUBLISHED:
    netd_log(d, NETSTASH_LOG_INFO, "warm %s: %s version %" PRIu64 " published", e->cfg.manifest,
             netstash_warm_manifest_id(w), netstash_warm_manifest_version(w));
    break;
  case NETSTASH_WARM_EV_DONE: {
    uint64_t fetched = netstash_warm_counter(w, NETSTASH_WARM_RESOURCES_DONE);
    e->last_bytes = netstash_warm_counter(w, NETSTASH_WARM_BYTES_DONE);
    if (is_success(err))
      netd_log(d, NETSTASH_LOG_INFO,
               "warm %s: %s in %" PRIu64 " ms: %" PRIu64 " fetched, %" PRIu64
               " held already, %" PRIu64 " bytes, %" PRIu64 " requests%s",
               e->cfg.manifest, netstash_error_name(err),
               netstash_warm_counter(w, NETSTASH_WARM_ELAPSED_MS), fetched,
               netstash_warm_counter(w, NETSTASH_WARM_RESOURCES_PRESENT), e->last_bytes,
               netstash_warm_counter(w, NETSTASH_WARM_REQUESTS),
               netstash_warm_counter(w, NETSTASH_WARM_PUBLISHED) ? ", published" : "");
    e->w = NULL;
    run_ended(e, err, err == NETSTASH_OK ? NULL : netstash_warm_error_detail(w));
    netstash_warm_del(w); /* allowed from its own callback: no event follows */
    break;
  }
  default:
    break;
  }
}

/* Adds the configured HOST:PORT:ADDR pins (cfg.resolve, '\n'-separated). */
static netstash_error add_resolves(netstash_warm *w, const char *list) {
  netstash_error err = NETSTASH_OK;
  char line[512];
  while (list && *list && err == NETSTASH_OK) {
    const char *nl = strchr(list, '\n');
    size_t len = nl ? (size_t)(nl - list) : strlen(list);
    if (len > 0 && len < sizeof(line)) {
      memcpy(line, list, len);
      line[len] = '\0';
      err = netstash_warm_add_resolve(w, line);
    }
    list = nl ? nl + 1 : NULL;
  }
  return err;
}

/* Starts e's run now unless one runs already; under host signals the run is
 * deferred instead. Returns 1 when a warm was started. */
static int run_start(wentry *e, const char *why) {
  netd *d = e->wr->d;
  netstash_warm *w = NULL;
  netstash_error err;
  if (e->w || e->wr->stopping)
    return 0;
  uv_timer_stop(&e->timer);
  if (signals_set(d)) {
    if (e->state != WS_DEFERRED) {
      e->state = WS_DEFERRED;
      atomic_fetch_add(&d->metrics.warm_deferred, 1);
      netd_log(d, NETSTASH_LOG_INFO,
               "warm %s: deferred (host signals: metered=%d low_battery=%d "
               "foreground=%d)",
               e->cfg.manifest, atomic_load(&d->metered), atomic_load(&d->low_battery),
               atomic_load(&d->foreground));
    }
    return 0;
  }
  e->runs++;
  e->last_run = (int64_t)time(NULL);
  atomic_fetch_add(&d->metrics.warm_runs, 1);
  err = netstash_warm_new(d->ctx, e->cfg.manifest, &w);
  if (err == NETSTASH_OK)
    err = netstash_warm_set_event_cb(w, on_event, e);
  if (err == NETSTASH_OK)
    err = add_resolves(w, e->wr->resolve);
  if (err == NETSTASH_OK)
    err = netstash_warm_start(w); /* no callback when it fails */
  if (err != NETSTASH_OK) {
    netstash_warm_del(w);
    run_ended(e, err, "the warm could not start");
    return 0;
  }
  e->w = w;
  e->state = WS_RUNNING;
  netd_log(d, NETSTASH_LOG_INFO, "warm %s: started (%s)", e->cfg.manifest, why);
  return 1;
}

static void on_timer(uv_timer_t *t) {
  run_start(t->data, "scheduled");
}

/* ------------------------------------------------------------ netd.h */

static void warmer_free(netd_warmer *wr) {
  for (size_t i = 0; wr->e && i < wr->n; i++)
    free(wr->e[i].cfg.manifest);
  free(wr->e);
  free(wr->resolve);
  free(wr);
}

int netd_warmer_start(netd *d, char *err, size_t errlen) {
  netd_warmer *wr;
  if (d->warmer) {
    snprintf(err, errlen, "warmer already started");
    return -1;
  }
  wr = calloc(1, sizeof(*wr));
  if (!wr)
    goto nomem;
  wr->d = d;
  wr->n = d->cfg.nwarms;
  if ((wr->n && !(wr->e = calloc(wr->n, sizeof(*wr->e)))) ||
      (d->cfg.resolve && !(wr->resolve = strdup(d->cfg.resolve))))
    goto nomem;
  for (size_t i = 0; i < wr->n; i++) {
    wr->e[i].cfg = d->cfg.warms[i];
    if (!(wr->e[i].cfg.manifest = strdup(d->cfg.warms[i].manifest ? d->cfg.warms[i].manifest : "")))
      goto nomem;
  }
  wr->blocked = signals_set(d);
  seed(wr);
  for (size_t i = 0; i < wr->n; i++) {
    wentry *e = &wr->e[i];
    e->wr = wr;
    uv_timer_init(d->loop, &e->timer); /* cannot fail for timers */
    e->timer.data = e;
    wr->open++;
    schedule(e, FIRST_RUN_MIN_MS + (uint64_t)(rnd_unit(wr) * (double)FIRST_RUN_SPAN_MS), WS_IDLE);
    netd_log(d, NETSTASH_LOG_INFO,
             "warm %s: every %" PRIu32 " s +- %" PRIu32 "%%, first check in %" PRIu64 " ms",
             e->cfg.manifest, e->cfg.interval_s, e->cfg.jitter_pct, e->due_ms - uv_now(d->loop));
  }
  d->warmer = wr;
  return 0;
nomem:
  if (wr)
    warmer_free(wr);
  snprintf(err, errlen, "warmer: out of memory");
  return -1;
}

static void on_timer_closed(uv_handle_t *h) {
  wentry *e = h->data;
  netd_warmer *wr = e->wr;
  if (--wr->open == 0)
    warmer_free(wr);
}

void netd_warmer_stop(netd *d) {
  netd_warmer *wr = d->warmer;
  if (!wr)
    return;
  d->warmer = NULL;
  wr->stopping = 1;
  for (size_t i = 0; i < wr->n; i++) {
    wentry *e = &wr->e[i];
    if (e->w) {
      /* the library flushes what is verified: the next run resumes */
      netd_log(d, NETSTASH_LOG_INFO, "warm %s: canceled (stop or reload; verified bodies are kept)",
               e->cfg.manifest);
      netstash_warm_del(e->w); /* cancels; no event afterwards */
      e->w = NULL;
    }
    uv_close((uv_handle_t *)&e->timer, on_timer_closed);
  }
  if (wr->n == 0)
    warmer_free(wr);
}

void netd_warmer_signals(netd *d) {
  netd_warmer *wr = d->warmer;
  int blocked;
  if (!wr)
    return;
  blocked = signals_set(d);
  if (blocked != wr->blocked)
    netd_log(d, NETSTASH_LOG_INFO,
             "host signals metered=%d low_battery=%d foreground=%d: %s "
             "background warming",
             atomic_load(&d->metered), atomic_load(&d->low_battery), atomic_load(&d->foreground),
             blocked ? "pausing" : "resuming");
  wr->blocked = blocked;
  for (size_t i = 0; i < wr->n; i++) {
    wentry *e = &wr->e[i];
    if (e->w) {
      if (blocked && e->state == WS_RUNNING) {
        if (netstash_warm_pause(e->w) == NETSTASH_OK)
          e->state = WS_PAUSED;
      } else if (!blocked && e->state == WS_PAUSED) {
        if (netstash_warm_resume(e->w) == NETSTASH_OK)
          e->state = WS_RUNNING;
      }
    } else if (!blocked && e->state == WS_DEFERRED) {
      run_start(e, "host signals cleared");
    }
  }
}

int netd_warmer_kick(netd *d) {
  netd_warmer *wr = d->warmer;
  int started = 0;
  if (!wr)
    return 0;
  for (size_t i = 0; i < wr->n; i++)
    started += run_start(&wr->e[i], "requested");
  return started;
}

/* [{"manifest", "interval_s", "state": idle|running|paused|deferred|backoff,
 *   "last_result": netstash_error_name or null (no run ended yet),
 *   "last_run": unix seconds the last run started or null,
 *   "next_run": unix seconds or null (running, paused, deferred),
 *   "runs", "failures", "last_bytes" (body bytes of the last run ended),
 *   "last_detail": why the last run failed or null,
 *   "progress" (running and paused only): {"resources", "done", "present",
 *   "failed", "bytes_done", "bytes_needed"}}] */
char *netd_warmer_status_json(netd *d) {
  netd_warmer *wr = d->warmer;
  json_t *arr = json_array();
  char *out = NULL;
  int64_t now_s = (int64_t)time(NULL);
  if (!arr)
    return NULL;
  for (size_t i = 0; wr && i < wr->n; i++) {
    const wentry *e = &wr->e[i];
    json_t *o, *next = json_null();
    if (e->state == WS_IDLE || e->state == WS_BACKOFF) {
      uint64_t now = uv_now(d->loop);
      uint64_t left = e->due_ms > now ? e->due_ms - now : 0;
      next = json_integer(now_s + (json_int_t)((left + 999) / 1000));
    }
    o = json_pack("{s:s, s:I, s:s, s:o, s:o, s:o, s:I, s:I, s:I, s:o}", "manifest", e->cfg.manifest,
                  "interval_s", (json_int_t)e->cfg.interval_s, "state", state_names[e->state],
                  "last_result",
                  e->has_result ? json_string(netstash_error_name(e->last_result)) : json_null(),
                  "last_run", e->last_run ? json_integer(e->last_run) : json_null(), "next_run",
                  next, "runs", (json_int_t)e->runs, "failures", (json_int_t)e->failures,
                  "last_bytes", (json_int_t)e->last_bytes, "last_detail",
                  e->has_result && e->last_detail[0] ? json_string(e->last_detail) : json_null());
    if (o && e->w) /* this run so far */
      json_object_set_new(
          o, "progress",
          json_pack(
              "{s:I, s:I, s:I, s:I, s:I, s:I}", "resources",
              (json_int_t)netstash_warm_counter(e->w, NETSTASH_WARM_RESOURCES), "done",
              (json_int_t)netstash_warm_counter(e->w, NETSTASH_WARM_RESOURCES_DONE), "present",
              (json_int_t)netstash_warm_counter(e->w, NETSTASH_WARM_RESOURCES_PRESENT), "failed",
              (json_int_t)netstash_warm_counter(e->w, NETSTASH_WARM_RESOURCES_FAILED), "bytes_done",
              (json_int_t)netstash_warm_counter(e->w, NETSTASH_WARM_BYTES_DONE), "bytes_needed",
              (json_int_t)netstash_warm_counter(e->w, NETSTASH_WARM_BYTES_NEEDED)));
    if (!o || json_array_append_new(arr, o) != 0)
      goto done;
  }
  out = json_dumps(arr, JSON_COMPACT | JSON_PRESERVE_ORDER);
done:
  json_decref(arr);
  return out;
}
