/*
 * harness.c — real servers and certificates for tests, on loopback.
 *
 * Every server is a child process started with fork + execve; the child asks
 * the kernel for SIGKILL when the test process dies (PR_SET_PDEATHSIG), so no
 * server outlives a crashed test. Ports are picked at random in 20000–60000
 * (other sessions share this machine) and a start that loses the port to
 * somebody else is retried on a new port. A server counts as ready once its
 * own pid holds the listening socket (checked through /proc) and a probe on
 * the port succeeds (TCP connect, a real DNS query for dnsmasq, a QUIC
 * Version Negotiation exchange for the HTTP/3 servers — caddy's h3
 * variants need both TCP and QUIC).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include "harness.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

extern char **environ;

#define MAX_SERVERS 64
#define MAX_KEPT_FDS 64
#define READY_TIMEOUT_MS 10000
#define START_ATTEMPTS 8
#define PORT_MIN 20000
#define PORT_MAX 60000

/* ------------------------------------------------------------------ state */

/* recursive: nst_certs()/nst_site() call nst_path() while holding it */
static pthread_mutex_t g_lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP; /* lazy init */
static pthread_mutex_t g_reg_lock = PTHREAD_MUTEX_INITIALIZER; /* registry */
static char g_workdir[256];
static pid_t g_owner;        /* process that created the work dir */
static int g_certs_state;    /* 0 not yet, 1 done, -1 failed */
static int g_site_state;     /* same */
static int g_big50_state;    /* same, for site/big50.bin */
static char g_big50_hex[65]; /* its SHA-256, lowercase hex */
static uint64_t g_rng;

static struct {
  pid_t pid;
  char name[32];
} g_servers[MAX_SERVERS];
static int g_kept_fds[MAX_KEPT_FDS];
static int g_nkept;

