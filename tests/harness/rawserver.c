/*
 * nst-rawserver — a plain HTTP/1.1 server on 127.0.0.1 with fixed, partly
 * hostile behaviours, for tests (started by nst_rawserver_start()).
 *
 * Usage: nst-rawserver PORT
 * Prints "ready\n" on stdout once it listens. One thread per connection.
 *
 * Paths (a query string is ignored; HEAD gets headers only):
 *   /ok             200, "hello" (Content-Length: 5)
 *   /truncate       Content-Length: 100000, sends 50000 bytes, closes
 *   /chunked-trunc  chunked, three 1000-byte chunks, closes before the last
 *                   (zero-size) chunk
 *   /slow           Content-Length: 30, then 1 byte per second for 30 s
 *   /hang           reads the request and never answers (until the client
 *                   closes)
 *   /gzip-bad       Content-Encoding: gzip, correct Content-Length, body is a
 *                   gzip member header followed by garbage
 *   /status/NNN     status NNN (100..599 accepted; 1xx is answered as 400),
 *                   body "status NNN\n" (none for 204 and 304)
 *   /echo           body: the request head exactly as received, then the
 *                   request body (de-chunked)
 *   /hsts           200 with Strict-Transport-Security: max-age=3600
 *   /redirect/N     302 to /redirect/N-1; /redirect/0 is 200 "done\n"
 *   /count          body: requests this server has seen, this one included,
 *                   decimal, no newline
 *   anything else   404
 * All complete responses keep the connection alive (HTTP/1.1) unless the
 * request carries "Connection: close" or is HTTP/1.0 without keep-alive.
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
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "harness.h" /* nst_pattern */

#define HEAD_MAX (64 * 1024)
#define BODY_MAX (64u * 1024u * 1024u)

static atomic_ulong g_requests;

typedef struct conn {
  int fd;
  char buf[HEAD_MAX + 1];
  size_t len; /* bytes buffered (the current request head and what follows) */
} conn;

typedef struct request {
  char method[16];
  char target[2048];
  char path[2048];
  int minor; /* HTTP/1.minor */
  size_t head_len;
  int keep_alive;
  int head; /* HEAD method */
  int chunked;
  int expect_continue;
  long long content_length; /* -1 if absent */
  char *body;
  size_t body_len;
  char if_none_match[128];
  char accept_language[64];
  char accept_encoding[64];
  char range[64];
  char if_range[64];
} request;

static atomic_ulong g_cache_hits, g_sie_hits;

