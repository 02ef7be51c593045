/*
 * nst-evilserver — a hostile HTTP server on 127.0.0.1 for the hostile-peer
 * tests (tests/integration/hostile_test.c; netstash issue 9), started by
 * nst_evilserver_start(). One thread per connection, blocking I/O.
 *
 * Usage: nst-evilserver MODE PORT [CERT KEY]
 *   http   plain HTTP/1.1, the h1 paths below
 *   tls    TLS 1.3 only (CERT/KEY), ALPN h2 (the /h2/ paths below) or
 *          http/1.1 (the h1 paths)
 *   tls12  TLS 1.2 only (min = max = 1.2), ALPN http/1.1: the h1 paths
 *   tls10  TLS 1.0 only (security level 0, so OpenSSL 3 speaks it at all)
 * Prints "ready\n" once it listens.
 *
 * Counters: every path has its own hit counter (this request included),
 * written as n=K into bodies that say so; a query string is ignored.
 *
 * HTTP/1.1 paths (complete answers keep the connection alive):
 *   /ok                 200 "hello" (Content-Length: 5)
 *   /drop-next          200 "hello", keep-alive; the next request on that
 *                       connection gets no answer: the connection is closed
 *   /n/NAME             200 "NAME n=K", Cache-Control: max-age=600
 *   /status-bad/I       malformed status line I (0..6): "HTTP/1.1 2OO OK",
 *                       "HTTP/1.1 999 Nope" (invalid, not malformed: a
 *                       client takes it as a 5xx), "HTTP/1.1 -20 OK",
 *                       "HTTP/1.1 20 OK", "HTTP/9.9 200 OK", binary garbage,
 *                       nothing at all (close); then a 5-byte body, close
 *   /header-bad/I       status 200 and a malformed header I (0..5): obs-fold
 *                       continuation line, NUL byte in a value, two different
 *                       Content-Lengths, Content-Length "abc", Content-Length
 *                       "-5", a field name with a space; then "hello", close
 *   /huge-header        one 1 MiB header line ("X-Big: aaaa...")
 *   /big-headers        24 header lines of 60,000 bytes (1.4 MB in all, each
 *                       under libcurl's 100 KB line limit)
 *   /endless-headers    "X-Endless-N: ..." lines until the client goes away
 *   /cl-short           Content-Length: 1000, sends 10 bytes, closes
 *   /cl-long            Content-Length: 5, sends "hello" followed by a whole
 *                       smuggled response ("HTTP/1.1 200 OK ... smuggled"),
 *                       connection kept open
 *   /chunk-bad/I        chunked with invalid chunking I (0..3): size "zz",
 *                       size of 20 hex digits, data longer than its size,
 *                       a negative size "-5"; then close
 *   /chunk-endless      1 KiB chunks forever
 *   /chunk-tiny         1-byte chunks forever ("1\r\na\r\n")
 *   /trunc-cache        Cache-Control: max-age=600, Content-Length: 10000;
 *                       the first request gets 5000 bytes and a close, later
 *                       ones the whole body (10,000 x 'T')
 *   /gzip-bomb          Content-Encoding: gzip: 64 MiB of zeros (64 KB on the
 *                       wire), Cache-Control: max-age=600
 *   /gzip2-bomb         Content-Encoding: gzip, gzip: the above gzipped again
 *   /br-bomb            Content-Encoding: br: 64 MiB of zeros, 16 MiB window
 *   /slow-head          "HTTP/1.1 200 OK\r\nX-Slow: " then one byte every
 *                       200 ms, forever (slowloris head)
 *   /slow-body          Content-Length: 1000000, one byte every 200 ms
 *   /cookies/N/P        N Set-Cookie lines "P<i>=v; Path=/" (N <= 20000)
 *   /cookie-good        Set-Cookie good1..good5=keep; Path=/; Secure; Max-Age=3600
 *   /altsvc-other/PORT  Alt-Svc naming other hosts the harness certificate
 *                       does not cover: h3="evil.invalid:PORT",
 *                       h3="internal.lan:PORT" (ma=60)
 *   /altsvc-covered/PORT  Alt-Svc: h3="quic.example.test:PORT"; ma=60 (another
 *                       host the certificate covers, *.example.test)
 *   /altsvc-same/PORT   Alt-Svc: h3=":PORT"; ma=60 (same host: the control)
 *   /vary-star          max-age=600, Vary: *, body "vary-star n=K"
 *   /vary-lang          max-age=600, Vary: Accept-Language, body
 *                       "lang=<Accept-Language> n=K"
 *   /cl-poison/a        max-age=600, Content-Location: /cl-poison/b, body
 *                       "poison n=K"
 *   /cl-poison/abs      max-age=600, Content-Location:
 *                       http://other.example.test/cl-poison/b, "poison n=K"
 *   /cl-poison/b        max-age=600, body "real b n=K"
 *   /redirect-self      302 to itself
 *   /redirect-ab/a, /b  302 to each other
 *   /redirect-perm-self 301 to itself (cacheable by default)
 *   /fold-redirect      302 to /fold-first, whose first header line is folded
 *                       (a continuation of nothing: libcurl 7.88 read the
 *                       previous response's freed header there)
 *   anything else       404
 *
 * HTTP/2 paths (mode tls, ALPN h2; hand-made frames, the request's HPACK is
 * decoded with nghttp2's inflater). Every misbehaviour closes the connection
 * after it; /h2/ok keeps it open for further requests:
 *   /h2/ok              200 "hello" (content-length: 5)
 *   /h2/drop-next       as /h2/ok; the next request on that connection gets
 *                       no answer: the connection is closed (no GOAWAY)
 *   /h2/frame-too-big   HEADERS, then one DATA frame of 20,000 bytes (above
 *                       the default SETTINGS_MAX_FRAME_SIZE of 16,384)
 *   /h2/data-stream0    HEADERS, then DATA on stream 0
 *   /h2/headers-idle    HEADERS + 5 bytes of DATA, then HEADERS on stream 3,
 *                       which the client never opened
 *   /h2/headers-again   HEADERS + 5 bytes of DATA, then a second HEADERS
 *                       block without END_STREAM on the same stream
 *   /h2/headers-closed  200 "hello" (complete); the next request on that
 *                       connection first gets a HEADERS frame (:status 500)
 *                       on this stream, which has ended, then its own answer
 *   /h2/bad-hpack       a HEADERS block that is not valid HPACK (index 0 and
 *                       an index past the table)
 *   /h2/settings-flood  100,000 SETTINGS frames (not reading the ACKs), then
 *                       a complete 200 "hello" answer
 *   /h2/goaway-mid-body HEADERS (no content-length), 16 KiB of DATA,
 *                       GOAWAY(last stream 1, NO_ERROR), close
 *   /h2/rst-mid-body    HEADERS + 5 bytes, RST_STREAM(INTERNAL_ERROR)
 *   /h2/cl-mismatch     content-length: 100, DATA of 10 bytes with END_STREAM
 *   /altsvc-{other,covered,same}/PORT  as over HTTP/1.1 (Alt-Svc in HEADERS)
 *   anything else       404
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <brotli/encode.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <zlib.h>

#define HEAD_MAX (64 * 1024)
#define BOMB_SIZE (64u << 20)

static SSL_CTX *g_ssl;

typedef struct conn {
  int fd;
  int drop_next; /* /drop-next was answered: close at the next request */
  uint32_t closed_sid; /* /h2/headers-closed answered on it: HEADERS there again */
  SSL *ssl;
  char buf[HEAD_MAX + 1];
  size_t len;
} conn;

