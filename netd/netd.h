/*
 * netd.h — the network service daemon: one process owns a profile (its
 * store, cookie jars, preload cache, connections) and serves every kernel
 * process of the device through a unix socket (HTTP/2 with prior knowledge),
 * plus optional HTTP/1.1 fronts on loopback (forward proxy, gateway) and a
 * Prometheus metrics listener.
 *
 * Threading: everything of netd runs on the library context's loop thread
 * (the daemon links the library's internals for that): its listeners, its
 * HTTP/2 sessions, the jobs' callbacks. The main thread only waits for the
 * end. No locks, no hand-offs between threads.
 */
#ifndef NETD_NETD_H
#define NETD_NETD_H

#include "ns_setup.h"

#include <stdatomic.h>
#include <uv.h>

#include "core/ctx.h"
#include "core/list.h"

/* ------------------------------------------------------------ config */

typedef struct netd_warm_entry {
  char *manifest;    /* URL (or path) of a signed manifest */
  uint32_t interval_s; /* check interval (default 3600) */
  uint32_t jitter_pct; /* +- this share of the interval (default 10) */
} netd_warm_entry;

typedef struct netd_config {
  char *profile;       /* required */
  char *socket_path;   /* default PROFILE/netd.sock */
  uint32_t socket_mode; /* default 0660 */
  /* HTTP/1.1 fronts, 0 = off */
  char *proxy_host;
  int proxy_port;
  int proxy_allow_remote; /* a non-loopback listener is refused unless set */
  char *gateway_host;
  int gateway_port;
  char *upstream;      /* gateway's origin, e.g. https://example.test:8443 */
  int no_fast_hits;    /* "fast_hits": false — every gateway and IPC request a job */
  /* IPC lookup connections served by threads of their own (the rest by the
   * loop); 0: the loop serves every one; -1 (the default): NETD_LOOKUP_THREADS
   * when netd may run on two CPUs or more, else 0 */
  int lookup_threads;
  /* the HTTP/2 gateway: TLS (ALPN h2) on gateway_h2_port, same upstream */
  char *gateway_h2_host;
  int gateway_h2_port;
  char *tls_cert; /* its certificate chain (PEM) */
  char *tls_key;  /* its private key (PEM) */
  char *metrics_host;
  int metrics_port;
  /* library options */
  uint64_t cache_max_bytes; /* the store's size limit; 0: the library's 256 MiB */
  int cache_recompress; /* text bodies stored as Brotli (netstash_options_set_cache_recompress) */
  /* the gateway's hot bodies sent with sendfile (netd/hotbody.c): memory
   * for their copies (default NETD_HOT_DEFAULT), 0: none */
  uint64_t hot_body_bytes;
  char *ca_file;
  char *trusted_keys;  /* '\n'-separated public key files */
  int allow_unsigned;
  char *resolve;       /* '\n'-separated HOST:PORT:ADDR pins (tests, labs) */
  /* logging */
  int log_json;
  netstash_log_level log_level;
  /* background warming */
  netd_warm_entry *warms;
  size_t nwarms;
} netd_config;

/* Loads FILE (JSON object, documented in netd(8)) over the defaults; then the
 * command line overrides. Returns 0, or -1 with a message naming the key. */
int netd_config_load(netd_config *c, const char *file, char *err, size_t errlen);
void netd_config_defaults(netd_config *c);
void netd_config_free(netd_config *c);
/* "HOST:PORT" / "[V6]:PORT" into a malloc'd host and a port; 0 or -1. */
int netd_parse_hostport(const char *s, char **host, int *port);
/* Adds the '\n'-separated HOST:PORT:ADDR pins of list (cfg.resolve) to req. */
netstash_error netd_add_resolves(netstash_request *req, const char *list);
/* The fronts' relaying semantics on req: redirects returned, bodies raw and
 * unbounded (pulled), "Accept-Encoding: identity" unless the client sent one. */
netstash_error netd_relay_request(netstash_request *req, int has_accept_encoding);
/* Checks values (ports, paths, a front's address); 0 or -1 with a message. */
int netd_config_check(const netd_config *c, char *err, size_t errlen);
/* The lookup threads netd runs with: c->lookup_threads, or when that is -1,
 * NETD_LOOKUP_THREADS if this process may run on two CPUs or more, else 0. */
size_t netd_lookup_threads(const netd_config *c);

