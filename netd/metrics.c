/*
 * metrics.c — netd's counters and their Prometheus text exposition
 * (format version 0.0.4: https://prometheus.io/docs/instrumenting/exposition_formats/).
 *
 * Counters are atomics (netd.h): the fronts and the IPC server bump them on
 * the loop thread, the metrics front renders them there too, and nothing
 * else needs a lock. Numbers are printed without printf's %f, so the output
 * does not depend on the process locale (STYLE.md, "Parsing and input").
 */
#include "ns_setup.h"

#include <inttypes.h>
#include <stdatomic.h>

#include <jansson.h>

#include "core/buf.h"
#include "core/ctx.h"
#include "netd/netd.h"
#include "store/store.h"

/* Upper bounds of the latency buckets in microseconds (NETD_LAT_BUCKETS - 1
 * finite ones; the last bucket is +Inf). */
static const uint64_t lat_bounds_us[NETD_LAT_BUCKETS - 1] = {
    500, 1000, 2000, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000};

/* The same bounds as Prometheus "le" labels, in seconds. */
static const char *const lat_labels[NETD_LAT_BUCKETS] = {"0.0005", "0.001", "0.002", "0.005",
                                                         "0.01",   "0.025", "0.05",  "0.1",
                                                         "0.25",   "0.5",   "1",     "+Inf"};

static const char *const src_names[NETD_SRC_N] = {"preload", "cache", "revalidated", "network",
                                                  "error"};

void netd_metrics_request(netd_metrics *m, int src, uint64_t head_us) {
  size_t b = 0;
  if (src < 0 || src >= NETD_SRC_N)
    src = NETD_SRC_ERROR;
  while (b < NS_ARRAY_LEN(lat_bounds_us) && head_us > lat_bounds_us[b])
    b++;
  atomic_fetch_add_explicit(&m->requests[src], 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&m->lat[b], 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&m->lat_sum_us, head_us, memory_order_relaxed);
  atomic_fetch_add_explicit(&m->lat_count, 1, memory_order_relaxed);
}

int netd_source_index(netstash_source s) {
  switch (s) {
  case NETSTASH_SOURCE_PRELOAD:
    return NETD_SRC_PRELOAD;
  case NETSTASH_SOURCE_CACHE:
    return NETD_SRC_CACHE;
  case NETSTASH_SOURCE_REVALIDATED:
    return NETD_SRC_REVALIDATED;
  case NETSTASH_SOURCE_NETWORK:
    return NETD_SRC_NETWORK;
  case NETSTASH_SOURCE_NONE:
  default:
    return NETD_SRC_ERROR; /* no response: nothing answered it */
  }
}

static uint64_t load(const _Atomic uint64_t *v) {
  return atomic_load_explicit(v, memory_order_relaxed);
}

