/*
 * dns_test.c — lib/dns against a real dnsmasq on loopback (tests/harness).
 *
 * Drives ns_dns_* on a context's loop thread through a tiny post-and-wait
 * helper (ns_ctx_post + a semaphore), and netstash_dns_prefetch through the
 * public API. Every context uses a counting allocator: after
 * netstash_ctx_del nothing of the context may be left allocated.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "ns_setup.h"
#include "core/ctx.h"
#include "dns/dns.h"
#include "harness.h"

#define WAIT_MS 5000

static nst_server g_dnsmasq;
static int g_blackhole;
static char g_servers[64];
static char g_blackhole_servers[64];

/* ---------------------------------------------------------------- allocator */

static atomic_long g_live;
/* > 0: the allocation that brings it to 0 fails (one failure, then off) */
static atomic_int g_fail_countdown;

static int should_fail(void) {
  int c = atomic_load(&g_fail_countdown);
  while (c > 0 && !atomic_compare_exchange_weak(&g_fail_countdown, &c, c - 1))
    ;
  return c == 1;
}

static void *c_malloc(size_t n, void *ud) {
  void *p = should_fail() ? NULL : malloc(n);
  (void)ud;
  if (p)
    atomic_fetch_add(&g_live, 1);
  return p;
}
static void *c_calloc(size_t n, size_t s, void *ud) {
  void *p = should_fail() ? NULL : calloc(n, s);
  (void)ud;
  if (p)
    atomic_fetch_add(&g_live, 1);
  return p;
}
static void *c_realloc(void *p, size_t n, void *ud) {
  void *q = realloc(p, n);
  (void)ud;
  if (!p && q)
    atomic_fetch_add(&g_live, 1);
  return q;
}
static void c_free(void *p, void *ud) {
  (void)ud;
  if (p)
    atomic_fetch_sub(&g_live, 1);
  free(p);
}

/* ---------------------------------------------------------------- logging */

static atomic_int g_dns_logs;

static void on_log(netstash_log_level level, const char *module, const char *msg,
                   void *user_data) {
  (void)level;
  (void)msg;
  (void)user_data;
  if (strcmp(module, "dns") == 0)
    atomic_fetch_add(&g_dns_logs, 1);
}

/* ---------------------------------------------------------------- results */

typedef struct result {
  uv_mutex_t lock;
  uv_cond_t cond;
  int calls;
  netstash_error err;
  size_t naddrs;
  char addrs[4][48];
  uint32_t ttl_s;
  int from_cache;
  int on_loop;
  char detail[256];
  int bad; /* a callback broke the contract (checked on the main thread) */
  netstash_ctx *ctx;
} result;

static void result_init(result *r, netstash_ctx *ctx) {
  memset(r, 0, sizeof(*r));
  r->err = NETSTASH_ERROR_MAX_;
  r->ctx = ctx;
  uv_mutex_init(&r->lock);
  uv_cond_init(&r->cond);
}
static void result_free(result *r) {
  uv_cond_destroy(&r->cond);
  uv_mutex_destroy(&r->lock);
}

static void on_result(void *ud, netstash_error err, const ns_dns_result *res,
                      const char *detail) {
  result *r = ud;
  uv_mutex_lock(&r->lock);
  r->calls++;
  r->err = err;
  r->on_loop = r->ctx ? ns_ctx_on_loop(r->ctx) : 0;
  snprintf(r->detail, sizeof(r->detail), "%s", detail ? detail : "(null)");
  if (err == NETSTASH_OK) {
    if (!res || res->naddrs == 0 || !detail || detail[0]) {
      r->bad = 1;
      goto out;
    }
    r->naddrs = res->naddrs;
    for (size_t i = 0; i < res->naddrs && i < 4; i++)
      snprintf(r->addrs[i], sizeof(r->addrs[i]), "%s", res->addrs[i]);
    r->ttl_s = res->ttl_s;
    r->from_cache = res->from_cache;
  } else if (res || !detail || !detail[0]) {
    r->bad = 1;
  }
out:
  uv_cond_broadcast(&r->cond);
  uv_mutex_unlock(&r->lock);
}

/* Waits until r saw at least n calls; returns the count. */
static int result_wait(result *r, int n, uint64_t timeout_ms) {
  uint64_t deadline = uv_hrtime() + timeout_ms * 1000000u;
  int calls;
  uv_mutex_lock(&r->lock);
  while (r->calls < n) {
    uint64_t now = uv_hrtime();
    if (now >= deadline || uv_cond_timedwait(&r->cond, &r->lock, deadline - now) != 0) {
      if (uv_hrtime() >= deadline)
        break;
    }
  }
  calls = r->calls;
  uv_mutex_unlock(&r->lock);
  assert_false(r->bad);
  return calls;
}

