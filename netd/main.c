/*
 * main.c — netd: command line, configuration, the profile lock, signals,
 * start and graceful stop of the parts on the library's loop thread.
 *
 *   netd --profile DIR [--config FILE] [--socket PATH] [--proxy HOST:PORT]
 *        [--gateway HOST:PORT --upstream URL] [--metrics HOST:PORT] ...
 *
 * Runs in the foreground until SIGTERM/SIGINT (or daemonizes with --daemon);
 * SIGHUP re-reads the configuration file (log settings, warm schedules).
 */
#include "ns_setup.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "netd/netd.h"

enum { EX_OK_ = 0, EX_FAIL = 1, EX_USAGE_ = 2, EX_CONFIG = 3, EX_LOCKED = 4 };

static const char usage[] =
    "usage: netd --profile DIR [options]\n"
    "\n"
    "The netstash network service: one process owns the profile (store, cookie\n"
    "jars, preload cache, connections) and serves every kernel process through\n"
    "a unix socket (HTTP/2, prior knowledge). Runs until SIGTERM; SIGHUP reloads\n"
    "the configuration file.\n"
    "\n"
    "Options (each overrides the configuration file):\n"
    "      --profile DIR          profile directory (required)\n"
    "      --config FILE          JSON configuration (see netd(8))\n"
    "      --socket PATH          IPC socket (default DIR/netd.sock, mode 0660)\n"
    "      --proxy HOST:PORT      forward proxy front (loopback only by default)\n"
    "      --gateway HOST:PORT    gateway (reverse proxy) front, with --upstream URL\n"
    "      --upstream URL         the gateway's origin\n"
    "      --gateway-h2 HOST:PORT the gateway over TLS 1.3 and HTTP/2 (ALPN h2),\n"
    "                             with --upstream, --tls-cert and --tls-key\n"
    "      --tls-cert FILE        the HTTP/2 gateway's certificate chain (PEM)\n"
    "      --tls-key FILE         its private key (PEM)\n"
    "      --metrics HOST:PORT    Prometheus metrics on GET /metrics\n"
    "      --cacert FILE          trust the CAs in FILE instead of the system store\n"
    "      --trust KEYFILE        pinned manifest signing key (repeatable)\n"
    "      --resolve H:P:ADDR     pin host H port P to ADDR (repeatable)\n"
    "      --log-json             log JSON lines instead of text\n"
    "  -v, --verbose              debug logs\n"
    "      --check-config         validate the configuration and exit\n"
    "      --daemon               detach (fork, setsid); logs go to --log-file\n"
    "      --log-file FILE        append logs to FILE\n"
    "      --pid-file FILE        write the pid to FILE\n"
    "  -h, --help                 this text\n"
    "\n"
    "Exit status: 0 stopped cleanly, 1 runtime failure, 2 usage, 3 bad\n"
    "configuration, 4 another netd holds the profile.\n";

static netd g_d;
static FILE *g_log;

void netd_log(const netd *d, netstash_log_level lvl, const char *fmt, ...) {
  static const char *const names[] = {"error", "warn", "info", "debug", "trace"};
  char msg[1024], ts[32];
  va_list ap;
  struct timespec now;
  struct tm tm;
  FILE *out = g_log ? g_log : stderr;
  if ((int)lvl > (int)d->cfg.log_level)
    return;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  clock_gettime(CLOCK_REALTIME, &now);
  gmtime_r(&now.tv_sec, &tm);
  strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
  if (d->cfg.log_json) {
    json_t *o = json_pack("{s:s+,s:s,s:s}", "ts", ts, "Z", "level", names[lvl], "msg", msg);
    char *line = o ? json_dumps(o, JSON_COMPACT) : NULL;
    if (line)
      fprintf(out, "%s\n", line);
    free(line);
    json_decref(o);
  } else {
    fprintf(out, "%s.%03ldZ netd %s: %s\n", ts, now.tv_nsec / 1000000, names[lvl], msg);
  }
  fflush(out);
}

static void lib_log(netstash_log_level lvl, const char *module, const char *msg, void *ud) {
  netd_log(ud, lvl, "%s: %s", module, msg);
}

