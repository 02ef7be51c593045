/*
 * netd_run.c — netd as a child process, and the plumbing around it
 * (netd_run.h).
 */
#define _GNU_SOURCE 1
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "netd_run.h"

static char netd_bin[1024], test[64] = "netd";

int netd_run_setup(const char *name) {
  const char *b = getenv("NST_BUILDDIR");
  snprintf(test, sizeof(test), "%s", name);
  snprintf(netd_bin, sizeof(netd_bin), "%s/netd/netd", b ? b : ".");
  if (access(netd_bin, X_OK) != 0) {
    fprintf(stderr, "%s_test: %s not found (set NST_BUILDDIR)\n", test, netd_bin);
    return -1;
  }
  return 0;
}

const char *netd_run_bin(void) {
  return netd_bin;
}

uint64_t netd_run_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------ sockets */

static void loopback(struct sockaddr_in *sa, int port) {
  memset(sa, 0, sizeof(*sa));
  sa->sin_family = AF_INET;
  sa->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sa->sin_port = htons((uint16_t)port);
}

int netd_run_free_port(void) {
  struct sockaddr_in sa;
  socklen_t sl = sizeof(sa);
  int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;
  loopback(&sa, 0);
  if (fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
      getsockname(fd, (struct sockaddr *)&sa, &sl) == 0)
    port = ntohs(sa.sin_port);
  if (fd >= 0)
    close(fd);
  return port;
}

/* connect(), closing fd (errno kept) when it fails. */
static int connect_or_close(int fd, const struct sockaddr *sa, socklen_t len) {
  int e;
  if (fd < 0)
    return -1;
  if (connect(fd, sa, len) == 0)
    return fd;
  e = errno;
  close(fd);
  errno = e;
  return -1;
}

int netd_run_connect(int port) {
  struct sockaddr_in sa;
  loopback(&sa, port);
  return connect_or_close(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), (struct sockaddr *)&sa,
                          sizeof(sa));
}

int netd_run_connect_unix(const char *path) {
  struct sockaddr_un a;
  memset(&a, 0, sizeof(a));
  a.sun_family = AF_UNIX;
  snprintf(a.sun_path, sizeof(a.sun_path), "%.100s", path);
  return connect_or_close(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), (struct sockaddr *)&a,
                          sizeof(a));
}

int netd_run_send(int fd, const void *buf, size_t len) {
  const char *c = buf;
  while (len) {
    ssize_t w = send(fd, c, len, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return -1;
    c += w;
    len -= (size_t)w;
  }
  return 0;
}

int netd_run_read(int fd, int timeout_ms, char **out, size_t *len) {
  size_t cap = 65536, n = 0;
  char *b = malloc(cap);
  uint64_t end = netd_run_now_ms() + (uint64_t)timeout_ms;
  int rc = 0;
  for (;;) {
    struct pollfd pf = {fd, POLLIN, 0};
    uint64_t now = netd_run_now_ms();
    ssize_t r;
    if (now >= end || poll(&pf, 1, (int)(end - now)) <= 0) {
      fprintf(stderr, "%s_test: read timed out after %zu bytes\n", test, n);
      rc = -1;
      break;
    }
    if (n + 1 >= cap) {
      cap *= 2;
      b = realloc(b, cap);
    }
    r = recv(fd, b + n, cap - n - 1, 0);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      break;
    n += (size_t)r;
  }
  b[n] = 0;
  *out = b;
  *len = n;
  return rc;
}

double netd_run_sample(const char *text, const char *name) {
  size_t nl = strlen(name);
  const char *p = text;
  while ((p = strstr(p, name)) != NULL) {
    if ((p == text || p[-1] == '\n') && p[nl] == ' ')
      return strtod(p + nl + 1, NULL);
    p += nl;
  }
  return -1;
}

/* ------------------------------------------------------------ netd */

pid_t netd_run_spawn(netd_proc *p, const char *const *args) {
  const char *argv[32];
  size_t n = 0;
  argv[n++] = netd_bin;
  while (*args && n < 31)
    argv[n++] = *args++;
  argv[n] = NULL;
  p->pid = fork();
  if (p->pid == 0) {
    int fd = open(p->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    execv(netd_bin, (char *const *)argv);
    _exit(127);
  }
  return p->pid;
}

/* Listener i of p (0 proxy, 1 gateway, 2 metrics, 3 the unix socket): 1 if
 * it is off or accepts. */
static int listening(const netd_proc *p, int i, char *what, size_t cap) {
  int port = i == 0 ? p->proxy : i == 1 ? p->gateway : i == 2 ? p->metrics : 0, fd;
  if (i < 3 && port == 0)
    return 1;
  if (i == 3 && p->sock[0] == 0)
    return 1;
  if (i < 3) {
    snprintf(what, cap, "127.0.0.1:%d", port);
    fd = netd_run_connect(port);
  } else {
    snprintf(what, cap, "%s", p->sock);
    fd = netd_run_connect_unix(p->sock);
  }
  if (fd < 0)
    return 0;
  close(fd);
  return 1;
}

int netd_run_start(netd_proc *p, const char *const *args, int timeout_ms) {
  uint64_t end = netd_run_now_ms() + (uint64_t)timeout_ms;
  char what[700];
  if (netd_run_spawn(p, args) < 0) {
    fprintf(stderr, "%s_test: fork: %s\n", test, strerror(errno));
    return -1;
  }
  for (int i = 0; i < 4; i++) {
    while (!listening(p, i, what, sizeof(what))) {
      int st;
      if (waitpid(p->pid, &st, WNOHANG) == p->pid) {
        fprintf(stderr, "%s_test: netd exited early (status %d), see %s\n", test, st, p->log);
        p->pid = -1;
        return -1;
      }
      if (netd_run_now_ms() > end) {
        fprintf(stderr, "%s_test: netd not listening on %s after %d ms\n", test, what, timeout_ms);
        return -1;
      }
      usleep(20000);
    }
  }
  return 0;
}

int netd_run_stop(netd_proc *p) {
  int st = 0;
  uint64_t end = netd_run_now_ms() + 10000;
  if (p->pid <= 0)
    return 0;
  kill(p->pid, SIGTERM);
  while (waitpid(p->pid, &st, WNOHANG) == 0) {
    if (netd_run_now_ms() > end) {
      kill(p->pid, SIGKILL);
      waitpid(p->pid, &st, 0);
      p->pid = -1;
      return -1;
    }
    usleep(20000);
  }
  p->pid = -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* ------------------------------------------------------------ commands */

char *netd_run_capture(const char *cmd, int *status) {
  FILE *p = popen(cmd, "r");
  size_t cap = 1 << 16, len = 0, n;
  char *b = malloc(cap);
  int st;
  assert_non_null(p);
  while ((n = fread(b + len, 1, cap - len - 1, p)) > 0) {
    len += n;
    if (len + 1 >= cap)
      b = realloc(b, cap *= 2);
  }
  b[len] = 0;
  st = pclose(p);
  if (status)
    *status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return b;
}
