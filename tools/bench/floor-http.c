/*
 * floor-http — the physical floor of an HTTP/1.1 cache hit on this machine:
 * one thread, epoll, one read and one writev per request (what a socket
 * does not take waits for EPOLLOUT), answering every request with the same
 * body from memory, no parsing beyond finding the end of each request head,
 * no cache, no headers looked at. What it costs per request is the kernel's
 * TCP work plus the least user space can do; no cache can answer with less
 * CPU over the same sockets (its rate may be held back by the load
 * generator's CPU instead: compare CPU per request).
 *
 *   floor-http PORT SIZE [HEAD_BYTES [sendfile]]
 *
 * With "sendfile", the body is sent from a sealed memfd: the head with
 * MSG_MORE, then sendfile(2) — nothing copied by the server, clean pages
 * for the client. On loopback that is the cheaper way from 16 to 96 KiB
 * and the dearer one from 128 KiB on (doc/DESIGN.md, "Hot bodies sent
 * with sendfile"); tools/bench/proxy uses it where netd does.
 *
 * Listens on 127.0.0.1:PORT and answers each request with "200 OK", a
 * Content-Length, padding headers up to HEAD_BYTES (default 300: about what
 * the caches measured beside it send) and SIZE bytes of body. Runs until
 * killed. Used by tools/bench/proxy (the "floor" row).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define RBUF 16384

typedef struct {
  int fd;
  int want_out;  /* EPOLLOUT armed: answers wait for room */
  size_t queued; /* answers not yet written whole */
  size_t off;    /* bytes of the first of them already written */
  size_t have;   /* bytes of an unfinished request head kept in buf */
  char buf[RBUF];
} client;

static char *head_text, *body;
static size_t head_len, body_len;
static int body_fd = -1; /* sendfile mode: the body in a sealed memfd */

/* Counts complete request heads in the bytes read (keeping a partial one
 * for the next read); a request line only, no header is looked at. */
static int requests_in(client *c, size_t n) {
  int count = 0;
  size_t i, start = 0, end = c->have + n;
  for (i = c->have >= 3 ? c->have - 3 : 0; i + 3 < end; i++) {
    if (c->buf[i] == '\r' && c->buf[i + 1] == '\n' && c->buf[i + 2] == '\r' &&
        c->buf[i + 3] == '\n') {
      count++;
      start = i + 4;
      i += 3;
    }
  }
  if (start < end && start > 0)
    memmove(c->buf, c->buf + start, end - start);
  c->have = end - start;
  if (c->have == RBUF)
    c->have = 0; /* a head larger than the buffer: not from wrk; dropped */
  return count;
}

/* Arms EPOLLOUT (on) or disarms it for c, when that changes. */
static void want_out(int ep, client *c, int on) {
  struct epoll_event ev = {on ? EPOLLIN | EPOLLOUT : EPOLLIN, {.ptr = c}};
  if (c->want_out == on)
    return;
  epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
  c->want_out = on;
}

/* One write of the queued answers from c->off: a writev of as many heads
 * and bodies as fit in its vector, or in sendfile mode the rest of the
 * first answer's head (MSG_MORE: it leaves with the body) or of its body. */
static ssize_t write_some(client *c) {
  struct iovec iov[64];
  int k = 0;
  size_t i, off = c->off;
  if (body_fd >= 0) {
    off_t o = (off_t)(off - head_len);
    if (off < head_len)
      return send(c->fd, head_text + off, head_len - off, MSG_MORE | MSG_NOSIGNAL);
    return sendfile(c->fd, body_fd, &o, body_len - (size_t)o);
  }
  for (i = 0; i < c->queued && k + 2 <= 64; i++) {
    if (off < head_len)
      iov[k++] = (struct iovec){head_text + off, head_len - off};
    iov[k++] = (struct iovec){body + (off > head_len ? off - head_len : 0),
                              body_len - (off > head_len ? off - head_len : 0)};
    off = 0;
  }
  return writev(c->fd, iov, k);
}

