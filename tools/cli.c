/*
 * cli.c — the helpers the netstash commands share (tools/cli.h): exit codes,
 * error and hint lines, the default profile, reading a file, the context,
 * number and source names for get and load, SIGINT/SIGTERM, and the
 * [--profile DIR] [--json] arguments of the profile commands with their
 * JSON output.
 */
#define _GNU_SOURCE 1
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "cli.h"

int cli_exit_code(netstash_error err) {
  switch (err) {
  case NETSTASH_OK:
    return EXIT_OK_;
  case NETSTASH_E_BAD_URL:
    return EXIT_BAD_URL;
  case NETSTASH_E_DNS_NOT_FOUND:
  case NETSTASH_E_DNS_TIMEOUT:
  case NETSTASH_E_DNS_FAILED:
    return EXIT_DNS;
  case NETSTASH_E_CONNECT_REFUSED:
  case NETSTASH_E_CONNECT_FAILED:
  case NETSTASH_E_NETWORK:
    return EXIT_CONNECT;
  case NETSTASH_E_TLS_HANDSHAKE:
  case NETSTASH_E_TLS_VERSION:
  case NETSTASH_E_TLS_CERT_EXPIRED:
  case NETSTASH_E_TLS_CERT_UNTRUSTED:
  case NETSTASH_E_TLS_CERT_HOSTNAME:
  case NETSTASH_E_TLS_CERT_INVALID:
  case NETSTASH_E_TLS_CA_FILE:
    return EXIT_TLS;
  case NETSTASH_E_TIMEOUT:
    return EXIT_TIMEOUT;
  case NETSTASH_E_PROTOCOL:
  case NETSTASH_E_TRUNCATED:
  case NETSTASH_E_DECODE:
  case NETSTASH_E_SEND:
  case NETSTASH_E_RECV:
  case NETSTASH_E_TOO_MANY_REDIRECTS:
    return EXIT_PROTOCOL;
  case NETSTASH_E_IO:
  case NETSTASH_E_NOT_FOUND:
    return EXIT_IO;
  case NETSTASH_E_TOO_LARGE:
    return EXIT_TOO_LARGE;
  case NETSTASH_E_CANCELED:
    return EXIT_CANCELED;
  case NETSTASH_E_NOT_CACHED:
    return EXIT_NOT_CACHED;
  case NETSTASH_E_STORE_CORRUPT:
  case NETSTASH_E_STORE_VERSION:
  case NETSTASH_E_STORE_FULL:
  case NETSTASH_E_STORE_BUSY:
    return EXIT_STORE;
  case NETSTASH_E_MANIFEST_INVALID:
  case NETSTASH_E_SIGNATURE:
  case NETSTASH_E_MANIFEST_EXPIRED:
  case NETSTASH_E_DOWNGRADE:
    return EXIT_MANIFEST;
  case NETSTASH_E_INTEGRITY:
  case NETSTASH_E_INCOMPLETE:
    return EXIT_INTEGRITY;
  case NETSTASH_E_NOT_TARGETED:
  case NETSTASH_E_DEFERRED:
    return EXIT_NOT_APPLIED;
  case NETSTASH_E_INVALID_ARGUMENT:
  case NETSTASH_E_UNSUPPORTED:
    return EXIT_USAGE;
  default:
    return EXIT_INTERNAL;
  }
}

const char *cli_hint(netstash_error err) {
  switch (err) {
  case NETSTASH_E_DNS_NOT_FOUND:
    return "check the host name, or pin it with --resolve HOST:PORT:ADDR";
  case NETSTASH_E_DNS_TIMEOUT:
  case NETSTASH_E_DNS_FAILED:
    return "check the DNS server (--dns-server ADDR:PORT) or pin the host with --resolve";
  case NETSTASH_E_CONNECT_REFUSED:
    return "nothing listens on that port: is the server running?";
  case NETSTASH_E_TLS_VERSION:
    return "the server does not speak TLS 1.3; allow TLS 1.2 with --tls-min 1.2 if you trust it";
  case NETSTASH_E_TLS_CERT_EXPIRED:
    return "the server's certificate is outside its validity period (check the clocks)";
  case NETSTASH_E_TLS_CERT_UNTRUSTED:
    return "the certificate is not signed by a trusted CA; pass the CA with --cacert FILE";
  case NETSTASH_E_TLS_CERT_HOSTNAME:
    return "the certificate is for another name: use the name it was issued for";
  case NETSTASH_E_TLS_CA_FILE:
    return "the --cacert file cannot be read or holds no certificate";
  case NETSTASH_E_TIMEOUT:
    return "raise --timeout / --connect-timeout, or check the network";
  case NETSTASH_E_TRUNCATED:
    return "the server closed the connection before the whole body arrived";
  case NETSTASH_E_TOO_LARGE:
    return "a body over its limit: raise it with --max-body BYTES if the size is expected; "
           "response headers have fixed limits (100 KB a line, 256 KiB and 4096 fields in all)";
  case NETSTASH_E_STORE_CORRUPT:
    return "check it with `netstash verify --profile DIR`; `netstash purge --profile DIR` "
           "starts an empty store";
  case NETSTASH_E_STORE_VERSION:
    return "a newer netstash wrote this profile: use that version, or another --profile";
  case NETSTASH_E_STORE_BUSY:
    return "another process holds the store's write lock; retry, or stop it";
  case NETSTASH_E_NOT_CACHED:
    return "the response is not in the profile's cache; allow the network";
  default:
    return NULL;
  }
}

