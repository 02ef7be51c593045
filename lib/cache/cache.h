/*
 * cache.h — RFC 9111 HTTP caching rules for a private (browser) cache, as
 * pure functions. Internal.
 *
 * Nothing here reads a clock, touches the store or the network: every
 * function is a function of its arguments (the request, a stored response
 * with its request/response times, `now`). Times: HTTP header dates are in
 * seconds, the cache's own clock values in milliseconds since the epoch
 * (`*_ms`); lifetimes and ages are reported in milliseconds.
 *
 * How the fetch engine uses it (see doc/internals/cache.md):
 *
 *   lookup   key = ns_cache_key(policy, top_level_url, url)  → the store's
 *            variant list for that key; ns_cache_select_variant() picks the
 *            newest variant whose Vary snapshot matches the request (and if
 *            none, the No-Vary-Search index, ns_cache_nvs_*).
 *   decide   ns_cache_decide(policy, request, stored, now_ms) → verdict:
 *              FRESH                  serve the stored response
 *              STALE_WHILE_REVALIDATE serve it, revalidate in the background
 *              REVALIDATE             conditional request; if it fails and
 *                                     decision.stale_if_error, serve stored
 *              MUST_REVALIDATE        conditional request; never serve stale
 *              MISS                   unconditional request
 *              GATEWAY_TIMEOUT        only-if-cached and nothing usable: 504
 *   validate ns_cache_add_validators(stored, outgoing_request_headers)
 *   304      ns_cache_304_matches() then ns_cache_merge_304() on the stored
 *            head, new request/response times, re-snapshot Vary
 *   store    ns_cache_storable() → ns_cache_prepare_for_storage() →
 *            ns_cache_vary_snapshot()
 *   unsafe   ns_cache_invalidation_targets() after POST/PUT/DELETE/...
 *   ranges   ns_cache_range_decide() to answer Range from a stored body or piece
 */
#ifndef NS_CACHE_CACHE_H
#define NS_CACHE_CACHE_H

#include "ns_setup.h"

#include <libpsl.h>

#include "core/buf.h"
#include "core/headers.h"
#include "core/reader.h"

/* ------------------------------------------------------------------ policy */

typedef struct ns_cache_policy {
  /* Public suffix list for top-level sites; NULL: psl_builtin() (compiled
   * into libpsl, no I/O). Borrowed. */
  const psl_ctx_t *psl;
  /* Double-keyed cache: keys carry the top-level site (default 1). */
  int partition;
  /* Heuristic freshness (RFC 9111 §4.2.2): heuristic_percent of the time
   * since Last-Modified, at most heuristic_max_s (defaults 10 and 7 days).
   * 301, 308 and 410 without explicit freshness or Last-Modified get
   * permanent_heuristic_s (default 7 days): they are permanent by definition
   * (RFC 9110 §15.4.2, §15.4.9, §15.5.11). 0 disables that rule. */
  int heuristic_percent;
  int64_t heuristic_max_s;
  int64_t permanent_heuristic_s;
} ns_cache_policy;

/* Defaults as documented above. */
void ns_cache_policy_init(ns_cache_policy *p);

/* ----------------------------------------------------------- Cache-Control */

enum {
  NS_CC_MAX_AGE = 1u << 0,          /* max_age_s valid */
  NS_CC_MAX_AGE_INVALID = 1u << 1,  /* response: unparsable/conflicting → stale */
  NS_CC_S_MAXAGE = 1u << 2,         /* parsed, ignored by a private cache */
  NS_CC_NO_STORE = 1u << 3,
  NS_CC_NO_CACHE = 1u << 4,
  NS_CC_NO_CACHE_FIELDS = 1u << 5,  /* qualified form no-cache="a, b" */
  NS_CC_MUST_REVALIDATE = 1u << 6,
  NS_CC_PROXY_REVALIDATE = 1u << 7, /* shared caches only: ignored */
  NS_CC_PRIVATE = 1u << 8,
  NS_CC_PUBLIC = 1u << 9,
  NS_CC_IMMUTABLE = 1u << 10,       /* RFC 8246 */
  NS_CC_SWR = 1u << 11,             /* stale-while-revalidate, RFC 5861 §3 */
  NS_CC_SIE = 1u << 12,             /* stale-if-error, RFC 5861 §4 */
  NS_CC_MAX_STALE = 1u << 13,       /* request */
  NS_CC_MAX_STALE_ANY = 1u << 14,   /* request, max-stale without a value */
  NS_CC_MIN_FRESH = 1u << 15,       /* request */
  NS_CC_ONLY_IF_CACHED = 1u << 16,  /* request */
  NS_CC_NO_TRANSFORM = 1u << 17,
  NS_CC_MUST_UNDERSTAND = 1u << 18,
  NS_CC_PRAGMA_NO_CACHE = 1u << 19  /* request Pragma: no-cache (RFC 9111 §5.4) */
};

