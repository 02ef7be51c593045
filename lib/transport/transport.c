/*
 * transport.c — HTTP/1.1 and HTTP/2 over TLS with libcurl's multi interface,
 * driven by the context's libuv loop through the socket API
 * (CURLMOPT_SOCKETFUNCTION / CURLMOPT_TIMERFUNCTION; see curl's multi-uv.c
 * example for the pattern).
 *
 * Decisions (doc/internals/transport.md has the long form):
 * - Name resolution is ours (c-ares, lib/dns); answers reach libcurl through
 *   CURLOPT_RESOLVE, so libcurl's blocking/threaded resolver never runs.
 * - Redirects are followed here, not by libcurl, so that every hop goes
 *   through our resolver (and later the cookie jar and the cache).
 * - Content codings are decoded here (lib/transport/decode.c), not by
 *   libcurl, to enforce a decoded-size cap and to offer raw bodies.
 * - One easy handle per fetch; connections live in the multi handle's pool
 *   and are reused across fetches (HTTP/2: multiplexed, CURLOPT_PIPEWAIT).
 */
#include "ns_setup.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <sys/socket.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <uv.h>

#include "cache/httpcache.h"
#include "cookie/jar.h"
#include "core/headers.h"
#include "core/log.h"
#include "core/reader.h"
#include "dns/dns.h"
#include "transport/decode.h"
#include "transport/altsvc.h"
#include "transport/fetch.h"
#include "transport/h3.h"
#include "transport/hop.h"
#include "transport/hsts.h"
#include "transport/remote.h"
#include "transport/transport.h"
#include "preload/install.h"
#include "preload/serve.h"
#include "store/store.h"

#define MOD "transport"

struct ns_transport {
  netstash_ctx *ctx;
  CURLM *multi;
  CURLSH *share;
  uv_timer_t timer;
  int timer_ok;
  uv_timer_t kick; /* quiet-socket kicks (see "Kicks" below) */
  int kick_ok;
  uv_idle_t hc_check; /* commits the HTTP cache's queued stores once per loop turn
                         (an idle handle: the loop does not block in poll first) */
  int hc_check_ok;
  ns_task hc_done;  /* the cache's writer committed a batch (ns_transport_hc_notify) */
  uv_timer_t hc_timer; /* a batch held back for the commit gap (ns_httpcache_commit) */
  int hc_timer_ok;
  ns_list awaiting; /* fetches whose cache entry awaits its commit (await_node) */
  ns_list hop_waiting; /* fetches whose hop's lookup awaits a commit (await_node) */

  ns_list fetches; /* fetches in DNS or ACTIVE state */
  ns_list socks;   /* open sock_ctx */
  int shutting_down;
  int sock_nomem; /* a fetch has sock_nomem set: check_done ends it */
  char user_agent[64];
  /* HSTS entries of the profile, fed once to libcurl's shared engine */
  int hsts_loaded;
  ns_hsts_entry *hsts;
  size_t nhsts, hsts_next;
  ns_store_reader *pl_reader; /* preload lookups (loop thread) */
  /* HTTP/3 */
  ns_h3 *h3;
  ns_remote *remote; /* remote mode */
  ns_altsvc_broken *h3_broken;
  struct ns_altsvc_mem *altsvc_mem; /* Alt-Svc known to this context */
};

typedef struct sock_ctx {
  uv_poll_t poll;
  curl_socket_t fd;
  ns_transport *tr;
  ns_list node;
  int reading;             /* libcurl waits for this socket to be readable */
  uint32_t kick_wait_ms;   /* quiet time before the next kick */
  uint64_t quiet_since_ms; /* loop time of the last readable event (or kick) */
} sock_ctx;

static int ssl_ex_index = -1;
static pthread_once_t ssl_once = PTHREAD_ONCE_INIT;

static void ssl_index_init(void) {
  ssl_ex_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

static void check_done(ns_transport *tr);
static void start_hop(netstash_fetch *f);
static void end_fetch(netstash_fetch *f, netstash_error err);
static void serve_cached(netstash_fetch *f, netstash_source source);
static int caller_validators_match(netstash_fetch *f);
static void serve_304(netstash_fetch *f, netstash_source source);
static void serve_stored(netstash_fetch *f, netstash_source source);
static int head_names_stored(netstash_fetch *f);
static void hsts_setup(ns_transport *tr, CURL *e);
static const char *method_of(const netstash_fetch *f);
static int cache_consult(netstash_fetch *f);
static netstash_error setup_easy(netstash_fetch *f);
static void store_cookies(netstash_fetch *f);

/* Remote mode (netstash_options_set_remote): every hop goes to netd. */
static int is_remote(const netstash_fetch *f) { return f->ctx->cfg.remote_socket != NULL; }

static int64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------ sockets */

static void sock_closed(uv_handle_t *h) {
  sock_ctx *sc = h->data;
  ns_free(&sc->tr->ctx->mem, sc);
}

static void sock_close(sock_ctx *sc) {
  ns_list_remove(&sc->node);
  uv_poll_stop(&sc->poll);
  uv_close((uv_handle_t *)&sc->poll, sock_closed);
}

/* ---- Kicks: libcurl 7.88's HTTP/2 receive path can strand a frame.
 * When a stream's buffer is full, nghttp2 is paused (NGHTTP2_ERR_PAUSE) with
 * the rest of the bytes read from the socket left in the connection's input
 * buffer; once that stream has taken its data, the buffer is only processed
 * again when some transfer of the connection reads with nothing of its own
 * buffered — and its "data pending" check compares the wrong way
 * (cf_h2_data_pending: nread_inbuf > inbuflen), so nobody is told. If the
 * server has sent everything, the socket never becomes readable again and a
 * stream whose last DATA frame (with END_STREAM) sits in that buffer waits
 * for good: against nghttpd at 8 concurrent streams, 60 concurrent 20 KB
 * fetches left 1-4 such streams in 10-25 % of runs (fixed upstream by the
 * 8.1 rewrite of http2.c). curl's CLI rarely sees it: its 100 KB receive
 * buffer seldom fills.
 *
 * The cure from outside: a socket libcurl reads from that has been quiet
 * for a while gets a readable event it did not have (CURL_CSELECT_IN): every
 * transfer of the connection then reads, and the first with an empty buffer
 * processes the stranded bytes; otherwise the read finds nothing (EAGAIN)
 * and costs a few microseconds. The first kick comes 10 ms into a quiet
 * spell, the next ones at doubling intervals up to 1 s; a real readable
 * event starts over. Idle pooled connections are not watched by libcurl and
 * get no kicks, so an idle context does not wake up. */
#define KICK_FIRST_MS 10u
#define KICK_MAX_MS 1000u
#define KICK_BATCH 32

static void on_kick(uv_timer_t *t);

/* A quiet spell starts (a readable event, or libcurl starts reading). */
static void quiet_from_now(sock_ctx *sc) {
  sc->quiet_since_ms = uv_now(&sc->tr->ctx->loop);
  sc->kick_wait_ms = KICK_FIRST_MS;
}

static void kick_arm(ns_transport *tr, uint64_t in_ms) {
  if (!tr->kick_ok || tr->shutting_down)
    return;
  if (!uv_is_active((uv_handle_t *)&tr->kick) || uv_timer_get_due_in(&tr->kick) > in_ms)
    uv_timer_start(&tr->kick, on_kick, in_ms, 0);
}

static void on_kick(uv_timer_t *t) {
  ns_transport *tr = t->data;
  uint64_t now = uv_now(&tr->ctx->loop), next = UINT64_MAX;
  curl_socket_t due[KICK_BATCH];
  size_t n = 0;
  ns_list *pos, *tmp;
  int running;
  ns_list_foreach_safe(pos, tmp, &tr->socks) {
    sock_ctx *sc = ns_list_entry(pos, sock_ctx, node);
    uint64_t at;
    if (!sc->reading)
      continue;
    at = sc->quiet_since_ms + sc->kick_wait_ms;
    if (at <= now && n < KICK_BATCH) {
      due[n++] = sc->fd;
      sc->quiet_since_ms = now;
      sc->kick_wait_ms = sc->kick_wait_ms * 2 < KICK_MAX_MS ? sc->kick_wait_ms * 2 : KICK_MAX_MS;
      at = now + sc->kick_wait_ms;
    }
    if (at < next)
      next = at;
  }
  /* the sockets are named by fd: libcurl may close some while others are
   * kicked (an unknown fd is ignored) */
  for (size_t i = 0; i < n && tr->multi; i++) {
    curl_multi_socket_action(tr->multi, due[i], CURL_CSELECT_IN, &running);
  }
  if (n)
    check_done(tr);
  if (next != UINT64_MAX)
    kick_arm(tr, next > now ? next - now : 0);
}

static void on_poll(uv_poll_t *h, int status, int events) {
  sock_ctx *sc = h->data;
  ns_transport *tr = sc->tr;
  int flags = 0, running;
  if (status < 0)
    flags = CURL_CSELECT_ERR;
  if (events & UV_READABLE) {
    flags |= CURL_CSELECT_IN;
    quiet_from_now(sc);
  }
  if (events & UV_WRITABLE)
    flags |= CURL_CSELECT_OUT;
  curl_multi_socket_action(tr->multi, sc->fd, flags, &running);
  check_done(tr);
}

static int sock_cb(CURL *e, curl_socket_t s, int what, void *userp, void *socketp) {
  ns_transport *tr = userp;
  sock_ctx *sc = socketp;
  int events = 0;
  if (what == CURL_POLL_REMOVE) {
    if (sc) {
      curl_multi_assign(tr->multi, s, NULL);
      sock_close(sc);
    }
    return 0;
  }
  if (!sc) {
    /* Returning -1 would make libcurl abort every transfer of the multi
     * without a completion message (they would hang): the transfer that
     * needs the socket is ended alone, by check_done after this call. */
    sc = ns_calloc(&tr->ctx->mem, 1, sizeof(*sc));
    if (!sc || uv_poll_init_socket(&tr->ctx->loop, &sc->poll, s) != 0) {
      netstash_fetch *f = NULL;
      ns_free(&tr->ctx->mem, sc);
      curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&f);
      if (f) {
        f->sock_nomem = 1;
        tr->sock_nomem = 1;
      }
      return 0;
    }
    sc->fd = s;
    sc->tr = tr;
    sc->poll.data = sc;
    ns_list_insert_tail(&tr->socks, &sc->node);
    curl_multi_assign(tr->multi, s, sc);
  }
  if (what & CURL_POLL_IN)
    events |= UV_READABLE;
  if (what & CURL_POLL_OUT)
    events |= UV_WRITABLE;
  if ((what & CURL_POLL_IN) && !sc->reading) {
    quiet_from_now(sc);
    kick_arm(tr, KICK_FIRST_MS);
  }
  sc->reading = (what & CURL_POLL_IN) != 0;
  uv_poll_start(&sc->poll, events, on_poll);
  return 0;
}

static void on_timer(uv_timer_t *t) {
  ns_transport *tr = t->data;
  int running;
  curl_multi_socket_action(tr->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_done(tr);
}

static int timer_cb(CURLM *m, long timeout_ms, void *userp) {
  ns_transport *tr = userp;
  (void)m;
  if (timeout_ms < 0)
    uv_timer_stop(&tr->timer);
  else
    uv_timer_start(&tr->timer, on_timer, (uint64_t)timeout_ms, 0);
  return 0;
}

static curl_socket_t open_cb(void *ud, curlsocktype purpose, struct curl_sockaddr *a) {
  netstash_ctx *ctx = ud;
  curl_socket_t s;
  (void)purpose;
  if (ctx->test_open_socket) /* fuzzing: the harness is the server */
    s = ctx->test_open_socket(ctx->test_open_socket_ud, &a->addr, &a->addrlen);
  else
    s = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
  if (s != CURL_SOCKET_BAD)
    ns_stat_add(ctx, NETSTASH_STAT_CONNECTIONS_OPENED, 1);
  return s;
}

/*
 * libcurl may close a socket before (or without) telling the socket callback
 * to stop watching it. The kernel then drops the fd from epoll on its own,
 * while libuv still believes it is registered; when the number is reused for
 * a new connection, uv_poll_start() sees "same events" and re-registers
 * nothing: that connection never gets an event and its transfers stall.
 * Stopping our watcher here, while the fd is still open, keeps libuv's view
 * and the kernel's in step.
 */
/* A test hook's socket that has a peer already is not to be connected
 * (curl-fuzzer's pattern; ctx.h). */
static int sockopt_hook_cb(void *ud, curl_socket_t s, curlsocktype purpose) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof(ss);
  (void)ud;
  (void)purpose;
  return getpeername(s, (struct sockaddr *)&ss, &len) == 0 ? CURL_SOCKOPT_ALREADY_CONNECTED
                                                           : CURL_SOCKOPT_OK;
}

static int close_cb(void *ud, curl_socket_t s) {
  ns_transport *tr = ud;
  ns_list *pos, *tmp;
  ns_list_foreach_safe(pos, tmp, &tr->socks) {
    sock_ctx *sc = ns_list_entry(pos, sock_ctx, node);
    if (sc->fd == s) {
      if (tr->multi)
        curl_multi_assign(tr->multi, s, NULL);
      sock_close(sc);
    }
  }
  return close(s);
}

static void ssl_info_cb(const SSL *ssl, int where, int ret) {
  (void)ret;
  if (where & SSL_CB_HANDSHAKE_DONE) {
    netstash_ctx *ctx = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ssl_ex_index);
    if (ctx) {
      ns_stat_add(ctx, NETSTASH_STAT_TLS_HANDSHAKES, 1);
      if (SSL_session_reused((SSL *)ssl))
        ns_stat_add(ctx, NETSTASH_STAT_TLS_RESUMED, 1);
    }
  }
}

static CURLcode sslctx_cb(CURL *e, void *sslctx, void *ud) {
  (void)e;
  SSL_CTX_set_ex_data(sslctx, ssl_ex_index, ud);
  SSL_CTX_set_info_callback(sslctx, ssl_info_cb);
  return CURLE_OK;
}

/* ------------------------------------------------------------ response */

static void reset_response(netstash_fetch *f) {
  f->status = 0;
  f->nhdrs = 0;
  f->redirecting = 0;
  ns_buf_reset(&f->hdr_arena);
  ns_decoder_del(f->dec);
  f->dec = NULL;
}

void ns_hop_status(netstash_fetch *f, int status) {
  reset_response(f);
  f->status = status;
}

static void capture_tls(netstash_fetch *f, CURL *e) {
  struct curl_tlssessioninfo *info = NULL;
  long v = 0;
  if (curl_easy_getinfo(e, CURLINFO_HTTP_VERSION, &v) == CURLE_OK) {
    if (v == CURL_HTTP_VERSION_2_0)
      f->proto = NETSTASH_HTTP_2;
    else if (v == CURL_HTTP_VERSION_3)
      f->proto = NETSTASH_HTTP_3;
    else
      f->proto = NETSTASH_HTTP_1_1;
  }
  f->tls_version[0] = f->tls_cipher[0] = 0;
  if (curl_easy_getinfo(e, CURLINFO_TLS_SSL_PTR, &info) == CURLE_OK && info &&
      info->backend == CURLSSLBACKEND_OPENSSL && info->internals) {
    SSL *ssl = info->internals;
    snprintf(f->tls_version, sizeof(f->tls_version), "%s", SSL_get_version(ssl));
    snprintf(f->tls_cipher, sizeof(f->tls_cipher), "%s",
             SSL_CIPHER_get_name(SSL_get_current_cipher(ssl)));
  }
}

static netstash_error deliver(const uint8_t *data, size_t len, void *ud) {
  netstash_fetch *f = ud;
  if (!len)
    return NETSTASH_OK;
  if (len > f->max_body - f->body_bytes) {
    snprintf(f->detail, sizeof(f->detail),
             "body exceeds the limit of %llu bytes", (unsigned long long)f->max_body);
    return NETSTASH_E_TOO_LARGE;
  }
  f->body_bytes += len;
  if (f->req->collect) {
    netstash_error rv = ns_buf_append(&f->body, data, len);
    if (rv != NETSTASH_OK) {
      if (rv == NETSTASH_E_TOO_LARGE)
        ns_fetch_detail(f, "body exceeds the collect limit of %llu bytes",
                 (unsigned long long)f->req->collect_max);
      return rv;
    }
  }
  if (f->cbs.on_data && !atomic_load(&f->orphaned)) {
    f->cbs.on_data(f, data, len, f->ud);
    /* an internal consumer (the interceptor's pull queue) that could not
     * take the data failed the fetch: stop here, whatever the source */
    if (f->fail != NETSTASH_OK)
      return f->fail;
  }
  return NETSTASH_OK;
}

static void deliver_head(netstash_fetch *f) {
  if (f->head_delivered)
    return;
  f->head_delivered = 1;
  if (f->cbs.on_response && !atomic_load(&f->orphaned))
    f->cbs.on_response(f, f->ud);
}

/* End of a header block (the empty line). Returns 0 to abort the transfer. */
static void note_altsvc(netstash_fetch *f);
static netstash_error head_as_headers(const netstash_fetch *f, ns_headers *out);
static netstash_error add_header_nv(netstash_fetch *f, const char *name, size_t nlen,
                                    const char *value, size_t vlen);

/* Drops every response field named name (lowercase). */
static void drop_header(netstash_fetch *f, const char *name) {
  size_t i, k = 0;
  for (i = 0; i < f->nhdrs; i++)
    if (strcmp((const char *)f->hdr_arena.data + f->hdrs[i].name_off, name) != 0)
      f->hdrs[k++] = f->hdrs[i];
  f->nhdrs = k;
}

static netstash_error piece_sink(const uint8_t *data, size_t len, void *ud) {
  return ns_buf_append(ud, data, len);
}

