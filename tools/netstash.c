/*
 * netstash — command line tool: fetch, and (in later releases) warm, inspect,
 * verify and purge the cache, lint and sign manifests.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const char usage[] =
    "usage: netstash [--version] [--help] COMMAND [ARGS]\n"
    "       netstash --daemon SOCKET status|warm|ls|signals|metrics [--json]\n"
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
    "  cache ls|rm   list the HTTP cache, remove a URL from it (cache --help)\n"
    "\n"
    "--daemon SOCKET asks the netd serving SOCKET instead of opening a profile\n"
    "(netstash --daemon SOCKET --help).\n"
    "\n"
    "Exit codes: 0 success (any HTTP status), 1 internal error, 2 usage,\n"
    "3 bad URL, 4 DNS, 5 connect (--daemon: netd is not running on SOCKET),\n"
    "6 TLS, 7 timeout, 8 HTTP protocol error or truncated body (--daemon: an\n"
    "unexpected answer), 9 local I/O, 10 size limit, 11 canceled, 12 not in\n"
    "the cache (offline), 13 store unusable (corrupt, newer, full, busy),\n"
    "14 manifest invalid or signature refused, 15 integrity mismatch or\n"
    "critical preload resources missing, 16 manifest not for this device\n"
    "(rollout) or deferred (metered network).\n"
    "See netstash(1).\n";

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
    const char *ver = netstash_version(NULL, &feat); /* before feat is read */
    printf(
        "netstash %s (features:%s%s%s%s%s%s)\n", ver, feat & NETSTASH_FEATURE_HTTP2 ? " http2" : "",
        feat & NETSTASH_FEATURE_HTTP3 ? " http3" : "", feat & NETSTASH_FEATURE_BROTLI ? " br" : "",
        feat & NETSTASH_FEATURE_GZIP ? " gzip" : "", feat & NETSTASH_FEATURE_ZSTD ? " zstd" : "",
        feat & NETSTASH_FEATURE_HSTS ? " hsts" : "");
    return 0;
  }
  if (!strcmp(argv[1], "--daemon") || !strncmp(argv[1], "--daemon=", 9))
    return cmd_daemon(argc - 1, argv + 1);
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
  if (!strcmp(argv[1], "cache"))
    return cmd_cache(argc - 1, argv + 1);
  fprintf(stderr, "netstash: unknown command \"%s\"\n\n%s", argv[1], usage);
  return EXIT_USAGE;
}
