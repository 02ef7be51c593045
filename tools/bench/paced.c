/*
 * paced — an HTTP/1.1 load generator with a fixed schedule, for latency at
 * an offered load: request j is due at start + j / RATE seconds and goes to
 * connection j mod CONNS; a connection whose previous answer has not come
 * yet sends its next request as soon as it has, and every latency is
 * counted from the request's due time, not from when it could be sent (no
 * coordinated omission, as wrk2 does it). wrk keeps every connection busy
 * instead, so the faster server also gets the longer queues; here every
 * server gets the same requests at the same times.
 *
 *   paced [-c CONNS] [-r RATE] [-d SECS] [-w WARMUP] [-n POOL] PORT PATH
 *
 * CONNS (32) keep-alive connections to 127.0.0.1:PORT, RATE (10000)
 * requests/s in all, for WARMUP (1) seconds not counted and then SECS (2)
 * counted; requests are GET PATH?k=I with I drawn from 1..POOL (100, the
 * primed URLs of tools/bench/proxy). It waits for the next due request in
 * epoll_pwait2 with a 1 ns timer slack, and spins for the last 20 µs.
 * Prints one line:
 *
 *   RESULT target=RATE rate=R requests=N p50_us= p90_us= p99_us= p999_us=
 *          max_us= late=L
 *
 * rate: the counted answers per second (until the last of them: below
 * RATE when the server or this program fell behind); late: requests sent more than
 * 1 ms after their due time (the server, or this program, fell behind: the
 * percentiles are then queueing, not service). Exit status 0; 1 when a
 * connection fails or an answer is not a 200 with a Content-Length (the
 * caches measured are primed: every answer must be a hit); 2 on bad usage. Used by
 * tools/bench/proxy (the paced rows).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HEAD_MAX 16384
#define SPIN_NS 20000u
#define LATE_NS 1000000u

typedef struct {
  int fd;
  int busy;          /* a request is out */
  uint64_t next_due; /* the due time of its next request (ns) */
  uint64_t sent_due; /* ... of the one out */
  int head_done;
  size_t have;     /* head bytes kept */
  uint64_t remain; /* body bytes still to come */
  char head[HEAD_MAX];
} conn;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

static int connect_to(int port) {
  struct sockaddr_in sa;
  int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0)
    return -1;
  memset(&sa, 0, sizeof(sa));
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
    close(fd);
    return -1;
  }
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return fd;
}

/* The head's status and Content-Length: 0, or -1 when it is not a 200 with
 * a length. */
static int parse_head(const char *h, size_t n, uint64_t *clen) {
  const char *p = h, *end = h + n;
  int found = 0;
  if (n < 12 || memcmp(h, "HTTP/1.1 200", 12) != 0)
    return -1;
  while (p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    if (!eol)
      break;
    if ((size_t)(eol - p) > 15 && strncasecmp(p, "content-length:", 15) == 0) {
      *clen = strtoull(p + 15, NULL, 10);
      found = 1;
    }
    p = eol + 1;
  }
  return found ? 0 : -1;
}

/* Takes n bytes of an answer; 1 when the answer is complete, -1 on a bad one. */
static int take(conn *c, const char *buf, size_t n) {
  if (!c->head_done) {
    size_t k = n < HEAD_MAX - c->have ? n : HEAD_MAX - c->have;
    char *e;
    memcpy(c->head + c->have, buf, k);
    c->have += k;
    e = memmem(c->head, c->have, "\r\n\r\n", 4);
    if (!e)
      return c->have == HEAD_MAX ? -1 : 0;
    size_t hl = (size_t)(e + 4 - c->head);
    if (parse_head(c->head, hl, &c->remain) != 0)
      return -1;
    c->head_done = 1;
    n = c->have - hl + (n - k); /* body bytes in this read */
  }
  if (n > c->remain)
    return -1; /* more than the answer: nothing was asked for */
  c->remain -= n;
  return c->remain == 0;
}

