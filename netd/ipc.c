/*
 * ipc.c — netd's IPC: HTTP/2 with prior knowledge (nghttp2, server side)
 * over a unix socket. A request to netd is a request for a URL: :scheme,
 * :authority and :path are the target's; the browser-level attributes ride
 * in x-netstash-* request fields (see doc/DESIGN.md, "netd"). The answer is
 * the response as the library produced it, with x-netstash-source and
 * x-netstash-cache-reason added; a failure before the head is a 502 with
 * x-netstash-error; a failure after it resets the stream (INTERNAL_ERROR) —
 * a client never mistakes a cut body for a complete one.
 *
 * Requests for the authority "netd" are control requests: GET /status,
 * GET /metrics, GET /ls, POST /warm, POST /signals?metered=&low_battery=&foreground=.
 *
 * Bodies are pulled from the job (netstash_job_read) into nghttp2's frames
 * as the client's flow-control window and the socket allow: a slow client
 * slows the transfer down instead of growing buffers.
 *
 * The same sessions serve the HTTP/2 gateway (cfg.gateway_h2_*): a TCP
 * listener whose connections speak TLS 1.3 with ALPN "h2" (OpenSSL over
 * memory BIOs between libuv and nghttp2), for browsers, which speak HTTP/2
 * only over TLS. There a request is an origin-form :path on cfg.upstream,
 * with the HTTP/1.1 gateway's semantics (netd/front.c): bodies relayed raw,
 * redirects returned, the client's own cookies, no x-netstash-* attributes
 * and no control requests.
 */
#include "ns_setup.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <http_parser.h>
#include <jansson.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <netstash/netstash.h>

#include "core/buf.h"
#include "core/ctx.h"
#include "netd/netd.h"
#include "preload/serve.h"
#include "preload/lookup_http.h"
#include "transport/decode.h"
#include "transport/fetch.h"

#define MAX_REQ_BODY (64u << 20)
#define MAX_HEADER_BYTES (64u << 10)
#define WRITE_HIGH (256u << 10) /* stop producing frames above this backlog */
/* The HTTP/2 gateway keeps little queued below nghttp2 (in libuv and, with
 * TCP_NOTSENT_LOWAT, unsent in the kernel): what is already queued goes out
 * first, so a response head or a high-priority stream that comes later waits
 * behind at most this much instead of behind whole image bodies — a browser
 * asks for a page's resources as it discovers them, on one connection. */
#define GW_WRITE_HIGH (32u << 10)
#define GW_NOTSENT_LOWAT (16u << 10)
/* A gateway connection must finish its TLS handshake within GW_HANDSHAKE_MS
 * and is closed (GOAWAY) after GW_IDLE_MS without a byte from the client
 * while no stream is open: a TCP port, unlike the IPC socket, is open to
 * every local user, and idle or half-open connections must not pile up. */
#define GW_HANDSHAKE_MS 10000u
#define GW_IDLE_MS 120000u
#define GRACE_MS 5000           /* stop: in-flight requests get this long */
/* answer_stored: larger bodies, more fields or longer names are a job's */
#define IPC_FAST_MAX_BODY (1u << 20)
#define IPC_FAST_MAX_FIELDS 64u
#define IPC_FAST_NAME_MAX 63u
/* A lookup connection with more unread answers than this is closed. */
#define LOOKUP_BACKLOG_MAX (2 * (size_t)NS_LOOKUP_MAX_BODY)

/* What answering HTTP/1.1 lookups takes besides a connection: a hit (used
 * and released within each answer), the answers' head, built here, and the
 * last HTTP-cache lookup's request, filled again when the next one is for the
 * same URL (as written in the lookup: req_url). One for the lookups the loop
 * answers, one per lookup thread. */
typedef struct lk_server {
  netstash_preload_hit *hit;
  uint8_t *head;
  size_t head_cap;
  netstash_request *req;
  char *req_url;
} lk_server;

struct netd_ipc {
  netd *d;
  uv_pipe_t listener;
  int listening;
  ns_list sessions;
  uv_timer_t grace;
  int grace_ok;
  void (*done)(void *);
  void *done_ud;
  int stopping;
  size_t nsessions;
  /* one write per session per loop turn: callbacks mark sessions dirty, the
   * check handle (after the turn's I/O) flushes them */
  uv_check_t flusher;
  uv_idle_t kick;    /* while sessions are dirty: the loop must not block first */
  int flusher_state; /* 0 closed, 1 open, 2 closing */
  int flusher_closing; /* handles whose close callback is pending */
  ns_list dirty;
  /* the HTTP/2 gateway */
  uv_tcp_t gw_listener;
  int gw_listening;
  SSL_CTX *gw_tls;
  char *gw_upstream; /* cfg.upstream without a trailing '/' */
  /* HTTP/1.1 lookups the loop answers (its hit also serves the HTTP/2
   * requests' stored answers, answer_stored) */
  lk_server lk;
  /* lookup connections with a thread of their own (lk_thread): the list
   * and each one's fd and done under lk_lock */
  pthread_mutex_t lk_lock;
  ns_list lk_threads;
  size_t nlk_threads;
  size_t lk_threads_max;
  /* streams closed while their job finishes (ipc_stream.finishing) */
  ns_list finishing;
  size_t nfinishing;
  /* HTTP/2 requests' stored answers (answer_stored): the fields' names
   * lower-cased, IPC_FAST_NAME_MAX + 1 bytes per field */
  char *fast_names;
};

/* An HTTP/1.1 lookup connection (lookup_http.h): the request being read. */
typedef struct lk_conn {
  http_parser p;
  char url[NS_LOOKUP_MAX_URL + 1];
  size_t url_len, head_bytes;
  int too_big;      /* the head over its limit (431), or the target: */
  int url_too_long; /* (414) */
  int has_body;     /* a request with a body: refused */
  int ready;        /* a request is complete (the parser paused on it) */
  int keep_alive;   /* of that request */
  /* its fields as "name:value\r\n" lines (HTTP-cache lookups send the
   * request's own, lookup_http.h) */
  char fields[NS_LOOKUP_MAX_REQ_HEAD + 8];
  size_t fields_len;
  int in_value;
} lk_conn;

typedef struct ipc_sess {
  netd_ipc *ipc;
  ns_list node;
  union {
    uv_pipe_t pipe; /* IPC */
    uv_tcp_t tcp;   /* the HTTP/2 gateway */
  } h;
  SSL *ssl;      /* the gateway's TLS (memory BIOs), NULL for IPC */
  int gateway;   /* gateway semantics (see the top of the file) */
  int tls_ready; /* handshake done, ALPN h2 */
  uv_timer_t timer;    /* the gateway's handshake and idle limits */
  int timer_ok;
  int handles;         /* handles still open: s is freed when the last one closed */
  uint64_t active_ms;  /* loop time of the client's last bytes */
  nghttp2_session *ng;
  ns_list streams;
  size_t backlog;    /* bytes handed to uv_write, not yet written */
  int closing;
  int in_send;
  int dirty;
  ns_list dirty_node;
  struct wreq *spare; /* the last write's buffer, kept for the next */
  lk_conn *lk;        /* IPC speaking HTTP/1.1: preload lookups (lookup_http.h) */
  int lk_eof;         /* close once its answers are out (client EOF, refused) */
  char sniff[3];      /* an IPC connection's first bytes: "PRI" is HTTP/2 */
  size_t nsniff;
} ipc_sess;

typedef struct ipc_stream {
  ipc_sess *s;
  ns_list node;
  int32_t id;
  /* request */
  char *method, *scheme, *authority, *path;
  char **hdrs; /* "name: value" */
  size_t nhdrs, hdr_bytes;
  int dest, mode, cred, worker, manual_redirect, prio, top_nav, raw;
  int scheme_set; /* x-netstash-scheme seen: :scheme is the transport's */
  uint32_t load_flags;
  char *top_site, *initiator, *jar, *site_for_cookies;
  int has_dest, has_mode, has_cred, has_flags, has_prio;
  uint8_t *body;
  size_t body_len, body_cap;
  int too_big;
  /* answer */
  netstash_job *job;
  int head_sent, job_done, eof, data_deferred;
  /* a network answer's body length (Content-Length of a body relayed as
   * received), -1: unknown; the body bytes relayed so far. Once they are all
   * out, END_STREAM goes with them and the job is let go to end on its own
   * (finishing: a miss's job ends only once its entry is committed) */
  int64_t expect;
  uint64_t sent;
  int finishing;
  netd_ipc *fipc; /* set when the stream closed while its job was finishing */
  netstash_error err;
  uint64_t t0;
  char *ctrl; /* control answer body */
  size_t ctrl_len, ctrl_off;
} ipc_stream;

static void sess_flush(ipc_sess *s);
/* The write backlog above which no more frames are produced. */
static size_t write_high(const ipc_sess *s) { return s->gateway ? GW_WRITE_HIGH : WRITE_HIGH; }
static void gw_timer(uv_timer_t *t);
static void sess_mark(ipc_sess *s);
static void sess_close(ipc_sess *s);

/* ------------------------------------------------------------ streams */

static void stream_release(ipc_stream *st) {
  free(st->method);
  free(st->scheme);
  free(st->authority);
  free(st->path);
  for (size_t i = 0; i < st->nhdrs; i++)
    free(st->hdrs[i]);
  free(st->hdrs);
  free(st->top_site);
  free(st->initiator);
  free(st->jar);
  free(st->site_for_cookies);
  free(st->body);
  free(st->ctrl);
  free(st);
}

static void stream_free(ipc_stream *st) {
  ns_list_remove(&st->node);
  if (st->job && st->finishing && !st->job_done) {
    /* the answer is out whole: the job is not cancelled (a miss would not be
     * stored) but let go; job_complete frees the stream */
    netd_ipc *ipc = st->s->ipc;
    st->fipc = ipc;
    st->s = NULL;
    ns_list_insert_tail(&ipc->finishing, &st->node);
    ipc->nfinishing++;
    atomic_fetch_add_explicit(&ipc->d->metrics.ipc_jobs_finishing, 1, memory_order_relaxed);
    return;
  }
  if (st->job) {
    netstash_job_del(st->job); /* cancels when still running */
    st->job = NULL;
  }
  stream_release(st);
}

/* A stream let go by stream_free whose job has ended, or is cancelled
 * (netstash_job_del cancels a job still running: netd stops). */
static void finishing_end(ipc_stream *st) {
  netd_ipc *ipc = st->fipc;
  netstash_job_del(st->job);
  st->job = NULL;
  ns_list_remove(&st->node);
  ipc->nfinishing--;
  atomic_fetch_sub_explicit(&ipc->d->metrics.ipc_jobs_finishing, 1, memory_order_relaxed);
  stream_release(st);
}

static ipc_stream *stream_get(ipc_sess *s, int32_t id) {
  return nghttp2_session_get_stream_user_data(s->ng, id);
}

/* ------------------------------------------------------------ answers */

#define NV(n, v)                                                               \
  {                                                                            \
    (uint8_t *)(uintptr_t)(n), (uint8_t *)(uintptr_t)(v), strlen(n), strlen(v), \
        NGHTTP2_NV_FLAG_NONE                                                   \
  }

static ssize_t read_ctrl(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t len,
                         uint32_t *flags, nghttp2_data_source *src, void *ud) {
  ipc_stream *st = src->ptr;
  size_t n = st->ctrl_len - st->ctrl_off;
  (void)ng;
  (void)id;
  (void)ud;
  if (n > len)
    n = len;
  if (n) /* an empty stored body has no buffer (UBSan: memcpy from NULL) */
    memcpy(buf, st->ctrl + st->ctrl_off, n);
  st->ctrl_off += n;
  if (st->ctrl_off == st->ctrl_len)
    *flags |= NGHTTP2_DATA_FLAG_EOF;
  return (ssize_t)n;
}

/* A small answer from memory (control requests, 502s); takes body. */
static void answer_mem(ipc_stream *st, int status, const char *ctype, char *body,
                       const char *err_name) {
  char code[8];
  nghttp2_nv nva[4];
  size_t n = 2;
  nghttp2_data_provider dp = {.source.ptr = st, .read_callback = read_ctrl};
  snprintf(code, sizeof(code), "%d", status);
  nva[0] = (nghttp2_nv)NV(":status", code);
  nva[1] = (nghttp2_nv)NV("content-type", ctype);
  if (err_name) {
    nghttp2_nv e = NV("x-netstash-error", err_name);
    nva[n++] = e;
  }
  free(st->ctrl);
  st->ctrl = body;
  st->ctrl_len = body ? strlen(body) : 0;
  st->ctrl_off = 0;
  st->head_sent = 1;
  nghttp2_submit_response(st->s->ng, st->id, nva, n, &dp);
}