typedef struct ns_cache_control {
  uint32_t flags;
  int64_t max_age_s, s_maxage_s, max_stale_s, min_fresh_s, swr_s, sie_s;
} ns_cache_control;

/* Parses one Cache-Control field value into cc, adding to what is there
 * (call ns_cache_control_init first). Never fails: unknown directives and
 * invalid arguments are ignored (RFC 9111 §5.2.3), except that an invalid or
 * conflicting response max-age sets NS_CC_MAX_AGE_INVALID (RFC 9111 §4.2.1:
 * treat as stale). Duplicates in a request keep the most restrictive value. */
void ns_cache_control_init(ns_cache_control *cc);
void ns_cache_control_parse(ns_cache_control *cc, const char *value, size_t len,
                            int is_request);
/* All Cache-Control lines of h. For a request without Cache-Control,
 * "Pragma: no-cache" counts as no-cache (RFC 9111 §5.4). */
void ns_cache_control_from_headers(ns_cache_control *cc, const ns_headers *h,
                                   int is_request);

/* -------------------------------------------------------- inputs */

typedef struct ns_cache_request {
  const char *method;        /* "GET" ... */
  const char *url;           /* absolute */
  const ns_headers *headers; /* request header fields as sent */
} ns_cache_request;

/* What ns_cache_decide derives from a stored response alone — its
 * Cache-Control, Date, freshness lifetime and initial age (RFC 9111 §4.2.1,
 * §4.2.3) —, kept by a caller that decides on the same stored response
 * again (netstash_intercept_cached's kept entries). Filled by the first
 * decision that finds it invalid; the caller invalidates it (valid = 0)
 * whenever the stored response changes. */
typedef struct ns_cache_prepared {
  int valid;
  const void *policy; /* the policy it was computed under */
  int vary_star;
  ns_cache_control rs;
  int64_t lifetime_ms;
  int source; /* ns_cache_fresh_source */
  int64_t initial_age_ms;
  char source_text[96];
} ns_cache_prepared;

typedef struct ns_cache_stored {
  int status;
  const ns_headers *headers;      /* stored response header fields */
  const ns_headers *vary_request; /* the request fields Vary nominated, as
                                     sent (ns_cache_vary_snapshot); NULL: none */
  int64_t request_time_ms;        /* RFC 9111 §4.2.3 request_time */
  int64_t response_time_ms;       /* RFC 9111 §4.2.3 response_time */
  ns_cache_prepared *prep;        /* NULL, or kept across decisions (above) */
} ns_cache_stored;

/* ------------------------------------------------------------- storage */

/* Status codes heuristically cacheable (RFC 9110 §15.1): 200 203 204 206 300
 * 301 308 404 405 410 414 501. */
int ns_cache_status_heuristic(int status);

/* Whether a response to req may be stored (RFC 9111 §3). reason (if not
 * NULL) gets a static explanation. Stored only: GET; final, complete
 * responses (not 206 — bodies are stored whole; not 304); no no-store in
 * request or response (a response's no-store is overridden by must-understand
 * with a status we understand, §5.2.2.3); not Vary: *; must-understand only
 * with a status we understand; and explicit freshness (max-age, Expires), public/private, or a
 * heuristically cacheable status. Authorization does not prevent storage in
 * a private cache (RFC 9111 §3.5 binds shared caches only). */
int ns_cache_storable(const ns_cache_request *req, int status, const ns_headers *resp,
                      const char **reason);