/* "# HELP" and "# TYPE" lines of a metric family. */
static netstash_error family(ns_buf *b, const char *name, const char *type, const char *help) {
  return ns_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A family with one unlabelled sample. */
static netstash_error single(ns_buf *b, const char *name, const char *type, const char *help,
                             uint64_t v) {
  netstash_error e = family(b, name, type, help);
  return e != NETSTASH_OK ? e : ns_buf_printf(b, "%s %" PRIu64 "\n", name, v);
}

/* num/den as a decimal with 6 fractional digits ("0.250000"), den > 0. */
static netstash_error ratio(ns_buf *b, uint64_t num, uint64_t den) {
  uint64_t micro;
  if (num > den)
    num = den;
  while (num > UINT64_MAX / 1000000) { /* never in practice: keep num * 1e6 in range */
    num >>= 1;
    den >>= 1;
  }
  micro = num * 1000000 / den;
  return ns_buf_printf(b, "%" PRIu64 ".%06" PRIu64, micro / 1000000, micro % 1000000);
}

typedef struct lib_counter {
  netstash_stat stat;
  const char *name;
  const char *type;
  const char *help;
} lib_counter;

static const lib_counter lib_counters[] = {
    {NETSTASH_STAT_CONNECTIONS_OPENED, "netstash_connections_opened_total", "counter",
     "TCP and QUIC connections opened by the library."},
    {NETSTASH_STAT_TLS_HANDSHAKES, "netstash_tls_handshakes_total", "counter",
     "TLS handshakes completed."},
    {NETSTASH_STAT_TLS_RESUMED, "netstash_tls_resumed_total", "counter",
     "TLS handshakes (TCP or QUIC) that resumed a session."},
    {NETSTASH_STAT_EARLY_DATA, "netstash_early_data_requests_total", "counter",
     "Requests sent as HTTP/3 0-RTT early data and accepted by the server."},
    {NETSTASH_STAT_DNS_QUERIES, "netstash_dns_queries_total", "counter",
     "DNS lookups sent to the resolver."},
    {NETSTASH_STAT_DNS_CACHE_HITS, "netstash_dns_cache_hits_total", "counter",
     "DNS lookups answered by the DNS cache."},
    {NETSTASH_STAT_FETCHES_STARTED, "netstash_fetches_started_total", "counter",
     "Fetches started by the library (every hop, background revalidations included)."},
    /* a level, not a count: a gauge, so no _total suffix */
    {NETSTASH_STAT_FETCHES_ACTIVE, "netstash_fetches_active", "gauge", "Fetches running now."},
    {NETSTASH_STAT_BYTES_RECEIVED, "netstash_bytes_received_total", "counter",
     "Response body bytes received off the wire."},
    {NETSTASH_STAT_H3_REQUESTS, "netstash_h3_requests_total", "counter",
     "Requests sent over HTTP/3."},
};

/* The store's counts (a read transaction and a few mdb_stat calls: no walk
 * of the records). 0, or -1 without a store. */
static int store_stats(const netstash_ctx *ctx, ns_store_stats *st) {
  return ctx && ctx->store && ns_store_get_stats(ctx->store, st) == NETSTASH_OK ? 0 : -1;
}

json_t *netd_store_figures(netstash_ctx *ctx) {
  ns_store_stats st;
  if (store_stats(ctx, &st) != 0)
    return NULL;
  return json_pack("{s:I,s:I,s:I,s:{s:I,s:I}}", "used_bytes", (json_int_t)st.used_bytes,
                   "limit_bytes", (json_int_t)st.size_limit, "evicted", (json_int_t)st.evicted,
                   "records", "http", (json_int_t)st.records[NS_STORE_HTTP], "preload",
                   (json_int_t)st.records[NS_STORE_PRELOAD]);
}

char *netd_metrics_render(const netd_metrics *m, const netstash_ctx *ctx) {
  ns_buf b;
  ns_store_stats st;
  netstash_error e;
  uint64_t req[NETD_SRC_N], answered = 0, cum = 0, sum_us;
  size_t i;

  ns_buf_init(&b, ns_mem_default(), 1024 * 1024);
  for (i = 0; i < NETD_SRC_N; i++) {
    req[i] = load(&m->requests[i]);
    answered += req[i];
  }

  e = family(&b, "netd_requests_total", "counter",
             "Requests answered through netd (fronts and IPC), by what answered them.");
  for (i = 0; e == NETSTASH_OK && i < NETD_SRC_N; i++)
    e = ns_buf_printf(&b, "netd_requests_total{source=\"%s\"} %" PRIu64 "\n", src_names[i], req[i]);

  if (e == NETSTASH_OK)
    e = single(&b, "netd_response_bytes_total", "counter",
               "Response body bytes sent to netd's clients.", load(&m->bytes_out));

  if (e == NETSTASH_OK)
    e = family(&b, "netd_hit_ratio", "gauge",
               "Share of answered requests (errors included) served by the preload store "
               "or the HTTP cache, revalidations included; 0 before the first request.");
  if (e == NETSTASH_OK)
    e = ns_buf_append_str(&b, "netd_hit_ratio ");
  if (e == NETSTASH_OK)
    e = answered
            ? ratio(&b, req[NETD_SRC_PRELOAD] + req[NETD_SRC_CACHE] + req[NETD_SRC_REVALIDATED],
                    answered)
            : ns_buf_append_str(&b, "0");
  if (e == NETSTASH_OK)
    e = ns_buf_append_str(&b, "\n");

  if (e == NETSTASH_OK)
    e = single(&b, "netd_ipc_connections_total", "counter",
               "Connections accepted on the IPC socket.", load(&m->ipc_conns));
  if (e == NETSTASH_OK)
    e = single(&b, "netd_ipc_connections_open", "gauge", "IPC connections open now.",
               load(&m->ipc_conns_open));
  if (e == NETSTASH_OK)
    e = family(&b, "netd_lookups_total", "counter",
               "Synchronous preload lookups on the IPC socket, by result (a miss includes "
               "errors).");
  if (e == NETSTASH_OK)
    e = ns_buf_printf(&b,
                      "netd_lookups_total{result=\"hit\"} %" PRIu64 "\n"
                      "netd_lookups_total{result=\"miss\"} %" PRIu64 "\n",
                      load(&m->lookups_hit), load(&m->lookups_miss));
  if (e == NETSTASH_OK)
    e = single(&b, "netd_ipc_lookup_threads", "gauge",
               "IPC lookup connections served by a thread of their own now (the others by the "
               "event loop; config lookup_threads).",
               load(&m->lookup_threads));
  if (e == NETSTASH_OK)
    e = single(&b, "netd_front_connections_total", "counter",
               "Connections accepted by the HTTP/1.1 fronts (proxy, gateway, metrics).",
               load(&m->front_conns));
  if (e == NETSTASH_OK)
    e = single(&b, "netd_gateway_fast_hits_total", "counter",
               "HTTP/1.1 gateway requests answered from the preload store or the HTTP cache on the "
               "front's thread, without a job (also counted in netd_requests_total by source).",
               load(&m->fast_hits));
  if (e == NETSTASH_OK)
    e = single(&b, "netd_gateway_sendfile_answers_total", "counter",
               "Gateway fast hits whose body went out with sendfile from a hot body's copy, "
               "all or its first part (config hot_body_bytes; also counted in "
               "netd_gateway_fast_hits_total).",
               load(&m->sendfile_answers));
  if (e == NETSTASH_OK)
    e = single(&b, "netd_hot_bodies", "gauge",
               "Bodies the gateway keeps in sealed memfds to send with sendfile (16-96 KiB, "
               "answered twice).",
               load(&m->hot_bodies));
  if (e == NETSTASH_OK)
    e = single(&b, "netd_hot_body_bytes", "gauge",
               "Bytes of those copies (shared memory; at most the config's hot_body_bytes).",
               load(&m->hot_body_bytes));
  if (e == NETSTASH_OK)
    e = single(&b, "netd_ipc_fast_hits_total", "counter",
               "IPC (HTTP/2) requests answered from the preload store or the HTTP cache on the "
               "loop thread, without a job (also counted in netd_requests_total by source).",
               load(&m->ipc_fast_hits));

  if (e == NETSTASH_OK)
    e = single(&b, "netd_front_jobs_finishing", "gauge",
               "HTTP/1.1 front requests answered in full whose job has not ended yet (a miss "
               "waiting for the HTTP cache's commit of its response): the connection serves its "
               "next request meanwhile.",
               load(&m->jobs_finishing));
  if (e == NETSTASH_OK)
    e = single(&b, "netd_ipc_jobs_finishing", "gauge",
               "HTTP/2 (IPC and gateway) streams ended after their whole body whose job has not "
               "ended yet (a miss waiting for the HTTP cache's commit of its response).",
               load(&m->ipc_jobs_finishing));

  if (e == NETSTASH_OK)
    e = family(&b, "netd_warm_runs_total", "counter", "Background preload warms, by result.");
  if (e == NETSTASH_OK)
    e = ns_buf_printf(&b,
                      "netd_warm_runs_total{result=\"ok\"} %" PRIu64 "\n"
                      "netd_warm_runs_total{result=\"failed\"} %" PRIu64 "\n"
                      "netd_warm_runs_total{result=\"deferred\"} %" PRIu64 "\n",
                      load(&m->warm_ok), load(&m->warm_failed), load(&m->warm_deferred));

  /* Histogram: cumulative buckets; the +Inf bucket and _count are the same
   * number (the sum of the buckets read here), so a scrape racing a request
   * stays consistent. */
  if (e == NETSTASH_OK)
    e = family(&b, "netd_request_head_seconds", "histogram",
               "Time from a request's start to its response head.");
  for (i = 0; e == NETSTASH_OK && i < NETD_LAT_BUCKETS; i++) {
    cum += load(&m->lat[i]);
    e = ns_buf_printf(&b, "netd_request_head_seconds_bucket{le=\"%s\"} %" PRIu64 "\n",
                      lat_labels[i], cum);
  }
  sum_us = load(&m->lat_sum_us);
  if (e == NETSTASH_OK)
    e = ns_buf_printf(&b,
                      "netd_request_head_seconds_sum %" PRIu64 ".%06" PRIu64 "\n"
                      "netd_request_head_seconds_count %" PRIu64 "\n",
                      sum_us / 1000000, sum_us % 1000000, cum);

  /* The store: its size, its limit, what was evicted */
  if (e == NETSTASH_OK && store_stats(ctx, &st) == 0) {
    e = single(&b, "netd_store_used_bytes", "gauge",
               "Bytes of the profile's store in use (live LMDB pages).", st.used_bytes);
    if (e == NETSTASH_OK)
      e = single(&b, "netd_store_limit_bytes", "gauge",
                 "The store's size limit: a write above it evicts the least recently used "
                 "records down to 90 % of it (config cache_max_bytes).",
                 st.size_limit);
    if (e == NETSTASH_OK)
      e = single(&b, "netd_store_evicted_total", "counter",
                 "Records evicted (least recently used first) since netd started.", st.evicted);
  }

  /* The library's own counters. netstash_ctx_stat only reads atomics; its
   * parameter is not const for historical reasons. */
  for (i = 0; ctx && e == NETSTASH_OK && i < NS_ARRAY_LEN(lib_counters); i++) {
    const lib_counter *lc = &lib_counters[i];
    e = family(&b, lc->name, lc->type, lc->help);
    if (e == NETSTASH_OK)
      e = ns_buf_printf(&b, "%s %" PRIu64 "\n", lc->name,
                        netstash_ctx_stat((netstash_ctx *)(uintptr_t)ctx, lc->stat));
  }

  if (e != NETSTASH_OK) {
    ns_buf_free(&b);
    return NULL;
  }
  return (char *)ns_buf_steal(&b, NULL);
}
