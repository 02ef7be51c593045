/*
 * serve.c — netstash_preload_lookup and the hit accessors: a URL answered
 * from the store's memory map with no allocation (install.c does the
 * lookup; this file owns the reader and the head's field offsets). On a
 * remote-mode context a hit asks netd instead, synchronously, on a unix
 * socket connection of its own, in HTTP/1.1 (lookup_http.h): the answer
 * lands in the hit's buffer, which grows to the largest answer and is then
 * reused.
 */
#include "core/headers.h"
#include "ns_setup.h"

#include <errno.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "cache/cache.h"
#include "cache/httpcache.h"
#include "core/ctx.h"
#include "core/url.h"
#include "preload/install.h"
#include "preload/lookup_http.h"
#include "preload/serve.h"
#include "store/store.h"
#include "transport/fetch.h"

#define HIT_MAX_FIELDS NS_LOOKUP_MAX_FIELDS
#define HIT_MAX_ID 128
#define HIT_ENTRIES 16 /* decoded cache entries kept by default (ns_preload_hit_keep) */
/* A remote lookup that netd does not answer within this long fails
 * (NETSTASH_E_TIMEOUT; the caller then starts a job) and the connection is
 * dropped. netd answers from its loop in microseconds; this only bounds a
 * netd that hangs. */
#define REMOTE_TIMEOUT_MS 2000

struct netstash_preload_hit {
  netstash_ctx *ctx;
  ns_store_reader *r;
  int open; /* read transaction open */
  int valid;
  int body_loaded; /* h.body fetched (lazily: a head-only answer needs no body) */
  ns_pl_hit h;
  char id[HIT_MAX_ID];
  size_t nf;
  struct {
    const char *name, *value;
    uint32_t name_len, value_len;
  } f[HIT_MAX_FIELDS];
  /* an HTTP-cache answer (netstash_intercept_cached) rather than a preload */
  int cache;
  char age[24];    /* its Age field's value */
  /* the local lookups' entries (allocated on first use), one per slot of
   * the URL's hash: ns_httpcache_peek keeps an entry it finds again in the
   * same snapshot instead of decoding it again, so hot URLs interleaved
   * keep theirs */
  ns_hc_entry *ces;
  size_t nces;
  ns_hc_entry *ce; /* the last lookup's */
  int decoded;     /* the body is dec (the store keeps it encoded) */
  int strip;       /* ... in the coding it came in: its fields left out */
  ns_buf dec;
  ns_headers rh; /* the request's fields as the cache matches them (reused) */
  /* remote mode */
  int remote;
  int fd;       /* the connection to netd, -1: none yet (or dropped) */
  uint8_t *buf; /* the last answer (fields and body point into it) */
  size_t cap;
  ns_buf req;          /* an HTTP-cache lookup's fields (kept for the next one) */
  const uint8_t *body; /* in buf */
};

netstash_error netstash_preload_hit_new(netstash_ctx *ctx, netstash_preload_hit **out) {
  netstash_preload_hit *hit;
  netstash_error e;
  if (!out)
    return NETSTASH_E_INVALID_ARGUMENT;
  *out = NULL;
  if (!ctx)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (!ctx->store && !ctx->cfg.remote_socket)
    return NETSTASH_E_ILLEGAL_STATE;
  hit = ns_calloc(&ctx->mem, 1, sizeof(*hit));
  if (!hit)
    return NETSTASH_E_NOMEM;
  hit->ctx = ctx;
  hit->fd = -1;
  ns_buf_init(&hit->dec, &ctx->mem, NS_LOOKUP_MAX_BODY);
  ns_buf_init(&hit->req, &ctx->mem, NS_LOOKUP_MAX_REQ_HEAD / 2);
  ns_headers_init(&hit->rh, &ctx->mem);
  if (ctx->cfg.remote_socket) { /* connected on the first lookup */
    hit->remote = 1;
    *out = hit;
    return NETSTASH_OK;
  }
  if ((e = ns_store_reader_new(ctx->store, &hit->r)) != NETSTASH_OK) {
    ns_free(&ctx->mem, hit);
    return e;
  }
  *out = hit;
  return NETSTASH_OK;
}

void netstash_preload_hit_release(netstash_preload_hit *hit) {
  if (!hit)
    return;
  if (hit->open)
    ns_store_read_end(hit->r);
  hit->open = 0;
  hit->valid = 0;
  hit->cache = 0;
  hit->decoded = hit->strip = 0;
}