/* ------------------------------------------------------------ loop tasks */

typedef struct sync_task {
  ns_task task;
  netd *d;
  uv_mutex_t lock;
  uv_cond_t cond;
  int done;
  int rc;
  int pending; /* stop: parts still closing */
  netd_config *newcfg; /* reload: the configuration read again */
  char err[256];
} sync_task;

static void task_finish(sync_task *t) {
  uv_mutex_lock(&t->lock);
  t->done = 1;
  uv_cond_signal(&t->cond);
  uv_mutex_unlock(&t->lock);
}

static int run_on_loop(netd *d, sync_task *t, ns_task_fn fn) {
  netd_config *nc = t->newcfg;
  memset(t, 0, sizeof(*t));
  t->newcfg = nc;
  t->d = d;
  t->task.run = fn;
  uv_mutex_init(&t->lock);
  uv_cond_init(&t->cond);
  if (ns_ctx_post(d->ctx, &t->task) != NETSTASH_OK) {
    snprintf(t->err, sizeof(t->err), "the library context is stopping");
    t->rc = -1;
  } else {
    uv_mutex_lock(&t->lock);
    while (!t->done)
      uv_cond_wait(&t->cond, &t->lock);
    uv_mutex_unlock(&t->lock);
  }
  uv_cond_destroy(&t->cond);
  uv_mutex_destroy(&t->lock);
  return t->rc;
}

static void start_task(netstash_ctx *ctx, ns_task *task) {
  sync_task *t = (sync_task *)task;
  netd *d = t->d;
  d->loop = &ctx->loop;
  t->rc = netd_ipc_start(d, t->err, sizeof(t->err));
  if (!t->rc && d->cfg.proxy_port)
    t->rc = netd_front_start(d, NETD_FRONT_PROXY, d->cfg.proxy_host, d->cfg.proxy_port, &d->proxy,
                             t->err, sizeof(t->err));
  if (!t->rc && d->cfg.gateway_port)
    t->rc = netd_front_start(d, NETD_FRONT_GATEWAY, d->cfg.gateway_host, d->cfg.gateway_port,
                             &d->gateway, t->err, sizeof(t->err));
  if (!t->rc && d->cfg.gateway_h2_port)
    t->rc = netd_gateway_h2_start(d, t->err, sizeof(t->err));
  if (!t->rc && d->cfg.metrics_port)
    t->rc = netd_front_start(d, NETD_FRONT_METRICS, d->cfg.metrics_host, d->cfg.metrics_port,
                             &d->metrics_front, t->err, sizeof(t->err));
  if (!t->rc)
    t->rc = netd_warmer_start(d, t->err, sizeof(t->err));
  task_finish(t);
}

static void part_stopped(void *ud) {
  sync_task *t = ud;
  if (--t->pending == 0)
    task_finish(t);
}

static void stop_task(netstash_ctx *ctx, ns_task *task) {
  sync_task *t = (sync_task *)task;
  netd *d = t->d;
  (void)ctx;
  atomic_store(&d->stopping, 1);
  t->pending = 1; /* this task's own share */
  netd_warmer_stop(d);
  if (d->ipc) {
    t->pending++;
    netd_ipc_stop(d, part_stopped, t);
  }
  if (d->proxy) {
    t->pending++;
    netd_front_stop(d->proxy, part_stopped, t);
    d->proxy = NULL;
  }
  if (d->gateway) {
    t->pending++;
    netd_front_stop(d->gateway, part_stopped, t);
    d->gateway = NULL;
  }
  if (d->metrics_front) {
    t->pending++;
    netd_front_stop(d->metrics_front, part_stopped, t);
    d->metrics_front = NULL;
  }
  part_stopped(t);
}

/* On the loop, where everything reads the configuration: what a reload
 * changes is logging and the warm schedules (sockets, fronts and the profile
 * need a restart). */
