/*
 * remote.c — remote mode: the context's hops go to netd over its unix socket,
 * HTTP/2 with prior knowledge (nghttp2, client side), all multiplexed on one
 * connection driven by the context's loop. The response path is the same as
 * for every other hop (transport/hop.h); netd's x-netstash-* answer fields
 * are read there.
 *
 * Why not libcurl: libcurl 7.88 cannot reuse a prior-knowledge HTTP/2
 * connection (curl issue 10634, fixed in 8.0), and a connection per request
 * stalled bodies beyond one frame by up to 200 ms. nghttp2 is already linked
 * for netd's server side; the client is ~400 lines.
 *
 * Decisions:
 * - One connection, opened on the first hop and again after netd went away
 *   (restart): nothing to configure, nothing to reconnect by hand.
 * - Streams above netd's GOAWAY last-stream-id were not processed: they are
 *   sent again on a new connection. Streams netd was processing when the
 *   connection died fail (E_TRUNCATED after the head, E_RECV before it) —
 *   never a cut body taken as complete.
 * - Pull mode (ns_transport_pause): data is not consumed while paused, so the
 *   stream's window (256 KiB) closes and netd stops sending.
 * - Completions run after nghttp2_session_mem_recv returned (reap), like h3.c.
 */
#include "ns_setup.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <nghttp2/nghttp2.h>
#include <uv.h>

#include "core/log.h"
#include "transport/fetch.h"
#include "transport/hop.h"
#include "transport/remote.h"

#define MOD "remote"
#define STREAM_WINDOW (256u << 10)

enum { R_IDLE, R_CONNECTING, R_READY, R_CLOSING };

typedef struct r_conn r_conn;

struct ns_remote {
  netstash_ctx *ctx;
  r_conn *conn; /* the current connection, NULL when none */
  ns_list waiting; /* r_stream: no connection yet */
  int shutting_down;
  ns_hop_fields fields;
};

struct r_conn {
  ns_remote *r;
  uv_pipe_t pipe;
  uv_connect_t creq;
  nghttp2_session *ng;
  int state;
  ns_list streams; /* submitted */
  int busy;
  uint64_t t_start;
  char rbuf[65536];
};

typedef struct r_stream {
  ns_list node;
  ns_remote *r;
  r_conn *c;
  netstash_fetch *f;
  netstash_request *req; /* body memory, kept until the stream is freed */
  int32_t id;
  size_t body_off;
  int got_head, eos, done, paused, retried, new_conn;
  size_t unconsumed;
  netstash_error err;
  uint64_t t_first;
} r_stream;

static void conn_flush(r_conn *c);
static r_conn *conn_get(ns_remote *r);
static void conn_kill(r_conn *c, netstash_error err, const char *why);
static int submit(r_conn *c, r_stream *s);
static void reap(r_conn *c);

static void stream_free(r_stream *s) {
  ns_list_remove(&s->node);
  if (s->req)
    netstash_request_del(s->req);
  ns_free(&s->r->ctx->mem, s);
}

static void finish(r_stream *s, netstash_error err) {
  if (!s->done) {
    s->done = 1;
    s->err = err;
  }
}

/* ------------------------------------------------------------ nghttp2 callbacks */

static r_stream *stream_of(r_conn *c, int32_t id) {
  return nghttp2_session_get_stream_user_data(c->ng, id);
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *fr, const uint8_t *name,
                     size_t nlen, const uint8_t *value, size_t vlen, uint8_t flags, void *ud) {
  r_stream *s = stream_of(ud, fr->hd.stream_id);
  (void)ng;
  (void)flags;
  if (!s || !s->f || s->done || fr->hd.type != NGHTTP2_HEADERS)
    return 0;
  if (nlen == 7 && !memcmp(name, ":status", 7)) {
    int code = 0;
    if (vlen == 3)
      code = (value[0] - '0') * 100 + (value[1] - '0') * 10 + (value[2] - '0');
    if (code < 100 || code > 999) /* netd relays 600-999 as it got them */
      return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    ns_hop_status(s->f, code);
    s->f->proto = NETSTASH_HTTP_2;
    return 0;
  }
  if (nlen && name[0] == ':')
    return 0;
  if (ns_hop_header(s->f, (const char *)name, nlen, (const char *)value, vlen) != NETSTASH_OK) {
    ns_fetch_detail(s->f, "response header section too large");
    finish(s, NETSTASH_E_TOO_LARGE);
  }
  return 0;
}