static char *json_str(json_t *o) {
  char *s = json_dumps(o, JSON_COMPACT);
  size_t n = s ? strlen(s) : 0;
  char *t = s ? realloc(s, n + 2) : NULL;
  json_decref(o);
  if (!t) {
    free(s);
    return NULL;
  }
  t[n] = '\n';
  t[n + 1] = 0;
  return t;
}

static int query_flag(const char *path, const char *name, int *out) {
  const char *q = strchr(path, '?');
  size_t nl = strlen(name);
  while (q) {
    q++;
    if (strncmp(q, name, nl) == 0 && q[nl] == '=') {
      *out = q[nl + 1] == '1';
      return 1;
    }
    q = strchr(q, '&');
  }
  return 0;
}

static void control(ipc_stream *st) {
  netd *d = st->s->ipc->d;
  const char *p = st->path;
  size_t plen = strcspn(p, "?");
  int get = !strcmp(st->method, "GET"), post = !strcmp(st->method, "POST");
  if (get && plen == 7 && !strncmp(p, "/status", 7)) {
    json_t *o = json_object(), *req = json_object(), *w;
    char *warms = netd_warmer_status_json(d);
    static const char *const names[] = {"preload", "cache", "revalidated", "network", "error"};
    for (int i = 0; i < NETD_SRC_N; i++)
      json_object_set_new(req, names[i], json_integer((json_int_t)atomic_load(&d->metrics.requests[i])));
    json_object_set_new(o, "version", json_string(netstash_version(NULL, NULL)));
    json_object_set_new(o, "pid", json_integer(getpid()));
    json_object_set_new(o, "uptime_s", json_integer((json_int_t)((ns_now_us() - d->started_us) / 1000000)));
    json_object_set_new(o, "profile", json_string(d->cfg.profile));
    json_object_set_new(o, "socket", json_string(d->cfg.socket_path));
    json_object_set_new(o, "ipc_clients", json_integer((json_int_t)netd_ipc_clients(d)));
    json_object_set_new(o, "lookup_threads",
                        json_pack("{s:I,s:I}", "serving",
                                  (json_int_t)atomic_load(&d->metrics.lookup_threads), "max",
                                  (json_int_t)st->s->ipc->lk_threads_max));
    json_object_set_new(o, "requests", req);
    if ((w = netd_store_figures(d->ctx)) != NULL)
      json_object_set_new(o, "store", w);
    json_object_set_new(o, "signals", json_pack("{s:b,s:b,s:b}", "metered", atomic_load(&d->metered),
                                                "low_battery", atomic_load(&d->low_battery),
                                                "foreground", atomic_load(&d->foreground)));
    w = warms ? json_loads(warms, 0, NULL) : NULL;
    json_object_set_new(o, "warms", w ? w : json_array());
    free(warms);
    answer_mem(st, 200, "application/json", json_str(o), NULL);
  } else if (get && plen == 8 && !strncmp(p, "/metrics", 8)) {
    answer_mem(st, 200, "text/plain; version=0.0.4", netd_metrics_render(&d->metrics, d->ctx),
               NULL);
  } else if (get && plen == 3 && !strncmp(p, "/ls", 3)) {
    char *js = NULL;
    netstash_error e = netstash_preload_describe(d->ctx, NULL, 0, &js);
    if (e != NETSTASH_OK) {
      json_t *o = json_pack("{s:s,s:s}", "error", netstash_error_name(e), "message",
                            netstash_strerror(e));
      answer_mem(st, 500, "application/json", json_str(o), netstash_error_name(e));
    } else {
      char *copy = strdup(js);
      netstash_free(d->ctx, js);
      answer_mem(st, 200, "application/json", copy, NULL);
    }
  } else if (post && plen == 5 && !strncmp(p, "/warm", 5)) {
    int n = netd_warmer_kick(d);
    answer_mem(st, 200, "application/json", json_str(json_pack("{s:i}", "started", n)), NULL);
  } else if (post && plen == 8 && !strncmp(p, "/signals", 8)) {
    int v;
    if (query_flag(p, "metered", &v))
      atomic_store(&d->metered, v);
    if (query_flag(p, "low_battery", &v))
      atomic_store(&d->low_battery, v);
    if (query_flag(p, "foreground", &v))
      atomic_store(&d->foreground, v);
    netd_warmer_signals(d);
    netd_log(d, NETSTASH_LOG_INFO, "host signals: metered %d, low battery %d, foreground %d",
             atomic_load(&d->metered), atomic_load(&d->low_battery),
             atomic_load(&d->foreground));
    answer_mem(st, 200, "application/json",
               json_str(json_pack("{s:b,s:b,s:b}", "metered", atomic_load(&d->metered),
                                  "low_battery", atomic_load(&d->low_battery), "foreground",
                                  atomic_load(&d->foreground))),
               NULL);
  } else {
    answer_mem(st, 404, "text/plain",
               strdup("netd: unknown control request (GET /status, /metrics, /ls; POST /warm, "
                      "/signals)\n"),
               NULL);
  }
}

static ssize_t read_job(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t len,
                        uint32_t *flags, nghttp2_data_source *src, void *ud) {
  ipc_stream *st = src->ptr;
  size_t n = 0;
  netstash_error e;
  (void)ng;
  (void)id;
  (void)ud;
  if (st->s->backlog > write_high(st->s)) {
    st->data_deferred = 1;
    return NGHTTP2_ERR_DEFERRED;
  }
  e = netstash_job_read(st->job, buf, len, &n);
  if (e == NETSTASH_E_AGAIN) {
    st->data_deferred = 1;
    return NGHTTP2_ERR_DEFERRED;
  }
  if (e != NETSTASH_OK)
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* resets the stream */
  /* fill the frame; when the body is complete, END_STREAM rides on it */
  while (n > 0 && n < len) {
    size_t more = 0;
    e = netstash_job_read(st->job, buf + n, len - n, &more);
    if (e != NETSTASH_OK)
      break; /* AGAIN: the rest later; an error: reported by the next call */
    if (more == 0) {
      *flags |= NGHTTP2_DATA_FLAG_EOF;
      st->eof = 1;
      break;
    }
    n += more;
  }
  if (n == 0) {
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    st->eof = 1;
    return 0;
  }
  st->sent += n;
  if (!st->eof && st->expect >= 0 && st->sent == (uint64_t)st->expect) {
    /* every announced byte: the stream ends here, whatever the job still
     * does (a miss waits for its entry's commit) */
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    st->eof = 1;
    st->finishing = !st->job_done;
  }
  atomic_fetch_add(&st->s->ipc->d->metrics.bytes_out, n);
  return (ssize_t)n;
}

static int hop_by_hop(const char *n) {
  static const char *const drop[] = {"connection", "keep-alive", "proxy-connection",
                                     "transfer-encoding", "upgrade", "te", "trailer"};
  for (size_t i = 0; i < sizeof(drop) / sizeof(drop[0]); i++)
    if (!strcmp(n, drop[i]))
      return 1;
  return 0;
}

/* Does a response field (name lower-case) go to the client? Not hop-by-hop
 * ones, nor the answer fields of an upstream netd (ours follow); unless the
 * request is raw, neither the coding nor the length of a body the library
 * decoded (they describe other bytes). The length of a body that goes as it
 * is stays, as a local-mode fetch has it (a browser shows progress by it;
 * HTTP/2 holds the DATA frames to it) — but never with a 1xx or 204, which
 * RFC 9110 §8.6 forbids and the client's nghttp2 rejects. */
static int relayed(const ipc_stream *st, const char *name, int decoded, int status) {
  if (hop_by_hop(name) || !strncmp(name, "x-netstash-", 11))
    return 0;
  if (st->raw)
    return 1;
  if (!strcmp(name, "content-encoding"))
    return !decoded;
  if (!strcmp(name, "content-length"))
    return !decoded && status >= 200 && status != 204;
  return 1;
}

static const char *source_name(netstash_source s) {
  switch (s) {
  case NETSTASH_SOURCE_PRELOAD:
    return "preload";
  case NETSTASH_SOURCE_CACHE:
    return "cache";
  case NETSTASH_SOURCE_REVALIDATED:
    return "revalidated";
  default:
    return "network";
  }
}

/* The length of the body a job relays for a network answer: its
 * Content-Length when the body goes as received (raw, or no content coding
 * the library decodes) and the status has a body; -1 otherwise (stored
 * answers end at once anyway; a decoded body's length is unknown). libcurl
 * and nghttp2 hold a network body to its Content-Length. */
static int64_t answer_length(const ipc_stream *st, const netstash_fetch *f, int decoded) {
  const char *cl = netstash_fetch_header(f, "content-length");
  int status = netstash_fetch_status(f);
  if (!cl || netstash_fetch_source(f) != NETSTASH_SOURCE_NETWORK || (decoded && !st->raw) ||
      status < 200 || status == 204 || status == 304 || !strcmp(st->method, "HEAD"))
    return -1;
  return netd_parse_length(cl, strlen(cl));
}

