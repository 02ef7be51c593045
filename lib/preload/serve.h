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
 * job, which relays it as is. */
netstash_error ns_preload_hit_cached(netstash_preload_hit *hit, const netstash_request *req);

/* How many decoded HTTP-cache entries the hit keeps (default 16), one per
 * slot of a hash of the URL: an entry found again, in a store that has not
 * changed since, is not read and decoded again (ns_httpcache_peek). Before
 * the hit's first cache lookup; NETSTASH_E_ILLEGAL_STATE after it. About
 * 0.7 KB per slot (allocated on the first lookup), plus the decoded head of
 * each entry kept. */
netstash_error ns_preload_hit_keep(netstash_preload_hit *hit, size_t entries);

/* The HTTP cache's reason for a local cache answer in hit ("fresh:
 * max-age=600, age 12s"), as a job's netstash_fetch_cache_reason() gives
 * it; NULL for any other hit. Valid until the hit's next lookup. */
const char *ns_preload_hit_cache_reason(const netstash_preload_hit *hit);

#endif /* NS_PRELOAD_SERVE_H */
