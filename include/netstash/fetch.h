/*
 * netstash — the fetch engine: asynchronous HTTP/1.1 and HTTP/2 requests over
 * TLS (HTTP/3 in a later release), async DNS, content decoding.
 *
 * Life of a fetch:
 *   netstash_request_new() + setters  →  netstash_fetch_start()
 *   → on_response (status and headers known) → on_data* → on_complete
 * Exactly one on_complete per started fetch (success, failure or cancel); a
 * start call that returns an error invokes no callback. Callbacks run on the
 * context's loop thread. The caller owns one reference to the fetch handle
 * and drops it with netstash_fetch_del() at any time (also from a callback);
 * a deleted fetch still running is canceled, silently.
 */
#ifndef NETSTASH_FETCH_H
#define NETSTASH_FETCH_H

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------
 * Request (library-owned, built with setters)
 * ------------------------------------------------------------------------ */
typedef struct netstash_request netstash_request;

typedef enum netstash_http_version {
  NETSTASH_HTTP_ANY = 0, /* h2 via ALPN when the server offers it, else 1.1 */
  NETSTASH_HTTP_1_1 = 1,
  NETSTASH_HTTP_2 = 2,   /* h2 via ALPN over TLS; prior knowledge over http */
  NETSTASH_HTTP_3 = 3    /* h3 only (https): no Alt-Svc needed, no fallback to TCP */
} netstash_http_version;

typedef enum netstash_priority {
  NETSTASH_PRIORITY_IDLE = 0,
  NETSTASH_PRIORITY_LOWEST = 1,
  NETSTASH_PRIORITY_LOW = 2,
  NETSTASH_PRIORITY_MEDIUM = 3, /* default */
  NETSTASH_PRIORITY_HIGHEST = 4
} netstash_priority;

/* Streamed request body: fill up to cap bytes of buf, set *len; set *eof when
 * this was the last part. Runs on the loop thread; must not block. Return
 * non-OK to abort the fetch (it completes with NETSTASH_E_CALLBACK). */
typedef netstash_error (*netstash_body_read_cb)(uint8_t *buf, size_t cap,
                                                size_t *len, int *eof,
                                                void *user_data);

/* url: absolute http:// or https:// URL (checked with libcurl's URL parser).
 * Errors: NETSTASH_E_BAD_URL, NETSTASH_E_NOMEM. */
NETSTASH_EXTERN netstash_error netstash_request_new(netstash_request **out,
                                                    const char *url);
/* Drops the caller's reference; a started fetch keeps its own. */
NETSTASH_EXTERN void netstash_request_del(netstash_request *req);

/* All setters copy their arguments and fail with NETSTASH_E_ILLEGAL_STATE
 * once the request has been started. */
NETSTASH_EXTERN netstash_error netstash_request_set_method(netstash_request *req,
                                                           const char *method);
/* Adds a header line. Without an "Accept-Encoding" header the request
 * advertises "br, gzip, zstd" ("identity" with a Range header, as Chromium:
 * a range of coded bytes cannot be decoded alone); one set here is sent as
 * given. Bodies in a coding
 * the library knows (br, gzip, deflate, zstd) are decoded unless raw is set;
 * unknown codings are passed through as sent. */
NETSTASH_EXTERN netstash_error netstash_request_add_header(netstash_request *req,
                                                           const char *name,
                                                           const char *value);
/* Buffered body (copied). */
NETSTASH_EXTERN netstash_error netstash_request_set_body(netstash_request *req,
                                                         const uint8_t *data,
                                                         size_t len);
/* Streamed body; total_len is the exact length, or UINT64_MAX if unknown
 * (chunked on HTTP/1.1). */
NETSTASH_EXTERN netstash_error netstash_request_set_body_reader(
    netstash_request *req, netstash_body_read_cb cb, uint64_t total_len,
    void *user_data);
NETSTASH_EXTERN netstash_error netstash_request_set_priority(netstash_request *req,
                                                             netstash_priority p);
NETSTASH_EXTERN netstash_error netstash_request_set_http_version(
    netstash_request *req, netstash_http_version v);
