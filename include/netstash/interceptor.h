/*
 * netstash — the resource-interceptor ABI: what a browser kernel's URL
 * loader calls for every request.
 *
 * A request is described with a netstash_request (fetch.h) plus the
 * browser-level setters below (destination, mode, credentials, load flags,
 * redirect mode, worker flag). netstash_job_start() answers it along the
 * route of doc/DESIGN.md — preload store, then the HTTP cache, then the
 * network — and reports which, and why (netstash_fetch_source /
 * netstash_fetch_cache_reason on netstash_job_fetch(job)).
 *
 *   fast path   netstash_intercept_lookup(): "is this URL preloaded, or fresh
 *               in the HTTP cache? head and body now" — synchronous, no
 *               thread hop (netstash_intercept_preloaded and
 *               netstash_intercept_cached are its two halves).
 *   job         netstash_job_start(): asynchronous, always: it returns at once
 *               (the kernel is never blocked on the network, unlike a
 *               synchronous shouldInterceptRequest) and the answer follows
 *               through the callbacks on the loop thread — an explicit
 *               deferral. Use the fast path first when a synchronous answer
 *               is worth having.
 *
 * Bodies reach the caller either pushed (on_data: the pointer is valid during
 * the call; for preloaded and stored identity bodies it points into the
 * store's memory map — zero copy) or pulled (no on_data: on_readable says
 * when netstash_job_read() has something; the library buffers up to
 * netstash_request_set_pull_buffer() bytes and stops reading the network
 * beyond it). Request bodies are streamed with
 * netstash_request_set_body_reader (fetch.h); POST and other methods are
 * intercepted like GET (the HTTP cache invalidates on unsafe methods).
 * Ranges: a Range request answered from a complete preloaded or stored body
 * gets a synthesised 206 (or 416). A 206 from the network is kept as a piece
 * that answers later ranges within it; pieces that meet are joined, and a
 * request for the whole of a stored prefix fetches only the rest (the answer
 * is the whole 200, as if it came at once).
 *
 * Cancel a job at any time from any thread (netstash_job_cancel); the
 * terminal callback then reports NETSTASH_E_CANCELED unless the job had
 * already ended. Delete it with netstash_job_del at any time, also from its
 * own callbacks.
 *
 * Thread rule: any thread; callbacks run on the context's loop thread.
 */
#ifndef NETSTASH_INTERCEPTOR_H
#define NETSTASH_INTERCEPTOR_H

#include "common.h"
#include "fetch.h"
#include "preload.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------
 * Browser-level request attributes (netstash_request setters)
 * ------------------------------------------------------------------------ */

/* Fetch's request destination. Sets the default Accept header and priority
 * (as Chromium does) unless the caller set them. */
typedef enum netstash_destination {
  NETSTASH_DEST_EMPTY = 0, /* fetch() / XHR */
  NETSTASH_DEST_DOCUMENT = 1,
  NETSTASH_DEST_IFRAME = 2,
  NETSTASH_DEST_SCRIPT = 3,
  NETSTASH_DEST_STYLE = 4,
  NETSTASH_DEST_IMAGE = 5,
  NETSTASH_DEST_FONT = 6,
  NETSTASH_DEST_MEDIA = 7, /* audio, video, track */
  NETSTASH_DEST_WORKER = 8, /* worker, sharedworker, serviceworker scripts */
  NETSTASH_DEST_MANIFEST = 9,
  NETSTASH_DEST_OTHER = 10
} netstash_destination;
NETSTASH_EXTERN netstash_error netstash_request_set_destination(netstash_request *req,
                                                                netstash_destination d);

/* Fetch's request mode. NAVIGATE makes the request a top-level navigation
 * for cookies (its own site) unless a site for cookies was set. */
typedef enum netstash_request_mode {
  NETSTASH_MODE_NO_CORS = 0,
  NETSTASH_MODE_CORS = 1,
  NETSTASH_MODE_SAME_ORIGIN = 2,
  NETSTASH_MODE_NAVIGATE = 3
} netstash_request_mode;
NETSTASH_EXTERN netstash_error netstash_request_set_mode(netstash_request *req,
                                                         netstash_request_mode mode);
/* SAME_ORIGIN mode: a URL of another origin than the initiator fails with
 * NETSTASH_E_INVALID_ARGUMENT before any I/O. */

/* Fetch's credentials mode: OMIT sends and stores no cookies; SAME_ORIGIN
 * does only when the URL's origin is the initiator's (or there is no
 * initiator); INCLUDE (default) always. */
typedef enum netstash_credentials {
  NETSTASH_CREDENTIALS_INCLUDE = 0,
  NETSTASH_CREDENTIALS_SAME_ORIGIN = 1,
  NETSTASH_CREDENTIALS_OMIT = 2
} netstash_credentials;
NETSTASH_EXTERN netstash_error netstash_request_set_credentials(netstash_request *req,
                                                                netstash_credentials c);