/* ------------------------------------------------------------ metrics */

enum {
  NETD_SRC_PRELOAD = 0,
  NETD_SRC_CACHE,
  NETD_SRC_REVALIDATED,
  NETD_SRC_NETWORK,
  NETD_SRC_ERROR,
  NETD_SRC_N
};

#define NETD_LAT_BUCKETS 12 /* 0.5 1 2 5 10 25 50 100 250 500 1000 +Inf ms */

typedef struct netd_metrics {
  _Atomic uint64_t requests[NETD_SRC_N]; /* by how they were answered */
  _Atomic uint64_t bytes_out;            /* response body bytes sent to clients */
  _Atomic uint64_t ipc_conns, ipc_conns_open, front_conns;
  _Atomic uint64_t fast_hits; /* gateway answers without a job (front.c answer_stored) */
  _Atomic uint64_t ipc_fast_hits; /* HTTP/2 IPC answers without a job (ipc.c answer_stored) */
  _Atomic uint64_t jobs_finishing; /* fronts' jobs let go after their answer, not ended yet */
  _Atomic uint64_t ipc_jobs_finishing;        /* the same for the HTTP/2 IPC and gateway (ipc.c) */
  _Atomic uint64_t lookups_hit, lookups_miss; /* synchronous preload lookups (IPC) */
  _Atomic uint64_t lookup_threads; /* IPC lookup connections with a thread of their own now */
  _Atomic uint64_t warm_runs, warm_ok, warm_failed, warm_deferred;
  _Atomic uint64_t sendfile_answers;           /* gateway answers sent from a hot body's memfd */
  _Atomic uint64_t hot_bodies, hot_body_bytes; /* the hot bodies kept now (hotbody.c) */
  _Atomic uint64_t lat[NETD_LAT_BUCKETS]; /* time to response head */
  _Atomic uint64_t lat_sum_us, lat_count;
} netd_metrics;

/* Records one answered request: its source (NETD_SRC_*) and time to head. */
void netd_metrics_request(netd_metrics *m, int src, uint64_t head_us);
/* Prometheus text exposition format (version 0.0.4) into a malloc'd string. */
char *netd_metrics_render(const netd_metrics *m, const netstash_ctx *ctx);
/* The store's figures as a new jansson object {"used_bytes",
 * "limit_bytes", "evicted" (records, since netd started), "records":
 * {"http", "preload"}}, or NULL (no store, out of memory). One read
 * transaction, no walk of the records: any thread. */
struct json_t *netd_store_figures(netstash_ctx *ctx);
int netd_source_index(netstash_source s);

/* Decoded HTTP-cache entries kept by netd's hits (the gateway's fast hits,
 * the IPC's cache lookups): 0.7 KB each plus the head, once used. */
#define NETD_HIT_ENTRIES 1024
/* IPC lookup connections served by threads of their own (config
 * lookup_threads, 0..64): each holds one of the store's LMDB reader slots
 * (126 for all processes) while its connection is open. Confined to one CPU,
 * a lookup thread competes with netd's busy loop for it and loses more than
 * it gains (doc/DESIGN.md): then the default is none. */
#define NETD_LOOKUP_THREADS 16
/* cache_max_bytes: the library's floor and default
 * (netstash_options_set_cache_max_bytes). */
#define NETD_CACHE_MIN (1 << 20)
#define NETD_CACHE_DEFAULT ((uint64_t)256 << 20)

/* ------------------------------------------------------------ hot bodies */

/* The gateway's hot bodies (netd/hotbody.c): bodies of NETD_HOT_MIN to
 * NETD_HOT_MAX bytes answered twice are copied into sealed memfds and sent
 * with sendfile; their copies take at most hot_body_bytes (config). */
#define NETD_HOT_MIN (16u << 10)
#define NETD_HOT_MAX (96u << 10)
#define NETD_HOT_DEFAULT ((uint64_t)16 << 20)
typedef struct netd_hot netd_hot;
/* NULL when max_bytes is 0 (or out of memory): no hot bodies. m: where the
 * gauges netd_hot_bodies / netd_hot_body_bytes go (may be NULL). */
netd_hot *netd_hot_new(uint64_t max_bytes, netd_metrics *m);
void netd_hot_free(netd_hot *h);
/* The memfd holding the size bytes of chunks (n buffers), whose content
 * address (the store's SHA-256, 32 bytes) is key: its descriptor when the
 * body is kept — copied on its second sighting —, -1 when not (a first
 * sighting, a size out of range, no memory). Valid until the next call. */
