/*
 * front.c — netd's HTTP/1.1 fronts on TCP: a forward proxy (absolute-form
 * requests, CONNECT tunnels), a gateway (reverse proxy to cfg.upstream) and
 * the Prometheus metrics listener.
 *
 * Everything runs on the library context's loop thread (netd.h): the
 * listeners and connections are uv_tcp_t handles on d->loop, and requests
 * go through the public interceptor ABI (netstash_job_start), whose
 * callbacks run on that same thread, so they write to the sockets directly.
 *
 * One connection, one request at a time. Requests are parsed with
 * http-parser (never by hand); the parser is paused at the end of each
 * message, so pipelined requests wait, unparsed, until the answer to the one
 * before has been written. Request bodies are buffered (64 MiB at most: the
 * library's streamed-body reader cannot wait for bytes that have not arrived
 * yet), response bodies are pulled (netstash_job_peek: written from the job's
 * buffer, no copy) while the socket's backlog is below OUT_HIGH and resumed
 * from uv_write's callback: a slow client stops the library reading, it does
 * not grow buffers.
 *
 * Writes go out at once when nothing is queued (uv_try_write: no request,
 * no completion, no heap), the head together with the first body bytes in
 * one writev; only what the socket does not take is copied into a queued
 * write. A cache hit of a small body costs one read and one writev.
 *
 * Responses are relayed as the library produced them — status, every header
 * in order (duplicates kept), the body as sent (no content decoding) —
 * minus the hop-by-hop fields (RFC 9110 §7.6.1), with X-Netstash-Source
 * added; the framing is ours (Content-Length when known, else chunked). A
 * library error before the head is a 502 naming the error; after the head
 * the connection is closed, so a client never takes a cut body for a whole
 * one.
 */
#include "ns_setup.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>

#include <http_parser.h>

#include "core/buf.h"
#include "core/ctx.h"
#include "core/headers.h"
#include "core/reader.h"
#include "core/url.h"
#include "netd/netd.h"
#include "preload/serve.h"

#define HEAD_MAX (64u * 1024u)         /* request line + header section */
#define BODY_MAX (64u * 1024u * 1024u) /* buffered request body */
#define OUT_HIGH (256u * 1024u)        /* socket backlog: stop producing above */
#define OUT_LOW (64u * 1024u)          /* tunnels: resume reading below */
#define READ_BUF (16u * 1024u)         /* HTTP-mode read buffer (per connection) */
#define STASH_MAX (64u * 1024u)        /* read ahead while an answer is written */
#define BODY_CHUNK (256u * 1024u)      /* response body bytes per write */
#define TUNNEL_CHUNK (64u * 1024u)
#define CHUNK_PREFIX 10        /* "ffffffff\r\n" */
#define IDLE_MS (120u * 1000u) /* idle keep-alive connection, or a stalled request */
#define LINGER_MS 2000u        /* after our FIN: drain what the client still sends */
#define CONNECT_MS 10000u      /* CONNECT: resolve + connect */
#define MAX_CONNS 4096u
#define FAST_MAX_BODY (1u << 20) /* answer_stored: larger bodies are a job's */
#define FAST_MAX_CHUNKS 20       /* ... 1 MiB in the store's chunks */

struct netd_front {
  netd *d;
  netd_front_kind kind;
  const char *name; /* "proxy", "gateway", "metrics" */
  uv_tcp_t listener;
  int listener_open;
  char *upstream; /* gateway: cfg.upstream without a trailing '/' */
  int https;      /* ... an https one (the preload store answers it first) */
  /* the gateway's stored answers without a job (answer_stored); NULL: off */
  netstash_preload_hit *hit;
  netd_hot *hot; /* ... the hot ones' bodies sent with sendfile; NULL: off */
  ns_list conns;
  size_t nconns;
  int stopping;
  void (*done)(void *);
  void *done_ud;
  /* heads waiting for their first body bytes, sent alone at the end of the
   * loop turn if none came (conn.head_node) */
  uv_check_t head_check;
  int check_open;
  ns_list heads;
};

typedef enum conn_state {
  ST_IDLE = 0, /* reading (the start of) a request */
  ST_READY,    /* a complete request, not yet dispatched */
  ST_BUSY,     /* answering it */
  ST_TUNNEL,   /* CONNECT: resolving, connecting, then relaying bytes */
  ST_CLOSING   /* our FIN is out: draining the client until EOF or LINGER_MS */
} conn_state;

enum { RD_OFF = 0, RD_HTTP, RD_TUNNEL };

typedef struct conn {
  ns_list node;
  netd_front *fr;
  netd *d;
  int refs; /* open handles, pending requests (getaddrinfo), jobs let go after their answer */
  int closed;
  conn_state state;
  int in_drive;

  uv_tcp_t tcp;
  uv_timer_t timer;
  int reading;        /* RD_* */
  size_t out_pending; /* bytes handed to uv_write on tcp, not yet written */
  uv_write_t vreq;    /* a write straight from the job's body view (send_view) */
  size_t view_bytes;  /* ... its bytes, in out_pending */
  size_t view_consume; /* ... the body bytes to consume once it is written */
  uv_shutdown_t shut_client;
  int client_eof;

  /* request */
  http_parser parser;
  ns_buf stash; /* read, not yet parsed */
  ns_buf url;
  ns_buf hname, hvalue;
  int hstate; /* 0 none, 1 in a field name, 2 in a value */
  ns_headers hdrs;
  size_t head_bytes;
  ns_buf body;
  int has_body;
  int err_status; /* set by a parser callback that refused the request */
  int keep_alive;
  int http_minor;
  unsigned method;
  int upgrade;

  /* answer */
  netstash_job *job;
  uint64_t t0_us;
  uint64_t idle_at; /* loop time (ms) of the last request activity */
  int idle_timer;   /* the timer is the lazy idle one (on_idle) */
  int head_sent;    /* the job's head is known (in hbuf until flushed) */
  int head_flushed; /* ... and handed to the socket */
  ns_list head_node; /* in fr->heads while the head waits for body bytes */
  int head_queued;
  ns_buf hbuf;      /* the response head (kept across requests) */
  int no_body;
  int chunked;
  int64_t clen; /* the announced Content-Length, -1 if none */
  uint64_t sent;

  /* CONNECT tunnel */
  uv_getaddrinfo_t gai;
  int gai_pending;
  struct addrinfo *ai, *ai_cur;
  int last_err;
  uv_tcp_t peer;
  uv_connect_t connreq;
  int peer_inited;
  int peer_reading;
  int tunnel_up, tunnel_failed;
  size_t peer_pending; /* bytes handed to uv_write on peer */
  int peer_eof;
  uv_shutdown_t shut_peer;
  int shut_pending;

  char rbuf[READ_BUF];
} conn;

/* A write: the uv request, the bytes (usually inline after the struct). */
typedef struct wbuf {
  uv_write_t req;
  conn *c;
  int to_peer;
  uv_buf_t ub;
  char inl[];
} wbuf;

static const ns_mem *M(void) {
  return ns_mem_default();
}

static void conn_close(conn *c);
static void drive(conn *c);
static void pump(conn *c);
static int flush_head(conn *c, const char *extra, size_t extra_len);
static void request_done(conn *c);
static void tunnel_read_resume(conn *c);

/* ------------------------------------------------------------ writes */

static wbuf *wbuf_new(size_t cap) {
  wbuf *w = malloc(sizeof(*w) + cap);
  if (w) {
    w->c = NULL;
    w->to_peer = 0;
    w->ub = uv_buf_init(w->inl, 0);
  }
  return w;
}

static void on_written(uv_write_t *req, int status) {
  wbuf *w = NS_CONTAINER_OF(req, wbuf, req);
  conn *c = w->c;
  int to_peer = w->to_peer;
  if (to_peer)
    c->peer_pending -= w->ub.len;
  else
    c->out_pending -= w->ub.len;
  free(w);
  if (c->closed)
    return;
  if (status < 0) {
    conn_close(c);
    return;
  }
  if (c->state == ST_BUSY && !to_peer)
    pump(c);
  else if (c->state == ST_TUNNEL && c->tunnel_up)
    tunnel_read_resume(c);
}

/* Queues w (its ub set) on the client, or on the CONNECT peer. Takes w. */
static int write_wbuf(conn *c, wbuf *w, int to_peer) {
  uv_stream_t *s = to_peer ? (uv_stream_t *)&c->peer : (uv_stream_t *)&c->tcp;
  size_t len = w->ub.len;
  w->c = c;
  w->to_peer = to_peer;
  if (c->closed || uv_write(&w->req, s, &w->ub, 1, on_written) != 0) {
    free(w);
    conn_close(c);
    return -1;
  }
  if (to_peer)
    c->peer_pending += len;
  else
    c->out_pending += len;
  return 0;
}

/* Writes what the client's socket takes of bufs at once (*done), unless
 * earlier writes are still queued (*done 0). -1 when the connection was or
 * got closed. */
static int write_now(conn *c, const uv_buf_t *bufs, unsigned n, size_t *done) {
  int r;
  *done = 0;
  if (c->closed)
    return -1;
  if (c->out_pending)
    return 0;
  r = uv_try_write((uv_stream_t *)&c->tcp, bufs, n);
  if (r >= 0)
    *done = (size_t)r;
  else if (r != UV_EAGAIN) {
    conn_close(c);
    return -1;
  }
  return 0;
}

/* Sends bufs to the client: written at once when nothing is queued ahead
 * of them, and only what the socket did not take is copied into a queued
 * write. 0, or -1 when the connection was closed. */
static int send_bufs(conn *c, const uv_buf_t *bufs, unsigned n) {
  size_t total = 0, done = 0;
  wbuf *w;
  unsigned i;
  for (i = 0; i < n; i++)
    total += bufs[i].len;
  if (!total)
    return 0;
  if (write_now(c, bufs, n, &done) != 0)
    return -1;
  if (done == total)
    return 0;
  w = wbuf_new(total - done);
  if (!w) {
    conn_close(c);
    return -1;
  }
  w->ub.len = netd_copy_unwritten(w->inl, bufs, n, done);
  return write_wbuf(c, w, 0);
}