void cli_print_hint(netstash_error err) {
  const char *hint = cli_hint(err);
  if (hint)
    fprintf(stderr, "hint: %s\n", hint);
}

char *cli_default_profile(void) {
  const char *xdg = getenv("XDG_DATA_HOME"), *home = getenv("HOME");
  char *p = NULL;
  if (xdg && *xdg) {
    if (asprintf(&p, "%s/netstash", xdg) < 0)
      p = NULL;
  } else if (asprintf(&p, "%s/.local/share/netstash", home && *home ? home : ".") < 0) {
    p = NULL;
  }
  return p;
}

/* Reads a whole file ("-": standard input), at most max bytes: NETSTASH_E_TOO_LARGE
 * beyond, NETSTASH_E_IO (detail says why), NETSTASH_E_NOMEM. *out: free(). */
netstash_error cli_read_file(const char *path, size_t max, uint8_t **out, size_t *len, char *detail,
                             size_t detail_len) {
  FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
  uint8_t *buf = NULL;
  size_t n = 0, cap = 0;
  netstash_error rv = NETSTASH_E_IO;
  *out = NULL;
  *len = 0;
  if (!f) {
    snprintf(detail, detail_len, "%s: %s", path, strerror(errno));
    return NETSTASH_E_IO;
  }
  for (;;) {
    size_t got;
    if (n == cap) {
      size_t ncap = cap ? cap * 2 : 65536;
      uint8_t *nb;
      if (ncap > max + 1)
        ncap = max + 1;
      if (ncap == cap) {
        rv = NETSTASH_E_TOO_LARGE;
        snprintf(detail, detail_len, "%s: larger than %zu bytes", path, max);
        goto done;
      }
      if (!(nb = realloc(buf, ncap))) {
        rv = NETSTASH_E_NOMEM;
        goto done;
      }
      buf = nb;
      cap = ncap;
    }
    got = fread(buf + n, 1, cap - n, f);
    n += got;
    if (got == 0) {
      if (ferror(f)) {
        snprintf(detail, detail_len, "%s: read error", path);
        goto done;
      }
      break;
    }
  }
  *out = buf;
  *len = n;
  buf = NULL;
  rv = NETSTASH_OK;
done:
  free(buf);
  if (f != stdin)
    fclose(f);
  return rv;
}

void cli_error(const char *cmd, const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "netstash: %s: ", cmd);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
}

int cli_store_exists(const char *profile) {
  char path[4096];
  struct stat st;
  int n = snprintf(path, sizeof(path), "%s/store/data.mdb", profile);
  return n > 0 && (size_t)n < sizeof(path) && stat(path, &st) == 0;
}

netstash_error cli_profile_ctx(const char *cmd, const char *profile, netstash_ctx **ctx) {
  netstash_options *o = NULL;
  char detail[512] = "";
  netstash_error err = netstash_options_new(&o);
  *ctx = NULL;
  if (err == NETSTASH_OK)
    err = netstash_options_set_profile_dir(o, profile);
  if (err == NETSTASH_OK)
    err = netstash_ctx_new(ctx, o, detail, sizeof(detail));
  netstash_options_del(o);
  if (err != NETSTASH_OK) {
    cli_error(cmd, "cannot open the profile %s: %s%s%s", profile, netstash_strerror(err),
              *detail ? ": " : "", detail);
    cli_print_hint(err);
  }
  return err;
}

netstash_error cli_ctx_new(const char *cmd, const netstash_options *o, netstash_ctx **ctx) {
  char detail[256] = "";
  netstash_error err = netstash_ctx_new(ctx, o, detail, sizeof(detail));
  if (err != NETSTASH_OK) {
    cli_error(cmd, "cannot start: %s%s%s", netstash_strerror(err), *detail ? ": " : "", detail);
    cli_print_hint(err);
  }
  return err;
}

