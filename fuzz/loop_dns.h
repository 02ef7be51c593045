/*
 * fuzz/loop_dns.h — a loopback DNS server for the socket harnesses
 * (fetch_response, netd_front, netd_h2; not a harness itself).
 *
 * A thread answers every query at once: an A question with 127.0.0.1 (the
 * harnesses' socket hooks send every connection to their own loopback
 * server anyway), any other question with NOERROR and no answer; what is not
 * a query is dropped. A name in an input (a redirect's target, a proxy
 * request's host, an :authority) then costs microseconds and the request
 * goes on, instead of waiting for the resolver's timeout on a dead port —
 * which cost such inputs 100 ms each and kept the harnesses at a few
 * percent of a core.
 */
#ifndef NS_FUZZ_LOOP_DNS_H
#define NS_FUZZ_LOOP_DNS_H

#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static int loop_dns_fd = -1;

static void *loop_dns_main(void *arg) {
  uint8_t q[512], r[512 + 16];
  (void)arg;
  for (;;) {
    struct sockaddr_in from;
    socklen_t flen = sizeof(from);
    ssize_t n = recvfrom(loop_dns_fd, q, sizeof(q), 0, (struct sockaddr *)&from, &flen);
    size_t at = 12, len;
    int is_a;
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return NULL;
    }
    /* a query (QR clear) with one question */
    if (n < 12 || (q[2] & 0x80) || q[4] != 0 || q[5] != 1)
      continue;
    while (at < (size_t)n && q[at] != 0 && q[at] < 64)
      at += (size_t)q[at] + 1;
    if (at + 5 > (size_t)n || q[at] != 0)
      continue;
    at += 5; /* the root label, QTYPE, QCLASS */
    is_a = q[at - 4] == 0 && q[at - 3] == 1;
    memcpy(r, q, at);
    r[2] = 0x80 | (q[2] & 0x01); /* QR; RD copied */
    r[3] = 0x80;                 /* RA; NOERROR */
    r[6] = 0, r[7] = is_a ? 1 : 0;
    memset(r + 8, 0, 4); /* no authority, no additional records */
    len = at;
    if (is_a) {
      static const uint8_t rr[] = {0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1};
      memcpy(r + len, rr, sizeof(rr));
      len += sizeof(rr);
    }
    (void)!sendto(loop_dns_fd, r, len, 0, (struct sockaddr *)&from, flen);
  }
}

/* Starts the server; out gets "127.0.0.1:PORT" for
 * netstash_options_set_dns_servers(). Aborts on failure. */
static void loop_dns_start(char *out, size_t cap) {
  struct sockaddr_in a;
  socklen_t alen = sizeof(a);
  pthread_t th;
  loop_dns_fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  memset(&a, 0, sizeof(a));
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (loop_dns_fd < 0 || bind(loop_dns_fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
      getsockname(loop_dns_fd, (struct sockaddr *)&a, &alen) != 0 ||
      pthread_create(&th, NULL, loop_dns_main, NULL) != 0) {
    perror("loop_dns");
    abort();
  }
  pthread_detach(th);
  snprintf(out, cap, "127.0.0.1:%d", ntohs(a.sin_port));
}

#endif