/* Turns received response fields into what is stored: removes hop-by-hop
 * fields (Connection and the fields it names, Keep-Alive, Proxy-Connection,
 * TE, Transfer-Encoding, Upgrade, Trailer — RFC 9111 §3.1) and Set-Cookie /
 * Set-Cookie2 (applied to the jar when received; replaying them from the
 * cache would resurrect cookies, as Chromium's PERSIST_SANS_COOKIES); adds
 * Date = response time when missing (RFC 9110 §6.6.1). */
netstash_error ns_cache_prepare_for_storage(ns_headers *resp, int64_t response_time_ms);

/* The request fields nominated by resp's Vary, copied from req into out
 * (emptied first), to be stored with the variant. */
netstash_error ns_cache_vary_snapshot(const ns_headers *resp, const ns_headers *req,
                                      ns_headers *out);

/* ------------------------------------------------------- freshness, age */

typedef enum ns_cache_fresh_source {
  NS_CACHE_FRESH_NONE = 0,      /* nothing to go on: lifetime 0 */
  NS_CACHE_FRESH_MAX_AGE,
  NS_CACHE_FRESH_EXPIRES,
  NS_CACHE_FRESH_HEURISTIC,     /* Last-Modified, percent rule */
  NS_CACHE_FRESH_PERMANENT,     /* 301/308/410 rule of the policy */
  NS_CACHE_FRESH_INVALID        /* invalid max-age or Expires: stale */
} ns_cache_fresh_source;

/* Freshness lifetime (RFC 9111 §4.2.1): max-age, else Expires − Date (Date
 * missing or invalid: the response time), else the heuristic (§4.2.2). */
int64_t ns_cache_freshness_lifetime_ms(const ns_cache_policy *pol,
                                       const ns_cache_stored *st,
                                       ns_cache_fresh_source *source);
/* current_age (RFC 9111 §4.2.3), never negative. */
int64_t ns_cache_current_age_ms(const ns_cache_stored *st, int64_t now_ms);

/* ------------------------------------------------------------ decision */

typedef enum ns_cache_verdict {
  NS_CACHE_MISS = 0,
  NS_CACHE_FRESH,
  NS_CACHE_STALE_WHILE_REVALIDATE,
  NS_CACHE_REVALIDATE,
  NS_CACHE_MUST_REVALIDATE,
  NS_CACHE_GATEWAY_TIMEOUT
} ns_cache_verdict;

typedef struct ns_cache_decision {
  ns_cache_verdict verdict;
  /* REVALIDATE only: when revalidation fails (no connection, or a 500, 502,
   * 503 or 504 answer) the stored response may be served (RFC 9111 §4.2.4
   * with RFC 5861 §4 stale-if-error, from the response or the request). */
  int stale_if_error;
  int stale;              /* the stored response is stale */
  int immutable;          /* served fresh despite a reload, RFC 8246 */
  int incomplete;         /* MISS only because what is stored is a piece (a
                             206) that does not hold what is asked */
  ns_cache_fresh_source source;
  int64_t lifetime_ms, age_ms;
  char reason[160];       /* "fresh: max-age=600, age 12s" */
} ns_cache_decision;

/* Human name of a verdict ("fresh", "miss", ...). */
const char *ns_cache_verdict_name(ns_cache_verdict v);

/* The decision for req given stored (NULL: nothing stored) at now_ms. */
void ns_cache_decide(const ns_cache_policy *pol, const ns_cache_request *req,
                     const ns_cache_stored *stored, int64_t now_ms,
                     ns_cache_decision *out);

/* ------------------------------------------------------------- validation */

/* Adds the validators of stored to an outgoing request's fields (RFC 9111
 * §4.3.1): If-None-Match with the ETag (strong or weak), If-Modified-Since
 * with Last-Modified; with neither, If-Modified-Since from Date. Existing
 * If-None-Match / If-Modified-Since are replaced. *added (if not NULL) is
 * the number of fields set (0: no validator, the request is unconditional). */
netstash_error ns_cache_add_validators(const ns_cache_stored *stored, ns_headers *req,
                                       int *added);

/* Whether a 304's fields select stored for update (RFC 9111 §4.3.4): its
 * ETag must equal the stored one (strong comparison when both are strong,
 * weak otherwise); with no ETag, its Last-Modified must equal the stored one;
 * a 304 with no validator at all selects the (single) stored response that
 * was validated. */
int ns_cache_304_matches(const ns_cache_stored *stored, const ns_headers *resp304);