void netstash_preload_hit_del(netstash_preload_hit *hit) {
  if (!hit)
    return;
  netstash_preload_hit_release(hit);
  if (hit->ces) {
    for (size_t i = 0; i < hit->nces; i++)
      ns_hc_entry_free(&hit->ces[i]);
    ns_free(&hit->ctx->mem, hit->ces);
  }
  ns_store_reader_del(hit->r);
  ns_buf_free(&hit->dec);
  ns_buf_free(&hit->req);
  ns_headers_free(&hit->rh);
  if (hit->fd >= 0)
    close(hit->fd);
  ns_free(&hit->ctx->mem, hit->buf);
  ns_free(&hit->ctx->mem, hit);
}

/* ------------------------------------------------------------ remote */

static netstash_error remote_connect(netstash_preload_hit *hit) {
  const char *path = hit->ctx->cfg.remote_socket;
  struct sockaddr_un sa;
  struct timeval tv = {REMOTE_TIMEOUT_MS / 1000, (REMOTE_TIMEOUT_MS % 1000) * 1000};
  int fd;
  if (strlen(path) >= sizeof(sa.sun_path))
    return NETSTASH_E_INVALID_ARGUMENT;
  memset(&sa, 0, sizeof(sa));
  sa.sun_family = AF_UNIX;
  memcpy(sa.sun_path, path, strlen(path) + 1);
  if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
    return errno == EMFILE || errno == ENFILE || errno == ENOMEM ? NETSTASH_E_NOMEM : NETSTASH_E_IO;
  /* the limits bound connect() too (a full listen backlog) */
  (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
    int err = errno;
    close(fd);
    return err == ENOENT || err == ECONNREFUSED  ? NETSTASH_E_CONNECT_REFUSED
           : err == EAGAIN || err == EINPROGRESS ? NETSTASH_E_TIMEOUT
                                                 : NETSTASH_E_CONNECT_FAILED;
  }
  hit->fd = fd;
  return NETSTASH_OK;
}

static netstash_error io_error(int err, int sending) {
  if (err == EAGAIN || err == EWOULDBLOCK)
    return NETSTASH_E_TIMEOUT;
  return sending ? NETSTASH_E_SEND : NETSTASH_E_RECV;
}

/* At least want bytes in hit->buf (have already there); *have updated. */
static netstash_error recv_at_least(netstash_preload_hit *hit, size_t *have, size_t want) {
  while (*have < want) {
    ssize_t n = recv(hit->fd, hit->buf + *have, hit->cap - *have, 0);
    if (n > 0)
      *have += (size_t)n;
    else if (n == 0)
      return NETSTASH_E_RECV; /* netd went away */
    else if (errno != EINTR)
      return io_error(errno, 0);
  }
  return NETSTASH_OK;
}

static netstash_error grow(netstash_preload_hit *hit, size_t need) {
  size_t nc = hit->cap ? hit->cap : 65536;
  uint8_t *nb;
  if (need <= hit->cap)
    return NETSTASH_OK;
  while (nc < need)
    nc *= 2;
  if (!(nb = ns_realloc(&hit->ctx->mem, hit->buf, nc)))
    return NETSTASH_E_NOMEM;
  hit->buf = nb;
  hit->cap = nc;
  return NETSTASH_OK;
}

/* What an answer's head says (lookup_http.h). */
typedef struct rhead {
  int status;
  uint64_t length;    /* Content-Length, UINT64_MAX: none */
  netstash_error err; /* X-Netstash-Error, NETSTASH_OK: none */
  int preload;        /* X-Netstash-Source: preload (a hit, of any status) */
  int cache;          /* X-Netstash-Source: cache (netstash_intercept_cached) */
  uint64_t version;
} rhead;

static int field_is(const char *n, size_t nl, const char *want) {
  return nl == strlen(want) && !strncasecmp(n, want, nl);
}

static int parse_u64(const char *v, size_t n, uint64_t *out) {
  uint64_t x = 0;
  if (!n || n > 19)
    return -1;
  for (size_t i = 0; i < n; i++) {
    if (v[i] < '0' || v[i] > '9')
      return -1;
    x = x * 10 + (uint64_t)(v[i] - '0');
  }
  *out = x;
  return 0;
}

/* Parses the answer's head, buf[0..hend) ending in CRLF CRLF, into *h and
 * the hit's fields (pointers into buf: parsed again if buf moves) and
 * manifest id. */