/* The request comes from a worker or service worker (reported back; such
 * requests are never answered from the preload store for a navigation
 * destination, which a service worker must see from the network or cache). */
NETSTASH_EXTERN netstash_error netstash_request_set_from_worker(netstash_request *req,
                                                                int from_worker);

/* Chromium-style load flags (a bit set). They map onto the cache modes of
 * fetch.h; the strongest wins: DISABLE_CACHE > ONLY_FROM_CACHE > BYPASS_CACHE
 * > VALIDATE > SKIP_VALIDATION. */
#define NETSTASH_LOAD_NORMAL 0u
#define NETSTASH_LOAD_VALIDATE_CACHE (1u << 0)   /* revalidate stored responses */
#define NETSTASH_LOAD_BYPASS_CACHE (1u << 1)     /* network only, store nothing */
#define NETSTASH_LOAD_SKIP_VALIDATION (1u << 2)  /* stale stored responses are fine */
#define NETSTASH_LOAD_ONLY_FROM_CACHE (1u << 3)  /* offline: preload or cache, never network */
#define NETSTASH_LOAD_DISABLE_CACHE (1u << 4)    /* neither preload nor HTTP cache, nothing stored */
NETSTASH_EXTERN netstash_error netstash_request_set_load_flags(netstash_request *req,
                                                               uint32_t flags);

/* Redirects: FOLLOW (default, up to 20) or MANUAL — the 3xx is the answer
 * (the kernel decides, as Chromium's navigation code does; the target is in
 * the Location header and netstash_job_redirect_url()). */
typedef enum netstash_redirect_mode {
  NETSTASH_REDIRECT_FOLLOW = 0,
  NETSTASH_REDIRECT_MANUAL = 1
} netstash_redirect_mode;
NETSTASH_EXTERN netstash_error netstash_request_set_redirect_mode(netstash_request *req,
                                                                  netstash_redirect_mode m);

/* Pull mode's buffer bound, bytes (default 1 MiB, at least 16 KiB). */
NETSTASH_EXTERN netstash_error netstash_request_set_pull_buffer(netstash_request *req,
                                                                uint64_t bytes);

/* ------------------------------------------------------------------------
 * Fast path
 * ------------------------------------------------------------------------ */

/* Synchronous preload check for a GET request (no Range, no conditional
 * fields — a job answers 304 when they match —, no
 * ONLY_FROM_CACHE-incompatible flags): fills hit (preload.h) and returns
 * NETSTASH_OK, or NETSTASH_E_NOT_FOUND — then start a job. Does not touch
 * the loop thread; allocation-free. On a remote-mode context: one round
 * trip to netd on the hit's own connection (see netstash_preload_hit_new);
 * any result other than NETSTASH_OK also means "start a job". */
NETSTASH_EXTERN netstash_error netstash_intercept_preloaded(const netstash_request *req,
                                                            netstash_preload_hit *hit);

/* The same for the HTTP cache: a GET request (no Range, no conditional
 * fields, the default cache mode and no load flags) answered synchronously
 * by a stored response that is fresh for it — RFC 9111 with the request's
 * fields (Vary, Cache-Control) and its top-level site (the partition) — with
 * its current Age: NETSTASH_OK, hit filled (netstash_preload_hit_source() is
 * NETSTASH_SOURCE_CACHE; no manifest id). A body the store keeps encoded
 * (gzip or br as received) is decoded into the hit's buffer, up to 16 MiB,
 * and its Content-Encoding and Content-Length fields left out, as a job
 * serves it — unless the request asks for raw bodies
 * (netstash_request_set_raw_body): then such a body is left to a job, which
 * relays it in its coding. NETSTASH_E_NOT_FOUND for everything a job must
 * do: absent, stale or to be revalidated, a stored redirect, a larger
 * encoded body, a head of more than 63 fields, a response stored moments
 * ago and not yet committed. Never touches the
 * network or the loop thread; unlike the preload check it allocates (the
 * request's fields, and the stored head decoded to decide: the hit keeps
 * the last 16 it decoded, one per slot of a hash of the URL, and one found
 * again while the store has not changed is not decoded again). On a
 * remote-mode context: one round trip to netd on the hit's connection, the
 * request's fields and top-level site sent along (lookup_http.h's cache
 * lookups). Call it after
 * netstash_intercept_preloaded (the job's order: preload, then the HTTP
 * cache). */
NETSTASH_EXTERN netstash_error netstash_intercept_cached(const netstash_request *req,
                                                         netstash_preload_hit *hit);

/* Both in one call, in the job's order: netstash_intercept_preloaded, then,
 * when that has no answer, netstash_intercept_cached — each where the
 * request qualifies for it (a request with NETSTASH_CACHE_BYPASS or load
 * flags is asked of one of them only). NETSTASH_OK: hit filled, and
 * netstash_preload_hit_source() says from where; otherwise what the last
 * check asked said (NETSTASH_E_NOT_FOUND: start a job). On a remote-mode
 * context: one round trip to netd where the two calls take two (netd tries
 * its preload store, then its HTTP cache). */
