/*
 * netstash --daemon SOCKET status | warm | ls | signals | metrics — ask a
 * running netd (netd.h) over its unix socket.
 *
 * netd's IPC is HTTP/2 with prior knowledge over the socket; its control
 * requests use the authority "netd" (GET http://netd/status, POST /warm,
 * GET /ls, POST /signals?..., GET /metrics). libcurl speaks it directly
 * (CURLOPT_UNIX_SOCKET_PATH + CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE): no
 * context, no profile, no store is opened here — netd owns them.
 *
 * For people: status as aligned "key: value" lines and a table of the warm
 * schedules, ls as `netstash ls` prints it, warm as "started N warm(s)".
 * --json prints netd's JSON as it is; a failure under --json prints
 * {"socket", "ok": false, "error", "message"}.
 *
 * Exit codes (cli.h): 5 when nothing listens on SOCKET (absent, refused,
 * not a socket, no permission), 7 when netd does not answer in time, 8 when
 * the answer is not what netd sends (another server, an HTTP error status,
 * unreadable JSON), 10 when it is absurdly large, 2 usage.
 */
#define _GNU_SOURCE 1
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>

#include <curl/curl.h>
#include <jansson.h>

#include "cli.h"

#define REPLY_MAX (16u << 20) /* netd's answers are a few KiB */
#define CONNECT_TIMEOUT_MS 5000L
#define TIMEOUT_MS 30000L

static const char usage[] =
    "usage: netstash --daemon SOCKET COMMAND [--json]\n"
    "\n"
    "Asks the netd serving SOCKET (its unix socket, e.g. PROFILE/netd.sock)\n"
    "instead of opening a profile. Commands:\n"
    "  status    netd's version, pid, uptime, profile, clients, requests by\n"
    "            source, the store's size and evictions, and every warm\n"
    "            schedule (state, last result, next run)\n"
    "  warm      run every configured warm now; one already running is left\n"
    "            alone, and under host signals the runs are deferred\n"
    "  ls        the preload manifests of netd's profile (as netstash ls)\n"
    "  signals [metered=0|1] [low_battery=0|1] [foreground=0|1]\n"
    "            set host signals (any set: background warming pauses);\n"
    "            without arguments, show them\n"
    "  metrics   the Prometheus metrics, as text\n"
    "\n"
    "--json prints netd's JSON as it is: status {\"version\", \"pid\", \"uptime_s\",\n"
    "\"profile\", \"socket\", \"ipc_clients\", \"lookup_threads\": {\"serving\", \"max\"},\n"
    "\"requests\", \"store\": {\"used_bytes\", \"limit_bytes\", \"evicted\", \"records\": "
    "{\"http\",\n"
    "\"preload\"}},\n"
    "\"warms\": [{\"manifest\",\n"
    "\"interval_s\", \"state\", \"last_result\", \"last_run\", \"next_run\", \"runs\",\n"
    "\"failures\", \"last_bytes\"}]}, warm {\"started\"}, ls {\"manifests\": [...]},\n"
    "signals {\"metered\", \"low_battery\", \"foreground\"}.\n"
    "Exit 0; 5 netd is not running on SOCKET (or refuses it); 7 no answer\n"
    "within 30 s; 8 an unexpected answer; 2 usage. See netstash-daemon(1).\n";

/* ------------------------------------------------------------ one request */

typedef struct reply {
  char *body; /* NUL-terminated */
  size_t len, cap;
  int too_large;
  long status;
} reply;

static size_t on_data(char *p, size_t size, size_t n, void *ud) {
  reply *r = ud;
  size_t add = size * n;
  if (add > REPLY_MAX - r->len) {
    r->too_large = 1;
    return 0; /* CURLE_WRITE_ERROR */
  }
  if (r->len + add + 1 > r->cap) {
    size_t ncap = r->cap ? r->cap : 4096;
    char *nb;
    while (ncap < r->len + add + 1)
      ncap *= 2;
    if (!(nb = realloc(r->body, ncap)))
      return 0;
    r->body = nb;
    r->cap = ncap;
  }
  memcpy(r->body + r->len, p, add);
  r->len += add;
  r->body[r->len] = '\0';
  return add;
}

static void not_running(const char *sock, char *msg, size_t msglen) {
  snprintf(msg, msglen, "netd is not running on %s (start it with: netd --profile DIR)", sock);
}

/* method path on netd at sock. NETSTASH_OK: r holds the answer (any HTTP
 * status); else msg says why. */