static netstash_error parse_head(netstash_preload_hit *hit, size_t hend, rhead *h) {
  const char *p = (const char *)hit->buf, *end = p + hend - 2, *eol;
  h->length = UINT64_MAX;
  h->err = NETSTASH_OK;
  h->preload = 0;
  h->cache = 0;
  h->version = 0;
  if (hend < 16 || memcmp(p, "HTTP/1.1 ", 9) || p[9] < '1' || p[9] > '9' || p[10] < '0' ||
      p[10] > '9' || p[11] < '0' || p[11] > '9' || (p[12] != ' ' && p[12] != '\r'))
    return NETSTASH_E_PROTOCOL;
  h->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
  hit->nf = 0;
  hit->id[0] = '\0';
  p = (const char *)memchr(p, '\n', (size_t)(end - p)) + 1;
  for (; p < end; p = eol + 2) {
    const char *colon, *v, *ve;
    /* memchr, not memmem: glibc's memmem sets up a shift table per call */
    eol = memchr(p, '\n', (size_t)(end - p) + 2);
    if (!eol || eol == p || *--eol != '\r' || !(colon = memchr(p, ':', (size_t)(eol - p))) ||
        colon == p)
      return NETSTASH_E_PROTOCOL;
    for (v = colon + 1; v < eol && (*v == ' ' || *v == '\t'); v++)
      ;
    for (ve = eol; ve > v && (ve[-1] == ' ' || ve[-1] == '\t'); ve--)
      ;
    size_t nl = (size_t)(colon - p), vl = (size_t)(ve - v);
    if (field_is(p, nl, "content-length")) {
      if (h->length != UINT64_MAX || parse_u64(v, vl, &h->length) != 0)
        return NETSTASH_E_PROTOCOL;
    } else if (field_is(p, nl, "x-netstash-error")) {
      h->err = ns_error_by_name(v, vl, NETSTASH_E_PROTOCOL);
    } else if (field_is(p, nl, "x-netstash-source")) {
      h->preload = vl == 7 && !memcmp(v, "preload", 7);
      h->cache = vl == 5 && !memcmp(v, "cache", 5);
    } else if (field_is(p, nl, "x-netstash-preload-version")) {
      if (parse_u64(v, vl, &h->version) != 0)
        return NETSTASH_E_PROTOCOL;
    } else if (field_is(p, nl, "x-netstash-preload-id")) {
      size_t il = vl < sizeof(hit->id) - 1 ? vl : sizeof(hit->id) - 1;
      memcpy(hit->id, v, il);
      hit->id[il] = '\0';
    } else if (nl > 11 && !strncasecmp(p, "x-netstash-", 11)) {
      /* netd's own: not the stored head's */
    } else if (hit->nf < HIT_MAX_FIELDS) {
      hit->f[hit->nf].name = p;
      hit->f[hit->nf].name_len = (uint32_t)nl;
      hit->f[hit->nf].value = v;
      hit->f[hit->nf].value_len = (uint32_t)vl;
      hit->nf++;
    }
  }
  return NETSTASH_OK;
}

/* The length of the head in buf[0..have) — up to and with its CRLF CRLF —
 * or 0 when that has not arrived; buf[0..from) was looked at before, so the
 * head's last LF is at from or later (what precedes it is looked at
 * backwards). A memchr for each LF, not memmem: glibc's memmem builds a
 * shift table per call, which cost more than the rest of the answer's
 * parsing. */
static size_t head_end(const uint8_t *buf, size_t from, size_t have) {
  const uint8_t *p = buf + from, *end = buf + have, *lf;
  while ((lf = memchr(p, '\n', (size_t)(end - p)))) {
    if (lf - buf >= 3 && lf[-1] == '\r' && lf[-2] == '\n' && lf[-3] == '\r')
      return (size_t)(lf - buf) + 1;
    p = lf + 1;
  }
  return 0;
}

/* One request and its answer on hit->fd. *answered: netd answered (the
 * result is its answer); otherwise the connection failed and is dropped. */