static void job_response(netstash_job *job, void *ud) {
  ipc_stream *st = ud;
  const netstash_fetch *f = netstash_job_fetch(job);
  size_t n = netstash_fetch_header_count(f), k = 0;
  nghttp2_nv *nva = calloc(n + 4, sizeof(*nva));
  char code[8];
  const char *reason = netstash_fetch_cache_reason(f);
  const char *ce = netstash_fetch_header(f, "content-encoding");
  ns_coding codings[NS_DECODE_MAX_LAYERS];
  /* the library decoded the body only for codings it knows: one it does
   * not (x-foo) came as sent, and its field goes along (as Chromium hands
   * such a body over) — dropping it gave coded bytes as identity */
  int decoded = ce && ns_coding_parse(ce, strlen(ce), codings) > 0;
  int status = netstash_fetch_status(f);
  nghttp2_data_provider dp = {.source.ptr = st, .read_callback = read_job};
  netd *d = st->s->ipc->d;
  if (!nva) {
    nghttp2_submit_rst_stream(st->s->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
    sess_mark(st->s);
    return;
  }
  snprintf(code, sizeof(code), "%d", status);
  nva[k++] = (nghttp2_nv)NV(":status", code);
  for (size_t i = 0; i < n; i++) {
    const char *hn, *hv;
    if (netstash_fetch_header_at(f, i, &hn, &hv) != NETSTASH_OK ||
        !relayed(st, hn, decoded, status))
      continue;
    nva[k++] = (nghttp2_nv)NV(hn, hv);
  }
  nva[k++] = (nghttp2_nv)NV("x-netstash-source", source_name(netstash_fetch_source(f)));
  if (reason && reason[0])
    nva[k++] = (nghttp2_nv)NV("x-netstash-cache-reason", reason);
  st->head_sent = 1;
  netd_metrics_request(&d->metrics, netd_source_index(netstash_fetch_source(f)),
                       ns_now_us() - st->t0);
  st->expect = answer_length(st, f, decoded);
  if (!strcmp(st->method, "HEAD") || st->expect == 0) {
    nghttp2_submit_response(st->s->ng, st->id, nva, k, NULL);
    st->eof = 1;
    st->finishing = !st->job_done && st->expect == 0;
  } else {
    nghttp2_submit_response(st->s->ng, st->id, nva, k, &dp);
  }
  free(nva);
  sess_mark(st->s);
}

static void job_readable(netstash_job *job, void *ud) {
  ipc_stream *st = ud;
  (void)job;
  if (st->finishing)
    return; /* the answer is out */
  if (st->data_deferred) {
    st->data_deferred = 0;
    nghttp2_session_resume_data(st->s->ng, st->id);
    sess_mark(st->s);
  }
}

static void ipc_maybe_done(netd_ipc *ipc);

static void job_complete(netstash_job *job, netstash_error err, void *ud) {
  ipc_stream *st = ud;
  netd *d;
  st->job_done = 1;
  st->err = err;
  if (st->finishing) { /* its answer went out whole before */
    if (err != NETSTASH_OK)
      netd_log(st->s ? st->s->ipc->d : st->fipc->d, NETSTASH_LOG_DEBUG,
               "IPC: a job ended after its answer: %s", netstash_error_name(err));
    if (!st->s) { /* and its stream is closed */
      netd_ipc *ipc = st->fipc;
      finishing_end(st);
      ipc_maybe_done(ipc);
    }
    return;
  }
  d = st->s->ipc->d;
  if (err != NETSTASH_OK && !st->head_sent) {
    const netstash_fetch *f = netstash_job_fetch(job);
    char *body = NULL;
    const char *detail = f ? netstash_fetch_error_detail(f) : "";
    size_t n = strlen(detail) + 128;
    body = malloc(n);
    if (body)
      snprintf(body, n, "netd: %s: %s\n", netstash_error_name(err), detail);
    netd_metrics_request(&d->metrics, NETD_SRC_ERROR, ns_now_us() - st->t0);
    answer_mem(st, netd_error_status(err), "text/plain", body, netstash_error_name(err));
  } else if (err != NETSTASH_OK) {
    /* the head is out: the body cannot be completed */
    nghttp2_submit_rst_stream(st->s->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
  } else if (st->data_deferred) {
    st->data_deferred = 0;
    nghttp2_session_resume_data(st->s->ng, st->id);
  }
  sess_mark(st->s);
}

static const netstash_job_callbacks job_cbs = {
    .on_response = job_response, .on_readable = job_readable, .on_complete = job_complete};

/* A stored answer for a plain GET without a job, as the HTTP/1.1 gateway's
 * answer_stored does it: the preload store's, else a fresh one of the HTTP
 * cache (netstash_intercept_preloaded / _cached: the job's order and its
 * rules — everything they leave, a job does), on the loop thread in the
 * request's own callback. The head is the one job_response would send from
 * the same entry (field names lower-cased for HTTP/2, hop-by-hop fields
 * dropped, Content-Length only for raw requests, x-netstash-source and the
 * cache reason added); the body, at most IPC_FAST_MAX_BODY, is copied out of
 * the store's map so that the read transaction ends here. 1 when answered,
 * 0 when a job must answer. */
static int answer_stored(ipc_stream *st, const netstash_request *req) {
  netd_ipc *ipc = st->s->ipc;
  netd *d = ipc->d;
  netstash_preload_hit *hit = ipc->lk.hit;
  nghttp2_nv nva[IPC_FAST_MAX_FIELDS + 3];
  nghttp2_data_provider dp = {.source.ptr = st, .read_callback = read_ctrl};
  char code[8], why[192], *names, *body = NULL;
  const char *reason;
  netstash_source src;
  size_t nf, k = 0, off = 0, i;
  uint64_t size;
  uint32_t nc;
  int status;

  if (!hit || !ipc->fast_names || d->cfg.no_fast_hits || strcmp(st->method, "GET") || st->body ||
      !netd_stored_lookup(hit, req, 1, &src))
    return 0;
  nf = netstash_preload_hit_header_count(hit);
  size = netstash_preload_hit_body_size(hit);
  nc = netstash_preload_hit_chunk_count(hit);
  names = ipc->fast_names;
  if (nf > IPC_FAST_MAX_FIELDS || size > IPC_FAST_MAX_BODY ||
      (size && !(body = malloc((size_t)size)))) {
    netstash_preload_hit_release(hit);
    return 0;
  }
  for (i = 0; i < nc; i++) {
    const uint8_t *c;
    size_t len;
    if (netstash_preload_hit_chunk(hit, (uint32_t)i, &c, &len) != NETSTASH_OK || len > size - off)
      break;
    memcpy(body + off, c, len);
    off += len;
  }
  if (i < nc || off != size) { /* a damaged entry: the job's error to report */
    free(body);
    netstash_preload_hit_release(hit);
    return 0;
  }
  status = netstash_preload_hit_status(hit);
  snprintf(code, sizeof(code), "%d", status);
  nva[k++] = (nghttp2_nv)NV(":status", code);
  for (i = 0; i < nf; i++) {
    const char *name, *value;
    size_t nl, vl;
    char *lower;
    if (netstash_preload_hit_header_at(hit, i, &name, &nl, &value, &vl) != NETSTASH_OK ||
        nl > IPC_FAST_NAME_MAX)
      break;
    lower = names + i * (IPC_FAST_NAME_MAX + 1);
    for (size_t j = 0; j < nl; j++)
      lower[j] = (char)((name[j] >= 'A' && name[j] <= 'Z') ? name[j] + 32 : name[j]);
    lower[nl] = 0;
    /* a decoded body's coding and length are left out already */
    if (!relayed(st, lower, 0, status))
      continue;
    nva[k++] =
        (nghttp2_nv){(uint8_t *)lower, (uint8_t *)(uintptr_t)value, nl, vl, NGHTTP2_NV_FLAG_NONE};
  }
  if (i < nf) {
    free(body);
    netstash_preload_hit_release(hit);
    return 0;
  }
  nva[k++] = (nghttp2_nv)NV("x-netstash-source", source_name(src));
  reason = ns_preload_hit_cache_reason(hit, why, sizeof(why));
  if (reason && reason[0])
    nva[k++] = (nghttp2_nv)NV("x-netstash-cache-reason", reason);
  free(st->ctrl);
  st->ctrl = body;
  st->ctrl_len = (size_t)size;
  st->ctrl_off = 0;
  st->head_sent = 1;
  /* nghttp2 copies the fields: the hit's may go */
  if (nghttp2_submit_response(st->s->ng, st->id, nva, k, &dp) != 0) {
    netstash_preload_hit_release(hit);
    nghttp2_submit_rst_stream(st->s->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
    sess_mark(st->s);
    return 1;
  }
  netstash_preload_hit_release(hit);
  netd_metrics_request(&d->metrics, netd_source_index(src), ns_now_us() - st->t0);
  atomic_fetch_add_explicit(&d->metrics.ipc_fast_hits, 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&d->metrics.bytes_out, size, memory_order_relaxed);
  sess_mark(st->s);
  return 1;
}

/* A library request for url with the stream's method and header fields
 * (the gateway's without content-length and te: the library frames the body,
 * and HTTP/2 has no other hop-by-hop fields a client may send). *has_ae (when
 * not NULL) tells whether the client sent accept-encoding. */
static netstash_error stream_request(ipc_stream *st, const char *url, netstash_request **req,
                                     int *has_ae) {
  netstash_error e = netstash_request_new(req, url);
  if (e == NETSTASH_OK && strcmp(st->method, "GET"))
    e = netstash_request_set_method(*req, st->method);
  for (size_t i = 0; e == NETSTASH_OK && i < st->nhdrs; i++) {
    char *c = strchr(st->hdrs[i], ':');
    *c = 0;
    if (!st->s->gateway || (strcmp(st->hdrs[i], "content-length") && strcmp(st->hdrs[i], "te")))
      e = netstash_request_add_header(*req, st->hdrs[i], c + 2);
    if (has_ae)
      *has_ae |= !strcmp(st->hdrs[i], "accept-encoding");
    *c = ':';
  }
  return e;
}

/* Starts the job of req (deleted here), the cfg's pins added, unless e
 * already says the request is bad: then a 400 names the error. */
static void run_request(ipc_stream *st, netstash_request *req, netstash_error e) {
  netd *d = st->s->ipc->d;
  if (e == NETSTASH_OK && d->cfg.resolve)
    e = netd_add_resolves(req, d->cfg.resolve);
  if (e == NETSTASH_OK)
    e = netstash_job_start(d->ctx, req, &job_cbs, st, &st->job);
  netstash_request_del(req);
  if (e != NETSTASH_OK) {
    char msg[160];
    snprintf(msg, sizeof(msg), "netd: bad request: %s\n", netstash_strerror(e));
    netd_metrics_request(&d->metrics, NETD_SRC_ERROR, 0);
    answer_mem(st, 400, "text/plain", strdup(msg), netstash_error_name(e));
  }
}

/* The HTTP/2 gateway's request: :path on the upstream, as the HTTP/1.1
 * gateway does it (netd/front.c start_job). */
static void start_gateway_request(ipc_stream *st) {
  netstash_request *req = NULL;
  netstash_error e;
  int has_ae = 0;
  char *url;
  size_t ul;
  if (!st->method || !st->path || st->path[0] != '/') {
    answer_mem(st, 400, "text/plain",
               strdup("netd: :method and an origin-form :path (/path?query) are required\n"),
               "NETSTASH_E_INVALID_ARGUMENT");
    return;
  }
  if (st->too_big) {
    answer_mem(st, 413, "text/plain", strdup("netd: request body over 64 MiB\n"),
               "NETSTASH_E_TOO_LARGE");
    return;
  }
  ul = strlen(st->s->ipc->gw_upstream) + strlen(st->path) + 1;
  url = malloc(ul);
  if (!url) {
    nghttp2_submit_rst_stream(st->s->ng, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
    sess_mark(st->s);
    return;
  }
  snprintf(url, ul, "%s%s", st->s->ipc->gw_upstream, st->path);
  e = stream_request(st, url, &req, &has_ae);
  free(url);
  if (e == NETSTASH_OK)
    e = netd_relay_request(req, has_ae);
  if (e == NETSTASH_OK && st->body)
    e = netstash_request_set_body(req, st->body, st->body_len);
  if (e == NETSTASH_OK) /* the client's cookies; netd's jar stays out of it */
    e = netstash_request_set_cookies(req, 0);
  st->raw = 1; /* the answer keeps its coding and length */
  if (e == NETSTASH_OK && answer_stored(st, req)) {
    netstash_request_del(req);
    return;
  }
  run_request(st, req, e);
}

static void start_request(ipc_stream *st) {
  netstash_request *req = NULL;
  netstash_error e;
  char *url;
  size_t ul;
  st->t0 = ns_now_us();
  if (st->s->gateway) {
    start_gateway_request(st);
    return;
  }
  if (!st->method || !st->path || !st->authority) {
    answer_mem(st, 400, "text/plain", strdup("netd: :method, :authority and :path are required\n"),
               "NETSTASH_E_INVALID_ARGUMENT");
    return;
  }
  if (!strcmp(st->authority, "netd")) {
    control(st);
    return;
  }
  if (st->too_big) {
    answer_mem(st, 413, "text/plain", strdup("netd: request body over 64 MiB\n"),
               "NETSTASH_E_TOO_LARGE");
    return;
  }
  ul = strlen(st->authority) + strlen(st->path) + 16;
  url = malloc(ul);
  if (!url)
    return;
  snprintf(url, ul, "%s://%s%s", st->scheme && !strcmp(st->scheme, "http") ? "http" : "https",
           st->authority, st->path);
  e = stream_request(st, url, &req, NULL);
  free(url);
  if (e == NETSTASH_OK && st->body)
    e = netstash_request_set_body(req, st->body, st->body_len);
  if (e == NETSTASH_OK && st->has_dest)
    e = netstash_request_set_destination(req, (netstash_destination)st->dest);
  if (e == NETSTASH_OK && st->has_mode)
    e = netstash_request_set_mode(req, (netstash_request_mode)st->mode);
  if (e == NETSTASH_OK && st->has_cred)
    e = netstash_request_set_credentials(req, (netstash_credentials)st->cred);
  if (e == NETSTASH_OK && st->has_flags)
    e = netstash_request_set_load_flags(req, st->load_flags);
  if (e == NETSTASH_OK && st->has_prio)
    e = netstash_request_set_priority(req, (netstash_priority)st->prio);
  if (e == NETSTASH_OK && st->worker)
    e = netstash_request_set_from_worker(req, 1);
  if (e == NETSTASH_OK && st->manual_redirect)
    e = netstash_request_set_redirect_mode(req, NETSTASH_REDIRECT_MANUAL);
  if (e == NETSTASH_OK && st->top_site)
    e = netstash_request_set_top_level_site(req, st->top_site);
  if (e == NETSTASH_OK && st->initiator)
    e = netstash_request_set_initiator(req, st->initiator);
  if (e == NETSTASH_OK && st->site_for_cookies)
    e = netstash_request_set_site_for_cookies(req, st->site_for_cookies, st->top_nav);
  if (e == NETSTASH_OK && st->jar)
    e = netstash_request_set_cookie_jar(req, st->jar);
  if (e == NETSTASH_OK && st->raw)
    e = netstash_request_set_raw_body(req, 1);
  if (e == NETSTASH_OK && answer_stored(st, req)) {
    netstash_request_del(req);
    return;
  }
  run_request(st, req, e);
}

/* ------------------------------------------------------------ nghttp2 callbacks */

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *frame, void *ud) {
  ipc_sess *s = ud;
  ipc_stream *st;
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
    return 0;
  st = calloc(1, sizeof(*st));
  if (!st)
    return NGHTTP2_ERR_CALLBACK_FAILURE;
  st->s = s;
  st->id = frame->hd.stream_id;
  st->expect = -1;
  ns_list_insert_tail(&s->streams, &st->node);
  nghttp2_session_set_stream_user_data(ng, st->id, st);
  return 0;
}

static int set_dup(char **dst, const uint8_t *v, size_t n) {
  char *c = strndup((const char *)v, n);
  if (!c)
    return -1;
  free(*dst);
  *dst = c;
  return 0;
}

static int attr_int(const uint8_t *v, size_t n, int max) {
  char buf[16];
  long x;
  char *end;
  if (n == 0 || n >= sizeof(buf))
    return -1;
  memcpy(buf, v, n);
  buf[n] = 0;
  x = strtol(buf, &end, 10);
  return *end || x < 0 || x > max ? -1 : (int)x;
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name,
                     size_t nlen, const uint8_t *value, size_t vlen, uint8_t flags, void *ud) {
  ipc_stream *st = stream_get(ud, frame->hd.stream_id);
  (void)ng;
  (void)flags;
  if (!st || frame->hd.type != NGHTTP2_HEADERS)
    return 0;
  st->hdr_bytes += nlen + vlen + 32;
  if (st->hdr_bytes > MAX_HEADER_BYTES)
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
#define IS(lit) (nlen == sizeof(lit) - 1 && !memcmp(name, lit, nlen))
  if (IS(":method"))
    return set_dup(&st->method, value, vlen) ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
  if (IS(":scheme"))
    return st->scheme ? 0 : set_dup(&st->scheme, value, vlen) ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
  if (IS(":authority"))
    return set_dup(&st->authority, value, vlen) ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
  if (IS(":path"))
    return set_dup(&st->path, value, vlen) ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
  if (nlen > 11 && !memcmp(name, "x-netstash-", 11)) {
    int x;
    if (st->s->gateway)
      return 0; /* a web page's fetch() must not choose jars or load flags */
    if (IS("x-netstash-destination") && (x = attr_int(value, vlen, 64)) >= 0)
      st->dest = x, st->has_dest = 1;
    else if (IS("x-netstash-mode") && (x = attr_int(value, vlen, 8)) >= 0)
      st->mode = x, st->has_mode = 1;
    else if (IS("x-netstash-credentials") && (x = attr_int(value, vlen, 8)) >= 0)
      st->cred = x, st->has_cred = 1;
    else if (IS("x-netstash-load-flags") && (x = attr_int(value, vlen, 0xffff)) >= 0)
      st->load_flags = (uint32_t)x, st->has_flags = 1;
    else if (IS("x-netstash-priority") && (x = attr_int(value, vlen, 4)) >= 0)
      st->prio = x, st->has_prio = 1;
    else if (IS("x-netstash-worker"))
      st->worker = vlen == 1 && value[0] == '1';
    else if (IS("x-netstash-redirect"))
      st->manual_redirect = vlen == 6 && !memcmp(value, "manual", 6);
    else if (IS("x-netstash-top-level-site"))
      set_dup(&st->top_site, value, vlen);
    else if (IS("x-netstash-initiator"))
      set_dup(&st->initiator, value, vlen);
    else if (IS("x-netstash-site-for-cookies"))
      set_dup(&st->site_for_cookies, value, vlen);
    else if (IS("x-netstash-scheme"))
      set_dup(&st->scheme, value, vlen);
    else if (IS("x-netstash-raw"))
      st->raw = vlen == 1 && value[0] == '1';
    else if (IS("x-netstash-top-level-navigation"))
      st->top_nav = vlen == 1 && value[0] == '1';
    else if (IS("x-netstash-jar"))
      set_dup(&st->jar, value, vlen);
    return 0; /* never forwarded */
  }
#undef IS
  if (name[0] == ':')
    return 0;
  {
    char **h = realloc(st->hdrs, (st->nhdrs + 1) * sizeof(*h));
    char *line;
    if (!h)
      return NGHTTP2_ERR_CALLBACK_FAILURE;
    st->hdrs = h;
    line = malloc(nlen + vlen + 3);
    if (!line)
      return NGHTTP2_ERR_CALLBACK_FAILURE;
    memcpy(line, name, nlen);
    memcpy(line + nlen, ": ", 2);
    memcpy(line + nlen + 2, value, vlen);
    line[nlen + vlen + 2] = 0;
    st->hdrs[st->nhdrs++] = line;
  }
  return 0;
}

static int on_data_chunk(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *ud) {
  ipc_stream *st = stream_get(ud, id);
  (void)ng;
  (void)flags;
  if (!st || st->too_big)
    return 0;
  if (st->body_len + len > MAX_REQ_BODY) {
    st->too_big = 1;
    return 0;
  }
  if (st->body_len + len > st->body_cap) {
    size_t cap = st->body_cap ? st->body_cap * 2 : 16384;
    uint8_t *b;
    while (cap < st->body_len + len)
      cap *= 2;
    b = realloc(st->body, cap);
    if (!b)
      return NGHTTP2_ERR_CALLBACK_FAILURE;
    st->body = b;
    st->body_cap = cap;
  }
  memcpy(st->body + st->body_len, data, len);
  st->body_len += len;
  return 0;
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, void *ud) {
  ipc_stream *st;
  (void)ng;
  if ((frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) ||
      !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
    return 0;
  st = stream_get(ud, frame->hd.stream_id);
  if (st && !st->job && !st->head_sent)
    start_request(st);
  return 0;
}

static int on_stream_close(nghttp2_session *ng, int32_t id, uint32_t code, void *ud) {
  ipc_stream *st = stream_get(ud, id);
  (void)ng;
  (void)code;
  if (st)
    stream_free(st); /* a job still running is cancelled, unless its answer is out */
  return 0;
}

/* ------------------------------------------------------------ session I/O */

typedef struct wreq {
  uv_write_t w;
  ipc_sess *s;
  size_t len, cap;
  uint8_t data[];
} wreq;

static void ipc_maybe_done(netd_ipc *ipc);
static void sess_abort(ipc_sess *s);

static void sess_closed(uv_handle_t *h) {
  ipc_sess *s = h->data;
  netd_ipc *ipc = s->ipc;
  if (--s->handles > 0)
    return;
  free(s);
  ipc->nsessions--;
  ipc_maybe_done(ipc);
}

static void sess_close(ipc_sess *s) {
  if (s->closing)
    return;
  s->closing = 1;
  if (s->dirty) {
    s->dirty = 0;
    ns_list_remove(&s->dirty_node);
  }
  free(s->spare);
  s->spare = NULL;
  free(s->lk);
  s->lk = NULL;
  atomic_fetch_sub(&s->ipc->d->metrics.ipc_conns_open, 1);
  while (!ns_list_empty(&s->streams))
    stream_free(ns_list_entry(s->streams.next, ipc_stream, node));
  nghttp2_session_del(s->ng);
  s->ng = NULL;
  SSL_free(s->ssl);
  s->ssl = NULL;
  ns_list_remove(&s->node);
  if (s->timer_ok) {
    uv_timer_stop(&s->timer);
    uv_close((uv_handle_t *)&s->timer, sess_closed);
  }
  uv_close((uv_handle_t *)&s->h, sess_closed);
}

static void on_written(uv_write_t *w, int status) {
  wreq *r = (wreq *)w;
  ipc_sess *s = r->s;
  s->backlog -= r->len;
  if (!s->closing && !s->spare)
    s->spare = r; /* no malloc (and no glibc trim/re-fault) per answer */
  else
    free(r);
  if (s->closing)
    return;
  if (status < 0 || (s->lk_eof && !s->backlog)) {
    sess_close(s);
    return;
  }
  if (s->backlog < write_high(s) / 2) {
    /* resume streams that stopped on the backlog */
    ns_list *pos, *tmp;
    ns_list_foreach_safe(pos, tmp, &s->streams) {
      ipc_stream *st = ns_list_entry(pos, ipc_stream, node);
      if (st->data_deferred && st->job) {
        st->data_deferred = 0;
        nghttp2_session_resume_data(s->ng, st->id);
      }
    }
    sess_mark(s);
  }
}

static void on_kick(uv_idle_t *h);

/* A session has frames to send: they go out at the end of this loop turn
 * (check phase). A mark made after this turn's check (a timer's or a close
 * callback) starts the idle handle so that the next poll does not block. */
static void sess_mark(ipc_sess *s) {
  netd_ipc *ipc = s->ipc;
  if (s->closing || s->dirty)
    return;
  s->dirty = 1;
  if (ns_list_empty(&ipc->dirty) && ipc->flusher_state == 1)
    uv_idle_start(&ipc->kick, on_kick);
  ns_list_insert_tail(&ipc->dirty, &s->dirty_node);
}

static void flush_dirty(netd_ipc *ipc) {
  uv_idle_stop(&ipc->kick);
  while (!ns_list_empty(&ipc->dirty)) {
    ipc_sess *s = ns_list_entry(ipc->dirty.next, ipc_sess, dirty_node);
    ns_list_remove(&s->dirty_node);
    s->dirty = 0;
    sess_flush(s);
  }
}

static void on_flush_check(uv_check_t *h) { flush_dirty(h->data); }
static void on_kick(uv_idle_t *h) { flush_dirty(h->data); }

/* Queues r's first len bytes on the socket; -1 when the session had to be
 * closed (r freed). */
static int sess_write(ipc_sess *s, wreq *r, size_t len) {
  uv_buf_t b = uv_buf_init((char *)r->data, (unsigned)len);
  r->s = s;
  r->len = len;
  s->backlog += len;
  if (uv_write(&r->w, (uv_stream_t *)&s->h, &b, 1, on_written) != 0) {
    s->backlog -= len;
    free(r);
    sess_close(s);
    return -1;
  }
  return 0;
}

/* A write buffer no longer needed is kept for the next write (one spare). */
static void keep_spare(ipc_sess *s, uint8_t *buf, size_t cap) {
  if (buf && !s->spare) {
    s->spare = (wreq *)buf;
    s->spare->cap = cap;
  } else {
    free(buf);
  }
}

/* TLS: hands what OpenSSL has written to its memory BIO to the socket.
 * -1 when the session had to be closed. */
static int tls_push(ipc_sess *s) {
  BIO *wbio = SSL_get_wbio(s->ssl);
  size_t n = BIO_ctrl_pending(wbio);
  wreq *r;
  if (!n)
    return 0;
  if (s->spare && s->spare->cap >= n) {
    r = s->spare;
    s->spare = NULL;
  } else if (!(r = malloc(sizeof(wreq) + n))) {
    sess_close(s);
    return -1;
  } else {
    r->cap = n;
  }
  if (BIO_read(wbio, r->data, (int)n) != (int)n) {
    free(r);
    sess_close(s);
    return -1;
  }
  return sess_write(s, r, n);
}

/* Sends what nghttp2 has, in one write per call (frames coalesced). */
static void sess_flush(ipc_sess *s) {
  uint8_t *acc = NULL;
  size_t len = 0, cap = 0;
  if (s->closing || s->in_send || !s->ng || (s->ssl && !s->tls_ready))
    return;
  if (s->spare) {
    acc = (uint8_t *)s->spare;
    cap = s->spare->cap;
    s->spare = NULL;
  }
  s->in_send = 1;
  for (;;) {
    const uint8_t *data;
    ssize_t n = nghttp2_session_mem_send(s->ng, &data);
    if (n < 0) {
      free(acc);
      s->in_send = 0;
      sess_close(s);
      return;
    }
    if (n == 0)
      break;
    if (len + (size_t)n > cap) {
      size_t nc = cap ? cap * 2 : 65536;
      uint8_t *na;
      while (nc < len + (size_t)n)
        nc *= 2;
      na = realloc(acc, sizeof(wreq) + nc);
      if (!na) {
        free(acc);
        s->in_send = 0;
        sess_close(s);
        return;
      }
      acc = na;
      cap = nc;
    }
    memcpy(acc + sizeof(wreq) + len, data, (size_t)n);
    len += (size_t)n;
    if (len >= write_high(s))
      break;
  }
  s->in_send = 0;
  if (len && s->ssl) {
    /* the frames become TLS records in OpenSSL's memory BIO, then one write */
    if (SSL_write(s->ssl, ((wreq *)acc)->data, (int)len) != (int)len) {
      free(acc);
      sess_close(s);
      return;
    }
    keep_spare(s, acc, cap);
    if (tls_push(s) != 0)
      return;
  } else if (len) {
    ((wreq *)acc)->cap = cap;
    if (sess_write(s, (wreq *)acc, len) != 0)
      return;
  } else {
    keep_spare(s, acc, cap);
  }
  if (!nghttp2_session_want_read(s->ng) && !nghttp2_session_want_write(s->ng) && !s->backlog)
    sess_close(s);
}

/* ------------------------------------------------------------ lookups */

/* Appends n bytes to the answer head being built (w->head); -1 on
 * allocation failure. */
static int lk_put(lk_server *w, size_t *len, const void *p, size_t n) {
  if (*len + n > w->head_cap) {
    size_t nc = w->head_cap ? w->head_cap : 4096;
    uint8_t *nb;
    while (nc < *len + n)
      nc *= 2;
    if (!(nb = realloc(w->head, nc)))
      return -1;
    w->head = nb;
    w->head_cap = nc;
  }
  memcpy(w->head + *len, p, n);
  *len += n;
  return 0;
}

static int lk_puts(lk_server *w, size_t *len, const char *str) {
  return lk_put(w, len, str, strlen(str));
}

/* Fields a stored head must not pass on: framing and hop-by-hop. */
static int lk_skip_field(const char *n, size_t nl, const char *v, size_t vl) {
  return (nl == 14 && !strncasecmp(n, "content-length", 14)) || netd_hop_by_hop(n, nl) ||
         memchr(n, '\r', nl) || memchr(n, '\n', nl) || memchr(v, '\r', vl) || memchr(v, '\n', vl);
}

/* Appends v in decimal. */
static int lk_put_u64(lk_server *w, size_t *len, uint64_t v) {
  char d[21];
  return lk_put(w, len, d, ns_fmt_u64(d, v));
}

/* The HTTP/1.1 head of the hit in w->head; *len its length. Built with
 * appends, not snprintf (a tenth of netd's user time per lookup). */
static netstash_error lk_head(lk_server *w, size_t *len) {
  const netstash_preload_hit *h = w->hit;
  size_t nf = netstash_preload_hit_header_count(h);
  const char *id = netstash_preload_hit_manifest_id(h), *reason;
  int status = netstash_preload_hit_status(h);
  char sl[13] = "HTTP/1.1 000 ";
  *len = 0;
  reason = http_status_str((enum http_status)status);
  sl[9] = (char)('0' + status / 100 % 10);
  sl[10] = (char)('0' + status / 10 % 10);
  sl[11] = (char)('0' + status % 10);
  if (lk_put(w, len, sl, sizeof(sl)) != 0 ||
      lk_puts(w, len, strcmp(reason, "<unknown>") ? reason : "") != 0 ||
      lk_put(w, len, "\r\n", 2) != 0)
    return NETSTASH_E_NOMEM;
  for (size_t i = 0; i < nf; i++) {
    const char *name, *value;
    size_t nl, vl;
    if (netstash_preload_hit_header_at(h, i, &name, &nl, &value, &vl) != NETSTASH_OK)
      return NETSTASH_E_INTERNAL;
    if (lk_skip_field(name, nl, value, vl))
      continue;
    if (lk_put(w, len, name, nl) != 0 || lk_put(w, len, ": ", 2) != 0 ||
        lk_put(w, len, value, vl) != 0 || lk_put(w, len, "\r\n", 2) != 0)
      return NETSTASH_E_NOMEM;
  }
  if (lk_puts(w, len, "Content-Length: ") != 0 ||
      lk_put_u64(w, len, netstash_preload_hit_body_size(h)) != 0)
    return NETSTASH_E_NOMEM;
  if (netstash_preload_hit_source(h) == NETSTASH_SOURCE_CACHE)
    return lk_puts(w, len, "\r\nX-Netstash-Source: cache\r\n\r\n") != 0 ? NETSTASH_E_NOMEM
                                                                        : NETSTASH_OK;
  if (lk_puts(w, len, "\r\nX-Netstash-Source: preload\r\nX-Netstash-Preload-Version: ") != 0 ||
      lk_put_u64(w, len, netstash_preload_hit_manifest_version(h)) != 0 ||
      lk_puts(w, len, "\r\nX-Netstash-Preload-Id: ") != 0 || lk_puts(w, len, id ? id : "") != 0 ||
      lk_puts(w, len, "\r\n\r\n") != 0)
    return NETSTASH_E_NOMEM;
  return NETSTASH_OK;
}

/* A lookup server for netd's context: its hit keeps `keep` entries decoded
 * (ns_preload_hit_keep). Without a hit (out of memory) lookups are answered
 * NETSTASH_E_ILLEGAL_STATE. */
static void lk_server_init(lk_server *w, netd *d, size_t keep) {
  memset(w, 0, sizeof(*w));
  if (netstash_preload_hit_new(d->ctx, &w->hit) != NETSTASH_OK)
    w->hit = NULL;
  else
    (void)ns_preload_hit_keep(w->hit, keep);
}

static void lk_server_free(lk_server *w) {
  netstash_preload_hit_del(w->hit);
  free(w->head);
  netstash_request_del(w->req);
  free(w->req_url);
  memset(w, 0, sizeof(*w));
}

/* The refusal of the request being read (status 400, 405, 414 or 431), in
 * msg (128 bytes); its length. The connection closes once it is written. */
static size_t lk_refusal(netd *d, char *msg, int status) {
  netd_log(d, NETSTASH_LOG_INFO, "IPC lookup client refused (%d)", status);
  return (size_t)snprintf(msg, 128,
                          "HTTP/1.1 %d %s\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                          status, http_status_str((enum http_status)status));
}

/* An HTTP-cache lookup (X-Netstash-Lookup: cache): the client's request
 * rebuilt from the lookup's fields, answered by netstash_intercept_cached on
 * netd's own context. */
static netstash_error lookup_cached(lk_server *w, lk_conn *k) {
  netstash_request *req = w->req;
  netstash_error e = NETSTASH_OK;
  char *p = k->fields, *end = k->fields + k->fields_len;
  if (req && !strcmp(w->req_url, k->url)) {
    ns_request_clear_fields(req); /* same URL: no new request, no URL parsed again */
  } else {
    netstash_request_del(req);
    free(w->req_url);
    w->req = NULL;
    if (!(w->req_url = strdup(k->url)))
      return NETSTASH_E_NOMEM;
    if ((e = netstash_request_new(&w->req, k->url)) != NETSTASH_OK)
      return e == NETSTASH_E_INVALID_ARGUMENT ? NETSTASH_E_NOT_FOUND : e;
    req = w->req;
  }
  while (e == NETSTASH_OK && p < end) {
    char *eol = memchr(p, '\r', (size_t)(end - p)), *colon, *v, *ve;
    if (!eol)
      break;
    *eol = '\0';
    colon = strchr(p, ':');
    if (colon) {
      *colon = '\0';
      for (v = colon + 1; *v == ' ' || *v == '\t'; v++)
        ;
      for (ve = eol; ve > v && (ve[-1] == ' ' || ve[-1] == '\t'); ve--)
        ;
      *ve = '\0';
      if (!strcasecmp(p, "x-netstash-top-level-site"))
        e = netstash_request_set_top_level_site(req, v);
      else if (strcasecmp(p, "host") != 0 && strncasecmp(p, "x-netstash-", 11) != 0)
        e = netstash_request_add_header(req, p, v);
    }
    p = eol + 2;
  }
  if (e == NETSTASH_OK)
    e = netstash_intercept_cached(req, w->hit);
  return e == NETSTASH_E_INVALID_ARGUMENT ? NETSTASH_E_NOT_FOUND : e;
}

/* Writes bufs (n) to a lookup connection: at once when the socket takes it
 * (the usual case), else the rest copied and queued behind. The hit is
 * released either way. -1 when the session was closed. */
static int lk_send(ipc_sess *s, const uv_buf_t *bufs, size_t n, size_t total) {
  netd_ipc *ipc = s->ipc;
  int w = uv_try_write((uv_stream_t *)&s->h, bufs, (unsigned)n);
  wreq *r = NULL;
  if (w == UV_EAGAIN)
    w = 0;
  if (w >= 0 && (size_t)w < total && (r = malloc(sizeof(wreq) + total - (size_t)w))) {
    r->cap = total - (size_t)w;
    netd_copy_unwritten(r->data, bufs, n, (size_t)w);
  }
  netstash_preload_hit_release(ipc->lk.hit); /* no read transaction left open */
  if (w < 0 || ((size_t)w < total && !r)) {
    sess_close(s);
    return -1;
  }
  if (!r) { /* all written */
    if (s->lk_eof && !s->backlog) {
      sess_close(s);
      return -1;
    }
    return 0;
  }
  if (sess_write(s, r, r->cap) != 0)
    return -1;
  if (s->backlog > LOOKUP_BACKLOG_MAX) {
    netd_log(ipc->d, NETSTASH_LOG_INFO, "IPC lookup client reads no answers: closed");
    sess_close(s);
    return -1;
  }
  return 0;
}

/* Refuses the request being read (status 400, 405, 414 or 431) and closes the
 * connection once that is written. */
static int lk_refuse(ipc_sess *s, int status) {
  char msg[128];
  size_t n = lk_refusal(s->ipc->d, msg, status);
  uv_buf_t b = uv_buf_init(msg, (unsigned)n);
  s->lk_eof = 1;
  uv_read_stop((uv_stream_t *)&s->h);
  return lk_send(s, &b, 1, n);
}

enum { LK_PRELOAD, LK_CACHE, LK_ANY };

/* Which store the lookup asks (X-Netstash-Lookup: cache, any, or none). */
static int lk_wants(const lk_conn *k) {
  static const char f[] = "x-netstash-lookup:";
  const char *p = k->fields, *end = k->fields + k->fields_len;
  while (p < end) {
    const char *eol = memchr(p, '\r', (size_t)(end - p));
    size_t n = eol ? (size_t)(eol - p) : (size_t)(end - p);
    if (n > sizeof(f) - 1 && !strncasecmp(p, f, sizeof(f) - 1)) {
      const char *v = p + sizeof(f) - 1;
      size_t vl;
      while (v < p + n && (*v == ' ' || *v == '\t'))
        v++;
      vl = (size_t)(p + n - v);
      return vl >= 5 && !strncasecmp(v, "cache", 5) ? LK_CACHE
             : vl >= 3 && !strncasecmp(v, "any", 3) ? LK_ANY
                                                    : LK_PRELOAD;
    }
    if (!eol)
      break;
    p = eol + 2;
  }
  return LK_PRELOAD;
}

#define LK_MAX_BUFS (1 + NS_LOOKUP_MAX_BODY / 65520 + 2) /* the head, one per store chunk */

/* The answer to the complete request in k: bufs[0..*nb), *total bytes — the
 * head in w->head (or in err, 160 bytes, for a failure), the body straight
 * from the store's map, so w->hit stays acquired until the caller has written
 * or copied them and released it. 0, or the status to refuse the request
 * with (it is not a lookup; nothing acquired). */
static int lk_compose(netd *d, lk_server *w, lk_conn *k, uv_buf_t *bufs, size_t *nb, size_t *total,
                      char *err) {
  netstash_error e = NETSTASH_OK;
  size_t hl = 0, nc = 0;
  *nb = *total = 0;
  if (k->p.method != HTTP_GET)
    return 405;
  if (k->has_body || (strncmp(k->url, "https://", 8) && strncmp(k->url, "http://", 7)))
    return 400;
  if (!w->hit) {
    e = NETSTASH_E_ILLEGAL_STATE;
  } else {
    int want = lk_wants(k);
    e = want == LK_CACHE ? NETSTASH_E_NOT_FOUND : netstash_preload_lookup(w->hit, k->url);
    if (e != NETSTASH_OK && want != LK_PRELOAD) /* any: the HTTP cache when not preloaded */
      e = lookup_cached(w, k);
  }
  if (e == NETSTASH_OK && netstash_preload_hit_body_size(w->hit) > NS_LOOKUP_MAX_BODY)
    e = NETSTASH_E_TOO_LARGE; /* the client starts a job: streamed */
  if (e == NETSTASH_OK)
    e = lk_head(w, &hl);
  if (e == NETSTASH_OK) {
    nc = netstash_preload_hit_chunk_count(w->hit);
    if (nc > LK_MAX_BUFS - 1)
      e = NETSTASH_E_TOO_LARGE;
  }
  if (e == NETSTASH_OK) {
    bufs[(*nb)++] = uv_buf_init((char *)w->head, (unsigned)hl);
    *total = hl;
    for (uint32_t i = 0; i < nc && e == NETSTASH_OK; i++) {
      const uint8_t *p;
      size_t len;
      if ((e = netstash_preload_hit_chunk(w->hit, i, &p, &len)) == NETSTASH_OK) {
        bufs[(*nb)++] = uv_buf_init((char *)p, (unsigned)len);
        *total += len;
      }
    }
    if (e == NETSTASH_OK && *total - hl != netstash_preload_hit_body_size(w->hit))
      e = NETSTASH_E_STORE_CORRUPT;
  }
  if (e != NETSTASH_OK) {
    int n = snprintf(
        err, 160, "HTTP/1.1 502 Bad Gateway\r\nX-Netstash-Error: %s\r\nContent-Length: 0\r\n\r\n",
        netstash_error_name(e));
    bufs[0] = uv_buf_init(err, (unsigned)n);
    *nb = 1;
    *total = (size_t)n;
  }
  atomic_fetch_add(e == NETSTASH_OK ? &d->metrics.lookups_hit : &d->metrics.lookups_miss, 1);
  return 0;
}

/* Answers the complete request in s->lk. -1 when the session was closed. */
static int lookup_answer(ipc_sess *s) {
  uv_buf_t bufs[LK_MAX_BUFS];
  size_t nb, total;
  char err[160];
  int status = lk_compose(s->ipc->d, &s->ipc->lk, s->lk, bufs, &nb, &total, err);
  if (status)
    return lk_refuse(s, status);
  if (!s->lk->keep_alive) {
    s->lk_eof = 1; /* HTTP/1.0 or "Connection: close": this answer is the last */
    uv_read_stop((uv_stream_t *)&s->h);
  }
  return lk_send(s, bufs, nb, total);
}

static int lk_on_begin(http_parser *p) {
  lk_conn *k = p->data;
  k->url_len = k->head_bytes = k->fields_len = 0;
  k->too_big = k->url_too_long = k->has_body = k->in_value = 0;
  return 0;
}

static int lk_on_url(http_parser *p, const char *at, size_t len) {
  lk_conn *k = p->data;
  if (len > NS_LOOKUP_MAX_URL - k->url_len) {
    k->too_big = k->url_too_long = 1;
    return 1;
  }
  memcpy(k->url + k->url_len, at, len);
  k->url_len += len;
  k->url[k->url_len] = '\0';
  return 0;
}

/* A piece of a field's name (value 0) or value (1), kept in k->fields. */
static int lk_piece(lk_conn *k, const char *at, size_t len, int value) {
  k->head_bytes += len + 4; /* ": " and CRLF */
  if (k->head_bytes > NS_LOOKUP_MAX_REQ_HEAD) {
    k->too_big = 1;
    return 1;
  }
  /* head_bytes bounds what is kept: the separators fit in its 4 per piece */
  if (k->in_value && !value) {
    memcpy(k->fields + k->fields_len, "\r\n", 2);
    k->fields_len += 2;
  } else if (!k->in_value && value) {
    k->fields[k->fields_len++] = ':';
  }
  k->in_value = value;
  memcpy(k->fields + k->fields_len, at, len);
  k->fields_len += len;
  return 0;
}

static int lk_on_field(http_parser *p, const char *at, size_t len) {
  return lk_piece(p->data, at, len, 0);
}

static int lk_on_value(http_parser *p, const char *at, size_t len) {
  return lk_piece(p->data, at, len, 1);
}

static int lk_on_headers(http_parser *p) {
  lk_conn *k = p->data;
  if (k->in_value) {
    memcpy(k->fields + k->fields_len, "\r\n", 2);
    k->fields_len += 2;
    k->in_value = 0;
  }
  k->has_body = (p->flags & F_CHUNKED) || (p->content_length != UINT64_MAX && p->content_length);
  return 0;
}

static int lk_on_complete(http_parser *p) {
  lk_conn *k = p->data;
  k->keep_alive = http_should_keep_alive(p);
  k->ready = 1;
  http_parser_pause(p, 1); /* answered before the next request is read */
  return 0;
}

static const http_parser_settings lk_settings = {
    .on_message_begin = lk_on_begin,
    .on_url = lk_on_url,
    .on_header_field = lk_on_field,
    .on_header_value = lk_on_value,
    .on_headers_complete = lk_on_headers,
    .on_message_complete = lk_on_complete,
};

/* Runs the parser over *p (*n bytes) to the end of the next request: 1 when
 * one is complete in k (*p and *n moved past it: answer it, then call again
 * with the rest), 0 when every byte was taken, else the status to refuse the
 * request with (the connection closes after it). */
static int lk_parse(lk_conn *k, const char **p, size_t *n) {
  size_t used = http_parser_execute(&k->p, &lk_settings, *p, *n);
  enum http_errno he = HTTP_PARSER_ERRNO(&k->p);
  *p += used;
  *n -= used;
  if (k->ready) {
    k->ready = 0;
    http_parser_pause(&k->p, 0);
    return 1;
  }
  if (he != HPE_OK)
    return k->url_too_long ? 414 : k->too_big ? 431 : 400;
  return 0;
}

/* HTTP/1.1 bytes from a lookup client: each request answered as soon as it
 * is complete. */
static void lookup_feed(ipc_sess *s, const char *p, size_t n) {
  while (n && !s->closing && !s->lk_eof) {
    int r = lk_parse(s->lk, &p, &n);
    if (r == 1) {
      if (lookup_answer(s) != 0)
        return;
    } else if (r) {
      (void)lk_refuse(s, r);
      return;
    }
  }
}

/* The HTTP/1.1 side of an IPC connection; -1 on allocation failure. */
static int lookup_begin(ipc_sess *s) {
  if (!(s->lk = calloc(1, sizeof(*s->lk))))
    return -1;
  http_parser_init(&s->lk->p, HTTP_REQUEST);
  s->lk->p.data = s->lk;
  return 0;
}

/* ------------------------------------------------------------ lookup threads */

/* A lookup connection served by a thread of its own: blocking reads and
 * writes on its socket, answers from the store as the loop's (lk_compose)
 * — the client's round trip is two wake-ups, as a plain socket's, and it
 * never waits behind the loop's other work. See doc/DESIGN.md. */
typedef struct lk_thread {
  ns_list node; /* ipc->lk_threads */
  netd_ipc *ipc;
  pthread_t tid;
  int fd;   /* -1 once closed (under ipc->lk_lock: the stop shuts it down) */
  int done; /* the thread has ended and may be joined (under ipc->lk_lock) */
  lk_server srv;
  lk_conn conn;
  size_t npre;
  char pre[]; /* the bytes the loop read before the hand-over */
} lk_thread;

#define LK_THREAD_STACK (512u << 10)
#define LK_THREAD_KEEP 128  /* entries each lookup thread's hit keeps decoded */
#define LK_SEND_TIMEOUT_S 2 /* a client that takes no byte for this long is closed */
#define LK_SLICE_NS 100000u /* lk_short_slices: the shortest the kernel takes */

/* Writes iov[0..n) to fd (blocking, SO_SNDTIMEO); -1 on failure. */
static int lk_write_all(int fd, struct iovec *iov, size_t n) {
  while (n) {
    ssize_t w = writev(fd, iov, (int)n);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    for (; n && (size_t)w >= iov->iov_len; iov++, n--)
      w -= (ssize_t)iov->iov_len;
    if (n) {
      iov->iov_base = (char *)iov->iov_base + w;
      iov->iov_len -= (size_t)w;
    }
  }
  return 0;
}

/* Refuses the request read (lk_refusal) and says the connection is over (-1). */
static int lk_thread_refuse(lk_thread *t, int status) {
  char msg[128];
  struct iovec v = {msg, lk_refusal(t->ipc->d, msg, status)};
  (void)lk_write_all(t->fd, &v, 1);
  return -1;
}

/* Answers the complete request in t->conn: what the socket takes at once
 * is written straight from the store's map, the rest copied (the hit, and
 * so the read transaction, is released before a slow client is waited for).
 * 0 to read on, -1 to close. */
static int lk_thread_answer(lk_thread *t) {
  netd *d = t->ipc->d;
  uv_buf_t bufs[LK_MAX_BUFS];
  struct iovec iov[LK_MAX_BUFS];
  size_t nb, total, sent = 0;
  char err[160];
  uint8_t *rest = NULL;
  int status = lk_compose(d, &t->srv, &t->conn, bufs, &nb, &total, err), rc = 0;
  if (status)
    return lk_thread_refuse(t, status);
  for (size_t i = 0; i < nb; i++)
    iov[i] = (struct iovec){bufs[i].base, bufs[i].len};
  for (;;) {
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = nb};
    ssize_t w = sendmsg(t->fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0 && errno != EAGAIN)
      rc = -1;
    sent = w > 0 ? (size_t)w : 0;
    break;
  }
  if (rc == 0 && sent < total) {
    if (!(rest = malloc(total - sent)))
      rc = -1;
    else
      netd_copy_unwritten(rest, bufs, nb, sent);
  }
  netstash_preload_hit_release(t->srv.hit); /* no read transaction left open */
  if (rest) {
    iov[0] = (struct iovec){rest, total - sent};
    rc = lk_write_all(t->fd, iov, 1);
    free(rest);
  }
  return rc == 0 && t->conn.keep_alive ? 0 : -1;
}

/* Asks the scheduler for short slices on this thread: on an EEVDF kernel
 * (Linux 6.12 and later) a task with a shorter slice than the one running may
 * preempt it when woken, so a lookup does not wait up to a full slice (~3 ms)
 * behind netd's busy loop thread on the same core. Older kernels ignore the
 * hint (or refuse it: nothing changes). */
static void lk_short_slices(void) {
  struct { /* the kernel's struct sched_attr, version 0 (linux/sched/types.h, whose
            * struct sched_param clashes with <sched.h>'s) */
    uint32_t size, sched_policy;
    uint64_t sched_flags;
    int32_t sched_nice;
    uint32_t sched_priority;
    uint64_t sched_runtime, sched_deadline, sched_period;
  } a;
  memset(&a, 0, sizeof(a));
  a.size = sizeof(a);
  a.sched_policy = SCHED_OTHER;
  a.sched_runtime = LK_SLICE_NS;
  (void)syscall(SYS_sched_setattr, 0, &a, 0);
}

static void *lk_thread_main(void *arg) {
  lk_thread *t = arg;
  netd_ipc *ipc = t->ipc;
  struct timeval tv = {LK_SEND_TIMEOUT_S, 0};
  const char *p = t->pre;
  size_t n = t->npre;
  char buf[16384];
  int flags = fcntl(t->fd, F_GETFL), r = 0;
  lk_short_slices();
  /* (O_NONBLOCK is the open file's, shared with the loop's descriptor: the
   * loop closes that one without another read) */
  if (flags < 0 || fcntl(t->fd, F_SETFL, flags & ~O_NONBLOCK) != 0 ||
      setsockopt(t->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) != 0)
    r = -1;
  while (r == 0) {
    while (n && r == 0) {
      int k = lk_parse(&t->conn, &p, &n);
      if (k == 1)
        r = lk_thread_answer(t);
      else if (k)
        r = lk_thread_refuse(t, k);
    }
    if (r == 0) {
      ssize_t got = read(t->fd, buf, sizeof(buf));
      if (got < 0 && errno == EINTR)
        continue;
      if (got <= 0)
        break;
      p = buf;
      n = (size_t)got;
    }
  }
  lk_server_free(&t->srv); /* its LMDB reader slot goes now, not when joined */
  pthread_mutex_lock(&ipc->lk_lock);
  close(t->fd);
  t->fd = -1;
  t->done = 1;
  pthread_mutex_unlock(&ipc->lk_lock);
  atomic_fetch_sub(&ipc->d->metrics.ipc_conns_open, 1);
  atomic_fetch_sub(&ipc->d->metrics.lookup_threads, 1);
  return NULL;
}

static void lk_thread_free(lk_thread *t) {
  lk_server_free(&t->srv); /* (a no-op once the thread ran) */
  free(t);
}

/* Joins the lookup threads that have ended (all of them with `all`, after
 * their connections were shut down). Loop thread. */
static void lk_reap(netd_ipc *ipc, int all) {
  ns_list ended, *pos, *tmp;
  ns_list_init(&ended);
  pthread_mutex_lock(&ipc->lk_lock);
  ns_list_foreach_safe(pos, tmp, &ipc->lk_threads) {
    lk_thread *t = ns_list_entry(pos, lk_thread, node);
    if (all && t->fd >= 0)
      shutdown(t->fd, SHUT_RDWR); /* its read or write returns at once */
    if (all || t->done) {
      ns_list_remove(&t->node);
      ns_list_insert_tail(&ended, &t->node);
      ipc->nlk_threads--;
    }
  }
  pthread_mutex_unlock(&ipc->lk_lock);
  while (!ns_list_empty(&ended)) {
    lk_thread *t = ns_list_entry(ended.next, lk_thread, node);
    ns_list_remove(&t->node);
    pthread_join(t->tid, NULL);
    lk_thread_free(t);
  }
}

/* Hands the lookup connection s to a thread of its own, with the bytes read
 * so far (a[0..na), then b[0..nb)): 0 when it did (s is closed; the thread
 * has a duplicate of its descriptor), -1 when the loop keeps serving it (no
 * threads configured, all busy, or a failure). */
static int lk_handoff(ipc_sess *s, const char *a, size_t na, const char *b, size_t nb) {
  netd_ipc *ipc = s->ipc;
  lk_thread *t;
  uv_os_fd_t fd;
  pthread_attr_t at;
  int rc;
  if (!ipc->lk_threads_max || ipc->stopping)
    return -1;
  lk_reap(ipc, 0);
  if (ipc->nlk_threads >= ipc->lk_threads_max || uv_fileno((const uv_handle_t *)&s->h, &fd) != 0 ||
      !(t = calloc(1, sizeof(*t) + na + nb)))
    return -1;
  t->ipc = ipc;
  memcpy(t->pre, a, na);
  memcpy(t->pre + na, b, nb);
  t->npre = na + nb;
  http_parser_init(&t->conn.p, HTTP_REQUEST);
  t->conn.p.data = &t->conn;
  lk_server_init(&t->srv, ipc->d, LK_THREAD_KEEP);
  if ((t->fd = fcntl(fd, F_DUPFD_CLOEXEC, 3)) < 0) {
    lk_thread_free(t);
    return -1;
  }
  if (pthread_attr_init(&at) != 0) {
    close(t->fd);
    lk_thread_free(t);
    return -1;
  }
  (void)pthread_attr_setstacksize(&at, LK_THREAD_STACK);
  atomic_fetch_add(&ipc->d->metrics.lookup_threads, 1);
  pthread_mutex_lock(&ipc->lk_lock);
  rc = pthread_create(&t->tid, &at, lk_thread_main, t);
  if (rc == 0) {
    ns_list_insert_tail(&ipc->lk_threads, &t->node);
    ipc->nlk_threads++;
  }
  pthread_mutex_unlock(&ipc->lk_lock);
  pthread_attr_destroy(&at);
  if (rc != 0) {
    atomic_fetch_sub(&ipc->d->metrics.lookup_threads, 1);
    close(t->fd);
    lk_thread_free(t);
    return -1;
  }
  /* the connection is the thread's: counted open until it ends there */
  atomic_fetch_add(&ipc->d->metrics.ipc_conns_open, 1);
  sess_close(s);
  return 0;
}

static void on_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b) {
  static char buf[65536]; /* loop thread only; consumed before the next read */
  (void)h;
  (void)sz;
  *b = uv_buf_init(buf, sizeof(buf));
}

static int feed(ipc_sess *s, const uint8_t *data, size_t n);

/* TLS: the bytes read go through OpenSSL (handshake first), the plaintext
 * to nghttp2. */
static void tls_read(ipc_sess *s, const uint8_t *data, size_t n) {
  static uint8_t plain[16384]; /* loop thread only */
  s->active_ms = uv_now(s->h.tcp.loop);
  if (BIO_write(SSL_get_rbio(s->ssl), data, (int)n) != (int)n) {
    sess_close(s);
    return;
  }
  if (!s->tls_ready) {
    const unsigned char *alpn = NULL;
    unsigned alen = 0;
    int r = SSL_do_handshake(s->ssl);
    if (r != 1) {
      int err = SSL_get_error(s->ssl, r);
      if (tls_push(s) != 0) /* the handshake's records, an alert */
        return;
      if (err != SSL_ERROR_WANT_READ) {
        unsigned long e = ERR_get_error();
        char msg[256];
        ERR_error_string_n(e, msg, sizeof(msg));
        netd_log(s->ipc->d, NETSTASH_LOG_INFO, "HTTP/2 gateway: TLS handshake failed: %s",
                 e ? msg : "connection closed");
        ERR_clear_error();
        sess_close(s);
      }
      return;
    }
    SSL_get0_alpn_selected(s->ssl, &alpn, &alen);
    if (alen != 2 || memcmp(alpn, "h2", 2) != 0) { /* the ALPN callback allows nothing else */
      netd_log(s->ipc->d, NETSTASH_LOG_INFO, "HTTP/2 gateway: a client without ALPN h2");
      sess_close(s);
      return;
    }
    s->tls_ready = 1;
    if (s->timer_ok) /* from now on the idle limit */
      uv_timer_start(&s->timer, gw_timer, GW_IDLE_MS, 0);
    if (tls_push(s) != 0)
      return;
    sess_mark(s); /* our SETTINGS */
  }
  for (;;) {
    int r = SSL_read(s->ssl, plain, (int)sizeof(plain));
    if (r <= 0) {
      int err = SSL_get_error(s->ssl, r);
      ERR_clear_error();
      if (err == SSL_ERROR_WANT_READ)
        break;
      if (tls_push(s) == 0) /* a close_notify answered */
        sess_close(s);
      return;
    }
    if (feed(s, plain, (size_t)r) != 0)
      return;
  }
  if (tls_push(s) != 0) /* session tickets, key updates */
    return;
  sess_mark(s);
}

static int h2_begin(ipc_sess *s);

/* An IPC connection's first bytes choose its protocol: "PRI" (the HTTP/2
 * client preface) or HTTP/1.1. The bytes held while undecided are fed
 * first. 0 when decided (read on), 1 when still undecided or closed. */
static int sniff(ipc_sess *s, const char *p, size_t n) {
  size_t k = 0;
  int h2;
  while (s->nsniff < 3 && k < n)
    s->sniff[s->nsniff++] = p[k++];
  h2 = !memcmp(s->sniff, "PRI", s->nsniff);
  if (h2 && s->nsniff < 3)
    return 1; /* a prefix of "PRI" so far */
  /* a lookup client: a thread of its own if there is one (s is closed) */
  if (!h2 && lk_handoff(s, s->sniff, s->nsniff - k, p, n) == 0)
    return 1;
  if (h2 ? h2_begin(s) != 0 : lookup_begin(s) != 0) {
    sess_close(s);
    return 1;
  }
  /* the bytes of this read that were taken before: fed with the rest */
  if (s->nsniff > k) {
    if (s->lk)
      lookup_feed(s, s->sniff, s->nsniff - k);
    else if (feed(s, (const uint8_t *)s->sniff, s->nsniff - k) != 0)
      return 1;
    if (s->closing)
      return 1;
  }
  return 0;
}

static void on_read(uv_stream_t *str, ssize_t n, const uv_buf_t *b) {
  ipc_sess *s = str->data;
  netstash_ctx *ctx = s->ipc->d->ctx;
  if (n == UV_EOF && s->lk && s->backlog) {
    s->lk_eof = 1; /* the answers asked for still go out */
    uv_read_stop(str);
    return;
  }
  if (n < 0) {
    sess_close(s);
    return;
  }
  if (n == 0)
    return;
  if (s->ssl) {
    tls_read(s, (const uint8_t *)b->base, (size_t)n);
    ns_ctx_run_posted(ctx); /* as below */
    return;
  }
  if (!s->ng && !s->lk && sniff(s, b->base, (size_t)n) != 0)
    return; /* undecided yet, or closed */
  if (s->lk) {
    lookup_feed(s, b->base, (size_t)n);
    return;
  }
  if (feed(s, (const uint8_t *)b->base, (size_t)n) == 0)
    sess_mark(s); /* answers that are ready by the end of this turn go in one write */
  /* the jobs these frames started answer now (a stored answer is ready at
   * once), in this turn's write, rather than in the next turn (s may be
   * gone after this) */
  ns_ctx_run_posted(ctx);
}

/* Client bytes to nghttp2; -1 when the session was closed. */
static int feed(ipc_sess *s, const uint8_t *data, size_t n) {
  ssize_t r = nghttp2_session_mem_recv(s->ng, data, n);
  if (r < 0) {
    netd_log(s->ipc->d, NETSTASH_LOG_INFO, "%s client dropped: %s",
             s->gateway ? "HTTP/2 gateway" : "IPC", nghttp2_strerror((int)r));
    /* GOAWAY if possible, then close */
    nghttp2_session_terminate_session(s->ng, NGHTTP2_PROTOCOL_ERROR);
    sess_flush(s);
    sess_close(s);
    return -1;
  }
  return 0;
}

/* The nghttp2 server session of a connection, its SETTINGS queued; -1 on
 * failure (the caller closes). */
static int h2_begin(ipc_sess *s) {
  nghttp2_session_callbacks *cb;
  nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 256},
                                 {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20}};
  if (nghttp2_session_callbacks_new(&cb) != 0)
    return -1;
  nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
  nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
  if (nghttp2_session_server_new(&s->ng, cb, s) != 0) {
    nghttp2_session_callbacks_del(cb);
    s->ng = NULL;
    return -1;
  }
  nghttp2_session_callbacks_del(cb);
  nghttp2_submit_settings(s->ng, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0]));
  nghttp2_session_set_local_window_size(s->ng, NGHTTP2_FLAG_NONE, 0, 16 << 20);
  return 0;
}