/* Whole-transfer timeout (0: none, the default) and connect timeout (0: the
 * context default). */
NETSTASH_EXTERN netstash_error netstash_request_set_timeout_ms(netstash_request *req,
                                                               uint32_t ms);
NETSTASH_EXTERN netstash_error netstash_request_set_connect_timeout_ms(
    netstash_request *req, uint32_t ms);
/* Fail with NETSTASH_E_TIMEOUT when fewer than 1 byte arrives in ms (0: off). */
NETSTASH_EXTERN netstash_error netstash_request_set_idle_timeout_ms(
    netstash_request *req, uint32_t ms);
/* raw != 0: deliver the body as sent (no content decoding). The request still
 * advertises "br, gzip, zstd" unless it set its own Accept-Encoding; read the
 * coding from the Content-Encoding response header. */
NETSTASH_EXTERN netstash_error netstash_request_set_raw_body(netstash_request *req,
                                                             int raw);
/* Cap on delivered body bytes for this request (default: the context's
 * max_decoded_body). Exceeding it fails with NETSTASH_E_TOO_LARGE. */
NETSTASH_EXTERN netstash_error netstash_request_set_max_body(netstash_request *req,
                                                             uint64_t bytes);
/* Follow up to max redirects (default 0: a 3xx is the answer). */
NETSTASH_EXTERN netstash_error netstash_request_set_follow_redirects(
    netstash_request *req, uint32_t max);
/* Pin a host to addresses, "HOST:PORT:ADDR[,ADDR...]", like curl --resolve;
 * the resolver is not consulted for that host and port. */
NETSTASH_EXTERN netstash_error netstash_request_add_resolve(netstash_request *req,
                                                            const char *entry);
/* How the request may use the profile's HTTP cache (a context without a
 * profile directory has no cache: every mode then goes to the network, except
 * ONLY_IF_CACHED, which fails with NETSTASH_E_NOT_CACHED). */
typedef enum netstash_cache_mode {
  NETSTASH_CACHE_DEFAULT = 0,        /* RFC 9111: fresh → cache, stale → revalidate */
  NETSTASH_CACHE_VALIDATE = 1,       /* always revalidate a stored response */
  NETSTASH_CACHE_BYPASS = 2,         /* network only; store nothing (--no-cache) */
  NETSTASH_CACHE_ONLY_IF_CACHED = 3, /* never the network (offline) */
  NETSTASH_CACHE_SKIP_VALIDATION = 4 /* serve any stored response, even stale */
} netstash_cache_mode;

NETSTASH_EXTERN netstash_error netstash_request_set_cache_mode(netstash_request *req,
                                                               netstash_cache_mode mode);
/* Top-level site of the page that makes the request (a URL; its scheme and
 * registrable domain are used). Partitions the HTTP cache (double-keyed, as
 * Chromium does); without it the request's own site is used. */
NETSTASH_EXTERN netstash_error netstash_request_set_top_level_site(netstash_request *req,
                                                                   const char *url);

/* Cookies (RFC 6265bis): a fetch sends the Cookie header built from a jar of
 * its context and stores the Set-Cookie lines of every response it gets
 * (redirect hops included) in that jar. A request that sets its own Cookie
 * header gets no jar cookies added. */
/* The jar by name (default "default"; created on first use; persistent in the
 * profile store when the context has a profile). */
NETSTASH_EXTERN netstash_error netstash_request_set_cookie_jar(netstash_request *req,
                                                               const char *name);
/* enable 0: neither send nor store cookies (Fetch's credentials "omit"). */
NETSTASH_EXTERN netstash_error netstash_request_set_cookies(netstash_request *req, int enable);
/* Fetch's "site for cookies" (a URL; NULL: the null site, every request
 * cross-site) and whether the request is a top-level navigation. Unset: the
 * request is a browser-initiated top-level navigation (its own site). */
NETSTASH_EXTERN netstash_error netstash_request_set_site_for_cookies(netstash_request *req,
                                                                     const char *url,
                                                                     int top_level_navigation);
/* The origin that initiated the request (NULL: the browser itself). */
NETSTASH_EXTERN netstash_error netstash_request_set_initiator(netstash_request *req,
                                                              const char *origin);