int netd_hot_fd(netd_hot *h, const uint8_t *key, const uv_buf_t *chunks, unsigned n, uint64_t size);

/* ------------------------------------------------------------ daemon */

/* The status of an answer for a library error before any head: 504 when
 * the cache alone could not answer (only-if-cached, RFC 9111 §5.2.1.7) or
 * the origin did not answer in time, else 502. X-Netstash-Error names the
 * error either way. */
static inline int netd_error_status(netstash_error e) {
  return e == NETSTASH_E_NOT_CACHED || e == NETSTASH_E_TIMEOUT ? 504 : 502;
}

typedef struct netd netd;
typedef struct netd_ipc netd_ipc;
typedef struct netd_front netd_front;
typedef struct netd_warmer netd_warmer;

struct netd {
  netd_config cfg;
  netstash_ctx *ctx;
  uv_loop_t *loop; /* the context's loop (loop thread only) */
  netd_metrics metrics;
  int lock_fd;
  uint64_t started_us;
  netd_ipc *ipc;
  netd_front *proxy, *gateway, *metrics_front;
  netd_warmer *warmer;
  /* host signals (embedder): pause background work */
  atomic_int metered, low_battery, foreground;
  atomic_int stopping;
};

/* Loop-thread entry points of the parts. Each start returns 0 or -1 with a
 * message; each stop closes its handles and calls done(ud) once they are
 * closed (done may run before stop returns). */
int netd_ipc_start(netd *d, char *err, size_t errlen);
void netd_ipc_stop(netd *d, void (*done)(void *), void *ud);
size_t netd_ipc_clients(const netd *d);
/* The HTTP/2 gateway (cfg.gateway_h2_*): TLS 1.3 with ALPN h2 on a TCP
 * listener, served by the IPC's HTTP/2 sessions with gateway semantics;
 * after netd_ipc_start, stopped by netd_ipc_stop. */
int netd_gateway_h2_start(netd *d, char *err, size_t errlen);
/* Copies what a partial write of bufs left unwritten (written bytes went
 * out) into dst; returns the bytes copied. */
size_t netd_copy_unwritten(void *dst, const uv_buf_t *bufs, size_t n, size_t written);
/* A hop-by-hop field (RFC 9110 §7.6.1, RFC 9112 §9.6, plus the de-facto
 * Keep-Alive and Proxy-*): the HTTP/1.1 fronts and lookups never relay it. */
int netd_hop_by_hop(const char *name, size_t len);
/* A Content-Length value (v, n bytes; NULL: absent) as a length, -1 when it
 * is absent or not one (front.c). */
int64_t netd_parse_length(const char *v, size_t n);
/* The stored answer to req in hit, in a job's order: the preload store's
 * (when preload is set: only https URLs are preloaded), else a fresh one of
 * the HTTP cache (netstash_intercept_preloaded / _cached: what they leave is
 * a job's). 1 with *src set; 0, the hit released, when a job must answer. */
int netd_stored_lookup(netstash_preload_hit *hit, const netstash_request *req, int preload,
                       netstash_source *src);

typedef enum netd_front_kind {
  NETD_FRONT_PROXY = 1,   /* forward proxy: absolute-form http, CONNECT tunnels */
  NETD_FRONT_GATEWAY = 2, /* reverse proxy to cfg.upstream */
  NETD_FRONT_METRICS = 3  /* GET /metrics: Prometheus text */
} netd_front_kind;
int netd_front_start(netd *d, netd_front_kind kind, const char *host, int port,
                     netd_front **out, char *err, size_t errlen);
void netd_front_stop(netd_front *fr, void (*done)(void *), void *ud);

int netd_warmer_start(netd *d, char *err, size_t errlen);
void netd_warmer_stop(netd *d);
/* Host signals changed: pause or resume background warms. */
void netd_warmer_signals(netd *d);
/* Runs every configured manifest's warm now (a "warm" control request);
 * returns the number started. */
int netd_warmer_kick(netd *d);
/* JSON array describing schedules and last results (malloc'd). */
char *netd_warmer_status_json(netd *d);

/* Logging (stderr; text or JSON lines). */
void netd_log(const netd *d, netstash_log_level lvl, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