/* An accepted connection (s->h): reading. The gateway's is HTTP/2 from the
 * start; on the IPC socket the client's first byte chooses HTTP/2 or the
 * lookup protocol (an HTTP/2 client sends its preface without waiting for
 * the server's SETTINGS). On failure the connection is closed. */
static void sess_start(ipc_sess *s) {
  netd *d = s->ipc->d;
  if (s->gateway && h2_begin(s) != 0) {
    sess_abort(s);
    return;
  }
  atomic_fetch_add(&d->metrics.ipc_conns, 1);
  atomic_fetch_add(&d->metrics.ipc_conns_open, 1);
  uv_read_start((uv_stream_t *)&s->h, on_alloc, on_read);
  sess_flush(s); /* (TLS: after the handshake) */
}

/* A session that never started: its handle closes, nothing else to undo. */
static void sess_abort(ipc_sess *s) {
  s->closing = 1;
  SSL_free(s->ssl);
  s->ssl = NULL;
  ns_list_remove(&s->node);
  if (s->timer_ok)
    uv_close((uv_handle_t *)&s->timer, sess_closed);
  uv_close((uv_handle_t *)&s->h, sess_closed);
}

/* A session for a connection about to be accepted: in the list, counted. */
static ipc_sess *sess_new(netd_ipc *ipc) {
  ipc_sess *s = calloc(1, sizeof(*s));
  if (!s)
    return NULL;
  s->ipc = ipc;
  ns_list_init(&s->streams);
  s->handles = 1; /* the stream handle */
  s->h.pipe.data = s; /* (the handle's data field, whichever member) */
  return s;
}