static int on_frame_recv(nghttp2_session *ng, const nghttp2_frame *fr, void *ud) {
  r_conn *c = ud;
  r_stream *s;
  (void)ng;
  if (fr->hd.type == NGHTTP2_GOAWAY) {
    /* netd stops: streams it did not take are sent again elsewhere */
    ns_list *pos, *tmp;
    ns_list_foreach_safe(pos, tmp, &c->streams) {
      r_stream *st = ns_list_entry(pos, r_stream, node);
      if (st->id > fr->goaway.last_stream_id && st->f && !st->done && !st->retried) {
        st->retried = 1;
        nghttp2_session_set_stream_user_data(c->ng, st->id, NULL);
        st->id = -1;
        st->c = NULL;
        ns_list_remove(&st->node);
        ns_list_insert_tail(&c->r->waiting, &st->node);
      }
    }
    c->state = R_CLOSING;
    if (c->r->conn == c)
      c->r->conn = NULL;
    return 0;
  }
  if (fr->hd.type != NGHTTP2_HEADERS && fr->hd.type != NGHTTP2_DATA)
    return 0;
  s = stream_of(c, fr->hd.stream_id);
  if (!s || !s->f || s->done)
    return 0;
  if (fr->hd.type == NGHTTP2_HEADERS && fr->headers.cat == NGHTTP2_HCAT_RESPONSE &&
      s->f->status >= 200 && !s->got_head) {
    s->got_head = 1;
    if (!s->t_first)
      s->t_first = ns_now_us();
    if (!ns_hop_head_end(s->f))
      finish(s, s->f->fail != NETSTASH_OK ? s->f->fail : NETSTASH_E_CALLBACK);
  }
  if (fr->hd.flags & NGHTTP2_FLAG_END_STREAM)
    s->eos = 1;
  return 0;
}

static int on_data(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data,
                   size_t len, void *ud) {
  r_conn *c = ud;
  r_stream *s = stream_of(c, id);
  (void)flags;
  if (!s || !s->f || s->done) {
    nghttp2_session_consume(ng, id, len);
    return 0;
  }
  if (!ns_hop_body(s->f, data, len))
    finish(s, s->f->fail != NETSTASH_OK ? s->f->fail : NETSTASH_E_CALLBACK);
  if (s->paused)
    s->unconsumed += len;
  else
    nghttp2_session_consume(ng, id, len);
  return 0;
}

static int on_close(nghttp2_session *ng, int32_t id, uint32_t code, void *ud) {
  r_stream *s = stream_of(ud, id);
  (void)ng;
  if (!s)
    return 0;
  nghttp2_session_set_stream_user_data(((r_conn *)ud)->ng, id, NULL);
  s->id = -1;
  if (!s->f) {
    stream_free(s);
    return 0;
  }
  if (code == NGHTTP2_NO_ERROR && s->eos) {
    finish(s, NETSTASH_OK);
  } else if (!s->done) {
    ns_fetch_detail(s->f, "netd reset the stream (HTTP/2 error %u)", (unsigned)code);
    finish(s, s->got_head ? NETSTASH_E_TRUNCATED : NETSTASH_E_RECV);
  }
  return 0;
}