static void harness_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void harness_log(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("harness: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

/* snprintf that reports truncation (-1) instead of hiding it */
static int fmt_path(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fmt_path(char *out, size_t cap, const char *fmt, ...) {
  va_list ap;
  int n;
  va_start(ap, fmt);
  n = vsnprintf(out, cap, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= cap) {
    harness_log("path too long: %s...", out);
    return -1;
  }
  return 0;
}

static uint64_t rng_next(void) {
  uint64_t x;
  pthread_mutex_lock(&g_reg_lock);
  if (g_rng == 0) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    g_rng = ((uint64_t)getpid() << 32) ^ (uint64_t)time(NULL) ^ (uint64_t)ts.tv_nsec ^
            0x9E3779B97F4A7C15ull;
  }
  /* xorshift64* */
  g_rng ^= g_rng >> 12;
  g_rng ^= g_rng << 25;
  g_rng ^= g_rng >> 27;
  x = g_rng * 0x2545F4914F6CDD1Dull;
  pthread_mutex_unlock(&g_reg_lock);
  return x;
}

static void msleep(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
  }
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------ work dir */

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb;
  (void)flag;
  (void)ftw;
  if (remove(path) != 0 && errno != ENOENT)
    harness_log("cannot remove %s: %s", path, strerror(errno));
  return 0;
}

static void rm_rf(const char *path) {
  nftw(path, rm_entry, 32, FTW_DEPTH | FTW_PHYS);
}

static void atexit_cleanup(void) {
  nst_cleanup();
}

const char *nst_workdir(void) {
  const char *ret = NULL;
  pthread_mutex_lock(&g_lock);
  if (g_workdir[0] == '\0') {
    const char *tmp = getenv("TMPDIR");
    static int registered;
    if (tmp == NULL || tmp[0] != '/' || strlen(tmp) > 64)
      tmp = "/tmp";
    snprintf(g_workdir, sizeof(g_workdir), "%s/nst-XXXXXX", tmp);
    if (mkdtemp(g_workdir) == NULL) {
      harness_log("mkdtemp(%s): %s", g_workdir, strerror(errno));
      g_workdir[0] = '\0';
      goto done;
    }
    g_owner = getpid();
    g_certs_state = 0;
    g_site_state = 0;
    g_big50_state = 0;
    if (!registered) {
      registered = 1;
      atexit(atexit_cleanup);
    }
  }
  ret = g_workdir;
done:
  pthread_mutex_unlock(&g_lock);
  return ret;
}

const char *nst_path(const char *name) {
  static _Thread_local char ring[8][PATH_MAX]; /* per thread: tests' load threads call it */
  static _Thread_local unsigned next;
  const char *wd = nst_workdir();
  char *out;
  if (wd == NULL)
    return NULL;
  out = ring[next++ % 8];
  if (fmt_path(out, PATH_MAX, "%s/%s", wd, name) != 0)
    return NULL;
  return out;
}

static int mkdir_p(const char *path) {
  char tmp[PATH_MAX];
  size_t i;
  snprintf(tmp, sizeof(tmp), "%s", path);
  for (i = 1; tmp[i] != '\0'; i++) {
    if (tmp[i] == '/') {
      tmp[i] = '\0';
      if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
        return -1;
      tmp[i] = '/';
    }
  }
  if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
    return -1;
  return 0;
}

static int write_file(const char *path, const void *data, size_t len) {
  FILE *f = fopen(path, "wb");
  int rv = -1;
  if (f == NULL) {
    harness_log("cannot create %s: %s", path, strerror(errno));
    return -1;
  }
  if (len == 0 || fwrite(data, 1, len, f) == len)
    rv = 0;
  if (fclose(f) != 0)
    rv = -1;
  if (rv != 0)
    harness_log("cannot write %s", path);
  return rv;
}

/* ---------------------------------------------------------- processes */

/* Looks up a program in $PATH and the sbin directories (dnsmasq and nghttpd
 * live in /usr/sbin, often not in a user's PATH). */
static int find_prog(const char *name, char *out, size_t cap) {
  const char *extra = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
  const char *lists[2];
  int li;
  lists[0] = getenv("PATH");
  lists[1] = extra;
  for (li = 0; li < 2; li++) {
    const char *p = lists[li];
    while (p != NULL && *p != '\0') {
      const char *colon = strchr(p, ':');
      size_t n = colon ? (size_t)(colon - p) : strlen(p);
      if (n > 0 && (int)n < 4000) {
        snprintf(out, cap, "%.*s/%s", (int)n, p, name);
        if (access(out, X_OK) == 0)
          return 0;
      }
      p = colon ? colon + 1 : NULL;
    }
  }
  harness_log("program '%s' not found (run scripts/setup as root)", name);
  return -1;
}

/* fork + execve. Only async-signal-safe calls between fork and exec: every
 * argument is prepared by the caller. in/out/err < 0 mean /dev/null. */
static pid_t spawn(const char *path, char *const argv[], char *const envp[], int in_fd, int out_fd,
                   int err_fd) {
  pid_t parent = getpid();
  int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
  pid_t pid;
  if (devnull < 0) {
    harness_log("open /dev/null: %s", strerror(errno));
    return -1;
  }
  if (in_fd < 0)
    in_fd = devnull;
  if (out_fd < 0)
    out_fd = devnull;
  if (err_fd < 0)
    err_fd = devnull;
  fflush(NULL);
  pid = fork();
  if (pid == 0) {
    sigset_t all;
    struct sigaction dfl;
    int sig;
    /* own process group: nst_stop() signals the whole group */
    setpgid(0, 0);
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
      _exit(126);
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    for (sig = 1; sig < 32; sig++) {
      if (sig != SIGKILL && sig != SIGSTOP)
        sigaction(sig, &dfl, NULL);
    }
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    if (dup2(in_fd, 0) < 0 || dup2(out_fd, 1) < 0 || dup2(err_fd, 2) < 0)
      _exit(126);
    /* nothing of the test process (sockets, pipes) leaks into servers */
    if (syscall(SYS_close_range, 3u, ~0u, 0u) != 0) {
      int fd;
      for (fd = 3; fd < 4096; fd++)
        close(fd);
    }
    execve(path, argv, envp ? envp : environ);
    _exit(127);
  }
  close(devnull);
  if (pid < 0)
    harness_log("fork: %s", strerror(errno));
  return pid;
}

/* Runs a helper program to completion; returns its exit status or -1. */
static int run_prog(const char *prog, char *const argv[], int in_fd, int out_fd) {
  char path[PATH_MAX];
  pid_t pid;
  int st;
  if (find_prog(prog, path, sizeof(path)) != 0)
    return -1;
  pid = spawn(path, argv, NULL, in_fd, out_fd, 2);
  if (pid < 0)
    return -1;
  while (waitpid(pid, &st, 0) < 0) {
    if (errno != EINTR)
      return -1;
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void register_server(pid_t pid, const char *name) {
  int i;
  pthread_mutex_lock(&g_reg_lock);
  for (i = 0; i < MAX_SERVERS; i++) {
    if (g_servers[i].pid == 0) {
      g_servers[i].pid = pid;
      snprintf(g_servers[i].name, sizeof(g_servers[i].name), "%s", name);
      break;
    }
  }
  pthread_mutex_unlock(&g_reg_lock);
  if (i == MAX_SERVERS)
    harness_log("more than %d servers at once; %s (pid %d) is not tracked", MAX_SERVERS, name,
                (int)pid);
}

static void unregister_server(pid_t pid) {
  int i;
  pthread_mutex_lock(&g_reg_lock);
  for (i = 0; i < MAX_SERVERS; i++) {
    if (g_servers[i].pid == pid)
      g_servers[i].pid = 0;
  }
  pthread_mutex_unlock(&g_reg_lock);
}

/* 1 once the child has exited, without reaping it: while it is a zombie
 * its pid (and so its process group id) cannot be reused, which keeps
 * kill(-pid) safe. */
static int exited_nowait(pid_t pid, int *exit_code) {
  siginfo_t si;
  memset(&si, 0, sizeof(si));
  if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) != 0)
    return errno == ECHILD;
  if (si.si_pid != pid)
    return 0;
  if (exit_code != NULL)
    *exit_code = si.si_code == CLD_EXITED ? si.si_status : -si.si_status;
  return 1;
}

/* Kills whatever is left in the child's process group (dnsmasq forks TCP
 * helpers) and reaps the child. */
static void reap(pid_t pid) {
  int st;
  kill(-pid, SIGKILL);
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
}

/* SIGTERM to the process group, up to wait_ms for the child to exit, then
 * SIGKILL; always reaps the child. */
static void kill_and_reap(pid_t pid, int wait_ms) {
  int64_t deadline = now_ms() + wait_ms;
  if (pid <= 0)
    return;
  if (kill(-pid, SIGTERM) != 0)
    kill(pid, SIGTERM);
  while (!exited_nowait(pid, NULL) && now_ms() < deadline)
    msleep(10);
  reap(pid);
}

static void print_log_tail(const char *path, int lines) {
  FILE *f = fopen(path, "rb");
  char *buf;
  long size, start;
  int seen = 0;
  if (f == NULL) {
    harness_log("no log at %s", path);
    return;
  }
  fseek(f, 0, SEEK_END);
  size = ftell(f);
  start = size > 16384 ? size - 16384 : 0;
  fseek(f, start, SEEK_SET);
  buf = malloc((size_t)(size - start) + 1);
  if (buf != NULL) {
    size_t n = fread(buf, 1, (size_t)(size - start), f);
    long i;
    buf[n] = '\0';
    for (i = (long)n - 1; i > 0; i--) {
      if (buf[i - 1] == '\n' && ++seen >= lines)
        break;
    }
    if (i < 0)
      i = 0;
    fprintf(stderr, "harness: ---- last lines of %s ----\n%s%s", path, buf + i,
            (n > 0 && buf[n - 1] != '\n') ? "\n" : "");
    fprintf(stderr, "harness: ----\n");
    free(buf);
  }
  fclose(f);
}

/* ---------------------------------------------------------------- ports */

static int port_bindable(int port, int type) {
  struct sockaddr_in sa;
  int one = 1, ok;
  int fd = socket(AF_INET, type | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return 0;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  memset(&sa, 0, sizeof(sa));
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ok = bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
  close(fd);
  return ok;
}

static int random_port(int need_udp) {
  int i;
  for (i = 0; i < 500; i++) {
    int port = PORT_MIN + (int)(rng_next() % (PORT_MAX - PORT_MIN + 1));
    if (port_bindable(port, SOCK_STREAM) && (!need_udp || port_bindable(port, SOCK_DGRAM)))
      return port;
  }
  harness_log("no free port found in %d-%d", PORT_MIN, PORT_MAX);
  return -1;
}

static int tcp_connect_ok(int port) {
  struct sockaddr_in sa;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int ok;
  if (fd < 0)
    return 0;
  memset(&sa, 0, sizeof(sa));
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
  close(fd);
  return ok;
}

/* Collects socket inodes bound to local port `port` in state `st` from one
 * /proc/net table. */
static int proc_net_inodes(const char *table, int port, unsigned st, unsigned long *inodes,
                           int max, int n) {
  FILE *f = fopen(table, "r");
  char line[512];
  if (f == NULL)
    return n;
  if (fgets(line, sizeof(line), f) == NULL) { /* header */
    fclose(f);
    return n;
  }
  while (n < max && fgets(line, sizeof(line), f) != NULL) {
    char local[128];
    unsigned lport, state;
    unsigned long inode;
    char *colon;
    /* sl local rem st tx:rx tr:tm retrnsmt uid timeout inode */
    if (sscanf(line, " %*s %127s %*s %x %*s %*s %*s %*s %*s %lu", local, &state, &inode) != 3)
      continue;
    colon = strrchr(local, ':');
    if (colon == NULL || sscanf(colon + 1, "%x", &lport) != 1)
      continue;
    if ((int)lport == port && state == st && inode != 0)
      inodes[n++] = inode;
  }
  fclose(f);
  return n;
}

/* 1 if process `pid` holds a listening TCP (or bound UDP) socket on port,
 * 0 if not, -1 if /proc cannot tell (then the probe alone decides). */
static int pid_owns_port(pid_t pid, int port, int udp) {
  unsigned long inodes[32];
  char dirpath[64];
  DIR *d;
  struct dirent *de;
  int n = 0, found = 0;
  if (udp) {
    n = proc_net_inodes("/proc/net/udp", port, 0x07, inodes, 32, n);
    n = proc_net_inodes("/proc/net/udp6", port, 0x07, inodes, 32, n);
  } else {
    n = proc_net_inodes("/proc/net/tcp", port, 0x0A, inodes, 32, n);
    n = proc_net_inodes("/proc/net/tcp6", port, 0x0A, inodes, 32, n);
  }
  if (n == 0)
    return 0;
  snprintf(dirpath, sizeof(dirpath), "/proc/%d/fd", (int)pid);
  d = opendir(dirpath);
  if (d == NULL)
    return -1;
  while (!found && (de = readdir(d)) != NULL) {
    char link[PATH_MAX], target[64];
    ssize_t len;
    unsigned long ino;
    int i;
    if (de->d_name[0] == '.')
      continue;
    snprintf(link, sizeof(link), "%s/%s", dirpath, de->d_name);
    len = readlink(link, target, sizeof(target) - 1);
    if (len <= 0)
      continue;
    target[len] = '\0';
    if (sscanf(target, "socket:[%lu]", &ino) != 1)
      continue;
    for (i = 0; i < n; i++) {
      if (inodes[i] == ino)
        found = 1;
    }
  }
  closedir(d);
  return found;
}

/* --------------------------------------------------------------- DNS */

int nst_dns_query(int port, const char *name, int qtype, int timeout_ms, unsigned char *reply,
                  size_t cap) {
  unsigned char q[300];
  size_t qlen = 12;
  struct sockaddr_in sa;
  const char *p = name;
  uint16_t id = (uint16_t)(rng_next() & 0xffff);
  int fd, rv = -1;
  int64_t deadline;

  memset(q, 0, sizeof(q));
  q[0] = (unsigned char)(id >> 8);
  q[1] = (unsigned char)id;
  q[2] = 0x01; /* RD */
  q[5] = 1;    /* QDCOUNT */
  while (*p != '\0') {
    const char *dot = strchr(p, '.');
    size_t l = dot ? (size_t)(dot - p) : strlen(p);
    if (l == 0 || l > 63 || qlen + l + 1 > sizeof(q) - 6)
      return -1;
    q[qlen++] = (unsigned char)l;
    memcpy(q + qlen, p, l);
    qlen += l;
    p += l;
    if (*p == '.')
      p++;
  }
  q[qlen++] = 0;
  q[qlen++] = (unsigned char)(qtype >> 8);
  q[qlen++] = (unsigned char)qtype;
  q[qlen++] = 0;
  q[qlen++] = 1; /* IN */

  fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  memset(&sa, 0, sizeof(sa));
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || send(fd, q, qlen, 0) != (ssize_t)qlen)
    goto done;
  deadline = now_ms() + timeout_ms;
  for (;;) {
    struct pollfd pfd = {fd, POLLIN, 0};
    int64_t left = deadline - now_ms();
    ssize_t n;
    if (left <= 0 || poll(&pfd, 1, (int)left) <= 0)
      goto done;
    n = recv(fd, reply, cap, 0);
    if (n < 0)
      goto done; /* ECONNREFUSED: nobody on the port */
    if (n >= 12 && reply[0] == q[0] && reply[1] == q[1] && (reply[2] & 0x80)) {
      rv = (int)n;
      goto done;
    }
  }
done:
  close(fd);
  return rv;
}

static int dns_probe(int port) {
  unsigned char r[512];
  return nst_dns_query(port, "example.test", 1, 200, r, sizeof(r)) > 0;
}

/* --------------------------------------------------------------- QUIC */

int nst_quic_probe(int port, int timeout_ms) {
  unsigned char pkt[1200], r[1500];
  struct sockaddr_in sa;
  uint64_t dcid = rng_next(), scid = rng_next();
  int fd, rv = 0;
  int64_t deadline;

  /* RFC 9000 §17.2: long header (0x80) with the fixed bit (0x40), then a
   * version from the range reserved to force negotiation (0x?a?a?a?a,
   * RFC 9000 §15), DCID and SCID of 8 bytes each. Padded to 1200 bytes: a
   * server answers only datagrams big enough to start a connection
   * (RFC 9000 §14.1, §6.1). */
  memset(pkt, 0, sizeof(pkt));
  pkt[0] = 0xc0;
  pkt[1] = 0x1a;
  pkt[2] = 0x2a;
  pkt[3] = 0x3a;
  pkt[4] = 0x4a;
  pkt[5] = 8;
  memcpy(pkt + 6, &dcid, 8);
  pkt[14] = 8;
  memcpy(pkt + 15, &scid, 8);

  fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return 0;
  memset(&sa, 0, sizeof(sa));
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
      send(fd, pkt, sizeof(pkt), 0) != (ssize_t)sizeof(pkt))
    goto done;
  deadline = now_ms() + timeout_ms;
  for (;;) {
    struct pollfd pfd = {fd, POLLIN, 0};
    int64_t left = deadline - now_ms();
    ssize_t n;
    if (left <= 0 || poll(&pfd, 1, (int)left) <= 0)
      goto done;
    n = recv(fd, r, sizeof(r), 0);
    if (n < 0)
      goto done; /* ECONNREFUSED: nothing bound on the port */
    /* Version Negotiation (RFC 9000 §17.2.1): long header, version 0, our
     * SCID echoed as its DCID, then at least one supported version */
    if (n >= 7 + 8 + 1 + 8 + 4 && (r[0] & 0x80) && r[1] == 0 && r[2] == 0 && r[3] == 0 &&
        r[4] == 0 && r[5] == 8 && memcmp(r + 6, &scid, 8) == 0) {
      rv = 1;
      goto done;
    }
  }
done:
  close(fd);
  return rv;
}