static netstash_error call(const char *sock, const char *method, const char *path, reply *r,
                           char *msg, size_t msglen) {
  char url[512], errbuf[CURL_ERROR_SIZE] = "";
  struct stat st;
  CURL *h = NULL;
  CURLcode cc;
  long oserr = 0;
  netstash_error rv = NETSTASH_E_INTERNAL;

  memset(r, 0, sizeof(*r));
  if (strlen(sock) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
    snprintf(msg, msglen, "%s: socket path too long (at most %zu bytes)", sock,
             sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
    return NETSTASH_E_INVALID_ARGUMENT;
  }
  if (stat(sock, &st) != 0) {
    if (errno == ENOENT) {
      not_running(sock, msg, msglen);
      return NETSTASH_E_CONNECT_REFUSED;
    }
    snprintf(msg, msglen, "%s: %s", sock, strerror(errno));
    return NETSTASH_E_CONNECT_FAILED;
  }
  if (!S_ISSOCK(st.st_mode)) {
    snprintf(msg, msglen, "%s is not a socket: pass netd's socket (netd --socket PATH)", sock);
    return NETSTASH_E_CONNECT_FAILED;
  }
  snprintf(url, sizeof(url), "http://netd%s", path);
  if (!(h = curl_easy_init())) {
    snprintf(msg, msglen, "out of memory");
    return NETSTASH_E_NOMEM;
  }
  curl_easy_setopt(h, CURLOPT_URL, url);
  curl_easy_setopt(h, CURLOPT_UNIX_SOCKET_PATH, sock);
  curl_easy_setopt(h, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE);
  curl_easy_setopt(h, CURLOPT_NOPROXY, "*"); /* never an http_proxy from the environment */
  curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, CONNECT_TIMEOUT_MS);
  curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, TIMEOUT_MS);
  curl_easy_setopt(h, CURLOPT_USERAGENT, "netstash-cli");
  curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
  curl_easy_setopt(h, CURLOPT_WRITEDATA, r);
  if (!strcmp(method, "POST")) {
    curl_easy_setopt(h, CURLOPT_POST, 1L);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, "");
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, 0L);
  }
  cc = curl_easy_perform(h);
  curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r->status);
  curl_easy_getinfo(h, CURLINFO_OS_ERRNO, &oserr);
  switch (cc) {
  case CURLE_OK:
    rv = NETSTASH_OK;
    break;
  case CURLE_COULDNT_CONNECT:
    if (oserr == EACCES || oserr == EPERM) {
      snprintf(msg, msglen,
               "%s: permission denied (netd's socket is group-accessible: "
               "run as netd's user or a member of its group)",
               sock);
      rv = NETSTASH_E_CONNECT_FAILED;
    } else {
      /* ECONNREFUSED: a socket file left by a netd that is gone */
      not_running(sock, msg, msglen);
      rv = NETSTASH_E_CONNECT_REFUSED;
    }
    break;
  case CURLE_OPERATION_TIMEDOUT:
    snprintf(msg, msglen, "netd on %s did not answer within %ld s", sock, TIMEOUT_MS / 1000);
    rv = NETSTASH_E_TIMEOUT;
    break;
  case CURLE_WRITE_ERROR:
    if (r->too_large) {
      snprintf(msg, msglen, "the answer from %s is larger than %u bytes", sock, REPLY_MAX);
      rv = NETSTASH_E_TOO_LARGE;
    } else {
      snprintf(msg, msglen, "out of memory");
      rv = NETSTASH_E_NOMEM;
    }
    break;
  case CURLE_HTTP2:
  case CURLE_HTTP2_STREAM:
  case CURLE_GOT_NOTHING:
  case CURLE_RECV_ERROR:
  case CURLE_SEND_ERROR:
  case CURLE_WEIRD_SERVER_REPLY:
  case CURLE_PARTIAL_FILE:
    snprintf(msg, msglen, "%s does not answer as netd does (HTTP/2): %s", sock,
             *errbuf ? errbuf : curl_easy_strerror(cc));
    rv = NETSTASH_E_PROTOCOL;
    break;
  default:
    snprintf(msg, msglen, "%s: %s", sock, *errbuf ? errbuf : curl_easy_strerror(cc));
    rv = NETSTASH_E_INTERNAL;
    break;
  }
  curl_easy_cleanup(h);
  if (rv == NETSTASH_OK && !r->body && !(r->body = calloc(1, 1))) {
    snprintf(msg, msglen, "out of memory");
    rv = NETSTASH_E_NOMEM;
  }
  if (rv == NETSTASH_OK && (r->status < 200 || r->status > 299)) {
    /* netd's errors are JSON with a "message" (or "error"); else the text */
    json_t *j = json_loads(r->body, 0, NULL);
    const char *why = json_string_value(json_object_get(j, "message"));
    if (!why)
      why = json_string_value(json_object_get(j, "error"));
    if (r->status == 404)
      snprintf(msg, msglen, "netd on %s does not know %s %s (an older netd?)", sock, method, path);
    else
      snprintf(msg, msglen, "netd on %s answered %ld to %s %s%s%.200s", sock, r->status, method,
               path, why || r->len ? ": " : "", why ? why : r->body);
    json_decref(j);
    rv = NETSTASH_E_PROTOCOL;
  }
  return rv;
}

