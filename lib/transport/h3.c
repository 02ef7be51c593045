/*
 * h3.c — HTTP/3 client: ngtcp2 0.12 (QUIC), nghttp3 0.8 (HTTP/3, QPACK),
 * ngtcp2_crypto_gnutls (QUIC-TLS: Debian 12's OpenSSL 3.0 has no QUIC API),
 * non-blocking connected UDP sockets polled by the context's libuv loop.
 *
 * Decisions:
 * - A connected UDP socket per QUIC connection: the kernel filters other
 *   peers' datagrams, and an ICMP port-unreachable surfaces as ECONNREFUSED
 *   on the next recv, so "nothing listens on that UDP port" fails the
 *   handshake at once instead of after a timeout.
 * - Library callbacks (ngtcp2, nghttp3) only record what happened on a
 *   stream; completions, fallbacks and redirects run afterwards from
 *   conn_after_io(), outside every library call. A completion may start
 *   new streams (a redirect, the caller's next request) on the same
 *   connection without re-entering ngtcp2.
 * - Flow control sized for warming: 4 MiB per stream and 16 MiB per
 *   connection to start with, auto-tuned by ngtcp2 up to 16/32 MiB.
 * - Congestion control: CUBIC (ngtcp2's default; BBR2 in 0.12 is
 *   experimental).
 * - Session tickets are kept per origin in memory: a later connection to the
 *   same origin resumes TLS (one fewer certificate check, smaller handshake).
 * - 0-RTT (RFC 9001 §4.6, RFC 9114 §10.9): with a ticket, the server's
 *   transport parameters of that connection are kept beside it, and a new
 *   connection sends safe requests (GET, HEAD, OPTIONS without a body) as
 *   early data, before the handshake completes. Everything else waits for
 *   the handshake. A server that refuses the early data makes us resend
 *   those requests after the handshake (ngtcp2_conn_early_data_rejected,
 *   a fresh nghttp3 connection); a race deadline that passes first sends
 *   them over TCP instead (a safe request may be seen twice by the server,
 *   which is what "safe" permits).
 */
#include "ns_setup.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <nghttp3/nghttp3.h>
#include <ngtcp2/ngtcp2.h>
#include <ngtcp2/ngtcp2_crypto.h>
#include <ngtcp2/ngtcp2_crypto_gnutls.h>
#include <uv.h>

#include "core/log.h"
#include "transport/fetch.h"
#include "transport/h3.h"
#include "transport/hop.h"

#define MOD "h3"



#define RX_MSGS 32           /* datagrams per recvmmsg */
#define RX_ROUNDS 4          /* recvmmsg calls per poll event */
/* Receive coalescing for bulk transfers: a wake-up that found at least
 * RX_BULK datagrams waiting stops reading for RX_HOLD_MS and then takes the
 * whole queue at once (up to RX_HOLD_ROUNDS recvmmsg calls) — one loop wake-up
 * per millisecond instead of one per dozen datagrams, the application-level
 * analogue of a NIC's interrupt moderation. The 4 MiB receive buffer holds a
 * millisecond at several GB/s; a flow that slows below RX_BULK per wake-up
 * is read on arrival again. */
#define RX_BULK 24
#define RX_HOLD_MS 1
#define RX_HOLD_ROUNDS 32
#define RX_SLOT 2048         /* receive buffer per datagram = max_udp_payload_size */
#define TX_BUF 1500          /* one datagram */
#define MAX_TICKETS 64       /* origins with a remembered TLS ticket */
#define STREAM_WINDOW (4u << 20)
#define CONN_WINDOW (16u << 20)
#define MAX_STREAM_WINDOW (16u << 20)
#define MAX_CONN_WINDOW (32u << 20)
#define IDLE_TIMEOUT_MS 30000
#define BODY_CHUNK (16u << 10)  /* a streamed request body is read in these */
#define BODY_INFLIGHT 64        /* chunks read and not yet acknowledged, at most */
#define BODY_RETRY_MS 2         /* a reader with nothing to give is asked again */

static const char tls_priority[] =
    "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-128-GCM:+AES-256-GCM:"
    "+CHACHA20-POLY1305:+AES-128-CCM:-GROUP-ALL:+GROUP-X25519:+GROUP-SECP256R1:"
    "+GROUP-SECP384R1:+GROUP-SECP521R1:%DISABLE_TLS13_COMPAT_MODE";

typedef struct ticket {
  char key[300]; /* host:port */
  gnutls_datum_t data;
  ngtcp2_transport_params tp; /* the server's, for 0-RTT (has_tp) */
  int has_tp;
} ticket;

struct ns_h3 {
  netstash_ctx *ctx;
  ns_list conns;
  int shutting_down;
  int cred_state; /* 0 not yet, 1 ok, -1 failed */
  netstash_error cred_err;
  char cred_detail[160];
  gnutls_certificate_credentials_t cred;
  ticket tickets[MAX_TICKETS];
  size_t ntickets, ticket_next;
  ns_h3_stats st;
  ns_hop_fields fields; /* scratch for one request's fields (loop thread) */
  uint8_t rx[RX_MSGS * RX_SLOT];
};

enum { C_CONNECTING, C_READY, C_DEAD };

typedef struct h3_conn {
  ns_h3 *h;
  ns_list node;
  char host[256];
  int port;
  char addr[64];
  int udp_port;
  int fd;
  uv_poll_t poll;
  uv_timer_t timer;
  int poll_ok, timer_ok, handles_open;
  int poll_events;
  int rx_held;          /* bulk receive: reading paused until rx_hold_until */
  uint64_t rx_hold_until; /* now_ns() clock */
  ngtcp2_conn *qc;
  nghttp3_conn *hc;
  gnutls_session_t tls;
  ngtcp2_crypto_conn_ref ref;
  struct sockaddr_storage la, ra;
  socklen_t lalen, ralen;
  int state;
  int busy;       /* inside conn_after_io or a library call */
  int keepalive;  /* PINGs on: a response is awaited */
  int early;      /* resuming with 0-RTT: safe requests go before the handshake */
  int freeing;
  ns_list streams; /* h3_stream.node: waiting and open */
  uint8_t pend[TX_BUF]; /* a datagram the socket refused (EAGAIN) */
  size_t pendlen;
  uint64_t t_start_us, t_ready_us;
  netstash_error err;
  char detail[200];
  ngtcp2_connection_close_error ccerr;
} h3_conn;

/* A piece of a streamed request body: nghttp3 sends from it, and it must
 * stay put until the peer acknowledges it. */
typedef struct body_chunk {
  struct body_chunk *next;
  size_t len;
  uint8_t data[BODY_CHUNK];
} body_chunk;

typedef struct h3_stream {
  ns_list node;
  h3_conn *c;
  netstash_fetch *f;       /* NULL once detached */
  netstash_request *req;   /* kept until the stream is freed: the body */
  int64_t id;              /* -1 until submitted */
  uint64_t race_deadline;  /* µs, 0: no fallback */
  uint64_t deadline;       /* µs, request timeout, 0: none */
  uint64_t t_submit, t_first;
  const uint8_t *body;
  size_t body_len, body_off;
  int has_body;
  /* a body from the request's reader callback (has_body too) */
  int body_reader, body_eof, body_wait;
  body_chunk *bc_head, *bc_tail; /* read, not yet acknowledged */
  size_t bc_n;
  uint64_t bc_acked; /* bytes of bc_head already acknowledged */
  int paused, eos, closed, done, failed, fallback, got_final;
  int new_conn; /* sent on a connection opened for it */
  int early;    /* submitted as 0-RTT early data */
  netstash_error err;
  ns_buf held; /* body received while paused */
} h3_stream;