/* The answer to start_completion's range request. A 206 with the rest of the
 * stored piece's representation under its validator, in no content coding,
 * is answered as the whole (RFC 9111 §3.4): a 200 of the complete length,
 * the piece's bytes first (read now into hc_body, delivered after the head);
 * a 200 is the whole already. Anything else — another range, a 416, a coded
 * body, or a piece gone from the store — sends the hop again without the
 * range (0: abort this transfer). */
static int complete_piece(netstash_fetch *f) {
  ns_headers resp;
  uint64_t a, b, n;
  const char *ce = netstash_fetch_header(f, "content-encoding");
  char cl[24];
  int ok;
  f->hc_completing = 0;
  if (f->status != 206 && f->status != 416)
    return 1;
  ns_headers_init(&resp, &f->mem);
  ok = head_as_headers(f, &resp) == NETSTASH_OK && ns_cache_piece(&resp, &a, &b, &n) &&
       a == f->hc_piece_len && b + 1 == n && n == f->hc_total &&
       (!ce || ns_ascii_casecmp(ce, "identity") == 0) &&
       ns_cache_same_validator(&f->hce.headers, &resp);
  ns_headers_free(&resp);
  ns_buf_reset(&f->hc_body);
  if (ok && (ns_httpcache_serve_body(f->ctx->hc, &f->hce, 0, f->hc_piece_len, piece_sink,
                                     &f->hc_body) != NETSTASH_OK ||
             f->hc_body.len != f->hc_piece_len))
    ok = 0;
  if (ok) {
    drop_header(f, "content-range");
    drop_header(f, "content-length");
    ok = add_header_nv(f, "content-length", 14, cl,
                       (size_t)snprintf(cl, sizeof(cl), "%" PRIu64, n)) == NETSTASH_OK;
  }
  if (!ok) {
    ns_buf_reset(&f->hc_body);
    f->hc_retry_whole = 1;
    return 0;
  }
  f->status = 200;
  f->hc_prefix = 1;
  return 1;
}

/* RFC 9111 §4.4: an unsafe method's non-error status invalidates the target
 * (and its Location / Content-Location) as the head arrives, before the
 * answer goes on: a client (netd's fronts' included) that sends its next GET
 * as soon as it has this answer must not get the old stored one (it could,
 * by a loop turn, when this ran at the transfer's end). */
/* A GET of an invalidated key still in flight, answered before the
 * invalidation, is not stored after it either. */
static void cancel_store_of(const uint8_t *key, size_t len, void *ud) {
  netstash_fetch *f = ud;
  ns_transport *tr = f->ctx->transport;
  for (ns_list *pos = tr->fetches.next; pos != &tr->fetches; pos = pos->next) {
    netstash_fetch *g = ns_list_entry(pos, netstash_fetch, node);
    if (g != f && g->hc_store && g->hce.primary.len == len &&
        memcmp(g->hce.primary.data, key, len) == 0) {
      size_t l = strlen(g->cache_reason);
      g->hc_store = 0;
      ns_buf_free(&g->hc_body);
      snprintf(g->cache_reason + l, sizeof(g->cache_reason) - l,
               "%snot stored: an unsafe request invalidated it meanwhile", l ? "; " : "");
    }
  }
}

static void invalidate_at_head(netstash_fetch *f) {
  ns_headers resp;
  netstash_error rv;
  f->hc_invalidate = 0;
  if (!f->ctx->hc)
    return;
  ns_headers_init(&resp, &f->mem);
  rv = head_as_headers(f, &resp);
  if (rv == NETSTASH_OK)
    rv = ns_httpcache_invalidate(f->ctx->hc, f->req->top_level_site.url, method_of(f), f->cur.url,
                                 f->status, &resp, cancel_store_of, f);
  if (rv != NETSTASH_OK)
    NS_WARN(f->ctx, MOD, "cache invalidation for %s failed: %s", f->cur.url, netstash_strerror(rv));
  ns_headers_free(&resp);
}

/* At the head: a response the cache will not keep (no-store, an uncacheable
 * status, ...) is not buffered for it (RFC 9111 §3). */
static void decide_storage(netstash_fetch *f) {
  ns_headers resp;
  const char *why = NULL;
  ns_cache_request cr = {method_of(f), f->cur.url, &f->hc_req};
  ns_headers_init(&resp, &f->mem);
  if (f->status == 206 && f->hce.found && f->hce.status != 206) {
    /* RFC 9111 §3.4 would combine the two; a piece never replaces the
     * complete stored response (validated again when it is stale) */
    size_t l = strlen(f->cache_reason);
    f->hc_store = 0;
    snprintf(f->cache_reason + l, sizeof(f->cache_reason) - l,
             "%snot stored: partial content (the complete stored response is kept)", l ? "; " : "");
  } else if (head_as_headers(f, &resp) == NETSTASH_OK &&
             !ns_cache_storable(&cr, f->status, &resp, &why)) {
    size_t l = strlen(f->cache_reason);
    f->hc_store = 0;
    snprintf(f->cache_reason + l, sizeof(f->cache_reason) - l, "%snot stored: %s", l ? "; " : "",
             why ? why : "?");
  } else if (f->hc_body.len == 0) {
    /* the body to store arrives in pieces: room for all of it at once
     * (no realloc and copy per doubling) when its length is known */
    const char *cl = ns_headers_get(&resp, "content-length");
    char *end = NULL;
    unsigned long long n = cl ? strtoull(cl, &end, 10) : 0;
    if (cl && end && *end == 0 && n > 0 && n <= f->hc_body.max)
      (void)ns_buf_reserve(&f->hc_body, (size_t)n); /* a failure: appends grow it */
  }
  ns_headers_free(&resp);
}

/* RFC 9112 §6.3 (5): Content-Length fields (or list members) that differ
 * make the message framing ambiguous — response smuggling — and are an
 * unrecoverable error; libcurl 7.88 would take the last one. Chromium fails
 * such a response too (ERR_RESPONSE_HEADERS_MULTIPLE_CONTENT_LENGTH). */
static int content_length_conflict(const netstash_fetch *f) {
  const char *first = NULL;
  size_t first_len = 0, i;
  for (i = 0; i < f->nhdrs; i++) {
    const char *n = (const char *)f->hdr_arena.data + f->hdrs[i].name_off;
    const char *v = (const char *)f->hdr_arena.data + f->hdrs[i].value_off;
    if (strcmp(n, "content-length") != 0)
      continue;
    for (;;) {
      size_t len;
      while (*v == ' ' || *v == '\t' || *v == ',')
        v++;
      len = strcspn(v, " \t,");
      if (len == 0)
        break;
      if (first == NULL) {
        first = v;
        first_len = len;
      } else if (len != first_len || memcmp(v, first, len) != 0) {
        return 1;
      }
      v += len;
    }
  }
  return 0;
}

/* A 200 to a HEAD the cache consulted and found a stored response for: it
 * freshens or drops that response (head_freshen, RFC 9111 §4.3.5). */
static int head_200_for_stored(const netstash_fetch *f) {
  return f->status == 200 && f->hc_used && f->hce.found && f->ctx->hc &&
         strcmp(method_of(f), "HEAD") == 0;
}

static int head_end(netstash_fetch *f) {
  const char *ce;
  if (f->status < 200)
    return 1; /* 1xx: another block follows (RFC 9110 15.2) */
  f->resp_time_ms = wall_ms();
  if (is_remote(f)) {
    if (f->remote_err != NETSTASH_OK)
      return 1; /* its body is the detail (ns_hop_body) */
    deliver_head(f);
    return 1; /* netd decoded, stored and followed what it had to */
  }
  if (content_length_conflict(f)) {
    f->fail = NETSTASH_E_PROTOCOL;
    ns_fetch_detail(f, "conflicting Content-Length headers (%s:%d)", f->cur.host, f->cur.port);
    return 0;
  }
  store_cookies(f);
  note_altsvc(f);
  if (f->hc_invalidate)
    invalidate_at_head(f);
  if (f->hc_completing && !complete_piece(f))
    return 0;
  if (head_200_for_stored(f) && head_names_stored(f)) {
    f->hc_head_200 = 1; /* answered from the freshened stored head at the end */
    return 1;
  }
  if (f->hc_validating) {
    if (f->status == 304) {
      f->hc_got_304 = 1; /* answered from the stored body at the end */
      return 1;
    }
    if (f->hce.decision.stale_if_error &&
        (f->status == 500 || f->status == 502 || f->status == 503 || f->status == 504)) {
      f->hc_sie = 1; /* RFC 5861 §4: serve the stored response instead */
      return 1;
    }
  }
  if (f->status >= 300 && f->status < 400 && f->req->follow &&
      netstash_fetch_header(f, "location") &&
      !((f->status == 307 || f->status == 308) && f->req->body_cb)) {
    if (f->redirects_left == 0) {
      f->fail = NETSTASH_E_TOO_MANY_REDIRECTS;
      ns_fetch_detail(f, "more than %u redirects",
               (unsigned)f->req->follow);
      return 0;
    }
    f->redirecting = 1;
    return 1;
  }
  if (f->ctx->store && f->ctx->cfg.hsts && !f->cur.host_is_ip &&
      strcmp(f->cur.scheme, "https") == 0) {
    const char *sts = netstash_fetch_header(f, "strict-transport-security");
    int64_t max_age;
    int sub;
    /* RFC 6797 §8.1: only over a secure transport, and an invalid header is
     * ignored */
    if (sts && ns_sts_parse(sts, strlen(sts), &max_age, &sub)) {
      netstash_error hv = ns_hsts_save(f->ctx->store, f->cur.host,
                                       wall_ms(), max_age, sub);
      if (hv != NETSTASH_OK)
        NS_WARN(f->ctx, MOD, "HSTS for %s not saved: %s", f->cur.host, netstash_strerror(hv));
    }
  }
  ce = netstash_fetch_header(f, "content-encoding");
  if (ce && !f->req->raw) {
    ns_coding codings[NS_DECODE_MAX_LAYERS];
    int n = ns_coding_parse(ce, strlen(ce), codings);
    if (n < 0) {
      /* Unknown coding: hand the body over as sent, as Chromium does. */
      NS_WARN(f->ctx, MOD, "unknown content-encoding \"%s\": body passed through", ce);
    } else if (n > 0) {
      netstash_error rv = ns_decoder_new(&f->mem, codings, n, f->max_body, &f->dec);
      if (rv != NETSTASH_OK) {
        f->fail = rv;
        return 0;
      }
    }
  }
  if (f->hc_store && !f->redirecting)
    decide_storage(f);
  deliver_head(f);
  if (f->hc_prefix) {
    /* the stored piece's bytes, before the rest the network sends */
    netstash_error rv;
    f->hc_prefix = 0;
    rv = deliver(f->hc_body.data, f->hc_body.len, f);
    if (!f->hc_store)
      ns_buf_reset(&f->hc_body);
    if (rv != NETSTASH_OK) {
      f->fail = rv;
      return 0;
    }
  }
  return 1;
}

/* Remote mode: netd's x-netstash-* response fields describe the answer. */
static void remote_field(netstash_fetch *f, const char *name, size_t nlen, const char *value,
                         size_t vlen) {
  if (nlen == 17 && ns_ascii_casecmp_n(name, "x-netstash-source", 17) == 0) {
    if (vlen == 7 && !memcmp(value, "preload", 7))
      f->source = NETSTASH_SOURCE_PRELOAD;
    else if (vlen == 5 && !memcmp(value, "cache", 5))
      f->source = NETSTASH_SOURCE_CACHE;
    else if (vlen == 11 && !memcmp(value, "revalidated", 11))
      f->source = NETSTASH_SOURCE_REVALIDATED;
    else
      f->source = NETSTASH_SOURCE_NETWORK;
  } else if (nlen == 23 && ns_ascii_casecmp_n(name, "x-netstash-cache-reason", 23) == 0) {
    snprintf(f->cache_reason, sizeof(f->cache_reason), "%.*s", (int)vlen, value);
  } else if (nlen == 16 && ns_ascii_casecmp_n(name, "x-netstash-error", 16) == 0) {
    f->remote_err = ns_error_by_name(value, vlen, NETSTASH_E_NETWORK);
  }
}

static netstash_error add_header_nv(netstash_fetch *f, const char *name, size_t nlen,
                                    const char *value, size_t vlen) {
  size_t i, bytes;
  ns_header *h;
  netstash_error rv;
  if (nlen > 11 && ns_ascii_casecmp_n(name, "x-netstash-", 11) == 0 && is_remote(f)) {
    remote_field(f, name, nlen, value, vlen);
    return NETSTASH_OK;
  }
  uint32_t name_off, value_off;
  if (f->nhdrs == f->hdrs_cap) {
    size_t ncap = f->hdrs_cap ? f->hdrs_cap * 2 : 16;
    if (ncap > 4096)
      return NETSTASH_E_TOO_LARGE;
    if (!ns_mul_size(ncap, sizeof(*h), &bytes))
      return NETSTASH_E_NOMEM;
    h = ns_realloc(&f->mem, f->hdrs, bytes);
    if (!h)
      return NETSTASH_E_NOMEM;
    f->hdrs = h;
    f->hdrs_cap = ncap;
  }
  /* "name\0value\0", the name lowercased, in one reservation */
  if (!ns_add_size(nlen, vlen, &bytes) || !ns_add_size(bytes, 2, &bytes))
    return NETSTASH_E_TOO_LARGE;
  if ((rv = ns_buf_reserve(&f->hdr_arena, bytes)) != NETSTASH_OK)
    return rv;
  name_off = (uint32_t)f->hdr_arena.len;
  {
    char *d = (char *)f->hdr_arena.data + name_off;
    for (i = 0; i < nlen; i++)
      d[i] = ns_ascii_lower(name[i]);
    d[nlen] = 0;
    memcpy(d + nlen + 1, value, vlen);
    d[nlen + 1 + vlen] = 0;
  }
  value_off = name_off + (uint32_t)nlen + 1;
  f->hdr_arena.len += bytes;
  f->hdr_arena.data[f->hdr_arena.len] = 0;
  f->hdrs[f->nhdrs].name_off = name_off;
  f->hdrs[f->nhdrs].value_off = value_off;
  f->nhdrs++;
  return NETSTASH_OK;
}

static netstash_error add_header(netstash_fetch *f, const char *line, size_t len) {
  const char *colon = memchr(line, ':', len);
  size_t nlen, vstart, vend;
  if (!colon || colon == line)
    return NETSTASH_OK; /* not a field line: ignore, as browsers do */
  nlen = (size_t)(colon - line);
  vstart = nlen + 1;
  vend = len;
  while (vstart < vend && (line[vstart] == ' ' || line[vstart] == '\t'))
    vstart++;
  while (vend > vstart && (line[vend - 1] == ' ' || line[vend - 1] == '\t'))
    vend--;
  return add_header_nv(f, line, nlen, line + vstart, vend - vstart);
}