static void sess_add(ipc_sess *s) {
  s->ipc->nsessions++;
  ns_list_insert_tail(&s->ipc->sessions, &s->node);
}

static void on_conn(uv_stream_t *srv, int status) {
  netd_ipc *ipc = srv->data;
  ipc_sess *s;
  if (status < 0 || ipc->stopping || !(s = sess_new(ipc)))
    return;
  if (uv_pipe_init(ipc->d->loop, &s->h.pipe, 0) != 0) {
    free(s);
    return;
  }
  s->h.pipe.data = s;
  sess_add(s);
  if (uv_accept(srv, (uv_stream_t *)&s->h) != 0) {
    sess_abort(s);
    return;
  }
  sess_start(s);
}

static void gw_timer(uv_timer_t *t) {
  ipc_sess *s = t->data;
  uint64_t now = uv_now(t->loop), idle_until = s->active_ms + GW_IDLE_MS;
  if (!s->tls_ready) {
    netd_log(s->ipc->d, NETSTASH_LOG_INFO, "HTTP/2 gateway: no TLS handshake within %u s: closed",
             GW_HANDSHAKE_MS / 1000);
    sess_close(s);
    return;
  }
  if (ns_list_empty(&s->streams) && now >= idle_until) {
    nghttp2_submit_goaway(s->ng, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(s->ng),
                          NGHTTP2_NO_ERROR, NULL, 0);
    sess_flush(s);
    sess_close(s);
    return;
  }
  uv_timer_start(t, gw_timer, now < idle_until ? idle_until - now : GW_IDLE_MS, 0);
}