static int result_calls(result *r) {
  int n;
  uv_mutex_lock(&r->lock);
  n = r->calls;
  uv_mutex_unlock(&r->lock);
  return n;
}

/* ---------------------------------------------------------------- loop jobs */

typedef struct job {
  ns_task task;
  void (*fn)(netstash_ctx *ctx, void *arg);
  void *arg;
  uv_sem_t done;
} job;

static void job_run(netstash_ctx *ctx, ns_task *t) {
  job *j = NS_CONTAINER_OF(t, job, task);
  j->fn(ctx, j->arg);
  uv_sem_post(&j->done);
}

/* Runs fn(ctx, arg) on the loop thread and waits for it to return. */
static void on_loop(netstash_ctx *ctx, void (*fn)(netstash_ctx *, void *), void *arg) {
  job j;
  memset(&j, 0, sizeof(j));
  j.fn = fn;
  j.arg = arg;
  j.task.run = job_run;
  assert_int_equal(uv_sem_init(&j.done, 0), 0);
  assert_int_equal(ns_ctx_post(ctx, &j.task), NETSTASH_OK);
  uv_sem_wait(&j.done);
  uv_sem_destroy(&j.done);
}

/* One resolve, started on the loop thread. */
typedef struct resolve_job {
  const char *host;
  result *r;
  netstash_error rv;
  ns_dns_query *q;
  int sync_calls; /* callbacks seen before ns_dns_resolve returned */
} resolve_job;

static void do_resolve(netstash_ctx *ctx, void *arg) {
  resolve_job *rj = arg;
  rj->rv = ns_dns_resolve(ctx->dns, rj->host, on_result, rj->r, &rj->q);
  rj->sync_calls = result_calls(rj->r);
}

static resolve_job start_resolve(netstash_ctx *ctx, const char *host, result *r) {
  resolve_job rj = {host, r, NETSTASH_ERROR_MAX_, NULL, 0};
  on_loop(ctx, do_resolve, &rj);
  assert_false(r->bad);
  return rj;
}

/* Resolves host and waits for the answer. */
static resolve_job resolve_wait(netstash_ctx *ctx, const char *host, result *r) {
  int before = result_calls(r);
  resolve_job rj = start_resolve(ctx, host, r);
  assert_int_equal(rj.rv, NETSTASH_OK);
  assert_int_equal(result_wait(r, before + 1, WAIT_MS), before + 1);
  return rj;
}

/* ---------------------------------------------------------------- contexts */

static netstash_ctx *ctx_with(const char *servers, uint32_t timeout_ms, uint32_t tries,
                              uint32_t cache_size) {
  netstash_options *o;
  netstash_ctx *ctx = NULL;
  char detail[256];
  netstash_allocator a = {NULL, c_malloc, c_free, c_calloc, c_realloc};
  assert_int_equal(netstash_options_new(&o), NETSTASH_OK);
  assert_int_equal(netstash_options_set_allocator(o, &a), NETSTASH_OK);
  assert_int_equal(netstash_options_set_log(o, on_log, NETSTASH_LOG_TRACE, NULL), NETSTASH_OK);
  assert_int_equal(netstash_options_set_dns_servers(o, servers), NETSTASH_OK);
  assert_int_equal(netstash_options_set_dns_timeout_ms(o, timeout_ms), NETSTASH_OK);
  assert_int_equal(netstash_options_set_dns_tries(o, tries), NETSTASH_OK);
  assert_int_equal(netstash_options_set_dns_cache_size(o, cache_size), NETSTASH_OK);
  if (netstash_ctx_new(&ctx, o, detail, sizeof(detail)) != NETSTASH_OK)
    fail_msg("netstash_ctx_new: %s", detail);
  netstash_options_del(o);
  return ctx;
}

static netstash_ctx *ctx_default(void) { return ctx_with(g_servers, 2000, 2, 1024); }

static void ctx_del_check(netstash_ctx *ctx) {
  netstash_ctx_del(ctx);
  assert_int_equal(atomic_load(&g_live), 0);
}

static uint64_t stat_of(netstash_ctx *ctx, netstash_stat s) {
  return netstash_ctx_stat(ctx, s);
}

/* ---------------------------------------------------------------- tests */

