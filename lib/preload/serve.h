/*
 * serve.h — the preload hit's internal entry points (lib/preload/serve.c).
 * Internal.
 */
#ifndef NS_PRELOAD_SERVE_H
#define NS_PRELOAD_SERVE_H

#include "ns_setup.h"

#include <netstash/netstash.h>

/* netstash_intercept_cached's lookup once the request has been checked: a
 * fresh stored answer to req in hit, or NETSTASH_E_NOT_FOUND for anything a
 * job must do. A raw request (netstash_request_set_raw_body) gets the body
 * as received: one the store keeps in the coding it arrived in is left to a
 * job, which relays it as is. preload_first (a remote hit, and a request
 * that qualifies for both): netd tries its preload store first, then its
 * HTTP cache, in one round trip (netstash_intercept_lookup). */
netstash_error ns_preload_hit_cached(netstash_preload_hit *hit, const netstash_request *req,
                                     int preload_first);

/* Does the hit ask netd (a remote-mode context's)? */
int ns_preload_hit_remote(const netstash_preload_hit *hit);

/* How many decoded HTTP-cache entries the hit keeps (default 16), one per
 * slot of a hash of the URL: an entry found again, in a store that has not
 * changed since, is not read and decoded again (ns_httpcache_peek). Before
 * the hit's first cache lookup; NETSTASH_E_ILLEGAL_STATE after it. About
 * 0.7 KB per slot (allocated on the first lookup), plus the decoded head of
 * each entry kept. */
netstash_error ns_preload_hit_keep(netstash_preload_hit *hit, size_t entries);

/* A preloaded answer's cache reason (transport.c's jobs, and
 * ns_preload_hit_cache_reason): the manifest id (%.*s), its version (%llu),
 * then what the request made of it (%s, may be ""). */
#define NS_PRELOAD_REASON_FMT "preload: manifest \"%.*s\" version %llu%s"

/* The reason a job's netstash_fetch_cache_reason() gives for the answer in
 * a local hit: the HTTP cache's ("fresh: max-age=600, age 12s"), valid until
 * the hit's next lookup, or for a preloaded one NS_PRELOAD_REASON_FMT's,
 * written into buf (n bytes, cut as a job's 192). NULL without an answer and
 * for a remote hit. */
const char *ns_preload_hit_cache_reason(const netstash_preload_hit *hit, char *buf, size_t n);

/* The store's content address of the body a local hit's chunks hold (its
 * SHA-256, NS_STORE_HASH_LEN bytes into key): 1 when the chunks are the
 * stored bytes as they are (not decoded into the hit's buffer, not a remote
 * answer) — the same key always names the same bytes, so netd may keep a
 * copy of them under it (netd/hotbody.c); 0 otherwise. */
int ns_preload_hit_body_key(const netstash_preload_hit *hit, uint8_t *key);

#endif /* NS_PRELOAD_SERVE_H */