static ssize_t read_body(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t len,
                         uint32_t *flags, nghttp2_data_source *src, void *ud) {
  r_stream *s = src->ptr;
  const netstash_request *req = s->req;
  (void)ng;
  (void)id;
  (void)ud;
  if (!s->f) {
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    return 0;
  }
  if (req->body_cb) {
    size_t n = 0;
    int eof = 0;
    netstash_error rv = req->body_cb(buf, len, &n, &eof, req->body_ud);
    if (rv != NETSTASH_OK || n > len) {
      ns_fetch_detail(s->f, "request body reader failed: %s", netstash_strerror(rv));
      finish(s, NETSTASH_E_CALLBACK);
      return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    if (eof)
      *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
  }
  {
    size_t n = req->body_len - s->body_off;
    if (n > len)
      n = len;
    if (n)
      memcpy(buf, req->body + s->body_off, n);
    s->body_off += n;
    if (s->body_off == req->body_len)
      *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
  }
}

/* ------------------------------------------------------------ I/O */

typedef struct wreq {
  uv_write_t w;
  ns_remote *r;
  size_t len;
  uint8_t data[];
} wreq;

static void on_written(uv_write_t *w, int status) {
  (void)status; /* a failed write shows as a read error */
  ns_free(&((wreq *)w)->r->ctx->mem, w);
}

static void conn_flush(r_conn *c) {
  ns_remote *r = c->r;
  wreq *acc = NULL;
  size_t len = 0, cap = 0;
  if (c->state == R_IDLE || c->state == R_CONNECTING || c->busy)
    return;
  for (;;) {
    const uint8_t *data;
    ssize_t n = nghttp2_session_mem_send(c->ng, &data);
    if (n < 0) {
      ns_free(&r->ctx->mem, acc);
      conn_kill(c, NETSTASH_E_PROTOCOL, nghttp2_strerror((int)n));
      return;
    }
    if (n == 0)
      break;
    if (len + (size_t)n > cap) {
      size_t nc = cap ? cap * 2 : 16384;
      wreq *na;
      while (nc < len + (size_t)n)
        nc *= 2;
      na = ns_realloc(&r->ctx->mem, acc, sizeof(wreq) + nc);
      if (!na) {
        ns_free(&r->ctx->mem, acc);
        conn_kill(c, NETSTASH_E_NOMEM, "out of memory");
        return;
      }
      acc = na;
      cap = nc;
    }
    memcpy(acc->data + len, data, (size_t)n);
    len += (size_t)n;
  }
  if (len) {
    uv_buf_t b = uv_buf_init((char *)acc->data, (unsigned)len);
    acc->r = r;
    acc->len = len;
    if (uv_write(&acc->w, (uv_stream_t *)&c->pipe, &b, 1, on_written) != 0) {
      ns_free(&r->ctx->mem, acc);
      conn_kill(c, NETSTASH_E_SEND, "write to netd failed");
    }
  } else {
    ns_free(&r->ctx->mem, acc);
  }
}

static void conn_closed(uv_handle_t *h) {
  r_conn *c = h->data;
  ns_remote *r = c->r;
  if (c->ng)
    nghttp2_session_del(c->ng);
  ns_free(&r->ctx->mem, c);
}

/* The connection is gone: its streams fail (or wait for the next one). */
static void conn_kill(r_conn *c, netstash_error err, const char *why) {
  ns_list *pos, *tmp;
  ns_remote *r = c->r;
  if (c->state == R_IDLE)
    return;
  ns_list_foreach_safe(pos, tmp, &c->streams) {
    r_stream *s = ns_list_entry(pos, r_stream, node);
    if (!s->f) {
      stream_free(s);
      continue;
    }
    if (!s->done) {
      ns_fetch_detail(s->f, "netd at %s: %s", r->ctx->cfg.remote_socket, why);
      finish(s, s->got_head ? NETSTASH_E_TRUNCATED : err);
    }
  }
  c->state = R_IDLE;
  if (r->conn == c)
    r->conn = NULL;
  reap(c);
  if (!uv_is_closing((uv_handle_t *)&c->pipe))
    uv_close((uv_handle_t *)&c->pipe, conn_closed);
  /* hops netd never took (GOAWAY) go on a new connection */
  if (!r->shutting_down && !ns_list_empty(&r->waiting))
    conn_get(r);
}

static void on_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b) {
  r_conn *c = h->data;
  (void)sz;
  *b = uv_buf_init(c->rbuf, sizeof(c->rbuf));
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b) {
  r_conn *c = st->data;
  ssize_t rv;
  if (n < 0) {
    conn_kill(c, NETSTASH_E_RECV, n == UV_EOF ? "connection closed" : uv_strerror((int)n));
    return;
  }
  if (n == 0)
    return;
  c->busy = 1;
  rv = nghttp2_session_mem_recv(c->ng, (const uint8_t *)b->base, (size_t)n);
  c->busy = 0;
  if (rv < 0) {
    conn_kill(c, NETSTASH_E_PROTOCOL, nghttp2_strerror((int)rv));
    return;
  }
  reap(c);
  conn_flush(c);
  if (c->state == R_CLOSING && ns_list_empty(&c->streams))
    conn_kill(c, NETSTASH_E_RECV, "closed after GOAWAY");
}

/* Timings of a hop answered through netd. */
static void timings(r_stream *s) {
  netstash_fetch *f = s->f;
  f->timing[NETSTASH_TIMING_DNS] = 0;
  f->timing[NETSTASH_TIMING_CONNECT] = 0;
  f->timing[NETSTASH_TIMING_TLS] = 0;
  f->timing[NETSTASH_TIMING_TTFB] = s->t_first ? s->t_first - f->t_start : 0;
  f->timing[NETSTASH_TIMING_QUEUED] = f->t_added > f->t_start ? f->t_added - f->t_start : 0;
  if (s->new_conn)
    f->new_conns++;
}

/* Completions, outside nghttp2's callbacks; the walk starts over after each
 * (a completion may start or detach other streams). */