static void reload_task(netstash_ctx *ctx, ns_task *task) {
  sync_task *t = (sync_task *)task;
  netd *d = t->d;
  netd_config *nc = t->newcfg;
  (void)ctx;
  d->cfg.log_json = nc->log_json;
  d->cfg.log_level = nc->log_level;
  {
    netd_warm_entry *w = d->cfg.warms;
    size_t nw = d->cfg.nwarms;
    d->cfg.warms = nc->warms;
    d->cfg.nwarms = nc->nwarms;
    nc->warms = w;
    nc->nwarms = nw;
  }
  netd_warmer_stop(t->d);
  t->rc = netd_warmer_start(t->d, t->err, sizeof(t->err));
  task_finish(t);
}

/* ------------------------------------------------------------ the lock */

/* One netd per profile: an exclusive flock on DIR/netd.lock, holding the pid. */
static int take_lock(netd *d, char *err, size_t errlen) {
  char path[4096], pid[32];
  int fd;
  if (mkdir(d->cfg.profile, 0700) != 0 && errno != EEXIST) {
    snprintf(err, errlen, "cannot create the profile directory %s: %s", d->cfg.profile,
             strerror(errno));
    return -1;
  }
  snprintf(path, sizeof(path), "%s/netd.lock", d->cfg.profile);
  fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    snprintf(err, errlen, "cannot open %.400s: %s", path, strerror(errno));
    return -1;
  }
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    ssize_t n = pread(fd, pid, sizeof(pid) - 1, 0);
    pid[n > 0 ? n : 0] = 0;
    pid[strcspn(pid, "\n")] = 0;
    snprintf(err, errlen, "another netd (pid %s) serves the profile %s", pid[0] ? pid : "?",
             d->cfg.profile);
    close(fd);
    return -1;
  }
  if (ftruncate(fd, 0) == 0) {
    int n = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
    if (pwrite(fd, pid, (size_t)n, 0) != n) {
      /* the lock holds without the pid in it */
    }
  }
  d->lock_fd = fd;
  return 0;
}

/* ------------------------------------------------------------ main */

enum {
  OPT_PROFILE = 256,
  OPT_CONFIG,
  OPT_SOCKET,
  OPT_PROXY,
  OPT_GATEWAY,
  OPT_GATEWAY_H2,
  OPT_TLS_CERT,
  OPT_TLS_KEY,
  OPT_UPSTREAM,
  OPT_METRICS,
  OPT_CACERT,
  OPT_TRUST,
  OPT_RESOLVE,
  OPT_LOG_JSON,
  OPT_CHECK,
  OPT_DAEMON,
  OPT_LOG_FILE,
  OPT_PID_FILE,
  OPT_ALLOW_UNSIGNED
};

typedef struct cli_over {
  const char *profile, *config, *socket, *proxy, *gateway, *upstream, *metrics, *cacert;
  const char *gateway_h2, *tls_cert, *tls_key;
  const char *log_file, *pid_file;
  char *trust, *resolve;
  int log_json, verbose, check, daemon, allow_unsigned;
} cli_over;

static int append(char **dst, const char *v) {
  size_t a = *dst ? strlen(*dst) : 0, b = strlen(v);
  char *n = realloc(*dst, a + b + 2);
  if (!n)
    return -1;
  if (a)
    n[a++] = '\n';
  memcpy(n + a, v, b + 1);
  *dst = n;
  return 0;
}