static void test_resolve_then_cache(void **state) {
  netstash_ctx *ctx = ctx_default();
  result r;
  resolve_job rj;
  (void)state;

  result_init(&r, ctx);
  rj = resolve_wait(ctx, "example.test", &r);
  assert_non_null(rj.q); /* went to c-ares */
  assert_int_equal(rj.sync_calls, 0);
  assert_int_equal(r.err, NETSTASH_OK);
  assert_true(r.on_loop);
  assert_int_equal(r.naddrs, 1);
  assert_string_equal(r.addrs[0], "127.0.0.1");
  assert_int_equal(r.ttl_s, 60);
  assert_int_equal(r.from_cache, 0);
  assert_int_equal(stat_of(ctx, NETSTASH_STAT_DNS_QUERIES), 1);
  assert_int_equal(stat_of(ctx, NETSTASH_STAT_DNS_CACHE_HITS), 0);

  /* again, in another case: answered from the cache inside the call */
  rj = start_resolve(ctx, "Example.TEST", &r);
  assert_int_equal(rj.rv, NETSTASH_OK);
  assert_null(rj.q);
  assert_int_equal(rj.sync_calls, 2);
  assert_int_equal(r.err, NETSTASH_OK);
  assert_int_equal(r.from_cache, 1);
  assert_string_equal(r.addrs[0], "127.0.0.1");
  assert_true(r.ttl_s > 0 && r.ttl_s <= 60);
  assert_int_equal(stat_of(ctx, NETSTASH_STAT_DNS_QUERIES), 1);
  assert_int_equal(stat_of(ctx, NETSTASH_STAT_DNS_CACHE_HITS), 1);

  /* a wildcard name is a different cache key: one more query */
  resolve_wait(ctx, "www.example.test", &r);
  assert_int_equal(r.err, NETSTASH_OK);
  assert_string_equal(r.addrs[0], "127.0.0.1");
  assert_int_equal(stat_of(ctx, NETSTASH_STAT_DNS_QUERIES), 2);
  assert_true(atomic_load(&g_dns_logs) > 0); /* the debug lines format */
  ctx_del_check(ctx);
  result_free(&r);
}

static void test_nxdomain(void **state) {
  netstash_ctx *ctx = ctx_default();
  result r;
  resolve_job rj;
  (void)state;

  result_init(&r, ctx);
  resolve_wait(ctx, "nope.invalid", &r);
  assert_int_equal(r.err, NETSTASH_E_DNS_NOT_FOUND);
  assert_non_null(strstr(r.detail, "nope.invalid"));
  assert_int_equal(stat_of(ctx, NETSTASH_STAT_DNS_QUERIES), 1);

  /* negative answers are cached (5 s) */
  rj = start_resolve(ctx, "nope.invalid", &r);
  assert_null(rj.q);
  assert_int_equal(r.calls, 2);
  assert_int_equal(r.err, NETSTASH_E_DNS_NOT_FOUND);
  assert_non_null(strstr(r.detail, "(cached)"));
  assert_int_equal(stat_of(ctx, NETSTASH_STAT_DNS_QUERIES), 1);
  assert_int_equal(stat_of(ctx, NETSTASH_STAT_DNS_CACHE_HITS), 1);
  ctx_del_check(ctx);
  result_free(&r);
}

static void test_refused(void **state) {
  netstash_ctx *ctx = ctx_default();
  result r;
  uint64_t t0;
  (void)state;

  /* dnsmasq answers REFUSED outside .test/.invalid; c-ares calls that
   * "could not contact DNS servers" (ECONNREFUSED) -> DNS_FAILED */
  result_init(&r, ctx);
  t0 = uv_hrtime();
  resolve_wait(ctx, "host.example.com", &r);
  assert_int_equal(r.err, NETSTASH_E_DNS_FAILED);
  assert_non_null(strstr(r.detail, "host.example.com"));
  assert_non_null(strstr(r.detail, "DNS server"));
  print_message("refused: %.1f ms (%s)\n", (double)(uv_hrtime() - t0) / 1e6, r.detail);
  /* failures are not cached */
  resolve_wait(ctx, "host.example.com", &r);
  assert_int_equal(r.err, NETSTASH_E_DNS_FAILED);
  assert_int_equal(stat_of(ctx, NETSTASH_STAT_DNS_QUERIES), 2);
  assert_int_equal(stat_of(ctx, NETSTASH_STAT_DNS_CACHE_HITS), 0);
  ctx_del_check(ctx);
  result_free(&r);
}