static netstash_error remote_exchange(netstash_preload_hit *hit, const char *url, size_t n,
                                      const char *extra, size_t extra_len, int *answered) {
  static const char pre[] = "GET ", post[] = " HTTP/1.1\r\nHost: netd\r\n";
  struct iovec iov[5] = {{(void *)pre, 4},
                         {(void *)url, n},
                         {(void *)post, sizeof(post) - 1},
                         {(void *)extra, extra_len},
                         {(void *)"\r\n", 2}};
  struct msghdr mh;
  size_t left = 4 + n + sizeof(post) - 1 + extra_len + 2, have = 0, hend = 0, total;
  netstash_error e;
  rhead h;
  *answered = 0;
  memset(&mh, 0, sizeof(mh));
  mh.msg_iov = iov;
  mh.msg_iovlen = 5;
  while (left) {
    ssize_t w = sendmsg(hit->fd, &mh, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR)
        continue;
      return io_error(errno, 1);
    }
    left -= (size_t)w;
    while (w > 0) { /* skip what went out */
      size_t k = (size_t)w < mh.msg_iov->iov_len ? (size_t)w : mh.msg_iov->iov_len;
      mh.msg_iov->iov_base = (uint8_t *)mh.msg_iov->iov_base + k;
      mh.msg_iov->iov_len -= k;
      w -= (ssize_t)k;
      if (!mh.msg_iov->iov_len && mh.msg_iovlen > 1) {
        mh.msg_iov++;
        mh.msg_iovlen--;
      }
    }
  }
  if ((e = grow(hit, 65536)) != NETSTASH_OK)
    return e;
  while (!hend) { /* the head: up to CRLF CRLF */
    size_t from = have;
    if (have == hit->cap &&
        (have >= NS_LOOKUP_MAX_HEAD || (e = grow(hit, have * 2)) != NETSTASH_OK))
      return have >= NS_LOOKUP_MAX_HEAD ? NETSTASH_E_PROTOCOL : e;
    if ((e = recv_at_least(hit, &have, have + 1)) != NETSTASH_OK)
      return e;
    hend = head_end(hit->buf, from, have);
  }
  if ((e = parse_head(hit, hend, &h)) != NETSTASH_OK)
    return e;
  if (h.length == UINT64_MAX || h.length > NS_LOOKUP_MAX_BODY)
    return NETSTASH_E_PROTOCOL;
  total = hend + (size_t)h.length;
  if (have > total) /* one request at a time: nothing may follow */
    return NETSTASH_E_PROTOCOL;
  if (total > hit->cap) { /* the buffer grows (rarely, once it fits): the fields move */
    if ((e = grow(hit, total)) != NETSTASH_OK || (e = parse_head(hit, hend, &h)) != NETSTASH_OK)
      return e;
  }
  if ((e = recv_at_least(hit, &have, total)) != NETSTASH_OK)
    return e;
  if (h.err != NETSTASH_OK) { /* not preloaded, or not servable */
    *answered = 1;
    return h.err;
  }
  if (!h.preload && !h.cache) /* refused (4xx: our request); netd closes, so do we */
    return h.status >= 400 && h.status < 500 ? NETSTASH_E_BAD_URL : NETSTASH_E_PROTOCOL;
  if (h.status < 100)
    return NETSTASH_E_PROTOCOL;
  *answered = 1;
  hit->cache = h.cache;
  hit->h.entry.status = h.status;
  hit->h.entry.size = h.length;
  hit->h.version = h.version;
  hit->body = hit->buf + hend;
  hit->valid = 1;
  return NETSTASH_OK;
}

static netstash_error remote_lookup(netstash_preload_hit *hit, const char *url, const char *extra,
                                    size_t extra_len) {
  size_t n = strlen(url);
  if (!n)
    return NETSTASH_E_BAD_URL;
  if (n > NS_LOOKUP_MAX_URL)
    return NETSTASH_E_NOT_FOUND; /* nothing so long is preloaded */
  for (size_t i = 0; i < n; i++) /* the request line carries it as it is */
    if ((unsigned char)url[i] <= 0x20 || url[i] == 0x7f)
      return NETSTASH_E_BAD_URL;
  for (int attempt = 0;; attempt++) {
    int fresh = hit->fd < 0, answered;
    netstash_error e;
    if (fresh && (e = remote_connect(hit)) != NETSTASH_OK)
      return e;
    e = remote_exchange(hit, url, n, extra, extra_len, &answered);
    if (answered)
      return e;
    close(hit->fd);
    hit->fd = -1;
    /* a connection that served before may be one a restarted netd closed:
     * once more on a new one */
    if (fresh || attempt || e == NETSTASH_E_TIMEOUT || e == NETSTASH_E_NOMEM ||
        e == NETSTASH_E_BAD_URL || e == NETSTASH_E_PROTOCOL)
      return e;
  }
}

