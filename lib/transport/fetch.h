/*
 * fetch.h — internal layout of requests and fetches. Internal.
 */
#ifndef NS_TRANSPORT_FETCH_H
#define NS_TRANSPORT_FETCH_H

#include "ns_setup.h"

#include <stdatomic.h>
#include <uv.h>

#include "core/buf.h"
#include "core/ctx.h"
#include "core/list.h"
#include "core/url.h"
#include "cache/httpcache.h"

struct ns_decoder;
struct ns_dns_query;

/* Requests use the process allocator: they exist before any context does. */
struct netstash_request {
  atomic_int refs;
  atomic_int frozen; /* set when a fetch started with it */
  ns_url url;
  char *method;
  char **headers; /* "Name: value" */
  size_t nheaders, headers_cap;
  int has_accept_encoding;
  int has_range; /* a Range field: the default Accept-Encoding is identity */
  uint8_t *body;
  size_t body_len;
  int has_body;
  netstash_body_read_cb body_cb;
  void *body_ud;
  uint64_t body_total;
  netstash_priority priority;
  netstash_http_version http_version;
  uint32_t timeout_ms, connect_timeout_ms, idle_timeout_ms;
  int raw;
  uint64_t max_body; /* 0: context default */
  uint32_t follow;
  char **resolve;
  size_t nresolve, resolve_cap;
  uint64_t collect_max;
  int collect;
  netstash_cache_mode cache_mode;
  ns_url top_level_site; /* url == NULL when unset */
  /* cookies */
  char *jar;             /* NULL: "default" */
  int no_cookies;
  int sfc_set;           /* site_for_cookies given (url NULL: the null site) */
  ns_url site_for_cookies;
  int top_level_navigation;
  ns_url initiator;      /* url == NULL: browser-initiated */
  int has_cookie_header;
  /* browser-level attributes (include/netstash/interceptor.h) */
  int destination;
  int mode;
  int credentials;
  int from_worker;
  uint32_t load_flags;
  int redirect_mode_set;
  int priority_set;
  int no_preload; /* never answered from the preload store */
  uint64_t pull_buffer;
};

void ns_request_ref(netstash_request *req);
/* Drops a request's fields and top-level site, so that one request can be
 * filled again for the same URL (netd's HTTP-cache lookups); not for a
 * request a fetch holds. */
void ns_request_clear_fields(netstash_request *req);
/* A new request with src's URL, method, headers, pins and top-level site
 * (no body): for background revalidation. */
netstash_error ns_request_clone(const netstash_request *src, netstash_request **out);
/* The request's fields as the HTTP cache matches them (Vary): its header
 * lines ("Name;", an empty value, carries nothing) and the Accept-Encoding
 * the transport sends when the request sets none. Appended to out. */
netstash_error ns_request_cache_fields(const netstash_request *req, ns_headers *out);
/* The Accept-Encoding a request without one of its own sends: "br, gzip,
 * zstd", or "identity" for a range request (as Chromium). */
const char *ns_request_accept_encoding(const netstash_request *req);

typedef enum ns_fetch_state {
  NS_FETCH_NEW = 0,
  NS_FETCH_DNS,
  NS_FETCH_ACTIVE,
  NS_FETCH_DONE
} ns_fetch_state;

/* Internal extras of a fetch (the interceptor's jobs). Loop thread. */
typedef struct ns_fetch_hooks {
  /* a redirect is being followed: status, absolute target */
  void (*on_redirect)(netstash_fetch *f, int status, const char *location, void *ud);
  void *ud;
} ns_fetch_hooks;

typedef struct ns_header {
  uint32_t name_off, value_off; /* into fetch->hdr_arena */
} ns_header;

struct netstash_fetch {
  ns_mem mem; /* copy: the fetch may outlive its context */
  netstash_ctx *ctx;
  netstash_request *req;
  atomic_int refs;
  netstash_fetch_callbacks cbs;
  void *ud;
  ns_fetch_hooks hooks;

  ns_task start_task, cancel_task;
  atomic_int cancel_requested;
  atomic_int orphaned; /* caller deleted it: no more callbacks */

  uv_mutex_t lock; /* guards done/result for netstash_fetch_wait */
  uv_cond_t cond;
  int done;
  netstash_error result;