/* Sends an answer whose body (size bytes) is both in bufs[1..n-1] and in
 * the sealed memfd mfd (hotbody.c): the head (bufs[0]) with MSG_MORE, so
 * that it leaves with the body's first bytes, then the body with sendfile —
 * nothing copied on this side. Only when nothing is queued ahead (else
 * send_bufs). What the socket does not take is copied from bufs into a
 * queued write, as send_bufs does. 0, or -1 when the connection was
 * closed. */
static int send_hot(conn *c, int mfd, const uv_buf_t *bufs, unsigned n, uint64_t size) {
  uv_os_fd_t fd;
  size_t done = 0, total = bufs[0].len + (size_t)size;
  off_t off = 0;
  wbuf *w;
  if (c->closed || c->out_pending || uv_fileno((uv_handle_t *)&c->tcp, &fd) != 0)
    return send_bufs(c, bufs, n);
  while (done < bufs[0].len) {
    ssize_t r = send(fd, bufs[0].base + done, bufs[0].len - done, MSG_MORE | MSG_NOSIGNAL);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0 && errno != EAGAIN)
      goto gone;
    if (r < 0)
      break;
    done += (size_t)r;
  }
  while (done == bufs[0].len && (uint64_t)off < size) {
    ssize_t r = sendfile(fd, mfd, &off, (size_t)size - (size_t)off);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0 && errno != EAGAIN)
      goto gone;
    if (r <= 0)
      break;
  }
  done += (size_t)off;
  if (off > 0)
    atomic_fetch_add_explicit(&c->d->metrics.sendfile_answers, 1, memory_order_relaxed);
  if (done == total)
    return 0;
  w = wbuf_new(total - done);
  if (!w)
    goto gone;
  w->ub.len = netd_copy_unwritten(w->inl, bufs, n, done);
  return write_wbuf(c, w, 0);
gone:
  conn_close(c);
  return -1;
}

size_t netd_copy_unwritten(void *dst, const uv_buf_t *bufs, size_t n, size_t written) {
  size_t off = 0;
  for (size_t i = 0; i < n; i++) {
    size_t l = bufs[i].len;
    if (written >= l) {
      written -= l;
      continue;
    }
    memcpy((char *)dst + off, bufs[i].base + written, l - written);
    off += l - written;
    written = 0;
  }
  return off;
}

static void on_view_written(uv_write_t *req, int status) {
  conn *c = NS_CONTAINER_OF(req, conn, vreq);
  size_t n = c->view_consume;
  c->out_pending -= c->view_bytes;
  c->view_bytes = c->view_consume = 0;
  if (c->closed)
    return; /* the job went with conn_close, before the write was cancelled */
  if (status < 0) {
    conn_close(c);
    return;
  }
  if (c->job)
    (void)netstash_job_consume(c->job, n);
  pump(c);
}

/* Sends bufs, where bufs[vi] is view_len bytes of the job's body held by
 * netstash_job_peek. What the socket takes at once is consumed at once. The
 * rest is not copied: the bytes before the view (head, chunk size) go into
 * a small queued write, the view and what follows it (the chunk's static
 * CRLF) are written from where they are, and the view is consumed when that
 * write completes — the job keeps it in place meanwhile (what arrives goes
 * to its second buffer). 0 when all went out, 1 when the view's write is
 * pending (stop pumping), -1 when the connection was closed. */
static int send_view(conn *c, const uv_buf_t *bufs, unsigned n, unsigned vi, size_t view_len) {
  size_t total = 0, done = 0, pre = 0, skip;
  uv_buf_t rem[4];
  unsigned i, k = 0;
  for (i = 0; i < n; i++)
    total += bufs[i].len;
  for (i = 0; i < vi; i++)
    pre += bufs[i].len;
  if (write_now(c, bufs, n, &done) != 0)
    return -1;
  if (done == total) {
    (void)netstash_job_consume(c->job, view_len);
    return 0;
  }
  if (done < pre) {
    wbuf *w = wbuf_new(pre - done);
    if (!w) {
      conn_close(c);
      return -1;
    }
    w->ub.len = netd_copy_unwritten(w->inl, bufs, vi, done);
    if (write_wbuf(c, w, 0) != 0)
      return -1;
  }
  skip = done > pre ? done - pre : 0;
  for (i = vi; i < n; i++) {
    if (skip >= bufs[i].len) {
      skip -= bufs[i].len;
      continue;
    }
    rem[k++] = uv_buf_init(bufs[i].base + skip, (unsigned)(bufs[i].len - skip));
    skip = 0;
  }
  c->view_bytes = total - (done > pre ? done : pre);
  c->view_consume = view_len;
  if (uv_write(&c->vreq, (uv_stream_t *)&c->tcp, rem, k, on_view_written) != 0) {
    c->view_bytes = c->view_consume = 0;
    conn_close(c);
    return -1;
  }
  c->out_pending += c->view_bytes;
  return 1;
}

/* Copies len bytes into a write to the client (or the peer). */
static int write_copy(conn *c, const void *data, size_t len, int to_peer) {
  wbuf *w;
  if (!len)
    return 0;
  if (!to_peer) {
    uv_buf_t b = uv_buf_init((char *)(uintptr_t)data, (unsigned)len);
    return send_bufs(c, &b, 1);
  }
  w = wbuf_new(len);
  if (!w) {
    conn_close(c);
    return -1;
  }
  memcpy(w->inl, data, len);
  w->ub.len = len;
  return write_wbuf(c, w, to_peer);
}

/* ------------------------------------------------------------ lifecycle */

static void front_free(netd_front *fr) {
  netstash_preload_hit_del(fr->hit);
  netd_hot_free(fr->hot);
  free(fr->upstream);
  free(fr);
}

static void front_maybe_done(netd_front *fr) {
  void (*done)(void *);
  void *ud;
  if (!fr->stopping || fr->listener_open || fr->check_open || !ns_list_empty(&fr->conns))
    return;
  done = fr->done;
  ud = fr->done_ud;
  front_free(fr);
  if (done)
    done(ud);
}

static void request_reset(conn *c) {
  ns_buf_reset(&c->url);
  ns_buf_reset(&c->hname);
  ns_buf_reset(&c->hvalue);
  c->hstate = 0;
  ns_headers_free(&c->hdrs);
  c->head_bytes = 0;
  ns_buf_free(&c->body); /* up to 64 MiB: do not keep it around */
  c->has_body = 0;
  c->err_status = 0;
  c->method = HTTP_GET; /* until the next head says otherwise (error answers have a body) */
  c->upgrade = 0;
  c->head_sent = 0;
  c->head_flushed = 0;
  ns_buf_reset(&c->hbuf);
  c->no_body = 0;
  c->chunked = 0;
  c->clen = -1;
  c->sent = 0;
}

static void conn_free(conn *c) {
  netd_front *fr = c->fr;
  if (c->head_queued)
    ns_list_remove(&c->head_node);
  ns_list_remove(&c->node);
  fr->nconns--;
  request_reset(c);
  ns_buf_free(&c->stash);
  ns_buf_free(&c->hbuf);
  ns_buf_free(&c->url);
  ns_buf_free(&c->hname);
  ns_buf_free(&c->hvalue);
  if (c->ai)
    uv_freeaddrinfo(c->ai);
  free(c);
  front_maybe_done(fr);
}

static void conn_unref(conn *c) {
  if (--c->refs == 0)
    conn_free(c);
}

static void on_handle_closed(uv_handle_t *h) {
  conn_unref(h->data);
}

static void tunnel_connect(conn *c);
static void tunnel_fail(conn *c, netstash_error e, const char *detail);

static netstash_error connect_error(int uverr) {
  switch (uverr) {
  case UV_ECONNREFUSED:
    return NETSTASH_E_CONNECT_REFUSED;
  case UV_ETIMEDOUT:
    return NETSTASH_E_TIMEOUT;
  default:
    return NETSTASH_E_CONNECT_FAILED;
  }
}

static void on_peer_closed(uv_handle_t *h) {
  conn *c = h->data;
  c->peer_inited = 0;
  c->peer_reading = 0;
  /* a failed connect attempt: the next address, or the end */
  if (!c->closed && !c->tunnel_failed && !c->tunnel_up && c->state == ST_TUNNEL) {
    if (c->ai_cur)
      tunnel_connect(c);
    else
      tunnel_fail(c, connect_error(c->last_err), uv_strerror(c->last_err));
  }
  conn_unref(c);
}

/* Hard close: cancels the job, closes every handle; the conn is freed once
 * the last one is closed. Idempotent. */
static void conn_close(conn *c) {
  if (c->closed)
    return;
  c->closed = 1;
  if (c->job) {
    netstash_job_del(c->job);
    c->job = NULL;
  }
  if (c->gai_pending)
    uv_cancel((uv_req_t *)&c->gai);
  uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
  uv_close((uv_handle_t *)&c->timer, on_handle_closed);
  if (c->peer_inited && !uv_is_closing((uv_handle_t *)&c->peer))
    uv_close((uv_handle_t *)&c->peer, on_peer_closed);
}

static void on_timer(uv_timer_t *t) {
  conn *c = t->data;
  if (c->state == ST_TUNNEL && !c->tunnel_up && !c->tunnel_failed) {
    tunnel_fail(c, NETSTASH_E_TIMEOUT, "no connection within 10 s");
    return;
  }
  if (c->state == ST_TUNNEL)
    return;
  conn_close(c); /* idle keep-alive connection, stalled request, or lingering */
}

/* The connection's timer for one deadline (lingering, a tunnel's connect,
 * a client that reads nothing), or stopped. */
static void timer_set(conn *c, uint64_t ms) {
  c->idle_timer = 0;
  uv_timer_start(&c->timer, on_timer, ms, 0);
}

static void timer_stop(conn *c) {
  c->idle_timer = 0;
  uv_timer_stop(&c->timer);
}

/* The keep-alive / stalled-request deadline, lazily: each request only
 * notes the time, and the timer — armed once, not restarted per request (two
 * timer-heap updates per request before) — checks it when it fires. A
 * connection busy answering is not idle: checked again later. */
static void on_idle(uv_timer_t *t) {
  conn *c = t->data;
  uint64_t now = uv_now(t->loop), idle = now - c->idle_at;
  if (c->state == ST_IDLE && idle >= IDLE_MS) {
    conn_close(c);
    return;
  }
  uv_timer_start(t, on_idle, c->state == ST_IDLE ? IDLE_MS - idle : IDLE_MS, 0);
}