/* Already in the form manifests are normalised to (curl_url output with a
 * canonical authority)? Then it can be looked up as it is. */
static int canonical(const char *u, size_t n) {
  size_t i = 8;
  if (n < 9 || memcmp(u, "https://", 8) != 0)
    return 0;
  for (; i < n && u[i] != '/'; i++)
    if (!((u[i] >= 'a' && u[i] <= 'z') || (u[i] >= '0' && u[i] <= '9') || u[i] == '.' ||
          u[i] == '-' || u[i] == ':'))
      return 0;
  if (i == n || (i >= 4 && !memcmp(u + i - 4, ":443", 4)))
    return 0;
  for (; i < n; i++) {
    unsigned char c = (unsigned char)u[i];
    if (c <= 0x20 || c >= 0x7f || c == '#' || c == '\\' || c == '%')
      return 0;
    if (c == '.' && u[i - 1] == '/' &&
        (i + 1 == n || u[i + 1] == '/' || u[i + 1] == '?' ||
         (u[i + 1] == '.' && (i + 2 == n || u[i + 2] == '/' || u[i + 2] == '?'))))
      return 0;
  }
  return 1;
}

/* One stored field into the hit's index, unless it is one the answer
 * replaces (Age) or that describes the bytes as stored (a decoded body's
 * coding and length). 0, or -1 when a cache answer has more fields than the
 * index holds (a preload answer keeps the first ones). */
static int index_field(netstash_preload_hit *hit, const char *name, size_t nl, const char *value,
                       size_t vl) {
  if (hit->cache && nl == 3 && !strncasecmp(name, "age", 3))
    return 0; /* replaced by the current age */
  if (hit->strip && ((nl == 16 && !strncasecmp(name, "content-encoding", 16)) ||
                     (nl == 14 && !strncasecmp(name, "content-length", 14))))
    return 0; /* they describe the bytes as stored, not as served */
  if (hit->cache && hit->nf == HIT_MAX_FIELDS - 1)
    return -1; /* no field dropped: a job serves it whole */
  if (hit->nf < HIT_MAX_FIELDS) {
    hit->f[hit->nf].name = name;
    hit->f[hit->nf].name_len = (uint32_t)nl;
    hit->f[hit->nf].value = value;
    hit->f[hit->nf].value_len = (uint32_t)vl;
    hit->nf++;
  }
  return 0;
}

/* Field offsets of the stored head (format of ns_headers_encode). */
static netstash_error index_head(netstash_preload_hit *hit) {
  ns_headers_walk w;
  const char *name, *value;
  size_t nl, vl;
  hit->nf = 0;
  if (!ns_headers_walk_begin(&w, hit->h.entry.head, hit->h.entry.head_len))
    return NETSTASH_E_STORE_CORRUPT;
  while (ns_headers_walk_next(&w, &name, &nl, &value, &vl))
    (void)index_field(hit, name, nl, value, vl);
  return w.bad ? NETSTASH_E_STORE_CORRUPT : NETSTASH_OK;
}

/* A cache answer's fields: the entry's head, decoded (and checked) by the
 * lookup already, then its current Age. */
static netstash_error index_cached(netstash_preload_hit *hit, const ns_headers *h) {
  size_t it = 0;
  const ns_header_field *f;
  hit->nf = 0;
  while ((f = ns_headers_next(h, &it, NULL)) != NULL)
    if (index_field(hit, f->name, f->name_len, f->value, f->value_len) != 0)
      return NETSTASH_E_NOT_FOUND;
  hit->f[hit->nf].name = "age";
  hit->f[hit->nf].name_len = 3;
  hit->f[hit->nf].value = hit->age;
  hit->f[hit->nf].value_len = (uint32_t)strlen(hit->age);
  hit->nf++;
  return NETSTASH_OK;
}

static netstash_error lookup_norm(netstash_preload_hit *hit, const char *url, size_t n) {
  netstash_error e;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  if (!hit->open) {
    if ((e = ns_store_read_begin(hit->r)) != NETSTASH_OK)
      return e;
    hit->open = 1;
  }
  hit->body_loaded = 0;
  e = ns_pl_lookup_ex(hit->r, url, n, (int64_t)ts.tv_sec, 0, &hit->h);
  if (e == NETSTASH_OK)
    e = index_head(hit);
  if (e != NETSTASH_OK) {
    netstash_preload_hit_release(hit);
    return e;
  }
  size_t il = hit->h.id_len < sizeof(hit->id) - 1 ? hit->h.id_len : sizeof(hit->id) - 1;
  memcpy(hit->id, hit->h.id, il);
  hit->id[il] = '\0';
  hit->valid = 1;
  return NETSTASH_OK;
}