/* --------------------------------------------------------- server start */

/* argv under construction, with its own string storage */
typedef struct cmdline {
  char *argv[64];
  int argc;
  char store[8192];
  size_t used;
} cmdline;

static void cmd_init(cmdline *c) {
  c->argc = 0;
  c->used = 0;
  c->argv[0] = NULL;
}

static int cmd_add(cmdline *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int cmd_add(cmdline *c, const char *fmt, ...) {
  va_list ap;
  int n;
  if (c->argc >= 63)
    return -1;
  va_start(ap, fmt);
  n = vsnprintf(c->store + c->used, sizeof(c->store) - c->used, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= sizeof(c->store) - c->used)
    return -1;
  c->argv[c->argc++] = c->store + c->used;
  c->argv[c->argc] = NULL;
  c->used += (size_t)n + 1;
  return 0;
}

/* Adds the space-separated words of `words` (NULL: none) as arguments. */
static int cmd_add_words(cmdline *c, const char *words) {
  const char *p = words;
  while (p != NULL && *p != '\0') {
    size_t n;
    while (*p == ' ' || *p == '\t')
      p++;
    n = strcspn(p, " \t");
    if (n > 0 && cmd_add(c, "%.*s", (int)n, p) != 0)
      return -1;
    p += n;
  }
  return 0;
}

/* Builds the command for one attempt on `port`; 0 or -1. May write config
 * files and set *envp (heap, freed by the caller with free_env). */
typedef int (*build_fn)(cmdline *c, int port, void *ud, char ***envp);

/* PROBE_TCP: listening + connect; PROBE_DNS: UDP bound + a DNS answer;
 * PROBE_QUIC: UDP bound + a Version Negotiation answer (nst_quic_probe);
 * PROBE_TCP_QUIC: both of PROBE_TCP and PROBE_QUIC on the same port. */
enum probe_kind { PROBE_TCP, PROBE_DNS, PROBE_QUIC, PROBE_TCP_QUIC };

static void free_env(char **envp) {
  size_t i;
  if (envp == NULL)
    return;
  for (i = 0; envp[i] != NULL; i++)
    free(envp[i]);
  free(envp);
}

enum wait_result { READY = 0, EXITED = 1, TIMEOUT = 2 };

static enum wait_result wait_ready(pid_t pid, int port, enum probe_kind probe, int *exit_code) {
  int64_t deadline = now_ms() + READY_TIMEOUT_MS;
  for (;;) {
    int tcp_ok = 1, udp_ok = 1;
    if (exited_nowait(pid, exit_code))
      return EXITED;
    if (probe == PROBE_TCP || probe == PROBE_TCP_QUIC)
      tcp_ok = pid_owns_port(pid, port, 0) != 0 && tcp_connect_ok(port);
    if (tcp_ok && probe == PROBE_DNS)
      udp_ok = pid_owns_port(pid, port, 1) != 0 && dns_probe(port);
    if (tcp_ok && (probe == PROBE_QUIC || probe == PROBE_TCP_QUIC))
      udp_ok = pid_owns_port(pid, port, 1) != 0 && nst_quic_probe(port, 200);
    if (tcp_ok && udp_ok)
      return READY;
    if (now_ms() >= deadline)
      return TIMEOUT;
    msleep(20);
  }
}

/* nst_gtlsserver_start_port: the port of the next start (0: a random one). */
static int g_fixed_port;

static int start_server(const char *name, const char *prog, build_fn build, void *ud,
                        enum probe_kind probe, nst_server *srv) {
  char path[PATH_MAX], logpath[PATH_MAX];
  int attempt;

  memset(srv, 0, sizeof(*srv));
  srv->pid = -1;
  srv->port = -1;
  if (nst_workdir() == NULL)
    return -1;
  if (prog[0] == '/')
    snprintf(path, sizeof(path), "%s", prog);
  else if (find_prog(prog, path, sizeof(path)) != 0)
    return -1;
  if (mkdir_p(nst_path("logs")) != 0) {
    harness_log("cannot create %s", nst_path("logs"));
    return -1;
  }

  for (attempt = 0; attempt < START_ATTEMPTS; attempt++) {
    cmdline c;
    char **envp = NULL;
    int port = g_fixed_port > 0 ? g_fixed_port : random_port(probe != PROBE_TCP);
    int logfd, exit_code = 0;
    pid_t pid;
    enum wait_result wr;

    if (port < 0)
      return -1;
    cmd_init(&c);
    if (build(&c, port, ud, &envp) != 0) {
      free_env(envp);
      harness_log("%s: cannot build the command line", name);
      return -1;
    }
    snprintf(logpath, sizeof(logpath), "%s/logs/%s-%d.log", nst_workdir(), name, port);
    logfd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (logfd < 0) {
      harness_log("cannot create %s: %s", logpath, strerror(errno));
      free_env(envp);
      return -1;
    }
    pid = spawn(path, c.argv, envp, -1, logfd, logfd);
    close(logfd);
    free_env(envp);
    if (pid < 0)
      return -1;

    wr = wait_ready(pid, port, probe, &exit_code);
    if (wr == READY) {
      srv->pid = pid;
      srv->port = port;
      snprintf(srv->name, sizeof(srv->name), "%s", name);
      register_server(pid, name);
      return 0;
    }
    if (wr == TIMEOUT) {
      kill_and_reap(pid, 500);
      harness_log("%s did not become ready on 127.0.0.1:%d within %d ms", name, port,
                  READY_TIMEOUT_MS);
      print_log_tail(logpath, 20);
      return -1;
    }
    /* exited: most likely somebody took the port; try another one */
    reap(pid);
    if (attempt == START_ATTEMPTS - 1) {
      if (exit_code >= 0)
        harness_log("%s exited with status %d (port %d)", name, exit_code, port);
      else
        harness_log("%s killed by signal %d (port %d)", name, -exit_code, port);
      print_log_tail(logpath, 20);
    }
  }
  harness_log("%s: giving up after %d attempts", name, START_ATTEMPTS);
  return -1;
}

/* ------------------------------------------------------------ certificates */

static EVP_PKEY *gen_key(void) {
  return EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
}

static int add_ext(X509 *cert, X509 *issuer, int nid, const char *value) {
  X509V3_CTX ctx;
  X509_EXTENSION *ex;
  int ok;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
  ex = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
  if (ex == NULL)
    return -1;
  ok = X509_add_ext(cert, ex, -1);
  X509_EXTENSION_free(ex);
  return ok ? 0 : -1;
}

/* issuer == NULL: self-signed CA. Validity in seconds relative to now. */
static X509 *make_cert(EVP_PKEY *key, const char *cn, X509 *issuer, EVP_PKEY *issuer_key,
                       int is_ca, const char *san, long not_before, long not_after) {
  X509 *x = X509_new();
  BIGNUM *serial = BN_new();
  X509_NAME *subj;
  int ok = 0;

  if (x == NULL || serial == NULL)
    goto done;
  if (!X509_set_version(x, X509_VERSION_3))
    goto done;
  if (!BN_rand(serial, 63, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) ||
      BN_to_ASN1_INTEGER(serial, X509_get_serialNumber(x)) == NULL)
    goto done;
  if (X509_gmtime_adj(X509_getm_notBefore(x), not_before) == NULL ||
      X509_gmtime_adj(X509_getm_notAfter(x), not_after) == NULL)
    goto done;
  if (!X509_set_pubkey(x, key))
    goto done;
  subj = X509_get_subject_name(x);
  if (!X509_NAME_add_entry_by_txt(subj, "O", MBSTRING_ASC, (const unsigned char *)"netstash tests",
                                  -1, -1, 0) ||
      !X509_NAME_add_entry_by_txt(subj, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0))
    goto done;
  if (!X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : subj))
    goto done;
  if (issuer == NULL)
    issuer = x;
  if (is_ca) {
    if (add_ext(x, issuer, NID_basic_constraints, "critical,CA:TRUE") != 0 ||
        add_ext(x, issuer, NID_key_usage, "critical,keyCertSign,cRLSign,digitalSignature") != 0)
      goto done;
  } else {
    if (add_ext(x, issuer, NID_basic_constraints, "critical,CA:FALSE") != 0 ||
        add_ext(x, issuer, NID_key_usage, "critical,digitalSignature") != 0 ||
        add_ext(x, issuer, NID_ext_key_usage, "serverAuth") != 0 ||
        add_ext(x, issuer, NID_subject_alt_name, san) != 0)
      goto done;
  }
  if (add_ext(x, issuer, NID_subject_key_identifier, "hash") != 0 ||
      add_ext(x, issuer, NID_authority_key_identifier, "keyid:always") != 0)
    goto done;
  if (X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256()) == 0)
    goto done;
  ok = 1;