/* Writes the queued answers (head, body, head, body...) as far as the
 * socket takes them: 0, or -1 when the connection is gone. What is left
 * waits for EPOLLOUT, as an event-driven server's output does. */
static int write_out(int ep, client *c) {
  size_t resp = head_len + body_len;
  while (c->queued) {
    ssize_t w = write_some(c);
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0 && errno == EAGAIN) {
      want_out(ep, c, 1);
      return 0;
    }
    if (w <= 0)
      return -1;
    c->off += (size_t)w;
    c->queued -= c->off / resp;
    c->off %= resp;
  }
  want_out(ep, c, 0);
  return 0;
}

int main(int argc, char **argv) {
  int port, lfd, ep, one = 1;
  size_t pad_to = 300, i;
  struct sockaddr_in sa;
  struct epoll_event ev, evs[256];
  char prefix[128];
  if (argc < 3 || (port = atoi(argv[1])) <= 0) {
    fprintf(stderr, "usage: floor-http PORT SIZE [HEAD_BYTES [sendfile]]\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN); /* sendfile has no MSG_NOSIGNAL */
  body_len = (size_t)strtoull(argv[2], NULL, 10);
  if (argc > 3)
    pad_to = (size_t)strtoull(argv[3], NULL, 10);
  body = malloc(body_len ? body_len : 1);
  head_text = malloc(pad_to + 256);
  if (!body || !head_text)
    return 1;
  for (i = 0; i < body_len; i++)
    body[i] = (char)('a' + i % 26);
  if (argc > 4 && strcmp(argv[4], "sendfile") == 0) {
    body_fd = memfd_create("floor-body", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (body_fd < 0 || write(body_fd, body, body_len) != (ssize_t)body_len ||
        fcntl(body_fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW) != 0) {
      perror("floor-http: memfd");
      return 1;
    }
  }
  head_len = (size_t)snprintf(prefix, sizeof(prefix),
                              "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\nX-Pad: ", body_len);
  memcpy(head_text, prefix, head_len);
  while (head_len + 4 < pad_to)
    head_text[head_len++] = 'p';
  memcpy(head_text + head_len, "\r\n\r\n", 4);
  head_len += 4;

  lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  memset(&sa, 0, sizeof(sa));
  sa.sin_family = AF_INET;
  sa.sin_port = htons((unsigned short)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(lfd, 1024) != 0) {
    perror("floor-http: bind/listen");
    return 1;
  }
  ep = epoll_create1(0);
  ev.events = EPOLLIN;
  ev.data.ptr = NULL;
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
  for (;;) {
    int n = epoll_wait(ep, evs, 256, -1), k;
    for (k = 0; k < n; k++) {
      client *c = evs[k].data.ptr;
      if (!c) {
        int fd;
        while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
          client *nc = calloc(1, sizeof(*nc));
          if (!nc) {
            close(fd);
            continue;
          }
          nc->fd = fd;
          setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
          ev.events = EPOLLIN;
          ev.data.ptr = nc;
          epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        }
        continue;
      }
      if ((evs[k].events & EPOLLOUT) && write_out(ep, c) != 0) {
        close(c->fd);
        free(c);
        continue;
      }
      if (!(evs[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
        continue;
      for (;;) {
        ssize_t r = read(c->fd, c->buf + c->have, RBUF - c->have);
        int count;
        if (r < 0 && errno == EINTR)
          continue;
        if (r <= 0) {
          if (r < 0 && errno == EAGAIN)
            break;
          close(c->fd);
          free(c);
          break;
        }
        count = requests_in(c, (size_t)r);
        c->queued += (size_t)count;
        if (count && write_out(ep, c) != 0) {
          close(c->fd);
          free(c);
          break;
        }
        if ((size_t)r < RBUF)
          break; /* drained (as libuv and nginx assume): no extra read */
      }
    }
  }
}
