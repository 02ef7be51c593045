/*
 * ctx.h — the context: copied options, the loop thread and its task queue,
 * counters. Internal.
 *
 * Threading model: one libuv loop per context, run by one thread the context
 * owns. Every libcurl, c-ares and libuv handle of the context is touched only
 * on that thread. Public calls from other threads hand a task to the loop
 * (ns_ctx_post) under a mutex and wake it through an eventfd the loop
 * polls (not uv_async_send: see ctx.c, ns_ctx_post). Tasks are
 * embedded in the objects they act on, so posting never allocates and never
 * fails.
 */
#ifndef NS_CORE_CTX_H
#define NS_CORE_CTX_H

#include "ns_setup.h"

#include <stdatomic.h>
#include <uv.h>

#include "core/list.h"

struct ns_dns;
struct ns_transport;
struct ns_httpcache;
struct ns_store;
struct ns_cookie_jars;

typedef struct ns_config {
  netstash_log_cb log_cb;
  void *log_ud;
  netstash_log_level log_level;
  char *ca_file;
  char *ca_dir;
  netstash_tls_version tls_min;
  char *dns_servers;
  uint32_t dns_timeout_ms;
  uint32_t dns_tries;
  uint32_t dns_cache_size;
  uint32_t connect_timeout_ms;
  uint32_t max_host_connections;
  uint32_t max_total_connections;
  uint64_t max_decoded_body;
  int hsts;
  int http3;               /* h3 when Alt-Svc offers it (default 1) */
  char *remote_socket;     /* remote mode: every fetch goes to netd there */
  uint32_t h3_race_ms;     /* wait for a new QUIC handshake before TCP (300) */
  char *user_agent;
  char *profile_dir;
  int http_cache;          /* use the profile's HTTP cache (default 1) */
  int cache_partition;     /* double-keyed (default 1) */
  int cache_recompress;    /* text bodies stored as Brotli (default 0) */
  uint64_t cache_max_bytes;
  /* preload */
  char *trusted_keys; /* public key files, '\n'-separated; NULL: none */
  int allow_unsigned;
  char *app_version;
  char *kernel_version;
  char *device_id;
} ns_config;

void ns_config_init_defaults(ns_config *c);
void ns_config_free(const ns_mem *m, ns_config *c);
netstash_error ns_config_copy(const ns_mem *m, ns_config *dst, const ns_config *src);

struct netstash_options {
  ns_mem mem; /* the allocator the context will use */
  ns_config cfg;
};

typedef struct ns_task ns_task;
typedef void (*ns_task_fn)(netstash_ctx *ctx, ns_task *task);
struct ns_task {
  ns_list node;
  ns_task_fn run;
  int queued; /* guarded by the context's queue lock */
};

struct netstash_ctx {
  ns_mem mem;
  ns_config cfg;

  uv_loop_t loop;
  uv_thread_t thread;
  int wake_fd;           /* eventfd: other threads' posts wake the loop */
  uv_poll_t wake;        /* polls wake_fd */
  atomic_int wake_armed; /* a wake-up is written and not yet read */
  uv_idle_t kick;  /* a task posted on the loop thread itself: no eventfd */
  uv_mutex_t qlock;
  ns_list queue;   /* ns_task, guarded by qlock */
  int stopping;    /* guarded by qlock */
  uv_thread_t loop_tid;
  atomic_int loop_running;

  struct ns_dns *dns;
  struct ns_transport *transport;
  struct ns_store *store;  /* the profile's store; NULL without a profile */
  struct ns_httpcache *hc; /* NULL without a profile, or cache turned off */
  struct ns_cookie_jars *cookies; /* loop thread, or under cookie_lock */
  uv_mutex_t cookie_lock;
  ns_list cookie_hooks; /* embedder listeners/policies (lib/cookie/api.c) */

  _Atomic uint64_t stats[16];

  /* Test hook (fuzz/fetch_response.c; curl-fuzzer's fuzz_open_socket):
   * when set, it opens every TCP socket of the transport. It may rewrite
   * *addr (same family, *addrlen bytes at most) to send the connection to a
   * harness-owned loopback server, or return an already connected socket
   * (one end of a socketpair; told to libcurl as CURL_SOCKOPT_ALREADY_CONNECTED)
   * — but libcurl 7.88 connects such a socket anyway and fails (curl issue
   * 10626, fixed in 8.0), so on Debian 12 a harness rewrites the address.
   * -1 fails the connection. Called on the loop thread; set it before the first fetch.
   * Internal only: no public setter, not part of the ABI. */
  int (*test_open_socket)(void *ud, struct sockaddr *addr, unsigned *addrlen);
  void *test_open_socket_ud;
};

/* Queue task to run on the loop thread. Returns NETSTASH_E_SHUTDOWN when the
 * context is stopping (task not queued). A task already queued is not queued
 * twice (returns OK). */
netstash_error ns_ctx_post(netstash_ctx *ctx, ns_task *task);
/* Removes task from the queue if it is still there (call before freeing the
 * object a queued task is embedded in). */
void ns_ctx_unpost(netstash_ctx *ctx, ns_task *task);
/* Nonzero when the caller runs on the context's loop thread. */
int ns_ctx_on_loop(const netstash_ctx *ctx);
/* On the loop thread, from a libuv callback that is not itself a task: runs
 * the tasks queued so far now instead of in the next turn's idle phase (netd's
 * fronts answer a request read in this callback before reading the next
 * connection's, as one event handler does in nginx). Tasks those tasks post
 * wait for the idle phase as usual. */
void ns_ctx_run_posted(netstash_ctx *ctx);

static inline void ns_stat_add(netstash_ctx *ctx, netstash_stat s, int64_t v) {
  atomic_fetch_add_explicit(&ctx->stats[s], (uint64_t)v, memory_order_relaxed);
}

/* Monotonic clock in microseconds (for timings only; protocol logic takes
 * "now" as a parameter). */
uint64_t ns_now_us(void);

#endif