static void conn_after_io(h3_conn *c);
static void conn_fail(h3_conn *c, netstash_error err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int submit(h3_stream *s);

static uint64_t now_ns(void) { return uv_hrtime(); }

/* ------------------------------------------------------------ credentials */

static netstash_error load_cred(ns_h3 *h) {
  const ns_config *cfg = &h->ctx->cfg;
  int rv;
  if (h->cred_state)
    return h->cred_state > 0 ? NETSTASH_OK : h->cred_err;
  h->cred_state = -1;
  h->cred_err = NETSTASH_E_TLS_CA_FILE;
  if (gnutls_certificate_allocate_credentials(&h->cred) < 0) {
    h->cred = NULL;
    h->cred_err = NETSTASH_E_NOMEM;
    return h->cred_err;
  }
  if (cfg->ca_file || cfg->ca_dir) {
    if (cfg->ca_file) {
      rv = gnutls_certificate_set_x509_trust_file(h->cred, cfg->ca_file, GNUTLS_X509_FMT_PEM);
      if (rv <= 0) {
        snprintf(h->cred_detail, sizeof(h->cred_detail), "CA file %s: %s", cfg->ca_file,
                 rv < 0 ? gnutls_strerror(rv) : "no certificate in it");
        return h->cred_err;
      }
    }
    if (cfg->ca_dir) {
      rv = gnutls_certificate_set_x509_trust_dir(h->cred, cfg->ca_dir, GNUTLS_X509_FMT_PEM);
      if (rv < 0) {
        snprintf(h->cred_detail, sizeof(h->cred_detail), "CA dir %s: %s", cfg->ca_dir,
                 gnutls_strerror(rv));
        return h->cred_err;
      }
    }
  } else if ((rv = gnutls_certificate_set_x509_system_trust(h->cred)) < 0) {
    snprintf(h->cred_detail, sizeof(h->cred_detail), "system CA store: %s", gnutls_strerror(rv));
    return h->cred_err;
  }
  h->cred_state = 1;
  return NETSTASH_OK;
}

/* ------------------------------------------------------------ tickets */

static ticket *ticket_find(ns_h3 *h, const char *key) {
  for (size_t i = 0; i < h->ntickets; i++)
    if (strcmp(h->tickets[i].key, key) == 0)
      return &h->tickets[i];
  return NULL;
}

static void conn_key(const h3_conn *c, char *key, size_t cap) {
  snprintf(key, cap, "%s:%d", c->host, c->port);
}

static int ticket_hook(gnutls_session_t session, unsigned htype, unsigned when,
                       unsigned incoming, const gnutls_datum_t *msg) {
  ngtcp2_crypto_conn_ref *ref = gnutls_session_get_ptr(session);
  h3_conn *c = ref->user_data;
  ns_h3 *h = c->h;
  char key[300];
  ticket *t;
  gnutls_datum_t d;
  (void)htype;
  (void)when;
  (void)incoming;
  (void)msg;
  if (gnutls_session_get_data2(session, &d) != 0)
    return 0;
  conn_key(c, key, sizeof(key));
  t = ticket_find(h, key);
  if (!t) {
    if (h->ntickets < MAX_TICKETS) {
      t = &h->tickets[h->ntickets++];
    } else {
      t = &h->tickets[h->ticket_next];
      h->ticket_next = (h->ticket_next + 1) % MAX_TICKETS;
    }
    snprintf(t->key, sizeof(t->key), "%s", key);
  }
  gnutls_free(t->data.data);
  t->data = d;
  t->has_tp = 0;
  if (c->qc) {
    /* RFC 9000 §7.4.1: a 0-RTT attempt uses the parameters of the
     * connection the ticket came from */
    const ngtcp2_transport_params *p = ngtcp2_conn_get_remote_transport_params(c->qc);
    if (p) {
      t->tp = *p;
      t->tp.version_info_present = 0;
      t->tp.version_info.other_versions = NULL; /* points into that connection */
      t->tp.version_info.other_versionslen = 0;
      t->has_tp = 1;
    }
  }
  return 0;
}

/* ------------------------------------------------------------ streams */

static h3_stream *stream_of(netstash_fetch *f) { return f->h3s; }

static void body_chunks_free(h3_stream *s) {
  while (s->bc_head) {
    body_chunk *b = s->bc_head;
    s->bc_head = b->next;
    ns_free(&s->c->h->ctx->mem, b);
  }
  s->bc_tail = NULL;
  s->bc_n = 0;
  s->bc_acked = 0;
}

static void stream_free(h3_stream *s) {
  h3_conn *c = s->c;
  body_chunks_free(s);
  ns_list_remove(&s->node);
  ns_buf_free(&s->held);
  if (s->req)
    netstash_request_del(s->req);
  ns_free(&c->h->ctx->mem, s);
}

static void stream_consume(h3_conn *c, int64_t id, size_t n) {
  if (!n || c->state == C_DEAD)
    return;
  ngtcp2_conn_extend_max_stream_offset(c->qc, id, n);
  ngtcp2_conn_extend_max_offset(c->qc, n);
}

/* Timings of a hop sent over h3. */
static void stream_timings(h3_stream *s) {
  netstash_fetch *f = s->f;
  h3_conn *c = s->c;
  uint64_t hs = 0;
  if (s->new_conn && c->t_ready_us > c->t_start_us)
    hs = c->t_ready_us - c->t_start_us; /* this hop waited for the handshake */
  f->timing[NETSTASH_TIMING_DNS] = f->dns_us;
  f->timing[NETSTASH_TIMING_CONNECT] = 0; /* QUIC has no separate connect */
  f->timing[NETSTASH_TIMING_TLS] = hs;
  f->timing[NETSTASH_TIMING_TTFB] = s->t_first ? s->t_first - f->t_start : 0;
  f->timing[NETSTASH_TIMING_QUEUED] =
      f->t_added - f->t_start > f->dns_us ? f->t_added - f->t_start - f->dns_us : 0;
  if (hs)
    f->new_conns++;
}

static void capture_tls(h3_stream *s) {
  netstash_fetch *f = s->f;
  gnutls_session_t tls = s->c->tls;
  f->proto = NETSTASH_HTTP_3;
  snprintf(f->tls_version, sizeof(f->tls_version), "TLSv1.3");
  snprintf(f->tls_cipher, sizeof(f->tls_cipher), "%s",
           gnutls_cipher_get_name(gnutls_cipher_get(tls)));
}

/* Runs the outcome of finished streams, outside every library call. A
 * completion or fallback runs the transport (and the caller's callbacks),
 * which may start, detach or free other streams of this connection: the walk
 * starts over after each one. */
static int reap(h3_conn *c) {
  ns_list *pos, *tmp;
  int did = 0;
again:
  ns_list_foreach_safe(pos, tmp, &c->streams) {
    h3_stream *s = ns_list_entry(pos, h3_stream, node);
    netstash_fetch *f = s->f;
    netstash_error err;
    if (!f) {
      if (s->closed || s->id < 0 || c->state == C_DEAD)
        stream_free(s);
      continue;
    }
    if (s->fallback) {
      int why = s->fallback;
      f->h3s = NULL;
      s->f = NULL;
      if (s->id >= 0 && !s->closed && c->state != C_DEAD)
        ngtcp2_conn_shutdown_stream(c->qc, s->id, NGHTTP3_H3_REQUEST_CANCELLED); /* freed once closed */
      else
        stream_free(s);
      ns_hop_h3_fallback(f, why);
      did = 1;
      goto again;
    }
    if (!s->done)
      continue;
    err = s->err;
    stream_timings(s);
    f->h3s = NULL;
    s->f = NULL;
    if (!s->closed && s->id >= 0 && c->state != C_DEAD)
      ngtcp2_conn_shutdown_stream(c->qc, s->id, NGHTTP3_H3_REQUEST_CANCELLED);
    else
      stream_free(s);
    ns_hop_end(f, err);
    did = 1;
    goto again;
  }
  return did;
}

static void stream_finish(h3_stream *s, netstash_error err) {
  if (s->done)
    return;
  s->done = 1;
  s->err = err;
}

/* ------------------------------------------------------------ nghttp3 callbacks */

static int h_recv_data(nghttp3_conn *hc, int64_t id, const uint8_t *data, size_t len, void *ud,
                       void *sud) {
  h3_conn *c = ud;
  h3_stream *s = sud;
  (void)hc;
  if (!s || !s->f || s->failed || s->done) {
    stream_consume(c, id, len);
    return 0;
  }
  if (!s->t_first)
    s->t_first = ns_now_us();
  if (s->paused || s->held.len) {
    if (ns_buf_append(&s->held, data, len) != NETSTASH_OK) {
      s->failed = 1;
      stream_finish(s, NETSTASH_E_NOMEM);
      stream_consume(c, id, len);
    }
    return 0; /* consumed when delivered */
  }
  if (!ns_hop_body(s->f, data, len)) {
    s->failed = 1;
    stream_finish(s, s->f->fail != NETSTASH_OK ? s->f->fail : NETSTASH_E_CALLBACK);
  }
  stream_consume(c, id, len);
  return 0;
}

static int h_deferred_consume(nghttp3_conn *hc, int64_t id, size_t consumed, void *ud,
                              void *sud) {
  (void)hc;
  (void)sud;
  stream_consume(ud, id, consumed);
  return 0;
}

static int h_begin_headers(nghttp3_conn *hc, int64_t id, void *ud, void *sud) {
  h3_stream *s = sud;
  (void)hc;
  (void)id;
  (void)ud;
  if (s && !s->t_first)
    s->t_first = ns_now_us();
  return 0;
}

static int h_recv_header(nghttp3_conn *hc, int64_t id, int32_t token, nghttp3_rcbuf *name,
                         nghttp3_rcbuf *value, uint8_t flags, void *ud, void *sud) {
  h3_stream *s = sud;
  nghttp3_vec n = nghttp3_rcbuf_get_buf(name), v = nghttp3_rcbuf_get_buf(value);
  (void)hc;
  (void)id;
  (void)flags;
  (void)ud;
  if (!s || !s->f || s->failed || s->done)
    return 0;
  if (token == NGHTTP3_QPACK_TOKEN__STATUS) {
    int code = 0; /* 600-999 as over HTTP/1.1 (RFC 9110 §15: a 5xx) */
    if (v.len == 3 && v.base[0] >= '1' && v.base[0] <= '9' && v.base[1] >= '0' &&
        v.base[1] <= '9' && v.base[2] >= '0' && v.base[2] <= '9')
      code = (v.base[0] - '0') * 100 + (v.base[1] - '0') * 10 + (v.base[2] - '0');
    if (!code) {
      s->failed = 1;
      ns_fetch_detail(s->f, "malformed :status over HTTP/3");
      stream_finish(s, NETSTASH_E_PROTOCOL);
      return 0;
    }
    if (code >= 200)
      s->got_final = 1;
    ns_hop_status(s->f, code);
    capture_tls(s);
    return 0;
  }
  if (n.len && n.base[0] == ':')
    return 0;
  if (ns_hop_header(s->f, (const char *)n.base, n.len, (const char *)v.base, v.len) !=
      NETSTASH_OK) {
    s->failed = 1;
    ns_fetch_detail(s->f, "response header section too large");
    stream_finish(s, NETSTASH_E_TOO_LARGE);
  }
  return 0;
}

static int h_end_headers(nghttp3_conn *hc, int64_t id, int fin, void *ud, void *sud) {
  h3_stream *s = sud;
  (void)hc;
  (void)id;
  (void)fin;
  (void)ud;
  if (!s || !s->f || s->failed || s->done)
    return 0;
  if (!ns_hop_head_end(s->f)) {
    s->failed = 1;
    stream_finish(s, s->f->fail != NETSTASH_OK ? s->f->fail : NETSTASH_E_CALLBACK);
  }
  return 0;
}

static int h_end_stream(nghttp3_conn *hc, int64_t id, void *ud, void *sud) {
  h3_stream *s = sud;
  (void)hc;
  (void)id;
  (void)ud;
  if (s)
    s->eos = 1;
  return 0;
}

static int h_stream_close(nghttp3_conn *hc, int64_t id, uint64_t app_error, void *ud,
                          void *sud) {
  h3_stream *s = sud;
  (void)hc;
  (void)id;
  (void)ud;
  if (!s)
    return 0;
  s->closed = 1;
  if (s->f && !s->done) {
    if (s->eos && !s->held.len) {
      stream_finish(s, NETSTASH_OK);
    } else if (s->eos) {
      /* complete, but the caller paused: ends when the held bytes are out */
    } else {
      ns_fetch_detail(s->f, "HTTP/3 stream closed by the server (error 0x%llx)",
                      (unsigned long long)app_error);
      stream_finish(s, s->got_final ? NETSTASH_E_TRUNCATED : NETSTASH_E_PROTOCOL);
    }
  }
  return 0;
}

static int h_reset_stream(nghttp3_conn *hc, int64_t id, uint64_t app_error, void *ud,
                          void *sud) {
  h3_conn *c = ud;
  h3_stream *s = sud;
  (void)hc;
  if (s && s->f && !s->done) {
    ns_fetch_detail(s->f, "HTTP/3 stream reset by the server (error 0x%llx)",
                    (unsigned long long)app_error);
    stream_finish(s, s->got_final ? NETSTASH_E_TRUNCATED : NETSTASH_E_PROTOCOL);
  }
  ngtcp2_conn_shutdown_stream_write(c->qc, id, app_error);
  return 0;
}

static int h_stop_sending(nghttp3_conn *hc, int64_t id, uint64_t app_error, void *ud,
                          void *sud) {
  h3_conn *c = ud;
  (void)hc;
  (void)sud;
  ngtcp2_conn_shutdown_stream_read(c->qc, id, app_error);
  return 0;
}

static nghttp3_ssize read_body(nghttp3_conn *hc, int64_t id, nghttp3_vec *vec, size_t veccnt,
                               uint32_t *pflags, void *ud, void *sud) {
  h3_stream *s = sud;
  size_t n;
  (void)hc;
  (void)id;
  (void)ud;
  if (!veccnt)
    return 0;
  if (s && s->f && s->body_reader && !s->body_eof) {
    /* the request's reader, one chunk at a time, kept until acknowledged */
    const netstash_request *req = s->req;
    body_chunk *b;
    size_t got = 0;
    int eof = 0;
    netstash_error rv;
    if (s->bc_n >= BODY_INFLIGHT)
      return NGHTTP3_ERR_WOULDBLOCK; /* resumed by h_acked */
    b = ns_malloc(&s->c->h->ctx->mem, sizeof(*b));
    if (!b) {
      stream_finish(s, NETSTASH_E_NOMEM);
      return NGHTTP3_ERR_CALLBACK_FAILURE;
    }
    rv = req->body_cb(b->data, sizeof(b->data), &got, &eof, req->body_ud);
    if (rv != NETSTASH_OK || got > sizeof(b->data)) {
      ns_free(&s->c->h->ctx->mem, b);
      ns_fetch_detail(s->f, "request body reader failed: %s", netstash_strerror(rv));
      stream_finish(s, NETSTASH_E_CALLBACK);
      return NGHTTP3_ERR_CALLBACK_FAILURE;
    }
    if (!got) {
      ns_free(&s->c->h->ctx->mem, b);
      if (eof) {
        s->body_eof = 1;
        *pflags |= NGHTTP3_DATA_FLAG_EOF;
        return 0;
      }
      s->body_wait = 1; /* nothing now: on_timer resumes the stream */
      return NGHTTP3_ERR_WOULDBLOCK;
    }
    b->len = got;
    b->next = NULL;
    if (s->bc_tail)
      s->bc_tail->next = b;
    else
      s->bc_head = b;
    s->bc_tail = b;
    s->bc_n++;
    vec[0].base = b->data;
    vec[0].len = got;
    if (eof) {
      s->body_eof = 1;
      *pflags |= NGHTTP3_DATA_FLAG_EOF;
    }
    return 1;
  }
  if (!s || !s->f || s->body_reader || s->body_off >= s->body_len) {
    *pflags |= NGHTTP3_DATA_FLAG_EOF;
    return 0;
  }
  n = s->body_len - s->body_off;
  vec[0].base = (uint8_t *)s->body + s->body_off;
  vec[0].len = n;
  s->body_off += n;
  *pflags |= NGHTTP3_DATA_FLAG_EOF;
  return 1;
}

/* The peer acknowledged datalen more bytes of the request body. */
static int h_acked(nghttp3_conn *hc, int64_t id, uint64_t datalen, void *ud, void *sud) {
  h3_stream *s = sud;
  (void)ud;
  if (!s || !s->body_reader)
    return 0;
  s->bc_acked += datalen;
  while (s->bc_head && s->bc_acked >= s->bc_head->len) {
    body_chunk *b = s->bc_head;
    s->bc_acked -= b->len;
    s->bc_head = b->next;
    if (!s->bc_head)
      s->bc_tail = NULL;
    s->bc_n--;
    ns_free(&s->c->h->ctx->mem, b);
  }
  if (s->bc_n < BODY_INFLIGHT && !s->body_eof && !s->body_wait)
    (void)nghttp3_conn_resume_stream(hc, id);
  return 0;
}

/* ------------------------------------------------------------ ngtcp2 callbacks */

static void q_rand(uint8_t *dest, size_t len, const ngtcp2_rand_ctx *rctx) {
  (void)rctx;
  (void)gnutls_rnd(GNUTLS_RND_RANDOM, dest, len);
}

static int q_new_cid(ngtcp2_conn *qc, ngtcp2_cid *cid, uint8_t *token, size_t cidlen,
                     void *ud) {
  (void)qc;
  (void)ud;
  if (gnutls_rnd(GNUTLS_RND_RANDOM, cid->data, cidlen) != 0 ||
      gnutls_rnd(GNUTLS_RND_RANDOM, token, NGTCP2_STATELESS_RESET_TOKENLEN) != 0)
    return NGTCP2_ERR_CALLBACK_FAILURE;
  cid->datalen = cidlen;
  return 0;
}

static int setup_http(h3_conn *c) {
  nghttp3_callbacks cb = {
      .recv_data = h_recv_data,
      .deferred_consume = h_deferred_consume,
      .begin_headers = h_begin_headers,
      .recv_header = h_recv_header,
      .end_headers = h_end_headers,
      .end_stream = h_end_stream,
      .stream_close = h_stream_close,
      .reset_stream = h_reset_stream,
      .stop_sending = h_stop_sending,
      .acked_stream_data = h_acked,
  };
  nghttp3_settings settings;
  int64_t ctrl, enc, dec;
  nghttp3_settings_default(&settings);
  settings.qpack_max_dtable_capacity = 4096;
  settings.qpack_blocked_streams = 100;
  if (nghttp3_conn_client_new(&c->hc, &cb, &settings, NULL, c) != 0)
    return -1;
  if (ngtcp2_conn_open_uni_stream(c->qc, &ctrl, NULL) != 0 ||
      nghttp3_conn_bind_control_stream(c->hc, ctrl) != 0 ||
      ngtcp2_conn_open_uni_stream(c->qc, &enc, NULL) != 0 ||
      ngtcp2_conn_open_uni_stream(c->qc, &dec, NULL) != 0 ||
      nghttp3_conn_bind_qpack_streams(c->hc, enc, dec) != 0)
    return -1;
  return 0;
}

/* A request that may go as 0-RTT early data (RFC 9110 §9.2.1 safe
 * methods, no request body: a replay does no harm). */
static int early_safe(const h3_stream *s) {
  const char *m = s->req->method ? s->req->method : "GET";
  return !s->has_body && (!strcmp(m, "GET") || !strcmp(m, "HEAD") || !strcmp(m, "OPTIONS"));
}

/* Whether stream s may be submitted now on c. */
static int can_submit(const h3_conn *c, const h3_stream *s) {
  return c->state == C_READY || (c->state == C_CONNECTING && c->early && c->hc && early_safe(s));
}

static void start_waiting(h3_conn *c) {
  ns_list *pos, *tmp;
  if (c->state == C_DEAD)
    return;
  ns_list_foreach_safe(pos, tmp, &c->streams) {
    h3_stream *s = ns_list_entry(pos, h3_stream, node);
    if (s->id >= 0 || !s->f || s->done || s->fallback || !can_submit(c, s))
      continue;
    if (ngtcp2_conn_get_streams_bidi_left(c->qc) == 0)
      break;
    if (submit(s) != 0)
      break;
  }
}

/* The server refused our 0-RTT data (or GnuTLS sent none): ngtcp2 has
 * forgotten the streams; the requests go again after the handshake. */
static int q_early_rejected(ngtcp2_conn *qc, void *ud) {
  h3_conn *c = ud;
  ns_list *pos, *tmp;
  (void)qc;
  NS_DEBUG(c->h->ctx, MOD, "%s:%d refused 0-RTT; requests are sent again", c->host, c->port);
  nghttp3_conn_del(c->hc);
  c->hc = NULL;
  ns_list_foreach_safe(pos, tmp, &c->streams) {
    h3_stream *s = ns_list_entry(pos, h3_stream, node);
    if (s->id < 0)
      continue;
    if (!s->f) {
      stream_free(s); /* detached while in flight: nothing to resend */
      continue;
    }
    s->id = -1;
    s->early = 0;
    s->body_off = 0;
    s->eos = s->closed = 0;
  }
  return 0;
}

static int q_handshake_completed(ngtcp2_conn *qc, void *ud) {
  h3_conn *c = ud;
  c->t_ready_us = ns_now_us();
  c->h->st.handshakes++;
  if (gnutls_session_is_resumed(c->tls)) {
    c->h->st.resumed++;
    ns_stat_add(c->h->ctx, NETSTASH_STAT_TLS_RESUMED, 1);
  }
  ns_stat_add(c->h->ctx, NETSTASH_STAT_TLS_HANDSHAKES, 1);
  if (c->early) {
    c->early = 0;
    if (gnutls_session_get_flags(c->tls) & GNUTLS_SFLAGS_EARLY_DATA) {
      ns_list *pos, *tmp;
      uint64_t n = 0;
      ns_list_foreach_safe(pos, tmp, &c->streams) {
        h3_stream *s = ns_list_entry(pos, h3_stream, node);
        n += s->early && s->id >= 0;
      }
      c->h->st.zero_rtt += n;
      ns_stat_add(c->h->ctx, NETSTASH_STAT_EARLY_DATA, n);
    } else if (ngtcp2_conn_early_data_rejected(qc) != 0) {
      return NGTCP2_ERR_CALLBACK_FAILURE; /* q_early_rejected resets the streams */
    }
  }
  if (!c->hc && setup_http(c) != 0) {
    ngtcp2_connection_close_error_set_application_error(&c->ccerr, NGHTTP3_H3_INTERNAL_ERROR,
                                                        NULL, 0);
    return NGTCP2_ERR_CALLBACK_FAILURE;
  }
  c->state = C_READY;
  ns_hop_h3_conn_status(c->h->ctx, c->host, c->port, 1);
  start_waiting(c);
  return 0;
}

static int q_recv_stream_data(ngtcp2_conn *qc, uint32_t flags, int64_t id, uint64_t offset,
                              const uint8_t *data, size_t len, void *ud, void *sud) {
  h3_conn *c = ud;
  nghttp3_ssize n;
  (void)qc;
  (void)offset;
  if (!c->hc)
    return 0;
  n = nghttp3_conn_read_stream(c->hc, id, data, len, flags & NGTCP2_STREAM_DATA_FLAG_FIN);
  if ((n == NGHTTP3_ERR_MALFORMED_HTTP_MESSAGING || n == NGHTTP3_ERR_MALFORMED_HTTP_HEADER) &&
      (id & 0x3) == 0) {
    /* RFC 9114 §4.1.2: a malformed response (e.g. fewer DATA bytes than its
     * Content-Length before FIN) is a stream error: that request fails, the
     * connection and its other streams go on */
    h3_stream *s = sud;
    if (s && s->f && !s->done) {
      ns_fetch_detail(s->f, "HTTP/3 response malformed (%s)%s", nghttp3_strerror((int)n),
                      s->got_final ? ": its body ends before its Content-Length" : "");
      stream_finish(s, s->got_final ? NETSTASH_E_TRUNCATED : NETSTASH_E_PROTOCOL);
    }
    ngtcp2_conn_shutdown_stream(c->qc, id, NGHTTP3_H3_MESSAGE_ERROR);
    stream_consume(c, id, len);
    return 0;
  }
  if (n < 0) {
    ngtcp2_connection_close_error_set_application_error(
        &c->ccerr, nghttp3_err_infer_quic_app_error_code((int)n), NULL, 0);
    snprintf(c->detail, sizeof(c->detail), "HTTP/3: %s", nghttp3_strerror((int)n));
    return NGTCP2_ERR_CALLBACK_FAILURE;
  }
  stream_consume(c, id, (size_t)n);
  return 0;
}

static int q_acked(ngtcp2_conn *qc, int64_t id, uint64_t offset, uint64_t len, void *ud,
                   void *sud) {
  h3_conn *c = ud;
  (void)qc;
  (void)offset;
  (void)sud;
  if (c->hc && nghttp3_conn_add_ack_offset(c->hc, id, len) != 0)
    return NGTCP2_ERR_CALLBACK_FAILURE;
  return 0;
}

static int q_stream_close(ngtcp2_conn *qc, uint32_t flags, int64_t id, uint64_t app_error,
                          void *ud, void *sud) {
  h3_conn *c = ud;
  int rv;
  (void)qc;
  (void)sud;
  if (!(flags & NGTCP2_STREAM_CLOSE_FLAG_APP_ERROR_CODE_SET))
    app_error = NGHTTP3_H3_NO_ERROR;
  if (!c->hc)
    return 0;
  rv = nghttp3_conn_close_stream(c->hc, id, app_error);
  if (rv != 0 && rv != NGHTTP3_ERR_STREAM_NOT_FOUND) {
    ngtcp2_connection_close_error_set_application_error(
        &c->ccerr, nghttp3_err_infer_quic_app_error_code(rv), NULL, 0);
    return NGTCP2_ERR_CALLBACK_FAILURE;
  }
  return 0;
}

static int q_stream_reset(ngtcp2_conn *qc, int64_t id, uint64_t final_size, uint64_t app_error,
                          void *ud, void *sud) {
  h3_conn *c = ud;
  (void)qc;
  (void)final_size;
  (void)app_error;
  (void)sud;
  if (c->hc && nghttp3_conn_shutdown_stream_read(c->hc, id) != 0)
    return NGTCP2_ERR_CALLBACK_FAILURE;
  return 0;
}

static int q_stop_sending(ngtcp2_conn *qc, int64_t id, uint64_t app_error, void *ud,
                          void *sud) {
  h3_conn *c = ud;
  (void)qc;
  (void)app_error;
  (void)sud;
  if (c->hc && nghttp3_conn_shutdown_stream_read(c->hc, id) != 0)
    return NGTCP2_ERR_CALLBACK_FAILURE;
  return 0;
}

static int q_extend_streams(ngtcp2_conn *qc, uint64_t max, void *ud) {
  (void)qc;
  (void)max;
  start_waiting(ud);
  return 0;
}

static int q_extend_stream_data(ngtcp2_conn *qc, int64_t id, uint64_t max, void *ud,
                                void *sud) {
  h3_conn *c = ud;
  (void)qc;
  (void)max;
  (void)sud;
  if (c->hc && nghttp3_conn_unblock_stream(c->hc, id) != 0)
    return NGTCP2_ERR_CALLBACK_FAILURE;
  return 0;
}

static ngtcp2_conn *get_conn(ngtcp2_crypto_conn_ref *ref) {
  h3_conn *c = ref->user_data;
  return c->qc;
}

/* ------------------------------------------------------------ I/O */

static void conn_closed_cb(uv_handle_t *hd) {
  h3_conn *c = hd->data;
  if (--c->handles_open > 0)
    return;
  if (c->hc)
    nghttp3_conn_del(c->hc);
  if (c->qc)
    ngtcp2_conn_del(c->qc);
  if (c->tls)
    gnutls_deinit(c->tls);
  if (c->fd >= 0)
    close(c->fd);
  ns_free(&c->h->ctx->mem, c);
}

static void conn_release(h3_conn *c) {
  if (c->freeing)
    return;
  c->freeing = 1;
  ns_list_remove(&c->node);
  ns_list_init(&c->node);
  if (!c->poll_ok && !c->timer_ok) {
    c->handles_open = 1;
    conn_closed_cb((uv_handle_t *)&c->timer);
    return;
  }
  c->handles_open = c->poll_ok + c->timer_ok;
  if (c->poll_ok) {
    uv_poll_stop(&c->poll);
    uv_close((uv_handle_t *)&c->poll, conn_closed_cb);
  }
  if (c->timer_ok) {
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, conn_closed_cb);
  }
}

