/*
 * dns.h — asynchronous name resolution with c-ares on the context's loop,
 * a TTL-respecting cache, and prefetch. Internal.
 *
 * Everything here runs on the loop thread, except ns_dns_new/ns_dns_del
 * (before the loop starts / after it ended) and netstash_dns_prefetch (public,
 * any thread: it posts a task).
 */
#ifndef NS_DNS_DNS_H
#define NS_DNS_DNS_H

#include "ns_setup.h"

#include "core/ctx.h"

typedef struct ns_dns ns_dns;
typedef struct ns_dns_query ns_dns_query;

typedef struct ns_dns_result {
  size_t naddrs;            /* >= 1 */
  const char *const *addrs; /* numeric: "127.0.0.1", "::1" (no brackets);
                               IPv4 first, then IPv6, each in resolver order */
  uint32_t ttl_s;           /* smallest TTL of the answer (what is left of it
                               for a cache hit); 0 for an IP literal */
  int from_cache;
} ns_dns_result;

/* res is NULL unless err is NETSTASH_OK. detail: one line, "" if none; both
 * valid until the callback returns. Errors: NETSTASH_E_DNS_NOT_FOUND,
 * NETSTASH_E_DNS_TIMEOUT, NETSTASH_E_DNS_FAILED, NETSTASH_E_CANCELED (at
 * shutdown only; ns_dns_cancel is silent), NETSTASH_E_NOMEM. */
typedef void (*ns_dns_cb)(void *user_data, netstash_error err,
                          const ns_dns_result *res, const char *detail);

/* Uses ctx->loop, ctx->mem and ctx->cfg.dns_*. detail gets a reason on error
 * (e.g. a bad server list). */
netstash_error ns_dns_new(netstash_ctx *ctx, ns_dns **out, char *detail,
                          size_t detail_len);
/* Loop thread: fails pending queries with NETSTASH_E_CANCELED and closes every
 * libuv handle. Also valid before the loop thread started. NULL accepted. */
void ns_dns_shutdown(ns_dns *dns);
/* After the loop ended (ns_dns_shutdown called and the loop run until the
 * handles closed): frees the cache and the module. NULL accepted. */
void ns_dns_del(ns_dns *dns);

/* Resolves host (A and AAAA). A cache hit calls cb before returning and sets
 * *out to NULL; otherwise *out receives the query handle, valid until cb runs
 * or ns_dns_cancel. host may be an IP literal, "[v6]" included (answered at
 * once, from_cache 0, not counted in the stats); an answer c-ares gives
 * inside the call (/etc/hosts) is delivered the same way, with *out NULL.
 * Concurrent resolves of one uncached name share one c-ares query. Returns an
 * error only for bad arguments (NULL, empty or longer than 254 bytes, spaces
 * or control bytes, brackets around a non-IPv6), NOMEM, or
 * NETSTASH_E_SHUTDOWN after ns_dns_shutdown, and then never calls cb. */
netstash_error ns_dns_resolve(ns_dns *dns, const char *host, ns_dns_cb cb,
                              void *user_data, ns_dns_query **out);
/* The callback of q will not be called; q is freed at once (the c-ares
 * query continues for the other waiters and still fills the cache). NULL
 * accepted; a no-op from inside q's own callback. */
void ns_dns_cancel(ns_dns_query *q);

#endif