/* Updates stored header fields from a 304's (RFC 9111 §3.2, §4.3.4): each
 * field of the 304 replaces all stored lines of that name, except
 * Content-Length, hop-by-hop fields, Set-Cookie, and the fields describing
 * the stored bytes (Content-Encoding, Content-Type, Content-Range), which the
 * stored body depends on. On error stored is unchanged. The caller then sets
 * the record's request/response times to those of the revalidation. */
netstash_error ns_cache_merge_304(ns_headers *stored, const ns_headers *resp304);

/* ------------------------------------------------------------------ Vary */

/* RFC 9111 §4.1: 1 when every field nominated by stored_resp's Vary has the
 * same (normalised: lines combined, OWS around commas and empty list members
 * dropped) value in vary_req (the stored snapshot) and req, absent in both
 * counting as equal; 0 otherwise and always for Vary: *. */
int ns_cache_vary_matches(const ns_headers *stored_resp, const ns_headers *vary_req,
                          const ns_headers *req);

/* Variant selection (RFC 9111 §4.1, §4): among the n stored variants of a key,
 * the matching one with the most recent Date (then response time) wins.
 * Returns 1 and *index, or 0 when none matches. */
int ns_cache_select_variant(const ns_cache_stored *const *variants, size_t n,
                            const ns_headers *req_headers, size_t *index);

/* ------------------------------------------------------------------- keys */

/* The schemeful site of url: "https://example.co.uk" (scheme + registrable
 * domain; IP literals and hosts without one — "localhost", a public suffix
 * itself — as the host). Appended to out. NETSTASH_E_BAD_URL. */
netstash_error ns_cache_site(const ns_cache_policy *pol, const char *url, ns_buf *out);

/* The primary cache key, appended to out:
 *     "1 " partition " " url
 * partition: the site of top_level_url (NULL: url is itself a top-level
 * navigation, its own site) or "-" when pol->partition is 0; url: absolute,
 * normalised by libcurl, host lowercased, default port and fragment removed.
 * Method-independent: HEAD is answered from a stored GET. The leading "1"
 * versions the format. */
netstash_error ns_cache_key(const ns_cache_policy *pol, const char *top_level_url,
                            const char *url, ns_buf *out);
/* URLs already in curl_url's printed form (a request's) are split without
 * parsing them again (no allocation; ns_url_split_canonical, switched off
 * for the comparing tests with ns_url_fast_set). */
unsigned long ns_cache_norm_fast_count(void); /* URLs split the fast way so far */
/* The No-Vary-Search index key: as ns_cache_key with "1n" and the query
 * removed too. Under it the store lists the keys of responses that carried
 * a No-Vary-Search field. */
netstash_error ns_cache_nvs_index_key(const ns_cache_policy *pol, const char *top_level_url,
                                      const char *url, ns_buf *out);

/* A key of at most max bytes for a store with a key-length limit
 * (NS_STORE_KEY_MAX): key itself when it fits, else its first
 * max - 65 bytes, "#" and the hex SHA-256 of the whole key. The readable
 * prefix keeps prefix scans by partition or origin working; "#" never occurs
 * in a key (fragments are removed), so shortened keys cannot collide with
 * whole ones. Appended to out. NETSTASH_E_INVALID_ARGUMENT when max < 65. */
#define NS_CACHE_KEY_HASH_SUFFIX 65
netstash_error ns_cache_key_fit(const char *key, size_t len, size_t max, ns_buf *out);

/* --------------------------------------------------------- invalidation */

#define NS_CACHE_MAX_INVALIDATE 3
typedef struct ns_cache_invalidation {
  size_t n;
  char *url[NS_CACHE_MAX_INVALIDATE]; /* normalised (as in keys) */
  char *key[NS_CACHE_MAX_INVALIDATE]; /* ns_cache_key of url */
} ns_cache_invalidation;

/* RFC 9111 §4.4: after a non-error (2xx, 3xx) response to an unsafe method
 * (anything but GET, HEAD, OPTIONS, TRACE), the target URI and the Location
 * and Content-Location URIs (resolved against it) when same-origin with the
 * target. out->n is 0 when nothing is to be invalidated. Strings are
 * allocated with mem; free with ns_cache_invalidation_free. */