done:
  BN_free(serial);
  if (!ok) {
    X509_free(x);
    x = NULL;
  }
  return x;
}

static int write_cert(const char *name, X509 *x) {
  const char *path = nst_cert(name);
  FILE *f = fopen(path, "w");
  int ok;
  if (f == NULL)
    return -1;
  ok = PEM_write_X509(f, x);
  if (fclose(f) != 0)
    ok = 0;
  return ok ? 0 : -1;
}

static int write_key(const char *name, EVP_PKEY *k) {
  const char *path = nst_cert(name);
  FILE *f = fopen(path, "w");
  int ok;
  if (f == NULL)
    return -1;
  ok = PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL);
  if (fclose(f) != 0)
    ok = 0;
  return ok ? 0 : -1;
}

#define DAY (24L * 3600L)
#define LEAF_SAN                                                                               \
  "IP:127.0.0.1,IP:::1,DNS:localhost,DNS:example.test,DNS:*.example.test,DNS:*.test"

static int generate_certs(void) {
  EVP_PKEY *ca_key = NULL, *other_key = NULL, *k = NULL;
  X509 *ca = NULL, *other = NULL, *x = NULL;
  int rv = -1;
  static const struct {
    const char *base;
    int untrusted;
    const char *san;
    long nb, na;
  } leaves[] = {
      {"good", 0, LEAF_SAN, -3600L, 30 * DAY},
      {"expired", 0, LEAF_SAN, -10 * DAY, -1 * DAY},
      {"wronghost", 0, "DNS:other.invalid", -3600L, 30 * DAY},
      {"untrusted", 1, LEAF_SAN, -3600L, 30 * DAY},
  };
  size_t i;

  if (mkdir_p(nst_path("certs")) != 0)
    goto done;
  ca_key = gen_key();
  other_key = gen_key();
  if (ca_key == NULL || other_key == NULL)
    goto done;
  ca = make_cert(ca_key, "netstash test CA", NULL, NULL, 1, NULL, -DAY, 3650 * DAY);
  other = make_cert(other_key, "netstash untrusted CA", NULL, NULL, 1, NULL, -DAY, 3650 * DAY);
  if (ca == NULL || other == NULL || write_cert("ca.pem", ca) != 0 ||
      write_key("ca.key", ca_key) != 0 || write_cert("untrusted-ca.pem", other) != 0 ||
      write_key("untrusted-ca.key", other_key) != 0)
    goto done;
  for (i = 0; i < sizeof(leaves) / sizeof(leaves[0]); i++) {
    char name[64];
    k = gen_key();
    if (k == NULL)
      goto done;
    x = make_cert(k, leaves[i].base, leaves[i].untrusted ? other : ca,
                  leaves[i].untrusted ? other_key : ca_key, 0, leaves[i].san, leaves[i].nb,
                  leaves[i].na);
    if (x == NULL)
      goto done;
    snprintf(name, sizeof(name), "%s.pem", leaves[i].base);
    if (write_cert(name, x) != 0)
      goto done;
    snprintf(name, sizeof(name), "%s.key", leaves[i].base);
    if (write_key(name, k) != 0)
      goto done;
    X509_free(x);
    x = NULL;
    EVP_PKEY_free(k);
    k = NULL;
  }
  rv = 0;
done:
  if (rv != 0) {
    unsigned long e = ERR_get_error();
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    harness_log("certificate generation failed: %s", e ? buf : strerror(errno));
  }
  X509_free(x);
  EVP_PKEY_free(k);
  X509_free(ca);
  X509_free(other);
  EVP_PKEY_free(ca_key);
  EVP_PKEY_free(other_key);
  return rv;
}

const char *nst_certs(void) {
  const char *dir;
  if (nst_workdir() == NULL)
    return NULL;
  pthread_mutex_lock(&g_lock);
  if (g_certs_state == 0)
    g_certs_state = generate_certs() == 0 ? 1 : -1;
  dir = g_certs_state == 1 ? nst_path("certs") : NULL;
  pthread_mutex_unlock(&g_lock);
  return dir;
}

const char *nst_cert(const char *name) {
  char rel[PATH_MAX];
  snprintf(rel, sizeof(rel), "certs/%s", name);
  return nst_path(rel);
}

/* ----------------------------------------------------------------- site */