NETSTASH_EXTERN netstash_error netstash_intercept_lookup(const netstash_request *req,
                                                         netstash_preload_hit *hit);

/* ------------------------------------------------------------------------
 * Jobs
 * ------------------------------------------------------------------------ */

typedef struct netstash_job netstash_job;

typedef struct netstash_job_callbacks {
  /* A redirect is being followed (FOLLOW mode): status and target. */
  void (*on_redirect)(netstash_job *job, int status, const char *location, void *user_data);
  /* Status and headers are known: read them through netstash_job_fetch(). */
  void (*on_response)(netstash_job *job, void *user_data);
  /* Push mode: a chunk of the body, valid during the call. NULL: pull mode. */
  void (*on_data)(netstash_job *job, const uint8_t *data, size_t len, void *user_data);
  /* Pull mode: netstash_job_read() has data, or the end. */
  void (*on_readable)(netstash_job *job, void *user_data);
  /* Terminal: NETSTASH_OK for a complete response of any status. In pull
   * mode data may remain to be read after it. */
  void (*on_complete)(netstash_job *job, netstash_error err, void *user_data);
} netstash_job_callbacks;

#define NETSTASH_JOB_CALLBACKS_V1 1
#define NETSTASH_JOB_CALLBACKS_VERSION NETSTASH_JOB_CALLBACKS_V1

/* Starts a job for req (the job takes its own reference; req becomes
 * read-only). callbacks is copied; may be NULL (pull with netstash_job_wait
 * and netstash_job_read). */
NETSTASH_EXTERN netstash_error netstash_job_start_versioned(netstash_ctx *ctx,
                                                         netstash_request *req,
                                                         int callbacks_version,
                                                         const netstash_job_callbacks *callbacks,
                                                         void *user_data, netstash_job **out);
#define netstash_job_start(ctx, req, cbs, ud, out)                                              \
  netstash_job_start_versioned((ctx), (req), NETSTASH_JOB_CALLBACKS_VERSION, (cbs), (ud), (out))

/* Any thread, idempotent. */
NETSTASH_EXTERN netstash_error netstash_job_cancel(netstash_job *job);
/* Drops the caller's reference (cancels if still running). */
NETSTASH_EXTERN void netstash_job_del(netstash_job *job);
/* Waits for the end (0: forever). NETSTASH_E_WOULD_DEADLOCK on the loop
 * thread. */
NETSTASH_EXTERN netstash_error netstash_job_wait(netstash_job *job, uint32_t timeout_ms);

/* Pull mode: copies up to cap body bytes into buf. *n = 0
 * and NETSTASH_OK at the end of the body; NETSTASH_E_AGAIN when nothing is
 * buffered yet (on_readable follows); the job's error if it failed. */
NETSTASH_EXTERN netstash_error netstash_job_read(netstash_job *job, uint8_t *buf, size_t cap,
                                                 size_t *n);

/* Pull mode without a copy: *data and *len show the body bytes buffered next
 * (all that is buffered in one piece). The view stays valid and unchanged
 * until the next netstash_job_consume, netstash_job_peek, netstash_job_read
 * or netstash_job_del on this job — bytes arriving meanwhile are kept apart,
 * so it may be written straight to a socket from any thread. Returns as
 * netstash_job_read: NETSTASH_OK with *len 0 at the end of the body,
 * NETSTASH_E_AGAIN when nothing is buffered yet (on_readable follows), the
 * job's error if it failed. */
NETSTASH_EXTERN netstash_error netstash_job_peek(netstash_job *job, const uint8_t **data,
                                                 size_t *len);
/* Drops the first n bytes of the view netstash_job_peek gave (n <= its *len;
 * 0 is allowed) and ends the view. NETSTASH_E_INVALID_ARGUMENT without a view
 * or for more than it showed. */
NETSTASH_EXTERN netstash_error netstash_job_consume(netstash_job *job, size_t n);

/* The response and its metadata: status, headers, source (preload, cache,
 * revalidated, network), cache reason, timings, bytes — the netstash_fetch_*
 * accessors of fetch.h on this fetch, valid until netstash_job_del (read
 * them from on_response on, or after netstash_job_wait). */
NETSTASH_EXTERN const netstash_fetch *netstash_job_fetch(const netstash_job *job);
NETSTASH_EXTERN netstash_source netstash_job_source(const netstash_job *job);
NETSTASH_EXTERN int netstash_job_status(const netstash_job *job);
/* MANUAL redirects: the absolute target of a 3xx answer, else NULL. */
NETSTASH_EXTERN const char *netstash_job_redirect_url(const netstash_job *job);
NETSTASH_EXTERN netstash_destination netstash_job_destination(const netstash_job *job);
NETSTASH_EXTERN int netstash_job_from_worker(const netstash_job *job);

#ifdef __cplusplus
}
#endif

#endif /* NETSTASH_INTERCEPTOR_H */