netstash_error netstash_preload_lookup(netstash_preload_hit *hit, const char *url) {
  size_t n;
  ns_url u;
  netstash_error e;
  if (!hit || !url)
    return NETSTASH_E_INVALID_ARGUMENT;
  /* a new snapshot per lookup: what was published since is seen */
  netstash_preload_hit_release(hit);
  if (hit->remote)
    return remote_lookup(hit, url, "", 0);
  n = strlen(url);
  if (canonical(url, n))
    return lookup_norm(hit, url, n);
  e = ns_url_parse(&hit->ctx->mem, url, &u, NULL, 0);
  if (e != NETSTASH_OK)
    return e == NETSTASH_E_NOMEM ? e : NETSTASH_E_BAD_URL;
  if (strcmp(u.scheme, "https") != 0 || ns_url_canonical_authority(u.url) != 0) {
    ns_url_free(&hit->ctx->mem, &u);
    return NETSTASH_E_NOT_FOUND;
  }
  char *hash = strchr(u.url, '#');
  if (hash)
    *hash = '\0';
  e = lookup_norm(hit, u.url, strlen(u.url));
  ns_url_free(&hit->ctx->mem, &u);
  return e;
}

/* ------------------------------------------------------------ HTTP cache */

static netstash_error dec_sink(const uint8_t *data, size_t len, void *ud) {
  return ns_buf_append(ud, data, len);
}

/* The entry slot hash of a URL (FNV-1a; its partitions share the slot). */
static size_t slot_of(const char *url) {
  uint32_t h = 2166136261u;
  for (const char *p = url; p && *p; p++)
    h = (h ^ (uint8_t)*p) * 16777619u;
  return h;
}

/* A fresh stored answer for req from the context's HTTP cache, in the hit's
 * own read transaction; NETSTASH_E_NOT_FOUND for anything a job must do
 * (absent, stale, a redirect, a body the store keeps encoded). */
