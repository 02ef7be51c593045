/*
 * fuzz/netd_fuzz.h — an in-process netd for the netd_* harnesses (included
 * by fuzz/netd_front.c and fuzz/netd_h2.c; not a harness itself).
 *
 * netd's own sources (netd/ipc.c, front.c, metrics.c, warmer.c, config.c; not
 * main.c) run on a real library context in a temporary profile, exactly as
 * in the daemon: the fronts and the IPC socket are listening sockets on the
 * context's loop thread, and the harness is their client. Nothing leaves the
 * machine:
 *  - every TCP connection the library opens is sent, through the transport's
 *    socket hook (ctx->test_open_socket), to a loopback "origin" thread here
 *    that answers each connection with one small response and EOF;
 *  - names are resolved by a loopback DNS thread here that answers every A
 *    query with 127.0.0.1 at once (and others with no data): a lookup
 *    costs microseconds, not the resolver's timeout, and the request goes
 *    on to the origin (its answer is relayed);
 *  - HTTP/3 and the HTTP cache are off (no state carried between inputs);
 *  - CONNECT (which dials with the system resolver, outside the library) is
 *    never sent to the proxy front: netd_front.c routes such inputs to the
 *    gateway, which refuses CONNECT.
 */
#ifndef NS_FUZZ_NETD_FUZZ_H
#define NS_FUZZ_NETD_FUZZ_H

#include "ns_setup.h"

#include "loop_dns.h"

#include <errno.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <netstash/netstash.h>

#include "core/ctx.h"
#include "netd/netd.h"

#define NF_CHECK(cond)                                                         \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s: check failed: %s (line %d)\n", __FILE__, #cond,     \
              __LINE__);                                                       \
      abort();                                                                 \
    }                                                                          \
  } while (0)

static netd nf_d;
static char nf_dir[64];
static int nf_origin = -1;
static struct sockaddr_in nf_origin_addr;