/* Keep the body in memory (up to max bytes) for netstash_fetch_body(). */
NETSTASH_EXTERN netstash_error netstash_request_set_collect_body(
    netstash_request *req, uint64_t max_bytes);

/* ------------------------------------------------------------------------
 * Fetch
 * ------------------------------------------------------------------------ */
typedef struct netstash_fetch netstash_fetch;

/* Caller-filled callback table (versioned; any member may be NULL). */
typedef struct netstash_fetch_callbacks {
  /* Status and headers are known (after redirects that were followed). */
  void (*on_response)(netstash_fetch *fetch, void *user_data);
  /* A chunk of the (decoded unless raw) body; data valid until return. */
  void (*on_data)(netstash_fetch *fetch, const uint8_t *data, size_t len,
                  void *user_data);
  /* Terminal: err is NETSTASH_OK on a complete response of any status. */
  void (*on_complete)(netstash_fetch *fetch, netstash_error err,
                      void *user_data);
} netstash_fetch_callbacks;

#define NETSTASH_FETCH_CALLBACKS_V1 1
#define NETSTASH_FETCH_CALLBACKS_VERSION NETSTASH_FETCH_CALLBACKS_V1

/* Starts req on ctx. The fetch takes its own reference to req (which becomes
 * read-only). callbacks is copied; may be NULL (use netstash_fetch_wait).
 * *out receives the caller's reference to the fetch, before any callback can
 * run (they may run on the loop thread before this call returns). */
NETSTASH_EXTERN netstash_error netstash_fetch_start_versioned(
    netstash_ctx *ctx, netstash_request *req, int callbacks_version,
    const netstash_fetch_callbacks *callbacks, void *user_data,
    netstash_fetch **out);
#define netstash_fetch_start(ctx, req, cbs, ud, out)                           \
  netstash_fetch_start_versioned((ctx), (req),                                 \
                                 NETSTASH_FETCH_CALLBACKS_VERSION, (cbs),      \
                                 (ud), (out))

/* Cancels a running fetch: on_complete(NETSTASH_E_CANCELED) follows unless
 * the fetch already ended. Any thread; idempotent. */
NETSTASH_EXTERN netstash_error netstash_fetch_cancel(netstash_fetch *fetch);
/* Drops the caller's reference (cancels silently if still running). */
NETSTASH_EXTERN void netstash_fetch_del(netstash_fetch *fetch);

/* Blocks the calling thread until the fetch has ended and its on_complete has
 * returned, or timeout_ms passed (0: forever). Returns the fetch's result, or
 * NETSTASH_E_WAIT_TIMEOUT, or NETSTASH_E_WOULD_DEADLOCK on the loop thread. */
NETSTASH_EXTERN netstash_error netstash_fetch_wait(netstash_fetch *fetch,
                                                   uint32_t timeout_ms);

/* Blocking convenience for tools and tests: start, wait, return the result.
 * *out receives the fetch (to inspect, then netstash_fetch_del). */
NETSTASH_EXTERN netstash_error netstash_fetch_sync(netstash_ctx *ctx,
                                                   netstash_request *req,
                                                   netstash_fetch **out);

/* --- Inspecting a fetch -----------------------------------------------------
 * Valid from on_response on (in callbacks, on the loop thread) or from any
 * thread once netstash_fetch_wait() returned its result. Strings are owned by
 * the fetch and valid until netstash_fetch_del(). */

typedef enum netstash_source {
  NETSTASH_SOURCE_NONE = 0,
  NETSTASH_SOURCE_NETWORK = 1,
  NETSTASH_SOURCE_CACHE = 2,
  NETSTASH_SOURCE_REVALIDATED = 3,
  NETSTASH_SOURCE_PRELOAD = 4
} netstash_source;

/* HTTP status, 0 before a response. */
NETSTASH_EXTERN int netstash_fetch_status(const netstash_fetch *fetch);
NETSTASH_EXTERN size_t netstash_fetch_header_count(const netstash_fetch *fetch);
/* i-th response header (names lower-cased, in arrival order). */
NETSTASH_EXTERN netstash_error netstash_fetch_header_at(const netstash_fetch *fetch,
                                                        size_t i, const char **name,
                                                        const char **value);
