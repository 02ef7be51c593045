/*
 * netstash get — fetch one URL. The --json form is a contract for scripts:
 * extend it, never change it.
 */
#define _GNU_SOURCE 1
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "cli.h"

static const char get_usage[] =
    "usage: netstash get URL [options]\n"
    "\n"
    "Fetches URL and writes the body to stdout (or -o FILE). Any HTTP status is\n"
    "an answer (exit 0); DNS, connect, TLS and protocol failures print a reason\n"
    "and exit non-zero (see netstash --help for the codes).\n"
    "\n"
    "Options:\n"
    "  -o, --output FILE        write the body to FILE\n"
    "  -H, --header 'N: V'      add a request header (repeatable)\n"
    "  -X, --request METHOD     request method (default GET, POST with --data)\n"
    "      --data FILE          send FILE as the request body ('-' for stdin)\n"
    "      --http1.1            use HTTP/1.1 only\n"
    "      --http2              prefer HTTP/2 (prior knowledge for http://)\n"
    "      --http3              HTTP/3 only (QUIC; no fallback to TCP)\n"
    "      --no-http3           never HTTP/3, even when the server offers it\n"
    "      --remote SOCKET      ask a running netd (remote mode): its profile's\n"
    "                           preload store, cache and cookies answer\n"
    "      --cacert FILE        trust the CAs in FILE instead of the system store\n"
    "      --tls-min 1.2|1.3    lowest TLS version accepted (default 1.3)\n"
    "      --resolve H:P:ADDR   pin host H port P to ADDR (repeatable)\n"
    "      --dns-server A:P     use this DNS server instead of resolv.conf\n"
    "      --profile DIR        profile directory (HTTP cache store; later cookies, HSTS)\n"
    "      --no-cache           do not use the profile's HTTP cache (read or write)\n"
    "      --offline            no network at all: answer from the profile's preload\n"
    "                           cache or HTTP cache, else fail (exit 12)\n"
    "      --jar NAME           cookie jar of the profile to use (default \"default\")\n"
    "      --no-cookies         neither send nor store cookies\n"
    "      --site-for-cookies URL  the request's site for cookies (SameSite); the\n"
    "                           request is then a subresource, not a navigation\n"
    "      --initiator ORIGIN   the origin that initiated the request\n"
    "      --top-level-site URL top-level site (cache partition, CHIPS cookies)\n"
    "      --timeout MS         whole-transfer timeout\n"
    "      --connect-timeout MS connect timeout (default 10000)\n"
    "  -L, --location           follow redirects (up to --max-redirs, default 20)\n"
    "      --max-redirs N       redirect limit with -L\n"
    "      --raw                do not decode br/gzip bodies\n"
    "      --max-body BYTES     fail when the (decoded) body is larger\n"
    "      --json               print one JSON object describing the response on\n"
    "                           stdout (the body goes to -o FILE or nowhere)\n"
    "  -v, --verbose            protocol, TLS, headers and timings on stderr\n"
    "  -h, --help               this text\n";

typedef struct get_state {
  FILE *out;
  int out_error;
  int verbose;
  int progress;
  uint64_t total;
  uint64_t got;
  struct timespec last;
} get_state;

static void on_response(netstash_fetch *f, void *ud) {
  get_state *st = ud;
  const char *cl = netstash_fetch_header(f, "content-length");
  if (cl)
    st->total = strtoull(cl, NULL, 10);
  if (st->verbose) {
    size_t i, n = netstash_fetch_header_count(f);
    const char *tv = netstash_fetch_tls_version(f);
    fprintf(stderr, "* %s%s%s%s%s\n", netstash_fetch_protocol_name(f), *tv ? ", " : "", tv,
            *tv ? ", " : "", netstash_fetch_tls_cipher(f));
    fprintf(stderr, "< %s %d\n", netstash_fetch_protocol_name(f), netstash_fetch_status(f));
    for (i = 0; i < n; i++) {
      const char *name, *value;
      netstash_fetch_header_at(f, i, &name, &value);
      fprintf(stderr, "< %s: %s\n", name, value);
    }
  }
}