int main(int argc, char **argv) {
  unsigned conns = 32, pool = 100;
  double rate = 10000, secs = 2, warm = 1;
  const char *path;
  int port, o, ep;
  conn *cs;
  uint32_t *lat;
  size_t nlat = 0, cap, late = 0;
  uint64_t interval, start, count_from, end, last = 0, j;
  static char buf[1 << 16];
  char req[4096];

  while ((o = getopt(argc, argv, "c:r:d:w:n:h")) != -1) {
    switch (o) {
    case 'c':
      conns = (unsigned)atoi(optarg);
      break;
    case 'r':
      rate = atof(optarg);
      break;
    case 'd':
      secs = atof(optarg);
      break;
    case 'w':
      warm = atof(optarg);
      break;
    case 'n':
      pool = (unsigned)atoi(optarg);
      break;
    default:
      fprintf(stderr,
              "usage: paced [-c CONNS] [-r RATE] [-d SECS] [-w WARMUP] [-n POOL] PORT PATH\n");
      return o == 'h' ? 0 : 2;
    }
  }
  if (argc - optind != 2 || conns < 1 || conns > 4096 || rate < 1 || secs <= 0 || warm < 0 ||
      pool < 1) {
    fprintf(stderr,
            "usage: paced [-c CONNS] [-r RATE] [-d SECS] [-w WARMUP] [-n POOL] PORT PATH\n");
    return 2;
  }
  port = atoi(argv[optind]);
  path = argv[optind + 1];
  prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
  interval = (uint64_t)(1e9 / rate);
  cap = (size_t)(rate * secs * 1.05) + 1024;
  cs = calloc(conns, sizeof(*cs));
  lat = malloc(cap * sizeof(*lat));
  ep = epoll_create1(0);
  if (!cs || !lat || ep < 0) {
    fprintf(stderr, "paced: out of memory\n");
    return 1;
  }
  for (unsigned i = 0; i < conns; i++) {
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
    cs[i].fd = connect_to(port);
    if (cs[i].fd < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev) != 0) {
      fprintf(stderr, "paced: cannot connect to 127.0.0.1:%d: %s\n", port, strerror(errno));
      return 1;
    }
  }
  srand(7);
  start = now_ns() + 1000000u;
  count_from = start + (uint64_t)(warm * 1e9);
  end = count_from + (uint64_t)(secs * 1e9);
  for (unsigned i = 0; i < conns; i++)
    cs[i].next_due = start + i * interval;
  for (;;) {
    struct epoll_event evs[64];
    uint64_t now = now_ns(), due = UINT64_MAX;
    struct timespec ts;
    int n;
    /* send what is due on idle connections */
    for (unsigned i = 0; i < conns; i++) {
      conn *c = &cs[i];
      if (c->busy || c->next_due >= end)
        continue;
      if (c->next_due <= now) {
        int len = snprintf(req, sizeof(req), "GET %s?k=%u HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n",
                           path, (unsigned)(rand() % (int)pool) + 1, port);
        if (write(c->fd, req, (size_t)len) != len) {
          fprintf(stderr, "paced: write: %s\n", strerror(errno));
          return 1;
        }
        if (now - c->next_due > LATE_NS && c->next_due >= count_from)
          late++;
        c->busy = 1;
        c->sent_due = c->next_due;
        c->next_due += (uint64_t)conns * interval;
        c->head_done = 0;
        c->have = 0;
        continue;
      }
      if (c->next_due < due)
        due = c->next_due;
    }
    j = 0;
    for (unsigned i = 0; i < conns; i++)
      j += cs[i].busy || cs[i].next_due < end;
    if (!j)
      break;
    if (due != UINT64_MAX && due > now + SPIN_NS) {
      uint64_t w = due - now - SPIN_NS;
      ts.tv_sec = (time_t)(w / 1000000000u);
      ts.tv_nsec = (long)(w % 1000000000u);
    } else {
      ts.tv_sec = 0;
      ts.tv_nsec = 0;
    }
    n = epoll_pwait2(ep, evs, 64, due == UINT64_MAX ? NULL : &ts, NULL);
    if (n < 0 && errno != EINTR) {
      fprintf(stderr, "paced: epoll_pwait2: %s\n", strerror(errno));
      return 1;
    }
    for (int k = 0; k < n; k++) {
      conn *c = &cs[evs[k].data.u32];
      ssize_t r = read(c->fd, buf, sizeof(buf));
      int t;
      if (r <= 0 || !c->busy) {
        if (r < 0 && errno == EAGAIN)
          continue;
        fprintf(stderr, "paced: connection %u: %s\n", evs[k].data.u32,
                r < 0    ? strerror(errno)
                : r == 0 ? "closed by the server"
                         : "unasked bytes");
        return 1;
      }
      t = take(c, buf, (size_t)r);
      if (t == 0)
        continue;
      now = now_ns();
      c->busy = 0;
      if (t < 0) {
        fprintf(stderr, "paced: connection %u: a bad answer\n", evs[k].data.u32);
        return 1;
      }
      if (c->sent_due >= count_from && nlat < cap) {
        lat[nlat++] = (uint32_t)((now - c->sent_due) / 1000u);
        last = now;
      }
    }
  }
  if (!nlat) {
    fprintf(stderr, "paced: no answer counted\n");
    return 1;
  }
  qsort(lat, nlat, sizeof(*lat), cmp_u32);
  printf("RESULT target=%.0f rate=%.0f requests=%zu p50_us=%u p90_us=%u p99_us=%u p999_us=%u "
         "max_us=%u late=%zu\n",
         rate, (double)nlat * 1e9 / (double)(last > end ? last - count_from : end - count_from),
         nlat, lat[nlat / 2], lat[nlat * 9 / 10], lat[nlat * 99 / 100], lat[nlat * 999 / 1000],
         lat[nlat - 1], late);
  return 0;
}