/* ------------------------------------------------------------ counters */

static pthread_mutex_t g_hits_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
  char path[128];
  unsigned long n;
} g_hits[256];

static unsigned long hit(const char *path) {
  unsigned long n = 0;
  int i;
  pthread_mutex_lock(&g_hits_lock);
  for (i = 0; i < 256; i++) {
    if (g_hits[i].path[0] == '\0') {
      snprintf(g_hits[i].path, sizeof(g_hits[i].path), "%s", path);
      n = g_hits[i].n = 1;
      break;
    }
    if (strncmp(g_hits[i].path, path, sizeof(g_hits[i].path) - 1) == 0) {
      n = ++g_hits[i].n;
      break;
    }
  }
  pthread_mutex_unlock(&g_hits_lock);
  return n;
}

/* ------------------------------------------------------------ I/O */

static int send_all(conn *c, const void *data, size_t len) {
  const char *p = data;
  while (len > 0) {
    ssize_t n;
    if (c->ssl != NULL) {
      int r = SSL_write(c->ssl, p, len > INT32_MAX ? INT32_MAX : (int)len);
      if (r <= 0)
        return -1;
      n = r;
    } else {
      n = send(c->fd, p, len, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0)
        return -1;
    }
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

static int sends(conn *c, const char *s) { return send_all(c, s, strlen(s)); }

static ssize_t recv_some(conn *c, void *dst, size_t cap) {
  ssize_t n;
  if (c->ssl != NULL) {
    int r = SSL_read(c->ssl, dst, cap > INT32_MAX ? INT32_MAX : (int)cap);
    return r > 0 ? r : (SSL_get_error(c->ssl, r) == SSL_ERROR_ZERO_RETURN ? 0 : -1);
  }
  do {
    n = recv(c->fd, dst, cap, 0);
  } while (n < 0 && errno == EINTR);
  return n;
}

static ssize_t fill(conn *c) {
  ssize_t n;
  if (c->len >= HEAD_MAX)
    return -1;
  n = recv_some(c, c->buf + c->len, HEAD_MAX - c->len);
  if (n > 0)
    c->len += (size_t)n;
  return n;
}

static void consume(conn *c, size_t n) {
  memmove(c->buf, c->buf + n, c->len - n);
  c->len -= n;
}

static int read_exact(conn *c, uint8_t *dst, size_t n) {
  while (n > 0) {
    size_t take;
    if (c->len == 0 && fill(c) <= 0)
      return -1;
    take = c->len < n ? c->len : n;
    if (dst != NULL) {
      memcpy(dst, c->buf, take);
      dst += take;
    }
    consume(c, take);
    n -= take;
  }
  return 0;
}

static void msleep(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* ------------------------------------------------------------ bombs */

static pthread_once_t g_bomb_once = PTHREAD_ONCE_INIT;
static uint8_t *g_gz, *g_gz2, *g_br;
static size_t g_gz_len, g_gz2_len, g_br_len;

static uint8_t *gzip_of(const uint8_t *in, size_t in_len, size_t *out_len) {
  z_stream zs;
  uLong cap = compressBound((uLong)in_len) + 64;
  uint8_t *out = malloc(cap);
  memset(&zs, 0, sizeof(zs));
  if (out == NULL || deflateInit2(&zs, 9, Z_DEFLATED, 16 + 15, 9, Z_DEFAULT_STRATEGY) != Z_OK) {
    free(out);
    return NULL;
  }
  zs.next_in = (Bytef *)(uintptr_t)in;
  zs.avail_in = (uInt)in_len;
  zs.next_out = out;
  zs.avail_out = (uInt)cap;
  if (deflate(&zs, Z_FINISH) != Z_STREAM_END) {
    deflateEnd(&zs);
    free(out);
    return NULL;
  }
  *out_len = zs.total_out;
  deflateEnd(&zs);
  return out;
}

static void make_bombs(void) {
  uint8_t *zeros = calloc(1, BOMB_SIZE);
  size_t cap = BrotliEncoderMaxCompressedSize(BOMB_SIZE);
  if (zeros == NULL)
    return;
  g_gz = gzip_of(zeros, BOMB_SIZE, &g_gz_len);
  if (g_gz != NULL)
    g_gz2 = gzip_of(g_gz, g_gz_len, &g_gz2_len);
  g_br = malloc(cap);
  g_br_len = cap;
  /* the largest standard window (RFC 7932 §9.1: 16 MiB), the worst case
   * for the decoder's ring buffer */
  if (g_br != NULL && !BrotliEncoderCompress(5, 24, BROTLI_MODE_GENERIC, BOMB_SIZE, zeros,
                                              &g_br_len, g_br)) {
    free(g_br);
    g_br = NULL;
  }
  free(zeros);
  fprintf(stderr, "bombs: gzip %zu, gzip2 %zu, br %zu bytes\n", g_gz_len, g_gz2_len, g_br_len);
}

/* ------------------------------------------------------------ HTTP/1.1 */

typedef struct request {
  char path[1024];
  char lang[64];
  int head;
  size_t head_len;
} request;

/* 1 request, 0 EOF, -1 error */
static int read_request(conn *c, request *rq) {
  char *end, *line, *next;
  char method[16], target[1024];
  size_t i;
  memset(rq, 0, sizeof(*rq));
  while ((end = memmem(c->buf, c->len, "\r\n\r\n", 4)) == NULL) {
    ssize_t n = fill(c);
    if (n == 0 && c->len == 0)
      return 0;
    if (n <= 0)
      return -1;
  }
  rq->head_len = (size_t)(end - c->buf) + 4;
  c->buf[rq->head_len - 1] = '\0'; /* the last LF: no longer needed */
  if (sscanf(c->buf, "%15s %1023s", method, target) != 2)
    return -1;
  rq->head = strcmp(method, "HEAD") == 0;
  for (i = 0; target[i] != '\0' && target[i] != '?' && i < sizeof(rq->path) - 1; i++)
    rq->path[i] = target[i];
  rq->path[i] = '\0';
  line = memchr(c->buf, '\n', rq->head_len);
  while (line != NULL && (next = strchr(line + 1, '\n')) != NULL) {
    line++;
    if (strncasecmp(line, "Accept-Language:", 16) == 0) {
      const char *v = line + 16;
      size_t n;
      while (*v == ' ')
        v++;
      n = strcspn(v, "\r\n");
      snprintf(rq->lang, sizeof(rq->lang), "%.*s", (int)(n < 63 ? n : 63), v);
    }
    line = next;
  }
  consume(c, rq->head_len);
  return 1;
}

/* A complete response; extra: header lines, each ending in CRLF. */
static int respond(conn *c, const request *rq, int status, const char *extra, const void *body,
                   size_t len) {
  char head[2048];
  int n = snprintf(head, sizeof(head),
                   "HTTP/1.1 %d %s\r\nServer: nst-evilserver\r\n%sContent-Length: %zu\r\n\r\n",
                   status, status == 200 ? "OK" : "Other", extra, len);
  if (n < 0 || (size_t)n >= sizeof(head) || send_all(c, head, (size_t)n) != 0)
    return 0;
  if (!rq->head && len > 0 && send_all(c, body, len) != 0)
    return 0;
  return 1;
}

/* The Alt-Svc value of /altsvc-KIND/PORT (1), or 0 for another path. */
static int altsvc_value(const char *path, char *v, size_t cap) {
  static const char *const prefixes[] = {"/altsvc-other/", "/altsvc-covered/", "/altsvc-same/"};
  for (int i = 0; i < 3; i++) {
    size_t pl = strlen(prefixes[i]);
    long port;
    if (strncmp(path, prefixes[i], pl) != 0)
      continue;
    port = strtol(path + pl, NULL, 10);
    if (i == 0)
      snprintf(v, cap, "h3=\"evil.invalid:%ld\"; ma=60, h3=\"internal.lan:%ld\"; ma=60", port,
               port);
    else if (i == 1)
      snprintf(v, cap, "h3=\"quic.example.test:%ld\"; ma=60", port);
    else
      snprintf(v, cap, "h3=\":%ld\"; ma=60", port);
    return 1;
  }
  return 0;
}

static int respond_str(conn *c, const request *rq, int status, const char *extra,
                       const char *body) {
  return respond(c, rq, status, extra, body, strlen(body));
}

/* which: 0 gzip, 1 gzip inside gzip, 2 brotli */
static int send_bomb(conn *c, const request *rq, int which) {
  static const char *const codings[] = {"gzip", "gzip, gzip", "br"};
  const uint8_t *b;
  size_t n;
  char extra[256];
  pthread_once(&g_bomb_once, make_bombs);
  b = which == 0 ? g_gz : which == 1 ? g_gz2 : g_br;
  n = which == 0 ? g_gz_len : which == 1 ? g_gz2_len : g_br_len;
  if (b == NULL)
    return respond_str(c, rq, 500, "", "bomb unavailable\n");
  snprintf(extra, sizeof(extra),
           "Content-Type: text/plain\r\nContent-Encoding: %s\r\nCache-Control: max-age=600\r\n",
           codings[which]);
  return respond(c, rq, 200, extra, b, n);
}

static const char *const bad_status[] = {
    "HTTP/1.1 2OO OK\r\n", "HTTP/1.1 999 Nope\r\n", "HTTP/1.1 -20 OK\r\n", "HTTP/1.1 20 OK\r\n",
    "HTTP/9.9 200 OK\r\n", "\x01\x02\xfe\xff garbage \x7f\r\n", ""};

static const char *const bad_header[] = {
    "X-A: 1\r\n  folded continuation\r\nContent-Length: 5\r\n",
    NULL, /* hdr_nul: sent with its NUL */
    "Content-Length: 5\r\nContent-Length: 7\r\n",
    "Content-Length: abc\r\n",
    "Content-Length: -5\r\n",
    "Bad Name: x\r\nContent-Length: 5\r\n"};
static const char hdr_nul[] = "X-A: a\0b\r\nContent-Length: 5\r\n";

static const char *const bad_chunk[] = {
    "zz\r\nhello\r\n0\r\n\r\n",
    "fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    "2\r\nhello\r\n0\r\n\r\n",
    "-5\r\nhello\r\n0\r\n\r\n"};

/* Handles one request; 1 keeps the connection. */
static int handle_h1(conn *c, const request *rq) {
  const char *p = rq->path;
  char body[512], extra[512];
  unsigned long k = hit(p);
  long idx;
  char *end;

  if (strcmp(p, "/ok") == 0)
    return respond_str(c, rq, 200, "Content-Type: text/plain\r\n", "hello");
  if (strcmp(p, "/drop-next") == 0) {
    c->drop_next = 1;
    return respond_str(c, rq, 200, "Content-Type: text/plain\r\n", "hello");
  }
  if (strncmp(p, "/n/", 3) == 0) {
    snprintf(body, sizeof(body), "%.100s n=%lu", p + 3, k);
    return respond_str(c, rq, 200, "Content-Type: text/plain\r\nCache-Control: max-age=600\r\n",
                       body);
  }
  if (strncmp(p, "/status-bad/", 12) == 0) {
    idx = strtol(p + 12, &end, 10);
    if (*end == '\0' && idx >= 0 && idx < (long)(sizeof(bad_status) / sizeof(bad_status[0]))) {
      if (bad_status[idx][0] != '\0' && sends(c, bad_status[idx]) == 0)
        sends(c, "Content-Length: 5\r\n\r\nhello");
      return 0;
    }
  }
  if (strncmp(p, "/header-bad/", 12) == 0) {
    idx = strtol(p + 12, &end, 10);
    if (*end == '\0' && idx >= 0 && idx < (long)(sizeof(bad_header) / sizeof(bad_header[0]))) {
      if (sends(c, "HTTP/1.1 200 OK\r\nServer: nst-evilserver\r\n") == 0 &&
          (idx == 1 ? send_all(c, hdr_nul, sizeof(hdr_nul) - 1)
                    : send_all(c, bad_header[idx], strlen(bad_header[idx]))) == 0)
        sends(c, idx == 2 ? "Connection: close\r\n\r\nhello12" /* the second length */
                          : "Connection: close\r\n\r\nhello");
      return 0;
    }
  }
  if (strcmp(p, "/huge-header") == 0 || strcmp(p, "/big-headers") == 0) {
    int huge = p[1] == 'h', i;
    size_t line = huge ? (1u << 20) : 60000;
    char *v = malloc(line);
    if (v == NULL)
      return 0;
    memset(v, 'a', line);
    if (sends(c, "HTTP/1.1 200 OK\r\nServer: nst-evilserver\r\n") == 0) {
      for (i = 0; i < (huge ? 1 : 24); i++) {
        snprintf(extra, sizeof(extra), "X-Big-%d: ", i);
        if (sends(c, extra) != 0 || send_all(c, v, line) != 0 || sends(c, "\r\n") != 0)
          break;
      }
      if (i == (huge ? 1 : 24))
        sends(c, "Content-Length: 5\r\n\r\nhello");
    }
    free(v);
    return 0;
  }
  if (strcmp(p, "/endless-headers") == 0) {
    unsigned long i;
    if (sends(c, "HTTP/1.1 200 OK\r\nServer: nst-evilserver\r\n") != 0)
      return 0;
    for (i = 0;; i++) {
      int n = snprintf(extra, sizeof(extra), "X-Endless-%lu: vvvvvvvvvvvvvvvvvvvvvvvvvvvvvv\r\n", i);
      if (send_all(c, extra, (size_t)n) != 0)
        return 0;
    }
  }
  if (strcmp(p, "/cl-short") == 0) {
    sends(c, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789");
    return 0;
  }
  if (strcmp(p, "/cl-long") == 0) {
    /* keep-alive: the smuggled bytes wait for a client that reuses the
     * connection and takes them as the next response */
    return sends(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
                    "HTTP/1.1 200 OK\r\nContent-Length: 8\r\nCache-Control: max-age=600\r\n"
                    "\r\nsmuggled") == 0;
  }
  if (strncmp(p, "/chunk-bad/", 11) == 0) {
    idx = strtol(p + 11, &end, 10);
    if (*end == '\0' && idx >= 0 && idx < (long)(sizeof(bad_chunk) / sizeof(bad_chunk[0]))) {
      if (sends(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n") == 0)
        sends(c, bad_chunk[idx]);
      return 0;
    }
  }
  if (strcmp(p, "/chunk-endless") == 0 || strcmp(p, "/chunk-tiny") == 0) {
    int tiny = p[7] == 't';
    char chunk[1024 + 16];
    size_t n = tiny ? 6 : 1024 + 7;
    if (tiny) {
      memcpy(chunk, "1\r\na\r\n", 6);
    } else {
      memcpy(chunk, "400\r\n", 5);
      memset(chunk + 5, 'c', 1024);
      memcpy(chunk + 5 + 1024, "\r\n", 2);
    }
    if (sends(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                 "Cache-Control: max-age=600\r\n\r\n") != 0)
      return 0;
    if (tiny) { /* batch the 6-byte chunks, else this is a syscall per byte */
      char many[6 * 1024];
      size_t i;
      for (i = 0; i < sizeof(many); i += 6)
        memcpy(many + i, chunk, 6);
      while (send_all(c, many, sizeof(many)) == 0)
        ;
      return 0;
    }
    while (send_all(c, chunk, n) == 0)
      ;
    return 0;
  }
  if (strcmp(p, "/trunc-cache") == 0) {
    static char tb[10000];
    memset(tb, 'T', sizeof(tb));
    if (k == 1) {
      if (sends(c, "HTTP/1.1 200 OK\r\nCache-Control: max-age=600\r\nETag: \"t1\"\r\n"
                   "Content-Length: 10000\r\n\r\n") == 0)
        send_all(c, tb, 5000);
      return 0;
    }
    return respond(c, rq, 200, "Cache-Control: max-age=600\r\nETag: \"t1\"\r\n", tb, sizeof(tb));
  }
  if (strcmp(p, "/gzip-bomb") == 0)
    return send_bomb(c, rq, 0);
  if (strcmp(p, "/gzip2-bomb") == 0)
    return send_bomb(c, rq, 1);
  if (strcmp(p, "/br-bomb") == 0)
    return send_bomb(c, rq, 2);
  if (strcmp(p, "/slow-head") == 0 || strcmp(p, "/slow-body") == 0) {
    int head = p[6] == 'h';
    if (sends(c, head ? "HTTP/1.1 200 OK\r\nX-Slow: "
                      : "HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n") != 0)
      return 0;
    for (;;) {
      msleep(200);
      if (sends(c, "s") != 0)
        return 0;
    }
  }
  if (strncmp(p, "/cookies/", 9) == 0) {
    char prefix[32];
    long n = strtol(p + 9, &end, 10), i;
    size_t cap = 0, len = 0;
    char *all = NULL;
    if (*end != '/' || n < 0 || n > 20000 || sscanf(end + 1, "%31[A-Za-z0-9]", prefix) != 1)
      return respond_str(c, rq, 400, "", "bad\n");
    cap = (size_t)n * 64 + 1;
    all = malloc(cap);
    if (all == NULL)
      return 0;
    for (i = 0; i < n; i++)
      len += (size_t)snprintf(all + len, cap - len, "Set-Cookie: %s%ld=v; Path=/\r\n", prefix, i);
    if (sends(c, "HTTP/1.1 200 OK\r\nServer: nst-evilserver\r\n") == 0 &&
        send_all(c, all, len) == 0)
      sends(c, "Content-Length: 8\r\n\r\ncookies\n");
    free(all);
    return 1;
  }
  if (strcmp(p, "/cookie-good") == 0)
    return respond_str(c, rq, 200,
                       "Set-Cookie: good1=keep; Path=/; Secure; Max-Age=3600\r\n"
                       "Set-Cookie: good2=keep; Path=/; Secure; Max-Age=3600\r\n"
                       "Set-Cookie: good3=keep; Path=/; Secure; Max-Age=3600\r\n"
                       "Set-Cookie: good4=keep; Path=/; Secure; Max-Age=3600\r\n"
                       "Set-Cookie: good5=keep; Path=/; Secure; Max-Age=3600\r\n",
                       "good\n");
  if (altsvc_value(p, extra + 9, sizeof(extra) - 11)) {
    memcpy(extra, "Alt-Svc: ", 9);
    strcat(extra, "\r\n");
    return respond_str(c, rq, 200, extra, "altsvc\n");
  }
  if (strcmp(p, "/vary-star") == 0) {
    snprintf(body, sizeof(body), "vary-star n=%lu", k);
    return respond_str(c, rq, 200, "Cache-Control: max-age=600\r\nVary: *\r\n", body);
  }
  if (strcmp(p, "/vary-lang") == 0) {
    snprintf(body, sizeof(body), "lang=%s n=%lu", rq->lang, k);
    return respond_str(c, rq, 200, "Cache-Control: max-age=600\r\nVary: Accept-Language\r\n",
                       body);
  }
  if (strcmp(p, "/cl-poison/a") == 0 || strcmp(p, "/cl-poison/abs") == 0) {
    snprintf(body, sizeof(body), "poison n=%lu", k);
    return respond_str(c, rq, 200,
                       p[11] == 'a' && p[12] == 'b'
                           ? "Cache-Control: max-age=600\r\n"
                             "Content-Location: http://other.example.test/cl-poison/b\r\n"
                           : "Cache-Control: max-age=600\r\nContent-Location: /cl-poison/b\r\n",
                       body);
  }
  if (strcmp(p, "/cl-poison/b") == 0) {
    snprintf(body, sizeof(body), "real b n=%lu", k);
    return respond_str(c, rq, 200, "Cache-Control: max-age=600\r\n", body);
  }
  if (strcmp(p, "/redirect-self") == 0)
    return respond_str(c, rq, 302, "Location: /redirect-self\r\n", "again\n");
  if (strcmp(p, "/redirect-ab/a") == 0)
    return respond_str(c, rq, 302, "Location: /redirect-ab/b\r\n", "to b\n");
  if (strcmp(p, "/redirect-ab/b") == 0)
    return respond_str(c, rq, 302, "Location: /redirect-ab/a\r\n", "to a\n");
  if (strcmp(p, "/redirect-perm-self") == 0)
    return respond_str(c, rq, 301, "Location: /redirect-perm-self\r\n", "again\n");
  if (strcmp(p, "/fold-redirect") == 0)
    return respond_str(c, rq, 302, "Location: /fold-first\r\n", "to the folded one\n");
  if (strcmp(p, "/fold-first") == 0) {
    /* the first header line is a continuation of nothing (obs-fold) */
    sends(c, "HTTP/1.1 200 OK\r\n folded: first\r\nContent-Length: 5\r\n"
             "Connection: close\r\n\r\nhello");
    return 0;
  }
  return respond_str(c, rq, 404, "", "not found\n");
}

static void serve_h1(conn *c) {
  for (;;) {
    request rq;
    if (read_request(c, &rq) <= 0 || c->drop_next || !handle_h1(c, &rq))
      return;
  }
}

/* ------------------------------------------------------------ HTTP/2 */

enum { F_DATA = 0, F_HEADERS = 1, F_RST = 3, F_SETTINGS = 4, F_PING = 6, F_GOAWAY = 7,
       F_CONT = 9 };

static int frame(conn *c, int type, int flags, uint32_t stream, const void *payload, size_t len) {
  uint8_t h[9];
  h[0] = (uint8_t)(len >> 16);
  h[1] = (uint8_t)(len >> 8);
  h[2] = (uint8_t)len;
  h[3] = (uint8_t)type;
  h[4] = (uint8_t)flags;
  h[5] = (uint8_t)(stream >> 24);
  h[6] = (uint8_t)(stream >> 16);
  h[7] = (uint8_t)(stream >> 8);
  h[8] = (uint8_t)stream;
  if (send_all(c, h, 9) != 0)
    return -1;
  return len ? send_all(c, payload, len) : 0;
}

/* HPACK literal field without indexing, new name, no Huffman (RFC 7541
 * §6.2.2); names and values shorter than 127 bytes. */
static size_t hpack_lit(uint8_t *out, const char *name, const char *value) {
  size_t nl = strlen(name), vl = strlen(value);
  out[0] = 0x00;
  out[1] = (uint8_t)nl;
  memcpy(out + 2, name, nl);
  out[2 + nl] = (uint8_t)vl;
  memcpy(out + 3 + nl, value, vl);
  return 3 + nl + vl;
}

/* HEADERS with :status 200 and an optional content-length. */
static int h2_head(conn *c, uint32_t stream, int status, long clen, int end_stream) {
  uint8_t b[256];
  char v[32];
  size_t n;
  snprintf(v, sizeof(v), "%d", status);
  n = hpack_lit(b, ":status", v);
  n += hpack_lit(b + n, "content-type", "text/plain");
  if (clen >= 0) {
    snprintf(v, sizeof(v), "%ld", clen);
    n += hpack_lit(b + n, "content-length", v);
  }
  return frame(c, F_HEADERS, 0x4 | (end_stream ? 0x1 : 0), stream, b, n);
}

/* Reads one frame; payload up to 16384 bytes (our SETTINGS_MAX_FRAME_SIZE). */
static int read_frame(conn *c, int *type, int *flags, uint32_t *stream, uint8_t *payload,
                      size_t *len) {
  uint8_t h[9];
  if (read_exact(c, h, 9) != 0)
    return -1;
  *len = ((size_t)h[0] << 16) | ((size_t)h[1] << 8) | h[2];
  *type = h[3];
  *flags = h[4];
  *stream = ((uint32_t)(h[5] & 0x7f) << 24) | ((uint32_t)h[6] << 16) | ((uint32_t)h[7] << 8) | h[8];
  if (*len > 16384)
    return -1;
  return read_exact(c, payload, *len);
}

/* Handles one request on stream sid; 1 keeps the connection. */
static int handle_h2(conn *c, uint32_t sid, const char *path) {
  static uint8_t data[20000];
  uint8_t b[64], b2[512];
  char v[160];
  hit(path);
  memset(data, 'd', sizeof(data));
  if (c->drop_next)
    return 0; /* close without an answer (no GOAWAY) */
  if (c->closed_sid != 0) { /* HEADERS on a stream that ended (RFC 9113 §5.1) */
    if (h2_head(c, c->closed_sid, 500, 5, 0) != 0)
      return 0;
    c->closed_sid = 0;
  }
  if (strcmp(path, "/h2/headers-closed") == 0) {
    c->closed_sid = sid;
    return h2_head(c, sid, 200, 5, 0) == 0 && frame(c, F_DATA, 0x1, sid, "hello", 5) == 0;
  }
  if (strcmp(path, "/h2/ok") == 0 || strcmp(path, "/h2/drop-next") == 0) {
    c->drop_next = path[4] == 'd';
    return h2_head(c, sid, 200, 5, 0) == 0 && frame(c, F_DATA, 0x1, sid, "hello", 5) == 0;
  }
  if (altsvc_value(path, v, sizeof(v))) {
    /* as the HTTP/1.1 paths, with the answer in one HEADERS block */
    size_t n = hpack_lit(b2, ":status", "200");
    n += hpack_lit(b2 + n, "content-length", "7");
    n += hpack_lit(b2 + n, "alt-svc", v);
    return frame(c, F_HEADERS, 0x4, sid, b2, n) == 0 &&
           frame(c, F_DATA, 0x1, sid, "altsvc\n", 7) == 0;
  }
  if (strcmp(path, "/h2/frame-too-big") == 0) {
    if (h2_head(c, sid, 200, 20000, 0) == 0)
      frame(c, F_DATA, 0x1, sid, data, 20000);
  } else if (strcmp(path, "/h2/data-stream0") == 0) {
    if (h2_head(c, sid, 200, 10, 0) == 0)
      frame(c, F_DATA, 0x1, 0, "0123456789", 10);
  } else if (strcmp(path, "/h2/headers-idle") == 0) {
    if (h2_head(c, sid, 200, 10, 0) == 0 && frame(c, F_DATA, 0, sid, "hello", 5) == 0)
      h2_head(c, sid + 2, 200, 5, 0);
  } else if (strcmp(path, "/h2/headers-again") == 0) {
    if (h2_head(c, sid, 200, 10, 0) == 0 && frame(c, F_DATA, 0, sid, "hello", 5) == 0)
      h2_head(c, sid, 200, 5, 0);
  } else if (strcmp(path, "/h2/bad-hpack") == 0) {
    static const uint8_t bad[] = {0x80, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x3f, 0xe1};
    frame(c, F_HEADERS, 0x4 | 0x1, sid, bad, sizeof(bad));
  } else if (strcmp(path, "/h2/settings-flood") == 0) {
    /* SETTINGS_MAX_CONCURRENT_STREAMS = 100, repeated; ACKs never read */
    static const uint8_t s[] = {0x00, 0x03, 0x00, 0x00, 0x00, 0x64};
    int i;
    for (i = 0; i < 100000; i++)
      if (frame(c, F_SETTINGS, 0, 0, s, sizeof(s)) != 0)
        return 0;
    return h2_head(c, sid, 200, 5, 0) == 0 && frame(c, F_DATA, 0x1, sid, "hello", 5) == 0;
  } else if (strcmp(path, "/h2/goaway-mid-body") == 0) {
    if (h2_head(c, sid, 200, -1, 0) == 0 && frame(c, F_DATA, 0, sid, data, 16384) == 0) {
      memset(b, 0, 8);
      b[3] = (uint8_t)sid; /* last stream id = this one; error NO_ERROR */
      frame(c, F_GOAWAY, 0, 0, b, 8);
    }
  } else if (strcmp(path, "/h2/rst-mid-body") == 0) {
    if (h2_head(c, sid, 200, -1, 0) == 0 && frame(c, F_DATA, 0, sid, "hello", 5) == 0) {
      static const uint8_t internal[] = {0, 0, 0, 2};
      frame(c, F_RST, 0, sid, internal, 4);
      msleep(100);
    }
  } else if (strcmp(path, "/h2/cl-mismatch") == 0) {
    if (h2_head(c, sid, 200, 100, 0) == 0)
      frame(c, F_DATA, 0x1, sid, "0123456789", 10);
  } else {
    return h2_head(c, sid, 404, 0, 1) == 0;
  }
  msleep(50); /* let the frames arrive before the FIN */
  return 0;
}

static void serve_h2(conn *c) {
  static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
  uint8_t *payload = malloc(16384), *block = malloc(65536);
  size_t block_len = 0;
  uint32_t block_sid = 0;
  nghttp2_hd_inflater *inf = NULL;
  char pbuf[24];

  if (payload == NULL || block == NULL || nghttp2_hd_inflate_new(&inf) != 0)
    goto done;
  if (read_exact(c, (uint8_t *)pbuf, 24) != 0 || memcmp(pbuf, preface, 24) != 0)
    goto done;
  if (frame(c, F_SETTINGS, 0, 0, NULL, 0) != 0)
    goto done;
  for (;;) {
    int type, flags;
    uint32_t sid;
    size_t len, off = 0, end;
    if (read_frame(c, &type, &flags, &sid, payload, &len) != 0)
      goto done;
    if (type == F_SETTINGS && !(flags & 0x1)) {
      if (frame(c, F_SETTINGS, 0x1, 0, NULL, 0) != 0)
        goto done;
      continue;
    }
    if (type == F_PING && !(flags & 0x1)) {
      if (frame(c, F_PING, 0x1, 0, payload, len) != 0)
        goto done;
      continue;
    }
    if (type == F_GOAWAY)
      goto done;
    if (type != F_HEADERS && type != F_CONT)
      continue;
    end = len;
    if (type == F_HEADERS) {
      if (flags & 0x8) { /* PADDED */
        if (len < 1 || payload[0] >= len)
          goto done;
        end = len - payload[0];
        off = 1;
      }
      if (flags & 0x20) /* PRIORITY */
        off += 5;
      if (off > end)
        goto done;
      block_len = 0;
      block_sid = sid;
    }
    if (block_len + (end - off) > 65536)
      goto done;
    memcpy(block + block_len, payload + off, end - off);
    block_len += end - off;
    if (flags & 0x4) { /* END_HEADERS: decode, answer */
      char path[1024] = "";
      uint8_t *in = block;
      size_t left = block_len;
      for (;;) {
        nghttp2_nv nv;
        int iflags = 0;
        ssize_t r = nghttp2_hd_inflate_hd2(inf, &nv, &iflags, in, left, 1);
        if (r < 0)
          goto done;
        in += r;
        left -= (size_t)r;
        if ((iflags & NGHTTP2_HD_INFLATE_EMIT) && nv.namelen == 5 &&
            memcmp(nv.name, ":path", 5) == 0) {
          size_t n = strcspn((const char *)nv.value, "?");
          snprintf(path, sizeof(path), "%.*s", (int)(n < nv.valuelen ? n : nv.valuelen),
                   (const char *)nv.value);
        }
        if (iflags & NGHTTP2_HD_INFLATE_FINAL) {
          nghttp2_hd_inflate_end_headers(inf);
          break;
        }
        if (r == 0 && !(iflags & NGHTTP2_HD_INFLATE_EMIT))
          goto done;
      }
      if (!handle_h2(c, block_sid, path))
        goto done;
    }
  }
done:
  nghttp2_hd_inflate_del(inf);
  free(payload);
  free(block);
}

/* ------------------------------------------------------------ main */

static void *serve(void *arg) {
  conn *c = arg;
  if (g_ssl != NULL) {
    const unsigned char *alpn = NULL;
    unsigned alpn_len = 0;
    c->ssl = SSL_new(g_ssl);
    if (c->ssl == NULL || SSL_set_fd(c->ssl, c->fd) != 1 || SSL_accept(c->ssl) != 1) {
      ERR_print_errors_fp(stderr);
      goto done;
    }
    SSL_get0_alpn_selected(c->ssl, &alpn, &alpn_len);
    if (alpn_len == 2 && memcmp(alpn, "h2", 2) == 0)
      serve_h2(c);
    else
      serve_h1(c);
    SSL_shutdown(c->ssl);
  } else {
    serve_h1(c);
  }
done:
  SSL_free(c->ssl);
  close(c->fd);
  free(c);
  return NULL;
}

static int alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned inlen, void *arg) {
  static const unsigned char both[] = "\x02h2\x08http/1.1", h1[] = "\x08http/1.1";
  int allow_h2 = *(const int *)arg;
  (void)ssl;
  if (SSL_select_next_proto((unsigned char **)out, outlen, allow_h2 ? both : h1,
                            allow_h2 ? sizeof(both) - 1 : sizeof(h1) - 1, in,
                            inlen) == OPENSSL_NPN_NEGOTIATED)
    return SSL_TLSEXT_ERR_OK;
  return SSL_TLSEXT_ERR_NOACK;
}

static int setup_tls(const char *mode, const char *cert, const char *key) {
  static int allow_h2;
  int v;
  g_ssl = SSL_CTX_new(TLS_server_method());
  if (g_ssl == NULL)
    return -1;
  if (strcmp(mode, "tls") == 0) {
    v = TLS1_3_VERSION;
    allow_h2 = 1;
  } else if (strcmp(mode, "tls12") == 0) {
    v = TLS1_2_VERSION;
  } else {
    v = TLS1_VERSION;
    SSL_CTX_set_security_level(g_ssl, 0);
    if (SSL_CTX_set_cipher_list(g_ssl, "DEFAULT:@SECLEVEL=0") != 1)
      return -1;
  }
  if (SSL_CTX_set_min_proto_version(g_ssl, v) != 1 ||
      SSL_CTX_set_max_proto_version(g_ssl, v) != 1 ||
      SSL_CTX_use_certificate_chain_file(g_ssl, cert) != 1 ||
      SSL_CTX_use_PrivateKey_file(g_ssl, key, SSL_FILETYPE_PEM) != 1)
    return -1;
  SSL_CTX_set_alpn_select_cb(g_ssl, alpn_cb, &allow_h2);
  return 0;
}

int main(int argc, char **argv) {
  struct sockaddr_in sa;
  int lfd, one = 1;
  long port;
  char *end;
  pthread_attr_t attr;

  if (argc < 3 || (strcmp(argv[1], "http") != 0 && argc != 5)) {
    fprintf(stderr, "usage: %s http|tls|tls12|tls10 PORT [CERT KEY]\n", argv[0]);
    return 2;
  }
  port = strtol(argv[2], &end, 10);
  if (*end != '\0' || port < 0 || port > 65535) {
    fprintf(stderr, "nst-evilserver: bad port '%s'\n", argv[2]);
    return 2;
  }
  if (strcmp(argv[1], "http") != 0) {
    if (strcmp(argv[1], "tls") != 0 && strcmp(argv[1], "tls12") != 0 &&
        strcmp(argv[1], "tls10") != 0) {
      fprintf(stderr, "nst-evilserver: unknown mode '%s'\n", argv[1]);
      return 2;
    }
    if (setup_tls(argv[1], argv[3], argv[4]) != 0) {
      fprintf(stderr, "nst-evilserver: TLS setup failed\n");
      ERR_print_errors_fp(stderr);
      return 1;
    }
  }
  signal(SIGPIPE, SIG_IGN);
  lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (lfd < 0) {
    perror("nst-evilserver: socket");
    return 1;
  }
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  memset(&sa, 0, sizeof(sa));
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(lfd, 1024) != 0) {
    fprintf(stderr, "nst-evilserver: cannot listen on 127.0.0.1:%ld: %s\n", port,
            strerror(errno));
    return 1;
  }
  printf("ready\n");
  fflush(stdout);

  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 512 * 1024);
  for (;;) {
    pthread_t t;
    conn *c;
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOMEM || errno == ENOBUFS)
        msleep(10);
      continue;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c = calloc(1, sizeof(*c));
    if (c == NULL) {
      close(fd);
      continue;
    }
    c->fd = fd;
    if (pthread_create(&t, &attr, serve, c) != 0) {
      close(fd);
      free(c);
    }
  }
}