static void on_gw_conn(uv_stream_t *srv, int status) {
  netd_ipc *ipc = srv->data;
  ipc_sess *s;
  BIO *rb = NULL, *wb = NULL;
  if (status < 0 || ipc->stopping || !(s = sess_new(ipc)))
    return;
  if (uv_tcp_init(ipc->d->loop, &s->h.tcp) != 0) {
    free(s);
    return;
  }
  s->h.tcp.data = s;
  s->gateway = 1;
  if (uv_timer_init(ipc->d->loop, &s->timer) == 0) {
    s->timer.data = s;
    s->timer_ok = 1;
    s->handles++;
    s->active_ms = uv_now(ipc->d->loop);
    uv_timer_start(&s->timer, gw_timer, GW_HANDSHAKE_MS, 0);
  }
  sess_add(s);
  if (uv_accept(srv, (uv_stream_t *)&s->h) != 0 || !(s->ssl = SSL_new(ipc->gw_tls)) ||
      !(rb = BIO_new(BIO_s_mem())) || !(wb = BIO_new(BIO_s_mem()))) {
    if (s->ssl && rb && !wb)
      BIO_free(rb);
    sess_abort(s);
    return;
  }
  BIO_set_mem_eof_return(rb, -1); /* an empty read BIO means "more to come" */
  SSL_set_bio(s->ssl, rb, wb);
  SSL_set_accept_state(s->ssl);
  uv_tcp_nodelay(&s->h.tcp, 1);
  {
    uv_os_fd_t fd;
    int lowat = (int)GW_NOTSENT_LOWAT;
    if (uv_fileno((uv_handle_t *)&s->h.tcp, &fd) == 0)
      (void)setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat, sizeof(lowat));
  }
  sess_start(s);
}