/* ------------------------------------------------------------ printing */

static int64_t ji(const json_t *o, const char *k) {
  return (int64_t)json_integer_value(json_object_get(o, k));
}

static const char *js(const json_t *o, const char *k, const char *dflt) {
  const char *s = json_string_value(json_object_get(o, k));
  return s ? s : dflt;
}

/* "45s", "12m", "3h 02m", "2d 03h". */
static const char *duration(int64_t s, char *buf, size_t n) {
  if (s < 0)
    s = 0;
  if (s < 60)
    snprintf(buf, n, "%llds", (long long)s);
  else if (s < 3600)
    snprintf(buf, n, "%lldm", (long long)(s / 60));
  else if (s < 86400)
    snprintf(buf, n, "%lldh %02lldm", (long long)(s / 3600), (long long)(s % 3600 / 60));
  else
    snprintf(buf, n, "%lldd %02lldh", (long long)(s / 86400), (long long)(s % 86400 / 3600));
  return buf;
}

/* A scalar as text; objects as "k v, k v"; arrays as "a, b". */
static void print_value(const json_t *v) {
  const char *k;
  const json_t *x;
  size_t i;
  int first = 1;
  switch (json_typeof(v)) {
  case JSON_STRING:
    fputs(json_string_value(v), stdout);
    break;
  case JSON_INTEGER:
    printf("%lld", (long long)json_integer_value(v));
    break;
  case JSON_REAL:
    printf("%g", json_real_value(v));
    break;
  case JSON_TRUE:
    fputs("yes", stdout);
    break;
  case JSON_FALSE:
    fputs("no", stdout);
    break;
  case JSON_NULL:
    fputs("-", stdout);
    break;
  case JSON_OBJECT:
    json_object_foreach((json_t *)v, k, x) {
      printf("%s%s ", first ? "" : ", ", k);
      print_value(x);
      first = 0;
    }
    break;
  case JSON_ARRAY:
    json_array_foreach(v, i, x) {
      fputs(i ? ", " : "", stdout);
      print_value(x);
    }
    break;
  }
}

#define STATUS_LABEL_W 15 /* status: "lookup threads:" and its value beside */

static const char *label(const char *key) {
  static const struct {
    const char *key, *label;
  } names[] = {
      {"uptime_s", "uptime"}, {"ipc_clients", "ipc clients"}, {"lookup_threads", "lookup threads"}};
  for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
    if (!strcmp(key, names[i].key))
      return names[i].label;
  return key;
}