static size_t hdr_cb(char *buf, size_t size, size_t n, void *ud) {
  netstash_fetch *f = ud;
  size_t len = size * n;
  netstash_error rv;
  while (len && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
    len--;
  if (len >= 5 && memcmp(buf, "HTTP/", 5) == 0) {
    const char *sp = memchr(buf, ' ', len);
    int code = 0;
    reset_response(f);
    if (sp && (size_t)(sp - buf) + 4 <= len) {
      const char *d = sp + 1;
      /* 600-999 are invalid but not malformed: RFC 9110 §15 asks a client
       * to process them as a 5xx (LinkedIn answers robots 999) — delivered,
       * never stored (ns_cache_storable) */
      if (d[0] >= '1' && d[0] <= '9' && d[1] >= '0' && d[1] <= '9' && d[2] >= '0' && d[2] <= '9')
        code = (d[0] - '0') * 100 + (d[1] - '0') * 10 + (d[2] - '0');
    }
    if (!code) {
      f->fail = NETSTASH_E_PROTOCOL;
      ns_fetch_detail(f, "malformed status line");
      return 0;
    }
    f->status = code;
    capture_tls(f, f->easy);
    return size * n;
  }
  if (!f->status) {
    /* libcurl takes "hTTP/1.1 200" as a status line; RFC 9112 §2.3: the
     * HTTP-name is case-sensitive. Without this, the head was delivered
     * with status 0 (fuzz/corpus/fetch_response/regress-status-case). */
    f->fail = NETSTASH_E_PROTOCOL;
    ns_fetch_detail(f, "malformed status line");
    return 0;
  }
  if (len == 0)
    return head_end(f) ? size * n : 0;
  if (buf[0] == ' ' || buf[0] == '\t') {
    /* obs-fold (RFC 9112 5.2): a browser-style client rejects it. */
    f->fail = NETSTASH_E_PROTOCOL;
    ns_fetch_detail(f, "obsolete line folding in a header");
    return 0;
  }
  rv = add_header(f, buf, len);
  if (rv != NETSTASH_OK) {
    f->fail = rv;
    ns_fetch_detail(f, "response header section too large");
    return 0;
  }
  return size * n;
}

int ns_hop_head_end(netstash_fetch *f) { return head_end(f); }

netstash_error ns_hop_header(netstash_fetch *f, const char *name, size_t nlen,
                             const char *value, size_t vlen) {
  return add_header_nv(f, name, nlen, value, vlen);
}

int ns_hop_body(netstash_fetch *f, const uint8_t *data, size_t len) {
  netstash_error rv;
  if (f->remote_err != NETSTASH_OK) {
    size_t l = strlen(f->detail);
    if (l + 1 < sizeof(f->detail))
      snprintf(f->detail + l, sizeof(f->detail) - l, "%.*s", (int)NS_MIN(len, sizeof(f->detail) - l - 1),
               (const char *)data);
    return 1;
  }
  if (f->redirecting || f->hc_got_304 || f->hc_sie || f->hc_head_200)
    return 1; /* body of a redirect we follow, of a 304, of a 5xx we replace */
  if (f->hc_store && ns_buf_append(&f->hc_body, data, len) != NETSTASH_OK) {
    f->hc_store = 0; /* too large for the cache: keep streaming, store nothing */
    ns_buf_free(&f->hc_body);
  }
  if (!f->head_delivered)
    deliver_head(f);
  f->wire_bytes += len;
  ns_stat_add(f->ctx, NETSTASH_STAT_BYTES_RECEIVED, (int64_t)len);
  if (f->dec)
    rv = ns_decoder_write(f->dec, data, len, deliver, f);
  else
    rv = deliver(data, len, f);
  if (rv != NETSTASH_OK) {
    f->fail = rv;
    if (!f->detail[0])
      ns_fetch_detail(f, "%s while reading the body",
               netstash_strerror(rv));
    return 0;
  }
  return 1;
}

static size_t write_cb(char *data, size_t size, size_t n, void *ud) {
  size_t len = size * n;
  return ns_hop_body(ud, (const uint8_t *)data, len) ? len : 0;
}

static size_t read_cb(char *buf, size_t size, size_t n, void *ud) {
  netstash_fetch *f = ud;
  size_t len = 0;
  int eof = 0;
  netstash_error rv = f->req->body_cb((uint8_t *)buf, size * n, &len, &eof, f->req->body_ud);
  if (rv != NETSTASH_OK || len > size * n) {
    f->fail = NETSTASH_E_CALLBACK;
    ns_fetch_detail(f, "request body reader failed: %s",
             netstash_strerror(rv));
    return CURL_READFUNC_ABORT;
  }
  return len;
}

/* ------------------------------------------------------------ errors */

static netstash_error map_error(netstash_fetch *f, CURLcode res) {
  long vr = 0, oserr = 0, sent = 0;
  const char *eb = f->errbuf;
  switch (res) {
  case CURLE_OK:
    return NETSTASH_OK;
  case CURLE_COULDNT_RESOLVE_HOST:
    return NETSTASH_E_DNS_NOT_FOUND;
  case CURLE_COULDNT_CONNECT:
    curl_easy_getinfo(f->easy, CURLINFO_OS_ERRNO, &oserr);
    return oserr == ECONNREFUSED ? NETSTASH_E_CONNECT_REFUSED : NETSTASH_E_CONNECT_FAILED;
  case CURLE_OPERATION_TIMEDOUT:
    return NETSTASH_E_TIMEOUT;
  case CURLE_SSL_CONNECT_ERROR:
    if (strstr(eb, "protocol version") || strstr(eb, "unsupported protocol") ||
        strstr(eb, "no protocols available"))
      return NETSTASH_E_TLS_VERSION;
    return NETSTASH_E_TLS_HANDSHAKE;
  case CURLE_PEER_FAILED_VERIFICATION:
    /* libcurl 7.88 checks the host name itself, after the handshake. */
    if (strstr(eb, "subject name") || strstr(eb, "does not match target host"))
      return NETSTASH_E_TLS_CERT_HOSTNAME;
    curl_easy_getinfo(f->easy, CURLINFO_SSL_VERIFYRESULT, &vr);
    switch (vr) {
    case X509_V_ERR_CERT_HAS_EXPIRED:
    case X509_V_ERR_CERT_NOT_YET_VALID:
      return NETSTASH_E_TLS_CERT_EXPIRED;
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_CERT_UNTRUSTED:
      return NETSTASH_E_TLS_CERT_UNTRUSTED;
    case X509_V_ERR_HOSTNAME_MISMATCH:
    case X509_V_ERR_IP_ADDRESS_MISMATCH:
      return NETSTASH_E_TLS_CERT_HOSTNAME;
    default:
      return NETSTASH_E_TLS_CERT_INVALID;
    }
  case CURLE_SSL_CACERT_BADFILE:
  case CURLE_SSL_CRL_BADFILE:
    return NETSTASH_E_TLS_CA_FILE;
  case CURLE_SSL_CERTPROBLEM:
  case CURLE_SSL_CIPHER:
  case CURLE_SSL_ISSUER_ERROR:
  case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
  case CURLE_SSL_INVALIDCERTSTATUS:
  case CURLE_SSL_SHUTDOWN_FAILED:
    return NETSTASH_E_TLS_HANDSHAKE;
  case CURLE_PARTIAL_FILE:
    return NETSTASH_E_TRUNCATED;
  case CURLE_RECV_ERROR:
  case CURLE_HTTP2:
  case CURLE_HTTP2_STREAM:
    /* invalid chunked framing (RFC 9112 §7.1) is the peer's protocol error,
     * not a connection cut short */
    if (res == CURLE_RECV_ERROR && strstr(eb, "chunked-encoding"))
      return NETSTASH_E_PROTOCOL;
    if (f->status >= 200)
      return NETSTASH_E_TRUNCATED; /* the body was cut short */
    return res == CURLE_RECV_ERROR ? NETSTASH_E_RECV : NETSTASH_E_PROTOCOL;
  case CURLE_SEND_ERROR:
    /* a peer that closes mid-body (an HTTP/2 GOAWAY, then FIN) fails
     * libcurl's next write (a WINDOW_UPDATE): the body is what was lost */
    if (f->status >= 200 && !f->req->body_cb && !f->req->has_body) {
      ns_fetch_detail(f, "the connection failed in the middle of the body (%s) (%s:%d)",
                      eb[0] ? eb : "send failed", f->cur.host, f->cur.port);
      return NETSTASH_E_TRUNCATED;
    }
    return NETSTASH_E_SEND;
  case CURLE_GOT_NOTHING:
  case CURLE_WEIRD_SERVER_REPLY:
  case CURLE_UNSUPPORTED_PROTOCOL:
  case CURLE_HTTP_RETURNED_ERROR:
    return NETSTASH_E_PROTOCOL;
  case CURLE_BAD_CONTENT_ENCODING:
    return NETSTASH_E_DECODE;
  case CURLE_WRITE_ERROR:
  case CURLE_ABORTED_BY_CALLBACK:
  case CURLE_READ_ERROR:
    return f->fail != NETSTASH_OK ? f->fail : NETSTASH_E_CALLBACK;
  case CURLE_TOO_MANY_REDIRECTS:
    return NETSTASH_E_TOO_MANY_REDIRECTS;
  case CURLE_FILESIZE_EXCEEDED:
    return NETSTASH_E_TOO_LARGE;
  case CURLE_OUT_OF_MEMORY:
    /* libcurl 7.88 reports a response header line over its 100 KB limit
     * (CURL_MAX_HTTP_HEADER) as out of memory: before the head ended, that
     * is the line, not the heap */
    if (!f->head_delivered &&
        curl_easy_getinfo(f->easy, CURLINFO_REQUEST_SIZE, &sent) == CURLE_OK && sent > 0) {
      ns_fetch_detail(f, "a response header line is longer than 100 KB (%s:%d)", f->cur.host,
                      f->cur.port);
      return NETSTASH_E_TOO_LARGE;
    }
    return NETSTASH_E_NOMEM;
  case CURLE_URL_MALFORMAT:
    return NETSTASH_E_BAD_URL;
  case CURLE_BAD_FUNCTION_ARGUMENT:
    /* libcurl 7.88's headers API answers a folded (obs-fold) header line
     * with nothing before it to continue this way: the peer's malformed
     * head, not ours */
    if (f->status > 0 && !f->head_delivered) {
      ns_fetch_detail(f, "malformed response header: a folded line continues nothing (%s:%d)",
                      f->cur.host, f->cur.port);
      return NETSTASH_E_PROTOCOL;
    }
    return NETSTASH_E_NETWORK;
  default:
    return NETSTASH_E_NETWORK;
  }
}

/* ------------------------------------------------------------ lifecycle */

static void release_easy(netstash_fetch *f) {
  ns_transport *tr = f->ctx->transport;
  if (f->easy) {
    if (f->state == NS_FETCH_ACTIVE)
      curl_multi_remove_handle(tr->multi, f->easy);
    curl_easy_cleanup(f->easy);
    f->easy = NULL;
  }
  curl_slist_free_all(f->hdr_list);
  curl_slist_free_all(f->resolve_list);
  f->hdr_list = f->resolve_list = NULL;
  ns_free(&f->mem, f->h3_host);
  f->h3_host = NULL;
}

/* Ends a fetch from the loop, outside any libcurl callback. */
static void end_fetch(netstash_fetch *f, netstash_error err) {
  if (f->state == NS_FETCH_DONE)
    return;
  if (f->hc_await) { /* ended (cancelled) while its entry awaited the commit */
    f->hc_await = 0;
    ns_list_remove(&f->await_node);
    ns_httpcache_disown(f->ctx->hc, &f->hc_commit);
  }
  if (f->hop_wait) { /* ended (cancelled) while its lookup waited */
    f->hop_wait = 0;
    ns_list_remove(&f->await_node);
  }
  if (f->dnsq) {
    ns_dns_cancel(f->dnsq);
    f->dnsq = NULL;
  }
  ns_list_remove(&f->node);
  ns_h3_detach(f);
  ns_remote_detach(f);
  release_easy(f);
  ns_fetch_finish(f, err);
}

static void hop_timings(netstash_fetch *f) {
  curl_off_t nl = 0, conn = 0, app = 0, st = 0;
  long nconn = 0;
  curl_easy_getinfo(f->easy, CURLINFO_NAMELOOKUP_TIME_T, &nl);
  curl_easy_getinfo(f->easy, CURLINFO_CONNECT_TIME_T, &conn);
  curl_easy_getinfo(f->easy, CURLINFO_APPCONNECT_TIME_T, &app);
  curl_easy_getinfo(f->easy, CURLINFO_STARTTRANSFER_TIME_T, &st);
  curl_easy_getinfo(f->easy, CURLINFO_NUM_CONNECTS, &nconn);
  f->new_conns += (uint32_t)(nconn > 0 ? nconn : 0);
  f->timing[NETSTASH_TIMING_DNS] = f->dns_us;
  f->timing[NETSTASH_TIMING_CONNECT] = conn > nl ? (uint64_t)(conn - nl) : 0;
  f->timing[NETSTASH_TIMING_TLS] = (app > conn && conn > 0) ? (uint64_t)(app - conn) : 0;
  f->timing[NETSTASH_TIMING_TTFB] = st > 0 ? (f->t_added - f->t_start) + (uint64_t)st : 0;
  f->timing[NETSTASH_TIMING_QUEUED] =
      f->t_added - f->t_start > f->dns_us ? f->t_added - f->t_start - f->dns_us : 0;
}

static void follow_redirect(netstash_fetch *f) {
  const char *loc = netstash_fetch_header(f, "location");
  ns_url next;
  char why[160];
  netstash_error rv;
  int status = f->status;

  rv = ns_url_resolve(&f->mem, f->cur.url, loc, &next, why, sizeof(why));
  if (rv != NETSTASH_OK) {
    ns_fetch_detail(f, "redirect to \"%.80s\": %s", loc, why);
    end_fetch(f, rv);
    return;
  }
  /* The next hop gets a new easy handle (start_net creates it). libcurl
   * 7.88 keeps a pointer to the last header of the previous response for
   * folded continuation lines across requests on one handle, and frees that
   * response's headers when the next request starts: a redirect target
   * whose first header line is folded made libcurl read freed memory (a
   * heap-use-after-free in its headers API, found by the fetch_response fuzz
   * harness: fuzz/corpus/fetch_response/regress-fold-after-redirect). A
   * redirect is rare; a handle is cheap. */
  release_easy(f);
  f->state = NS_FETCH_NEW;
  ns_url_free(&f->mem, &f->cur);
  f->cur = next;
  f->redirects_left--;
  ns_h3_detach(f);
  ns_remote_detach(f);
  if (f->hooks.on_redirect && !atomic_load(&f->orphaned))
    f->hooks.on_redirect(f, status, f->cur.url, f->hooks.ud);
  /* RFC 9110 15.4: 303 turns into GET; 301/302 after POST too, as every
   * browser does. 307/308 keep method and body. */
  if (status == 303 || ((status == 301 || status == 302) && f->req->method &&
                        strcmp(f->req->method, "POST") == 0) ||
      ((status == 301 || status == 302) && !f->req->method && f->req->has_body)) {
    if (!(f->req->method && strcmp(f->req->method, "HEAD") == 0))
      f->hop_get = 1; /* setup_easy makes the new handle a GET */
  }
  reset_response(f);
  start_hop(f);
}

/* The response head as an ns_headers (for the cache). */
static netstash_error head_as_headers(const netstash_fetch *f, ns_headers *out) {
  netstash_error rv = NETSTASH_OK;
  for (size_t i = 0; rv == NETSTASH_OK && i < f->nhdrs; i++) {
    const char *n = (const char *)f->hdr_arena.data + f->hdrs[i].name_off;
    const char *v = (const char *)f->hdr_arena.data + f->hdrs[i].value_off;
    rv = ns_headers_add(out, n, strlen(n), v, strlen(v));
    if (rv == NETSTASH_E_INVALID_ARGUMENT)
      rv = NETSTASH_OK; /* a field the cache cannot keep: drop it */
  }
  return rv;
}

/* The responses stored during the last loop turn are committed together
 * (one transaction, one fsync): handed to the cache's writer thread when it
 * is idle — the loop goes on — or, while it commits the batch before, left
 * for the batch after; then the fetches whose entries are settled complete.
 * Runs at the next loop turn, before it polls (on_hc_check), when the
 * writer has committed a batch (on_hc_done), and when a batch held back for
 * the commit gap may go (on_hc_timer). */
static void on_hc_timer(uv_timer_t *t);

static void hc_settle(ns_transport *tr) {
  ns_list done, *pos, *tmp;
  uint32_t retry_ms = 0;
  netstash_error rv = ns_httpcache_commit(tr->ctx->hc, &retry_ms);
  if (rv != NETSTASH_OK)
    NS_WARN(tr->ctx, MOD, "HTTP cache commit failed: %s", netstash_strerror(rv));
  /* a batch held back for the commit gap goes when it is over */
  if (retry_ms && tr->hc_timer_ok && !uv_is_active((uv_handle_t *)&tr->hc_timer))
    uv_timer_start(&tr->hc_timer, on_hc_timer, retry_ms, 0);
  ns_list_init(&done);
  ns_list_foreach_safe(pos, tmp, &tr->awaiting) {
    netstash_fetch *f = ns_list_entry(pos, netstash_fetch, await_node);
    if (f->hc_commit != NETSTASH_E_AGAIN) { /* settled here or by a flush before */
      ns_list_remove(&f->await_node);
      ns_list_insert_tail(&done, &f->await_node);
    }
  }
  while (!ns_list_empty(&done)) {
    netstash_fetch *f = ns_list_entry(done.next, netstash_fetch, await_node);
    size_t l = strlen(f->cache_reason);
    ns_list_remove(&f->await_node);
    f->hc_await = 0;
    if (f->hc_commit == NETSTASH_OK)
      snprintf(f->cache_reason + l, sizeof(f->cache_reason) - l, "%sstored", l ? "; " : "");
    else
      snprintf(f->cache_reason + l, sizeof(f->cache_reason) - l, "%snot stored: %s",
               l ? "; " : "", netstash_strerror(f->hc_commit));
    end_fetch(f, NETSTASH_OK); /* may start, end or flush others: one at a time */
  }
  /* lookups that waited for a commit look again (one whose entry is still
   * being stored waits again) */
  ns_list_init(&done);
  ns_list_splice_tail(&done, &tr->hop_waiting);
  while (!ns_list_empty(&done)) {
    netstash_fetch *f = ns_list_entry(done.next, netstash_fetch, await_node);
    ns_list_remove(&f->await_node);
    f->hop_wait = 0;
    start_hop(f); /* may start, end or flush others: one at a time */
  }
}

static void on_hc_timer(uv_timer_t *t) {
  hc_settle(t->data);
}

static void on_hc_check(uv_idle_t *h) {
  uv_idle_stop(h);
  hc_settle(h->data);
}

static void on_hc_done(netstash_ctx *ctx, ns_task *task) {
  (void)task;
  if (ctx->transport->hc_check_ok)
    hc_settle(ctx->transport);
}

void ns_transport_hc_notify(void *ud) {
  netstash_ctx *ctx = ud;
  (void)ns_ctx_post(ctx, &ctx->transport->hc_done); /* stopping: close settles */
}

/* RFC 9111 §3.4: a new piece (f's 206, its body in hc_body) that overlaps
 * or adjoins the stored piece under the same strong validator is stored as
 * their union — the new bytes where both have some — or, when that is all of
 * the representation, as the complete response (*status 200). Otherwise the
 * new piece is stored alone, as it came. */
static netstash_error combine_pieces(netstash_fetch *f, ns_headers *resp, int *status) {
  uint64_t a1, b1, n1, a2, b2, n2, lo, hi;
  ns_buf old, u;
  char v[80];
  netstash_error rv;
  if (!f->hce.found || f->hce.status != 206 || !ns_cache_piece(&f->hce.headers, &a1, &b1, &n1) ||
      !ns_cache_piece(resp, &a2, &b2, &n2) || n1 != n2 || f->hc_body.len != b2 - a2 + 1 ||
      a1 > b2 + 1 || a2 > b1 + 1 || !ns_cache_same_validator(&f->hce.headers, resp))
    return NETSTASH_OK;
  lo = NS_MIN(a1, a2);
  hi = NS_MAX(b1, b2);
  if (hi - lo + 1 > f->hc_body.max)
    return NETSTASH_OK; /* larger than the fetch keeps: the new piece alone */
  ns_buf_init(&old, &f->mem, (size_t)(b1 - a1 + 1));
  ns_buf_init(&u, &f->mem, f->hc_body.max);
  rv = ns_httpcache_serve_body(f->ctx->hc, &f->hce, 0, b1 - a1 + 1, piece_sink, &old);
  if (rv != NETSTASH_OK || old.len != b1 - a1 + 1) {
    ns_buf_free(&old);
    ns_buf_free(&u);
    return NETSTASH_OK; /* the stored piece went away: the new one alone */
  }
  rv = ns_buf_reserve(&u, (size_t)(hi - lo + 1));
  if (rv == NETSTASH_OK) {
    memcpy(u.data + (a1 - lo), old.data, old.len);
    memcpy(u.data + (a2 - lo), f->hc_body.data, f->hc_body.len);
    u.len = (size_t)(hi - lo + 1);
    ns_buf_free(&f->hc_body);
    f->hc_body = u;
    if (lo == 0 && hi + 1 == n1) {
      *status = 200;
      ns_headers_remove(resp, "Content-Range");
    } else {
      snprintf(v, sizeof(v), "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, lo, hi, n1);
      rv = ns_headers_set_str(resp, "Content-Range", v);
    }
    snprintf(v, sizeof(v), "%" PRIu64, hi - lo + 1);
    if (rv == NETSTASH_OK)
      rv = ns_headers_set_str(resp, "Content-Length", v);
  } else {
    ns_buf_free(&u);
  }
  ns_buf_free(&old);
  return rv;
}

/* 1 when the fetch must wait for the commit of its entry (final: the hop
 * ends the fetch; a redirect's entry is committed without waiting). */
static int cache_after_response(netstash_fetch *f, int final) {
  ns_httpcache *hc = f->ctx->hc;
  ns_headers resp;
  const char *why = NULL;
  const char *method = method_of(f);
  const char *top = f->req->top_level_site.url;
  int stored = 0, wait = 0, status = f->status;
  netstash_error rv;
  if (!hc || !f->hc_store) /* invalidation ran at the head (invalidate_at_head) */
    return 0;
  ns_headers_init(&resp, &f->mem);
  rv = head_as_headers(f, &resp);
  if (rv == NETSTASH_OK && f->status == 206)
    rv = combine_pieces(f, &resp, &status);
  if (rv == NETSTASH_OK) {
    f->hc_commit = NETSTASH_E_AGAIN;
    rv = ns_httpcache_store_buf(hc, top, f->cur.url, method, &f->hc_req, status, &resp, &f->hc_body,
                                f->req_time_ms, f->resp_time_ms, &stored, &why,
                                final ? &f->hc_commit : NULL);
    if (stored && final && f->hc_commit != NETSTASH_E_AGAIN)
      rv = f->hc_commit; /* committed already (unqueued, or a large queue) */
    if (rv == NETSTASH_OK && stored && final && f->hc_commit == NETSTASH_E_AGAIN &&
        f->ctx->transport->hc_check_ok) {
      wait = 1; /* the reason is written once the commit tells */
    } else if (rv == NETSTASH_OK) {
      size_t l = strlen(f->cache_reason);
      snprintf(f->cache_reason + l, sizeof(f->cache_reason) - l, "%s%s%s", l ? "; " : "",
               stored ? "stored" : "not stored: ", stored ? "" : (why ? why : "?"));
    }
  }
  if (rv != NETSTASH_OK) {
    /* the response is delivered all the same; the reason says why it is not
     * in the cache (a full disk, a busy or damaged store, no memory) */
    size_t l = strlen(f->cache_reason);
    snprintf(f->cache_reason + l, sizeof(f->cache_reason) - l, "%snot stored: %s", l ? "; " : "",
             netstash_strerror(rv));
    NS_WARN(f->ctx, MOD, "cache update for %s failed: %s", f->cur.url, netstash_strerror(rv));
  }
  ns_headers_free(&resp);
  ns_buf_free(&f->hc_body);
  if (wait) {
    f->hc_await = 1;
    ns_list_insert_tail(&f->ctx->transport->awaiting, &f->await_node);
  } else if (stored && final) {
    ns_httpcache_disown(hc, &f->hc_commit); /* not waited for */
  }
  if ((wait || ns_httpcache_pending(hc)) && f->ctx->transport->hc_check_ok)
    uv_idle_start(&f->ctx->transport->hc_check, on_hc_check);
  return wait;
}

/* RFC 9111 §4.3.5: a 200 to a HEAD that reached the origin freshens the
 * stored GET response it could have been answered from — its fields merged
 * as a 304's — when the validators it carries (ETag, Last-Modified) and its
 * Content-Length are the stored response's (head_matches); otherwise the
 * stored responses of that URL are dropped (the representation changed).
 * When the stored response is complete, the HEAD is then answered from it,
 * as after a 304: the stored fields the HEAD's 200 did not repeat are kept
 * (head_names_stored, at the head; the answer in hop_result). */
static int head_matches(const netstash_fetch *f, const ns_headers *h) {
  static const char *const same[] = {"etag", "last-modified", "content-length"};
  if (f->hce.status != 200 && f->hce.status != 206)
    return 0;
  for (size_t k = 0; k < NS_ARRAY_LEN(same); k++) {
    const char *nv = ns_headers_get(h, same[k]), *sv = ns_headers_get(&f->hce.headers, same[k]);
    if (nv && (!sv || strcmp(nv, sv) != 0))
      return 0;
  }
  return 1;
}

/* At the HEAD's head: answered from the stored complete response? */
static int head_names_stored(netstash_fetch *f) {
  ns_headers h;
  int match;
  ns_headers_init(&h, &f->mem);
  match = head_as_headers(f, &h) == NETSTASH_OK && f->hce.status == 200 && head_matches(f, &h);
  ns_headers_free(&h);
  return match;
}

static void head_freshen(netstash_fetch *f) {
  ns_headers h;
  netstash_error rv;
  int match = 0;
  size_t l;
  ns_headers_init(&h, &f->mem);
  rv = head_as_headers(f, &h);
  if (rv == NETSTASH_OK)
    match = head_matches(f, &h);
  if (rv == NETSTASH_OK)
    rv = match ? ns_httpcache_update_304(f->ctx->hc, &f->hce, &h, f->req_time_ms, f->resp_time_ms)
               : ns_httpcache_forget(f->ctx->hc, &f->hce);
  ns_headers_free(&h);
  l = strlen(f->cache_reason);
  if (rv != NETSTASH_OK)
    NS_WARN(f->ctx, MOD, "HEAD answer for %s not applied to the cache: %s", f->cur.url,
            netstash_strerror(rv));
  else
    snprintf(f->cache_reason + l, sizeof(f->cache_reason) - l, "%s%s", l ? "; " : "",
             match ? "the stored response freshened by the HEAD's 200 (RFC 9111 §4.3.5)"
                   : "the stored response dropped: the HEAD's 200 names another representation");
}

/* The hop is over: res is NETSTASH_OK for a complete response. */
static void hop_result(netstash_fetch *f, netstash_error res) {
  netstash_error err;
  if (f->hc_retry_whole) {
    /* the origin did not send the rest of a stored piece: the whole, anew */
    f->hc_retry_whole = 0;
    f->hc_no_complete = 1;
    f->fail = NETSTASH_OK;
    f->detail[0] = 0;
    release_easy(f);
    f->state = NS_FETCH_NEW;
    ns_h3_detach(f);
    reset_response(f);
    start_hop(f);
    return;
  }
  if (res == NETSTASH_OK && f->remote_err != NETSTASH_OK) {
    size_t l = strlen(f->detail);
    while (l && (f->detail[l - 1] == '\n' || f->detail[l - 1] == '\r'))
      f->detail[--l] = 0;
    end_fetch(f, f->remote_err);
    return;
  }
  if (res == NETSTASH_OK && f->hc_got_304) {
    ns_headers h304;
    ns_cache_stored st = {f->hce.status,          &f->hce.headers,         &f->hce.vary,
                          f->hce.request_time_ms, f->hce.response_time_ms, NULL};
    ns_headers_init(&h304, &f->mem);
    err = head_as_headers(f, &h304);
    if (err == NETSTASH_OK && ns_cache_304_matches(&st, &h304))
      err = ns_httpcache_update_304(f->ctx->hc, &f->hce, &h304, f->req_time_ms,
                                    f->resp_time_ms);
    ns_headers_free(&h304);
    if (err != NETSTASH_OK)
      NS_WARN(f->ctx, MOD, "304 for %s not applied: %s", f->cur.url, netstash_strerror(err));
    snprintf(f->cache_reason, sizeof(f->cache_reason), "revalidated (304): %s",
             f->hce.decision.reason);
    serve_stored(f, NETSTASH_SOURCE_REVALIDATED); /* the caller's validators, Range */
    return;
  }
  if (res == NETSTASH_OK && f->hc_head_200) {
    head_freshen(f);                              /* adds to the reason */
    serve_stored(f, NETSTASH_SOURCE_REVALIDATED); /* the stored fields, freshened */
    return;
  }
  if (f->hc_validating && f->hce.decision.stale_if_error &&
      (f->hc_sie || res != NETSTASH_OK)) {
    snprintf(f->cache_reason, sizeof(f->cache_reason), "stale-if-error (%s): %s",
             f->hc_sie ? "server error" : "network error", f->hce.decision.reason);
    serve_stored(f, NETSTASH_SOURCE_CACHE);
    return;
  }
  if (res == NETSTASH_OK) {
    if (f->redirecting) {
      (void)cache_after_response(f, 0); /* a permanent redirect is cacheable too */
      follow_redirect(f);
      return;
    }
    if (!f->head_delivered)
      deliver_head(f);
    if (f->dec && f->wire_bytes > 0) {
      err = ns_decoder_finish(f->dec, deliver, f);
      if (err != NETSTASH_OK) {
        if (!f->detail[0])
          ns_fetch_detail(f, "%s body: %s",
                   err == NETSTASH_E_TRUNCATED ? "truncated compressed" : "undecodable",
                   netstash_strerror(err));
        end_fetch(f, err);
        return;
      }
    }
    if (head_200_for_stored(f))
      head_freshen(f);
    if (!cache_after_response(f, 1))
      end_fetch(f, NETSTASH_OK);
    else /* the transfer is over: its handle and buffers do not wait for the commit */
      release_easy(f);
    return;
  }
  end_fetch(f, res);
}

static void start_net(netstash_fetch *f);

/* A GET or HEAD sent on a reused connection that the peer had closed
 * meanwhile (an HTTP/2 server dropping the connection after a stream error,
 * a keep-alive timeout racing the request) fails before any byte of an
 * answer. As Chromium does for idempotent requests, it is sent once more on
 * a new connection. Returns 1 when the hop was restarted. */
static int retry_fresh(netstash_fetch *f, CURLcode res) {
  ns_transport *tr = f->ctx->transport;
  const char *m = method_of(f);
  long nconn = -1;
  if (f->retried_fresh || f->fail != NETSTASH_OK || f->status != 0 || f->wire_bytes > 0 ||
      f->req->has_body || f->req->body_cb || (strcmp(m, "GET") != 0 && strcmp(m, "HEAD") != 0))
    return 0;
  /* libcurl 7.88 reports an HTTP/2 stream whose connection ended as
   * CURLE_PARTIAL_FILE, even before its HEADERS */
  if (res != CURLE_SEND_ERROR && res != CURLE_RECV_ERROR && res != CURLE_GOT_NOTHING &&
      res != CURLE_HTTP2 && res != CURLE_HTTP2_STREAM && res != CURLE_PARTIAL_FILE)
    return 0;
  if (curl_easy_getinfo(f->easy, CURLINFO_NUM_CONNECTS, &nconn) != CURLE_OK || nconn != 0)
    return 0; /* the connection was new: the server itself failed */
  NS_INFO(f->ctx, MOD, "%s failed on a reused connection (%s): once more on a new one",
          f->cur.url, f->errbuf[0] ? f->errbuf : curl_easy_strerror(res));
  f->retried_fresh = 1;
  curl_multi_remove_handle(tr->multi, f->easy);
  f->state = NS_FETCH_NEW;
  f->errbuf[0] = 0;
  reset_response(f);
  curl_slist_free_all(f->resolve_list);
  f->resolve_list = NULL;
  curl_easy_setopt(f->easy, CURLOPT_RESOLVE, NULL);
  curl_easy_setopt(f->easy, CURLOPT_FRESH_CONNECT, 1L);
  start_net(f);
  return 1;
}

static void hop_done(netstash_fetch *f, CURLcode res) {
  netstash_error err = NETSTASH_OK;
  hop_timings(f);
  if (res != CURLE_OK && retry_fresh(f, res))
    return;
  if (res != CURLE_OK || f->fail != NETSTASH_OK) {
    err = f->fail != NETSTASH_OK ? f->fail : map_error(f, res);
    if (!f->detail[0])
      ns_fetch_detail(f, "%s (%s:%d)", f->errbuf[0] ? f->errbuf : curl_easy_strerror(res),
                      f->cur.host, f->cur.port);
  }
  hop_result(f, err);
}

void ns_hop_end(netstash_fetch *f, netstash_error err) {
  if (err == NETSTASH_OK && f->fail != NETSTASH_OK)
    err = f->fail;
  if (err != NETSTASH_OK && !f->detail[0])
    ns_fetch_detail(f, "%s over HTTP/3 (%s:%d)", netstash_strerror(err), f->cur.host,
                    f->cur.port);
  hop_result(f, err);
}

static void check_done(ns_transport *tr) {
  CURLMsg *msg;
  int left;
  while ((msg = curl_multi_info_read(tr->multi, &left))) {
    netstash_fetch *f = NULL;
    if (msg->msg != CURLMSG_DONE)
      continue;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&f);
    if (f)
      hop_done(f, msg->data.result);
  }
  if (tr->sock_nomem) { /* sock_cb could not watch a socket */
    ns_list *pos, *tmp;
    tr->sock_nomem = 0;
    ns_list_foreach_safe(pos, tmp, &tr->fetches) {
      netstash_fetch *f = ns_list_entry(pos, netstash_fetch, node);
      if (f->sock_nomem) {
        ns_fetch_detail(f, "out of memory watching the connection's socket");
        end_fetch(f, NETSTASH_E_NOMEM);
      }
    }
  }
}

static void add_to_multi(netstash_fetch *f) {
  ns_transport *tr = f->ctx->transport;
  CURLMcode mc;
  curl_easy_setopt(f->easy, CURLOPT_URL, f->cur.url);

  if (f->ctx->cfg.hsts)
    hsts_setup(tr, f->easy); /* the first transfer that reaches libcurl */
  f->errbuf[0] = 0;
  f->t_added = ns_now_us();
  f->req_time_ms = wall_ms();
  f->state = NS_FETCH_ACTIVE;
  mc = curl_multi_add_handle(tr->multi, f->easy);
  if (mc != CURLM_OK) {
    f->state = NS_FETCH_NEW;
    ns_fetch_detail(f, "curl_multi_add_handle: %s",
             curl_multi_strerror(mc));
    end_fetch(f, mc == CURLM_OUT_OF_MEMORY ? NETSTASH_E_NOMEM : NETSTASH_E_INTERNAL);
  }
}

static netstash_error append_resolve(netstash_fetch *f, const char *host, int port,
                                     const ns_dns_result *res) {
  ns_buf b;
  size_t i;
  netstash_error rv;
  struct curl_slist *l;
  ns_buf_init(&b, &f->mem, 8192);
  rv = ns_buf_printf(&b, "%s:%d:", host, port);
  for (i = 0; rv == NETSTASH_OK && i < res->naddrs; i++) {
    int v6 = strchr(res->addrs[i], ':') != NULL;
    rv = ns_buf_printf(&b, "%s%s%s%s", i ? "," : "", v6 ? "[" : "", res->addrs[i],
                       v6 ? "]" : "");
  }
  if (rv == NETSTASH_OK) {
    l = curl_slist_append(f->resolve_list, ns_buf_str(&b));
    if (!l)
      rv = NETSTASH_E_NOMEM;
    else
      f->resolve_list = l;
  }
  ns_buf_free(&b);
  return rv;
}

static void on_dns(void *ud, netstash_error err, const ns_dns_result *res,
                   const char *detail) {
  netstash_fetch *f = ud;
  f->dnsq = NULL;
  f->dns_us += ns_now_us() - f->t_added;
  if (err != NETSTASH_OK) {
    ns_fetch_detail(f, "cannot resolve %s: %s", f->cur.host,
             detail && detail[0] ? detail : netstash_strerror(err));
    end_fetch(f, err);
    return;
  }
  if (res->naddrs == 0) {
    ns_fetch_detail(f, "%s has no addresses", f->cur.host);
    end_fetch(f, NETSTASH_E_DNS_NOT_FOUND);
    return;
  }
  err = append_resolve(f, f->cur.host, f->cur.port, res);
  /* An HSTS upgrade may move an http:// request to port 443. */
  if (err == NETSTASH_OK && f->ctx->cfg.hsts && strcmp(f->cur.scheme, "http") == 0 &&
      f->cur.port != 443)
    err = append_resolve(f, f->cur.host, 443, res);
  if (err != NETSTASH_OK) {
    end_fetch(f, err);
    return;
  }
  curl_easy_setopt(f->easy, CURLOPT_RESOLVE, f->resolve_list);
  add_to_multi(f);
}

/* ------------------------------------------------------------ HTTP/3 routing */

#define ALTSVC_SLOTS 64
#define ALTSVC_RECHECK_MS 10000 /* an origin without Alt-Svc: store re-read */

/* What the transport knows of one origin's h3 alternative (memory; the
 * store is read once per origin and written only when the answer changes
 * or its lifetime grows by more than half: caddy sends Alt-Svc on every
 * response, and a write per response would cost a commit each). */
struct ns_altsvc_mem {
  struct {
    char host[256];
    int port;
    int has;            /* alt holds an h3 alternative */
    int other_ok;       /* alt names another host, and the origin's certificate
                           on this context's connection is valid for it */
    ns_altsvc alt;
    int64_t recheck_ms; /* !has: store re-read after this */
    int64_t saved_ms;   /* expiry last written to the store */
    uint64_t used;
  } slot[ALTSVC_SLOTS];
  uint64_t clock;
};

static int altsvc_slot(ns_transport *tr, const char *host, int port, int create) {
  struct ns_altsvc_mem *m = tr->altsvc_mem;
  int i, victim = 0;
  for (i = 0; i < ALTSVC_SLOTS; i++) {
    if (m->slot[i].port == port && ns_ascii_casecmp(m->slot[i].host, host) == 0) {
      m->slot[i].used = ++m->clock;
      return i;
    }
    if (m->slot[i].used < m->slot[victim].used)
      victim = i;
  }
  if (!create || strlen(host) >= sizeof(m->slot[0].host))
    return -1;
  memset(&m->slot[victim], 0, sizeof(m->slot[victim]));
  snprintf(m->slot[victim].host, sizeof(m->slot[victim].host), "%s", host);
  m->slot[victim].port = port;
  m->slot[victim].used = ++m->clock;
  return victim;
}

/* The unexpired h3 alternative of the fetch's origin, if any; *other_ok as
 * in the slot (an alternative read back from the store has 0). */
static int altsvc_find(netstash_fetch *f, ns_altsvc *out, int *other_ok) {
  ns_transport *tr = f->ctx->transport;
  struct ns_altsvc_mem *m = tr->altsvc_mem;
  int64_t now = wall_ms();
  int i = altsvc_slot(tr, f->cur.host, f->cur.port, 1);
  if (i < 0)
    return 0;
  if (m->slot[i].has && m->slot[i].alt.expires_ms <= now)
    m->slot[i].has = 0;
  if (!m->slot[i].has && f->ctx->store && now >= m->slot[i].recheck_ms) {
    if (ns_altsvc_lookup(f->ctx->store, f->cur.host, f->cur.port, now, &m->slot[i].alt) ==
        NETSTASH_OK) {
      m->slot[i].has = 1;
      m->slot[i].other_ok = 0;
      m->slot[i].saved_ms = m->slot[i].alt.expires_ms;
    } else {
      m->slot[i].recheck_ms = now + ALTSVC_RECHECK_MS;
    }
  }
  if (!m->slot[i].has)
    return 0;
  *out = m->slot[i].alt;
  *other_ok = m->slot[i].other_ok;
  return 1;
}

/* May an alternative naming another host serve this origin? Only when the
 * certificate the origin presented on this response's TLS connection (TCP,
 * verified by OpenSSL) is valid for that name too: the same operator — and an
 * origin cannot aim clients' QUIC packets at hosts it holds no certificate
 * for (localhost, the LAN). The h3 connection then verifies the origin's own
 * name, as always. 1 yes, 0 no, -1 cannot tell here (a response over h3). */
static int altsvc_other_ok(netstash_fetch *f, const ns_altsvc *a) {
  struct curl_tlssessioninfo *info = NULL;
  X509 *cert;
  if (f->h3s || !f->easy)
    return -1;
  if (curl_easy_getinfo(f->easy, CURLINFO_TLS_SSL_PTR, &info) != CURLE_OK || !info ||
      info->backend != CURLSSLBACKEND_OPENSSL || !info->internals ||
      !(cert = SSL_get0_peer_certificate(info->internals)))
    return 0;
  if (ns_host_is_ip(a->host, NULL))
    return X509_check_ip_asc(cert, a->host, 0) == 1;
  return X509_check_host(cert, a->host, strlen(a->host), X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS,
                         NULL) == 1;
}

/* An Alt-Svc field on an https response (RFC 7838 §3): remembered. */
static void note_altsvc(netstash_fetch *f) {
  ns_transport *tr = f->ctx->transport;
  struct ns_altsvc_mem *m = tr->altsvc_mem;
  const char *v;
  ns_altsvc alts[4];
  int clear = 0, n, i, k, changed, other_ok = 0;
  int64_t now;
  if (!tr->h3 || !f->ctx->cfg.http3 || strcmp(f->cur.scheme, "https") != 0 ||
      !(v = netstash_fetch_header(f, "alt-svc")))
    return;
  now = wall_ms();
  n = ns_altsvc_parse(v, strlen(v), now, alts, 4, &clear);
  if (n < 0 || (i = altsvc_slot(tr, f->cur.host, f->cur.port, 1)) < 0)
    return;
  /* the first alternative this client may use: on the origin's host, or on
   * another host its certificate covers */
  for (k = 0; k < n; k++) {
    int ok;
    if (!alts[k].host[0] || ns_ascii_casecmp(alts[k].host, f->cur.host) == 0)
      break;
    ok = altsvc_other_ok(f, &alts[k]);
    if (ok < 0)
      return; /* over h3: what TCP established stays */
    if (ok) {
      other_ok = 1;
      break;
    }
  }
  if (n > 0 && k == n) {
    NS_DEBUG(f->ctx, MOD, "Alt-Svc of %s names only hosts its certificate does not cover: ignored",
             f->cur.host);
    if (!m->slot[i].has)
      return;
    n = 0; /* what it replaces is gone (RFC 7838 §3) */
  }
  if (clear || n == 0) {
    changed = 1; /* rare; the store may hold it though this context never read it */
    m->slot[i].has = 0;
    m->slot[i].saved_ms = 0;
    m->slot[i].recheck_ms = INT64_MAX; /* cleared: no store read either */
  } else {
    changed = !m->slot[i].has || m->slot[i].alt.port != alts[k].port ||
              strcmp(m->slot[i].alt.host, alts[k].host) != 0 ||
              alts[k].expires_ms - m->slot[i].saved_ms > (alts[k].expires_ms - now) / 2;
    m->slot[i].alt = alts[k];
    m->slot[i].has = 1;
    m->slot[i].other_ok = other_ok;
  }
  if (changed && f->ctx->store) {
    /* only the alternative chosen; one on another host is read back with
     * other_ok 0 (unused until a response over TCP vouches for it again) */
    netstash_error rv = ns_altsvc_save(f->ctx->store, f->cur.host, f->cur.port,
                                       n > 0 ? &alts[k] : alts, n > 0 ? 1 : 0, clear);
    if (rv != NETSTASH_OK)
      NS_WARN(f->ctx, MOD, "Alt-Svc for %s not saved: %s", f->cur.host, netstash_strerror(rv));
    else if (m->slot[i].has)
      m->slot[i].saved_ms = m->slot[i].alt.expires_ms;
  }
}

void ns_hop_h3_conn_status(netstash_ctx *ctx, const char *host, int port, int ok) {
  ns_transport *tr = ctx->transport;
  if (!tr || !tr->h3_broken)
    return;
  if (ok)
    ns_altsvc_confirm(tr->h3_broken, host, port);
  else
    ns_altsvc_mark_broken(tr->h3_broken, host, port, wall_ms());
}

const char *ns_hop_method(const netstash_fetch *f) { return method_of(f); }

static int hdr_skip(const char *name, size_t len) {
  static const char *const drop[] = {"connection", "keep-alive", "proxy-connection",
                                     "transfer-encoding", "upgrade", "host"};
  for (size_t i = 0; i < sizeof(drop) / sizeof(drop[0]); i++)
    if (strlen(drop[i]) == len && ns_ascii_casecmp_n(name, drop[i], len) == 0)
      return 1;
  return 0;
}

void ns_hop_request_fields(netstash_fetch *f, const char *scheme, int with_priority,
                           ns_hop_fields *out) {
  const char *url = f->cur.url, *p, *path, *method = ns_hop_method(f);
  const char *ua = ns_hop_user_agent(f);
  const char *host = f->cur.host;
  int v6 = strchr(host, ':') != NULL, has_ua = 0, has_cl = 0;
  size_t n = 0;
  struct curl_slist *l;
#define FIELD(nm, nl, v, vl)                                                   \
  do {                                                                         \
    out->f[n].name = (nm);                                                     \
    out->f[n].nlen = (nl);                                                     \
    out->f[n].value = (v);                                                     \
    out->f[n].vlen = (vl);                                                     \
    n++;                                                                       \
  } while (0)
  if (f->cur.port == (strcmp(f->cur.scheme, "https") == 0 ? 443 : 80))
    snprintf(out->authority, sizeof(out->authority), "%s%s%s", v6 ? "[" : "", host,
             v6 ? "]" : "");
  else
    snprintf(out->authority, sizeof(out->authority), "%s%s%s:%d", v6 ? "[" : "", host,
             v6 ? "]" : "", f->cur.port);
  /* :path from the normalised URL (libcurl's: "https://h?q" became
   * "https://h/?q"): path and query, never the fragment */
  p = strstr(url, "://");
  path = strchr(p ? p + 3 : url, '/');
  if (!path)
    path = "/";
  FIELD(":method", 7, method, strlen(method));
  FIELD(":scheme", 7, scheme, strlen(scheme));
  FIELD(":authority", 10, out->authority, strlen(out->authority));
  FIELD(":path", 5, path, strcspn(path, "#"));
  /* room kept for user-agent, content-length and priority */
  for (l = f->hdr_list; l && n < NS_HOP_MAX_FIELDS - 3; l = l->next) {
    const char *line = l->data, *colon = strchr(line, ':'), *v;
    size_t nl, vl, i;
    if (!colon || colon == line)
      continue;
    nl = (size_t)(colon - line);
    if (nl >= sizeof(out->lower[0]) || hdr_skip(line, nl))
      continue;
    v = colon + 1;
    while (*v == ' ' || *v == '\t')
      v++;
    vl = strlen(v);
    while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
      vl--;
    if (!vl)
      continue; /* "Name:" removes a header for libcurl */
    for (i = 0; i < nl; i++)
      out->lower[n][i] = ns_ascii_lower(line[i]);
    out->lower[n][nl] = 0;
    if (strcmp(out->lower[n], "user-agent") == 0)
      has_ua = 1;
    if (strcmp(out->lower[n], "content-length") == 0)
      has_cl = 1;
    if (strcmp(out->lower[n], "te") == 0 &&
        !(vl == 8 && ns_ascii_casecmp_n(v, "trailers", 8) == 0))
      continue;
    FIELD(out->lower[n], nl, v, vl);
  }
  if (!has_ua && ua)
    FIELD("user-agent", 10, ua, strlen(ua));
  if (!has_cl && !f->hop_get && strcmp(method, "HEAD") != 0 &&
      (f->req->has_body || (f->req->body_cb && f->req->body_total != UINT64_MAX))) {
    /* the length of a body known up front (RFC 9114 §4.1.2 lets it be
     * absent, but servers and their upstreams read it) */
    snprintf(out->clen, sizeof(out->clen), "%llu",
             (unsigned long long)(f->req->body_cb ? f->req->body_total : f->req->body_len));
    FIELD("content-length", 14, out->clen, strlen(out->clen));
  }
  if (with_priority) {
    /* RFC 9218 urgency from the request priority (0 lowest .. 4 highest) */
    static const int urg[] = {6, 5, 3, 2, 0};
    int pr = (int)f->req->priority;
    if (pr < 0 || pr > 4)
      pr = 2;
    snprintf(out->prio, sizeof(out->prio), "u=%d", urg[pr]);
    if (urg[pr] != 3)
      FIELD("priority", 8, out->prio, strlen(out->prio));
  }
#undef FIELD
  out->n = n;
}

const char *ns_hop_user_agent(const netstash_fetch *f) {
  const ns_config *cfg = &f->ctx->cfg;
  return cfg->user_agent ? cfg->user_agent : f->ctx->transport->user_agent;
}

static void start_net(netstash_fetch *f);

/* The first address of a pin "host:port:addr[,addr]" or of a DNS answer. */
static void first_addr(const char *list, char *out, size_t cap) {
  size_t n;
  if (*list == '[')
    list++;
  n = strcspn(list, "],");
  if (n >= cap)
    n = cap - 1;
  memcpy(out, list, n);
  out[n] = 0;
}

static void h3_go(netstash_fetch *f, const char *addr) {
  ns_transport *tr = f->ctx->transport;
  ns_h3_target t = {f->cur.host, f->cur.port, addr, f->h3_port};
  netstash_error rv;
  rv = ns_h3_start(tr->h3, f, &t, f->h3_plan == 2 ? 0 : f->ctx->cfg.h3_race_ms);
  if (rv == NETSTASH_OK) {
    f->state = NS_FETCH_ACTIVE;
    return;
  }
  if (f->h3_plan == 2) {
    end_fetch(f, rv);
    return;
  }
  NS_DEBUG(f->ctx, MOD, "h3 to %s not started (%s): TCP", f->cur.host, f->detail);
  f->detail[0] = 0;
  f->h3_tried = 1;
  start_net(f);
}

void ns_hop_h3_fallback(netstash_fetch *f, int why) {
  NS_DEBUG(f->ctx, MOD, "h3 to %s %s: TCP", f->cur.host,
           why == NS_H3_FB_SLOW ? "still handshaking" : "failed");
  f->detail[0] = 0;
  f->h3_tried = 1;
  start_net(f);
}

static void on_dns_h3(void *ud, netstash_error err, const ns_dns_result *res,
                      const char *detail) {
  netstash_fetch *f = ud;
  char addr[64];
  f->dnsq = NULL;
  f->dns_us += ns_now_us() - f->t_added;
  if (err != NETSTASH_OK || res->naddrs == 0) {
    if (f->h3_plan == 1) {
      f->h3_tried = 1;
      start_net(f);
      return;
    }
    ns_fetch_detail(f, "cannot resolve %s: %s", f->h3_host ? f->h3_host : f->cur.host,
                    err != NETSTASH_OK && detail && detail[0] ? detail
                                                              : netstash_strerror(err));
    end_fetch(f, err != NETSTASH_OK ? err : NETSTASH_E_DNS_NOT_FOUND);
    return;
  }
  first_addr(res->addrs[0], addr, sizeof(addr));
  h3_go(f, addr);
}

/* 2: h3 forced by the request; 1: h3 offered by Alt-Svc, may fall back;
 * 0: TCP. Sets f->h3_port. */
static int h3_plan(netstash_fetch *f) {
  ns_transport *tr = f->ctx->transport;
  ns_altsvc alt;
  int other_ok = 0;
  f->h3_port = f->cur.port;
  ns_free(&f->mem, f->h3_host);
  f->h3_host = NULL;
  if (!tr->h3 || f->h3_tried || strcmp(f->cur.scheme, "https") != 0)
    return 0;
  if (f->req->http_version == NETSTASH_HTTP_3)
    return 2;
  if (f->req->http_version != NETSTASH_HTTP_ANY || !f->ctx->cfg.http3)
    return 0;
  if (ns_altsvc_is_broken(tr->h3_broken, f->cur.host, f->cur.port, wall_ms()))
    return 0;
  if (!altsvc_find(f, &alt, &other_ok))
    return 0;
  if (alt.host[0] && ns_ascii_casecmp(alt.host, f->cur.host) != 0) {
    if (!other_ok || !(f->h3_host = ns_strdup(&f->mem, alt.host)))
      return 0; /* not vouched for by the origin's certificate (altsvc_other_ok) */
  }
  f->h3_port = alt.port;
  return 1;
}

static void start_hop(netstash_fetch *f) {
  if (is_remote(f)) {
    /* netd routes: preload, cache, network */
    netstash_error rv = ns_remote_start(f->ctx->transport->remote, f);
    if (rv != NETSTASH_OK)
      end_fetch(f, rv);
    else
      f->state = NS_FETCH_ACTIVE;
    return;
  }
  if (cache_consult(f))
    return; /* answered (or failed, or redirected) from the cache */
  f->h3_tried = 0;
  start_net(f);
}

static void start_net(netstash_fetch *f) {
  ns_transport *tr = f->ctx->transport;
  netstash_error rv;
  size_t i;
  const char *host = f->cur.host;
  size_t hl = strlen(host);
  char addr[64];

  if (!f->easy && (rv = setup_easy(f)) != NETSTASH_OK) {
    ns_fetch_detail(f, "cannot set up the transfer: %s", netstash_strerror(rv));
    end_fetch(f, rv);
    return;
  }
  f->h3_plan = h3_plan(f);
  if (f->h3_plan) {
    /* the alternative's host (Alt-Svc naming another one), else the origin's */
    const char *qhost = f->h3_host ? f->h3_host : host;
    size_t ql = strlen(qhost);
    /* A pin for the UDP port, else for the origin's port (same host only). */
    for (int pass = 0; pass < (f->h3_host ? 1 : 2); pass++) {
      int want = pass ? f->cur.port : f->h3_port;
      for (i = 0; i < f->req->nresolve; i++) {
        const char *e = f->req->resolve[i];
        const char *rest;
        if (ns_ascii_casecmp_n(e, qhost, ql) != 0 || e[ql] != ':' ||
            (int)strtol(e + ql + 1, NULL, 10) != want)
          continue;
        rest = strchr(e + ql + 1, ':');
        if (rest) {
          first_addr(rest + 1, addr, sizeof(addr));
          h3_go(f, addr);
          return;
        }
      }
    }
    if (f->h3_host ? ns_host_is_ip(qhost, NULL) : f->cur.host_is_ip) {
      h3_go(f, qhost);
      return;
    }
    f->state = NS_FETCH_DNS;
    f->t_added = ns_now_us();
    rv = ns_dns_resolve(tr->ctx->dns, qhost, on_dns_h3, f, &f->dnsq);
    if (rv != NETSTASH_OK) {
      f->dnsq = NULL;
      ns_fetch_detail(f, "cannot resolve %s: %s", qhost, netstash_strerror(rv));
      end_fetch(f, rv);
    }
    return;
  }
  if (f->req->http_version == NETSTASH_HTTP_3) {
    ns_fetch_detail(f, "HTTP/3 needs https (%s)", f->cur.url);
    end_fetch(f, NETSTASH_E_UNSUPPORTED);
    return;
  }
  curl_slist_free_all(f->resolve_list);
  f->resolve_list = NULL;
  curl_easy_setopt(f->easy, CURLOPT_RESOLVE, NULL);

  /* Pinned by the caller (curl --resolve style) for this host and port? */
  for (i = 0; i < f->req->nresolve; i++) {
    const char *e = f->req->resolve[i];
    if (ns_ascii_casecmp_n(e, host, hl) == 0 && e[hl] == ':' &&
        (int)strtol(e + hl + 1, NULL, 10) == f->cur.port) {
      struct curl_slist *l = NULL;
      size_t j;
      for (j = 0; j < f->req->nresolve; j++) {
        struct curl_slist *nl = curl_slist_append(l, f->req->resolve[j]);
        if (!nl) {
          curl_slist_free_all(l);
          end_fetch(f, NETSTASH_E_NOMEM);
          return;
        }
        l = nl;
      }
      f->resolve_list = l;
      curl_easy_setopt(f->easy, CURLOPT_RESOLVE, f->resolve_list);
      add_to_multi(f);
      return;
    }
  }
  if (f->cur.host_is_ip) {
    add_to_multi(f);
    return;
  }
  f->state = NS_FETCH_DNS;
  f->t_added = ns_now_us();
  rv = ns_dns_resolve(tr->ctx->dns, host, on_dns, f, &f->dnsq);
  if (rv != NETSTASH_OK) {
    f->dnsq = NULL;
    ns_fetch_detail(f, "cannot resolve %s: %s", host,
             netstash_strerror(rv));
    end_fetch(f, rv);
  }
}

/* Feeds the profile's stored HSTS entries to libcurl's (shared) engine, once
 * per context, on its first transfer. */
static CURLSTScode hsts_read_cb(CURL *e, struct curl_hstsentry *sts, void *ud) {
  ns_transport *tr = ud;
  const ns_hsts_entry *h;
  time_t t;
  struct tm tm;
  size_t hl;
  (void)e;
  if (tr->hsts_next >= tr->nhsts) {
    ns_free(&tr->ctx->mem, tr->hsts);
    tr->hsts = NULL;
    tr->nhsts = tr->hsts_next = 0;
    return CURLSTS_DONE;
  }
  h = &tr->hsts[tr->hsts_next++];
  hl = strlen(h->host);
  if (hl + 1 > sts->namelen)
    return hsts_read_cb(e, sts, ud); /* does not fit: skip it */
  memcpy(sts->name, h->host, hl + 1);
  sts->includeSubDomains = h->include_subdomains ? 1 : 0;
  t = (time_t)(h->expires_ms / 1000);
  gmtime_r(&t, &tm);
  strftime(sts->expire, sizeof(sts->expire), "%Y%m%d %H:%M:%S", &tm);
  return CURLSTS_OK;
}

static void hsts_setup(ns_transport *tr, CURL *e) {
  enum { HSTS_MAX = 4096 };
  netstash_error rv;
  if (tr->hsts_loaded || !tr->ctx->store)
    return;
  tr->hsts_loaded = 1;
  tr->hsts = ns_calloc(&tr->ctx->mem, HSTS_MAX, sizeof(*tr->hsts));
  if (!tr->hsts)
    return;
  rv = ns_hsts_load(tr->ctx->store, &tr->ctx->mem, wall_ms(), tr->hsts,
                    HSTS_MAX, &tr->nhsts);
  if (rv != NETSTASH_OK || tr->nhsts == 0) {
    if (rv != NETSTASH_OK)
      NS_WARN(tr->ctx, MOD, "stored HSTS entries not loaded: %s", netstash_strerror(rv));
    ns_free(&tr->ctx->mem, tr->hsts);
    tr->hsts = NULL;
    tr->nhsts = 0;
    return;
  }
  curl_easy_setopt(e, CURLOPT_HSTSREADFUNCTION, hsts_read_cb);
  curl_easy_setopt(e, CURLOPT_HSTSREADDATA, tr);
}

/* libcurl's own trace, routed to the context's log hook at TRACE level. */
static int debug_cb(CURL *e, curl_infotype type, char *data, size_t size, void *ud) {
  netstash_fetch *f = ud;
  (void)e;
  if (type == CURLINFO_TEXT) {
    while (size && (data[size - 1] == '\n' || data[size - 1] == '\r'))
      size--;
    NS_TRACE(f->ctx, "curl", "[%p] %.*s", (void *)f, (int)NS_MIN(size, (size_t)400), data);
  }
  return 0;
}

/* ------------------------------------------------------------ cookies */

/* The cookie context of the current hop. Unset site-for-cookies means a
 * browser-initiated top-level navigation: each hop is its own site. */
static void cookie_request(const netstash_fetch *f, ns_cookie_request *cr) {
  const netstash_request *req = f->req;
  memset(cr, 0, sizeof(*cr));
  cr->url = &f->cur;
  if (req->sfc_set) {
    cr->site_for_cookies = req->site_for_cookies.url ? &req->site_for_cookies : NULL;
    cr->top_level_navigation = req->top_level_navigation;
  } else {
    cr->site_for_cookies = &f->cur;
    cr->top_level_navigation = 1;
  }
  cr->initiator = req->initiator.url ? &req->initiator : NULL;
  cr->top_level_site = req->top_level_site.url ? &req->top_level_site : NULL;
  cr->method = method_of(f);
}

static ns_cookie_jar *cookie_jar(netstash_fetch *f) {
  ns_cookie_jar *jar = NULL;
  const char *name = f->req->jar ? f->req->jar : "default";
  netstash_error rv;
  if (f->req->no_cookies || !f->ctx->cookies)
    return NULL;
  jar = ns_cookie_jars_get(f->ctx->cookies, name);
  if (jar)
    return jar;
  rv = ns_cookie_jars_open(f->ctx->cookies, name, 0, wall_ms(), &jar);
  if (rv != NETSTASH_OK) {
    NS_WARN(f->ctx, MOD, "cookie jar \"%s\" unavailable: %s", name, netstash_strerror(rv));
    return NULL;
  }
  return jar;
}

/* Appends "Cookie: ..." for the current hop. */
static netstash_error add_cookie_header(netstash_fetch *f) {
  ns_cookie_jar *jar;
  ns_cookie_request cr;
  ns_buf b;
  netstash_error rv = NETSTASH_OK;
  struct curl_slist *l;
  if (f->req->has_cookie_header || f->req->no_cookies)
    return NETSTASH_OK;
  uv_mutex_lock(&f->ctx->cookie_lock);
  jar = cookie_jar(f);
  if (jar) {
    cookie_request(f, &cr);
    ns_buf_init(&b, &f->mem, 64 * 1024);
    rv = ns_buf_append_str(&b, "Cookie: ");
    if (rv == NETSTASH_OK)
      rv = ns_cookie_jar_header(jar, &cr, wall_ms(), &b);
    if (rv == NETSTASH_OK && b.len > 8) {
      l = curl_slist_append(f->hdr_list, ns_buf_str(&b));
      if (!l)
        rv = NETSTASH_E_NOMEM;
      else
        f->hdr_list = l;
    }
    ns_buf_free(&b);
  }
  uv_mutex_unlock(&f->ctx->cookie_lock);
  return rv == NETSTASH_E_TOO_LARGE ? NETSTASH_OK : rv;
}

/* Set-Cookie lines of the head just received go to the jar (every final,
 * redirect and 304 head: RFC 6265bis §5.7 applies to all of them). */
static void store_cookies(netstash_fetch *f) {
  ns_cookie_jar *jar;
  ns_cookie_request cr;
  int64_t now = wall_ms();
  size_t i;
  if (f->req->no_cookies)
    return;
  for (i = 0; i < f->nhdrs; i++)
    if (strcmp((const char *)f->hdr_arena.data + f->hdrs[i].name_off, "set-cookie") == 0)
      break;
  if (i == f->nhdrs)
    return;
  uv_mutex_lock(&f->ctx->cookie_lock);
  jar = cookie_jar(f);
  if (jar) {
    cookie_request(f, &cr);
    for (; i < f->nhdrs; i++) {
      const char *n = (const char *)f->hdr_arena.data + f->hdrs[i].name_off;
      const char *v = (const char *)f->hdr_arena.data + f->hdrs[i].value_off;
      ns_cookie_status st;
      if (strcmp(n, "set-cookie") != 0)
        continue;
      if (ns_cookie_jar_set(jar, &cr, v, strlen(v), now, &st) == NETSTASH_OK &&
          st != NS_COOKIE_STORED && st != NS_COOKIE_DELETED)
        NS_DEBUG(f->ctx, MOD, "cookie from %s rejected: %s", f->cur.host, ns_cookie_status_text(st));
    }
  }
  uv_mutex_unlock(&f->ctx->cookie_lock);
}

/* The request's header lines for libcurl (rebuilt per hop: validators of a
 * revalidation are added to it by the cache). */
/* Remote mode: the request's browser-level attributes for netd, as
 * x-netstash-* fields (netd/ipc.c reads them). */
static netstash_error remote_attrs(netstash_fetch *f) {
  const netstash_request *r = f->req;
  char line[1200];
  struct curl_slist *l;
#define ADD(...)                                                               \
  do {                                                                         \
    snprintf(line, sizeof(line), __VA_ARGS__);                                 \
    if (!(l = curl_slist_append(f->hdr_list, line)))                           \
      return NETSTASH_E_NOMEM;                                                 \
    f->hdr_list = l;                                                           \
  } while (0)
  ADD("x-netstash-destination: %d", r->destination);
  ADD("x-netstash-mode: %d", r->mode);
  ADD("x-netstash-credentials: %d", r->credentials);
  ADD("x-netstash-load-flags: %u", (unsigned)r->load_flags);
  if (r->priority_set)
    ADD("x-netstash-priority: %d", (int)r->priority);
  if (r->from_worker)
    ADD("x-netstash-worker: 1");
  if (!r->follow)
    ADD("x-netstash-redirect: manual");
  if (r->top_level_site.url)
    ADD("x-netstash-top-level-site: %.1000s", r->top_level_site.url);
  if (r->initiator.url)
    ADD("x-netstash-initiator: %.1000s", r->initiator.url);
  if (r->sfc_set && r->site_for_cookies.url)
    ADD("x-netstash-site-for-cookies: %.1000s", r->site_for_cookies.url);
  if (r->sfc_set && r->top_level_navigation)
    ADD("x-netstash-top-level-navigation: 1");
  if (r->jar)
    ADD("x-netstash-jar: %.200s", r->jar);
  if (r->raw) /* the body in the coding it came in, with its length */
    ADD("x-netstash-raw: 1");
#undef ADD
  return NETSTASH_OK;
}

static netstash_error build_hdr_list(netstash_fetch *f) {
  struct curl_slist *l;
  size_t i;
  curl_slist_free_all(f->hdr_list);
  f->hdr_list = NULL;
  for (i = 0; i < f->req->nheaders; i++) {
    l = curl_slist_append(f->hdr_list, f->req->headers[i]);
    if (!l)
      return NETSTASH_E_NOMEM;
    f->hdr_list = l;
  }
  if (is_remote(f)) {
    if (remote_attrs(f) != NETSTASH_OK)
      return NETSTASH_E_NOMEM;
    curl_easy_setopt(f->easy, CURLOPT_HTTPHEADER, f->hdr_list);
    return NETSTASH_OK;
  }
  if (!f->req->has_accept_encoding) {
    char ae[64];
    /* completing a stored piece: the rest must come in its (identity) form */
    snprintf(ae, sizeof(ae), "Accept-Encoding: %s",
             f->hc_completing ? "identity" : ns_request_accept_encoding(f->req));
    l = curl_slist_append(f->hdr_list, ae);
    if (!l)
      return NETSTASH_E_NOMEM;
    f->hdr_list = l;
  }
  if (add_cookie_header(f) != NETSTASH_OK)
    return NETSTASH_E_NOMEM;
  curl_easy_setopt(f->easy, CURLOPT_HTTPHEADER, f->hdr_list);
  return NETSTASH_OK;
}

static long weight_of(netstash_priority p) {
  static const long w[] = {1, 32, 64, 128, 256};
  return w[p];
}

static netstash_error setup_easy(netstash_fetch *f) {
  ns_transport *tr = f->ctx->transport;
  const ns_config *cfg = &f->ctx->cfg;
  netstash_request *req = f->req;
  CURL *e;
  long httpv;

  e = f->easy = curl_easy_init();
  if (!e)
    return NETSTASH_E_NOMEM;
  curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)f);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, f->errbuf);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, hdr_cb);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, f);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, f);
  /* libcurl's receive buffer: 64 KiB rather than its 16 — a 50 KB body
   * arrives in one or two reads and goes on in as many writes, not four
   * (with a poll() before each read): a 50 KB HTTP-cache miss through
   * netd's gateway cost 150-160 µs of CPU, now 144-147 (doc/DESIGN.md,
   * "Connections"). The buffer lives as long as the transfer; Cronet reads
   * in 32 KB, Chromium's URL loader in 64 KB. */
  curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 65536L);
  curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, open_cb);
  curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, f->ctx);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, close_cb);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, tr);
  if (f->ctx->test_open_socket) { /* one hooked socket per fetch: no reuse */
    curl_easy_setopt(e, CURLOPT_SOCKOPTFUNCTION, sockopt_hook_cb);
    curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
    curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
  }
  curl_easy_setopt(e, CURLOPT_SSL_CTX_FUNCTION, sslctx_cb);
  curl_easy_setopt(e, CURLOPT_SSL_CTX_DATA, f->ctx);
  curl_easy_setopt(e, CURLOPT_SHARE, tr->share);
  curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_HTTP_CONTENT_DECODING, 0L);
  curl_easy_setopt(e, CURLOPT_USERAGENT, cfg->user_agent ? cfg->user_agent : tr->user_agent);
  curl_easy_setopt(e, CURLOPT_SSLVERSION,
                   (long)(cfg->tls_min == NETSTASH_TLS_1_2 ? CURL_SSLVERSION_TLSv1_2
                                                          : CURL_SSLVERSION_TLSv1_3));
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
  if (cfg->ca_file)
    curl_easy_setopt(e, CURLOPT_CAINFO, cfg->ca_file);
  if (cfg->ca_dir)
    curl_easy_setopt(e, CURLOPT_CAPATH, cfg->ca_dir);
  if (cfg->ca_file && !cfg->ca_dir)
    curl_easy_setopt(e, CURLOPT_CAPATH, NULL);
  if (cfg->hsts) {
    curl_easy_setopt(e, CURLOPT_HSTS_CTRL, (long)CURLHSTS_ENABLE);
  }
  if (ns_log_enabled(f->ctx, NETSTASH_LOG_TRACE)) {
    curl_easy_setopt(e, CURLOPT_DEBUGFUNCTION, debug_cb);
    curl_easy_setopt(e, CURLOPT_DEBUGDATA, f);
    curl_easy_setopt(e, CURLOPT_VERBOSE, 1L);
  }

  switch (req->http_version) {
  case NETSTASH_HTTP_1_1:
    httpv = CURL_HTTP_VERSION_1_1;
    break;
  case NETSTASH_HTTP_2:
    httpv = strcmp(req->url.scheme, "https") == 0 ? CURL_HTTP_VERSION_2TLS
                                                  : CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE;
    break;
  default:
    httpv = CURL_HTTP_VERSION_2TLS;
    break;
  }
  curl_easy_setopt(e, CURLOPT_HTTP_VERSION, httpv);
  curl_easy_setopt(e, CURLOPT_STREAM_WEIGHT, weight_of(req->priority));
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                   (long)(req->connect_timeout_ms ? req->connect_timeout_ms
                                                  : cfg->connect_timeout_ms));
  if (req->timeout_ms)
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)req->timeout_ms);
  if (req->idle_timeout_ms) {
    /* libcurl's low-speed check has 1 s granularity. */
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, (long)((req->idle_timeout_ms + 999) / 1000));
  }

  /* the hop's list, when cache_consult built it (with its validators) */
  if (f->hdr_list)
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, f->hdr_list);
  else if (build_hdr_list(f) != NETSTASH_OK)
    return NETSTASH_E_NOMEM;

  if (req->has_body) {
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    if (req->body_cb) {
      curl_easy_setopt(e, CURLOPT_READFUNCTION, read_cb);
      curl_easy_setopt(e, CURLOPT_READDATA, f);
      curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE,
                       req->body_total == UINT64_MAX ? (curl_off_t)-1
                                                     : (curl_off_t)req->body_total);
    } else {
      curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
      curl_easy_setopt(e, CURLOPT_POSTFIELDS, req->body ? (char *)req->body : "");
    }
  }
  if (req->method) {
    if (strcmp(req->method, "HEAD") == 0)
      curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    else if ((strcmp(req->method, "GET") != 0 &&
              !(strcmp(req->method, "POST") == 0 && req->has_body)) ||
             (strcmp(req->method, "GET") == 0 && req->has_body))
      curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, req->method); /* GET with a body stays GET */
  }
  if (f->hop_get && !(req->method && strcmp(req->method, "HEAD") == 0)) {
    /* set up after a redirect (from the cache) that turned it into GET */
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, NULL);
    curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
  }
  return NETSTASH_OK;
}

