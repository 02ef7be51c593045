/*
 * netstash — command line tool: fetch, and (in later releases) warm, inspect,
 * verify and purge the cache, lint and sign manifests.
 */
#define _GNU_SOURCE 1
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const char usage[] =
    "usage: netstash [--version] [--help] COMMAND [ARGS]\n"
    "\n"
    "Commands:\n"
    "  get URL       fetch a URL over HTTP/1.1 or HTTP/2 (netstash get --help)\n"
    "  load URL      load a page and its subresources as a browser would (load --help)\n"
    "  verify        check the profile's store and re-hash its preload bodies\n"
    "  purge [ID]    delete the profile's store, or one preload manifest\n"
    "  cookies       list, import, export, clear cookie jars (cookies --help)\n"
    "  manifest      keygen, sign, verify, lint, make, import preload manifests\n"
    "  warm SOURCE   warm the preload cache from a signed manifest (warm --help)\n"
    "  install FILE  install an offline bundle, no network (install --help)\n"
    "  pack ID       write an offline bundle of a manifest (pack --help)\n"
    "  ls [ID]       list the preload manifests of the profile (ls --help)\n"
    "  show URL      which preload manifest answers URL, and with what\n"
    "  rollback ID   make the previous version of a manifest active again\n"
    "  gc            delete unreferenced bodies now\n"
    "  stats         preload and store figures\n"
    "\n"
    "Exit codes: 0 success (any HTTP status), 1 internal error, 2 usage,\n"
    "3 bad URL, 4 DNS, 5 connect, 6 TLS, 7 timeout, 8 HTTP protocol error or\n"
    "truncated body, 9 local I/O, 10 size limit, 11 canceled, 12 not in the\n"
    "cache (offline), 13 store unusable (corrupt, newer, full, busy),\n"
    "14 manifest invalid or signature refused, 15 integrity mismatch or\n"
    "critical preload resources missing, 16 manifest not for this device\n"
    "(rollout) or deferred (metered network).\n"
    "See netstash(1).\n";

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
    return "raise the limit with --max-body BYTES if the size is expected";
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
netstash_error cli_read_file(const char *path, size_t max, uint8_t **out, size_t *len,
                                char *detail, size_t detail_len) {
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

int main(int argc, char **argv) {
  if (argc < 2) {
    fputs(usage, stderr);
    return EXIT_USAGE;
  }
  if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
    fputs(usage, stdout);
    return 0;
  }
  if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
    uint32_t feat = 0;
    printf("netstash %s (features:%s%s%s%s%s)\n", netstash_version(NULL, &feat),
           feat & NETSTASH_FEATURE_HTTP2 ? " http2" : "",
           feat & NETSTASH_FEATURE_HTTP3 ? " http3" : "",
           feat & NETSTASH_FEATURE_BROTLI ? " br" : "",
           feat & NETSTASH_FEATURE_GZIP ? " gzip" : "",
           feat & NETSTASH_FEATURE_HSTS ? " hsts" : "");
    return 0;
  }
  if (!strcmp(argv[1], "get"))
    return cmd_get(argc - 1, argv + 1);
  if (!strcmp(argv[1], "load"))
    return cmd_load(argc - 1, argv + 1);
  if (!strcmp(argv[1], "verify"))
    return cmd_verify(argc - 1, argv + 1);
  if (!strcmp(argv[1], "purge"))
    return cmd_purge(argc - 1, argv + 1);
  if (!strcmp(argv[1], "cookies"))
    return cmd_cookies(argc - 1, argv + 1);
  if (!strcmp(argv[1], "manifest"))
    return cmd_manifest(argc - 1, argv + 1);
  if (!strcmp(argv[1], "warm"))
    return cmd_warm(argc - 1, argv + 1);
  if (!strcmp(argv[1], "install"))
    return cmd_install(argc - 1, argv + 1);
  if (!strcmp(argv[1], "pack"))
    return cmd_pack(argc - 1, argv + 1);
  if (!strcmp(argv[1], "ls"))
    return cmd_ls(argc - 1, argv + 1);
  if (!strcmp(argv[1], "show"))
    return cmd_show(argc - 1, argv + 1);
  if (!strcmp(argv[1], "rollback"))
    return cmd_rollback(argc - 1, argv + 1);
  if (!strcmp(argv[1], "gc"))
    return cmd_gc(argc - 1, argv + 1);
  if (!strcmp(argv[1], "stats"))
    return cmd_stats(argc - 1, argv + 1);
  fprintf(stderr, "netstash: unknown command \"%s\"\n\n%s", argv[1], usage);
  return EXIT_USAGE;
}