static void on_poll(uv_poll_t *p, int status, int events);

static void poll_events(h3_conn *c, int events) {
  if (!c->poll_ok || c->state == C_DEAD || c->poll_events == events)
    return;
  c->poll_events = events;
  if (events)
    uv_poll_start(&c->poll, events, on_poll);
  else
    uv_poll_stop(&c->poll);
}

/* Readable unless a bulk receive holds; writable while a datagram waits. */
static void poll_update(h3_conn *c) {
  poll_events(c, (c->rx_held ? 0 : UV_READABLE) | (c->pendlen ? UV_WRITABLE : 0));
}

/* Sends one datagram: 1 sent, 0 would block (kept in pend), -1 error. */
static int send_pkt(h3_conn *c, const uint8_t *p, size_t n) {
  ssize_t w;
  do
    w = send(c->fd, p, n, 0);
  while (w < 0 && errno == EINTR);
  if (w >= 0)
    return 1;
  if (errno == EAGAIN || errno == EWOULDBLOCK) {
    if (p != c->pend)
      memcpy(c->pend, p, n);
    c->pendlen = n;
    poll_update(c);
    return 0;
  }
  if (errno == ECONNREFUSED)
    conn_fail(c, NETSTASH_E_CONNECT_REFUSED, "UDP %s:%d refused (nothing listens there)",
              c->addr, c->udp_port);
  else
    conn_fail(c, NETSTASH_E_SEND, "send to %s:%d: %s", c->addr, c->udp_port, strerror(errno));
  return -1;
}