static void reap(r_conn *c) {
  ns_remote *r = c->r;
  ns_list *lists[2] = {&c->streams, &r->waiting};
again:
  for (int k = 0; k < 2; k++) {
    ns_list *pos, *tmp;
    ns_list_foreach_safe(pos, tmp, lists[k]) {
      r_stream *s = ns_list_entry(pos, r_stream, node);
      netstash_fetch *f = s->f;
      netstash_error err;
      if (!f || !s->done)
        continue;
      err = s->err;
      timings(s);
      f->rs = NULL;
      s->f = NULL;
      if (s->id >= 0 && c->ng && c->state != R_IDLE)
        nghttp2_submit_rst_stream(c->ng, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_CANCEL);
      else
        stream_free(s); /* never sent, or the connection is gone */
      ns_hop_end(f, err);
      goto again;
    }
  }
}

static void on_connect(uv_connect_t *req, int status) {
  r_conn *c = req->data;
  ns_remote *r = c->r;
  nghttp2_session_callbacks *cb;
  nghttp2_option *opt;
  nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
                                 {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW}};
  ns_list *pos, *tmp;
  if (status < 0 || c->state != R_CONNECTING) {
    /* netd is not there: every waiting hop fails */
    char why[200];
    snprintf(why, sizeof(why), "netd is not running on %s (%s)", r->ctx->cfg.remote_socket,
             uv_strerror(status));
    ns_list_foreach_safe(pos, tmp, &r->waiting) {
      r_stream *s = ns_list_entry(pos, r_stream, node);
      if (s->f && !s->done) {
        ns_fetch_detail(s->f, "%s", why);
        finish(s, status == UV_ECONNREFUSED ? NETSTASH_E_CONNECT_REFUSED
                                            : NETSTASH_E_CONNECT_FAILED);
      }
    }
    c->state = R_IDLE;
    if (r->conn == c)
      r->conn = NULL;
    reap(c);
    uv_close((uv_handle_t *)&c->pipe, conn_closed);
    return;
  }
  if (nghttp2_session_callbacks_new(&cb) != 0 || nghttp2_option_new(&opt) != 0) {
    conn_kill(c, NETSTASH_E_NOMEM, "out of memory");
    return;
  }
  nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data);
  nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_close);
  nghttp2_option_set_no_auto_window_update(opt, 1);
  if (nghttp2_session_client_new2(&c->ng, cb, c, opt) != 0) {
    nghttp2_session_callbacks_del(cb);
    nghttp2_option_del(opt);
    conn_kill(c, NETSTASH_E_NOMEM, "out of memory");
    return;
  }
  nghttp2_session_callbacks_del(cb);
  nghttp2_option_del(opt);
  nghttp2_submit_settings(c->ng, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0]));
  nghttp2_session_set_local_window_size(c->ng, NGHTTP2_FLAG_NONE, 0, 64u << 20);
  c->state = R_READY;
  uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
  ns_list_foreach_safe(pos, tmp, &r->waiting) {
    r_stream *s = ns_list_entry(pos, r_stream, node);
    if (s->f && !s->done)
      submit(c, s);
  }
  reap(c);
  conn_flush(c);
}

static r_conn *conn_get(ns_remote *r) {
  r_conn *c = r->conn;
  if (c)
    return c;
  c = ns_calloc(&r->ctx->mem, 1, sizeof(*c));
  if (!c)
    return NULL;
  c->r = r;
  ns_list_init(&c->streams);
  if (uv_pipe_init(&r->ctx->loop, &c->pipe, 0) != 0) {
    ns_free(&r->ctx->mem, c);
    return NULL;
  }
  c->pipe.data = c;
  c->creq.data = c;
  c->state = R_CONNECTING;
  c->t_start = ns_now_us();
  r->conn = c;
  ns_stat_add(r->ctx, NETSTASH_STAT_CONNECTIONS_OPENED, 1);
  uv_pipe_connect(&c->creq, &c->pipe, r->ctx->cfg.remote_socket, on_connect);
  return c;
}