static void show_progress(get_state *st, int final) {
  struct timespec now;
  double ms;
  clock_gettime(CLOCK_MONOTONIC, &now);
  ms = (double)(now.tv_sec - st->last.tv_sec) * 1e3 +
       (double)(now.tv_nsec - st->last.tv_nsec) / 1e6;
  if (!final && ms < 100)
    return;
  st->last = now;
  if (st->total) {
    int pct = (int)(st->got * 100 / (st->total ? st->total : 1));
    int bars = pct / 4;
    fprintf(stderr, "\r[%-25.*s] %3d%% %llu/%llu bytes", bars, "#########################",
            pct > 100 ? 100 : pct, (unsigned long long)st->got,
            (unsigned long long)st->total);
  } else {
    fprintf(stderr, "\r%llu bytes", (unsigned long long)st->got);
  }
  if (final)
    fputc('\n', stderr);
}

static void on_data(netstash_fetch *f, const uint8_t *data, size_t len, void *ud) {
  get_state *st = ud;
  st->got += len;
  if (st->out && !st->out_error && fwrite(data, 1, len, st->out) != len) {
    st->out_error = errno ? errno : EIO;
    netstash_fetch_cancel(f);
  }
  if (st->progress)
    show_progress(st, 0);
}

static double ms(const netstash_fetch *f, netstash_timing t) {
  return (double)netstash_fetch_timing_us(f, t) / 1000.0;
}

static json_t *timings_json(const netstash_fetch *f) {
  return json_pack("{s:f, s:f, s:f, s:f, s:f}", "dns_ms", ms(f, NETSTASH_TIMING_DNS),
                   "connect_ms", ms(f, NETSTASH_TIMING_CONNECT), "tls_ms",
                   ms(f, NETSTASH_TIMING_TLS), "ttfb_ms", ms(f, NETSTASH_TIMING_TTFB),
                   "total_ms", ms(f, NETSTASH_TIMING_TOTAL));
}

static int print_json(const char *url, netstash_fetch *f, netstash_error err,
                      const char *local_error) {
  json_t *o = json_object(), *hdrs = json_object(), *list = json_array();
  size_t i, n = f ? netstash_fetch_header_count(f) : 0;
  int rc;
  for (i = 0; i < n; i++) {
    const char *name, *value;
    json_t *prev;
    netstash_fetch_header_at(f, i, &name, &value);
    json_array_append_new(list, json_pack("[s,s]", name, value));
    prev = json_object_get(hdrs, name);
    if (prev) {
      /* RFC 9110 5.3: combine with ", " (Set-Cookie, which cannot be
       * combined, is joined with "\n"; header_list has each line). */
      char *joined;
      const char *sep = strcmp(name, "set-cookie") == 0 ? "\n" : ", ";
      if (asprintf(&joined, "%s%s%s", json_string_value(prev), sep, value) >= 0) {
        json_object_set_new(hdrs, name, json_string(joined));
        free(joined);
      }
    } else {
      json_object_set_new(hdrs, name, json_string(value));
    }
  }
  json_object_set_new(o, "url", json_string(url));
  json_object_set_new(o, "effective_url",
                      json_string(f ? netstash_fetch_effective_url(f) : url));
  json_object_set_new(o, "ok", json_boolean(err == NETSTASH_OK && !local_error));
  json_object_set_new(o, "status", json_integer(f ? netstash_fetch_status(f) : 0));
  json_object_set_new(o, "protocol", json_string(f ? netstash_fetch_protocol_name(f) : ""));
  json_object_set_new(o, "tls_version", json_string(f ? netstash_fetch_tls_version(f) : ""));
  json_object_set_new(o, "tls_cipher", json_string(f ? netstash_fetch_tls_cipher(f) : ""));
  json_object_set_new(o, "headers", hdrs);
  json_object_set_new(o, "header_list", list);
  json_object_set_new(o, "bytes", json_integer(f ? (json_int_t)netstash_fetch_body_bytes(f) : 0));
  json_object_set_new(o, "wire_bytes",
                      json_integer(f ? (json_int_t)netstash_fetch_wire_bytes(f) : 0));
  json_object_set_new(o, "source",
                      json_string(f ? cli_source_name(netstash_fetch_source(f)) : "none"));
  json_object_set_new(o, "cache_reason", json_string(f ? netstash_fetch_cache_reason(f) : ""));
  json_object_set_new(o, "new_connections",
                      json_integer(f ? netstash_fetch_new_connections(f) : 0));
  json_object_set_new(o, "timings", f ? timings_json(f) : json_object());
  if (err != NETSTASH_OK || local_error) {
    json_object_set_new(o, "error", json_string(local_error ? "NETSTASH_E_IO"
                                                            : netstash_error_name(err)));
    json_object_set_new(o, "error_code", json_integer(local_error ? NETSTASH_E_IO : err));
    json_object_set_new(o, "message", json_string(local_error ? local_error
                                                   : (f && *netstash_fetch_error_detail(f))
                                                       ? netstash_fetch_error_detail(f)
                                                       : netstash_strerror(err)));
  } else {
    json_object_set_new(o, "error", json_null());
  }
  rc = cli_print_json(o, JSON_REAL_PRECISION(6));
  fflush(stdout);
  json_decref(o);
  return rc;
}