static netstash_error cached_local(netstash_preload_hit *hit, const netstash_request *req) {
  netstash_ctx *ctx = hit->ctx;
  ns_hc_entry *ce;
  struct timespec ts;
  netstash_error e;
  if (!ctx->hc)
    return NETSTASH_E_NOT_FOUND;
  if (!hit->ces) {
    size_t n = hit->nces ? hit->nces : HIT_ENTRIES;
    if (!(hit->ces = ns_calloc(&ctx->mem, n, sizeof(*hit->ces))))
      return NETSTASH_E_NOMEM;
    hit->nces = n;
    for (size_t i = 0; i < n; i++)
      ns_hc_entry_init(&hit->ces[i], &ctx->mem);
  }
  ce = hit->ce = &hit->ces[slot_of(req->url.url) % hit->nces];
  clock_gettime(CLOCK_REALTIME, &ts);
  ns_headers_reset(&hit->rh);
  e = ns_request_cache_fields(req, &hit->rh);
  if (e == NETSTASH_OK && !hit->open && (e = ns_store_read_begin(hit->r)) == NETSTASH_OK)
    hit->open = 1;
  if (e == NETSTASH_OK)
    e = ns_httpcache_peek(ctx->hc, hit->r, req->top_level_site.url, req->url.url, &hit->rh,
                          (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000, ce);
  if (e == NETSTASH_OK && (!ce->found || ce->decision.verdict != NS_CACHE_FRESH ||
                           (ce->status >= 300 && ce->status < 400)))
    e = NETSTASH_E_NOT_FOUND;
  memset(&hit->h, 0, sizeof(hit->h));
  if (e == NETSTASH_OK && ce->has_body) {
    /* the coding the head names; the body is kept in another one when the
     * store recompressed it, or when a response with the same decoded
     * content came first in another coding (ns_httpcache_body_form) */
    ns_coding named = ce->coding;
    /* a coding the cache does not know: the bytes as sent are the content,
     * served under the head as it is (kept as identity, decoded otherwise) */
    int opaque = named == NS_CODING_UNKNOWN;
    e = ns_store_body_get(hit->r, ce->body_hash, &hit->h.body);
    if (e == NETSTASH_OK && req->raw && !hit->h.body.recompressed && hit->h.body.coding == named &&
        named != NS_CODING_IDENTITY)
      e = NETSTASH_E_NOT_FOUND; /* raw: a job relays the coding it came in */
    else if (e == NETSTASH_OK &&
             (hit->h.body.coding != NS_CODING_IDENTITY || hit->h.body.recompressed)) {
      /* served decoded, as a job serves it: into the hit's buffer */
      ns_buf_reset(&hit->dec);
      hit->decoded = 1;
      /* the head's coding and length describe other bytes, unless it names
       * none (a body the store compressed itself: its Content-Length holds) */
      hit->strip = named != NS_CODING_IDENTITY && !opaque;
      e = hit->h.body.decoded_size > NS_LOOKUP_MAX_BODY
              ? NETSTASH_E_NOT_FOUND /* a job streams it */
              : ns_store_body_decode(&hit->h.body, &ctx->mem, NS_LOOKUP_MAX_BODY, dec_sink,
                                     &hit->dec);
    } else if (e == NETSTASH_OK && named != NS_CODING_IDENTITY && !opaque) {
      hit->strip = 1; /* kept as identity for a head that names a coding: served so */
    }
  }
  if (e == NETSTASH_OK) {
    hit->body_loaded = 1;
    hit->h.entry.status = ce->status;
    hit->h.entry.size = !ce->has_body ? 0 : hit->decoded ? hit->dec.len : hit->h.body.decoded_size;
    memcpy(hit->h.body_hash, ce->body_hash, sizeof(hit->h.body_hash));
    /* Age in seconds, never negative */
    ns_fmt_u64(hit->age, ce->decision.age_ms > 0 ? (uint64_t)ce->decision.age_ms / 1000 : 0);
    hit->cache = 1;
    hit->id[0] = '\0';
    e = index_cached(hit, &ce->headers);
  }
  if (e != NETSTASH_OK) {
    netstash_preload_hit_release(hit);
    return e;
  }
  hit->valid = 1;
  return NETSTASH_OK;
}

/* Remote: the request's fields go with the lookup (lookup_http.h). */
static netstash_error cached_remote(netstash_preload_hit *hit, const netstash_request *req,
                                    int preload_first) {
  ns_buf *x = &hit->req;
  netstash_error e;
  ns_buf_reset(x);
  e = ns_buf_append_str(x, preload_first ? "X-Netstash-Lookup: any\r\n"
                                         : "X-Netstash-Lookup: cache\r\n");
  if (e == NETSTASH_OK && req->top_level_site.url &&
      (e = ns_buf_append_str(x, "X-Netstash-Top-Level-Site: ")) == NETSTASH_OK &&
      (e = ns_buf_append_str(x, req->top_level_site.url)) == NETSTASH_OK)
    e = ns_buf_append(x, "\r\n", 2);
  for (size_t i = 0; e == NETSTASH_OK && i < req->nheaders; i++) {
    const char *l = req->headers[i];
    size_t n = strlen(l);
    if (n && l[n - 1] == ';')
      continue;
    if ((e = ns_buf_append(x, l, n)) == NETSTASH_OK)
      e = ns_buf_append(x, "\r\n", 2);
  }
  if (e == NETSTASH_E_TOO_LARGE)
    e = NETSTASH_E_NOT_FOUND; /* fields too large for a lookup: a job sends them */
  if (e == NETSTASH_OK)
    e = remote_lookup(hit, req->url.url, (const char *)x->data, x->len);
  return e;
}

netstash_error ns_preload_hit_cached(netstash_preload_hit *hit, const netstash_request *req,
                                     int preload_first) {
  netstash_preload_hit_release(hit);
  return hit->remote ? cached_remote(hit, req, preload_first) : cached_local(hit, req);
}

int ns_preload_hit_remote(const netstash_preload_hit *hit) {
  return hit->remote;
}

netstash_source netstash_preload_hit_source(const netstash_preload_hit *hit) {
  if (!hit || !hit->valid)
    return NETSTASH_SOURCE_NONE;
  return hit->cache ? NETSTASH_SOURCE_CACHE : NETSTASH_SOURCE_PRELOAD;
}

int netstash_preload_hit_status(const netstash_preload_hit *hit) {
  return hit && hit->valid ? hit->h.entry.status : 0;
}

size_t netstash_preload_hit_header_count(const netstash_preload_hit *hit) {
  return hit && hit->valid ? hit->nf : 0;
}

netstash_error netstash_preload_hit_header_at(const netstash_preload_hit *hit, size_t i,
                                              const char **name, size_t *name_len,
                                              const char **value, size_t *value_len) {
  if (!hit || !name || !name_len || !value || !value_len)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (!hit->valid)
    return NETSTASH_E_ILLEGAL_STATE;
  if (i >= hit->nf)
    return NETSTASH_E_NOT_FOUND;
  *name = hit->f[i].name;
  *name_len = hit->f[i].name_len;
  *value = hit->f[i].value;
  *value_len = hit->f[i].value_len;
  return NETSTASH_OK;
}

/* The body view, fetched on first use (one store read, no allocation). The
 * hit is used by one thread at a time: the lazy fill is not shared. */
static int body_of(const netstash_preload_hit *chit) {
  netstash_preload_hit *hit = (netstash_preload_hit *)chit;
  if (!hit || !hit->valid)
    return 0;
  if (hit->remote)
    return 1;
  if (!hit->body_loaded) {
    if (ns_store_body_get(hit->r, hit->h.body_hash, &hit->h.body) != NETSTASH_OK)
      return 0;
    hit->body_loaded = 1;
  }
  return 1;
}

uint64_t netstash_preload_hit_body_size(const netstash_preload_hit *hit) {
  return hit && hit->valid ? hit->h.entry.size : 0; /* verified equal to the body's */
}

uint32_t netstash_preload_hit_chunk_count(const netstash_preload_hit *hit) {
  if (hit && (hit->remote || hit->decoded)) /* the answer is one piece */
    return hit->valid && hit->h.entry.size ? 1 : 0;
  return body_of(hit) ? hit->h.body.nchunks : 0;
}

netstash_error netstash_preload_hit_chunk(const netstash_preload_hit *hit, uint32_t i,
                                          const uint8_t **data, size_t *len) {
  if (!hit || !data || !len)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (!hit->valid)
    return NETSTASH_E_ILLEGAL_STATE;
  if (hit->remote || hit->decoded) {
    if (i != 0 || !hit->h.entry.size)
      return NETSTASH_E_NOT_FOUND;
    *data = hit->decoded ? hit->dec.data : hit->body;
    *len = (size_t)hit->h.entry.size;
    return NETSTASH_OK;
  }
  if (!body_of(hit))
    return NETSTASH_E_STORE_CORRUPT;
  if (i >= hit->h.body.nchunks)
    return NETSTASH_E_NOT_FOUND;
  if (hit->h.body.coding != NS_CODING_IDENTITY)
    return NETSTASH_E_STORE_CORRUPT; /* the warmer stores identity bodies only */
  return ns_store_body_chunk(&hit->h.body, i, data, len);
}

int ns_preload_hit_body_key(const netstash_preload_hit *hit, uint8_t *key) {
  if (!hit || !key || hit->remote || hit->decoded || !body_of(hit) ||
      hit->h.body.coding != NS_CODING_IDENTITY || hit->h.body.recompressed)
    return 0;
  memcpy(key, hit->h.body_hash, NS_STORE_HASH_LEN);
  return 1;
}

const char *netstash_preload_hit_manifest_id(const netstash_preload_hit *hit) {
  return hit && hit->valid ? hit->id : NULL;
}

uint64_t netstash_preload_hit_manifest_version(const netstash_preload_hit *hit) {
  return hit && hit->valid ? hit->h.version : 0;
}

netstash_error ns_preload_hit_keep(netstash_preload_hit *hit, size_t entries) {
  if (!hit || !entries || entries > 65536)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (hit->ces)
    return NETSTASH_E_ILLEGAL_STATE;
  hit->nces = entries;
  return NETSTASH_OK;
}

const char *ns_preload_hit_cache_reason(const netstash_preload_hit *hit, char *buf, size_t n) {
  if (!hit || !hit->valid || hit->remote)
    return NULL;
  if (hit->cache)
    return hit->ce->decision.reason;
  if (!buf || !n)
    return NULL;
  snprintf(buf, n, NS_PRELOAD_REASON_FMT, (int)strlen(hit->id), hit->id,
           (unsigned long long)hit->h.version, "");
  return buf;
}