static void idle_touch(conn *c) {
  c->idle_at = uv_now(c->d->loop);
  if (!c->idle_timer || !uv_is_active((uv_handle_t *)&c->timer)) {
    c->idle_timer = 1;
    uv_timer_start(&c->timer, on_idle, IDLE_MS, 0);
  }
}

static void on_client_shutdown(uv_shutdown_t *req, int status) {
  conn *c = NS_CONTAINER_OF(req, conn, shut_client);
  c->shut_pending--;
  if (c->closed)
    return;
  if (status < 0) {
    conn_close(c);
    return;
  }
  if (c->state == ST_CLOSING) {
    if (c->client_eof)
      conn_close(c); /* the client is done too */
    else
      timer_set(c, LINGER_MS);
  } else if (c->state == ST_TUNNEL && c->peer_eof && c->client_eof && !c->shut_pending) {
    conn_close(c);
  }
}

static void read_http(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void alloc_http(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void read_tunnel(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void alloc_tunnel(uv_handle_t *h, size_t suggested, uv_buf_t *buf);

static void set_reading(conn *c, int mode) {
  if (c->closed || c->reading == mode)
    return;
  if (c->reading)
    uv_read_stop((uv_stream_t *)&c->tcp);
  c->reading = RD_OFF;
  if (mode == RD_OFF)
    return;
  if (uv_read_start((uv_stream_t *)&c->tcp, mode == RD_HTTP ? alloc_http : alloc_tunnel,
                    mode == RD_HTTP ? read_http : read_tunnel) != 0) {
    conn_close(c);
    return;
  }
  c->reading = mode;
}

/* Graceful close once what is queued has been written: FIN, then read and
 * drop whatever the client still sends (so that our last answer is not lost
 * to a reset), then close. */
static void finish_close(conn *c) {
  if (c->closed || c->state == ST_CLOSING)
    return;
  c->state = ST_CLOSING;
  if (c->job) {
    netstash_job_del(c->job);
    c->job = NULL;
  }
  if (c->peer_inited && !uv_is_closing((uv_handle_t *)&c->peer))
    uv_close((uv_handle_t *)&c->peer, on_peer_closed);
  /* a client that reads nothing keeps the shutdown waiting: not forever */
  timer_set(c, IDLE_MS);
  if (c->client_eof) {
    /* nothing more will come: close once the queue is written */
    if (uv_shutdown(&c->shut_client, (uv_stream_t *)&c->tcp, on_client_shutdown) != 0) {
      conn_close(c);
      return;
    }
    c->shut_pending++;
    return;
  }
  set_reading(c, RD_HTTP);
  if (c->closed)
    return;
  if (uv_shutdown(&c->shut_client, (uv_stream_t *)&c->tcp, on_client_shutdown) != 0) {
    conn_close(c);
    return;
  }
  c->shut_pending++;
}

/* ------------------------------------------------------------ simple answers */

static const char *reason_of(int status) {
  const char *r = http_status_str((enum http_status)status);
  return (r && r[0] != '<') ? r : "Status";
}

/* A complete answer of our own (errors, metrics): status, extra header
 * lines (each ending in CRLF, may be NULL), body. The request is over after
 * it; close_after ends the connection. */
static void respond(conn *c, int status, const char *ctype, const char *extra, const char *body,
                    size_t body_len, int close_after) {
  ns_buf b;
  netstash_error e;
  int send_body = c->method != HTTP_HEAD;
  if (c->closed)
    return;
  if (close_after || c->client_eof)
    c->keep_alive = 0;
  ns_buf_init(&b, M(), HEAD_MAX + BODY_MAX);
  e = ns_buf_printf(&b,
                    "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                    "Cache-Control: no-store\r\n%s%s\r\n",
                    status, reason_of(status), ctype, body_len, extra ? extra : "",
                    c->keep_alive ? "" : "Connection: close\r\n");
  if (e == NETSTASH_OK && send_body && body_len)
    e = ns_buf_append(&b, body, body_len);
  if (e != NETSTASH_OK) {
    ns_buf_free(&b);
    conn_close(c);
    return;
  }
  write_copy(c, b.data, b.len, 0); /* not counted in bytes_out: relayed bodies only */
  ns_buf_free(&b);
  request_done(c);
}

/* A text answer: "netd FRONT: message\n". */
static void respond_text(conn *c, int status, const char *extra, int close_after, const char *fmt,
                         ...) __attribute__((format(printf, 5, 6)));
static void respond_text(conn *c, int status, const char *extra, int close_after, const char *fmt,
                         ...) {
  char msg[1024];
  int n, k;
  va_list ap;
  n = snprintf(msg, sizeof(msg), "netd %s: ", c->fr->name);
  va_start(ap, fmt);
  k = vsnprintf(msg + n, sizeof(msg) - (size_t)n - 1, fmt, ap);
  va_end(ap);
  if (k < 0)
    k = 0;
  n += k;
  if ((size_t)n > sizeof(msg) - 2)
    n = (int)sizeof(msg) - 2;
  /* one line: a detail from elsewhere must not carry line breaks */
  for (int i = 0; i < n; i++)
    if ((unsigned char)msg[i] < 0x20)
      msg[i] = ' ';
  msg[n++] = '\n';
  msg[n] = 0;
  respond(c, status, "text/plain; charset=utf-8", extra, msg, (size_t)n, close_after);
}

/* 502 (or 504, netd_error_status) for a library error: X-Netstash-Error
 * names it, the body adds the detail. Recorded as an error answer. */
static void respond_error(conn *c, netstash_error e, const char *detail) {
  char extra[128];
  netd_metrics_request(&c->d->metrics, NETD_SRC_ERROR, ns_now_us() - c->t0_us);
  snprintf(extra, sizeof(extra), "X-Netstash-Error: %s\r\n", netstash_error_name(e));
  respond_text(c, netd_error_status(e), extra, 0, "%s: %s%s%s", netstash_error_name(e),
               netstash_strerror(e), detail && *detail ? ": " : "", detail ? detail : "");
}

/* ------------------------------------------------------------ the request */

static int header_too_big(conn *c, size_t more) {
  c->head_bytes += more;
  if (c->head_bytes > HEAD_MAX) {
    c->err_status = 431;
    return 1;
  }
  return 0;
}

static int push_header(conn *c) {
  netstash_error e =
      ns_headers_add(&c->hdrs, (const char *)c->hname.data, c->hname.len,
                     c->hvalue.len ? (const char *)c->hvalue.data : "", c->hvalue.len);
  ns_buf_reset(&c->hname);
  ns_buf_reset(&c->hvalue);
  c->hstate = 0;
  if (e != NETSTASH_OK) {
    c->err_status = e == NETSTASH_E_NOMEM ? 503 : 400;
    return 1;
  }
  return 0;
}

static int on_message_begin(http_parser *p) {
  request_reset(p->data);
  return 0;
}

static int on_url(http_parser *p, const char *at, size_t len) {
  conn *c = p->data;
  if (header_too_big(c, len))
    return 1;
  return ns_buf_append(&c->url, at, len) != NETSTASH_OK;
}

static int on_header_field(http_parser *p, const char *at, size_t len) {
  conn *c = p->data;
  if (c->hstate == 2 && push_header(c))
    return 1;
  c->hstate = 1;
  if (header_too_big(c, len + (c->hname.len ? 0 : 4))) /* ": " and CRLF */
    return 1;
  return ns_buf_append(&c->hname, at, len) != NETSTASH_OK;
}

static int on_header_value(http_parser *p, const char *at, size_t len) {
  conn *c = p->data;
  c->hstate = 2;
  if (header_too_big(c, len))
    return 1;
  return ns_buf_append(&c->hvalue, at, len) != NETSTASH_OK;
}

static int on_headers_complete(http_parser *p) {
  conn *c = p->data;
  const char *expect;
  if (c->hstate && push_header(c))
    return -1;
  c->method = p->method;
  c->http_minor = p->http_major == 1 ? p->http_minor : 0;
  /* content_length is UINT64_MAX without a Content-Length field. An empty
   * body is kept only where it means something (POST with length 0). */
  c->has_body = (p->flags & F_CHUNKED) ||
                (p->content_length != UINT64_MAX &&
                 (p->content_length > 0 || (p->method != HTTP_GET && p->method != HTTP_HEAD)));
  if (!(p->flags & F_CHUNKED) && p->content_length != UINT64_MAX && p->content_length > BODY_MAX) {
    c->err_status = 413;
    return -1;
  }
  ns_buf_init(&c->body, M(), BODY_MAX);
  /* RFC 9110 §10.1.1: say "go on" unless the request is refused outright */
  expect = ns_headers_get(&c->hdrs, "expect");
  if (expect && ns_ascii_casecmp(expect, "100-continue") == 0 && c->has_body &&
      p->method != HTTP_CONNECT && p->http_minor >= 1) {
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    if (write_copy(c, cont, sizeof(cont) - 1, 0) != 0)
      return -1;
  }
  return 0;
}

static int on_body(http_parser *p, const char *at, size_t len) {
  conn *c = p->data;
  netstash_error e = ns_buf_append(&c->body, at, len);
  if (e != NETSTASH_OK) {
    c->err_status = e == NETSTASH_E_TOO_LARGE ? 413 : 503;
    return 1;
  }
  return 0;
}

static int on_message_complete(http_parser *p) {
  conn *c = p->data;
  c->keep_alive = http_should_keep_alive(p) && c->http_minor >= 1;
  c->state = ST_READY;
  http_parser_pause(p, 1); /* one request at a time: the rest waits in the stash */
  return 0;
}

static const http_parser_settings parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

static void stash_consume(conn *c, size_t n) {
  if (n >= c->stash.len) {
    ns_buf_reset(&c->stash);
    return;
  }
  memmove(c->stash.data, c->stash.data + n, c->stash.len - n);
  c->stash.len -= n;
  c->stash.data[c->stash.len] = 0;
}

/* Feeds the stash to the parser (state ST_IDLE). */
static void parse_stash(conn *c) {
  size_t n =
      http_parser_execute(&c->parser, &parser_settings, (const char *)c->stash.data, c->stash.len);
  enum http_errno he = HTTP_PARSER_ERRNO(&c->parser);
  if (c->closed)
    return;
  if (he != HPE_OK && he != HPE_PAUSED) {
    char shown[97];
    size_t k = 0, from = n > 32 ? n - 32 : 0;
    for (size_t i = from; i < c->stash.len && k < sizeof(shown) - 1; i++, k++)
      shown[k] = c->stash.data[i] >= 0x20 && c->stash.data[i] < 0x7f ? (char)c->stash.data[i] : '.';
    shown[k] = 0;
    netd_log(c->d, NETSTASH_LOG_DEBUG, "%s: request refused at byte %zu of %zu (%s): \"%s\"",
             c->fr->name, n, c->stash.len, http_errno_name(he), shown);
  }
  stash_consume(c, n);
  if (c->state == ST_READY) {
    c->upgrade = c->parser.upgrade;
    return;
  }
  if (he == HPE_OK)
    return;           /* everything consumed; more to come */
  c->state = ST_BUSY; /* answering the error */
  if (!c->err_status)
    c->err_status = he == HPE_HEADER_OVERFLOW ? 431 : 400;
  switch (c->err_status) {
  case 431:
    respond_text(c, 431, NULL, 1, "request header section larger than %u bytes", HEAD_MAX);
    break;
  case 413:
    respond_text(c, 413, NULL, 1, "request body larger than %u bytes", BODY_MAX);
    break;
  case 503:
    respond_text(c, 503, NULL, 1, "out of memory");
    break;
  default:
    respond_text(c, 400, NULL, 1, "malformed request: %s",
                 http_errno_description(he == HPE_OK ? HPE_UNKNOWN : he));
    break;
  }
}

/* ------------------------------------------------------------ relaying a job */

static const char *source_name(netstash_source s) {
  switch (s) {
  case NETSTASH_SOURCE_PRELOAD:
    return "preload";
  case NETSTASH_SOURCE_CACHE:
    return "cache";
  case NETSTASH_SOURCE_REVALIDATED:
    return "revalidated";
  case NETSTASH_SOURCE_NETWORK:
    return "network";
  default:
    return "none";
  }
}

int netd_stored_lookup(netstash_preload_hit *hit, const netstash_request *req, int preload,
                       netstash_source *src) {
  *src = NETSTASH_SOURCE_PRELOAD;
  if (preload && netstash_intercept_preloaded(req, hit) == NETSTASH_OK)
    return 1;
  *src = NETSTASH_SOURCE_CACHE;
  if (netstash_intercept_cached(req, hit) == NETSTASH_OK)
    return 1;
  netstash_preload_hit_release(hit);
  return 0;
}

/* Hop-by-hop fields (RFC 9110 §7.6.1, RFC 9112 §9.6, plus the de-facto
 * Keep-Alive and Proxy-Connection): never forwarded, either way. */
int netd_hop_by_hop(const char *name, size_t len) {
  /* by length first: this runs for every field of every answer */
  switch (len) {
  case 2:
    if (ns_ascii_casecmp_n(name, "te", 2) == 0)
      return 1;
    break;
  case 7:
    if (ns_ascii_casecmp_n(name, "trailer", 7) == 0 || ns_ascii_casecmp_n(name, "upgrade", 7) == 0)
      return 1;
    break;
  case 10:
    if (ns_ascii_casecmp_n(name, "connection", 10) == 0 ||
        ns_ascii_casecmp_n(name, "keep-alive", 10) == 0)
      return 1;
    break;
  case 17:
    if (ns_ascii_casecmp_n(name, "transfer-encoding", 17) == 0)
      return 1;
    break;
  default:
    break;
  }
  return len >= 6 && ns_ascii_casecmp_n(name, "proxy-", 6) == 0;
}

/* Is name (nl bytes) one of the fields a Connection header value (cl bytes;
 * cv NULL: none) lists? */
static int in_connection(const char *cv, size_t cl, const char *name, size_t nl) {
  ns_reader r;
  ns_span t;
  if (!cv)
    return 0;
  ns_reader_init(&r, cv, cl);
  while (ns_reader_list_next(&r)) {
    if (ns_reader_token(&r, &t) && t.len == nl && ns_ascii_casecmp_n(t.p, name, nl) == 0)
      return 1;
    ns_reader_list_skip(&r);
  }
  return 0;
}

/* A Content-Length value (n bytes; v NULL: none) as a length, -1 when it
 * cannot be used (a list, garbage). */
int64_t netd_parse_length(const char *v, size_t n) {
  ns_reader r;
  uint64_t len;
  int sat = 0;
  if (!v)
    return -1;
  ns_reader_init(&r, v, n);
  ns_reader_skip_ows(&r);
  if (!ns_reader_uint(&r, INT64_MAX, &len, &sat) || sat)
    return -1;
  ns_reader_skip_ows(&r);
  return ns_reader_eof(&r) ? (int64_t)len : -1;
}

/* The answer's framing from its status and Content-Length (clen: the
 * field's value, NULL when absent): no body, a length, or chunked (HTTP/1.0:
 * the body ends with the connection). */
static void answer_framing(conn *c, int status, const char *clen, size_t clen_len) {
  c->no_body = c->method == HTTP_HEAD || status < 200 || status == 204 || status == 304;
  c->clen = c->no_body ? -1 : netd_parse_length(clen, clen_len);
  if (!c->no_body && c->clen < 0) {
    if (c->http_minor >= 1)
      c->chunked = 1;
    else
      c->keep_alive = 0; /* HTTP/1.0: the end of the body is the end of the connection */
  }
  if (c->client_eof)
    c->keep_alive = 0;
}

/* The relayed head in c->hbuf, in three steps: the status line ... */
static netstash_error head_begin(conn *c, int status) {
  ns_buf *b = &c->hbuf;
  char line[13];
  netstash_error e;
  ns_buf_reset(b);
  memcpy(line, "HTTP/1.1 ", 9);
  if (status < 100 || status > 999)
    status = 502; /* not a status line a client could read */
  line[9] = (char)('0' + status / 100);
  line[10] = (char)('0' + status / 10 % 10);
  line[11] = (char)('0' + status % 10);
  line[12] = ' ';
  if ((e = ns_buf_append(b, line, 13)) == NETSTASH_OK &&
      (e = ns_buf_append_str(b, reason_of(status))) == NETSTASH_OK)
    e = ns_buf_append(b, "\r\n", 2);
  return e;
}

/* ... each field of the answer, unless hop-by-hop (or named by its
 * Connection field, cv/cl), an upstream netd's (or stored) answer field —
 * ours replace them — or a length we could not use (absent, invalid, or a
 * list: the body goes chunked, and both together would be a framing
 * error) ... */
static netstash_error head_field(conn *c, const char *cv, size_t cl, const char *name, size_t nl,
                                 const char *value, size_t vl) {
  ns_buf *b = &c->hbuf;
  netstash_error e;
  char *d;
  if (netd_hop_by_hop(name, nl) || in_connection(cv, cl, name, nl) ||
      (nl >= 11 && ns_ascii_casecmp_n(name, "x-netstash-", 11) == 0) ||
      (!c->no_body && c->clen < 0 && nl == 14 &&
       ns_ascii_casecmp_n(name, "content-length", 14) == 0))
    return NETSTASH_OK;
  if ((e = ns_buf_reserve(b, nl + vl + 4)) != NETSTASH_OK)
    return e;
  d = (char *)b->data + b->len;
  memcpy(d, name, nl);
  d[nl] = ':';
  d[nl + 1] = ' ';
  memcpy(d + nl + 2, value, vl);
  d[nl + 2 + vl] = '\r';
  d[nl + 3 + vl] = '\n';
  b->len += nl + vl + 4;
  b->data[b->len] = 0;
  return NETSTASH_OK;
}

/* ... and netd's own fields and the blank line. */
static netstash_error head_end(conn *c, netstash_source src, const char *reason) {
  ns_buf *b = &c->hbuf;
  netstash_error e;
  if ((e = ns_buf_append_str(b, "X-Netstash-Source: ")) == NETSTASH_OK &&
      (e = ns_buf_append_str(b, source_name(src))) == NETSTASH_OK)
    e = ns_buf_append(b, "\r\n", 2);
  if (e == NETSTASH_OK && reason && *reason && ns_header_value_valid(reason, strlen(reason)) &&
      (e = ns_buf_append_str(b, "X-Netstash-Cache-Reason: ")) == NETSTASH_OK &&
      (e = ns_buf_append_str(b, reason)) == NETSTASH_OK)
    e = ns_buf_append(b, "\r\n", 2);
  if (e == NETSTASH_OK && c->chunked)
    e = ns_buf_append_str(b, "Transfer-Encoding: chunked\r\n");
  if (e == NETSTASH_OK && !c->keep_alive)
    e = ns_buf_append_str(b, "Connection: close\r\n");
  if (e == NETSTASH_OK)
    e = ns_buf_append(b, "\r\n", 2);
  if (e != NETSTASH_OK)
    netd_log(c->d, NETSTASH_LOG_WARN, "%s: response head not relayed: %s", c->fr->name,
             netstash_strerror(e));
  return e;
}

static void on_job_response(netstash_job *job, void *ud) {
  conn *c = ud;
  const netstash_fetch *f = netstash_job_fetch(job);
  int status = netstash_fetch_status(f);
  netstash_source src = netstash_fetch_source(f);
  const char *conn_hdr = NULL, *name, *value;
  size_t i, n = netstash_fetch_header_count(f);
  const char *clen_hdr = NULL;
  size_t conn_len;
  netstash_error e;

  if (c->closed || c->job != job)
    return;
  netd_metrics_request(&c->d->metrics, netd_source_index(src), ns_now_us() - c->t0_us);
  /* the library's field names are lowercase */
  for (i = 0; i < n; i++) {
    if (netstash_fetch_header_at(f, i, &name, &value) != NETSTASH_OK)
      continue;
    if (name[0] == 'c' && strcmp(name, "connection") == 0)
      conn_hdr = value; /* the last one, as before */
    else if (!clen_hdr && name[0] == 'c' && strcmp(name, "content-length") == 0)
      clen_hdr = value;
  }
  answer_framing(c, status, clen_hdr, clen_hdr ? strlen(clen_hdr) : 0);
  conn_len = conn_hdr ? strlen(conn_hdr) : 0;
  e = head_begin(c, status);
  for (i = 0; e == NETSTASH_OK && i < n; i++)
    if (netstash_fetch_header_at(f, i, &name, &value) == NETSTASH_OK)
      e = head_field(c, conn_hdr, conn_len, name, strlen(name), value, strlen(value));
  if (e == NETSTASH_OK)
    e = head_end(c, src, netstash_fetch_cache_reason(f));
  if (e != NETSTASH_OK) {
    conn_close(c);
    return;
  }
  /* sent with the first body bytes (one writev), or alone when none come
   * at once */
  c->head_sent = 1;
  c->head_flushed = 0;
  pump(c);
}

/* The end of a loop turn: heads whose body bytes did not follow at once
 * (a response still arriving from the network) go out alone. */
static void on_head_check(uv_check_t *h) {
  netd_front *fr = h->data;
  uv_check_stop(h);
  while (!ns_list_empty(&fr->heads)) {
    conn *c = ns_list_entry(fr->heads.next, conn, head_node);
    ns_list_remove(&c->head_node);
    c->head_queued = 0;
    if (!c->closed && c->head_sent && !c->head_flushed && c->state == ST_BUSY)
      (void)flush_head(c, NULL, 0);
  }
}

/* Sends the head if it is still waiting, with extra (may be NULL). */
static int flush_head(conn *c, const char *extra, size_t extra_len) {
  uv_buf_t b[2];
  unsigned n = 0;
  if (!c->head_flushed) {
    b[n++] = uv_buf_init((char *)c->hbuf.data, (unsigned)c->hbuf.len);
    c->head_flushed = 1;
  }
  if (extra_len)
    b[n++] = uv_buf_init((char *)(uintptr_t)extra, (unsigned)extra_len);
  return send_bufs(c, b, n);
}

/* The body has been relayed whole (or the job failed after the head). */
static void response_end(conn *c, netstash_error e) {
  if (c->job) {
    netstash_job_del(c->job);
    c->job = NULL;
  }
  if (e != NETSTASH_OK) {
    netd_log(c->d, NETSTASH_LOG_DEBUG, "%s: body cut after %llu bytes: %s", c->fr->name,
             (unsigned long long)c->sent, netstash_error_name(e));
    conn_close(c); /* the client must see the cut */
    return;
  }
  if (flush_head(c, c->chunked ? "0\r\n\r\n" : NULL, c->chunked ? 5 : 0) != 0)
    return;
  if (c->clen >= 0 && (uint64_t)c->clen != c->sent)
    c->keep_alive = 0; /* the announced length was wrong: framing is lost */
  request_done(c);
}

/* Relays the job's body while the socket's backlog is small: each piece is
 * written straight from the job's buffer (netstash_job_peek), and what the
 * socket does not take at once is written from there too once it can
 * (send_view): body bytes are never copied on their way out. */
static void pump(conn *c) {
  while (c->job && c->head_sent && !c->closed && c->state == ST_BUSY && !c->view_consume &&
         c->out_pending < OUT_HIGH) {
    uv_buf_t b[4];
    unsigned nb = 0, vi;
    size_t n = 0;
    const uint8_t *view = NULL;
    char hex[CHUNK_PREFIX + 1];
    netstash_error e = netstash_job_peek(c->job, &view, &n);
    if (e == NETSTASH_E_AGAIN && c->head_flushed && !c->chunked && c->clen >= 0 &&
        c->sent == (uint64_t)c->clen) {
      /* every announced byte is out: what the job still does (waiting for the
       * HTTP cache's commit of a miss, say) does not hold the connection's
       * next request; the job ends on its own (on_job_complete) */
      c->job = NULL;
      c->refs++;
      atomic_fetch_add_explicit(&c->d->metrics.jobs_finishing, 1, memory_order_relaxed);
      request_done(c);
      return;
    }
    if (e == NETSTASH_E_AGAIN) {
      int defer = c->fr->check_open && !c->fr->stopping;
      if (!c->head_flushed && !c->head_queued && defer) {
        /* a stored body follows within this turn (one writev for both);
         * otherwise the head goes alone at the end of the turn */
        ns_list_insert_tail(&c->fr->heads, &c->head_node);
        c->head_queued = 1;
        uv_check_start(&c->fr->head_check, on_head_check);
      } else if (!defer) {
        (void)flush_head(c, NULL, 0);
      }
      return; /* on_readable follows */
    }
    if (e != NETSTASH_OK || n == 0) {
      if (e != NETSTASH_OK && !c->head_flushed) {
        /* nothing relayed yet: the client gets a 502 naming the error */
        char detail[512];
        const netstash_fetch *f = netstash_job_fetch(c->job);
        snprintf(detail, sizeof(detail), "%s", f ? netstash_fetch_error_detail(f) : "");
        netstash_job_del(c->job);
        c->job = NULL;
        c->head_sent = 0;
        respond_error(c, e, detail);
        return;
      }
      response_end(c, e);
      return;
    }
    if (n > BODY_CHUNK)
      n = BODY_CHUNK; /* bounds one writev, and the socket's backlog with OUT_HIGH */
    if (c->no_body) {
      (void)netstash_job_consume(c->job, n);
      continue;
    }
    if (c->clen >= 0 && c->sent + n > (uint64_t)c->clen) {
      size_t all = n;
      n = (size_t)((uint64_t)c->clen - c->sent); /* never more than announced */
      c->keep_alive = 0;
      if (!n) {
        (void)netstash_job_consume(c->job, all);
        continue;
      }
    }
    if (!c->head_flushed) {
      b[nb++] = uv_buf_init((char *)c->hbuf.data, (unsigned)c->hbuf.len);
      c->head_flushed = 1;
    }
    if (c->chunked) {
      int h = snprintf(hex, sizeof(hex), "%zx\r\n", n);
      b[nb++] = uv_buf_init(hex, (unsigned)h);
    }
    vi = nb;
    b[nb++] = uv_buf_init((char *)(uintptr_t)view, (unsigned)n);
    if (c->chunked)
      b[nb++] = uv_buf_init((char *)"\r\n", 2);
    c->sent += n;
    atomic_fetch_add_explicit(&c->d->metrics.bytes_out, n, memory_order_relaxed);
    if (send_view(c, b, nb, vi, n) != 0)
      return; /* on_view_written pumps on (or the connection is gone) */
  }
}

static void on_job_readable(netstash_job *job, void *ud) {
  conn *c = ud;
  if (!c->closed && c->job == job && c->head_sent)
    pump(c);
}

static void on_job_complete(netstash_job *job, netstash_error err, void *ud) {
  conn *c = ud;
  const netstash_fetch *f;
  char detail[512];
  if (c->job != job) { /* answered already (pump): the job was let go */
    if (err != NETSTASH_OK)
      netd_log(c->d, NETSTASH_LOG_DEBUG, "%s: a job ended after its answer: %s", c->fr->name,
               netstash_error_name(err));
    netstash_job_del(job);
    atomic_fetch_sub_explicit(&c->d->metrics.jobs_finishing, 1, memory_order_relaxed);
    conn_unref(c);
    return;
  }
  if (c->closed)
    return;
  if (c->head_sent) {
    pump(c); /* what remains, then the end or the error */
    return;
  }
  f = netstash_job_fetch(job);
  snprintf(detail, sizeof(detail), "%s", f ? netstash_fetch_error_detail(f) : "");
  netstash_job_del(job);
  c->job = NULL;
  respond_error(c, err != NETSTASH_OK ? err : NETSTASH_E_INTERNAL, detail);
}

/* ------------------------------------------------------------ dispatch */

static netstash_destination destination_of(const char *v) {
  static const struct {
    const char *name;
    netstash_destination d;
  } t[] = {{"document", NETSTASH_DEST_DOCUMENT},
           {"iframe", NETSTASH_DEST_IFRAME},
           {"frame", NETSTASH_DEST_IFRAME},
           {"script", NETSTASH_DEST_SCRIPT},
           {"style", NETSTASH_DEST_STYLE},
           {"image", NETSTASH_DEST_IMAGE},
           {"font", NETSTASH_DEST_FONT},
           {"audio", NETSTASH_DEST_MEDIA},
           {"video", NETSTASH_DEST_MEDIA},
           {"track", NETSTASH_DEST_MEDIA},
           {"worker", NETSTASH_DEST_WORKER},
           {"sharedworker", NETSTASH_DEST_WORKER},
           {"serviceworker", NETSTASH_DEST_WORKER},
           {"manifest", NETSTASH_DEST_MANIFEST},
           {"empty", NETSTASH_DEST_EMPTY}};
  for (size_t i = 0; i < NS_ARRAY_LEN(t); i++)
    if (ns_ascii_casecmp(v, t[i].name) == 0)
      return t[i].d;
  return NETSTASH_DEST_OTHER;
}

/* Browser context for the proxy: Sec-Fetch-Dest (RFC-less, Fetch Metadata)
 * gives the destination; a navigation is its own top-level site; a
 * subresource's top-level site and site for cookies are taken from its
 * Referer (the document that asked for it — right for a top-level
 * document's subresources, an approximation inside iframes); without a
 * Referer it is treated as cross-site. Clients that send no Sec-Fetch-Dest
 * (curl, scripts) get the library's defaults: a browser-initiated
 * navigation. */
static netstash_error proxy_context(conn *c, netstash_request *req) {
  const char *dest = ns_headers_get(&c->hdrs, "sec-fetch-dest");
  const char *referer = ns_headers_get(&c->hdrs, "referer");
  netstash_destination d;
  netstash_error e = netstash_request_set_cookie_jar(req, "default");
  if (e != NETSTASH_OK || !dest)
    return e;
  d = destination_of(dest);
  e = netstash_request_set_destination(req, d);
  if (e != NETSTASH_OK || d == NETSTASH_DEST_DOCUMENT)
    return e;
  if (referer && netstash_request_set_top_level_site(req, referer) == NETSTASH_OK)
    return netstash_request_set_site_for_cookies(req, referer, 0);
  return netstash_request_set_site_for_cookies(req, NULL, 0);
}

/* The gateway's fresh stored answers without a job: netstash_intercept_cached
 * on the front's own hit, on this thread — no job, no fetch, no loop hop —
 * and the head and the body in one writev, the body straight from the
 * store's map (what the socket does not take at once is copied into a
 * queued write, as a job's answer would have been). Only a plain answer: a
 * GET, a status with a body, a Content-Length that is the body's own, at
 * most FAST_MAX_BODY bytes. The preload store first, for an https upstream
 * (only https URLs are preloaded; a job's order), then the HTTP cache.
 * Everything else is the job's, as before: stale entries, ranges,
 * validators, a body kept in the coding it came in (raw), a store error. 1
 * when answered (or the connection closed), 0 when a job must answer. */
static int answer_stored(conn *c, netstash_request *req) {
  netstash_preload_hit *hit = c->fr->hit;
  uv_buf_t b[FAST_MAX_CHUNKS + 1];
  const char *name, *value, *cv = NULL, *clen = NULL;
  size_t nl, vl, cl = 0, clen_len = 0, nf, i;
  uint32_t nc;
  uint64_t size;
  int status, ok;
  netstash_error e = NETSTASH_OK;
  netstash_source src;
  char why[192];
  uint8_t key[32];
  int mfd;

  if (!hit || c->method != HTTP_GET || c->has_body ||
      !netd_stored_lookup(hit, req, c->fr->https, &src))
    return 0;
  status = netstash_preload_hit_status(hit);
  size = netstash_preload_hit_body_size(hit);
  nc = netstash_preload_hit_chunk_count(hit);
  nf = netstash_preload_hit_header_count(hit);
  ok = status >= 200 && status != 204 && size <= FAST_MAX_BODY && nc <= FAST_MAX_CHUNKS;
  for (i = 0; ok && i < nf; i++) {
    if (netstash_preload_hit_header_at(hit, i, &name, &nl, &value, &vl) != NETSTASH_OK) {
      ok = 0;
    } else if (nl == 10 && ns_ascii_casecmp_n(name, "connection", 10) == 0) {
      cv = value;
      cl = vl;
    } else if (nl == 14 && ns_ascii_casecmp_n(name, "content-length", 14) == 0) {
      ok = !clen; /* two: a job's framing rules */
      clen = value;
      clen_len = vl;
    }
  }
  ok = ok && netd_parse_length(clen, clen_len) == (int64_t)size;
  for (i = 0; ok && i < nc; i++) {
    const uint8_t *d;
    size_t len;
    ok = netstash_preload_hit_chunk(hit, (uint32_t)i, &d, &len) == NETSTASH_OK;
    b[i + 1] = uv_buf_init((char *)(uintptr_t)d, (unsigned)len);
  }
  if (!ok) {
    netstash_preload_hit_release(hit);
    return 0;
  }
  answer_framing(c, status, clen, clen_len);
  e = head_begin(c, status);
  for (i = 0; e == NETSTASH_OK && i < nf; i++)
    if ((e = netstash_preload_hit_header_at(hit, i, &name, &nl, &value, &vl)) == NETSTASH_OK)
      e = head_field(c, cv, cl, name, nl, value, vl);
  if (e == NETSTASH_OK)
    e = head_end(c, src, ns_preload_hit_cache_reason(hit, why, sizeof(why)));
  if (e != NETSTASH_OK) {
    netstash_preload_hit_release(hit);
    conn_close(c);
    return 1;
  }
  netd_metrics_request(&c->d->metrics, netd_source_index(src), ns_now_us() - c->t0_us);
  atomic_fetch_add_explicit(&c->d->metrics.fast_hits, 1, memory_order_relaxed);
  b[0] = uv_buf_init((char *)c->hbuf.data, (unsigned)c->hbuf.len);
  c->sent = size;
  atomic_fetch_add_explicit(&c->d->metrics.bytes_out, size, memory_order_relaxed);
  if (c->fr->hot && size >= NETD_HOT_MIN && size <= NETD_HOT_MAX && !c->out_pending &&
      ns_preload_hit_body_key(hit, key) &&
      (mfd = netd_hot_fd(c->fr->hot, key, b + 1, nc, size)) >= 0)
    ok = send_hot(c, mfd, b, nc + 1, size) == 0;
  else
    ok = send_bufs(c, b, nc + 1) == 0;
  netstash_preload_hit_release(hit); /* no read transaction left open */
  if (ok)
    request_done(c);
  return 1;
}

/* Builds the library request for a proxy or gateway request and starts the
 * job. url is absolute. */
static void start_job(conn *c, const char *url) {
  netd *d = c->d;
  netstash_request *req = NULL;
  netstash_job_callbacks cbs = {NULL, on_job_response, NULL, on_job_readable, on_job_complete};
  const char *conn_hdr = ns_headers_get(&c->hdrs, "connection");
  size_t conn_len = conn_hdr ? strlen(conn_hdr) : 0;
  const ns_header_field *fld;
  size_t it = 0;
  netstash_error e;

  c->t0_us = ns_now_us();
  e = netstash_request_new(&req, url);
  if (e == NETSTASH_E_BAD_URL) {
    respond_text(c, 400, NULL, 0, "cannot fetch %s: malformed or unsupported URL", url);
    return;
  }
  if (e == NETSTASH_OK)
    e = netstash_request_set_method(req, http_method_str((enum http_method)c->method));
  while (e == NETSTASH_OK && (fld = ns_headers_next(&c->hdrs, &it, NULL)) != NULL) {
    /* Host comes from the URL (the upstream's, for the gateway); the
     * library frames the body itself and answers 100-continue upstream. */
    if (netd_hop_by_hop(fld->name, fld->name_len) ||
        in_connection(conn_hdr, conn_len, fld->name, fld->name_len) ||
        ns_ascii_casecmp(fld->name, "host") == 0 ||
        ns_ascii_casecmp(fld->name, "content-length") == 0 ||
        ns_ascii_casecmp(fld->name, "expect") == 0)
      continue;
    e = netstash_request_add_header(req, fld->name, fld->value);
  }
  if (e == NETSTASH_OK)
    e = netd_relay_request(req, ns_headers_get(&c->hdrs, "accept-encoding") != NULL);
  if (e == NETSTASH_OK && c->has_body)
    e = netstash_request_set_body(req, c->body.data, c->body.len);
  if (e == NETSTASH_OK && d->cfg.resolve)
    e = netd_add_resolves(req, d->cfg.resolve);
  if (e == NETSTASH_OK) {
    if (c->fr->kind == NETD_FRONT_PROXY)
      e = proxy_context(c, req);
    else /* the gateway relays its clients' cookies; netd's jar stays out of it */
      e = netstash_request_set_cookies(req, 0);
  }
  if (e == NETSTASH_E_INVALID_ARGUMENT || e == NETSTASH_E_TOO_LARGE) {
    netstash_request_del(req);
    respond_text(c, 400, NULL, 0, "request refused by the library: %s", netstash_strerror(e));
    return;
  }
  if (e == NETSTASH_OK && answer_stored(c, req)) {
    netstash_request_del(req);
    return;
  }
  if (e == NETSTASH_OK)
    e = netstash_job_start(d->ctx, req, &cbs, c, &c->job);
  netstash_request_del(req);
  ns_buf_free(&c->body); /* copied into the request */
  if (e != NETSTASH_OK) {
    c->job = NULL;
    respond_error(c, e, "the request could not be started");
  }
}

/* The path of an origin-form target ("/a?b" -> "/a"), as a span. */
static ns_span target_path(const ns_buf *url) {
  const char *u = ns_buf_str(url);
  return ns_span_make(u, strcspn(u, "?#"));
}

static void dispatch_metrics(conn *c) {
  char *text;
  if (!ns_span_eq(target_path(&c->url), ns_span_make("/metrics", 8))) {
    respond_text(c, 404, NULL, 0, "not found (try GET /metrics)");
    return;
  }
  if (c->method != HTTP_GET && c->method != HTTP_HEAD) {
    respond_text(c, 405, "Allow: GET, HEAD\r\n", 0, "only GET and HEAD");
    return;
  }
  text = netd_metrics_render(&c->d->metrics, c->d->ctx);
  if (!text) {
    respond_text(c, 503, NULL, 0, "out of memory");
    return;
  }
  respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, text, strlen(text), 0);
  free(text);
}

static void dispatch_gateway(conn *c) {
  const char *target = ns_buf_str(&c->url);
  ns_buf url;
  if (target[0] != '/') {
    respond_text(c, 400, NULL, 0,
                 "origin-form request target (/path?query) expected, not \"%.200s\"", target);
    return;
  }
  ns_buf_init(&url, M(), HEAD_MAX + 4096);
  if (ns_buf_append_str(&url, c->fr->upstream) != NETSTASH_OK ||
      ns_buf_append_str(&url, target) != NETSTASH_OK) {
    ns_buf_free(&url);
    respond_text(c, 503, NULL, 0, "out of memory");
    return;
  }
  start_job(c, ns_buf_str(&url));
  ns_buf_free(&url);
}

static void dispatch_proxy(conn *c) {
  const char *target = ns_buf_str(&c->url);
  struct http_parser_url u;
  http_parser_url_init(&u);
  if (http_parser_parse_url(target, c->url.len, 0, &u) != 0 || !(u.field_set & (1u << UF_SCHEMA)) ||
      !(u.field_set & (1u << UF_HOST))) {
    respond_text(c, 400, NULL, 0, "absolute-form request target (http://host/path) expected");
    return;
  }
  if (u.field_data[UF_SCHEMA].len == 5 &&
      ns_ascii_casecmp_n(target + u.field_data[UF_SCHEMA].off, "https", 5) == 0) {
    respond_text(c, 400, NULL, 0, "https URLs go through a CONNECT tunnel, not a plain request");
    return;
  }
  if (u.field_data[UF_SCHEMA].len != 4 ||
      ns_ascii_casecmp_n(target + u.field_data[UF_SCHEMA].off, "http", 4) != 0) {
    respond_text(c, 400, NULL, 0, "only http:// URLs are proxied");
    return;
  }
  start_job(c, target);
}

static void tunnel_begin(conn *c);

static void dispatch(conn *c) {
  c->state = ST_BUSY; /* the idle timer stays armed: on_idle skips busy connections */
  if (c->method == HTTP_CONNECT) {
    if (c->fr->kind == NETD_FRONT_PROXY)
      tunnel_begin(c);
    else
      respond_text(c, 405, NULL, 1, "CONNECT is served by the proxy front only");
    return;
  }
  if (c->upgrade)
    c->keep_alive = 0; /* Upgrade is hop-by-hop and refused: this answer ends the connection */
  switch (c->fr->kind) {
  case NETD_FRONT_METRICS:
    dispatch_metrics(c);
    break;
  case NETD_FRONT_GATEWAY:
    dispatch_gateway(c);
    break;
  case NETD_FRONT_PROXY:
  default:
    dispatch_proxy(c);
    break;
  }
}

/* The answer is complete (queued): next request, or the end. */
static void request_done(conn *c) {
  if (c->closed)
    return;
  if (!c->keep_alive) {
    finish_close(c);
    return;
  }
  request_reset(c);
  c->state = ST_IDLE;
  http_parser_pause(&c->parser, 0);
  idle_touch(c);
  drive(c);
}

/* Moves the connection on: dispatches a parsed request, parses what is
 * stashed, or reads. Iterative, so that a burst of pipelined requests
 * answered at once does not recurse. */
static void drive(conn *c) {
  if (c->in_drive)
    return;
  c->in_drive = 1;
  while (!c->closed) {
    if (c->state == ST_READY) {
      dispatch(c);
      continue;
    }
    if (c->state != ST_IDLE)
      break;
    if (c->stash.len) {
      parse_stash(c);
      if (c->state == ST_IDLE && c->stash.len)
        break; /* cannot happen: the parser takes everything unless paused */
      continue;
    }
    set_reading(c, RD_HTTP);
    break;
  }
  c->in_drive = 0;
}

static void alloc_http(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  conn *c = h->data;
  (void)suggested;
  *buf = uv_buf_init(c->rbuf, sizeof(c->rbuf));
}

static void read_http(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  conn *c = s->data;
  if (c->closed)
    return;
  if (nread < 0) {
    set_reading(c, RD_OFF);
    if (nread != UV_EOF || c->state == ST_IDLE || c->state == ST_CLOSING) {
      conn_close(c);
      return;
    }
    /* EOF while answering: finish the answer, then close */
    c->client_eof = 1;
    c->keep_alive = 0;
    return;
  }
  if (nread == 0)
    return;
  if (c->state == ST_CLOSING)
    return; /* lingering: dropped */
  if (ns_buf_append(&c->stash, buf->base, (size_t)nread) != NETSTASH_OK) {
    conn_close(c);
    return;
  }
  if (c->state == ST_IDLE) {
    idle_touch(c);
    drive(c);
    /* the request just read is answered now, before the next connection's
     * is read (a stored answer is ready at once): in nginx's order, rather
     * than every ready connection read first and all answered in the next
     * turn — which made a request wait for two turns' work (the 50 KB
     * gateway's p99 halved, tools/bench/proxy) */
    ns_ctx_run_posted(c->d->ctx);
  } else if (c->stash.len >= STASH_MAX) {
    set_reading(c, RD_OFF); /* pipelined requests: read on after this answer */
  }
}

/* ------------------------------------------------------------ CONNECT */

static void tunnel_fail(conn *c, netstash_error e, const char *detail) {
  c->tunnel_failed = 1;
  if (c->peer_inited && !uv_is_closing((uv_handle_t *)&c->peer))
    uv_close((uv_handle_t *)&c->peer, on_peer_closed);
  timer_stop(c);
  c->keep_alive = 0;
  {
    char extra[128];
    snprintf(extra, sizeof(extra), "X-Netstash-Error: %s\r\n", netstash_error_name(e));
    respond_text(c, 502, extra, 1, "CONNECT %s: %s: %s", ns_buf_str(&c->url),
                 netstash_error_name(e), detail);
  }
}

static void alloc_tunnel(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  wbuf *w = wbuf_new(TUNNEL_CHUNK);
  (void)h;
  (void)suggested;
  *buf = w ? uv_buf_init(w->inl, TUNNEL_CHUNK) : uv_buf_init(NULL, 0);
}

static void on_peer_shutdown(uv_shutdown_t *req, int status) {
  conn *c = NS_CONTAINER_OF(req, conn, shut_peer);
  c->shut_pending--;
  if (c->closed)
    return;
  if (status < 0)
    conn_close(c);
  else if (c->peer_eof && c->client_eof && !c->shut_pending)
    conn_close(c);
}

/* EOF from one side: pass the FIN on (after what is queued to the other
 * side); both FINs passed on: close. */
static void tunnel_eof(conn *c, int from_client) {
  int r;
  if (from_client) {
    c->client_eof = 1;
    set_reading(c, RD_OFF);
    r = uv_shutdown(&c->shut_peer, (uv_stream_t *)&c->peer, on_peer_shutdown);
  } else {
    c->peer_eof = 1;
    uv_read_stop((uv_stream_t *)&c->peer);
    c->peer_reading = 0;
    r = uv_shutdown(&c->shut_client, (uv_stream_t *)&c->tcp, on_client_shutdown);
  }
  if (r != 0) {
    conn_close(c);
    return;
  }
  c->shut_pending++;
}

static void read_tunnel(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  conn *c = s->data;
  int from_client = s == (uv_stream_t *)&c->tcp;
  wbuf *w = buf->base ? NS_CONTAINER_OF(buf->base, wbuf, inl) : NULL;
  if (c->closed || nread <= 0) {
    free(w);
    if (c->closed || nread == 0)
      return;
    if (nread == UV_EOF)
      tunnel_eof(c, from_client);
    else
      conn_close(c);
    return;
  }
  w->ub.len = (size_t)nread;
  if (write_wbuf(c, w, from_client) != 0)
    return;
  /* back-pressure: stop reading a side while the other is backlogged */
  if (from_client && c->peer_pending >= OUT_HIGH)
    set_reading(c, RD_OFF);
  else if (!from_client && c->out_pending >= OUT_HIGH) {
    uv_read_stop((uv_stream_t *)&c->peer);
    c->peer_reading = 0;
  }
}

static void tunnel_read_resume(conn *c) {
  if (!c->client_eof && c->reading != RD_TUNNEL && c->peer_pending < OUT_LOW)
    set_reading(c, RD_TUNNEL);
  if (c->closed)
    return;
  if (!c->peer_eof && !c->peer_reading && c->out_pending < OUT_LOW) {
    if (uv_read_start((uv_stream_t *)&c->peer, alloc_tunnel, read_tunnel) != 0) {
      conn_close(c);
      return;
    }
    c->peer_reading = 1;
  }
}

static void on_peer_connected(uv_connect_t *req, int status) {
  static const char established[] = "HTTP/1.1 200 Connection Established\r\n\r\n";
  conn *c = NS_CONTAINER_OF(req, conn, connreq);
  if (status == UV_ECANCELED || c->closed || c->tunnel_failed)
    return;
  if (status < 0) {
    c->last_err = status;
    c->ai_cur = c->ai_cur ? c->ai_cur->ai_next : NULL;
    uv_close((uv_handle_t *)&c->peer, on_peer_closed); /* tries the next address */
    return;
  }
  timer_stop(c);
  uv_freeaddrinfo(c->ai);
  c->ai = c->ai_cur = NULL;
  c->tunnel_up = 1;
  uv_tcp_nodelay(&c->peer, 1);
  if (write_copy(c, established, sizeof(established) - 1, 0) != 0)
    return;
  /* bytes the client sent right after its CONNECT head */
  if (c->stash.len && write_copy(c, c->stash.data, c->stash.len, 1) != 0)
    return;
  ns_buf_free(&c->stash);
  tunnel_read_resume(c);
}

static void tunnel_connect(conn *c) {
  int r;
  if (!c->ai_cur) {
    tunnel_fail(c, connect_error(c->last_err), uv_strerror(c->last_err));
    return;
  }
  r = uv_tcp_init(c->fr->d->loop, &c->peer);
  if (r != 0) {
    tunnel_fail(c, NETSTASH_E_CONNECT_FAILED, uv_strerror(r));
    return;
  }
  c->peer.data = c;
  c->peer_inited = 1;
  c->refs++;
  r = uv_tcp_connect(&c->connreq, &c->peer, c->ai_cur->ai_addr, on_peer_connected);
  if (r != 0) {
    c->last_err = r;
    c->ai_cur = c->ai_cur->ai_next;
    uv_close((uv_handle_t *)&c->peer, on_peer_closed); /* tries the next address */
  }
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  conn *c = NS_CONTAINER_OF(req, conn, gai);
  c->gai_pending = 0;
  if (c->closed || c->tunnel_failed) {
    if (res)
      uv_freeaddrinfo(res);
  } else if (status < 0) {
    tunnel_fail(c,
                status == UV_EAI_NONAME || status == UV_EAI_NODATA ? NETSTASH_E_DNS_NOT_FOUND
                                                                   : NETSTASH_E_DNS_FAILED,
                uv_strerror(status));
  } else {
    c->ai = c->ai_cur = res;
    c->last_err = UV_ECONNREFUSED;
    tunnel_connect(c);
  }
  conn_unref(c);
}

static void tunnel_begin(conn *c) {
  const char *target = ns_buf_str(&c->url);
  struct http_parser_url u;
  struct addrinfo hints;
  char host[256], port[8];
  int r;
  http_parser_url_init(&u);
  if (http_parser_parse_url(target, c->url.len, 1, &u) != 0 || !(u.field_set & (1u << UF_HOST)) ||
      !(u.field_set & (1u << UF_PORT)) || u.field_data[UF_HOST].len >= sizeof(host) ||
      u.port == 0) {
    respond_text(c, 400, NULL, 1, "CONNECT needs host:port, not \"%.200s\"", target);
    return;
  }
  memcpy(host, target + u.field_data[UF_HOST].off, u.field_data[UF_HOST].len);
  host[u.field_data[UF_HOST].len] = 0;
  snprintf(port, sizeof(port), "%u", (unsigned)u.port);
  c->state = ST_TUNNEL;
  c->keep_alive = 0;
  set_reading(c, RD_OFF); /* until the tunnel is up; early bytes wait in the stash */
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_ADDRCONFIG;
  r = uv_getaddrinfo(c->fr->d->loop, &c->gai, on_resolved, host, port, &hints);
  if (r != 0) {
    tunnel_fail(c, NETSTASH_E_DNS_FAILED, uv_strerror(r));
    return;
  }
  c->gai_pending = 1;
  c->refs++;
  timer_set(c, CONNECT_MS);
  netd_log(c->d, NETSTASH_LOG_DEBUG, "proxy: CONNECT %s:%s", host, port);
}

/* ------------------------------------------------------------ listener */

static void close_free(uv_handle_t *h) {
  free(h);
}

static void on_accept(uv_stream_t *server, int status) {
  netd_front *fr = server->data;
  conn *c;
  if (status < 0) {
    netd_log(fr->d, NETSTASH_LOG_WARN, "%s: accept: %s", fr->name, uv_strerror(status));
    return;
  }
  c = calloc(1, sizeof(*c));
  if (!c || uv_tcp_init(fr->d->loop, &c->tcp) != 0) {
    /* libuv stops watching a listener whose connection is not accepted:
     * take it off the queue and drop it */
    uv_tcp_t *sink = malloc(sizeof(*sink));
    free(c);
    if (sink && uv_tcp_init(fr->d->loop, sink) == 0) {
      uv_accept(server, (uv_stream_t *)sink);
      uv_close((uv_handle_t *)sink, close_free);
    } else {
      free(sink);
    }
    return;
  }
  c->fr = fr;
  c->d = fr->d;
  c->tcp.data = c;
  c->refs = 2; /* tcp + timer */
  uv_timer_init(fr->d->loop, &c->timer);
  c->timer.data = c;
  ns_list_insert_tail(&fr->conns, &c->node);
  fr->nconns++;
  ns_buf_init(&c->stash, M(), STASH_MAX + READ_BUF + TUNNEL_CHUNK);
  ns_buf_init(&c->url, M(), HEAD_MAX);
  ns_buf_init(&c->hname, M(), HEAD_MAX);
  ns_buf_init(&c->hvalue, M(), HEAD_MAX);
  ns_buf_init(&c->body, M(), BODY_MAX);
  ns_buf_init(&c->hbuf, M(), 4u * 1024u * 1024u);
  ns_headers_init(&c->hdrs, M());
  c->clen = -1;
  http_parser_init(&c->parser, HTTP_REQUEST);
  c->parser.data = c;
  if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
    conn_close(c);
    return;
  }
  atomic_fetch_add_explicit(&fr->d->metrics.front_conns, 1, memory_order_relaxed);
  if (fr->stopping || fr->nconns > MAX_CONNS) {
    if (!fr->stopping)
      netd_log(fr->d, NETSTASH_LOG_WARN, "%s: more than %u connections: refusing", fr->name,
               MAX_CONNS);
    conn_close(c);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  c->state = ST_IDLE;
  idle_touch(c);
  drive(c);
}

static int is_loopback(const struct sockaddr *sa) {
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)(const void *)sa;
    return (ntohl(a->sin_addr.s_addr) >> 24) == 127;
  }
  if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)(const void *)sa;
    return IN6_IS_ADDR_LOOPBACK(&a->sin6_addr) ||
           (IN6_IS_ADDR_V4MAPPED(&a->sin6_addr) && a->sin6_addr.s6_addr[12] == 127);
  }
  return 0;
}