/* ------------------------------------------------------------ start / stop */

int netd_ipc_start(netd *d, char *err, size_t errlen) {
  netd_ipc *ipc = calloc(1, sizeof(*ipc));
  const char *path = d->cfg.socket_path;
  int rv;
  if (!ipc) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  ipc->d = d;
  ns_list_init(&ipc->sessions);
  ns_list_init(&ipc->dirty);
  ns_list_init(&ipc->finishing);
  d->ipc = ipc;
  /* every kernel process's cache lookups: the hot entries kept decoded */
  lk_server_init(&ipc->lk, d, NETD_HIT_ENTRIES);
  ns_list_init(&ipc->lk_threads);
  pthread_mutex_init(&ipc->lk_lock, NULL);
  ipc->lk_threads_max = netd_lookup_threads(&d->cfg);
  /* NULL (out of memory): every HTTP/2 request is a job's */
  ipc->fast_names = malloc(IPC_FAST_MAX_FIELDS * (IPC_FAST_NAME_MAX + 1));
  if (uv_check_init(d->loop, &ipc->flusher) != 0 || uv_idle_init(d->loop, &ipc->kick) != 0 ||
      uv_check_start(&ipc->flusher, on_flush_check) != 0) {
    snprintf(err, errlen, "uv_check_init failed");
    return -1;
  }
  ipc->flusher.data = ipc;
  ipc->kick.data = ipc;
  ipc->flusher_state = 1;
  if (uv_pipe_init(d->loop, &ipc->listener, 0) != 0) {
    snprintf(err, errlen, "uv_pipe_init failed");
    return -1;
  }
  ipc->listener.data = ipc;
  ipc->listening = 1;
  /* The profile lock is held: a socket file left by a netd that died is ours
   * to replace. */
  unlink(path);
  {
    mode_t old = umask(0777 & ~d->cfg.socket_mode);
    rv = uv_pipe_bind(&ipc->listener, path);
    umask(old);
  }
  if (rv == 0)
    rv = uv_listen((uv_stream_t *)&ipc->listener, 128, on_conn);
  if (rv != 0) {
    snprintf(err, errlen, "cannot listen on %s: %s", path, uv_strerror(rv));
    return -1;
  }
  chmod(path, d->cfg.socket_mode);
  return 0;
}