enum {
  OPT_DATA = 256,
  OPT_HTTP11,
  OPT_HTTP2,
  OPT_HTTP3,
  OPT_NO_HTTP3,
  OPT_REMOTE,
  OPT_CACERT,
  OPT_RESOLVE,
  OPT_DNS,
  OPT_PROFILE,
  OPT_JSON,
  OPT_TIMEOUT,
  OPT_CTIMEOUT,
  OPT_TLSMIN,
  OPT_RAW,
  OPT_MAXREDIRS,
  OPT_MAXBODY,
  OPT_NOCACHE,
  OPT_JAR,
  OPT_NOCOOKIES,
  OPT_SFC,
  OPT_INITIATOR,
  OPT_TOPSITE,
  OPT_OFFLINE
};

static const struct option get_opts[] = {
    {"output", required_argument, NULL, 'o'},
    {"header", required_argument, NULL, 'H'},
    {"request", required_argument, NULL, 'X'},
    {"data", required_argument, NULL, OPT_DATA},
    {"http1.1", no_argument, NULL, OPT_HTTP11},
    {"http2", no_argument, NULL, OPT_HTTP2},
    {"http3", no_argument, NULL, OPT_HTTP3},
    {"no-http3", no_argument, NULL, OPT_NO_HTTP3},
    {"remote", required_argument, NULL, OPT_REMOTE},
    {"cacert", required_argument, NULL, OPT_CACERT},
    {"resolve", required_argument, NULL, OPT_RESOLVE},
    {"dns-server", required_argument, NULL, OPT_DNS},
    {"profile", required_argument, NULL, OPT_PROFILE},
    {"json", no_argument, NULL, OPT_JSON},
    {"timeout", required_argument, NULL, OPT_TIMEOUT},
    {"connect-timeout", required_argument, NULL, OPT_CTIMEOUT},
    {"tls-min", required_argument, NULL, OPT_TLSMIN},
    {"raw", no_argument, NULL, OPT_RAW},
    {"location", no_argument, NULL, 'L'},
    {"max-redirs", required_argument, NULL, OPT_MAXREDIRS},
    {"max-body", required_argument, NULL, OPT_MAXBODY},
    {"no-cache", no_argument, NULL, OPT_NOCACHE},
    {"jar", required_argument, NULL, OPT_JAR},
    {"no-cookies", no_argument, NULL, OPT_NOCOOKIES},
    {"site-for-cookies", required_argument, NULL, OPT_SFC},
    {"initiator", required_argument, NULL, OPT_INITIATOR},
    {"top-level-site", required_argument, NULL, OPT_TOPSITE},
    {"offline", no_argument, NULL, OPT_OFFLINE},
    {"verbose", no_argument, NULL, 'v'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0}};

#define MAX_LIST 64