static const char *kind_name(netd_front_kind kind) {
  switch (kind) {
  case NETD_FRONT_PROXY:
    return "proxy";
  case NETD_FRONT_GATEWAY:
    return "gateway";
  case NETD_FRONT_METRICS:
    return "metrics";
  default:
    return NULL;
  }
}

static void on_listener_closed(uv_handle_t *h) {
  netd_front *fr = h->data;
  fr->listener_open = 0;
  front_maybe_done(fr);
}

static void on_check_closed(uv_handle_t *h) {
  netd_front *fr = h->data;
  fr->check_open = 0;
  front_maybe_done(fr);
}

/* The gateway's origin: an absolute http(s) URL without query or fragment,
 * kept without its trailing '/' (request targets start with one). */
static int check_upstream(netd_front *fr, const char *upstream, char *err, size_t errlen) {
  netstash_request *probe = NULL;
  size_t n;
  if (!upstream || !*upstream) {
    snprintf(err, errlen, "gateway: no upstream configured (--upstream URL)");
    return -1;
  }
  if (netstash_request_new(&probe, upstream) != NETSTASH_OK || strpbrk(upstream, "?#")) {
    netstash_request_del(probe);
    snprintf(err, errlen, "gateway: upstream \"%s\" is not an http(s) URL without query", upstream);
    return -1;
  }
  netstash_request_del(probe);
  fr->upstream = strdup(upstream);
  if (!fr->upstream) {
    snprintf(err, errlen, "gateway: out of memory");
    return -1;
  }
  n = strlen(fr->upstream);
  while (n && fr->upstream[n - 1] == '/')
    fr->upstream[--n] = 0;
  return 0;
}