/* ------------------------------------------------------------ HTTP cache */

static const char *method_of(const netstash_fetch *f) {
  const netstash_request *req = f->req;
  if (f->hop_get && !(req->method && strcmp(req->method, "HEAD") == 0))
    return "GET";
  return req->method ? req->method : (req->has_body ? "POST" : "GET");
}

/* A byte range of the decoded body (RFC 9110 §14), for serve_cached. */
typedef struct range_sink {
  netstash_fetch *f;
  uint64_t skip, left;
} range_sink;

static netstash_error range_deliver(const uint8_t *data, size_t len, void *ud) {
  range_sink *rs = ud;
  if (rs->skip >= len) {
    rs->skip -= len;
    return NETSTASH_OK;
  }
  data += rs->skip;
  len -= (size_t)rs->skip;
  rs->skip = 0;
  if (len > rs->left)
    len = (size_t)rs->left;
  rs->left -= len;
  return len ? deliver(data, len, rs->f) : NETSTASH_OK;
}

/* Answers the fetch from f->hce (the stored response) and ends it; r (may be
 * NULL) turns it into a 206 or 416 answer to the request's Range, computed
 * on the decoded body (the answer carries no Content-Encoding, unless it
 * names a coding the cache does not know: those bytes are kept as sent). A raw
 * request gets the body as it is kept when that is in the coding the head
 * names; otherwise (ns_httpcache_body_form) the decoded body, without the
 * head's Content-Encoding, its Content-Length the decoded size. */