/* Writes every packet ngtcp2 has for now. */
static void conn_write(h3_conn *c) {
  uint8_t buf[TX_BUF];
  ngtcp2_path_storage ps;
  ngtcp2_pkt_info pi;
  uint64_t ts = now_ns();
  size_t max_pkts, npkts = 0, maxsz;
  if (c->state == C_DEAD)
    return;
  if (c->pendlen) {
    int r = send_pkt(c, c->pend, c->pendlen);
    if (r <= 0)
      return;
    c->pendlen = 0;
  }
  ngtcp2_path_storage_zero(&ps);
  maxsz = ngtcp2_conn_get_max_tx_udp_payload_size(c->qc);
  if (maxsz > sizeof(buf))
    maxsz = sizeof(buf);
  max_pkts = ngtcp2_conn_get_send_quantum(c->qc) / maxsz;
  if (max_pkts < 2)
    max_pkts = 2;
  while (npkts < max_pkts) {
    int64_t sid = -1;
    int fin = 0;
    nghttp3_vec vec[16];
    nghttp3_ssize nvec = 0;
    ngtcp2_ssize ndatalen = -1, nw;
    uint32_t flags = NGTCP2_WRITE_STREAM_FLAG_MORE;
    if (c->hc && ngtcp2_conn_get_max_data_left(c->qc)) {
      nvec = nghttp3_conn_writev_stream(c->hc, &sid, &fin, vec, 16);
      if (nvec < 0) {
        ngtcp2_connection_close_error_set_application_error(
            &c->ccerr, nghttp3_err_infer_quic_app_error_code((int)nvec), NULL, 0);
        conn_fail(c, NETSTASH_E_PROTOCOL, "HTTP/3: %s", nghttp3_strerror((int)nvec));
        return;
      }
    }
    if (fin)
      flags |= NGTCP2_WRITE_STREAM_FLAG_FIN;
    nw = ngtcp2_conn_writev_stream(c->qc, &ps.path, &pi, buf, maxsz, &ndatalen, flags, sid,
                                   (const ngtcp2_vec *)vec, (size_t)nvec, ts);
    if (nw < 0) {
      if (nw == NGTCP2_ERR_STREAM_DATA_BLOCKED) {
        nghttp3_conn_block_stream(c->hc, sid);
        continue;
      }
      if (nw == NGTCP2_ERR_STREAM_SHUT_WR) {
        nghttp3_conn_shutdown_stream_write(c->hc, sid);
        continue;
      }
      if (nw == NGTCP2_ERR_WRITE_MORE) {
        if (nghttp3_conn_add_write_offset(c->hc, sid, (size_t)ndatalen) != 0) {
          conn_fail(c, NETSTASH_E_PROTOCOL, "HTTP/3 write offset");
          return;
        }
        continue;
      }
      ngtcp2_connection_close_error_set_transport_error_liberr(&c->ccerr, (int)nw, NULL, 0);
      conn_fail(c, NETSTASH_E_PROTOCOL, "QUIC write: %s", ngtcp2_strerror((int)nw));
      return;
    }
    if (ndatalen >= 0 && nghttp3_conn_add_write_offset(c->hc, sid, (size_t)ndatalen) != 0) {
      conn_fail(c, NETSTASH_E_PROTOCOL, "HTTP/3 write offset");
      return;
    }
    if (nw == 0)
      break;
    if (send_pkt(c, buf, (size_t)nw) <= 0)
      return;
    npkts++;
  }
  /* No pacing during the handshake: ngtcp2 0.12 paces the first flight with
   * its 333 ms initial RTT, which would hold the client's Finished (and the
   * first request) back by ~25 ms after the server's reply. */
  if (c->state == C_READY)
    ngtcp2_conn_update_pkt_tx_time(c->qc, ts);
  if (!c->pendlen)
    poll_update(c);
}