int cmd_get(int argc, char **argv) {
  const char *outfile = NULL, *method = NULL, *datafile = NULL, *cacert = NULL;
  const char *dns = NULL, *profile = NULL, *remote = NULL, *url;
  const char *jar = NULL, *sfc = NULL, *initiator = NULL, *topsite = NULL;
  const char *headers[MAX_LIST], *resolves[MAX_LIST];
  size_t nheaders = 0, nresolves = 0, i;
  int json = 0, verbose = 0, raw = 0, follow = 0, nocache = 0, offline = 0, nocookies = 0;
  int no_http3 = 0, c, rc;
  uint32_t timeout = 0, ctimeout = 0, maxredirs = 20;
  uint64_t maxbody = 0;
  netstash_http_version httpv = NETSTASH_HTTP_ANY;
  netstash_tls_version tlsmin = NETSTASH_TLS_1_3;
  netstash_options *opts = NULL;
  netstash_ctx *ctx = NULL;
  netstash_request *req = NULL;
  netstash_fetch *f = NULL;
  netstash_error err;
  get_state st;
  char *defprofile = NULL, *local_error = NULL, errtext[300];
  uint8_t *body = NULL;
  size_t body_len = 0;
  netstash_fetch_callbacks cbs = {on_response, on_data, NULL};

  memset(&st, 0, sizeof(st));
  optind = 1;
  while ((c = getopt_long(argc, argv, "o:H:X:Lvh", get_opts, NULL)) != -1) {
    switch (c) {
    case 'o':
      outfile = optarg;
      break;
    case 'H':
      if (nheaders == MAX_LIST) {
        cli_error("get", "too many -H options (at most %d)", MAX_LIST);
        return EXIT_USAGE;
      }
      headers[nheaders++] = optarg;
      break;
    case 'X':
      method = optarg;
      break;
    case OPT_DATA:
      datafile = optarg;
      break;
    case OPT_HTTP11:
      httpv = NETSTASH_HTTP_1_1;
      break;
    case OPT_HTTP2:
      httpv = NETSTASH_HTTP_2;
      break;
    case OPT_HTTP3:
      httpv = NETSTASH_HTTP_3;
      break;
    case OPT_NO_HTTP3:
      no_http3 = 1;
      break;
    case OPT_REMOTE:
      remote = optarg;
      break;
    case OPT_CACERT:
      cacert = optarg;
      break;
    case OPT_RESOLVE:
      if (nresolves == MAX_LIST) {
        cli_error("get", "too many --resolve options (at most %d)", MAX_LIST);
        return EXIT_USAGE;
      }
      resolves[nresolves++] = optarg;
      break;
    case OPT_DNS:
      dns = optarg;
      break;
    case OPT_PROFILE:
      profile = optarg;
      break;
    case OPT_JSON:
      json = 1;
      break;
    case OPT_TIMEOUT:
      if (cli_parse_u32(optarg, &timeout)) {
        cli_error("get", "--timeout needs milliseconds, got \"%s\"", optarg);
        return EXIT_USAGE;
      }
      break;
    case OPT_CTIMEOUT:
      if (cli_parse_u32(optarg, &ctimeout) || !ctimeout) {
        cli_error("get", "--connect-timeout needs milliseconds > 0, got \"%s\"", optarg);
        return EXIT_USAGE;
      }
      break;
    case OPT_TLSMIN:
      if (!strcmp(optarg, "1.2"))
        tlsmin = NETSTASH_TLS_1_2;
      else if (!strcmp(optarg, "1.3"))
        tlsmin = NETSTASH_TLS_1_3;
      else {
        cli_error("get", "--tls-min takes 1.2 or 1.3, got \"%s\"", optarg);
        return EXIT_USAGE;
      }
      break;
    case OPT_RAW:
      raw = 1;
      break;
    case 'L':
      follow = 1;
      break;
    case OPT_MAXREDIRS:
      if (cli_parse_u32(optarg, &maxredirs) || maxredirs > 64) {
        cli_error("get", "--max-redirs takes 0..64, got \"%s\"", optarg);
        return EXIT_USAGE;
      }
      break;
    case OPT_MAXBODY: {
      char *end;
      errno = 0;
      maxbody = strtoull(optarg, &end, 10);
      if (errno || end == optarg || *end || !maxbody) {
        cli_error("get", "--max-body takes a byte count > 0, got \"%s\"", optarg);
        return EXIT_USAGE;
      }
      break;
    }
    case OPT_NOCACHE:
      nocache = 1;
      break;
    case OPT_OFFLINE:
      offline = 1;
      break;
    case OPT_JAR:
      jar = optarg;
      break;
    case OPT_NOCOOKIES:
      nocookies = 1;
      break;
    case OPT_SFC:
      sfc = optarg;
      break;
    case OPT_INITIATOR:
      initiator = optarg;
      break;
    case OPT_TOPSITE:
      topsite = optarg;
      break;
    case 'v':
      verbose = 1;
      break;
    case 'h':
      fputs(get_usage, stdout);
      return 0;
    default:
      fputs(get_usage, stderr);
      return EXIT_USAGE;
    }
  }
  if (optind != argc - 1) {
    cli_error("get", optind >= argc ? "missing URL" : "exactly one URL expected");
    fputs(get_usage, stderr);
    return EXIT_USAGE;
  }
  url = argv[optind];
  if (offline && nocache) {
    cli_error("get", "--offline and --no-cache exclude each other (offline answers come from "
              "the profile's caches)");
    return EXIT_USAGE;
  }

  rc = EXIT_INTERNAL;
  if (netstash_options_new(&opts) != NETSTASH_OK)
    goto done;
  if (!profile)
    profile = defprofile = cli_default_profile();
  netstash_options_set_profile_dir(opts, profile);
  netstash_options_set_tls_min_version(opts, tlsmin);
  if (no_http3)
    netstash_options_set_http3(opts, 0);
  if (remote)
    netstash_options_set_remote(opts, remote);
  if (ctimeout)
    netstash_options_set_connect_timeout_ms(opts, ctimeout);
  if (maxbody)
    netstash_options_set_max_decoded_body(opts, maxbody);
  if (cacert && access(cacert, R_OK) != 0) {
    cli_error("get", "cannot read CA file \"%s\": %s", cacert, strerror(errno));
    rc = EXIT_USAGE;
    goto done;
  }
  if (cacert)
    netstash_options_set_ca_file(opts, cacert);
  if (dns && netstash_options_set_dns_servers(opts, dns) != NETSTASH_OK) {
    cli_error("get", "bad --dns-server \"%s\"", dns);
    rc = EXIT_USAGE;
    goto done;
  }
  if ((err = cli_ctx_new("get", opts, &ctx)) != NETSTASH_OK) {
    rc = cli_exit_code(err);
    goto done;
  }

  err = netstash_request_new(&req, url);
  if (err != NETSTASH_OK) {
    cli_error("get", "bad URL \"%s\": %s (http:// and https:// URLs only)", url,
              netstash_strerror(err));
    rc = cli_exit_code(err);
    goto done;
  }
  for (i = 0; i < nheaders; i++) {
    char *colon = strchr(headers[i], ':'), name[256];
    const char *value;
    size_t nl;
    if (!colon || colon == headers[i] || (nl = (size_t)(colon - headers[i])) >= sizeof(name)) {
      cli_error("get", "bad header \"%s\": expected 'Name: value'", headers[i]);
      rc = EXIT_USAGE;
      goto done;
    }
    memcpy(name, headers[i], nl);
    name[nl] = 0;
    value = colon + 1;
    while (*value == ' ' || *value == '\t')
      value++;
    if (netstash_request_add_header(req, name, value) != NETSTASH_OK) {
      cli_error("get", "bad header \"%s\"", headers[i]);
      rc = EXIT_USAGE;
      goto done;
    }
  }
  for (i = 0; i < nresolves; i++) {
    if (netstash_request_add_resolve(req, resolves[i]) != NETSTASH_OK) {
      cli_error("get", "bad --resolve \"%s\": expected HOST:PORT:ADDR", resolves[i]);
      rc = EXIT_USAGE;
      goto done;
    }
  }
  if (datafile) {
    char why[300];
    if (cli_read_file(datafile, SIZE_MAX / 2, &body, &body_len, why, sizeof(why)) != NETSTASH_OK) {
      cli_error("get", "cannot read --data file: %s", why);
      rc = EXIT_IO;
      goto done;
    }
    netstash_request_set_body(req, body, body_len);
  }
  if (method && netstash_request_set_method(req, method) != NETSTASH_OK) {
    cli_error("get", "bad method \"%s\"", method);
    rc = EXIT_USAGE;
    goto done;
  }
  netstash_request_set_http_version(req, httpv);
  if (timeout)
    netstash_request_set_timeout_ms(req, timeout);
  if (raw)
    netstash_request_set_raw_body(req, 1);
  if (follow)
    netstash_request_set_follow_redirects(req, maxredirs);
  if (nocache)
    netstash_request_set_cache_mode(req, NETSTASH_CACHE_BYPASS);
  if (offline)
    netstash_request_set_cache_mode(req, NETSTASH_CACHE_ONLY_IF_CACHED);
  if (nocookies)
    netstash_request_set_cookies(req, 0);
  if ((jar && netstash_request_set_cookie_jar(req, jar) != NETSTASH_OK) ||
      (sfc && netstash_request_set_site_for_cookies(req, sfc, 0) != NETSTASH_OK) ||
      (initiator && netstash_request_set_initiator(req, initiator) != NETSTASH_OK) ||
      (topsite && netstash_request_set_top_level_site(req, topsite) != NETSTASH_OK)) {
    cli_error("get", "bad --jar, --site-for-cookies, --initiator or --top-level-site value "
              "(jar: 1-64 characters; the others: http(s) URLs)");
    rc = EXIT_USAGE;
    goto done;
  }

  if (outfile) {
    st.out = fopen(outfile, "wb");
    if (!st.out) {
      cli_error("get", "cannot write \"%s\": %s", outfile, strerror(errno));
      rc = EXIT_IO;
      goto done;
    }
    st.progress = !json && isatty(STDERR_FILENO);
  } else if (!json) {
    st.out = stdout;
  }
  st.verbose = verbose;
  clock_gettime(CLOCK_MONOTONIC, &st.last);

  cli_catch_signals();

  err = netstash_fetch_start(ctx, req, &cbs, &st, &f);
  if (err != NETSTASH_OK) {
    cli_error("get", "%s", netstash_strerror(err));
    rc = cli_exit_code(err);
    goto done;
  }
  while ((err = netstash_fetch_wait(f, 100)) == NETSTASH_E_WAIT_TIMEOUT) {
    if (cli_interrupted())
      netstash_fetch_cancel(f);
  }
  if (st.progress)
    show_progress(&st, 1);
  if (st.out && st.out != stdout) {
    if (fclose(st.out) != 0 && !st.out_error)
      st.out_error = errno ? errno : EIO;
    st.out = NULL;
  } else if (st.out == stdout && fflush(stdout) != 0 && !st.out_error) {
    st.out_error = errno ? errno : EIO;
  }
  if (st.out_error) {
    snprintf(errtext, sizeof(errtext), "cannot write the body to %s: %s",
             outfile ? outfile : "stdout", strerror(st.out_error));
    local_error = errtext;
  }
  if (verbose) {
    fprintf(stderr,
            "* timings: dns %.1f ms, connect %.1f ms, tls %.1f ms, ttfb %.1f ms, total %.1f ms\n",
            ms(f, NETSTASH_TIMING_DNS), ms(f, NETSTASH_TIMING_CONNECT),
            ms(f, NETSTASH_TIMING_TLS), ms(f, NETSTASH_TIMING_TTFB),
            ms(f, NETSTASH_TIMING_TOTAL));
    fprintf(stderr, "* %llu body bytes (%llu on the wire), source %s, new connections %u\n",
            (unsigned long long)netstash_fetch_body_bytes(f),
            (unsigned long long)netstash_fetch_wire_bytes(f),
            cli_source_name(netstash_fetch_source(f)), netstash_fetch_new_connections(f));
    if (*netstash_fetch_cache_reason(f))
      fprintf(stderr, "* cache: %s\n", netstash_fetch_cache_reason(f));
  }
  if (json)
    print_json(url, f, err, local_error);
  if (local_error) {
    cli_error("get", "%s", local_error);
    rc = EXIT_IO;
  } else if (err != NETSTASH_OK) {
    cli_error("get", "%s: %s", netstash_strerror(err), netstash_fetch_error_detail(f));
    cli_print_hint(err);
    rc = cli_exit_code(err);
  } else {
    rc = 0;
  }

done:
  if (st.out && st.out != stdout)
    fclose(st.out);
  netstash_fetch_del(f);
  if (ctx)
    netstash_ctx_drain(ctx, 30000); /* a stale-while-revalidate refresh is stored */
  netstash_request_del(req);
  netstash_ctx_del(ctx);
  netstash_options_del(opts);
  free(body);
  free(defprofile);
  return rc;
}