/* Sends s on c; s moves to c's streams. */
static int submit(r_conn *c, r_stream *s) {
  ns_remote *r = c->r;
  netstash_fetch *f = s->f;
  nghttp2_nv nva[NS_HOP_MAX_FIELDS];
  nghttp2_data_provider dp = {.source.ptr = s, .read_callback = read_body};
  const netstash_request *req = f->req;
  int has_body = req->has_body && !f->hop_get &&
                 !(req->method && strcmp(req->method, "HEAD") == 0);
  int32_t id;
  size_t n;
  ns_hop_request_fields(f, f->cur.scheme, 0, &r->fields);
  for (n = 0; n < r->fields.n; n++) {
    nva[n].name = (uint8_t *)(uintptr_t)r->fields.f[n].name;
    nva[n].namelen = r->fields.f[n].nlen;
    nva[n].value = (uint8_t *)(uintptr_t)r->fields.f[n].value;
    nva[n].valuelen = r->fields.f[n].vlen;
    nva[n].flags = NGHTTP2_NV_FLAG_NONE;
  }
  s->body_off = 0;
  id = nghttp2_submit_request(c->ng, NULL, nva, n, has_body ? &dp : NULL, s);
  ns_list_remove(&s->node);
  if (id < 0) {
    ns_list_insert_tail(&r->waiting, &s->node);
    ns_fetch_detail(f, "request to netd: %s", nghttp2_strerror(id));
    finish(s, id == NGHTTP2_ERR_NOMEM ? NETSTASH_E_NOMEM : NETSTASH_E_INVALID_ARGUMENT);
    return -1;
  }
  s->id = id;
  s->c = c;
  ns_list_insert_tail(&c->streams, &s->node);
  return 0;
}

/* ------------------------------------------------------------ API */

netstash_error ns_remote_new(netstash_ctx *ctx, ns_remote **out) {
  ns_remote *r = ns_calloc(&ctx->mem, 1, sizeof(*r));
  *out = NULL;
  if (!r)
    return NETSTASH_E_NOMEM;
  r->ctx = ctx;
  ns_list_init(&r->waiting);
  *out = r;
  return NETSTASH_OK;
}

netstash_error ns_remote_start(ns_remote *r, netstash_fetch *f) {
  r_conn *c;
  r_stream *s;
  if (r->shutting_down)
    return NETSTASH_E_CANCELED;
  s = ns_calloc(&r->ctx->mem, 1, sizeof(*s));
  if (!s)
    return NETSTASH_E_NOMEM;
  s->r = r;
  s->f = f;
  s->id = -1;
  s->req = f->req;
  ns_request_ref(s->req);
  f->rs = s;
  f->t_added = ns_now_us();
  ns_list_insert_tail(&r->waiting, &s->node);
  c = conn_get(r);
  if (!c) {
    f->rs = NULL;
    stream_free(s);
    return NETSTASH_E_NOMEM;
  }
  s->new_conn = c->state == R_CONNECTING;
  if (c->state == R_READY) {
    submit(c, s);
    if (!c->busy) {
      reap(c);
      conn_flush(c);
    }
  }
  return NETSTASH_OK;
}

void ns_remote_detach(netstash_fetch *f) {
  r_stream *s = f->rs;
  r_conn *c;
  if (!s)
    return;
  c = s->c;
  f->rs = NULL;
  s->f = NULL;
  if (c && s->id >= 0 && c->ng && c->state != R_IDLE) {
    nghttp2_submit_rst_stream(c->ng, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_CANCEL);
    if (!c->busy)
      conn_flush(c);
  } else {
    stream_free(s);
  }
}

netstash_error ns_remote_pause(netstash_fetch *f, int pause) {
  r_stream *s = f->rs;
  if (!s)
    return NETSTASH_E_ILLEGAL_STATE;
  s->paused = pause ? 1 : 0;
  if (!pause && s->unconsumed && s->c && s->id >= 0 && s->c->state == R_READY) {
    nghttp2_session_consume(s->c->ng, s->id, s->unconsumed);
    s->unconsumed = 0;
    if (!s->c->busy)
      conn_flush(s->c);
  }
  return NETSTASH_OK;
}

void ns_remote_shutdown(ns_remote *r) {
  if (!r || r->shutting_down)
    return;
  r->shutting_down = 1;
  while (!ns_list_empty(&r->waiting)) {
    r_stream *s = ns_list_entry(r->waiting.next, r_stream, node);
    if (s->f)
      s->f->rs = NULL;
    stream_free(s);
  }
  if (r->conn) {
    r_conn *c = r->conn;
    while (!ns_list_empty(&c->streams)) {
      r_stream *s = ns_list_entry(c->streams.next, r_stream, node);
      if (s->f)
        s->f->rs = NULL;
      stream_free(s);
    }
    r->conn = NULL;
    c->state = R_IDLE;
    if (!uv_is_closing((uv_handle_t *)&c->pipe))
      uv_close((uv_handle_t *)&c->pipe, conn_closed);
  }
}

void ns_remote_del(ns_remote *r) {
  if (r)
    ns_free(&r->ctx->mem, r);
}