  /* ---- loop thread only ---- */
  ns_fetch_state state;
  ns_list node; /* transport's list of running fetches */
  void *easy;   /* CURL * */
  void *h3s;    /* the HTTP/3 stream of this hop (h3.c), NULL over TCP */
  void *rs;     /* remote mode: the stream to netd (remote.c) */
  int h3_tried; /* this hop fell back from h3 to TCP */
  int h3_plan;  /* 0 TCP, 1 h3 by Alt-Svc (may fall back), 2 h3 forced */
  int h3_port;  /* UDP port of the h3 alternative */
  char *h3_host; /* the h3 alternative's host when Alt-Svc names another one */
  netstash_error remote_err; /* remote mode: netd's x-netstash-error */
  struct curl_slist *hdr_list, *resolve_list;
  struct ns_dns_query *dnsq;
  ns_url cur;   /* URL of the current hop */
  uint32_t redirects_left;
  int redirecting; /* this hop's answer is a redirect we follow */
  char *method_override; /* after 303 etc. */
  int drop_body;
  netstash_error fail; /* error found in a callback (decode, limits) */
  int sock_nomem; /* no memory to watch its socket: ended NOMEM after the call */

  /* response */
  int status;
  int head_delivered;
  int saw_final_head;
  ns_buf hdr_arena;
  ns_header *hdrs;
  size_t nhdrs, hdrs_cap;
  netstash_http_version proto;
  char tls_version[16];
  char tls_cipher[64];
  struct ns_decoder *dec;
  ns_buf body;
  uint64_t body_bytes, wire_bytes, max_body;
  uint32_t new_conns;

  /* timings, µs */
  uint64_t t_start, t_added, dns_us;
  uint64_t timing[6];

  /* HTTP cache (ctx->hc) */
  netstash_source source;
  int hc_used;       /* the cache was consulted */
  int hc_validating; /* conditional request for hce */
  int hc_got_304;
  int hc_head_200;   /* a HEAD's 200 for the stored representation: freshen, serve it */
  int hc_sie;        /* serve hce: stale-if-error */
  int hc_store;      /* keep the wire body to store it */
  int hc_invalidate; /* unsafe method: invalidate on success */
  /* completing a stored piece (RFC 9111 §3.3, transport.c start_completion):
   * its range request is out (completing), its answer was not the rest, so
   * the hop goes again without it (retry_whole, then no_complete); the
   * piece's bytes, hc_piece_len of hc_total, go first (prefix) */
  uint8_t hc_completing, hc_retry_whole, hc_no_complete, hc_prefix;
  uint64_t hc_piece_len, hc_total;
  int detached;      /* background revalidation: no caller */
  int hop_get;       /* a redirect turned the method into GET */
  /* group commit: the response's cache entry is queued; the fetch completes
   * once it is committed (transport.c hc_settle) */
  int hc_await;
  netstash_error hc_commit; /* NETSTASH_E_AGAIN until committed */
  /* the hop's URL has an entry queued or being committed: its lookup waits
   * for that commit (transport.c cache_consult, hc_settle) */
  int hop_wait;
  ns_list await_node; /* in the transport's awaiting or hop_waiting list */
  int retried_fresh; /* resent once on a new connection (transport.c retry_fresh) */
  ns_hc_entry hce;
  ns_headers hc_req;
  ns_buf hc_body;
  int64_t req_time_ms, resp_time_ms;
  char cache_reason[192];

  char detail[256];
  char errbuf[256]; /* CURL_ERROR_SIZE */
};

/* netstash_fetch_start_versioned with internal hooks (may be NULL). */
netstash_error ns_fetch_start_ex(netstash_ctx *ctx, netstash_request *req, int version,
                                 const netstash_fetch_callbacks *cbs, void *ud,
                                 const ns_fetch_hooks *hooks, netstash_fetch **out);

/* Starts a fetch nobody holds (background revalidation): refs = loop only. */
netstash_error ns_fetch_start_detached(netstash_ctx *ctx, netstash_request *req);

void ns_fetch_ref(netstash_fetch *f);
/* Sets the one-line failure detail (truncated to fit). */
void ns_fetch_detail(netstash_fetch *f, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void ns_fetch_unref(netstash_fetch *f);

/* Loop thread: transport entry points (transport.c). */
void ns_transport_start(netstash_fetch *f);
void ns_transport_cancel(netstash_fetch *f);

/* Loop thread: ends the fetch: records the result, runs on_complete (unless
 * orphaned), wakes waiters and drops the loop's reference. */
void ns_fetch_finish(netstash_fetch *f, netstash_error err);

#endif