static void print_warms(const json_t *warms) {
  const json_t *w;
  size_t i;
  time_t now = time(NULL);
  if (json_array_size(warms) == 0) {
    printf("%-*s none configured\n", STATUS_LABEL_W, "warms:");
    return;
  }
  puts("warms:");
  printf("  %-8s  %-7s  %5s  %6s  %-11s  %-20s  %9s  %-9s  %s\n", "STATE", "EVERY", "RUNS",
         "FAILED", "LAST RUN", "RESULT", "BYTES", "NEXT RUN", "MANIFEST");
  json_array_foreach(warms, i, w) {
    char every[32], last[48], next[48], bytes[32], d[32];
    const json_t *lr = json_object_get(w, "last_run"), *nr = json_object_get(w, "next_run");
    const char *res = js(w, "last_result", "-");
    if (!strncmp(res, "NETSTASH_", 9))
      res += 9;
    duration(ji(w, "interval_s"), every, sizeof(every));
    if (json_is_integer(lr))
      snprintf(last, sizeof(last), "%s ago",
               duration((int64_t)now - ji(w, "last_run"), d, sizeof(d)));
    else
      snprintf(last, sizeof(last), "never");
    if (json_is_integer(nr))
      snprintf(next, sizeof(next), "in %s",
               duration(ji(w, "next_run") - (int64_t)now, d, sizeof(d)));
    else
      snprintf(next, sizeof(next), "-");
    if (json_is_integer(lr) && json_is_string(json_object_get(w, "last_result")))
      cli_human_bytes((uint64_t)ji(w, "last_bytes"), bytes, sizeof(bytes));
    else
      snprintf(bytes, sizeof(bytes), "-");
    printf("  %-8s  %-7s  %5lld  %6lld  %-11s  %-20s  %9s  %-9s  %s\n", js(w, "state", "-"), every,
           (long long)ji(w, "runs"), (long long)ji(w, "failures"), last, res, bytes, next,
           js(w, "manifest", "-"));
    if (json_is_object(json_object_get(w, "progress"))) {
      const json_t *p = json_object_get(w, "progress");
      char b1[32], b2[32];
      printf("      this run: %lld of %lld resources fetched, %lld held already, %lld failed; "
             "%s of %s\n",
             (long long)ji(p, "done"), (long long)ji(p, "resources"), (long long)ji(p, "present"),
             (long long)ji(p, "failed"),
             cli_human_bytes((uint64_t)ji(p, "bytes_done"), b1, sizeof(b1)),
             cli_human_bytes((uint64_t)ji(p, "bytes_needed"), b2, sizeof(b2)));
    }
    if (json_is_string(json_object_get(w, "last_detail")))
      printf("      last error: %s\n", js(w, "last_detail", ""));
  }
}

static void print_status(const json_t *o) {
  const char *k;
  const json_t *v;
  json_object_foreach((json_t *)o, k, v) {
    char key[64], d[32];
    if (!strcmp(k, "warms"))
      continue;
    snprintf(key, sizeof(key), "%s:", label(k));
    printf("%-*s ", STATUS_LABEL_W, key);
    if (!strcmp(k, "uptime_s") && json_is_integer(v)) {
      fputs(duration(json_integer_value(v), d, sizeof(d)), stdout);
    } else if (!strcmp(k, "store") && json_is_object(v)) {
      char used[32], limit[32];
      const json_t *recs = json_object_get(v, "records");
      printf("%s used of a %s limit; %lld records evicted since netd started, %lld HTTP-cache "
             "and %lld preload records",
             cli_human_bytes((uint64_t)ji(v, "used_bytes"), used, sizeof(used)),
             cli_human_bytes((uint64_t)ji(v, "limit_bytes"), limit, sizeof(limit)),
             (long long)ji(v, "evicted"), (long long)ji(recs, "http"),
             (long long)ji(recs, "preload"));
    } else {
      print_value(v);
    }
    putchar('\n');
  }
  print_warms(json_object_get(o, "warms"));
}

/* ------------------------------------------------------------ the command */

static int fail(const char *sock, int json, netstash_error err, const char *msg) {
  if (json) {
    json_t *o = json_pack("{s:s, s:b, s:s, s:s}", "socket", sock, "ok", 0, "error",
                          netstash_error_name(err), "message", msg);
    if (o)
      cli_print_json(o, 0);
    json_decref(o);
  }
  fprintf(stderr, "netstash: --daemon: %s\n", msg);
  return cli_exit_code(err);
}

/* signals' arguments into a query string; 0 or -1 (printed). */
static int signals_query(int argc, char **argv, char *q, size_t qlen) {
  static const char *const keys[] = {"metered", "low_battery", "foreground"};
  size_t used = 0;
  q[0] = '\0';
  for (int i = 0; i < argc; i++) {
    const char *eq = strchr(argv[i], '=');
    int ok = 0;
    for (size_t k = 0; eq && k < sizeof(keys) / sizeof(keys[0]); k++)
      if ((size_t)(eq - argv[i]) == strlen(keys[k]) && !strncmp(argv[i], keys[k], strlen(keys[k])))
        ok = 1;
    if (!ok || (strcmp(eq + 1, "0") && strcmp(eq + 1, "1"))) {
      fprintf(stderr,
              "netstash: --daemon: signals: \"%s\": expected metered=0|1, "
              "low_battery=0|1 or foreground=0|1\n",
              argv[i]);
      return -1;
    }
    int n = snprintf(q + used, qlen - used, "%c%s", used ? '&' : '?', argv[i]);
    if (n < 0 || (size_t)n >= qlen - used) {
      fprintf(stderr, "netstash: --daemon: signals: too many arguments\n");
      return -1;
    }
    used += (size_t)n;
  }
  return 0;
}