static void on_timer(uv_timer_t *t);

static void arm_timer(h3_conn *c) {
  uint64_t now = now_ns(), exp, now_us = ns_now_us();
  uint64_t ms;
  ns_list *pos, *tmp;
  if (c->state == C_DEAD || !c->timer_ok)
    return;
  exp = ngtcp2_conn_get_expiry(c->qc);
  if (c->rx_held && c->rx_hold_until < exp)
    exp = c->rx_hold_until;
  ns_list_foreach_safe(pos, tmp, &c->streams) {
    h3_stream *s = ns_list_entry(pos, h3_stream, node);
    uint64_t d;
    if (!s->f || s->done)
      continue;
    if (s->held.len && !s->paused)
      d = 0; /* held body to deliver */
    else if (s->body_wait)
      d = BODY_RETRY_MS * 1000;
    else if (s->race_deadline && c->state == C_CONNECTING)
      d = s->race_deadline > now_us ? s->race_deadline - now_us : 0;
    else if (s->deadline)
      d = s->deadline > now_us ? s->deadline - now_us : 0;
    else
      continue;
    if (now + d * 1000 < exp)
      exp = now + d * 1000;
  }
  if (exp == UINT64_MAX) {
    uv_timer_stop(&c->timer);
    return;
  }
  ms = exp > now ? (exp - now + 999999) / 1000000 : 0;
  uv_timer_start(&c->timer, on_timer, ms, 0);
}

static void conn_after_io(h3_conn *c) {
  if (c->busy)
    return;
  c->busy = 1;
  for (int round = 0; round < 16; round++) {
    conn_write(c);
    if (!reap(c))
      break;
  }
  c->busy = 0;
  if (c->state == C_READY) {
    /* While a response is awaited, 1 s without a packet sends a PING: a
     * server that died is noticed from the ICMP error (or the PING's loss)
     * instead of after the 30 s idle timeout. No PINGs on an idle connection. */
    int active = 0;
    ns_list *pos, *tmp;
    ns_list_foreach_safe(pos, tmp, &c->streams) {
      h3_stream *s = ns_list_entry(pos, h3_stream, node);
      if (s->f && s->id >= 0 && !s->done) {
        active = 1;
        break;
      }
    }
    if (active != c->keepalive) {
      c->keepalive = active;
      ngtcp2_conn_set_keep_alive_timeout(c->qc, active ? NGTCP2_SECONDS : 0);
    }
  }
  if (c->state == C_DEAD) {
    reap(c);
    if (ns_list_empty(&c->streams))
      conn_release(c);
    return;
  }
  arm_timer(c);
}

static netstash_error tls_error(h3_conn *c, char *why, size_t cap) {
  unsigned st = gnutls_session_get_verify_cert_status(c->tls);
  uint8_t alert = ngtcp2_conn_get_tls_alert(c->qc);
  if (st) {
    gnutls_datum_t out;
    if (gnutls_certificate_verification_status_print(st, GNUTLS_CRT_X509, &out, 0) == 0) {
      snprintf(why, cap, "%s", out.data);
      gnutls_free(out.data);
    }
    if (st & (GNUTLS_CERT_EXPIRED | GNUTLS_CERT_NOT_ACTIVATED))
      return NETSTASH_E_TLS_CERT_EXPIRED;
    if (st & GNUTLS_CERT_UNEXPECTED_OWNER)
      return NETSTASH_E_TLS_CERT_HOSTNAME;
    if (st & (GNUTLS_CERT_SIGNER_NOT_FOUND | GNUTLS_CERT_SIGNER_NOT_CA))
      return NETSTASH_E_TLS_CERT_UNTRUSTED;
    return NETSTASH_E_TLS_CERT_INVALID;
  }
  if (alert == 70 /* protocol_version */) {
    snprintf(why, cap, "TLS alert protocol_version");
    return NETSTASH_E_TLS_VERSION;
  }
  snprintf(why, cap, "TLS handshake failed (alert %u)", alert);
  return NETSTASH_E_TLS_HANDSHAKE;
}

/* Handles one failed recv: 1 when reading must stop. */
static int read_error(h3_conn *c, int err) {
  if (err == EINTR)
    return 0;
  if (err == EAGAIN || err == EWOULDBLOCK)
    return 1;
  if (err == ECONNREFUSED)
    conn_fail(c, NETSTASH_E_CONNECT_REFUSED, "UDP %s:%d refused (nothing listens there)", c->addr,
              c->udp_port);
  else
    conn_fail(c, NETSTASH_E_RECV, "recv from %s:%d: %s", c->addr, c->udp_port, strerror(err));
  return 1;
}