static int apply_cli(netd_config *c, const cli_over *o, char *err, size_t errlen) {
#define SET(field, v)                                                          \
  do {                                                                         \
    if (v) {                                                                   \
      free(c->field);                                                          \
      c->field = strdup(v);                                                    \
    }                                                                          \
  } while (0)
  SET(profile, o->profile);
  SET(socket_path, o->socket);
  SET(upstream, o->upstream);
  SET(ca_file, o->cacert);
  SET(tls_cert, o->tls_cert);
  SET(tls_key, o->tls_key);
#undef SET
  if (o->proxy && netd_parse_hostport(o->proxy, &c->proxy_host, &c->proxy_port) != 0) {
    snprintf(err, errlen, "--proxy %s: HOST:PORT expected", o->proxy);
    return -1;
  }
  if (o->gateway && netd_parse_hostport(o->gateway, &c->gateway_host, &c->gateway_port) != 0) {
    snprintf(err, errlen, "--gateway %s: HOST:PORT expected", o->gateway);
    return -1;
  }
  if (o->gateway_h2 &&
      netd_parse_hostport(o->gateway_h2, &c->gateway_h2_host, &c->gateway_h2_port) != 0) {
    snprintf(err, errlen, "--gateway-h2 %s: HOST:PORT expected", o->gateway_h2);
    return -1;
  }
  if (o->metrics && netd_parse_hostport(o->metrics, &c->metrics_host, &c->metrics_port) != 0) {
    snprintf(err, errlen, "--metrics %s: HOST:PORT expected", o->metrics);
    return -1;
  }
  if (o->trust && append(&c->trusted_keys, o->trust) != 0)
    return -1;
  if (o->resolve && append(&c->resolve, o->resolve) != 0)
    return -1;
  if (o->log_json)
    c->log_json = 1;
  if (o->verbose)
    c->log_level = NETSTASH_LOG_DEBUG;
  if (o->allow_unsigned)
    c->allow_unsigned = 1;
  if (!c->socket_path && c->profile) {
    size_t n = strlen(c->profile) + sizeof("/netd.sock");
    c->socket_path = malloc(n);
    if (!c->socket_path)
      return -1;
    snprintf(c->socket_path, n, "%s/netd.sock", c->profile);
  }
  return 0;
}

static int load_config(netd_config *c, const cli_over *o, char *err, size_t errlen) {
  netd_config_defaults(c);
  if (o->config && netd_config_load(c, o->config, err, errlen) != 0)
    return -1;
  if (apply_cli(c, o, err, errlen) != 0)
    return -1;
  return netd_config_check(c, err, errlen);
}

static netstash_ctx *make_ctx(netd *d, char *err, size_t errlen) {
  netstash_options *o;
  netstash_ctx *ctx = NULL;
  char *keys, *save = NULL, *k;
  if (netstash_options_new(&o) != NETSTASH_OK) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  netstash_options_set_profile_dir(o, d->cfg.profile);
  netstash_options_set_log(o, lib_log, d->cfg.log_level, d);
  if (d->cfg.cache_max_bytes)
    netstash_options_set_cache_max_bytes(o, d->cfg.cache_max_bytes);
  netstash_options_set_cache_recompress(o, d->cfg.cache_recompress);
  if (d->cfg.ca_file)
    netstash_options_set_ca_file(o, d->cfg.ca_file);
  if (d->cfg.allow_unsigned)
    netstash_options_set_allow_unsigned(o, 1);
  keys = d->cfg.trusted_keys ? strdup(d->cfg.trusted_keys) : NULL;
  for (k = keys ? strtok_r(keys, "\n", &save) : NULL; k; k = strtok_r(NULL, "\n", &save)) {
    if (netstash_options_add_trusted_key(o, k) != NETSTASH_OK) {
      snprintf(err, errlen, "trusted key %s: unreadable or not an Ed25519 public key", k);
      free(keys);
      netstash_options_del(o);
      return NULL;
    }
  }
  free(keys);
  if (netstash_ctx_new(&ctx, o, err, errlen) != NETSTASH_OK)
    ctx = NULL;
  netstash_options_del(o);
  return ctx;
}

/* A daemon serving thousands of connections (MAX_CONNS per front) and
 * keeping hot bodies' memfds open wants more than the usual soft limit of
 * 1024 descriptors: the soft limit goes up to the hard one, as nginx's
 * worker_rlimit_nofile or systemd's LimitNOFILE would set it. */
static void raise_fd_limit(const netd *d) {
  struct rlimit rl;
  rlim_t was;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= rl.rlim_max)
    return;
  was = rl.rlim_cur;
  rl.rlim_cur = rl.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &rl) == 0)
    netd_log(d, NETSTASH_LOG_DEBUG, "descriptor limit raised from %llu to %llu",
             (unsigned long long)was, (unsigned long long)rl.rlim_max);
}