static void test_timeout(void **state) {
  netstash_ctx *ctx = ctx_with(g_blackhole_servers, 200, 1, 1024);
  result r;
  uint64_t t0, ms;
  (void)state;

  result_init(&r, ctx);
  t0 = uv_hrtime();
  resolve_wait(ctx, "example.test", &r);
  ms = (uv_hrtime() - t0) / 1000000u;
  print_message("blackhole timeout after %llu ms\n", (unsigned long long)ms);
  assert_int_equal(r.err, NETSTASH_E_DNS_TIMEOUT);
  assert_non_null(strstr(r.detail, "example.test"));
  assert_true(ms >= 150 && ms < 1000);
  ctx_del_check(ctx);
  result_free(&r);
}

typedef struct many_job {
  const char *host;
  result *r;
  int n;
  ns_dns_query *q[10];
  netstash_error rv[10];
} many_job;

static void do_many(netstash_ctx *ctx, void *arg) {
  many_job *m = arg;
  for (int i = 0; i < m->n; i++)
    m->rv[i] = ns_dns_resolve(ctx->dns, m->host, on_result, m->r, &m->q[i]);
}

static void test_coalesce(void **state) {
  netstash_ctx *ctx = ctx_default();
  result r;
  many_job m = {"coalesce.example.test", &r, 10, {NULL}, {0}};
  (void)state;

  result_init(&r, ctx);
  on_loop(ctx, do_many, &m);
  for (int i = 0; i < 10; i++) {
    assert_int_equal(m.rv[i], NETSTASH_OK);
    assert_non_null(m.q[i]);
  }
  assert_int_equal(result_wait(&r, 10, WAIT_MS), 10);
  assert_int_equal(r.err, NETSTASH_OK);
  assert_string_equal(r.addrs[0], "127.0.0.1");
  assert_int_equal(stat_of(ctx, NETSTASH_STAT_DNS_QUERIES), 1);
  assert_int_equal(stat_of(ctx, NETSTASH_STAT_DNS_CACHE_HITS), 0);
  ctx_del_check(ctx);
  result_free(&r);
}

typedef struct cancel_job {
  result *canceled, *kept;
  netstash_error rv[3];
  ns_dns_query *q[3];
} cancel_job;

/* Runs on the loop thread: no cmocka asserts here, the test checks after. */
static void do_cancel(netstash_ctx *ctx, void *arg) {
  cancel_job *c = arg;
  /* two waiters of one lookup: cancel the first, the second still answers */
  c->rv[0] = ns_dns_resolve(ctx->dns, "cancel.example.test", on_result, c->canceled, &c->q[0]);
  c->rv[1] = ns_dns_resolve(ctx->dns, "cancel.example.test", on_result, c->kept, &c->q[1]);
  ns_dns_cancel(c->q[0]);
  /* the only waiter of a lookup: the query keeps running, nobody is told */
  c->rv[2] = ns_dns_resolve(ctx->dns, "alone.example.test", on_result, c->canceled, &c->q[2]);
  ns_dns_cancel(c->q[2]);
  ns_dns_cancel(NULL);
}

static void test_cancel(void **state) {
  netstash_ctx *ctx = ctx_default();
  result canceled, kept;
  cancel_job c = {&canceled, &kept, {0, 0, 0}, {NULL, NULL, NULL}};
  resolve_job rj;
  (void)state;

  result_init(&canceled, ctx);
  result_init(&kept, ctx);
  on_loop(ctx, do_cancel, &c);
  for (int i = 0; i < 3; i++) {
    assert_int_equal(c.rv[i], NETSTASH_OK);
    assert_non_null(c.q[i]);
  }
  assert_int_equal(result_wait(&kept, 1, WAIT_MS), 1);
  assert_int_equal(kept.err, NETSTASH_OK);
  /* the canceled lonely lookup still completes and fills the cache: a new
   * resolve either joins it or hits the cache, never a third query */
  rj = resolve_wait(ctx, "alone.example.test", &kept);
  (void)rj;
  assert_int_equal(kept.err, NETSTASH_OK);
  assert_int_equal(stat_of(ctx, NETSTASH_STAT_DNS_QUERIES), 2);
  ctx_del_check(ctx);
  assert_int_equal(result_calls(&canceled), 0);
  result_free(&canceled);
  result_free(&kept);
}

typedef struct prefetch_result {
  uv_mutex_t lock;
  uv_cond_t cond;
  int calls;
  netstash_error err;
  size_t resolved;
  int on_loop;
  netstash_ctx *ctx;
} prefetch_result;