netstash_error ns_cache_invalidation_targets(const ns_mem *mem, const ns_cache_policy *pol,
                                             const char *top_level_url, const char *method,
                                             const char *url, int status,
                                             const ns_headers *resp,
                                             ns_cache_invalidation *out);
void ns_cache_invalidation_free(const ns_mem *mem, ns_cache_invalidation *inv);

/* ---------------------------------------------------------------- ranges */

typedef struct ns_cache_range {
  int status;             /* 200 (whole body), 206 or 416 */
  uint64_t first, last;   /* 206: inclusive byte positions */
  uint64_t body_offset;   /* 206: the position of the stored body's first
                             byte (a stored piece's; 0 for a whole body) */
  char content_range[64]; /* 206: "bytes 0-99/1000"; 416: "bytes * /1000"
                             (no space); "" for 200 */
  const char *reason;     /* static */
} ns_cache_range;

/* The one byte range a 206 carries, from its Content-Range (RFC 9110 §14.4:
 * "bytes first-last/complete", the complete length known, first <= last <
 * complete): 1 and the positions (each pointer may be NULL), else 0. */
int ns_cache_piece(const ns_headers *resp, uint64_t *first, uint64_t *last, uint64_t *complete);

/* The strong validator of a stored response, as an If-Range value (RFC 9110
 * §13.1.5): its ETag when that is a strong entity-tag, else its Last-Modified
 * when that is at least 60 s before its Date; NULL when it has neither. */
const char *ns_cache_if_range(const ns_headers *stored);

/* 1 when resp carries the stored response's strong validator (the one
 * ns_cache_if_range names), so that their bytes may be combined (RFC 9111
 * §3.4). */
int ns_cache_same_validator(const ns_headers *stored, const ns_headers *resp);

/* Answers a request's Range (RFC 9110 §14.2) from a stored body of body_len
 * bytes: a complete one (stored status 200), or a stored 206's piece (RFC 9111
 * §3.3: it answers only ranges wholly within it; body_len must be its
 * Content-Range's length). 200 when there is no Range, it is not a bytes
 * range, it is syntactically invalid, If-Range does not match (RFC 9110
 * §13.1.5: a strong ETag equal by strong comparison, or a date equal to a
 * strong Last-Modified), the stored status is neither, there are several
 * ranges that do not coalesce into one (we do not generate
 * multipart/byteranges), or the range is not all in the stored piece. 416
 * when no range overlaps the representation; 206 otherwise. */
void ns_cache_range_decide(const ns_headers *req, int stored_status,
                           const ns_headers *stored_resp, uint64_t body_len,
                           ns_cache_range *out);

/* -------------------------------------------------------- No-Vary-Search */

/* draft-ietf-httpbis-no-vary-search: the URL search variance of a response. */
typedef struct ns_cache_nvs {
  int present;        /* a valid No-Vary-Search field was found */
  int key_order;      /* parameter order does not matter */
  int params_all;     /* params (boolean true): every parameter ignored,
                         except those listed in names */
  size_t n;
  ns_span *names;     /* decoded (may hold any byte): no-vary params, or the
                         `except` list; each p allocated */
} ns_cache_nvs;

/* Parses resp's No-Vary-Search (a Structured Field dictionary, RFC 8941). A
 * missing or invalid field leaves out->present 0 (the default variance:
 * every parameter matters, in order). NETSTASH_E_NOMEM only. */
netstash_error ns_cache_nvs_parse(const ns_mem *mem, const ns_headers *resp,
                                  ns_cache_nvs *out);
void ns_cache_nvs_free(const ns_mem *mem, ns_cache_nvs *nvs);
/* The canonical form of a query (without "?") under nvs, appended to out:
 * the parameters that matter, decoded as application/x-www-form-urlencoded,
 * sorted by name if key_order (stable, byte order), re-encoded. */
netstash_error ns_cache_nvs_canonical_query(const ns_mem *mem, const ns_cache_nvs *nvs,
                                            const char *query, size_t len, ns_buf *out);
/* Whether two absolute URLs are equivalent modulo nvs: equal up to the query,
 * and equal canonical queries. *equal gets the answer. */
netstash_error ns_cache_nvs_equivalent(const ns_mem *mem, const ns_cache_nvs *nvs,
                                       const char *url_a, const char *url_b, int *equal);

#endif /* NS_CACHE_CACHE_H */