int main(int argc, char **argv) {
  static const struct option longopts[] = {
      {"profile", required_argument, NULL, OPT_PROFILE},
      {"config", required_argument, NULL, OPT_CONFIG},
      {"socket", required_argument, NULL, OPT_SOCKET},
      {"proxy", required_argument, NULL, OPT_PROXY},
      {"gateway", required_argument, NULL, OPT_GATEWAY},
      {"gateway-h2", required_argument, NULL, OPT_GATEWAY_H2},
      {"tls-cert", required_argument, NULL, OPT_TLS_CERT},
      {"tls-key", required_argument, NULL, OPT_TLS_KEY},
      {"upstream", required_argument, NULL, OPT_UPSTREAM},
      {"metrics", required_argument, NULL, OPT_METRICS},
      {"cacert", required_argument, NULL, OPT_CACERT},
      {"trust", required_argument, NULL, OPT_TRUST},
      {"resolve", required_argument, NULL, OPT_RESOLVE},
      {"allow-unsigned", no_argument, NULL, OPT_ALLOW_UNSIGNED},
      {"log-json", no_argument, NULL, OPT_LOG_JSON},
      {"check-config", no_argument, NULL, OPT_CHECK},
      {"daemon", no_argument, NULL, OPT_DAEMON},
      {"log-file", required_argument, NULL, OPT_LOG_FILE},
      {"pid-file", required_argument, NULL, OPT_PID_FILE},
      {"verbose", no_argument, NULL, 'v'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0}};
  cli_over o;
  netd *d = &g_d;
  char err[512] = "";
  sigset_t set;
  sync_task t;
  int c, sig, rc = EX_OK_;

  memset(&o, 0, sizeof(o));
  memset(&t, 0, sizeof(t));
  while ((c = getopt_long(argc, argv, "vh", longopts, NULL)) != -1) {
    switch (c) {
    case OPT_PROFILE: o.profile = optarg; break;
    case OPT_CONFIG: o.config = optarg; break;
    case OPT_SOCKET: o.socket = optarg; break;
    case OPT_PROXY: o.proxy = optarg; break;
    case OPT_GATEWAY: o.gateway = optarg; break;
    case OPT_GATEWAY_H2: o.gateway_h2 = optarg; break;
    case OPT_TLS_CERT: o.tls_cert = optarg; break;
    case OPT_TLS_KEY: o.tls_key = optarg; break;
    case OPT_UPSTREAM: o.upstream = optarg; break;
    case OPT_METRICS: o.metrics = optarg; break;
    case OPT_CACERT: o.cacert = optarg; break;
    case OPT_TRUST:
      if (append(&o.trust, optarg) != 0)
        return EX_FAIL;
      break;
    case OPT_RESOLVE:
      if (append(&o.resolve, optarg) != 0)
        return EX_FAIL;
      break;
    case OPT_ALLOW_UNSIGNED: o.allow_unsigned = 1; break;
    case OPT_LOG_JSON: o.log_json = 1; break;
    case OPT_CHECK: o.check = 1; break;
    case OPT_DAEMON: o.daemon = 1; break;
    case OPT_LOG_FILE: o.log_file = optarg; break;
    case OPT_PID_FILE: o.pid_file = optarg; break;
    case 'v': o.verbose = 1; break;
    case 'h': fputs(usage, stdout); return EX_OK_;
    default: fputs(usage, stderr); return EX_USAGE_;
    }
  }
  if (optind != argc) {
    fprintf(stderr, "netd: unexpected argument \"%s\"\n%s", argv[optind], usage);
    return EX_USAGE_;
  }
  memset(d, 0, sizeof(*d));
  d->lock_fd = -1;
  if (load_config(&d->cfg, &o, err, sizeof(err)) != 0) {
    fprintf(stderr, "netd: %s\n", err);
    netd_config_free(&d->cfg);
    return o.check || o.config ? EX_CONFIG : EX_USAGE_;
  }
  if (o.check) {
    printf(
        "netd: configuration OK (profile %s, socket %s%s%s%s%s, %zu warm schedule(s), "
        "%zu lookup thread(s), store limit %llu bytes, hot bodies %llu bytes)\n",
        d->cfg.profile, d->cfg.socket_path, d->cfg.proxy_port ? ", proxy" : "",
        d->cfg.gateway_port ? ", gateway" : "", d->cfg.gateway_h2_port ? ", HTTP/2 gateway" : "",
        d->cfg.metrics_port ? ", metrics" : "", d->cfg.nwarms, netd_lookup_threads(&d->cfg),
        (unsigned long long)(d->cfg.cache_max_bytes ? d->cfg.cache_max_bytes : NETD_CACHE_DEFAULT),
        (unsigned long long)d->cfg.hot_body_bytes);
    netd_config_free(&d->cfg);
    return EX_OK_;
  }
  if (o.log_file && !(g_log = fopen(o.log_file, "ae"))) {
    fprintf(stderr, "netd: cannot open the log file %s: %s\n", o.log_file, strerror(errno));
    return EX_FAIL;
  }
  if (o.daemon) {
    pid_t pid = fork();
    if (pid < 0) {
      fprintf(stderr, "netd: fork: %s\n", strerror(errno));
      return EX_FAIL;
    }
    if (pid > 0)
      return EX_OK_;
    setsid();
    if (freopen("/dev/null", "r", stdin) == NULL || freopen("/dev/null", "w", stdout) == NULL ||
        (!g_log && freopen("/dev/null", "w", stderr) == NULL))
      return EX_FAIL;
  }
  if (take_lock(d, err, sizeof(err)) != 0) {
    netd_log(d, NETSTASH_LOG_ERROR, "%s", err);
    netd_config_free(&d->cfg);
    return EX_LOCKED;
  }
  if (o.pid_file) {
    FILE *pf = fopen(o.pid_file, "we");
    if (pf) {
      fprintf(pf, "%ld\n", (long)getpid());
      fclose(pf);
    }
  }
  /* Signals are taken by this thread with sigwait; the loop thread (created
   * below) inherits the blocked mask. */
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  signal(SIGPIPE, SIG_IGN);
  raise_fd_limit(d);

  d->started_us = ns_now_us();
  d->ctx = make_ctx(d, err, sizeof(err));
  if (!d->ctx) {
    netd_log(d, NETSTASH_LOG_ERROR, "cannot start: %s", err);
    rc = EX_FAIL;
    goto out;
  }
  if (run_on_loop(d, &t, start_task) != 0) {
    netd_log(d, NETSTASH_LOG_ERROR, "cannot start: %s", t.err);
    run_on_loop(d, &t, stop_task);
    rc = EX_FAIL;
    goto out;
  }
  netd_log(d, NETSTASH_LOG_INFO, "serving profile %s on %s (pid %ld, lookup threads: %zu)",
           d->cfg.profile, d->cfg.socket_path, (long)getpid(), netd_lookup_threads(&d->cfg));
  for (;;) {
    if (sigwait(&set, &sig) != 0)
      continue;
    if (sig == SIGHUP) {
      netd_config nc;
      if (!o.config) {
        netd_log(d, NETSTASH_LOG_INFO, "SIGHUP: no configuration file to reload");
        continue;
      }
      if (load_config(&nc, &o, err, sizeof(err)) != 0) {
        netd_log(d, NETSTASH_LOG_ERROR, "SIGHUP: configuration not reloaded: %s", err);
        netd_config_free(&nc);
        continue;
      }
      t.newcfg = &nc;
      if (run_on_loop(d, &t, reload_task) != 0)
        netd_log(d, NETSTASH_LOG_ERROR, "SIGHUP: %s", t.err);
      else
        netd_log(d, NETSTASH_LOG_INFO, "configuration reloaded (%zu warm schedule(s))",
                 d->cfg.nwarms);
      netd_config_free(&nc); /* now holds the previous schedules */
      t.newcfg = NULL;
      continue;
    }
    netd_log(d, NETSTASH_LOG_INFO, "%s: stopping", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    break;
  }
  run_on_loop(d, &t, stop_task);
out:
  if (d->ctx)
    netstash_ctx_del(d->ctx); /* cancels what is left, closes the store */
  if (d->cfg.socket_path && rc == EX_OK_)
    unlink(d->cfg.socket_path);
  if (o.pid_file)
    unlink(o.pid_file);
  netd_log(d, NETSTASH_LOG_INFO, "stopped");
  if (d->lock_fd >= 0)
    close(d->lock_fd);
  netd_config_free(&d->cfg);
  free(o.trust);
  free(o.resolve);
  if (g_log)
    fclose(g_log);
  return rc;
}