static void on_prefetch(netstash_error err, size_t resolved, void *ud) {
  prefetch_result *p = ud;
  uv_mutex_lock(&p->lock);
  p->calls++;
  p->err = err;
  p->resolved = resolved;
  p->on_loop = ns_ctx_on_loop(p->ctx);
  uv_cond_broadcast(&p->cond);
  uv_mutex_unlock(&p->lock);
}

static void prefetch_wait(prefetch_result *p) {
  uint64_t deadline = uv_hrtime() + (uint64_t)WAIT_MS * 1000000u;
  uv_mutex_lock(&p->lock);
  while (p->calls == 0 && uv_hrtime() < deadline)
    uv_cond_timedwait(&p->cond, &p->lock, deadline - uv_hrtime());
  uv_mutex_unlock(&p->lock);
}

static void test_prefetch(void **state) {
  netstash_ctx *ctx = ctx_default();
  const char *hosts[3] = {"a.example.test", "b.example.test", "c.test"};
  char h0[32];
  const char *bad_hosts[2] = {"ok.test", "gone.invalid"};
  prefetch_result p;
  result r;
  (void)state;

  memset(&p, 0, sizeof(p));
  uv_mutex_init(&p.lock);
  uv_cond_init(&p.cond);
  p.ctx = ctx;
  result_init(&r, ctx);

  /* hosts are copied: scribbling over the caller's strings is harmless */
  snprintf(h0, sizeof(h0), "%s", hosts[0]);
  hosts[0] = h0;
  assert_int_equal(netstash_dns_prefetch(ctx, hosts, 3, on_prefetch, &p), NETSTASH_OK);
  memset(h0, 'x', sizeof(h0) - 1);
  prefetch_wait(&p);
  assert_int_equal(p.calls, 1);
  assert_int_equal(p.err, NETSTASH_OK);
  assert_int_equal(p.resolved, 3);
  assert_true(p.on_loop);
  assert_int_equal(stat_of(ctx, NETSTASH_STAT_DNS_QUERIES), 3);

  hosts[0] = "a.example.test";
  for (int i = 0; i < 3; i++) {
    resolve_job rj = start_resolve(ctx, hosts[i], &r);
    assert_null(rj.q);
    assert_int_equal(r.calls, i + 1);
    assert_int_equal(r.err, NETSTASH_OK);
    assert_int_equal(r.from_cache, 1);
    assert_string_equal(r.addrs[0], "127.0.0.1");
  }
  assert_int_equal(stat_of(ctx, NETSTASH_STAT_DNS_QUERIES), 3);
  assert_int_equal(stat_of(ctx, NETSTASH_STAT_DNS_CACHE_HITS), 3);

  /* one failing host: the error of the failure, the count of the others */
  p.calls = 0;
  assert_int_equal(netstash_dns_prefetch(ctx, bad_hosts, 2, on_prefetch, &p), NETSTASH_OK);
  prefetch_wait(&p);
  assert_int_equal(p.calls, 1);
  assert_int_equal(p.err, NETSTASH_E_DNS_NOT_FOUND);
  assert_int_equal(p.resolved, 1);

  /* empty list: still one callback; NULL callback accepted */
  p.calls = 0;
  assert_int_equal(netstash_dns_prefetch(ctx, NULL, 0, on_prefetch, &p), NETSTASH_OK);
  prefetch_wait(&p);
  assert_int_equal(p.calls, 1);
  assert_int_equal(p.err, NETSTASH_OK);
  assert_int_equal(p.resolved, 0);
  assert_int_equal(netstash_dns_prefetch(ctx, hosts, 1, NULL, NULL), NETSTASH_OK);
  /* misuse */
  assert_int_equal(netstash_dns_prefetch(NULL, hosts, 1, NULL, NULL),
                   NETSTASH_E_INVALID_ARGUMENT);
  assert_int_equal(netstash_dns_prefetch(ctx, NULL, 1, NULL, NULL), NETSTASH_E_INVALID_ARGUMENT);
  bad_hosts[1] = NULL;
  assert_int_equal(netstash_dns_prefetch(ctx, bad_hosts, 2, NULL, NULL),
                   NETSTASH_E_INVALID_ARGUMENT);
  ctx_del_check(ctx);
  result_free(&r);
  uv_cond_destroy(&p.cond);
  uv_mutex_destroy(&p.lock);
}