size_t netd_ipc_clients(const netd *d) {
  return d->ipc ? d->ipc->nsessions + (size_t)atomic_load(&d->metrics.lookup_threads) : 0;
}

/* ALPN: h2 or nothing (a client that cannot speak HTTP/2 gets the
 * no_application_protocol alert; the HTTP/1.1 gateway is the other front). */
static int gw_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg) {
  static const unsigned char h2[] = "\x02h2";
  (void)ssl;
  (void)arg;
  if (SSL_select_next_proto((unsigned char **)out, outlen, h2, sizeof(h2) - 1, in, inlen) !=
      OPENSSL_NPN_NEGOTIATED)
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  return SSL_TLSEXT_ERR_OK;
}

int netd_gateway_h2_start(netd *d, char *err, size_t errlen) {
  netd_ipc *ipc = d->ipc;
  const netd_config *c = &d->cfg;
  struct sockaddr_storage sa;
  size_t n;
  int rv;
  if (!ipc || !c->upstream || !c->tls_cert || !c->tls_key) {
    snprintf(err, errlen, "HTTP/2 gateway: needs the IPC, --upstream, --tls-cert and --tls-key");
    return -1;
  }
  if (!(ipc->gw_upstream = strdup(c->upstream))) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  n = strlen(ipc->gw_upstream);
  while (n && ipc->gw_upstream[n - 1] == '/')
    ipc->gw_upstream[--n] = 0;
  if (!(ipc->gw_tls = SSL_CTX_new(TLS_server_method())) ||
      SSL_CTX_set_min_proto_version(ipc->gw_tls, TLS1_3_VERSION) != 1) {
    snprintf(err, errlen, "HTTP/2 gateway: OpenSSL: cannot make a TLS 1.3 context");
    return -1;
  }
  if (SSL_CTX_use_certificate_chain_file(ipc->gw_tls, c->tls_cert) != 1) {
    snprintf(err, errlen, "HTTP/2 gateway: cannot use %s as a PEM certificate chain", c->tls_cert);
    ERR_clear_error();
    return -1;
  }
  if (SSL_CTX_use_PrivateKey_file(ipc->gw_tls, c->tls_key, SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_check_private_key(ipc->gw_tls) != 1) {
    snprintf(err, errlen, "HTTP/2 gateway: %s is not the PEM private key of %s", c->tls_key,
             c->tls_cert);
    ERR_clear_error();
    return -1;
  }
  SSL_CTX_set_alpn_select_cb(ipc->gw_tls, gw_alpn, NULL);
  if (uv_ip4_addr(c->gateway_h2_host, c->gateway_h2_port, (struct sockaddr_in *)&sa) != 0 &&
      uv_ip6_addr(c->gateway_h2_host, c->gateway_h2_port, (struct sockaddr_in6 *)&sa) != 0) {
    snprintf(err, errlen, "HTTP/2 gateway: %s is not an IP address", c->gateway_h2_host);
    return -1;
  }
  if (uv_tcp_init(d->loop, &ipc->gw_listener) != 0) {
    snprintf(err, errlen, "uv_tcp_init failed");
    return -1;
  }
  ipc->gw_listener.data = ipc;
  ipc->gw_listening = 1;
  rv = uv_tcp_bind(&ipc->gw_listener, (const struct sockaddr *)&sa, 0);
  if (rv == 0)
    rv = uv_listen((uv_stream_t *)&ipc->gw_listener, 128, on_gw_conn);
  if (rv != 0) {
    snprintf(err, errlen, "HTTP/2 gateway: cannot listen on %s:%d: %s", c->gateway_h2_host,
             c->gateway_h2_port, uv_strerror(rv));
    return -1;
  }
  netd_log(d, NETSTASH_LOG_INFO, "HTTP/2 gateway (TLS, h2) on %s:%d -> %s", c->gateway_h2_host,
           c->gateway_h2_port, ipc->gw_upstream);
  return 0;
}

static void ipc_free(netd_ipc *ipc) {
  lk_server_free(&ipc->lk);
  pthread_mutex_destroy(&ipc->lk_lock);
  free(ipc->fast_names);
  SSL_CTX_free(ipc->gw_tls);
  free(ipc->gw_upstream);
  free(ipc);
}

static void grace_closed(uv_handle_t *h) { ipc_free(h->data); }

/* Stopping and everything closed: report, then free (after the timer's
 * close callback when there is a timer). */
static void flusher_closed(uv_handle_t *h) {
  netd_ipc *ipc = h->data;
  if (--ipc->flusher_closing == 0) {
    ipc->flusher_state = 0;
    ipc_maybe_done(ipc);
  }
}

static void ipc_maybe_done(netd_ipc *ipc) {
  void (*done)(void *);
  void *ud;
  if (!ipc->stopping || ipc->listening || ipc->gw_listening || ipc->nsessions || ipc->nfinishing ||
      !ipc->done)
    return;
  if (ipc->flusher_state == 1) {
    ipc->flusher_state = 2;
    ipc->flusher_closing = 2;
    uv_check_stop(&ipc->flusher);
    uv_idle_stop(&ipc->kick);
    uv_close((uv_handle_t *)&ipc->flusher, flusher_closed);
    uv_close((uv_handle_t *)&ipc->kick, flusher_closed);
  }
  if (ipc->flusher_state)
    return; /* again from flusher_closed */
  done = ipc->done;
  ud = ipc->done_ud;
  ipc->done = NULL;
  ipc->d->ipc = NULL;
  if (ipc->grace_ok) {
    uv_timer_stop(&ipc->grace);
    uv_close((uv_handle_t *)&ipc->grace, grace_closed);
  } else {
    ipc_free(ipc);
  }
  done(ud);
}

static void listener_closed(uv_handle_t *h) {
  netd_ipc *ipc = h->data;
  if (h == (uv_handle_t *)&ipc->gw_listener)
    ipc->gw_listening = 0;
  else
    ipc->listening = 0;
  ipc_maybe_done(ipc);
}

static void grace_over(uv_timer_t *t) {
  netd_ipc *ipc = t->data;
  ns_list *pos, *tmp;
  netd_log(ipc->d, NETSTASH_LOG_INFO, "stop: closing %zu client connection(s) still busy",
           ipc->nsessions);
  ns_list_foreach_safe(pos, tmp, &ipc->sessions) {
    sess_close(ns_list_entry(pos, ipc_sess, node));
  }
  if (ipc->nfinishing)
    netd_log(ipc->d, NETSTASH_LOG_INFO, "stop: cancelling %zu job(s) answered but not ended",
             ipc->nfinishing);
  while (!ns_list_empty(&ipc->finishing))
    finishing_end(ns_list_entry(ipc->finishing.next, ipc_stream, node));
  ipc_maybe_done(ipc);
}

/* Stop: no new connections; each session gets GOAWAY (streams in flight
 * finish, then the session ends), and whatever is still open after GRACE_MS
 * is closed. */
void netd_ipc_stop(netd *d, void (*done)(void *), void *ud) {
  netd_ipc *ipc = d->ipc;
  ns_list *pos, *tmp;
  ipc->stopping = 1;
  ipc->done = done;
  ipc->done_ud = ud;
  lk_reap(ipc, 1); /* the lookup threads' connections shut down, the threads joined */
  ns_list_foreach_safe(pos, tmp, &ipc->sessions) {
    ipc_sess *s = ns_list_entry(pos, ipc_sess, node);
    if (!s->ng) { /* lookups (answered at once) or no byte yet */
      sess_close(s);
      continue;
    }
    nghttp2_submit_goaway(s->ng, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(s->ng),
                          NGHTTP2_NO_ERROR, NULL, 0);
    sess_flush(s);
  }
  if (uv_timer_init(d->loop, &ipc->grace) == 0) {
    ipc->grace_ok = 1;
    ipc->grace.data = ipc;
    uv_timer_start(&ipc->grace, grace_over, GRACE_MS, 0);
  }
  if (ipc->gw_listening)
    uv_close((uv_handle_t *)&ipc->gw_listener, listener_closed);
  if (ipc->listening)
    uv_close((uv_handle_t *)&ipc->listener, listener_closed);
  else
    ipc_maybe_done(ipc);
}