static uint64_t det_next(uint64_t *s) {
  *s ^= *s >> 12;
  *s ^= *s << 25;
  *s ^= *s >> 27;
  return *s * 0x2545F4914F6CDD1Dull;
}

/* n bytes of the xorshift64* stream in state *s, each 64-bit output
 * little-endian; n a multiple of 8 continues the stream seamlessly. */
static void det_fill_stream(unsigned char *p, size_t n, uint64_t *s) {
  size_t i;
  for (i = 0; i < n; i += 8) {
    uint64_t v = det_next(s);
    size_t j;
    for (j = 0; j < 8 && i + j < n; j++)
      p[i + j] = (unsigned char)(v >> (8 * j));
  }
}

static void det_fill(unsigned char *p, size_t n, uint64_t seed) {
  uint64_t s = seed ? seed : 1;
  det_fill_stream(p, n, &s);
}

/* compresses `in` into `out` with `prog` (argv given); 0 or -1 */
static int compress_file(const char *in, const char *out, char *const argv[]) {
  int ifd = open(in, O_RDONLY | O_CLOEXEC);
  int ofd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  int st = -1;
  struct stat sb;
  if (ifd >= 0 && ofd >= 0)
    st = run_prog(argv[0], argv, ifd, ofd);
  if (ifd >= 0)
    close(ifd);
  if (ofd >= 0)
    close(ofd);
  if (st != 0 || stat(out, &sb) != 0 || sb.st_size == 0) {
    harness_log("%s %s > %s failed (status %d)", argv[0], in, out, st);
    return -1;
  }
  return 0;
}

static int sidecars(const char *plain, const char *brq) {
  char br[PATH_MAX], gz[PATH_MAX], zs[PATH_MAX];
  cmdline brotli, gzip, zstd;
  cmd_init(&brotli);
  cmd_init(&gzip);
  cmd_init(&zstd);
  if (fmt_path(br, sizeof(br), "%s.br", plain) || fmt_path(gz, sizeof(gz), "%s.gz", plain) ||
      fmt_path(zs, sizeof(zs), "%s.zst", plain) || cmd_add(&brotli, "brotli") ||
      cmd_add(&brotli, "-c") || cmd_add(&brotli, "-q") || cmd_add(&brotli, "%s", brq) ||
      cmd_add(&gzip, "gzip") || cmd_add(&gzip, "-c") || cmd_add(&gzip, "-n") ||
      cmd_add(&gzip, "-9") || cmd_add(&zstd, "zstd") || cmd_add(&zstd, "-c") ||
      cmd_add(&zstd, "-q") || cmd_add(&zstd, "-19"))
    return -1;
  if (compress_file(plain, br, brotli.argv) != 0 || compress_file(plain, gz, gzip.argv) != 0 ||
      compress_file(plain, zs, zstd.argv) != 0)
    return -1;
  return 0;
}

static int generate_site(void) {
  static const char index_html[] =
      "<!doctype html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\">"
      "<title>netstash fixture</title></head>\n"
      "<body><h1>netstash fixture site</h1><p><a href=\"/hello.txt\">hello</a></p></body>\n"
      "</html>\n";
  static const char hello[] = "hello, netstash\n";
  unsigned char *buf = NULL;
  char path[PATH_MAX], *text = NULL;
  size_t tlen = 0, bufcap = 4u << 20;
  int i, rv = -1;
  char site[PATH_MAX];

  if (nst_path("site") == NULL)
    return -1;
  snprintf(site, sizeof(site), "%s", nst_path("site")); /* nst_path is a ring of 8 */
  if (mkdir_p(site) != 0 || mkdir_p(nst_path("site/r")) != 0) {
    harness_log("cannot create %s", site);
    return -1;
  }
  if (write_file(nst_path("site/index.html"), index_html, sizeof(index_html) - 1) != 0 ||
      write_file(nst_path("site/hello.txt"), hello, sizeof(hello) - 1) != 0)
    goto done;
  buf = malloc(bufcap);
  if (buf == NULL)
    goto done;
  for (i = 0; i < 200; i++) {
    if (fmt_path(path, sizeof(path), "%s/r/%d.bin", site, i) != 0)
      goto done;
    det_fill(buf, 20000, 0x9E3779B97F4A7C15ull * (uint64_t)(i + 1));
    if (write_file(path, buf, 20000) != 0)
      goto done;
  }
  det_fill(buf, 4u << 20, 0xB16B00B5ull);
  if (write_file(nst_path("site/big.bin"), buf, 4u << 20) != 0)
    goto done;

  /* ~64 KiB of repetitive text */
  text = malloc(70000);
  if (text == NULL)
    goto done;
  for (i = 0; tlen < 65536; i++)
    tlen += (size_t)snprintf(text + tlen, 70000 - tlen,
                             "%05d the quick brown fox jumps over the lazy dog - netstash\n", i);
  if (fmt_path(path, sizeof(path), "%s/text.txt", site) != 0 || write_file(path, text, tlen) != 0 || sidecars(path, "11") != 0)
    goto done;

  /* bomb: 64 MiB of 'a' compressed; plain file replaced by a tiny one */
  {
    FILE *f;
    size_t done_bytes = 0;
    if (fmt_path(path, sizeof(path), "%s/bomb.txt", site) != 0)
      goto done;
    f = fopen(path, "wb");
    if (f == NULL)
      goto done;
    memset(buf, 'a', bufcap);
    while (done_bytes < (64u << 20)) {
      if (fwrite(buf, 1, bufcap, f) != bufcap)
        break;
      done_bytes += bufcap;
    }
    if (fclose(f) != 0 || done_bytes < (64u << 20) || sidecars(path, "5") != 0)
      goto done;
    if (write_file(path, "plain\n", 6) != 0)
      goto done;
  }
  rv = 0;
done:
  free(buf);
  free(text);
  if (rv != 0)
    harness_log("fixture site generation failed");
  return rv;
}

const char *nst_site(void) {
  const char *dir;
  if (nst_workdir() == NULL)
    return NULL;
  pthread_mutex_lock(&g_lock);
  if (g_site_state == 0)
    g_site_state = generate_site() == 0 ? 1 : -1;
  dir = g_site_state == 1 ? nst_path("site") : NULL;
  pthread_mutex_unlock(&g_lock);
  return dir;
}

/* big50.bin: 50 MiB of the xorshift64* stream seeded with BIG50_SEED,
 * written in 4 MiB blocks and hashed on the way; big50.bin.sha256 next to
 * it in sha256sum format. */
#define BIG50_SEED 0xB1650B1650B1650Bull
#define BIG50_SIZE (50u << 20)

static int generate_big50(char hex[65]) {
  const size_t block = 4u << 20;
  unsigned char *buf = malloc(block), md[32];
  unsigned mdlen = 0;
  EVP_MD_CTX *md_ctx = EVP_MD_CTX_new();
  uint64_t s = BIG50_SEED;
  size_t done_bytes = 0;
  char path[PATH_MAX], line[128];
  FILE *f = NULL;
  int i, rv = -1;

  if (buf == NULL || md_ctx == NULL || EVP_DigestInit_ex(md_ctx, EVP_sha256(), NULL) != 1)
    goto done;
  if (fmt_path(path, sizeof(path), "%s/big50.bin", nst_path("site")) != 0)
    goto done;
  f = fopen(path, "wb");
  if (f == NULL) {
    harness_log("cannot create %s: %s", path, strerror(errno));
    goto done;
  }
  while (done_bytes < BIG50_SIZE) {
    size_t n = BIG50_SIZE - done_bytes < block ? BIG50_SIZE - done_bytes : block;
    det_fill_stream(buf, n, &s);
    if (EVP_DigestUpdate(md_ctx, buf, n) != 1 || fwrite(buf, 1, n, f) != n)
      goto done;
    done_bytes += n;
  }
  if (fclose(f) != 0) {
    f = NULL;
    goto done;
  }
  f = NULL;
  if (EVP_DigestFinal_ex(md_ctx, md, &mdlen) != 1 || mdlen != 32)
    goto done;
  for (i = 0; i < 32; i++)
    snprintf(hex + 2 * i, 3, "%02x", md[i]);
  snprintf(line, sizeof(line), "%s  big50.bin\n", hex);
  if (write_file(nst_path("site/big50.bin.sha256"), line, strlen(line)) != 0)
    goto done;
  rv = 0;
done:
  if (f != NULL)
    fclose(f);
  EVP_MD_CTX_free(md_ctx);
  free(buf);
  if (rv != 0)
    harness_log("big50.bin generation failed");
  return rv;
}