/* Feeds one datagram to ngtcp2: 0, or 1 when the connection ended. */
static int read_one(h3_conn *c, const uint8_t *data, size_t len) {
  ngtcp2_path path;
  ngtcp2_pkt_info pi = {0};
  int rv;
  path.local.addr = (ngtcp2_sockaddr *)&c->la;
  path.local.addrlen = c->lalen;
  path.remote.addr = (ngtcp2_sockaddr *)&c->ra;
  path.remote.addrlen = c->ralen;
  path.user_data = NULL;
  rv = ngtcp2_conn_read_pkt(c->qc, &path, &pi, data, len, now_ns());
  if (rv == 0)
    return 0;
  if (rv == NGTCP2_ERR_DRAINING) {
    ngtcp2_connection_close_error cc;
    ngtcp2_conn_get_connection_close_error(c->qc, &cc);
    conn_fail(c, c->state == C_READY ? NETSTASH_E_RECV : NETSTASH_E_CONNECT_FAILED,
              "the server closed the QUIC connection (error 0x%llx%s%.*s)",
              (unsigned long long)cc.error_code, cc.reasonlen ? ": " : "",
              (int)NS_MIN(cc.reasonlen, (size_t)80), cc.reason ? (const char *)cc.reason : "");
    c->ccerr.type = NGTCP2_CONNECTION_CLOSE_ERROR_CODE_TYPE_TRANSPORT_IDLE_CLOSE;
    return 1;
  }
  if (rv == NGTCP2_ERR_CRYPTO || (c->state == C_CONNECTING && ngtcp2_conn_get_tls_alert(c->qc))) {
    char why[160] = "";
    netstash_error e = tls_error(c, why, sizeof(why));
    if (!c->ccerr.error_code)
      ngtcp2_connection_close_error_set_transport_error_tls_alert(
          &c->ccerr, ngtcp2_conn_get_tls_alert(c->qc), NULL, 0);
    conn_fail(c, e, "%s:%d over QUIC: %s", c->host, c->port, why);
    return 1;
  }
  if (rv == NGTCP2_ERR_CALLBACK_FAILURE && c->detail[0]) {
    char why[sizeof(c->detail)];
    memcpy(why, c->detail, sizeof(why)); /* conn_fail formats into c->detail */
    conn_fail(c, NETSTASH_E_PROTOCOL, "%s", why);
    return 1;
  }
  if (!c->ccerr.error_code)
    ngtcp2_connection_close_error_set_transport_error_liberr(&c->ccerr, rv, NULL, 0);
  conn_fail(c, NETSTASH_E_PROTOCOL, "QUIC: %s", ngtcp2_strerror(rv));
  return 1;
}

/* Reads what the socket holds, RX_MSGS datagrams per recvmmsg call, at most
 * `rounds` calls; returns the number of datagrams read. */
static int on_read(h3_conn *c, int rounds) {
  ns_h3 *h = c->h;
  struct mmsghdr msgs[RX_MSGS];
  struct iovec iov[RX_MSGS];
  int total = 0;
  for (int round = 0; round < rounds && c->state != C_DEAD; round++) {
    int n;
    for (int i = 0; i < RX_MSGS; i++) {
      iov[i].iov_base = h->rx + (size_t)i * RX_SLOT;
      iov[i].iov_len = RX_SLOT;
      memset(&msgs[i].msg_hdr, 0, sizeof(msgs[i].msg_hdr));
      msgs[i].msg_hdr.msg_iov = &iov[i];
      msgs[i].msg_hdr.msg_iovlen = 1;
    }
    n = recvmmsg(c->fd, msgs, RX_MSGS, 0, NULL);
    if (n < 0) {
      if (read_error(c, errno))
        break;
      continue;
    }
    total += n;
    for (int i = 0; i < n && c->state != C_DEAD; i++) {
      if (msgs[i].msg_hdr.msg_flags & MSG_TRUNC)
        continue; /* larger than we announced: not a datagram of ours */
      if (read_one(c, h->rx + (size_t)i * RX_SLOT, msgs[i].msg_len))
        return total;
    }
    if (n < RX_MSGS)
      break;
  }
  return total;
}

/* After a read of n datagrams: hold the next read back for RX_HOLD_MS when the
 * flow is bulk (the timer resumes it: on_timer), read on arrival otherwise. */
static void rx_pace(h3_conn *c, int n) {
  if (c->state == C_DEAD)
    return;
  c->rx_held = n >= RX_BULK && c->state == C_READY;
  if (c->rx_held)
    c->rx_hold_until = now_ns() + RX_HOLD_MS * 1000000ull;
  poll_update(c);
}

static void on_poll(uv_poll_t *p, int status, int events) {
  h3_conn *c = p->data;
  if (status < 0) {
    /* libuv reports POLLERR as UV_EBADF: the socket's pending error is the
     * real one (ECONNREFUSED after an ICMP port unreachable) */
    int soerr = 0;
    socklen_t sl = sizeof(soerr);
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0)
      soerr = errno;
    if (soerr == ECONNREFUSED)
      conn_fail(c, NETSTASH_E_CONNECT_REFUSED, "UDP %s:%d refused (nothing listens there)",
                c->addr, c->udp_port);
    else
      conn_fail(c, NETSTASH_E_NETWORK, "UDP socket %s:%d: %s", c->addr, c->udp_port,
                soerr ? strerror(soerr) : uv_strerror(status));
  } else {
    if (events & UV_READABLE)
      rx_pace(c, on_read(c, RX_ROUNDS));
    if ((events & UV_WRITABLE) && c->pendlen && c->state != C_DEAD) {
      if (send_pkt(c, c->pend, c->pendlen) > 0)
        c->pendlen = 0;
    }
  }
  conn_after_io(c);
}

static void on_timer(uv_timer_t *t) {
  h3_conn *c = t->data;
  uint64_t now_us = ns_now_us();
  ns_list *pos, *tmp;
  if (c->state == C_DEAD)
    return;
  if (c->rx_held && c->rx_hold_until <= now_ns()) {
    c->rx_held = 0;
    rx_pace(c, on_read(c, RX_HOLD_ROUNDS));
    if (c->state == C_DEAD) {
      conn_after_io(c);
      return;
    }
  }
  if (ngtcp2_conn_get_expiry(c->qc) <= now_ns()) {
    int rv = ngtcp2_conn_handle_expiry(c->qc, now_ns());
    if (rv == NGTCP2_ERR_IDLE_CLOSE) {
      c->ccerr.type = NGTCP2_CONNECTION_CLOSE_ERROR_CODE_TYPE_TRANSPORT_IDLE_CLOSE;
      conn_fail(c, c->state == C_READY ? NETSTASH_E_TIMEOUT : NETSTASH_E_CONNECT_FAILED,
                "QUIC connection to %s:%d idle for too long", c->addr, c->udp_port);
    } else if (rv == NGTCP2_ERR_HANDSHAKE_TIMEOUT) {
      c->ccerr.type = NGTCP2_CONNECTION_CLOSE_ERROR_CODE_TYPE_TRANSPORT_IDLE_CLOSE;
      conn_fail(c, NETSTASH_E_TIMEOUT, "QUIC handshake with %s:%d timed out", c->addr,
                c->udp_port);
    } else if (rv != 0) {
      conn_fail(c, NETSTASH_E_PROTOCOL, "QUIC: %s", ngtcp2_strerror(rv));
    }
  }
  ns_list_foreach_safe(pos, tmp, &c->streams) {
    h3_stream *s = ns_list_entry(pos, h3_stream, node);
    if (!s->f || s->done)
      continue;
    if (s->held.len && !s->paused) {
      size_t n = s->held.len;
      ns_buf held = s->held;
      ns_buf_init(&s->held, &c->h->ctx->mem, SIZE_MAX / 2);
      if (!ns_hop_body(s->f, held.data, n)) {
        s->failed = 1;
        stream_finish(s, s->f->fail != NETSTASH_OK ? s->f->fail : NETSTASH_E_CALLBACK);
      } else if (s->closed && s->eos) {
        stream_finish(s, NETSTASH_OK);
      }
      ns_buf_free(&held);
      if (s->id >= 0)
        stream_consume(c, s->id, n);
    }
    if (s->body_wait && s->id >= 0 && c->hc) {
      s->body_wait = 0;
      (void)nghttp3_conn_resume_stream(c->hc, s->id);
    }
    if (s->race_deadline && c->state == C_CONNECTING && now_us >= s->race_deadline) {
      s->fallback = NS_H3_FB_SLOW; /* also a 0-RTT request: reap cancels its stream */
      continue;
    }
    if (s->deadline && now_us >= s->deadline && !s->done) {
      ns_fetch_detail(s->f, "timed out after %u ms (HTTP/3)", (unsigned)s->f->req->timeout_ms);
      stream_finish(s, NETSTASH_E_TIMEOUT);
      if (s->id >= 0 && c->state != C_DEAD)
        ngtcp2_conn_shutdown_stream(c->qc, s->id, NGHTTP3_H3_REQUEST_CANCELLED);
    }
  }
  conn_after_io(c);
}

/* Ends the connection: streams fail (or fall back), CONNECTION_CLOSE is
 * sent unless the peer closed or the connection idled out. */