/* First header with that name (case-insensitive), NULL if none. */
NETSTASH_EXTERN const char *netstash_fetch_header(const netstash_fetch *fetch,
                                                  const char *name);
NETSTASH_EXTERN netstash_http_version netstash_fetch_protocol(const netstash_fetch *fetch);
/* "http/1.1", "h2", "h3" or "" before a response. */
NETSTASH_EXTERN const char *netstash_fetch_protocol_name(const netstash_fetch *fetch);
/* "TLSv1.3" and the cipher ("TLS_AES_256_GCM_SHA384"); "" without TLS. */
NETSTASH_EXTERN const char *netstash_fetch_tls_version(const netstash_fetch *fetch);
NETSTASH_EXTERN const char *netstash_fetch_tls_cipher(const netstash_fetch *fetch);
NETSTASH_EXTERN const char *netstash_fetch_effective_url(const netstash_fetch *fetch);
NETSTASH_EXTERN netstash_source netstash_fetch_source(const netstash_fetch *fetch);
/* The HTTP cache's decision for this fetch ("fresh: max-age=600, age 12s",
 * "miss", "stored", "not stored: no-store", ...); "" when no cache. */
NETSTASH_EXTERN const char *netstash_fetch_cache_reason(const netstash_fetch *fetch);
/* One-line reason of a failure (which check failed, which host...), "" if
 * none. */
NETSTASH_EXTERN const char *netstash_fetch_error_detail(const netstash_fetch *fetch);
/* Result of an ended fetch; NETSTASH_E_ILLEGAL_STATE while running. */
NETSTASH_EXTERN netstash_error netstash_fetch_result(const netstash_fetch *fetch);

typedef enum netstash_timing {
  NETSTASH_TIMING_DNS = 0,     /* name resolution (0 when cached or pinned) */
  NETSTASH_TIMING_CONNECT = 1, /* TCP connect (0 on a reused connection) */
  NETSTASH_TIMING_TLS = 2,     /* TLS handshake (0 on a reused connection) */
  NETSTASH_TIMING_TTFB = 3,    /* start to first response byte */
  NETSTASH_TIMING_TOTAL = 4,   /* start to completion */
  NETSTASH_TIMING_QUEUED = 5   /* start to the request leaving the queue */
} netstash_timing;
/* Duration in microseconds. */
NETSTASH_EXTERN uint64_t netstash_fetch_timing_us(const netstash_fetch *fetch,
                                                  netstash_timing which);
/* Body bytes delivered (decoded unless raw) and received off the wire. */
NETSTASH_EXTERN uint64_t netstash_fetch_body_bytes(const netstash_fetch *fetch);
NETSTASH_EXTERN uint64_t netstash_fetch_wire_bytes(const netstash_fetch *fetch);
/* New connections this fetch opened (0 when it reused one). */
NETSTASH_EXTERN uint32_t netstash_fetch_new_connections(const netstash_fetch *fetch);
/* Body kept by netstash_request_set_collect_body; valid until fetch_del. */
NETSTASH_EXTERN netstash_error netstash_fetch_body(const netstash_fetch *fetch,
                                                   const uint8_t **data, size_t *len);

/* ------------------------------------------------------------------------
 * DNS
 * ------------------------------------------------------------------------ */
/* Completion of a prefetch: err is OK when every host resolved, else the
 * error of the first failure; resolved counts the hosts that did. */
typedef void (*netstash_dns_prefetch_cb)(netstash_error err, size_t resolved,
                                         void *user_data);
/* Resolves hosts ahead of time into the context's DNS cache. hosts are
 * copied. cb may be NULL. */
NETSTASH_EXTERN netstash_error netstash_dns_prefetch(netstash_ctx *ctx,
                                                     const char *const *hosts,
                                                     size_t n,
                                                     netstash_dns_prefetch_cb cb,
                                                     void *user_data);

#ifdef __cplusplus
}
#endif
#endif /* NETSTASH_FETCH_H */