const char *cli_human_bytes(uint64_t b, char *buf, size_t n) {
  static const char *const unit[] = {"KiB", "MiB", "GiB", "TiB"};
  double v = (double)b;
  int u = -1;
  if (b < 1024) {
    snprintf(buf, n, "%llu B", (unsigned long long)b);
    return buf;
  }
  while (v >= 1024 && u < 3) {
    v /= 1024;
    u++;
  }
  snprintf(buf, n, "%.1f %s", v, unit[u]);
  return buf;
}

int cli_parse_u32(const char *s, uint32_t *out) {
  char *end;
  unsigned long v;
  errno = 0;
  v = strtoul(s, &end, 10);
  if (errno || end == s || *end || v > UINT32_MAX)
    return -1;
  *out = (uint32_t)v;
  return 0;
}

const char *cli_source_name(netstash_source s) {
  switch (s) {
  case NETSTASH_SOURCE_NETWORK:
    return "network";
  case NETSTASH_SOURCE_CACHE:
    return "cache";
  case NETSTASH_SOURCE_REVALIDATED:
    return "revalidated";
  case NETSTASH_SOURCE_PRELOAD:
    return "preload";
  case NETSTASH_SOURCE_NONE:
    break;
  }
  return "none";
}

/* ------------------------------------------------------------ interruption */

static volatile sig_atomic_t interrupted;

static void on_signal(int sig) {
  (void)sig;
  interrupted = 1;
}

void cli_catch_signals(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
}

int cli_interrupted(void) {
  return interrupted;
}

/* ------------------------------------------------------------ profile commands */

int cli_parse_args(const char *cmd, const char *usage, int argc, char **argv, int min_pos,
                   int max_pos, cli_resources resources, cli_args *a) {
  static const struct option opts[] = {{"profile", required_argument, NULL, 'p'},
                                       {"json", no_argument, NULL, 'j'},
                                       {"help", no_argument, NULL, 'h'},
                                       {"resources", no_argument, NULL, 'r'},
                                       {NULL, 0, NULL, 0}};
  /* where --resources is no option, getopt reports it as unknown */
  static const struct option no_resources[] = {{"profile", required_argument, NULL, 'p'},
                                               {"json", no_argument, NULL, 'j'},
                                               {"help", no_argument, NULL, 'h'},
                                               {NULL, 0, NULL, 0}};
  int c;
  memset(a, 0, sizeof(*a));
  if (max_pos > CLI_ARGS_MAX_POS)
    max_pos = CLI_ARGS_MAX_POS;
  optind = 1;
  while ((c = getopt_long(argc, argv, "h", resources == CLI_RESOURCES_NONE ? no_resources : opts,
                          NULL)) != -1) {
    switch (c) {
    case 'p':
      a->profile = optarg;
      break;
    case 'j':
      a->json = 1;
      break;
    case 'r':
      if (resources != CLI_RESOURCES_ALLOW) {
        cli_error(cmd, "unknown option --resources");
        fputs(usage, stderr);
        return EXIT_USAGE;
      }
      a->resources = 1;
      break;
    case 'h':
      fputs(usage, stdout);
      return 0;
    default:
      fputs(usage, stderr);
      return EXIT_USAGE;
    }
  }
  for (; optind < argc; optind++) {
    if (a->npos == max_pos) {
      cli_error(cmd, "unexpected argument \"%s\"", argv[optind]);
      fputs(usage, stderr);
      return EXIT_USAGE;
    }
    a->pos[a->npos++] = argv[optind];
  }
  if (a->npos < min_pos) {
    cli_error(cmd, "missing argument");
    fputs(usage, stderr);
    return EXIT_USAGE;
  }
  if (!a->profile && !(a->profile = a->defprofile = cli_default_profile())) {
    cli_error(cmd, "out of memory");
    return EXIT_INTERNAL;
  }
  return -1;
}

void cli_args_free(cli_args *a) {
  free(a->defprofile);
  a->defprofile = NULL;
}

int cli_print_json(const json_t *o, size_t flags) {
  int rc = json_dumpf(o, stdout, JSON_COMPACT | JSON_PRESERVE_ORDER | flags);
  fputc('\n', stdout);
  return rc;
}

json_t *cli_status_json(const char *profile, netstash_error err, const char *message) {
  return json_pack("{s:s, s:b, s:o, s:s}", "profile", profile, "ok", err == NETSTASH_OK, "error",
                   err == NETSTASH_OK ? json_null() : json_string(netstash_error_name(err)),
                   "message", message);
}