/* netd's logger lives in main.c, which is not linked: quiet unless asked. */
void netd_log(const netd *d, netstash_log_level lvl, const char *fmt, ...) {
  va_list ap;
  (void)d;
  if (!getenv("NSFUZZ_VERBOSE") && lvl > NETSTASH_LOG_ERROR)
    return;
  va_start(ap, fmt);
  fputs("netd: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

/* Closes a TCP socket with a reset (SO_LINGER 0): no TIME_WAIT left behind.
 * Hundreds of connections a second would otherwise hold most of the
 * machine's ephemeral ports for a minute each. */
static void nf_close_rst(int fd) {
  struct linger lg = {1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
  close(fd);
}

/* The origin: each connection gets one response and EOF. Its socket stays
 * open a while (closing at once, with the request unread, would reset the
 * connection before the response is read): the 32 newest are kept. */
static void *nf_origin_main(void *arg) {
  static const char answer[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                               "Cache-Control: max-age=60\r\nSet-Cookie: o=1; Path=/\r\n"
                               "Content-Length: 6\r\n\r\norigin";
  int keep[32], next = 0;
  (void)arg;
  for (int i = 0; i < 32; i++)
    keep[i] = -1;
  for (;;) {
    int fd = accept4(nf_origin, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED)
        continue;
      return NULL;
    }
    (void)!send(fd, answer, sizeof(answer) - 1, MSG_NOSIGNAL);
    shutdown(fd, SHUT_WR);
    if (keep[next] >= 0)
      nf_close_rst(keep[next]);
    keep[next] = fd;
    next = (next + 1) % 32;
  }
}

static int nf_open_hook(void *ud, struct sockaddr *addr, unsigned *addrlen) {
  (void)ud;
  if (*addrlen < sizeof(nf_origin_addr))
    return -1;
  memcpy(addr, &nf_origin_addr, sizeof(nf_origin_addr));
  *addrlen = sizeof(nf_origin_addr);
  return socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
}

/* A task run on the loop thread, waited for. */
typedef struct nf_task {
  ns_task task;
  int (*fn)(void);
  int rc, done;
  pthread_mutex_t lock;
  pthread_cond_t cond;
} nf_task;

static void nf_task_run(netstash_ctx *ctx, ns_task *task) {
  nf_task *t = (nf_task *)task;
  nf_d.loop = &ctx->loop;
  t->rc = t->fn();
  pthread_mutex_lock(&t->lock);
  t->done = 1;
  pthread_cond_signal(&t->cond);
  pthread_mutex_unlock(&t->lock);
}

/* Runs fn on the loop thread and waits for it (at most wait_ms when not 0:
 * then -2 if it did not run in time, and the task is left to run later —
 * only for a diagnosis before abort()). */
static int nf_on_loop_wait(int (*fn)(void), int wait_ms) {
  static nf_task t; /* static: may still be queued when a timed wait gives up */
  struct timespec until;
  memset(&t, 0, sizeof(t));
  t.task.run = nf_task_run;
  t.fn = fn;
  pthread_mutex_init(&t.lock, NULL);
  pthread_cond_init(&t.cond, NULL);
  NF_CHECK(ns_ctx_post(nf_d.ctx, &t.task) == NETSTASH_OK);
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += wait_ms / 1000;
  until.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
  if (until.tv_nsec >= 1000000000L) {
    until.tv_sec++;
    until.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&t.lock);
  while (!t.done) {
    if (!wait_ms)
      pthread_cond_wait(&t.cond, &t.lock);
    else if (pthread_cond_timedwait(&t.cond, &t.lock, &until) != 0)
      break;
  }
  pthread_mutex_unlock(&t.lock);
  if (!t.done)
    return -2;
  pthread_cond_destroy(&t.cond);
  pthread_mutex_destroy(&t.lock);
  return t.rc;
}

static int nf_on_loop(int (*fn)(void)) { return nf_on_loop_wait(fn, 0); }

static size_t nf_clients;
static int nf_count_clients(void) {
  nf_clients = netd_ipc_clients(&nf_d);
  return 0;
}

/* Before abort() on a hang: is the loop thread alive, how many IPC
 * sessions does netd hold? */
static void nf_diagnose(const char *what) {
  int r = nf_on_loop_wait(nf_count_clients, 2000);
  if (r == -2)
    fprintf(stderr, "%s: the library's loop thread did not run a task within 2 s (blocked)\n",
            what);
  else
    fprintf(stderr, "%s: the loop thread runs; netd holds %zu IPC session(s)\n", what,
            nf_clients);
}

static int nf_rm_one(const char *path, const struct stat *sb, int type, struct FTW *ftw) {
  (void)sb;
  (void)type;
  (void)ftw;
  return remove(path);
}

/* At exit: the profile directory goes (the context and its loop thread are
 * left to the process's end: netd's parts would have to be stopped first). */
static void nf_cleanup(void) {
  nftw(nf_dir, nf_rm_one, 8, FTW_DEPTH | FTW_PHYS);
}

/* At exit, before the libraries' own exit handlers: the loop thread is
 * parked in a task that never returns. libFuzzer ends a timed run with
 * exit() while netd's jobs still run on that thread, and OpenSSL's atexit
 * cleanup freed its locks under a libcurl handshake there (SEGV in
 * RAND_bytes from SSL_CTX_new; the crash file an empty input, as no input
 * was running). Handlers run in reverse order of registration: this one is
 * registered after the context's creation initialised OpenSSL. */
static pthread_mutex_t nf_park_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t nf_park_cond = PTHREAD_COND_INITIALIZER;
static int nf_parked;

static void nf_park_run(netstash_ctx *ctx, ns_task *task) {
  (void)ctx;
  (void)task;
  pthread_mutex_lock(&nf_park_lock);
  nf_parked = 1;
  pthread_cond_broadcast(&nf_park_cond);
  for (;;) /* until the process ends */
    pthread_cond_wait(&nf_park_cond, &nf_park_lock);
}

static void nf_park(void) {
  static ns_task t;
  struct timespec until;
  memset(&t, 0, sizeof(t));
  t.run = nf_park_run;
  if (ns_ctx_post(nf_d.ctx, &t) != NETSTASH_OK)
    return;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += 5; /* a blocked loop thread (a hang being reported) */
  pthread_mutex_lock(&nf_park_lock);
  while (!nf_parked && pthread_cond_timedwait(&nf_park_cond, &nf_park_lock, &until) == 0)
    ;
  pthread_mutex_unlock(&nf_park_lock);
}

/* Creates the context and the origin; netd's parts are started by the
 * harness (nf_on_loop). */
static void nf_setup(void) {
  netstash_options *o = NULL;
  char err[256], path[128], dns[32];
  pthread_t th;
  socklen_t alen = sizeof(nf_origin_addr);
  int one = 1;

  snprintf(nf_dir, sizeof(nf_dir), "/tmp/nsfuzz-netd-XXXXXX");
  NF_CHECK(mkdtemp(nf_dir) != NULL);
  atexit(nf_cleanup);

  nf_origin = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  NF_CHECK(nf_origin >= 0);
  setsockopt(nf_origin, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  memset(&nf_origin_addr, 0, sizeof(nf_origin_addr));
  nf_origin_addr.sin_family = AF_INET;
  nf_origin_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  NF_CHECK(bind(nf_origin, (struct sockaddr *)&nf_origin_addr, sizeof(nf_origin_addr)) == 0);
  NF_CHECK(listen(nf_origin, 128) == 0);
  NF_CHECK(getsockname(nf_origin, (struct sockaddr *)&nf_origin_addr, &alen) == 0);
  NF_CHECK(pthread_create(&th, NULL, nf_origin_main, NULL) == 0);
  pthread_detach(th);

  loop_dns_start(dns, sizeof(dns));

  netd_config_defaults(&nf_d.cfg);
  nf_d.cfg.profile = strdup(nf_dir);
  snprintf(path, sizeof(path), "%s/netd.sock", nf_dir);
  nf_d.cfg.socket_path = strdup(path);
  nf_d.cfg.socket_mode = 0600;
  free(nf_d.cfg.upstream);
  nf_d.cfg.upstream = strdup("http://127.0.0.1:1/base");
  nf_d.cfg.log_level = getenv("NSFUZZ_VERBOSE") ? NETSTASH_LOG_DEBUG : NETSTASH_LOG_ERROR;
  nf_d.started_us = ns_now_us();

  NF_CHECK(netstash_options_new(&o) == NETSTASH_OK);
  netstash_options_set_profile_dir(o, nf_dir);
  netstash_options_set_http_cache(o, 0);
  netstash_options_set_http3(o, 0);
  netstash_options_set_dns_servers(o, dns);
  netstash_options_set_dns_timeout_ms(o, 100);
  netstash_options_set_dns_tries(o, 1);
  if (netstash_ctx_new(&nf_d.ctx, o, err, sizeof(err)) != NETSTASH_OK) {
    fprintf(stderr, "netd harness: context: %s\n", err);
    abort();
  }
  netstash_options_del(o);
  nf_d.ctx->test_open_socket = nf_open_hook;
  atexit(nf_park);
}

/* Reads fd until EOF or until idle_ms pass without a byte (0: returned),
 * at most limit_ms in all; *len counts the bytes, the first cap of which go
 * to out. Returns 1 on
 * EOF or a reset, 0 on idle, -1 when limit_ms ran out. */
static int nf_read_until(int fd, int idle_ms, int limit_ms, char *out, size_t cap, size_t *len) {
  uint64_t t0 = ns_now_us();
  for (;;) {
    struct pollfd p = {fd, POLLIN, 0};
    int left = limit_ms - (int)((ns_now_us() - t0) / 1000);
    int wait = idle_ms > 0 && idle_ms < left ? idle_ms : left;
    char buf[16384];
    ssize_t n;
    if (left <= 0)
      return -1;
    int pr = poll(&p, 1, wait);
    /* EINTR: libFuzzer's -timeout alarm (SIGALRM every timeout/2 s) lands
     * on any thread; a blocking recv() here then waited for bytes netd had
     * no reason to send, and a session that was never shut looked hung */
    if (pr < 0 && errno == EINTR)
      continue;
    if (pr == 0) {
      if (idle_ms > 0 && wait == idle_ms)
        return 0;
      continue;
    }
    n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK))
      continue;
    if (n <= 0)
      return 1;
    if (n > 0) {
      if (out && *len < cap)
        memcpy(out + *len, buf, (size_t)n < cap - *len ? (size_t)n : cap - *len);
      *len += (size_t)n;
    }
  }
}

/* connect(2) that survives libFuzzer's SIGALRM (EINTR: the connection goes
 * on, wait for it) and a moment without ephemeral ports (EADDRNOTAVAIL:
 * retried for a second). Aborts on any other failure. */
static void nf_connect(int fd, const struct sockaddr *a, socklen_t len, const char *what) {
  int tries = 0, err = 0;
  socklen_t elen = sizeof(err);
  while (connect(fd, a, len) != 0) {
    if (errno == EINTR || errno == EINPROGRESS || errno == EALREADY) {
      struct pollfd p = {fd, POLLOUT, 0};
      while (poll(&p, 1, 5000) < 0 && errno == EINTR)
        ;
      if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) == 0 && err == 0)
        return;
      errno = err;
    } else if (errno == EISCONN) {
      return;
    }
    if (errno != EADDRNOTAVAIL || ++tries == 100) {
      fprintf(stderr, "%s: connect: %s\n", what, strerror(errno));
      abort();
    }
    usleep(10000);
  }
}

/* A new connection to netd's IPC socket (2 s send timeout). (inline: not
 * every harness connects there) */
static inline int nf_connect_ipc(const char *what) {
  struct sockaddr_un a;
  struct timeval tv = {2, 0};
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  NF_CHECK(fd >= 0);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  memset(&a, 0, sizeof(a));
  a.sun_family = AF_UNIX;
  snprintf(a.sun_path, sizeof(a.sun_path), "%s", nf_d.cfg.socket_path);
  nf_connect(fd, (struct sockaddr *)&a, sizeof(a), what);
  return fd;
}

/* Writes everything (blocking socket); 0, or -1 when the peer is gone. */
static int nf_write_all(int fd, const uint8_t *p, size_t len) {
  while (len) {
    ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return -1;
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

#endif