static int big50_ready(void) {
  int ok;
  if (nst_site() == NULL)
    return 0;
  pthread_mutex_lock(&g_lock);
  if (g_big50_state == 0)
    g_big50_state = generate_big50(g_big50_hex) == 0 ? 1 : -1;
  ok = g_big50_state == 1;
  pthread_mutex_unlock(&g_lock);
  return ok;
}

const char *nst_site_big50(void) {
  return big50_ready() ? nst_path("site/big50.bin") : NULL;
}

const char *nst_site_big50_sha256(void) {
  return big50_ready() ? g_big50_hex : NULL;
}

/* ---------------------------------------------------------------- caddy */

static char **env_with(const char *const *overrides, size_t n) {
  size_t count = 0, i, j, k = 0;
  char **envp;
  for (i = 0; environ[i] != NULL; i++)
    count++;
  envp = calloc(count + n + 1, sizeof(char *));
  if (envp == NULL)
    return NULL;
  for (i = 0; environ[i] != NULL; i++) {
    int skip = 0;
    for (j = 0; j < n; j++) {
      const char *eq = strchr(overrides[j], '=');
      size_t klen = (size_t)(eq - overrides[j]) + 1;
      if (strncmp(environ[i], overrides[j], klen) == 0)
        skip = 1;
    }
    if (!skip && (envp[k] = strdup(environ[i])) != NULL)
      k++;
  }
  for (j = 0; j < n; j++) {
    if ((envp[k] = strdup(overrides[j])) != NULL)
      k++;
  }
  envp[k] = NULL;
  return envp;
}

/* The caddy variants of nst_caddy_start(). */
typedef struct caddy_variant {
  const char *name;
  const char *protocols;
  const char *cert; /* base name in nst_certs(): CERT.pem / CERT.key */
  int tls12;        /* TLS 1.2 only */
  int altsvc_short; /* Alt-Svc: h3=":PORT"; ma=2 instead of caddy's own */
  int with_issuer;  /* send the leaf's (untrusted) issuer as chain */
  const int *altsvc_port; /* Alt-Svc: h3=":*altsvc_port"; ma=60 */
} caddy_variant;

static int altsvc_to_port;
static char altsvc_to_host[64]; /* nst_caddy_start_altsvc_to_host; "" = same host */
static int proxy_to_port; /* nst_caddy_start_proxy_to: the upstream of /up/ */

static const caddy_variant caddy_variants[] = {
    {"h2", "h1 h2", "good", 0, 0, 0, NULL},
    {"h1", "h1", "good", 0, 0, 0, NULL},
    {"tls12", "h1 h2", "good", 1, 0, 0, NULL},
    {"h3", "h1 h2 h3", "good", 0, 0, 0, NULL},
    {"h3-altsvc-short", "h1 h2 h3", "good", 0, 1, 0, NULL},
    {"h3-badcert-untrusted", "h1 h2 h3", "untrusted", 0, 0, 1, NULL},
    {"h3-badcert-wronghost", "h1 h2 h3", "wronghost", 0, 0, 0, NULL},
    {"h2-altsvc-to", "h1 h2", "good", 0, 0, 0, &altsvc_to_port},
};

int nst_caddy_start_altsvc_to_host(const char *host, int udp_port, nst_server *srv) {
  snprintf(altsvc_to_host, sizeof(altsvc_to_host), "%s", host);
  altsvc_to_port = udp_port;
  return nst_caddy_start("h2-altsvc-to", srv);
}

int nst_caddy_start_altsvc_to(int udp_port, nst_server *srv) {
  altsvc_to_host[0] = '\0';
  altsvc_to_port = udp_port;
  return nst_caddy_start("h2-altsvc-to", srv);
}

int nst_caddy_start_proxy_to(const char *variant, int upstream_port, nst_server *srv) {
  int rv;
  proxy_to_port = upstream_port;
  rv = nst_caddy_start(variant, srv);
  proxy_to_port = 0;
  return rv;
}

static const caddy_variant *find_caddy_variant(const char *name) {
  size_t i;
  for (i = 0; name != NULL && i < sizeof(caddy_variants) / sizeof(caddy_variants[0]); i++) {
    if (strcmp(caddy_variants[i].name, name) == 0)
      return &caddy_variants[i];
  }
  return NULL;
}

/* Concatenates the files `a` and `b` into `out`; 0 or -1. */
static int concat_files(const char *out, const char *a, const char *b) {
  const char *in[2];
  FILE *o = fopen(out, "wb");
  int i, rv = 0;
  in[0] = a;
  in[1] = b;
  if (o == NULL)
    return -1;
  for (i = 0; i < 2 && rv == 0; i++) {
    FILE *f = fopen(in[i], "rb");
    char buf[4096];
    size_t n;
    if (f == NULL) {
      rv = -1;
      break;
    }
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0) {
      if (fwrite(buf, 1, n, o) != n)
        rv = -1;
    }
    if (ferror(f))
      rv = -1;
    fclose(f);
  }
  if (fclose(o) != 0)
    rv = -1;
  if (rv != 0)
    harness_log("cannot write %s", out);
  return rv;
}

static int build_caddy(cmdline *c, int port, void *ud, char ***envp) {
  const caddy_variant *v = ud;
  char dir[PATH_MAX], file[PATH_MAX + 32], ov[3][PATH_MAX + 32], cert[PATH_MAX + 32], key[PATH_MAX],
      altsvc[128] = "", proxy[128] = "";
  const char *ovp[3];
  /* a certificate that does not cover the site's names would make caddy
   * try to obtain one (ACME over the network, its internal CA for IPs):
   * automatic HTTPS off keeps the bad certificate the only one */
  int badcert = strcmp(v->cert, "good") != 0;
  FILE *f;
  int i;

  snprintf(dir, sizeof(dir), "%s/caddy-%s-%d", nst_workdir(), v->name, port);
  for (i = 0; i < 4; i++) {
    static const char *const sub[] = {"home", "data", "config", "storage"};
    char d[PATH_MAX + 16];
    snprintf(d, sizeof(d), "%s/%s", dir, sub[i]);
    if (mkdir_p(d) != 0)
      return -1;
  }
  if (fmt_path(key, sizeof(key), "%s/certs/%s.key", nst_workdir(), v->cert) != 0)
    return -1;
  if (v->with_issuer) {
    /* leaf first, then its issuer, as caddy expects a chain file */
    char leaf[PATH_MAX], issuer[PATH_MAX];
    snprintf(cert, sizeof(cert), "%s/chain.pem", dir);
    if (fmt_path(leaf, sizeof(leaf), "%s/certs/%s.pem", nst_workdir(), v->cert) != 0 ||
        fmt_path(issuer, sizeof(issuer), "%s/certs/%s-ca.pem", nst_workdir(), v->cert) != 0 ||
        concat_files(cert, leaf, issuer) != 0)
      return -1;
  } else {
    snprintf(cert, sizeof(cert), "%s/certs/%s.pem", nst_workdir(), v->cert);
  }
  /* `header` replaces the Alt-Svc caddy sets before the handlers run (one
   * header results), on every response, HTTP/3 ones included */
  if (v->altsvc_short)
    snprintf(altsvc, sizeof(altsvc), "\theader Alt-Svc \"h3=\\\":%d\\\"; ma=2\"\n", port);
  else if (v->altsvc_port)
    snprintf(altsvc, sizeof(altsvc), "\theader Alt-Svc \"h3=\\\"%s:%d\\\"; ma=60\"\n",
             altsvc_to_host, *v->altsvc_port);
  if (proxy_to_port > 0)
    snprintf(proxy, sizeof(proxy), "\thandle_path /up/* {\n\t\treverse_proxy 127.0.0.1:%d\n\t}\n",
             proxy_to_port);
  snprintf(file, sizeof(file), "%s/Caddyfile", dir);
  f = fopen(file, "w");
  if (f == NULL)
    return -1;
  /* default_sni makes clients that send no SNI (IP literals) match the site's
   * connection policy; without it they fall through to caddy's catch-all
   * policy and would get TLS 1.3 even from the tls12 variant. */
  fprintf(f,
          "{\n"
          "\tadmin off\n"
          "\tauto_https %s\n"
          "\tskip_install_trust\n"
          "\tstorage file_system %s/storage\n"
          "\tdefault_bind 127.0.0.1\n"
          "\tdefault_sni 127.0.0.1\n"
          "\tservers {\n"
          "\t\tprotocols %s\n"
          "\t}\n"
          "}\n\n"
          "https://127.0.0.1:%d, https://localhost:%d, https://example.test:%d, "
          "https://*.example.test:%d {\n"
          "\ttls %s %s%s\n"
          "\troot * %s\n"
          "%s%s"
          "\theader /hsts Strict-Transport-Security \"max-age=3600\"\n"
          "\theader /fresh/* Cache-Control \"max-age=600\"\n"
          /* the site's files under a content coding nobody decodes */
          "\thandle_path /opaque/* {\n"
          "\t\theader Content-Encoding x-nst-opaque\n"
          "\t\theader Cache-Control \"max-age=600\"\n"
          "\t\tfile_server\n"
          "\t}\n"
          "\trespond /hsts \"hsts\" 200\n"
          "\tfile_server {\n"
          "\t\tprecompressed br zstd gzip\n"
          "\t}\n"
          "}\n",
          badcert ? "off" : "disable_redirects", dir, v->protocols, port, port, port, port, cert,
          key, v->tls12 ? " {\n\t\tprotocols tls1.2 tls1.2\n\t}" : "", nst_site(), altsvc, proxy);
  if (fclose(f) != 0)
    return -1;

  snprintf(ov[0], sizeof(ov[0]), "HOME=%s/home", dir);
  snprintf(ov[1], sizeof(ov[1]), "XDG_DATA_HOME=%s/data", dir);
  snprintf(ov[2], sizeof(ov[2]), "XDG_CONFIG_HOME=%s/config", dir);
  for (i = 0; i < 3; i++)
    ovp[i] = ov[i];
  *envp = env_with(ovp, 3);
  if (*envp == NULL)
    return -1;
  if (cmd_add(c, "caddy") || cmd_add(c, "run") || cmd_add(c, "--config") || cmd_add(c, "%s", file) ||
      cmd_add(c, "--adapter") || cmd_add(c, "caddyfile"))
    return -1;
  return 0;
}