static void serve_cached_slice(netstash_fetch *f, netstash_source source,
                               const ns_cache_range *r) {
  ns_transport *tr = f->ctx->transport;
  const ns_header_field *fld;
  size_t it = 0;
  netstash_error rv = NETSTASH_OK;
  int partial = r && (r->status == 206 || r->status == 416);
  int as_stored = 1, plain = partial; /* plain: the answer carries no coding */
  int opaque = f->hce.coding == NS_CODING_UNKNOWN;
  uint64_t decoded_size = 0;
  range_sink rs;
  if (f->easy && f->state == NS_FETCH_ACTIVE) {
    curl_multi_remove_handle(tr->multi, f->easy);
    f->state = NS_FETCH_NEW;
  }
  if (f->req->raw && !partial) {
    rv = ns_httpcache_body_form(f->ctx->hc, &f->hce, &as_stored, &decoded_size);
    if (rv == NETSTASH_E_NOT_FOUND) {
      ns_fetch_detail(f, "the stored body of %s went away (evicted); retry", f->cur.url);
      end_fetch(f, NETSTASH_E_NOT_CACHED);
      return;
    }
    if (rv != NETSTASH_OK) {
      ns_fetch_detail(f, "reading the stored body: %s", netstash_strerror(rv));
      end_fetch(f, rv);
      return;
    }
    /* opaque (a coding the cache does not know): its bytes as sent, under
     * its head, either way */
    plain = !as_stored && f->hce.coding != NS_CODING_IDENTITY && !opaque;
  }
  reset_response(f);
  f->status = partial ? r->status : f->hce.status;
  while (rv == NETSTASH_OK && (fld = ns_headers_next(&f->hce.headers, &it, NULL)) != NULL) {
    if (plain && (ns_ascii_casecmp(fld->name, "content-length") == 0 ||
                  (!opaque && ns_ascii_casecmp(fld->name, "content-encoding") == 0)))
      continue; /* a range of opaque bytes is still in their coding */
    if (partial && ns_ascii_casecmp(fld->name, "content-range") == 0)
      continue; /* a stored piece's: the answer's is added below */
    if (fld->name_len == 3 && ns_ascii_casecmp_n(fld->name, "age", 3) == 0)
      continue; /* replaced below */
    rv = add_header_nv(f, fld->name, fld->name_len, fld->value, fld->value_len);
  }
  if (rv == NETSTASH_OK) {
    /* RFC 9111 §4, §5.1: a stored response goes out with its current age
     * (the one the decision used; recomputed when the network was tried
     * first: after a 304 updated it, or stale-if-error), so that whoever
     * keeps it downstream (netd's fronts' clients, a memory cache above the
     * ABI) does not count its freshness from now */
    char age[24];
    int64_t ms = f->hce.decision.age_ms;
    if (f->hc_validating) {
      ns_cache_stored st = {f->hce.status,          &f->hce.headers,         &f->hce.vary,
                            f->hce.request_time_ms, f->hce.response_time_ms, NULL};
      ms = ns_cache_current_age_ms(&st, wall_ms());
    }
    rv = add_header_nv(f, "age", 3, age,
                       (size_t)snprintf(age, sizeof(age), "%lld", (long long)(ms / 1000)));
  }
  if (rv == NETSTASH_OK && plain && !partial && f->hce.has_body) {
    char len[32];
    rv =
        add_header_nv(f, "content-length", 14, len,
                      (size_t)snprintf(len, sizeof(len), "%llu", (unsigned long long)decoded_size));
  }
  if (rv == NETSTASH_OK && partial) {
    char len[32];
    uint64_t n = r->status == 206 ? r->last - r->first + 1 : 0;
    snprintf(len, sizeof(len), "%llu", (unsigned long long)n);
    rv = add_header_nv(f, "content-range", 13, r->content_range, strlen(r->content_range));
    if (rv == NETSTASH_OK)
      rv = add_header_nv(f, "content-length", 14, len, strlen(len));
  }
  if (rv != NETSTASH_OK) {
    ns_fetch_detail(f, "cannot rebuild the stored response head: %s", netstash_strerror(rv));
    end_fetch(f, rv);
    return;
  }
  f->source = source;
  if (source == NETSTASH_SOURCE_CACHE) {
    f->proto = NETSTASH_HTTP_ANY;
    f->tls_version[0] = f->tls_cipher[0] = 0;
  }
  f->timing[NETSTASH_TIMING_TTFB] = ns_now_us() - f->t_start;
  deliver_head(f);
  if (strcmp(method_of(f), "HEAD") != 0 && !(partial && r->status == 416)) {
    if (partial) {
      rs.f = f;
      rs.skip = r->first - r->body_offset; /* a stored piece starts there */
      rs.left = r->last - r->first + 1;
      rv = ns_httpcache_serve_body(f->ctx->hc, &f->hce, 0, f->max_body, range_deliver, &rs);
    } else {
      rv = ns_httpcache_serve_body(f->ctx->hc, &f->hce, f->req->raw && as_stored, f->max_body,
                                   deliver, f);
    }
  }
  if (rv == NETSTASH_E_NOT_FOUND) {
    ns_fetch_detail(f, "the stored body of %s went away (evicted); retry", f->cur.url);
    rv = NETSTASH_E_NOT_CACHED;
  } else if (rv != NETSTASH_OK && !f->detail[0]) {
    ns_fetch_detail(f, "reading the stored body: %s", netstash_strerror(rv));
  }
  end_fetch(f, rv);
}