int cmd_daemon(int argc, char **argv) {
  static const struct option opts[] = {
      {"json", no_argument, NULL, 'j'}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
  const char *sock, *cmd, *method = "GET", *path;
  char msg[1024], query[128] = "", target[160];
  reply r = {0};
  json_t *j = NULL;
  netstash_error err;
  int json = 0, c, rc, npos = 0;
  char **pos;

  /* argv[0]: --daemon SOCKET or --daemon=SOCKET */
  if (!strncmp(argv[0], "--daemon=", 9)) {
    sock = argv[0] + 9;
    argc -= 1;
    argv += 1;
  } else if (argc >= 2) {
    sock = argv[1];
    argc -= 2;
    argv += 2;
  } else {
    fputs("netstash: --daemon needs the path of netd's socket\n\n", stderr);
    fputs(usage, stderr);
    return EXIT_USAGE;
  }
  if (!strcmp(sock, "--help") || !strcmp(sock, "-h")) {
    fputs(usage, stdout);
    return 0;
  }
  if (!*sock || *sock == '-') {
    fprintf(stderr, "netstash: --daemon needs the path of netd's socket, not \"%s\"\n\n", sock);
    fputs(usage, stderr);
    return EXIT_USAGE;
  }
  if (argc < 1) {
    fputs("netstash: --daemon: missing command (status, warm, ls, signals, metrics)\n\n", stderr);
    fputs(usage, stderr);
    return EXIT_USAGE;
  }
  /* the command and its options; argv[0] (the command) is getopt's name */
  optind = 1;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
    case 'j':
      json = 1;
      break;
    case 'h':
      fputs(usage, stdout);
      return 0;
    default:
      fputs(usage, stderr);
      return EXIT_USAGE;
    }
  }
  cmd = argv[0];
  pos = argv + optind;
  npos = argc - optind;
  if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
    fputs(usage, stdout);
    return 0;
  }
  if (!strcmp(cmd, "status")) {
    path = "/status";
  } else if (!strcmp(cmd, "warm")) {
    method = "POST";
    path = "/warm";
  } else if (!strcmp(cmd, "ls")) {
    path = "/ls";
  } else if (!strcmp(cmd, "metrics")) {
    path = "/metrics";
  } else if (!strcmp(cmd, "signals")) {
    method = "POST";
    path = "/signals";
    if (signals_query(npos, pos, query, sizeof(query)) != 0)
      return EXIT_USAGE;
    npos = 0;
  } else {
    fprintf(stderr, "netstash: --daemon: unknown command \"%s\"\n\n", cmd);
    fputs(usage, stderr);
    return EXIT_USAGE;
  }
  if (npos > 0) {
    fprintf(stderr, "netstash: --daemon: %s: unexpected argument \"%s\"\n\n", cmd, pos[0]);
    fputs(usage, stderr);
    return EXIT_USAGE;
  }

  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
    return fail(sock, json, NETSTASH_E_INTERNAL, "libcurl initialisation failed");
  snprintf(target, sizeof(target), "%s%s", path, query);
  err = call(sock, method, target, &r, msg, sizeof(msg));
  if (err != NETSTASH_OK) {
    rc = fail(sock, json, err, msg);
    goto done;
  }
  rc = 0;
  if (!strcmp(cmd, "metrics") || json) {
    /* as netd sent it */
    fwrite(r.body, 1, r.len, stdout);
    if (r.len && r.body[r.len - 1] != '\n')
      putchar('\n');
    goto done;
  }
  if (!(j = json_loads(r.body, 0, NULL))) {
    snprintf(msg, sizeof(msg), "netd on %s sent an unreadable answer to %s %s", sock, method,
             target);
    rc = fail(sock, 0, NETSTASH_E_PROTOCOL, msg);
    goto done;
  }
  if (!strcmp(cmd, "status")) {
    print_status(j);
  } else if (!strcmp(cmd, "warm")) {
    int64_t n = ji(j, "started");
    printf("started %lld warm%s\n", (long long)n, n == 1 ? "" : "s");
    if (n == 0)
      printf("note: none started: each is running already or deferred by host signals, or netd "
             "has no warm schedules (netstash --daemon %s status)\n",
             sock);
  } else if (!strcmp(cmd, "ls")) {
    const json_t *list = json_object_get(j, "manifests");
    if (json_array_size(list) == 0)
      printf("no preload manifests in %s\n", js(j, "profile", "netd's profile"));
    else
      cli_print_manifest_table(list, 0);
  } else { /* signals */
    print_value(j);
    putchar('\n');
  }
done:
  json_decref(j);
  free(r.body);
  curl_global_cleanup();
  return rc;
}