static void conn_fail(h3_conn *c, netstash_error err, const char *fmt, ...) {
  va_list ap;
  ns_list *pos, *tmp;
  int was_connecting = c->state == C_CONNECTING;
  if (c->state == C_DEAD)
    return;
  va_start(ap, fmt);
  vsnprintf(c->detail, sizeof(c->detail), fmt, ap);
  va_end(ap);
  c->err = err;
  NS_DEBUG(c->h->ctx, MOD, "connection %s:%d (%s:%d) ends: %s", c->host, c->port, c->addr,
           c->udp_port, c->detail);
  if (c->ccerr.type != NGTCP2_CONNECTION_CLOSE_ERROR_CODE_TYPE_TRANSPORT_IDLE_CLOSE &&
      !ngtcp2_conn_is_in_closing_period(c->qc) && !ngtcp2_conn_is_in_draining_period(c->qc)) {
    uint8_t buf[TX_BUF];
    ngtcp2_path_storage ps;
    ngtcp2_pkt_info pi;
    ngtcp2_ssize n;
    ngtcp2_path_storage_zero(&ps);
    n = ngtcp2_conn_write_connection_close(c->qc, &ps.path, &pi, buf, sizeof(buf), &c->ccerr,
                                           now_ns());
    if (n > 0)
      (void)send(c->fd, buf, (size_t)n, 0);
  }
  c->state = C_DEAD;
  if (was_connecting)
    ns_hop_h3_conn_status(c->h->ctx, c->host, c->port, 0);
  ns_list_foreach_safe(pos, tmp, &c->streams) {
    h3_stream *s = ns_list_entry(pos, h3_stream, node);
    if (!s->f || s->done || s->fallback)
      continue;
    if (was_connecting && s->race_deadline) {
      s->fallback = NS_H3_FB_FAILED;
      continue;
    }
    if (s->got_final && s->eos && s->held.len == 0) {
      stream_finish(s, NETSTASH_OK);
      continue;
    }
    ns_fetch_detail(s->f, "%s", c->detail);
    stream_finish(s, s->got_final ? NETSTASH_E_TRUNCATED : err);
  }
  if (c->poll_ok)
    uv_poll_stop(&c->poll);
  if (c->timer_ok)
    uv_timer_stop(&c->timer);
}

/* ------------------------------------------------------------ connections */

static netstash_error conn_new(ns_h3 *h, const ns_h3_target *t, h3_conn **out, char *why,
                               size_t cap) {
  netstash_ctx *ctx = h->ctx;
  h3_conn *c;
  ngtcp2_cid dcid, scid;
  ngtcp2_settings settings;
  ngtcp2_transport_params params;
  ngtcp2_path path;
  ngtcp2_callbacks cb = {
      .client_initial = ngtcp2_crypto_client_initial_cb,
      .recv_crypto_data = ngtcp2_crypto_recv_crypto_data_cb,
      .encrypt = ngtcp2_crypto_encrypt_cb,
      .decrypt = ngtcp2_crypto_decrypt_cb,
      .hp_mask = ngtcp2_crypto_hp_mask_cb,
      .recv_retry = ngtcp2_crypto_recv_retry_cb,
      .update_key = ngtcp2_crypto_update_key_cb,
      .delete_crypto_aead_ctx = ngtcp2_crypto_delete_crypto_aead_ctx_cb,
      .delete_crypto_cipher_ctx = ngtcp2_crypto_delete_crypto_cipher_ctx_cb,
      .get_path_challenge_data = ngtcp2_crypto_get_path_challenge_data_cb,
      .version_negotiation = ngtcp2_crypto_version_negotiation_cb,
      .rand = q_rand,
      .get_new_connection_id = q_new_cid,
      .handshake_completed = q_handshake_completed,
      .recv_stream_data = q_recv_stream_data,
      .acked_stream_data_offset = q_acked,
      .stream_close = q_stream_close,
      .stream_reset = q_stream_reset,
      .stream_stop_sending = q_stop_sending,
      .extend_max_local_streams_bidi = q_extend_streams,
      .extend_max_stream_data = q_extend_stream_data,
      .early_data_rejected = q_early_rejected,
  };
  gnutls_datum_t alpn = {(unsigned char *)"h3", 2};
  char key[300];
  ticket *tk;
  int rv;
  netstash_error err;

  if ((err = load_cred(h)) != NETSTASH_OK) {
    snprintf(why, cap, "%s", h->cred_detail);
    return err;
  }
  c = ns_calloc(&ctx->mem, 1, sizeof(*c));
  if (!c)
    return NETSTASH_E_NOMEM;
  c->h = h;
  c->fd = -1;
  ns_list_init(&c->streams);
  ns_list_init(&c->node);
  snprintf(c->host, sizeof(c->host), "%s", t->host);
  snprintf(c->addr, sizeof(c->addr), "%s", t->addr);
  c->port = t->port;
  c->udp_port = t->udp_port;
  c->state = C_CONNECTING;
  c->t_start_us = ns_now_us();
  ngtcp2_connection_close_error_default(&c->ccerr);

  memset(&c->ra, 0, sizeof(c->ra));
  if (inet_pton(AF_INET, t->addr, &((struct sockaddr_in *)&c->ra)->sin_addr) == 1) {
    struct sockaddr_in *sa = (struct sockaddr_in *)&c->ra;
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)t->udp_port);
    c->ralen = sizeof(*sa);
  } else if (inet_pton(AF_INET6, t->addr, &((struct sockaddr_in6 *)&c->ra)->sin6_addr) == 1) {
    struct sockaddr_in6 *sa = (struct sockaddr_in6 *)&c->ra;
    sa->sin6_family = AF_INET6;
    sa->sin6_port = htons((uint16_t)t->udp_port);
    c->ralen = sizeof(*sa);
  } else {
    snprintf(why, cap, "not a numeric address: %s", t->addr);
    err = NETSTASH_E_INVALID_ARGUMENT;
    goto fail;
  }
  c->fd = socket(c->ra.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_UDP);
  if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&c->ra, c->ralen) != 0) {
    snprintf(why, cap, "UDP socket to %s:%d: %s", t->addr, t->udp_port, strerror(errno));
    err = NETSTASH_E_CONNECT_FAILED;
    goto fail;
  }
  {
    int sz = 4 << 20;
    (void)setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
    (void)setsockopt(c->fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
  }
  c->lalen = sizeof(c->la);
  if (getsockname(c->fd, (struct sockaddr *)&c->la, &c->lalen) != 0) {
    snprintf(why, cap, "getsockname: %s", strerror(errno));
    err = NETSTASH_E_CONNECT_FAILED;
    goto fail;
  }
  ns_stat_add(ctx, NETSTASH_STAT_CONNECTIONS_OPENED, 1);
  h->st.conns_opened++;

  /* TLS */
  if (gnutls_init(&c->tls, GNUTLS_CLIENT | GNUTLS_ENABLE_EARLY_DATA |
                               GNUTLS_NO_END_OF_EARLY_DATA) != 0) {
    c->tls = NULL;
    err = NETSTASH_E_NOMEM;
    goto fail;
  }
  if (ngtcp2_crypto_gnutls_configure_client_session(c->tls) != 0 ||
      (rv = gnutls_priority_set_direct(c->tls, tls_priority, NULL)) != 0 ||
      gnutls_credentials_set(c->tls, GNUTLS_CRD_CERTIFICATE, h->cred) != 0) {
    snprintf(why, cap, "GnuTLS session setup failed");
    err = NETSTASH_E_INTERNAL;
    goto fail;
  }
  c->ref.get_conn = get_conn;
  c->ref.user_data = c;
  gnutls_session_set_ptr(c->tls, &c->ref);
  gnutls_alpn_set_protocols(c->tls, &alpn, 1, GNUTLS_ALPN_MANDATORY);
  {
    /* SNI for names only (RFC 6066 §3); the certificate is checked against
     * the host either way, IP addresses against IP SANs. */
    struct in6_addr tmp;
    if (inet_pton(AF_INET, t->host, &tmp) != 1 && inet_pton(AF_INET6, t->host, &tmp) != 1)
      gnutls_server_name_set(c->tls, GNUTLS_NAME_DNS, t->host, strlen(t->host));
  }
  gnutls_session_set_verify_cert(c->tls, t->host, 0);
  gnutls_handshake_set_hook_function(c->tls, GNUTLS_HANDSHAKE_NEW_SESSION_TICKET,
                                     GNUTLS_HOOK_POST, ticket_hook);
  conn_key(c, key, sizeof(key));
  if ((tk = ticket_find(h, key)) && tk->data.size)
    (void)gnutls_session_set_data(c->tls, tk->data.data, tk->data.size);

  /* QUIC */
  dcid.datalen = NGTCP2_MIN_INITIAL_DCIDLEN + 10;
  scid.datalen = 16;
  if (gnutls_rnd(GNUTLS_RND_RANDOM, dcid.data, dcid.datalen) != 0 ||
      gnutls_rnd(GNUTLS_RND_RANDOM, scid.data, scid.datalen) != 0) {
    err = NETSTASH_E_INTERNAL;
    goto fail;
  }
  ngtcp2_settings_default(&settings);
  settings.initial_ts = now_ns();
  settings.max_window = MAX_CONN_WINDOW;
  settings.max_stream_window = MAX_STREAM_WINDOW;
  settings.handshake_timeout =
      (uint64_t)(ctx->cfg.connect_timeout_ms ? ctx->cfg.connect_timeout_ms : 10000) *
      NGTCP2_MILLISECONDS;
  ngtcp2_transport_params_default(&params);
  params.initial_max_stream_data_bidi_local = STREAM_WINDOW;
  params.initial_max_stream_data_uni = 256 << 10;
  params.initial_max_data = CONN_WINDOW;
  params.initial_max_streams_bidi = 0;
  params.initial_max_streams_uni = 16;
  params.max_idle_timeout = (uint64_t)IDLE_TIMEOUT_MS * NGTCP2_MILLISECONDS;
  params.max_udp_payload_size = RX_SLOT; /* our receive slots */
  path.local.addr = (ngtcp2_sockaddr *)&c->la;
  path.local.addrlen = c->lalen;
  path.remote.addr = (ngtcp2_sockaddr *)&c->ra;
  path.remote.addrlen = c->ralen;
  path.user_data = NULL;
  rv = ngtcp2_conn_client_new(&c->qc, &dcid, &scid, &path, NGTCP2_PROTO_VER_V1, &cb, &settings,
                              &params, NULL, c);
  if (rv != 0) {
    c->qc = NULL;
    snprintf(why, cap, "ngtcp2_conn_client_new: %s", ngtcp2_strerror(rv));
    err = rv == NGTCP2_ERR_NOMEM ? NETSTASH_E_NOMEM : NETSTASH_E_INTERNAL;
    goto fail;
  }
  ngtcp2_conn_set_tls_native_handle(c->qc, c->tls);
  if (tk && tk->data.size && tk->has_tp) {
    /* 0-RTT: the HTTP/3 control streams and safe requests go at once */
    ngtcp2_conn_set_early_remote_transport_params(c->qc, &tk->tp);
    if (setup_http(c) != 0) {
      snprintf(why, cap, "HTTP/3 setup for 0-RTT failed");
      err = NETSTASH_E_NOMEM;
      goto fail;
    }
    c->early = 1;
  }

  if (uv_poll_init_socket(&ctx->loop, &c->poll, c->fd) != 0) {
    err = NETSTASH_E_INTERNAL;
    goto fail;
  }
  c->poll.data = c;
  c->poll_ok = 1;
  if (uv_timer_init(&ctx->loop, &c->timer) != 0) {
    err = NETSTASH_E_INTERNAL;
    goto fail;
  }
  c->timer.data = c;
  c->timer_ok = 1;
  ns_list_insert_tail(&h->conns, &c->node);
  poll_update(c);
  *out = c;
  return NETSTASH_OK;

fail:
  c->state = C_DEAD;
  conn_release(c);
  return err;
}