static void test_prefetch_at_shutdown(void **state) {
  /* a prefetch still waiting on the blackhole when the context goes away
   * ends with one CANCELED callback, and nothing leaks */
  netstash_ctx *ctx = ctx_with(g_blackhole_servers, 5000, 1, 1024);
  const char *hosts[1] = {"slow.example.test"};
  prefetch_result p;
  uint64_t t0;
  (void)state;

  memset(&p, 0, sizeof(p));
  uv_mutex_init(&p.lock);
  uv_cond_init(&p.cond);
  p.ctx = ctx;
  assert_int_equal(netstash_dns_prefetch(ctx, hosts, 1, on_prefetch, &p), NETSTASH_OK);
  t0 = uv_hrtime();
  ctx_del_check(ctx);
  assert_true(uv_hrtime() - t0 < 1000000000u);
  assert_int_equal(p.calls, 1);
  assert_int_equal(p.err, NETSTASH_E_CANCELED);
  assert_int_equal(p.resolved, 0);
  uv_cond_destroy(&p.cond);
  uv_mutex_destroy(&p.lock);
}

static void test_ip_literals(void **state) {
  static const struct {
    const char *in, *out;
  } cases[] = {
      {"127.0.0.1", "127.0.0.1"},  {"::1", "::1"},
      {"[::1]", "::1"},            {"[2001:DB8:0::1]", "2001:db8::1"},
      {"10.1.2.3", "10.1.2.3"},    {"::ffff:1.2.3.4", "::ffff:1.2.3.4"},
  };
  netstash_ctx *ctx = ctx_with(g_blackhole_servers, 200, 1, 1024);
  result r;
  (void)state;

  result_init(&r, ctx);
  for (size_t i = 0; i < NS_ARRAY_LEN(cases); i++) {
    resolve_job rj = start_resolve(ctx, cases[i].in, &r);
    assert_int_equal(rj.rv, NETSTASH_OK);
    assert_null(rj.q);
    assert_int_equal(rj.sync_calls, (int)i + 1); /* answered inside the call */
    assert_int_equal(r.err, NETSTASH_OK);
    assert_int_equal(r.naddrs, 1);
    assert_string_equal(r.addrs[0], cases[i].out);
    assert_int_equal(r.from_cache, 0);
  }
  /* never reached c-ares (its only server is the blackhole) */
  assert_int_equal(stat_of(ctx, NETSTASH_STAT_DNS_QUERIES), 0);
  assert_int_equal(stat_of(ctx, NETSTASH_STAT_DNS_CACHE_HITS), 0);

  /* bad arguments: an error, and no callback */
  {
    static const char *const bad[] = {"", "[127.0.0.1]", "[::1", "[]", "a b", "tab\there"};
    for (size_t i = 0; i < NS_ARRAY_LEN(bad); i++) {
      resolve_job rj = start_resolve(ctx, bad[i], &r);
      assert_int_equal(rj.rv, NETSTASH_E_INVALID_ARGUMENT);
      assert_null(rj.q);
    }
    assert_int_equal(r.calls, (int)NS_ARRAY_LEN(cases));
  }
  {
    char longname[300];
    memset(longname, 'a', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    assert_int_equal(start_resolve(ctx, longname, &r).rv, NETSTASH_E_INVALID_ARGUMENT);
  }
  ctx_del_check(ctx);
  result_free(&r);
}

static void test_localhost(void **state) {
  /* LOOKUPS "fb": /etc/hosts answers localhost without any DNS server */
  netstash_ctx *ctx = ctx_with(g_blackhole_servers, 200, 1, 1024);
  result r;
  resolve_job rj;
  (void)state;

  result_init(&r, ctx);
  rj = start_resolve(ctx, "localhost", &r);
  assert_int_equal(rj.rv, NETSTASH_OK);
  /* c-ares answers from the hosts file inside the call */
  assert_null(rj.q);
  assert_int_equal(rj.sync_calls, 1);
  assert_int_equal(r.err, NETSTASH_OK);
  assert_true(r.naddrs >= 1);
  assert_string_equal(r.addrs[0], "127.0.0.1"); /* IPv4 first */
  for (size_t i = 1; i < r.naddrs; i++)
    assert_non_null(strchr(r.addrs[i], ':'));
  ctx_del_check(ctx);
  result_free(&r);
}

static void test_bad_server_list(void **state) {
  static const char *const lists[] = {"not-an-ip", "127.0.0.1,bogus:53"};
  (void)state;
  for (size_t i = 0; i < NS_ARRAY_LEN(lists); i++) {
    netstash_options *o;
    netstash_ctx *ctx = (netstash_ctx *)(void *)&o; /* must come back NULL */
    char detail[256] = "unset";
    netstash_allocator a = {NULL, c_malloc, c_free, c_calloc, c_realloc};
    assert_int_equal(netstash_options_new(&o), NETSTASH_OK);
    assert_int_equal(netstash_options_set_allocator(o, &a), NETSTASH_OK);
    assert_int_equal(netstash_options_set_dns_servers(o, lists[i]), NETSTASH_OK);
    assert_int_equal(netstash_ctx_new(&ctx, o, detail, sizeof(detail)),
                     NETSTASH_E_INVALID_ARGUMENT);
    assert_null(ctx);
    print_message("bad list \"%s\": %s\n", lists[i], detail);
    assert_non_null(strstr(detail, lists[i]));
    netstash_options_del(o);
    assert_int_equal(atomic_load(&g_live), 0);
  }
}

static void test_shutdown_pending(void **state) {
  netstash_ctx *ctx = ctx_with(g_blackhole_servers, 5000, 2, 1024);
  result r;
  resolve_job rj;
  uint64_t t0;
  (void)state;

  result_init(&r, NULL);
  rj = start_resolve(ctx, "pending.example.test", &r);
  assert_int_equal(rj.rv, NETSTASH_OK);
  assert_non_null(rj.q);
  assert_int_equal(r.calls, 0);
  t0 = uv_hrtime();
  ctx_del_check(ctx); /* also: every allocation of the context returned */
  print_message("ctx_del with a pending query: %.1f ms\n", (double)(uv_hrtime() - t0) / 1e6);
  assert_true(uv_hrtime() - t0 < 1000000000u);
  assert_int_equal(r.calls, 1);
  assert_int_equal(r.err, NETSTASH_E_CANCELED);
  result_free(&r);
}

static void test_cache_disabled(void **state) {
  netstash_ctx *ctx = ctx_with(g_servers, 2000, 2, 0);
  result r;
  (void)state;

  result_init(&r, ctx);
  resolve_wait(ctx, "example.test", &r);
  assert_int_equal(r.err, NETSTASH_OK);
  resolve_wait(ctx, "example.test", &r);
  assert_int_equal(r.from_cache, 0);
  resolve_wait(ctx, "x.invalid", &r);
  resolve_wait(ctx, "x.invalid", &r); /* no negative caching either */
  assert_int_equal(r.err, NETSTASH_E_DNS_NOT_FOUND);
  assert_int_equal(stat_of(ctx, NETSTASH_STAT_DNS_QUERIES), 4);
  assert_int_equal(stat_of(ctx, NETSTASH_STAT_DNS_CACHE_HITS), 0);
  ctx_del_check(ctx);
  result_free(&r);
}

static void test_lru_eviction(void **state) {
  netstash_ctx *ctx = ctx_with(g_servers, 2000, 2, 2);
  result r;
  resolve_job rj;
  (void)state;

  result_init(&r, ctx);
  resolve_wait(ctx, "one.test", &r);
  resolve_wait(ctx, "two.test", &r);
  rj = start_resolve(ctx, "one.test", &r); /* hit: one.test is now recent */
  assert_null(rj.q);
  resolve_wait(ctx, "three.test", &r);     /* full: evicts two.test */
  assert_int_equal(stat_of(ctx, NETSTASH_STAT_DNS_QUERIES), 3);
  rj = start_resolve(ctx, "one.test", &r);
  assert_null(rj.q);
  rj = start_resolve(ctx, "three.test", &r);
  assert_null(rj.q);
  assert_int_equal(stat_of(ctx, NETSTASH_STAT_DNS_CACHE_HITS), 3);
  rj = resolve_wait(ctx, "two.test", &r);
  assert_non_null(rj.q);
  assert_int_equal(r.from_cache, 0);
  assert_int_equal(stat_of(ctx, NETSTASH_STAT_DNS_QUERIES), 4);
  ctx_del_check(ctx);
  result_free(&r);
}

/* Resolving again from inside a callback (cache hit and fresh answer). */
typedef struct nested {
  netstash_ctx *ctx;
  result *r;
  int depth;
  int failures;
} nested;

static void on_nested(void *ud, netstash_error err, const ns_dns_result *res,
                      const char *detail) {
  nested *n = ud;
  ns_dns_query *q;
  on_result(n->r, err, res, detail);
  if (n->depth-- > 0 &&
      ns_dns_resolve(n->ctx->dns, "nested.test", on_nested, n, &q) != NETSTASH_OK)
    n->failures++;
}

static void do_nested(netstash_ctx *ctx, void *arg) {
  nested *n = arg;
  ns_dns_query *q;
  if (ns_dns_resolve(ctx->dns, "nested.test", on_nested, n, &q) != NETSTASH_OK)
    n->failures++;
}

static void test_resolve_from_callback(void **state) {
  netstash_ctx *ctx = ctx_with(g_servers, 2000, 2, 1);
  result r;
  nested n;
  (void)state;

  result_init(&r, ctx);
  n.ctx = ctx;
  n.r = &r;
  n.depth = 3;
  n.failures = 0;
  on_loop(ctx, do_nested, &n);
  assert_int_equal(result_wait(&r, 4, WAIT_MS), 4);
  assert_int_equal(n.failures, 0);
  assert_int_equal(r.err, NETSTASH_OK);
  assert_int_equal(r.from_cache, 1);
  assert_int_equal(stat_of(ctx, NETSTASH_STAT_DNS_QUERIES), 1);
  assert_int_equal(stat_of(ctx, NETSTASH_STAT_DNS_CACHE_HITS), 3);
  ctx_del_check(ctx);
  result_free(&r);
}

static void test_alloc_failures(void **state) {
  /* Fail the k-th allocation made after a resolve starts (query, lookup,
   * in-flight table, then the answer and the cache on completion): the
   * resolve returns NOMEM without a callback, or its one callback reports
   * OK (not cached) or NOMEM; the next resolve works; nothing leaks. */
  int saw_nomem_rv = 0, saw_nomem_cb = 0, k;
  (void)state;
  for (k = 1; k <= 12; k++) {
    netstash_ctx *ctx = ctx_with(g_servers, 2000, 2, 1024);
    result r;
    resolve_job rj;
    char host[64];

    result_init(&r, ctx);
    snprintf(host, sizeof(host), "fail%d.example.test", k);
    atomic_store(&g_fail_countdown, k);
    rj = start_resolve(ctx, host, &r);
    if (rj.rv == NETSTASH_E_NOMEM) {
      saw_nomem_rv = 1;
      assert_int_equal(r.calls, 0);
    } else {
      assert_int_equal(rj.rv, NETSTASH_OK);
      assert_int_equal(result_wait(&r, 1, WAIT_MS), 1);
      assert_true(r.err == NETSTASH_OK || r.err == NETSTASH_E_NOMEM);
      if (r.err == NETSTASH_E_NOMEM)
        saw_nomem_cb = 1;
    }
    atomic_store(&g_fail_countdown, 0);
    resolve_wait(ctx, host, &r);
    assert_int_equal(r.err, NETSTASH_OK);
    ctx_del_check(ctx);
    result_free(&r);
  }
  assert_true(saw_nomem_rv);
  assert_true(saw_nomem_cb);
}

/* ---------------------------------------------------------------- main */

static int group_setup(void **state) {
  (void)state;
  if (nst_dnsmasq_start(&g_dnsmasq) != 0)
    return -1;
  g_blackhole = nst_udp_blackhole();
  if (g_blackhole <= 0)
    return -1;
  snprintf(g_servers, sizeof(g_servers), "127.0.0.1:%d", g_dnsmasq.port);
  snprintf(g_blackhole_servers, sizeof(g_blackhole_servers), "127.0.0.1:%d", g_blackhole);
  return 0;
}

static int group_teardown(void **state) {
  (void)state;
  nst_stop(&g_dnsmasq);
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_resolve_then_cache),
      cmocka_unit_test(test_nxdomain),
      cmocka_unit_test(test_refused),
      cmocka_unit_test(test_timeout),
      cmocka_unit_test(test_coalesce),
      cmocka_unit_test(test_cancel),
      cmocka_unit_test(test_prefetch),
      cmocka_unit_test(test_prefetch_at_shutdown),
      cmocka_unit_test(test_ip_literals),
      cmocka_unit_test(test_localhost),
      cmocka_unit_test(test_bad_server_list),
      cmocka_unit_test(test_shutdown_pending),
      cmocka_unit_test(test_cache_disabled),
      cmocka_unit_test(test_lru_eviction),
      cmocka_unit_test(test_resolve_from_callback),
      cmocka_unit_test(test_alloc_failures),
  };
  int failed = cmocka_run_group_tests(tests, group_setup, group_teardown);
  printf("%d passed, %d failed\n", (int)NS_ARRAY_LEN(tests) - failed, failed);
  return failed;
}