static void serve_cached(netstash_fetch *f, netstash_source source) {
  serve_cached_slice(f, source, NULL);
}

/* Serves a usable stored response, honouring a Range request. */
/* One entity-tag of an If-None-Match list against the stored one, weak
 * comparison (RFC 9110 §8.8.3.2: W/ ignored). */
static int etag_weak_eq(const char *a, size_t al, const char *b, size_t bl) {
  if (al >= 2 && a[0] == 'W' && a[1] == '/')
    a += 2, al -= 2;
  if (bl >= 2 && b[0] == 'W' && b[1] == '/')
    b += 2, bl -= 2;
  return al == bl && al >= 2 && a[0] == '"' && memcmp(a, b, al) == 0;
}

/* The caller's own conditional request against a response we serve from the
 * cache (RFC 9111 §4.3.2, RFC 9110 §13.2.2): 1 when a 304 is the answer.
 * If-None-Match wins over If-Modified-Since. */
/* 1 when the If-None-Match list inm names etag (etag_len bytes; NULL: the
 * response has none, so only "*" matches). */
static int inm_matches(const char *inm, const char *etag, size_t etag_len) {
  const char *p = inm;
  while (*p) {
    size_t n;
    while (*p == ' ' || *p == '\t' || *p == ',')
      p++;
    if (!*p)
      break;
    if (*p == '*')
      return 1;
    n = strcspn(p, ",");
    while (n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
      n--;
    if (etag && etag_weak_eq(p, n, etag, etag_len))
      return 1;
    p += strcspn(p, ",");
  }
  return 0;
}

static int caller_validators_match(netstash_fetch *f) {
  const char *inm = ns_headers_get(&f->hc_req, "if-none-match");
  const char *ims = ns_headers_get(&f->hc_req, "if-modified-since");
  if (inm) {
    const char *etag = ns_headers_get(&f->hce.headers, "etag");
    return inm_matches(inm, etag, etag ? strlen(etag) : 0);
  }
  if (ims && f->hce.status == 200) {
    const char *lm = ns_headers_get(&f->hce.headers, "last-modified");
    int64_t t_ims, t_lm, now = wall_ms() / 1000;
    return lm && ns_http_date_parse(ims, strlen(ims), now, &t_ims) == NETSTASH_OK &&
           ns_http_date_parse(lm, strlen(lm), now, &t_lm) == NETSTASH_OK && t_lm <= t_ims;
  }
  return 0;
}

/* 304 for the caller's validators, from the stored head (RFC 9110 §15.4.5:
 * the fields a 200 would carry that describe the representation). */
static int is_304_field(const char *name, size_t len) {
  static const char *const keep[] = {"cache-control", "content-location", "date", "etag",
                                     "expires", "vary", "last-modified"};
  for (size_t k = 0; k < sizeof(keep) / sizeof(keep[0]); k++)
    if (strlen(keep[k]) == len && ns_ascii_casecmp_n(name, keep[k], len) == 0)
      return 1;
  return 0;
}

static void serve_304(netstash_fetch *f, netstash_source source) {
  const ns_header_field *fld;
  size_t it = 0, l;
  netstash_error rv = NETSTASH_OK;
  reset_response(f);
  f->status = 304;
  while (rv == NETSTASH_OK && (fld = ns_headers_next(&f->hce.headers, &it, NULL)) != NULL)
    if (is_304_field(fld->name, fld->name_len))
      rv = add_header_nv(f, fld->name, fld->name_len, fld->value, fld->value_len);
  l = strlen(f->cache_reason);
  snprintf(f->cache_reason + l, sizeof(f->cache_reason) - l,
           "; 304: the request's validators match the stored response");
  f->source = source;
  if (source == NETSTASH_SOURCE_CACHE) {
    f->proto = NETSTASH_HTTP_ANY;
    f->tls_version[0] = f->tls_cipher[0] = 0;
  }
  f->timing[NETSTASH_TIMING_TTFB] = ns_now_us() - f->t_start;
  if (rv == NETSTASH_OK)
    deliver_head(f);
  end_fetch(f, rv);
}

/* Serves the stored response (source: the cache, or revalidated after a
 * 304): a 304 for the caller's own validators, a 206/416 for its Range. */
static void serve_stored(netstash_fetch *f, netstash_source source) {
  ns_cache_range r;
  uint64_t size = 0;
  if (caller_validators_match(f)) {
    serve_304(f, source);
    return;
  }
  if (ns_headers_get(&f->hc_req, "range") &&
      ns_httpcache_body_size(f->ctx->hc, &f->hce, &size) == NETSTASH_OK) {
    ns_cache_range_decide(&f->hc_req, f->hce.status, &f->hce.headers, size, &r);
    if (r.status == 206 || r.status == 416) {
      size_t l = strlen(f->cache_reason);
      snprintf(f->cache_reason + l, sizeof(f->cache_reason) - l, "; range %d from the stored body",
               r.status);
      serve_cached_slice(f, source, &r);
      return;
    }
  }
  serve_cached(f, source);
}

/* stale-while-revalidate: a detached fetch refreshes the entry. */
static void start_revalidation(netstash_fetch *f) {
  netstash_request *r = NULL;
  if (f->detached)
    return;
  if (ns_request_clone(f->req, &r) != NETSTASH_OK)
    return;
  r->cache_mode = NETSTASH_CACHE_VALIDATE;
  if (ns_fetch_start_detached(f->ctx, r) != NETSTASH_OK)
    NS_WARN(f->ctx, MOD, "background revalidation of %s not started", f->cur.url);
  netstash_request_del(r);
}

static netstash_error add_validators(netstash_fetch *f, int *added) {
  ns_headers v;
  ns_cache_stored st = {f->hce.status,          &f->hce.headers,         &f->hce.vary,
                        f->hce.request_time_ms, f->hce.response_time_ms, NULL};
  const ns_header_field *fld;
  size_t it = 0;
  netstash_error rv;
  ns_buf line;
  ns_headers_init(&v, &f->mem);
  ns_buf_init(&line, &f->mem, 16384);
  rv = ns_cache_add_validators(&st, &v, added);
  while (rv == NETSTASH_OK && (fld = ns_headers_next(&v, &it, NULL)) != NULL) {
    struct curl_slist *l;
    ns_buf_reset(&line);
    rv = ns_buf_printf(&line, "%s: %s", fld->name, fld->value);
    if (rv == NETSTASH_OK) {
      l = curl_slist_append(f->hdr_list, ns_buf_str(&line));
      if (!l)
        rv = NETSTASH_E_NOMEM;
      else
        f->hdr_list = l;
    }
  }
  if (rv == NETSTASH_OK)
    curl_easy_setopt(f->easy, CURLOPT_HTTPHEADER, f->hdr_list);
  ns_buf_free(&line);
  ns_headers_free(&v);
  return rv;
}

/* A request for the whole of what is stored as its first bytes (a piece
 * 0-b/n with a strong validator, RFC 9111 §3.3): asks for the rest only,
 * with If-Range — a 206 with the rest is answered as the whole
 * (complete_piece), a 200 means the representation changed. Not for a
 * caller's own range or conditional request, nor after a failed attempt. */
static netstash_error start_completion(netstash_fetch *f) {
  static const char *const own[] = {
      "range", "if-range", "if-none-match", "if-modified-since", "if-match", "if-unmodified-since"};
  const char *v = ns_cache_if_range(&f->hce.headers);
  uint64_t a, b, n;
  char line[96];
  struct curl_slist *l;
  size_t k, len;
  netstash_error rv;
  f->hc_completing = 0;
  if (f->hc_no_complete || !v || !ns_cache_piece(&f->hce.headers, &a, &b, &n) || a != 0 ||
      b + 1 >= n || strlen(v) > 64)
    return NETSTASH_OK;
  for (k = 0; k < NS_ARRAY_LEN(own); k++)
    if (ns_headers_get(&f->hc_req, own[k]))
      return NETSTASH_OK;
  f->hc_completing = 1;
  if ((rv = build_hdr_list(f)) != NETSTASH_OK) /* Accept-Encoding: identity */
    return rv;
  snprintf(line, sizeof(line), "Range: bytes=%" PRIu64 "-", b + 1);
  if (!(l = curl_slist_append(f->hdr_list, line)))
    return NETSTASH_E_NOMEM;
  f->hdr_list = l;
  snprintf(line, sizeof(line), "If-Range: %s", v);
  if (!(l = curl_slist_append(f->hdr_list, line)))
    return NETSTASH_E_NOMEM;
  f->hdr_list = l;
  f->hc_piece_len = b + 1;
  f->hc_total = n;
  len = strlen(f->cache_reason);
  snprintf(f->cache_reason + len, sizeof(f->cache_reason) - len,
           "; asked for the rest (bytes=%" PRIu64 "-)", b + 1);
  return NETSTASH_OK;
}

/* A stored redirect we are to follow (the request follows redirects and
 * redirects are left): its Location is followed without the network. */
static int redirect_we_follow(const netstash_fetch *f) {
  return f->req->follow && f->redirects_left > 0 && f->hce.status >= 300 &&
         f->hce.status < 400 && ns_headers_get(&f->hce.headers, "location");
}

/* A stored redirect the request would follow, with no redirects left: the
 * same end as over the network (head_end). */
static int cached_redirect_exhausted(netstash_fetch *f) {
  if (!(f->req->follow && f->redirects_left == 0 && f->hce.status >= 300 &&
        f->hce.status < 400 && ns_headers_get(&f->hce.headers, "location")))
    return 0;
  ns_fetch_detail(f, "more than %u redirects", (unsigned)f->req->follow);
  end_fetch(f, NETSTASH_E_TOO_MANY_REDIRECTS);
  return 1;
}

static void follow_cached_redirect(netstash_fetch *f) {
  const ns_header_field *fld;
  size_t it = 0;
  netstash_error rv = NETSTASH_OK;
  reset_response(f);
  f->status = f->hce.status;
  while (rv == NETSTASH_OK && (fld = ns_headers_next(&f->hce.headers, &it, NULL)) != NULL)
    rv = add_header_nv(f, fld->name, fld->name_len, fld->value, fld->value_len);
  if (rv != NETSTASH_OK) {
    end_fetch(f, rv);
    return;
  }
  follow_redirect(f);
}

/* Consults the HTTP cache before the network. Returns 1 when the fetch was
 * answered (or failed) from the cache. */
/* The preload route (doc/DESIGN.md): an active manifest version that lists
 * this URL answers a GET or HEAD before the HTTP cache, with no network.
 * Range requests get 206/416 from the verified body. 1 when answered. */
static int preload_consult(netstash_fetch *f, int is_head) {
  ns_transport *tr = f->ctx->transport;
  netstash_request *req = f->req;
  ns_pl_hit hit;
  ns_headers h, rq;
  ns_headers_walk walk;
  ns_cache_range r;
  netstash_error rv;
  int partial = 0, not_modified = 0;
  const char *inm;
  if (!f->ctx->store || req->cache_mode == NETSTASH_CACHE_BYPASS || req->no_preload || !f->cur.url ||
      strncmp(f->cur.url, "https://", 8) != 0)
    return 0;
  if (!tr->pl_reader && ns_store_reader_new(f->ctx->store, &tr->pl_reader) != NETSTASH_OK)
    return 0;
  if (ns_store_read_begin(tr->pl_reader) != NETSTASH_OK)
    return 0;
  rv = ns_pl_lookup(tr->pl_reader, f->cur.url, strlen(f->cur.url), wall_ms() / 1000, &hit);
  if (rv != NETSTASH_OK) {
    ns_store_read_end(tr->pl_reader);
    return 0;
  }
  ns_headers_init(&h, &f->mem);
  ns_headers_init(&rq, &f->mem);
  {
    /* a whole pass first: a damaged head is left to the cache / network */
    const char *hn, *hv;
    size_t hnl, hvl;
    int ok = ns_headers_walk_begin(&walk, hit.entry.head, hit.entry.head_len);
    while (ok && ns_headers_walk_next(&walk, &hn, &hnl, &hv, &hvl))
      ;
    if (!ok || walk.bad || hit.body.coding != NS_CODING_IDENTITY) {
      ns_store_read_end(tr->pl_reader);
      return 0; /* not servable as stored: let the cache / network answer */
    }
    ns_headers_walk_begin(&walk, hit.entry.head, hit.entry.head_len);
  }
  for (size_t i = 0; i < req->nheaders; i++)
    if (!ns_ascii_casecmp_n(req->headers[i], "range:", 6) ||
        !ns_ascii_casecmp_n(req->headers[i], "if-range:", 9) ||
        !ns_ascii_casecmp_n(req->headers[i], "if-none-match:", 14))
      (void)ns_headers_add_line(&rq, req->headers[i], strlen(req->headers[i]));
  memset(&r, 0, sizeof(r));
  if ((inm = ns_headers_get(&rq, "if-none-match")) != NULL) {
    /* the caller's own validators against the stored ETag (the manifest's,
     * or the one derived from the integrity at install): a 304, no body */
    ns_headers_walk w2;
    const char *hn, *hv = NULL;
    size_t hnl, hvl = 0;
    int found = 0;
    ns_headers_walk_begin(&w2, hit.entry.head, hit.entry.head_len);
    while (!found && ns_headers_walk_next(&w2, &hn, &hnl, &hv, &hvl))
      found = hnl == 4 && ns_ascii_casecmp_n(hn, "etag", 4) == 0;
    not_modified = inm_matches(inm, found ? hv : NULL, found ? hvl : 0);
  }
  if (!not_modified && ns_headers_get(&rq, "range")) {
    /* a Range request (media seeking) decodes the head to decide */
    if (ns_headers_decode(&h, hit.entry.head, hit.entry.head_len, NULL) != NETSTASH_OK) {
      ns_store_read_end(tr->pl_reader);
      ns_headers_free(&rq);
      return 0;
    }
    ns_cache_range_decide(&rq, 200, &h, hit.body.decoded_size, &r);
    partial = r.status == 206 || r.status == 416;
  }
  if (f->easy && f->state == NS_FETCH_ACTIVE) {
    curl_multi_remove_handle(tr->multi, f->easy);
    f->state = NS_FETCH_NEW;
  }
  reset_response(f);
  f->status = not_modified ? 304 : partial ? r.status : hit.entry.status;
  {
    /* the stored head straight into the fetch's header arena: a hit
     * allocates nothing it does not hand out */
    const char *hn, *hv;
    size_t hnl, hvl;
    while (rv == NETSTASH_OK && ns_headers_walk_next(&walk, &hn, &hnl, &hv, &hvl)) {
      if (partial && hnl == 14 && ns_ascii_casecmp_n(hn, "content-length", 14) == 0)
        continue;
      if (not_modified && !is_304_field(hn, hnl))
        continue;
      rv = add_header_nv(f, hn, hnl, hv, hvl);
    }
  }
  if (rv == NETSTASH_OK && partial) {
    char len[32];
    snprintf(len, sizeof(len), "%llu",
             (unsigned long long)(r.status == 206 ? r.last - r.first + 1 : 0));
    rv = add_header_nv(f, "content-range", 13, r.content_range, strlen(r.content_range));
    if (rv == NETSTASH_OK)
      rv = add_header_nv(f, "content-length", 14, len, strlen(len));
  }
  ns_headers_free(&h);
  ns_headers_free(&rq);
  snprintf(f->cache_reason, sizeof(f->cache_reason), NS_PRELOAD_REASON_FMT, (int)hit.id_len, hit.id,
           (unsigned long long)hit.version,
           not_modified ? "; 304: the request's validators match the preloaded response"
           : partial    ? (r.status == 206 ? "; range 206" : "; range 416")
                        : "");
  if (rv != NETSTASH_OK) {
    ns_store_read_end(tr->pl_reader);
    end_fetch(f, rv);
    return 1;
  }
  f->source = NETSTASH_SOURCE_PRELOAD;
  f->proto = NETSTASH_HTTP_ANY;
  f->tls_version[0] = f->tls_cipher[0] = 0;
  f->timing[NETSTASH_TIMING_TTFB] = ns_now_us() - f->t_start;
  deliver_head(f);
  if (!is_head && !not_modified && !(partial && r.status == 416)) {
    uint64_t skip = partial ? r.first : 0;
    uint64_t left = partial ? r.last - r.first + 1 : hit.body.decoded_size;
    if (f->max_body && left > f->max_body) {
      ns_fetch_detail(f, "preloaded body of %llu bytes is over the limit",
                      (unsigned long long)left);
      rv = NETSTASH_E_TOO_LARGE;
    }
    for (uint32_t i = 0; rv == NETSTASH_OK && left && i < hit.body.nchunks; i++) {
      const uint8_t *d;
      size_t n;
      rv = ns_store_body_chunk(&hit.body, i, &d, &n);
      if (rv != NETSTASH_OK)
        break;
      if (skip >= n) {
        skip -= n;
        continue;
      }
      d += skip;
      n -= (size_t)skip;
      skip = 0;
      if (n > left)
        n = (size_t)left;
      left -= n;
      rv = deliver(d, n, f);
    }
  }
  ns_store_read_end(tr->pl_reader);
  end_fetch(f, rv);
  return 1;
}

static int cache_consult(netstash_fetch *f) {
  ns_httpcache *hc = f->ctx->hc;
  netstash_request *req = f->req;
  const char *method = method_of(f);
  int is_get = strcmp(method, "GET") == 0, is_head = strcmp(method, "HEAD") == 0;
  netstash_error rv = NETSTASH_OK;
  int added = 0;

  /* per hop: every URL of a redirect chain is looked up and stored */
  f->hc_used = f->hc_validating = f->hc_got_304 = f->hc_sie = f->hc_head_200 = 0;
  f->hc_store = f->hc_invalidate = 0;
  f->cache_reason[0] = 0;
  ns_headers_free(&f->hc_req);
  ns_hc_entry_free(&f->hce);
  ns_hc_entry_init(&f->hce, &f->mem);
  ns_buf_reset(&f->hc_body);
  if (build_hdr_list(f) != NETSTASH_OK) {
    end_fetch(f, NETSTASH_E_NOMEM);
    return 1;
  }
  if ((is_get || is_head) && preload_consult(f, is_head))
    return 1;

  if (!hc) {
    if (req->cache_mode == NETSTASH_CACHE_ONLY_IF_CACHED) {
      ns_fetch_detail(f, "only-if-cached, and the context has no HTTP cache (no profile)");
      end_fetch(f, NETSTASH_E_NOT_CACHED);
      return 1;
    }
    return 0;
  }
  if (!is_get && !is_head) {
    /* RFC 9111 §4.4: unsafe methods invalidate on success */
    f->hc_invalidate = strcmp(method, "OPTIONS") != 0 && strcmp(method, "TRACE") != 0;
    return 0;
  }
  if (req->cache_mode == NETSTASH_CACHE_BYPASS) {
    snprintf(f->cache_reason, sizeof(f->cache_reason), "bypassed");
    return 0;
  }
  rv = ns_request_cache_fields(req, &f->hc_req);
  /* Cache modes as the request directives they mean (RFC 9111 §5.2.1). */
  if (rv == NETSTASH_OK && req->cache_mode == NETSTASH_CACHE_VALIDATE)
    rv = ns_headers_add_str(&f->hc_req, "cache-control", "no-cache");
  else if (rv == NETSTASH_OK && req->cache_mode == NETSTASH_CACHE_SKIP_VALIDATION)
    rv = ns_headers_add_str(&f->hc_req, "cache-control", "max-stale");
  else if (rv == NETSTASH_OK && req->cache_mode == NETSTASH_CACHE_ONLY_IF_CACHED)
    rv = ns_headers_add_str(&f->hc_req, "cache-control", "only-if-cached, max-stale");
  if (rv == NETSTASH_OK)
    rv = ns_httpcache_lookup(hc, req->top_level_site.url, f->cur.url, method, &f->hc_req,
                             wall_ms(), &f->hce);
  if (rv == NETSTASH_E_AGAIN) {
    /* a response for this URL is being stored: looked up again once it is
     * committed (hc_settle), without holding up the loop meanwhile */
    f->hop_wait = 1;
    ns_list_insert_tail(&f->ctx->transport->hop_waiting, &f->await_node);
    return 1;
  }
  if (rv != NETSTASH_OK) {
    NS_WARN(f->ctx, MOD, "cache lookup for %s failed: %s", f->cur.url, netstash_strerror(rv));
    snprintf(f->cache_reason, sizeof(f->cache_reason), "cache unavailable: %s",
             netstash_strerror(rv));
    if (req->cache_mode == NETSTASH_CACHE_ONLY_IF_CACHED) {
      /* the network may not be used: the lookup's error is the answer (a
       * damaged store says so instead of looking like a miss) */
      ns_fetch_detail(f, "cache lookup for %s failed: %s%s", f->cur.url, netstash_strerror(rv),
                      rv == NETSTASH_E_STORE_CORRUPT ? " (run `netstash verify`)" : "");
      end_fetch(f, rv);
      return 1;
    }
    f->hc_store = is_get && rv != NETSTASH_E_STORE_CORRUPT;
    return 0;
  }
  f->hc_used = 1;
  snprintf(f->cache_reason, sizeof(f->cache_reason), "%s", f->hce.decision.reason);
  switch (f->hce.decision.verdict) {
  case NS_CACHE_FRESH:
    if (redirect_we_follow(f)) {
      follow_cached_redirect(f);
      return 1;
    }
    if (cached_redirect_exhausted(f))
      return 1;
    serve_stored(f, NETSTASH_SOURCE_CACHE);
    return 1;
  case NS_CACHE_STALE_WHILE_REVALIDATE:
    if (redirect_we_follow(f))
      break; /* revalidate the hop over the network */
    if (cached_redirect_exhausted(f))
      return 1;
    start_revalidation(f);
    serve_stored(f, NETSTASH_SOURCE_CACHE);
    return 1;
  case NS_CACHE_REVALIDATE:
  case NS_CACHE_MUST_REVALIDATE:
    rv = add_validators(f, &added);
    if (rv != NETSTASH_OK) {
      end_fetch(f, rv);
      return 1;
    }
    f->hc_validating = added > 0;
    f->hc_store = is_get;
    return 0;
  case NS_CACHE_GATEWAY_TIMEOUT:
    ns_fetch_detail(f, "not in the cache (only-if-cached): %s", f->hce.decision.reason);
    end_fetch(f, NETSTASH_E_NOT_CACHED);
    return 1;
  case NS_CACHE_MISS:
    break;
  }
  f->hc_store = is_get;
  if (is_get && f->hce.decision.incomplete && start_completion(f) != NETSTASH_OK) {
    end_fetch(f, NETSTASH_E_NOMEM);
    return 1;
  }
  return 0;
}

void ns_transport_start(netstash_fetch *f) {
  ns_transport *tr = f->ctx->transport;
  netstash_error rv;

  ns_list_insert_tail(&tr->fetches, &f->node);
  if (tr->shutting_down || atomic_load(&f->cancel_requested)) {
    end_fetch(f, NETSTASH_E_CANCELED);
    return;
  }
  f->redirects_left = f->req->follow;
  f->max_body = f->req->max_body ? f->req->max_body : f->ctx->cfg.max_decoded_body;
  /* a body the fetch may not deliver is not buffered for the cache either:
   * a hostile endless body would otherwise hold up to the 32 MiB cap */
  if (f->max_body < f->hc_body.max)
    f->hc_body.max = (size_t)f->max_body;
  if (f->req->collect)
    f->body.max = (size_t)NS_MIN(f->req->collect_max, (uint64_t)SIZE_MAX / 2);
  /* the request's URL was parsed when it was made; libcurl's handle is set
   * up only when a hop goes to the network (a cache or preload hit needs
   * none: start_net) */
  rv = ns_url_copy(&f->mem, &f->req->url, &f->cur);
  if (rv == NETSTASH_OK && is_remote(f))
    rv = setup_easy(f);
  if (rv != NETSTASH_OK) {
    ns_fetch_detail(f, "cannot set up the transfer: %s",
             netstash_strerror(rv));
    end_fetch(f, rv);
    return;
  }
  start_hop(f);
}

void ns_transport_cancel(netstash_fetch *f) {
  ns_fetch_detail(f, "canceled");
  end_fetch(f, NETSTASH_E_CANCELED);
}

/* ------------------------------------------------------------ setup */

netstash_error ns_transport_new(netstash_ctx *ctx, ns_transport **out, char *detail,
                                size_t detail_len) {
  ns_transport *tr;
  const ns_config *cfg = &ctx->cfg;
  *out = NULL;
  pthread_once(&ssl_once, ssl_index_init);
  if (ssl_ex_index < 0)
    return NETSTASH_E_INTERNAL;
  tr = ns_calloc(&ctx->mem, 1, sizeof(*tr));
  if (!tr)
    return NETSTASH_E_NOMEM;
  tr->ctx = ctx;
  ns_list_init(&tr->fetches);
  ns_list_init(&tr->awaiting);
  ns_list_init(&tr->hop_waiting);
  tr->hc_done.run = on_hc_done;
  ns_list_init(&tr->socks);
  snprintf(tr->user_agent, sizeof(tr->user_agent), "netstash/%s", PACKAGE_VERSION);
  tr->multi = curl_multi_init();
  tr->share = curl_share_init();
  if (!tr->multi || !tr->share) {
    curl_multi_cleanup(tr->multi);
    curl_share_cleanup(tr->share);
    ns_free(&ctx->mem, tr);
    return NETSTASH_E_NOMEM;
  }
  /* All handles of the share live on the loop thread: no lock callbacks. */
  curl_share_setopt(tr->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
  curl_share_setopt(tr->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_HSTS);
  curl_multi_setopt(tr->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
  curl_multi_setopt(tr->multi, CURLMOPT_SOCKETDATA, tr);
  curl_multi_setopt(tr->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
  curl_multi_setopt(tr->multi, CURLMOPT_TIMERDATA, tr);
  curl_multi_setopt(tr->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
  curl_multi_setopt(tr->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)cfg->max_host_connections);
  curl_multi_setopt(tr->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS,
                    (long)cfg->max_total_connections);
  curl_multi_setopt(tr->multi, CURLMOPT_MAX_CONCURRENT_STREAMS, 256L);
  /* before the timer: a failure here frees tr with no handle open */
  tr->altsvc_mem = ns_calloc(&ctx->mem, 1, sizeof(*tr->altsvc_mem));
  if (!tr->altsvc_mem || ns_h3_new(ctx, &tr->h3) != NETSTASH_OK ||
      (cfg->remote_socket && ns_remote_new(ctx, &tr->remote) != NETSTASH_OK) ||
      ns_altsvc_broken_new(&ctx->mem, &tr->h3_broken) != NETSTASH_OK) {
    ns_transport_del(tr);
    return NETSTASH_E_NOMEM;
  }
  /* (libuv's check and timer inits cannot fail: no handle to undo) */
  if (uv_idle_init(&ctx->loop, &tr->hc_check) != 0) {
    ns_transport_del(tr);
    return NETSTASH_E_INTERNAL;
  }
  tr->hc_check.data = tr;
  tr->hc_check_ok = 1;
  {
    uv_timer_t *timers[] = {&tr->timer, &tr->kick, &tr->hc_timer};
    int *oks[] = {&tr->timer_ok, &tr->kick_ok, &tr->hc_timer_ok};
    for (size_t i = 0; i < 3; i++) {
      if (uv_timer_init(&ctx->loop, timers[i]) != 0) {
        ns_transport_del(tr);
        if (detail && detail_len)
          snprintf(detail, detail_len, "uv_timer_init failed");
        return NETSTASH_E_INTERNAL;
      }
      timers[i]->data = tr;
      *oks[i] = 1;
    }
  }
  *out = tr;
  return NETSTASH_OK;
}

void ns_transport_shutdown(ns_transport *tr) {
  ns_list *pos, *tmp;
  if (!tr || tr->shutting_down)
    return;
  tr->shutting_down = 1;
  while (!ns_list_empty(&tr->fetches)) {
    netstash_fetch *f = ns_list_entry(tr->fetches.next, netstash_fetch, node);
    ns_fetch_detail(f, "context shut down");
    end_fetch(f, NETSTASH_E_CANCELED);
  }
  ns_h3_shutdown(tr->h3);
  ns_remote_shutdown(tr->remote);
  curl_multi_cleanup(tr->multi);
  tr->multi = NULL;
  ns_list_foreach_safe(pos, tmp, &tr->socks) {
    sock_close(ns_list_entry(pos, sock_ctx, node));
  }
  if (tr->timer_ok) {
    uv_timer_stop(&tr->timer);
    uv_close((uv_handle_t *)&tr->timer, NULL);
  }
  if (tr->kick_ok) {
    uv_timer_stop(&tr->kick);
    uv_close((uv_handle_t *)&tr->kick, NULL);
  }
  if (tr->hc_timer_ok) { /* what it holds back is flushed below */
    tr->hc_timer_ok = 0;
    uv_timer_stop(&tr->hc_timer);
    uv_close((uv_handle_t *)&tr->hc_timer, NULL);
  }
  if (tr->hc_check_ok) {
    tr->hc_check_ok = 0; /* the handle is closing: what is queued later commits at close */
    uv_idle_stop(&tr->hc_check);
    uv_close((uv_handle_t *)&tr->hc_check, NULL);
    (void)ns_httpcache_flush(tr->ctx->hc); /* what the last turn stored */
  }

}

void ns_transport_del(ns_transport *tr) {
  if (!tr)
    return;
  ns_ctx_unpost(tr->ctx, &tr->hc_done);
  ns_store_reader_del(tr->pl_reader);
  ns_h3_del(tr->h3);
  ns_remote_del(tr->remote);
  ns_altsvc_broken_del(tr->h3_broken);
  ns_free(&tr->ctx->mem, tr->altsvc_mem);
  ns_free(&tr->ctx->mem, tr->hsts);
  if (tr->multi)
    curl_multi_cleanup(tr->multi);
  curl_share_cleanup(tr->share);
  ns_free(&tr->ctx->mem, tr);
}

netstash_error ns_transport_pause(netstash_fetch *f, int pause) {
  if (f->h3s)
    return ns_h3_pause(f, pause);
  if (f->rs)
    return ns_remote_pause(f, pause);
  if (!f->easy || f->state != NS_FETCH_ACTIVE)
    return NETSTASH_E_ILLEGAL_STATE;
  return curl_easy_pause(f->easy, pause ? CURLPAUSE_RECV : CURLPAUSE_CONT) == CURLE_OK
             ? NETSTASH_OK
             : NETSTASH_E_INTERNAL;
}