static int send_all(int fd, const void *data, size_t len) {
  const char *p = data;
  while (len > 0) {
    ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

/* Reads more bytes into c->buf; >0 read, 0 EOF, -1 error or full. */
static ssize_t fill(conn *c) {
  ssize_t n;
  if (c->len >= HEAD_MAX)
    return -1;
  do {
    n = recv(c->fd, c->buf + c->len, HEAD_MAX - c->len, 0);
  } while (n < 0 && errno == EINTR);
  if (n > 0)
    c->len += (size_t)n;
  return n;
}

static void consume(conn *c, size_t n) {
  memmove(c->buf, c->buf + n, c->len - n);
  c->len -= n;
}

/* Reads exactly n bytes (buffered first) into dst (may be NULL: discard). */
static int read_exact(conn *c, char *dst, size_t n) {
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

/* Reads one CRLF-terminated line (without the CRLF) into out. */
static int read_line(conn *c, char *out, size_t cap) {
  for (;;) {
    char *nl = memchr(c->buf, '\n', c->len);
    if (nl != NULL) {
      size_t n = (size_t)(nl - c->buf);
      size_t copy = n;
      if (copy > 0 && c->buf[copy - 1] == '\r')
        copy--;
      if (copy >= cap)
        copy = cap - 1;
      memcpy(out, c->buf, copy);
      out[copy] = '\0';
      consume(c, n + 1);
      return 0;
    }
    if (fill(c) <= 0)
      return -1;
  }
}

static int append_body(request *rq, conn *c, size_t n) {
  char *nb;
  if (rq->body_len + n > BODY_MAX)
    return -1;
  nb = realloc(rq->body, rq->body_len + n + 1);
  if (nb == NULL)
    return -1;
  rq->body = nb;
  if (read_exact(c, rq->body + rq->body_len, n) != 0)
    return -1;
  rq->body_len += n;
  return 0;
}

static int read_body(request *rq, conn *c) {
  if (rq->chunked) {
    char line[256];
    for (;;) {
      unsigned long long size;
      char *end;
      if (read_line(c, line, sizeof(line)) != 0)
        return -1;
      size = strtoull(line, &end, 16);
      if (end == line)
        return -1;
      if (size == 0)
        break;
      if (size > BODY_MAX || append_body(rq, c, (size_t)size) != 0)
        return -1;
      if (read_line(c, line, sizeof(line)) != 0) /* CRLF after the data */
        return -1;
    }
    /* trailers up to the empty line */
    do {
      if (read_line(c, line, sizeof(line)) != 0)
        return -1;
    } while (line[0] != '\0');
    return 0;
  }
  if (rq->content_length > 0) {
    if ((unsigned long long)rq->content_length > BODY_MAX)
      return -1;
    return append_body(rq, c, (size_t)rq->content_length);
  }
  return 0;
}

/* 1 request parsed, 0 clean EOF, -1 error */
static int read_request(conn *c, request *rq) {
  char *end, *line, *next;
  size_t i;

  memset(rq, 0, sizeof(*rq));
  rq->content_length = -1;
  for (;;) {
    end = memmem(c->buf, c->len, "\r\n\r\n", 4);
    if (end != NULL)
      break;
    {
      ssize_t n = fill(c);
      if (n == 0 && c->len == 0)
        return 0;
      if (n <= 0)
        return -1;
    }
  }
  rq->head_len = (size_t)(end - c->buf) + 4;

  /* request line */
  line = c->buf;
  next = memmem(line, rq->head_len, "\r\n", 2);
  {
    char version[16];
    char *rl = strndup(line, (size_t)(next - line));
    int ok;
    if (rl == NULL)
      return -1;
    /* field widths: sizeof method, target, version minus one */
    ok = sscanf(rl, "%15s %2047s %15s", rq->method, rq->target, version) == 3;
    free(rl);
    if (!ok || strncmp(version, "HTTP/1.", 7) != 0)
      return -1;
    rq->minor = version[7] == '0' ? 0 : 1;
  }
  rq->keep_alive = rq->minor >= 1;
  rq->head = strcmp(rq->method, "HEAD") == 0;
  for (i = 0; rq->target[i] != '\0' && rq->target[i] != '?' && i < sizeof(rq->path) - 1; i++)
    rq->path[i] = rq->target[i];
  rq->path[i] = '\0';

  /* header lines */
  line = next + 2;
  while (line < c->buf + rq->head_len - 2) {
    char name[64], value[512];
    const char *colon;
    size_t nlen, vlen;
    const char *v;
    next = memmem(line, (size_t)(c->buf + rq->head_len - line), "\r\n", 2);
    if (next == NULL)
      break;
    colon = memchr(line, ':', (size_t)(next - line));
    if (colon != NULL) {
      nlen = (size_t)(colon - line);
      v = colon + 1;
      while (v < next && (*v == ' ' || *v == '\t'))
        v++;
      vlen = (size_t)(next - v);
      if (nlen < sizeof(name) && vlen < sizeof(value)) {
        memcpy(name, line, nlen);
        name[nlen] = '\0';
        memcpy(value, v, vlen);
        value[vlen] = '\0';
        if (strcasecmp(name, "Content-Length") == 0)
          rq->content_length = strtoll(value, NULL, 10);
        else if (strcasecmp(name, "Transfer-Encoding") == 0 && strcasestr(value, "chunked"))
          rq->chunked = 1;
        else if (strcasecmp(name, "Connection") == 0 && strcasestr(value, "close"))
          rq->keep_alive = 0;
        else if (strcasecmp(name, "Connection") == 0 && strcasestr(value, "keep-alive"))
          rq->keep_alive = 1;
        else if (strcasecmp(name, "Expect") == 0 && strcasecmp(value, "100-continue") == 0)
          rq->expect_continue = 1;
        else if (strcasecmp(name, "If-None-Match") == 0)
          snprintf(rq->if_none_match, sizeof(rq->if_none_match), "%.127s", value);
        else if (strcasecmp(name, "Accept-Language") == 0)
          snprintf(rq->accept_language, sizeof(rq->accept_language), "%.63s", value);
        else if (strcasecmp(name, "Accept-Encoding") == 0)
          snprintf(rq->accept_encoding, sizeof(rq->accept_encoding), "%.63s", value);
        else if (strcasecmp(name, "Range") == 0)
          snprintf(rq->range, sizeof(rq->range), "%.63s", value);
        else if (strcasecmp(name, "If-Range") == 0)
          snprintf(rq->if_range, sizeof(rq->if_range), "%.63s", value);
      }
    }
    line = next + 2;
  }
  return 1;
}

static const char *reason(int status) {
  switch (status) {
  case 200: return "OK";
  case 201: return "Created";
  case 204: return "No Content";
  case 206: return "Partial Content";
  case 301: return "Moved Permanently";
  case 302: return "Found";
  case 303: return "See Other";
  case 304: return "Not Modified";
  case 307: return "Temporary Redirect";
  case 308: return "Permanent Redirect";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 408: return "Request Timeout";
  case 410: return "Gone";
  case 413: return "Content Too Large";
  case 418: return "I'm a teapot";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";
  case 504: return "Gateway Timeout";
  default: return "Status";
  }
}

/* Sends a complete response; extra is additional header lines (each ending
 * in CRLF) or "". body may be NULL for no body (and no Content-Length when
 * no_length is set). */
static int respond(conn *c, const request *rq, int status, const char *extra, const void *body,
                   size_t body_len, int no_length) {
  char head[1024], length[64] = "";
  int n;
  if (!no_length)
    snprintf(length, sizeof(length), "Content-Length: %zu\r\n", body_len);
  n = snprintf(head, sizeof(head), "HTTP/1.1 %d %s\r\nServer: nst-rawserver\r\n%s%s%s\r\n",
               status, reason(status), extra, length,
               rq->keep_alive ? "" : "Connection: close\r\n");
  if (n < 0 || (size_t)n >= sizeof(head))
    return -1;
  if (send_all(c->fd, head, (size_t)n) != 0)
    return -1;
  if (!rq->head && body != NULL && body_len > 0 && send_all(c->fd, body, body_len) != 0)
    return -1;
  return 0;
}

static void fill_pattern(char *p, size_t n) {
  size_t i;
  for (i = 0; i < n; i++)
    p[i] = (char)('a' + (i % 26));
}

/* Handles one request; returns 1 to keep the connection, 0 to close it. */
static int handle(conn *c, request *rq) {
  const char *p = rq->path;
  char body[256];
  int n;

  if (strcmp(p, "/ok") == 0)
    return respond(c, rq, 200, "Content-Type: text/plain\r\n", "hello", 5, 0) == 0;

  if (strcmp(p, "/truncate") == 0) {
    char *data = malloc(50000);
    if (data != NULL) {
      static const char h[] = "HTTP/1.1 200 OK\r\nServer: nst-rawserver\r\n"
                              "Content-Type: application/octet-stream\r\n"
                              "Content-Length: 100000\r\n\r\n";
      fill_pattern(data, 50000);
      if (send_all(c->fd, h, sizeof(h) - 1) == 0 && !rq->head)
        send_all(c->fd, data, 50000);
      free(data);
    }
    return 0;
  }

  if (strcmp(p, "/chunked-trunc") == 0) {
    static const char h[] = "HTTP/1.1 200 OK\r\nServer: nst-rawserver\r\n"
                            "Content-Type: text/plain\r\n"
                            "Transfer-Encoding: chunked\r\n\r\n";
    char chunk[1000 + 16];
    int i;
    if (send_all(c->fd, h, sizeof(h) - 1) != 0 || rq->head)
      return 0;
    memcpy(chunk, "3e8\r\n", 5); /* 1000 */
    fill_pattern(chunk + 5, 1000);
    memcpy(chunk + 1005, "\r\n", 2);
    for (i = 0; i < 3; i++) {
      if (send_all(c->fd, chunk, 1007) != 0)
        break;
    }
    return 0; /* no "0\r\n\r\n" */
  }

  if (strcmp(p, "/slow") == 0) {
    static const char h[] = "HTTP/1.1 200 OK\r\nServer: nst-rawserver\r\n"
                            "Content-Type: text/plain\r\nContent-Length: 30\r\n\r\n";
    int i;
    if (send_all(c->fd, h, sizeof(h) - 1) != 0)
      return 0;
    if (rq->head)
      return rq->keep_alive;
    for (i = 0; i < 30; i++) {
      sleep(1);
      if (send_all(c->fd, "s", 1) != 0)
        return 0;
    }
    return rq->keep_alive;
  }

  if (strcmp(p, "/hang") == 0) {
    char sink[4096];
    for (;;) {
      ssize_t r = recv(c->fd, sink, sizeof(sink), 0);
      if (r == 0 || (r < 0 && errno != EINTR))
        return 0;
    }
  }

  if (strcmp(p, "/gzip-bad") == 0) {
    /* a valid 10-byte gzip member header (RFC 1952), then garbage that is
     * not a deflate stream */
    static const unsigned char bad[] = {0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                                        0x03, 0xff, 0xff, 0xff, 0xff, 0xde, 0xad, 0xbe, 0xef,
                                        0x6e, 0x73, 0x74, 0x21, 0xff, 0xfe, 0xfd, 0xfc, 0x00,
                                        0x01, 0x02, 0x03, 0x04, 0x05};
    return respond(c, rq, 200, "Content-Type: text/plain\r\nContent-Encoding: gzip\r\n", bad,
                   sizeof(bad), 0) == 0 &&
           rq->keep_alive;
  }

  if (strncmp(p, "/status/", 8) == 0) {
    char *end;
    long st = strtol(p + 8, &end, 10);
    if (*end != '\0' || st < 100 || st > 599 || st < 200)
      st = 400;
    if (st == 204 || st == 304)
      return respond(c, rq, (int)st, "", NULL, 0, st == 204) == 0 && rq->keep_alive;
    n = snprintf(body, sizeof(body), "status %ld\n", st);
    return respond(c, rq, (int)st, "Content-Type: text/plain\r\n", body, (size_t)n, 0) == 0 &&
           rq->keep_alive;
  }

  /* /echo is answered in serve(), which keeps a copy of the head */

  if (strcmp(p, "/hsts") == 0)
    return respond(c, rq, 200,
                   "Content-Type: text/plain\r\nStrict-Transport-Security: max-age=3600\r\n",
                   "hsts\n", 5, 0) == 0 &&
           rq->keep_alive;

  if (strncmp(p, "/redirect/", 10) == 0) {
    char *end;
    long r = strtol(p + 10, &end, 10);
    if (*end != '\0' || r < 0 || p[10] == '\0') {
      n = snprintf(body, sizeof(body), "bad redirect count\n");
      return respond(c, rq, 400, "Content-Type: text/plain\r\n", body, (size_t)n, 0) == 0 &&
             rq->keep_alive;
    }
    if (r == 0)
      return respond(c, rq, 200, "Content-Type: text/plain\r\n", "done\n", 5, 0) == 0 &&
             rq->keep_alive;
    {
      char loc[128];
      snprintf(loc, sizeof(loc), "Location: /redirect/%ld\r\nContent-Type: text/plain\r\n", r - 1);
      n = snprintf(body, sizeof(body), "redirecting to /redirect/%ld\n", r - 1);
      return respond(c, rq, 302, loc, body, (size_t)n, 0) == 0 && rq->keep_alive;
    }
  }

  /* HTTP cache behaviours (tests/integration/cache_test.c). Every body
   * carries n=<count of /cache/ requests served>, so a test can tell a
   * network answer from a cached one. */
  if (strncmp(p, "/cache/", 7) == 0) {
    unsigned long k = atomic_fetch_add(&g_cache_hits, 1) + 1;
    char extra[256];
    const char *q = p + 7;
    if (strcmp(rq->method, "GET") != 0 && strcmp(rq->method, "HEAD") != 0) {
      n = snprintf(body, sizeof(body), "%s done n=%lu", rq->method, k);
      return respond(c, rq, 200, "Content-Type: text/plain\r\n", body, (size_t)n, 0) == 0 &&
             rq->keep_alive;
    }
    if (strncmp(q, "text/", 5) == 0 || strncmp(q, "opaque/", 7) == 0) {
      /* /cache/text/N: N bytes (at most 1 MiB) of nst_text(), text/html,
       * fresh for 600 s; /cache/opaque/N: the same under a content coding
       * nobody decodes (x-nst-opaque), passed through as sent */
      int opaque = q[0] == 'o';
      char *end;
      unsigned long len = strtoul(q + (opaque ? 7 : 5), &end, 10);
      unsigned char *t;
      int ok;
      if (*end || len > (1ul << 20) || !(t = malloc(len ? len : 1)))
        return respond(c, rq, 400, "Content-Type: text/plain\r\n", "bad size\n", 9, 0) == 0 &&
               rq->keep_alive;
      nst_text(t, 0, len);
      ok = respond(c, rq, 200,
                   opaque ? "Content-Type: text/html; charset=utf-8\r\n"
                            "Content-Encoding: x-nst-opaque\r\nCache-Control: max-age=600\r\n"
                          : "Content-Type: text/html; charset=utf-8\r\n"
                            "Cache-Control: max-age=600\r\n",
                   (const char *)t, len, 0) == 0;
      free(t);
      return ok && rq->keep_alive;
    }
    if (strncmp(q, "rangedlie/", 10) == 0) {
      /* a 206 whose body is a byte short of its Content-Range (a broken
       * server, or http-cache-tests' partial tests): never stored */
      static const char h[] = "Content-Type: text/plain\r\nETag: \"r1\"\r\n"
                              "Cache-Control: max-age=600\r\nContent-Range: bytes 0-9/20\r\n";
      return respond(c, rq, 206, h, "012345678", 9, 0) == 0 && rq->keep_alive;
    }
    if (strncmp(q, "ranged/", 7) == 0 || strncmp(q, "ranged0/", 8) == 0 ||
        strncmp(q, "rangedcap/", 10) == 0) {
      /* /cache/ranged/N: N bytes (at most 1 MiB) of nst_text(), ETag "r1",
       * fresh for 600 s (ranged0: max-age=0, and a 304 for If-None-Match
       * "r1"); one bytes range honoured — a 206, a 416 past the end, the
       * whole body when If-Range is not "r1" (rangedcap: at most 100 bytes
       * of a range, as some servers cap them); a range asked for without
       * Accept-Encoding: identity is a 400. X-N: the count of /cache/
       * requests served. */
      int stale = q[6] == '0', cap = q[6] == 'c';
      char *end, h[320];
      unsigned long len = strtoul(strchr(q, '/') + 1, &end, 10);
      unsigned long long a = 0, b = 0;
      unsigned char *t;
      int ok, st = 200, m = 0;
      if (*end || len == 0 || len > (1ul << 20) || !(t = malloc(len)))
        return respond(c, rq, 400, "Content-Type: text/plain\r\n", "bad size\n", 9, 0) == 0 &&
               rq->keep_alive;
      nst_text(t, 0, len);
      n = snprintf(h, sizeof(h),
                   "Content-Type: text/plain\r\nETag: \"r1\"\r\nCache-Control: max-age=%d\r\n"
                   "Accept-Ranges: bytes\r\nX-N: %lu\r\n",
                   stale ? 0 : 600, k);
      if (stale && strcmp(rq->if_none_match, "\"r1\"") == 0) {
        free(t);
        return respond(c, rq, 304, h, NULL, 0, 1) == 0 && rq->keep_alive;
      }
      if (rq->range[0] && strcmp(rq->accept_encoding, "identity") != 0) {
        /* the tests' check that a range request (a client's, or the cache
         * completing a piece) asks for identity bytes, as Chromium does */
        free(t);
        return respond(c, rq, 400, "Content-Type: text/plain\r\n", "range: not identity\n", 20,
                       0) == 0 &&
               rq->keep_alive;
      }
      if (rq->range[0] && (!rq->if_range[0] || strcmp(rq->if_range, "\"r1\"") == 0)) {
        if (strncmp(rq->range, "bytes=-", 7) == 0) {
          if (sscanf(rq->range, "bytes=-%llu", &b) == 1 && b > 0)
            st = 206, a = b >= len ? 0 : len - b, b = len - 1;
        } else if (sscanf(rq->range, "bytes=%llu-%llu", &a, &b) == 2) {
          st = a <= b ? 206 : 200;
        } else if (sscanf(rq->range, "bytes=%llu-", &a) == 1) {
          st = 206, b = len - 1;
        }
        if (st == 206 && a >= len)
          st = 416;
        if (b >= len)
          b = len - 1;
        if (cap && st == 206 && b - a >= 100)
          b = a + 99;
      }
      if (st == 206)
        m = snprintf(h + n, sizeof(h) - (size_t)n, "Content-Range: bytes %llu-%llu/%lu\r\n", a, b,
                     len);
      else if (st == 416)
        m = snprintf(h + n, sizeof(h) - (size_t)n, "Content-Range: bytes */%lu\r\n", len);
      (void)m;
      ok = respond(c, rq, st, h, st == 416 ? NULL : (const char *)t + a,
                   st == 206   ? (size_t)(b - a + 1)
                   : st == 416 ? 0
                               : len,
                   0) == 0;
      free(t);
      return ok && rq->keep_alive;
    }
    if (strcmp(q, "headfresh") == 0 || strcmp(q, "headchanged") == 0) {
      /* GET: stale at once (max-age=0), 16 bytes, X-Gen: 1 and X-Stored;
       * HEAD: fresh for 600 s and X-Gen: 2, no X-Stored — the same
       * representation for headfresh, another one (ETag "new") for
       * headchanged */
      int changed = q[4] == 'c';
      if (rq->head)
        return respond(c, rq, 200,
                       changed ? "Content-Type: text/plain\r\nCache-Control: max-age=600\r\n"
                                 "ETag: \"new\"\r\nX-Gen: 2\r\n"
                               : "Content-Type: text/plain\r\nCache-Control: max-age=600\r\n"
                                 "X-Gen: 2\r\n",
                       "0123456789abcdef", 16, 0) == 0 &&
               rq->keep_alive;
      return respond(c, rq, 200,
                     "Content-Type: text/plain\r\nCache-Control: max-age=0\r\nX-Gen: 1\r\n"
                     "X-Stored: kept\r\n",
                     "0123456789abcdef", 16, 0) == 0 &&
             rq->keep_alive;
    }
    if (strncmp(q, "big/", 4) == 0) {
      /* /cache/big/N[/chunked]: N bytes (at most 16 MiB) of nst_pattern(),
       * fresh for 600 s, framed by Content-Length or chunked in 64 KiB
       * chunks */
      char *end;
      unsigned long len = strtoul(q + 4, &end, 10), off;
      int chunked = strcmp(end, "/chunked") == 0;
      static unsigned char pat[65536];
      char h[256];
      if ((*end && !chunked) || len > (16ul << 20))
        return respond(c, rq, 400, "Content-Type: text/plain\r\n", "bad size\n", 9, 0) == 0 &&
               rq->keep_alive;
      n = snprintf(h, sizeof(h),
                   "HTTP/1.1 200 OK\r\nServer: nst-rawserver\r\n"
                   "Content-Type: application/octet-stream\r\nCache-Control: max-age=600\r\n"
                   "%s%lu\r\n\r\n",
                   chunked ? "Transfer-Encoding: chunked\r\nX-Length: " : "Content-Length: ", len);
      if (send_all(c->fd, h, (size_t)n) != 0)
        return 0;
      for (off = 0; !rq->head && off < len; off += sizeof(pat)) {
        size_t m = len - off < sizeof(pat) ? len - off : sizeof(pat);
        char cs[16];
        nst_pattern(pat, off, m);
        n = snprintf(cs, sizeof(cs), "%zx\r\n", m);
        if ((chunked && send_all(c->fd, cs, (size_t)n) != 0) || send_all(c->fd, pat, m) != 0 ||
            (chunked && send_all(c->fd, "\r\n", 2) != 0))
          return 0;
      }
      if (!rq->head && chunked && send_all(c->fd, "0\r\n\r\n", 5) != 0)
        return 0;
      return rq->keep_alive;
    }
    if (strncmp(q, "max-age/", 8) == 0) {
      snprintf(extra, sizeof(extra),
               "Content-Type: text/plain\r\nCache-Control: max-age=%ld\r\nETag: \"v1\"\r\n",
               strtol(q + 8, NULL, 10));
      n = snprintf(body, sizeof(body), "max-age n=%lu", k);
      return respond(c, rq, 200, extra, body, (size_t)n, 0) == 0 && rq->keep_alive;
    }
    if (strncmp(q, "aged/", 5) == 0) { /* an upstream cache's answer: already N s old */
      snprintf(extra, sizeof(extra),
               "Content-Type: text/plain\r\nCache-Control: max-age=600\r\nAge: %ld\r\n",
               strtol(q + 5, NULL, 10));
      n = snprintf(body, sizeof(body), "aged n=%lu", k);
      return respond(c, rq, 200, extra, body, (size_t)n, 0) == 0 && rq->keep_alive;
    }
    if (strncmp(q, "etag", 4) == 0) {
      const char *h = "Content-Type: text/plain\r\nCache-Control: no-cache\r\nETag: \"e1\"\r\n"
                      "X-Served: origin\r\n";
      if (strcmp(rq->if_none_match, "\"e1\"") == 0)
        return respond(c, rq, 304, "Cache-Control: no-cache\r\nETag: \"e1\"\r\n"
                       "X-Revalidated: yes\r\n", NULL, 0, 1) == 0 && rq->keep_alive;
      n = snprintf(body, sizeof(body), "etag n=%lu", k);
      return respond(c, rq, 200, h, body, (size_t)n, 0) == 0 && rq->keep_alive;
    }
    if (strcmp(q, "negotiated") == 0) {
      /* "netstash negotiated body\n" x4, gzip-encoded when the request's
       * Accept-Encoding names gzip and as it is otherwise, Vary:
       * Accept-Encoding: two variants, one decoded content (no other
       * endpoint serves it, so its body is kept as the first variant
       * stored came) */
      static const unsigned char gz[] = {0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x03,
                                         0xcb, 0x4b, 0x2d, 0x29, 0x2e, 0x49, 0x2c, 0xce, 0x50, 0xc8,
                                         0x4b, 0x4d, 0xcf, 0x2f, 0xc9, 0x4c, 0x2c, 0x49, 0x4d, 0x51,
                                         0x48, 0xca, 0x4f, 0xa9, 0xe4, 0xca, 0xa3, 0x9e, 0x04, 0x00,
                                         0x7e, 0x03, 0x6e, 0xf0, 0x64, 0x00, 0x00, 0x00};
      static const char plain[] = "netstash negotiated body\nnetstash negotiated body\n"
                                  "netstash negotiated body\nnetstash negotiated body\n";
      int gzip = strcasestr(rq->accept_encoding, "gzip") != NULL;
      return respond(c, rq, 200,
                     gzip ? "Content-Type: text/plain\r\nContent-Encoding: gzip\r\n"
                            "Vary: Accept-Encoding\r\nCache-Control: max-age=600\r\n"
                          : "Content-Type: text/plain\r\nVary: Accept-Encoding\r\n"
                            "Cache-Control: max-age=600\r\n",
                     gzip ? (const void *)gz : (const void *)plain,
                     gzip ? sizeof(gz) : sizeof(plain) - 1, 0) == 0 &&
             rq->keep_alive;
    }
    if (strcmp(q, "gzip") == 0) { /* fresh, gzip-encoded as sent ("netstash gzip body\n" x4) */
      static const unsigned char gz[] = {
          0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x03, 0xcb, 0x4b, 0x2d, 0x29,
          0x2e, 0x49, 0x2c, 0xce, 0x50, 0x48, 0xaf, 0xca, 0x2c, 0x50, 0x48, 0xca, 0x4f, 0xa9,
          0xe4, 0xca, 0x23, 0x57, 0x08, 0x00, 0xf0, 0x20, 0xab, 0x19, 0x4c, 0x00, 0x00, 0x00};
      return respond(c, rq, 200,
                     "Content-Type: text/plain\r\nContent-Encoding: gzip\r\n"
                     "Cache-Control: max-age=600\r\n",
                     gz, sizeof(gz), 0) == 0 &&
             rq->keep_alive;
    }
    if (strcmp(q, "zstd") == 0) { /* fresh, zstd-coded as sent ("netstash zstd body\n" x4) */
      static const unsigned char zs[] = {0x28, 0xb5, 0x2f, 0xfd, 0x04, 0x68, 0xd5, 0x00, 0x00, 0x98,
                                         0x6e, 0x65, 0x74, 0x73, 0x74, 0x61, 0x73, 0x68, 0x20, 0x7a,
                                         0x73, 0x74, 0x64, 0x20, 0x62, 0x6f, 0x64, 0x79, 0x0a, 0x01,
                                         0x00, 0x6d, 0xe7, 0x0c, 0x03, 0x52, 0x6c, 0xd0, 0x4b};
      return respond(c, rq, 200,
                     "Content-Type: text/plain\r\nContent-Encoding: zstd\r\n"
                     "Cache-Control: max-age=600\r\n",
                     zs, sizeof(zs), 0) == 0 &&
             rq->keep_alive;
    }
    if (strcmp(q, "swr") == 0) {
      n = snprintf(body, sizeof(body), "swr n=%lu", k);
      return respond(c, rq, 200,
                     "Content-Type: text/plain\r\n"
                     "Cache-Control: max-age=1, stale-while-revalidate=600\r\n",
                     body, (size_t)n, 0) == 0 && rq->keep_alive;
    }
    if (strcmp(q, "vary") == 0) {
      n = snprintf(body, sizeof(body), "lang=%s n=%lu", rq->accept_language, k);
      return respond(c, rq, 200,
                     "Content-Type: text/plain\r\nCache-Control: max-age=600\r\n"
                     "Vary: Accept-Language\r\n",
                     body, (size_t)n, 0) == 0 && rq->keep_alive;
    }
    if (strcmp(q, "vary2") ==
        0) { /* Vary by the request: two variants varying on different fields */
      n = snprintf(body, sizeof(body), "lang=%s n=%lu", rq->accept_language, k);
      return respond(c, rq, 200,
                     strcmp(rq->accept_language, "en") == 0
                         ? "Content-Type: text/plain\r\nCache-Control: max-age=600\r\n"
                           "Vary: Accept-Language\r\n"
                         : "Content-Type: text/plain\r\nCache-Control: max-age=600\r\n"
                           "Vary: Accept-Encoding\r\n",
                     body, (size_t)n, 0) == 0 &&
             rq->keep_alive;
    }
    if (strcmp(q, "perm") == 0) { /* permanent redirect, no explicit freshness */
      n = snprintf(body, sizeof(body), "moved n=%lu", k);
      return respond(c, rq, 301, "Content-Type: text/plain\r\n"
                     "Location: /cache/max-age/600/target\r\n",
                     body, (size_t)n, 0) == 0 && rq->keep_alive;
    }
    if (strcmp(q, "nvs") == 0) {
      n = snprintf(body, sizeof(body), "nvs %s n=%lu", rq->target, k);
      return respond(c, rq, 200,
                     "Content-Type: text/plain\r\nCache-Control: max-age=600\r\n"
                     "No-Vary-Search: params=(\"utm\")\r\n",
                     body, (size_t)n, 0) == 0 && rq->keep_alive;
    }
    if (strcmp(q, "no-store") == 0) {
      n = snprintf(body, sizeof(body), "no-store n=%lu", k);
      return respond(c, rq, 200, "Content-Type: text/plain\r\nCache-Control: no-store\r\n",
                     body, (size_t)n, 0) == 0 && rq->keep_alive;
    }
    if (strcmp(q, "sie") == 0) {
      if (atomic_fetch_add(&g_sie_hits, 1) == 0) {
        n = snprintf(body, sizeof(body), "sie n=%lu", k);
        return respond(c, rq, 200,
                       "Content-Type: text/plain\r\n"
                       "Cache-Control: max-age=1, stale-if-error=600\r\n",
                       body, (size_t)n, 0) == 0 && rq->keep_alive;
      }
      n = snprintf(body, sizeof(body), "broken n=%lu", k);
      return respond(c, rq, 503, "Content-Type: text/plain\r\n", body, (size_t)n, 0) == 0 &&
             rq->keep_alive;
    }
  }

  /* Cookies (tests/integration/cookie_fetch_test.c). */
  if (strncmp(p, "/cookie/set/", 12) == 0) { /* /cookie/set/NAME/VALUE[/ATTRS] */
    char name[64], value[64], attrs[128] = "", extra[400];
    if (sscanf(p + 12, "%63[^/]/%63[^/]/%127s", name, value, attrs) < 2) {
      return respond(c, rq, 400, "Content-Type: text/plain\r\n", "bad\n", 4, 0) == 0 &&
             rq->keep_alive;
    }
    for (char *a = attrs; *a; a++)
      if (*a == ',')
        *a = ';';
    snprintf(extra, sizeof(extra), "Content-Type: text/plain\r\nSet-Cookie: %s=%s; Path=/%s%s\r\n",
             name, value, attrs[0] ? "; " : "", attrs);
    return respond(c, rq, 200, extra, "set\n", 4, 0) == 0 && rq->keep_alive;
  }
  if (strcmp(p, "/cookie/redirect") == 0)
    return respond(c, rq, 302,
                   "Content-Type: text/plain\r\nSet-Cookie: hop=1; Path=/\r\nLocation: /echo\r\n",
                   "moved\n", 6, 0) == 0 && rq->keep_alive;

  if (strcmp(p, "/count") == 0) {
    n = snprintf(body, sizeof(body), "%lu", atomic_load(&g_requests));
    return respond(c, rq, 200, "Content-Type: text/plain\r\n", body, (size_t)n, 0) == 0 &&
           rq->keep_alive;
  }

  n = snprintf(body, sizeof(body), "not found\n");
  return respond(c, rq, 404, "Content-Type: text/plain\r\n", body, (size_t)n, 0) == 0 &&
         rq->keep_alive;
}

static void *serve(void *arg) {
  conn *c = arg;
  for (;;) {
    request rq;
    char *head_copy = NULL;
    int r = read_request(c, &rq), keep;
    if (r <= 0)
      break;
    atomic_fetch_add(&g_requests, 1);
    if (strcmp(rq.path, "/echo") == 0) {
      head_copy = malloc(rq.head_len);
      if (head_copy == NULL)
        break;
      memcpy(head_copy, c->buf, rq.head_len);
    }
    consume(c, rq.head_len);
    if (rq.expect_continue && (rq.chunked || rq.content_length > 0)) {
      static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
      if (send_all(c->fd, cont, sizeof(cont) - 1) != 0) {
        free(head_copy);
        break;
      }
    }
    if (read_body(&rq, c) != 0) {
      free(head_copy);
      free(rq.body);
      rq.keep_alive = 0;
      respond(c, &rq, 400, "Content-Type: text/plain\r\n", "bad body\n", 9, 0);
      break;
    }
    if (head_copy != NULL) {
      size_t total = rq.head_len + rq.body_len;
      char *out = malloc(total + 1);
      keep = 0;
      if (out != NULL) {
        memcpy(out, head_copy, rq.head_len);
        if (rq.body_len > 0)
          memcpy(out + rq.head_len, rq.body, rq.body_len);
        keep = respond(c, &rq, 200, "Content-Type: text/plain\r\n", out, total, 0) == 0 &&
               rq.keep_alive;
        free(out);
      }
      free(head_copy);
    } else {
      keep = handle(c, &rq);
    }
    free(rq.body);
    if (!keep)
      break;
  }
  close(c->fd);
  free(c);
  return NULL;
}

int main(int argc, char **argv) {
  struct sockaddr_in sa;
  int lfd, one = 1;
  long port;
  char *end;
  pthread_attr_t attr;

  if (argc != 2) {
    fprintf(stderr, "usage: %s PORT\n", argv[0]);
    return 2;
  }
  port = strtol(argv[1], &end, 10);
  if (*end != '\0' || port < 0 || port > 65535) {
    fprintf(stderr, "nst-rawserver: bad port '%s'\n", argv[1]);
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);

  lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (lfd < 0) {
    perror("nst-rawserver: socket");
    return 1;
  }
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  memset(&sa, 0, sizeof(sa));
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(lfd, 1024) != 0) {
    fprintf(stderr, "nst-rawserver: cannot listen on 127.0.0.1:%ld: %s\n", port, strerror(errno));
    return 1;
  }
  printf("ready\n");
  fflush(stdout);

  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 256 * 1024);
  for (;;) {
    pthread_t t;
    conn *c;
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOMEM || errno == ENOBUFS) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
      }
      continue;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c = malloc(sizeof(*c));
    if (c == NULL) {
      close(fd);
      continue;
    }
    c->fd = fd;
    c->len = 0;
    if (pthread_create(&t, &attr, serve, c) != 0) {
      close(fd);
      free(c);
    }
  }
}