int nst_caddy_start(const char *variant, nst_server *srv) {
  const caddy_variant *v = find_caddy_variant(variant);
  char name[32];
  memset(srv, 0, sizeof(*srv));
  srv->pid = -1;
  srv->port = -1;
  if (v == NULL) {
    harness_log("unknown caddy variant '%s' (h2, h1, tls12, h3, h3-altsvc-short, "
                "h3-badcert-untrusted or h3-badcert-wronghost)",
                variant ? variant : "(null)");
    return -1;
  }
  if (nst_certs() == NULL || nst_site() == NULL)
    return -1;
  snprintf(name, sizeof(name), "caddy-%s", v->name);
  /* HTTP/3 variants: ready once TCP accepts and QUIC answers on UDP */
  return start_server(name, "caddy", build_caddy, (void *)v,
                      strstr(v->protocols, "h3") != NULL ? PROBE_TCP_QUIC : PROBE_TCP, srv);
}

/* ------------------------------------------------------ openssl s_server */

static int build_badtls(cmdline *c, int port, void *ud, char ***envp) {
  const char *kind = ud;
  char cert[64], key[64];
  (void)envp;
  snprintf(cert, sizeof(cert), "%s.pem", kind);
  snprintf(key, sizeof(key), "%s.key", kind);
  if (cmd_add(c, "openssl") || cmd_add(c, "s_server") || cmd_add(c, "-4") ||
      cmd_add(c, "-accept") || cmd_add(c, "127.0.0.1:%d", port) || cmd_add(c, "-cert") ||
      cmd_add(c, "%s", nst_cert(cert)) || cmd_add(c, "-key") || cmd_add(c, "%s", nst_cert(key)) ||
      cmd_add(c, "-www") || cmd_add(c, "-quiet"))
    return -1;
  /* the untrusted leaf comes with its (untrusted) issuer, like a real
   * server with a private CA would send it */
  if (strcmp(kind, "untrusted") == 0 &&
      (cmd_add(c, "-cert_chain") || cmd_add(c, "%s", nst_cert("untrusted-ca.pem"))))
    return -1;
  return 0;
}

int nst_badtls_start(const char *kind, nst_server *srv) {
  char name[32];
  memset(srv, 0, sizeof(*srv));
  srv->pid = -1;
  srv->port = -1;
  if (kind == NULL || (strcmp(kind, "expired") != 0 && strcmp(kind, "wronghost") != 0 &&
                       strcmp(kind, "untrusted") != 0)) {
    harness_log("unknown bad TLS kind '%s' (expired, wronghost or untrusted)",
                kind ? kind : "(null)");
    return -1;
  }
  if (nst_certs() == NULL)
    return -1;
  snprintf(name, sizeof(name), "badtls-%s", kind);
  return start_server(name, "openssl", build_badtls, (void *)kind, PROBE_TCP, srv);
}

/* ---------------------------------------------------------------- nghttpd */

static int build_nghttpd(cmdline *c, int port, void *ud, char ***envp) {
  const char *extra = ud;
  (void)envp;
  if (cmd_add(c, "nghttpd") || cmd_add(c, "--address=127.0.0.1") ||
      cmd_add(c, "--htdocs=%s", nst_site()))
    return -1;
  if (cmd_add_words(c, extra) != 0)
    return -1;
  if (cmd_add(c, "%d", port) || cmd_add(c, "%s", nst_cert("good.key")) ||
      cmd_add(c, "%s", nst_cert("good.pem")))
    return -1;
  return 0;
}

int nst_nghttpd_start(const char *extra_args, nst_server *srv) {
  memset(srv, 0, sizeof(*srv));
  srv->pid = -1;
  srv->port = -1;
  if (nst_certs() == NULL || nst_site() == NULL)
    return -1;
  return start_server("nghttpd", "nghttpd", build_nghttpd, (void *)extra_args, PROBE_TCP, srv);
}

/* ------------------------------------------------------------- gtlsserver */

static int build_gtlsserver(cmdline *c, int port, void *ud, char ***envp) {
  const char *extra = ud;
  (void)envp;
  /* --quiet: without it every packet and frame is logged (MBs per request) */
  if (cmd_add(c, "gtlsserver") || cmd_add(c, "--quiet") || cmd_add(c, "--htdocs=%s", nst_site()))
    return -1;
  if (cmd_add_words(c, extra) != 0)
    return -1;
  if (cmd_add(c, "127.0.0.1") || cmd_add(c, "%d", port) || cmd_add(c, "%s", nst_cert("good.key")) ||
      cmd_add(c, "%s", nst_cert("good.pem")))
    return -1;
  return 0;
}

int nst_gtlsserver_start(const char *extra_args, nst_server *srv) {
  memset(srv, 0, sizeof(*srv));
  srv->pid = -1;
  srv->port = -1;
  if (nst_certs() == NULL || nst_site() == NULL)
    return -1;
  return start_server("gtlsserver", "gtlsserver", build_gtlsserver, (void *)extra_args, PROBE_QUIC,
                      srv);
}

int nst_gtlsserver_start_port(const char *extra_args, int port, nst_server *srv) {
  int rv;
  g_fixed_port = port;
  rv = nst_gtlsserver_start(extra_args, srv);
  g_fixed_port = 0;
  return rv;
}

/* ---------------------------------------------------------------- dnsmasq */