int netd_front_start(netd *d, netd_front_kind kind, const char *host, int port, netd_front **out,
                     char *err, size_t errlen) {
  netd_front *fr = NULL;
  struct sockaddr_storage ss;
  struct sockaddr *sa = (struct sockaddr *)&ss;
  char hostbuf[INET6_ADDRSTRLEN + 2];
  const char *name = kind_name(kind);
  size_t hl;
  int r, rc = -1, namelen = (int)sizeof(ss);

  *out = NULL;
  if (!name) {
    snprintf(err, errlen, "unknown front kind %d", (int)kind);
    goto done;
  }
  if (!host || !*host || strcmp(host, "localhost") == 0)
    host = "127.0.0.1";
  hl = strlen(host);
  if (host[0] == '[' && hl > 2 && host[hl - 1] == ']' && hl - 2 < sizeof(hostbuf)) {
    memcpy(hostbuf, host + 1, hl - 2);
    hostbuf[hl - 2] = 0;
    host = hostbuf;
  }
  if (port < 0 || port > 65535) {
    snprintf(err, errlen, "%s: port %d out of range", name, port);
    goto done;
  }
  memset(&ss, 0, sizeof(ss));
  if (uv_ip4_addr(host, port, (struct sockaddr_in *)(void *)&ss) != 0 &&
      uv_ip6_addr(host, port, (struct sockaddr_in6 *)(void *)&ss) != 0) {
    snprintf(err, errlen, "%s: \"%s\" is not an IP address (use 127.0.0.1 or ::1)", name, host);
    goto done;
  }
  if (kind != NETD_FRONT_METRICS && !is_loopback(sa) && !d->cfg.proxy_allow_remote) {
    snprintf(err, errlen,
             "%s on %s: not a loopback address; an open %s would serve the whole network "
             "with this profile's cookies and cache (set \"proxy_allow_remote\": true to allow it)",
             name, host, name);
    goto done;
  }
  fr = calloc(1, sizeof(*fr));
  if (!fr) {
    snprintf(err, errlen, "%s: out of memory", name);
    goto done;
  }
  fr->d = d;
  fr->kind = kind;
  fr->name = name;
  ns_list_init(&fr->conns);
  ns_list_init(&fr->heads);
  if (uv_check_init(d->loop, &fr->head_check) != 0) {
    snprintf(err, errlen, "%s: uv_check_init failed", name);
    goto done;
  }
  fr->head_check.data = fr;
  fr->check_open = 1;
  if (kind == NETD_FRONT_GATEWAY && check_upstream(fr, d->cfg.upstream, err, errlen) != 0)
    goto done;
  if (kind == NETD_FRONT_GATEWAY && !d->cfg.no_fast_hits) {
    fr->https = strncasecmp(fr->upstream, "https://", 8) == 0;
    if (netstash_preload_hit_new(d->ctx, &fr->hit) != NETSTASH_OK)
      fr->hit = NULL; /* every request a job */
    else              /* the hot entries, decoded once while the store does not change */
      (void)ns_preload_hit_keep(fr->hit, NETD_HIT_ENTRIES);
    fr->hot = fr->hit ? netd_hot_new(d->cfg.hot_body_bytes, &d->metrics) : NULL;
  }
  r = uv_tcp_init(d->loop, &fr->listener);
  if (r != 0) {
    snprintf(err, errlen, "%s: %s", name, uv_strerror(r));
    goto done;
  }
  fr->listener.data = fr;
  fr->listener_open = 1;
  r = uv_tcp_bind(&fr->listener, sa, 0);
  if (r == 0)
    r = uv_listen((uv_stream_t *)&fr->listener, 511, on_accept);
  if (r != 0) {
    snprintf(err, errlen, "%s: cannot listen on %s port %d: %s", name, host, port, uv_strerror(r));
    goto done;
  }
  if (uv_tcp_getsockname(&fr->listener, sa, &namelen) == 0)
    port = sa->sa_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)(void *)sa)->sin6_port)
                                     : ntohs(((struct sockaddr_in *)(void *)sa)->sin_port);
  netd_log(d, NETSTASH_LOG_INFO, "%s front on %s%s%s:%d%s%s", name, strchr(host, ':') ? "[" : "",
           host, strchr(host, ':') ? "]" : "", port, kind == NETD_FRONT_GATEWAY ? " -> " : "",
           kind == NETD_FRONT_GATEWAY ? fr->upstream : "");
  *out = fr;
  rc = 0;
done:
  if (rc != 0 && fr) {
    if (fr->check_open)
      uv_close((uv_handle_t *)&fr->head_check, on_check_closed);
    if (fr->listener_open || fr->check_open) {
      fr->stopping = 1; /* freed once the handles are closed, with no done callback */
      if (fr->listener_open)
        uv_close((uv_handle_t *)&fr->listener, on_listener_closed);
    } else {
      front_free(fr);
    }
  }
  return rc;
}

void netd_front_stop(netd_front *fr, void (*done)(void *), void *ud) {
  ns_list *pos, *tmp;
  if (!fr) {
    if (done)
      done(ud);
    return;
  }
  fr->stopping = 1;
  fr->done = done;
  fr->done_ud = ud;
  if (fr->listener_open && !uv_is_closing((uv_handle_t *)&fr->listener))
    uv_close((uv_handle_t *)&fr->listener, on_listener_closed);
  if (fr->check_open && !uv_is_closing((uv_handle_t *)&fr->head_check))
    uv_close((uv_handle_t *)&fr->head_check, on_check_closed);
  ns_list_foreach_safe(pos, tmp, &fr->conns) {
    conn_close(ns_list_entry(pos, conn, node));
  }
  front_maybe_done(fr);
}