static h3_conn *conn_find(ns_h3 *h, const ns_h3_target *t) {
  ns_list *pos, *tmp;
  ns_list_foreach_safe(pos, tmp, &h->conns) {
    h3_conn *c = ns_list_entry(pos, h3_conn, node);
    if (c->state == C_DEAD || c->freeing)
      continue;
    if (c->port == t->port && c->udp_port == t->udp_port && strcmp(c->addr, t->addr) == 0 &&
        ns_ascii_casecmp(c->host, t->host) == 0)
      return c; /* when full, a new stream waits for credit (MAX_STREAMS) */
  }
  return NULL;
}

/* ------------------------------------------------------------ requests */

static int submit(h3_stream *s) {
  h3_conn *c = s->c;
  netstash_fetch *f = s->f;
  nghttp3_nv nva[NS_HOP_MAX_FIELDS];
  ns_hop_fields *hf = &c->h->fields;
  int rv;
  int64_t id;
  nghttp3_data_reader dr = {.read_data = read_body};
  size_t n;

  ns_hop_request_fields(f, "https", 1, hf);
  for (n = 0; n < hf->n; n++) {
    nva[n].name = (uint8_t *)(uintptr_t)hf->f[n].name;
    nva[n].namelen = hf->f[n].nlen;
    nva[n].value = (uint8_t *)(uintptr_t)hf->f[n].value;
    nva[n].valuelen = hf->f[n].vlen;
    nva[n].flags = NGHTTP3_NV_FLAG_NONE;
  }
  rv = ngtcp2_conn_open_bidi_stream(c->qc, &id, s);
  if (rv != 0)
    return -1; /* no credit yet: waits for MAX_STREAMS */
  s->id = id;
  s->early = c->state == C_CONNECTING;
  s->t_submit = ns_now_us();
  rv = nghttp3_conn_submit_request(c->hc, id, nva, n, s->has_body ? &dr : NULL, s);
  if (rv != 0) {
    ns_fetch_detail(f, "HTTP/3 request: %s", nghttp3_strerror(rv));
    stream_finish(s, rv == NGHTTP3_ERR_NOMEM ? NETSTASH_E_NOMEM : NETSTASH_E_INVALID_ARGUMENT);
    ngtcp2_conn_shutdown_stream(c->qc, id, NGHTTP3_H3_REQUEST_CANCELLED);
    return 0;
  }
  c->h->st.streams++;
  ns_stat_add(c->h->ctx, NETSTASH_STAT_H3_REQUESTS, 1);
  return 0;
}

netstash_error ns_h3_start(ns_h3 *h, netstash_fetch *f, const ns_h3_target *t, uint32_t race_ms) {
  h3_conn *c;
  h3_stream *s;
  netstash_error err;
  char why[200] = "";
  const netstash_request *req = f->req;

  if (h->shutting_down)
    return NETSTASH_E_CANCELED;
  c = conn_find(h, t);
  if (!c) {
    err = conn_new(h, t, &c, why, sizeof(why));
    if (err != NETSTASH_OK) {
      ns_fetch_detail(f, "HTTP/3 to %s:%d: %s", t->addr, t->udp_port, why);
      return err;
    }
  }
  s = ns_calloc(&h->ctx->mem, 1, sizeof(*s));
  if (!s)
    return NETSTASH_E_NOMEM;
  s->c = c;
  s->f = f;
  s->id = -1;
  ns_buf_init(&s->held, &h->ctx->mem, SIZE_MAX / 2);
  s->req = f->req;
  ns_request_ref(s->req);
  if (req->body_cb && !f->hop_get && !(req->method && strcmp(req->method, "HEAD") == 0)) {
    s->has_body = s->body_reader = 1; /* never 0-RTT: never replayed over TCP */
  } else if (req->has_body && !f->hop_get && !(req->method && strcmp(req->method, "HEAD") == 0)) {
    s->has_body = 1;
    s->body = req->body ? req->body : (const uint8_t *)"";
    s->body_len = req->body_len;
  }
  f->t_added = ns_now_us();
  {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    f->req_time_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000; /* RFC 9111 §4.2.3 */
  }
  s->new_conn = c->state == C_CONNECTING;
  if (race_ms && c->state == C_CONNECTING)
    s->race_deadline = f->t_added + (uint64_t)race_ms * 1000;
  if (req->timeout_ms)
    s->deadline = f->t_start + (uint64_t)req->timeout_ms * 1000;
  f->h3s = s;
  ns_list_insert_tail(&c->streams, &s->node);
  if (can_submit(c, s) && ngtcp2_conn_get_streams_bidi_left(c->qc) > 0)
    submit(s);
  conn_after_io(c);
  return NETSTASH_OK;
}

void ns_h3_detach(netstash_fetch *f) {
  h3_stream *s = stream_of(f);
  h3_conn *c;
  if (!s)
    return;
  c = s->c;
  f->h3s = NULL;
  s->f = NULL;
  s->body_len = s->body_off; /* nothing more to send */
  s->body_eof = 1;
  if (s->id >= 0 && !s->closed && c->state != C_DEAD) {
    ngtcp2_conn_shutdown_stream(c->qc, s->id, NGHTTP3_H3_REQUEST_CANCELLED);
  } else {
    stream_free(s);
  }
  if (!c->busy)
    conn_after_io(c);
}

netstash_error ns_h3_pause(netstash_fetch *f, int pause) {
  h3_stream *s = stream_of(f);
  if (!s)
    return NETSTASH_E_ILLEGAL_STATE;
  s->paused = pause ? 1 : 0;
  if (!pause && s->held.len && s->c->timer_ok && s->c->state != C_DEAD)
    uv_timer_start(&s->c->timer, on_timer, 0, 0);
  return NETSTASH_OK;
}

/* ------------------------------------------------------------ engine */

netstash_error ns_h3_new(netstash_ctx *ctx, ns_h3 **out) {
  ns_h3 *h = ns_calloc(&ctx->mem, 1, sizeof(*h));
  *out = NULL;
  if (!h)
    return NETSTASH_E_NOMEM;
  h->ctx = ctx;
  ns_list_init(&h->conns);
  *out = h;
  return NETSTASH_OK;
}

void ns_h3_shutdown(ns_h3 *h) {
  if (!h || h->shutting_down)
    return;
  h->shutting_down = 1;
  while (!ns_list_empty(&h->conns)) {
    h3_conn *c = ns_list_entry(h->conns.next, h3_conn, node);
    ns_list *pos, *tmp;
    ngtcp2_connection_close_error_set_application_error(&c->ccerr, NGHTTP3_H3_NO_ERROR, NULL,
                                                        0);
    conn_fail(c, NETSTASH_E_CANCELED, "context shut down");
    ns_list_foreach_safe(pos, tmp, &c->streams) {
      h3_stream *s = ns_list_entry(pos, h3_stream, node);
      if (s->f)
        s->f->h3s = NULL;
      stream_free(s);
    }
    conn_release(c);
  }
}

void ns_h3_del(ns_h3 *h) {
  if (!h)
    return;
  for (size_t i = 0; i < h->ntickets; i++)
    gnutls_free(h->tickets[i].data.data);
  if (h->cred)
    gnutls_certificate_free_credentials(h->cred);
  ns_free(&h->ctx->mem, h);
}

void ns_h3_get_stats(const ns_h3 *h, ns_h3_stats *out) {
  if (h)
    *out = h->st;
  else
    memset(out, 0, sizeof(*out));
}