static int build_dnsmasq(cmdline *c, int port, void *ud, char ***envp) {
  (void)ud;
  (void)envp;
  if (cmd_add(c, "dnsmasq") || cmd_add(c, "-k") || cmd_add(c, "--no-resolv") ||
      cmd_add(c, "--no-hosts") || cmd_add(c, "--no-poll") || cmd_add(c, "--conf-file=/dev/null") ||
      cmd_add(c, "--listen-address=127.0.0.1") || cmd_add(c, "--bind-interfaces") ||
      cmd_add(c, "--port=%d", port) || cmd_add(c, "--address=/example.test/127.0.0.1") ||
      cmd_add(c, "--address=/test/127.0.0.1") || cmd_add(c, "--address=/invalid/") ||
      /* local: AAAA for those names is NODATA, not REFUSED (no upstream) */
      cmd_add(c, "--local=/test/") ||
      cmd_add(c, "--local-ttl=60") || cmd_add(c, "--log-facility=-") ||
      cmd_add(c, "--pid-file="))
    return -1;
  /* As root dnsmasq would switch to user nobody; a credential change clears
   * PR_SET_PDEATHSIG, and the server could outlive a crashed test. */
  if (geteuid() == 0 && (cmd_add(c, "--user=root") || cmd_add(c, "--group=root")))
    return -1;
  return 0;
}

int nst_dnsmasq_start(nst_server *srv) {
  return start_server("dnsmasq", "dnsmasq", build_dnsmasq, NULL, PROBE_DNS, srv);
}

/* -------------------------------------------------------------- rawserver */

/* Path of one of the harness's own server programs (nst-rawserver,
 * nst-evilserver) in the build tree. */
static int helper_path(const char *prog, char *out, size_t cap) {
  const char *bd = getenv("NST_BUILDDIR");
  char exe[PATH_MAX], *slash;
  ssize_t n;

  if (bd != NULL && bd[0] != '\0') {
    snprintf(out, cap, "%s/tests/harness/%s", bd, prog);
    if (access(out, X_OK) == 0)
      return 0;
    harness_log("NST_BUILDDIR=%s but %s is missing (build it with 'make check' or "
                "'make tests/harness/%s')",
                bd, out, prog);
    return -1;
  }
  n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n <= 0) {
    harness_log("cannot find %s: NST_BUILDDIR is not set and /proc/self/exe is "
                "unreadable", prog);
    return -1;
  }
  exe[n] = '\0';
  slash = strrchr(exe, '/');
  if (slash != NULL)
    *slash = '\0'; /* directory of the test binary */
  /* libtool runs the real binary from .libs/lt-NAME */
  slash = strrchr(exe, '/');
  if (slash != NULL && strcmp(slash + 1, ".libs") == 0)
    *slash = '\0';
  /* BUILDDIR/tests/{integration,unit} -> BUILDDIR/tests/harness */
  if (fmt_path(out, cap, "%s/../harness/%s", exe, prog) == 0 && access(out, X_OK) == 0)
    return 0;
  if (fmt_path(out, cap, "%s/%s", exe, prog) == 0 && access(out, X_OK) == 0)
    return 0;
  harness_log("cannot find %s near %s: set NST_BUILDDIR to the build directory "
              "(the one holding tests/harness/%s)",
              prog, exe, prog);
  return -1;
}

static int build_rawserver(cmdline *c, int port, void *ud, char ***envp) {
  (void)envp;
  if (cmd_add(c, "nst-rawserver") || cmd_add(c, "%d", port))
    return -1;
  (void)ud;
  return 0;
}

int nst_rawserver_start(nst_server *srv) {
  char path[PATH_MAX];
  memset(srv, 0, sizeof(*srv));
  srv->pid = -1;
  srv->port = -1;
  if (helper_path("nst-rawserver", path, sizeof(path)) != 0)
    return -1;
  return start_server("rawserver", path, build_rawserver, NULL, PROBE_TCP, srv);
}

/* ------------------------------------------------------------ evilserver */

static int build_evilserver(cmdline *c, int port, void *ud, char ***envp) {
  const char *mode = ud;
  (void)envp;
  if (cmd_add(c, "nst-evilserver") || cmd_add(c, "%s", mode) || cmd_add(c, "%d", port))
    return -1;
  if (strcmp(mode, "http") != 0 &&
      (cmd_add(c, "%s", nst_cert("good.pem")) || cmd_add(c, "%s", nst_cert("good.key"))))
    return -1;
  return 0;
}

int nst_evilserver_start(const char *mode, nst_server *srv) {
  char path[PATH_MAX], name[32];
  memset(srv, 0, sizeof(*srv));
  srv->pid = -1;
  srv->port = -1;
  if (strcmp(mode, "http") && strcmp(mode, "tls") && strcmp(mode, "tls12") &&
      strcmp(mode, "tls10")) {
    harness_log("nst-evilserver: unknown mode '%s' (http, tls, tls12, tls10)", mode);
    return -1;
  }
  if (strcmp(mode, "http") != 0 && nst_certs() == NULL)
    return -1;
  if (helper_path("nst-evilserver", path, sizeof(path)) != 0)
    return -1;
  snprintf(name, sizeof(name), "evil-%s", mode);
  return start_server(name, path, build_evilserver, (void *)(uintptr_t)mode, PROBE_TCP, srv);
}

/* ---------------------------------------------------------- odd ports */

static int keep_fd(int fd) {
  int ok = 0;
  pthread_mutex_lock(&g_reg_lock);
  if (g_nkept < MAX_KEPT_FDS) {
    g_kept_fds[g_nkept++] = fd;
    ok = 1;
  }
  pthread_mutex_unlock(&g_reg_lock);
  return ok;
}

static int bound_port(int type) {
  struct sockaddr_in sa;
  socklen_t len = sizeof(sa);
  int fd;
  if (nst_workdir() == NULL) /* registers the atexit cleanup */
    return -1;
  fd = socket(AF_INET, type | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  memset(&sa, 0, sizeof(sa));
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
      getsockname(fd, (struct sockaddr *)&sa, &len) != 0 || !keep_fd(fd)) {
    harness_log("cannot bind a %s port: %s", type == SOCK_DGRAM ? "UDP" : "TCP", strerror(errno));
    close(fd);
    return -1;
  }
  return ntohs(sa.sin_port);
}

int nst_udp_blackhole(void) {
  return bound_port(SOCK_DGRAM);
}

int nst_udp_closed_port(void) {
  /* Reserving a UDP port means binding it, and a bound port is not closed:
   * this only picks one that is free now (best effort). */
  int i;
  for (i = 0; i < 500; i++) {
    int port = PORT_MIN + (int)(rng_next() % (PORT_MAX - PORT_MIN + 1));
    if (port_bindable(port, SOCK_DGRAM))
      return port;
  }
  harness_log("no free UDP port found in %d-%d", PORT_MIN, PORT_MAX);
  return -1;
}

int nst_closed_port(void) {
  /* bound but never listening: connects are refused, and nobody else can
   * take the port while the test runs */
  return bound_port(SOCK_STREAM);
}

/* ---------------------------------------------------------------- stop */

void nst_stop(nst_server *srv) {
  if (srv == NULL || srv->pid <= 0)
    return;
  unregister_server(srv->pid);
  kill_and_reap(srv->pid, 2000);
  srv->pid = -1;
}

void nst_cleanup(void) {
  int i;
  if (g_owner != getpid()) /* a forked child must not tear down our servers */
    return;
  for (i = 0; i < MAX_SERVERS; i++) {
    pid_t pid;
    pthread_mutex_lock(&g_reg_lock);
    pid = g_servers[i].pid;
    g_servers[i].pid = 0;
    pthread_mutex_unlock(&g_reg_lock);
    if (pid > 0)
      kill_and_reap(pid, 2000);
  }
  pthread_mutex_lock(&g_reg_lock);
  for (i = 0; i < g_nkept; i++)
    close(g_kept_fds[i]);
  g_nkept = 0;
  pthread_mutex_unlock(&g_reg_lock);
  pthread_mutex_lock(&g_lock);
  if (g_workdir[0] != '\0' && getenv("NST_KEEP_WORKDIR") == NULL)
    rm_rf(g_workdir);
  else if (g_workdir[0] != '\0')
    harness_log("keeping %s (NST_KEEP_WORKDIR is set)", g_workdir);
  g_workdir[0] = '\0';
  g_certs_state = 0;
  g_site_state = 0;
  g_big50_state = 0;
  pthread_mutex_unlock(&g_lock);
}

int nst_count_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  struct dirent *de;
  int n = 0;
  if (d == NULL)
    return -1;
  while ((de = readdir(d)) != NULL) {
    if (de->d_name[0] != '.')
      n++;
  }
  closedir(d);
  return n - 1; /* the directory stream itself */
}
