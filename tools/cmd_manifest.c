/*
 * netstash manifest keygen|sign|verify|lint — preload manifests for ops.
 *
 * --json output (one object per run, fields only ever added):
 *   keygen  {"key_id", "private_key", "public_key"}
 *   sign    {"manifest", "signature", "key_id", "ok", "error", "message"}
 *   verify  {"manifest", "signature", "ok", "key_id", "error", "message"}
 *   lint    {"manifest", "ok", "id", "version", "resources", "total_bytes",
 *            "violations": [{"path", "error", "message"}], "more"}
 *
 * make and import write the manifest itself (to -o FILE or stdout); the
 * work is in lib/preload/make.c.
 */
#include "ns_setup.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "cli.h"
#include "preload/make.h"
#include "preload/manifest.h"
#include "preload/sign.h"

static const char usage[] =
    "usage: netstash manifest keygen KEYFILE [--json]\n"
    "       netstash manifest sign MANIFEST --key KEYFILE [--json]\n"
    "       netstash manifest verify MANIFEST --trust PUBFILE... [--sig FILE] [--json]\n"
    "       netstash manifest lint MANIFEST [--installed-version N] [--json]\n"
    "       netstash manifest make DIR --base URL --id ID --version N [-o FILE] ...\n"
    "       netstash manifest import --workbox FILE --dir DIR --base URL --id ID\n"
    "                                --version N [-o FILE] ...\n"
    "\n"
    "keygen   creates an Ed25519 key pair: KEYFILE (private, mode 0600) and\n"
    "         KEYFILE.pub; prints the key id\n"
    "sign     lints MANIFEST, then writes its detached signature to MANIFEST.sig\n"
    "verify   checks MANIFEST.sig against the trusted public keys (--trust, may\n"
    "         be repeated), then lints the manifest\n"
    "lint     reports every violation of the manifest format, each with its\n"
    "         JSON path\n"
    "make     writes the manifest of a directory of build output (every file\n"
    "         hashed); netstash manifest make --help lists its options\n"
    "import   converts a Workbox precache manifest; netstash manifest import\n"
    "         --help lists its options\n"
    "\n"
    "Exit codes: 0 valid / signed / verified, 2 usage, 9 file unreadable,\n"
    "14 manifest invalid (also expired, downgraded, over budget or too large)\n"
    "or signature refused. See netstash-manifest(1).\n";

/* Every manifest-level refusal is exit 14, including size. */
static int manifest_exit(netstash_error err) {
  switch (err) {
  case NETSTASH_E_TOO_LARGE:
  case NETSTASH_E_MANIFEST_INVALID:
  case NETSTASH_E_MANIFEST_EXPIRED:
  case NETSTASH_E_DOWNGRADE:
  case NETSTASH_E_SIGNATURE:
    return EXIT_MANIFEST;
  default:
    return cli_exit_code(err);
  }
}

static void print_json(json_t *o) {
  json_dumpf(o, stdout, JSON_COMPACT | JSON_PRESERVE_ORDER);
  fputc('\n', stdout);
  json_decref(o);
}


/* Writes path atomically (a temporary file, then rename). */
static netstash_error write_file(const char *path, const char *data, size_t len, char *detail,
                                 size_t detail_len) {
  char *tmp = NULL;
  int fd = -1;
  netstash_error rv = NETSTASH_E_IO;
  if (asprintf(&tmp, "%s.tmp.XXXXXX", path) < 0)
    return NETSTASH_E_NOMEM;
  if ((fd = mkstemp(tmp)) < 0 || fchmod(fd, 0644) != 0 || write(fd, data, len) != (ssize_t)len ||
      fsync(fd) != 0) {
    snprintf(detail, detail_len, "%s: %s", fd < 0 ? path : tmp, strerror(errno));
    goto done;
  }
  if (close(fd) != 0 || (fd = -1, rename(tmp, path) != 0)) {
    fd = -1;
    snprintf(detail, detail_len, "%s: %s", path, strerror(errno));
    goto done;
  }
  fd = -1;
  rv = NETSTASH_OK;
done:
  if (fd >= 0)
    close(fd);
  if (rv != NETSTASH_OK)
    unlink(tmp);
  free(tmp);
  return rv;
}

typedef struct opts {
  const char *key;
  const char *sig;
  const char *trust[16];
  int n_trust;
  uint64_t installed;
  int json;
} opts;

/* Parses options; returns the index of the first operand, or -1 (usage error,
 * printed) or -2 (--help printed). */
static int parse_opts(const char *cmd, int argc, char **argv, opts *o) {
  static const struct option lo[] = {{"key", required_argument, NULL, 'k'},
                                     {"trust", required_argument, NULL, 't'},
                                     {"sig", required_argument, NULL, 's'},
                                     {"installed-version", required_argument, NULL, 'i'},
                                     {"json", no_argument, NULL, 'j'},
                                     {"help", no_argument, NULL, 'h'},
                                     {NULL, 0, NULL, 0}};
  int c;
  memset(o, 0, sizeof(*o));
  optind = 1;
  while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
    switch (c) {
    case 'k':
      o->key = optarg;
      break;
    case 's':
      o->sig = optarg;
      break;
    case 't':
      if (o->n_trust == (int)NS_ARRAY_LEN(o->trust)) {
        cli_error(cmd, "at most %zu --trust keys", NS_ARRAY_LEN(o->trust));
        return -1;
      }
      o->trust[o->n_trust++] = optarg;
      break;
    case 'i': {
      char *end = NULL;
      unsigned long long v;
      errno = 0;
      v = strtoull(optarg, &end, 10);
      if (errno || !end || *end || optarg[0] < '0' || optarg[0] > '9') {
        cli_error(cmd, "--installed-version: not a number \"%s\"", optarg);
        return -1;
      }
      o->installed = v;
      break;
    }
    case 'j':
      o->json = 1;
      break;
    case 'h':
      fputs(usage, stdout);
      return -2;
    default:
      fputs(usage, stderr);
      return -1;
    }
  }
  return optind;
}

static int one_operand(const char *cmd, int argc, char **argv, int first) {
  if (first >= argc) {
    cli_error(cmd, "missing operand");
    fputs(usage, stderr);
    return -1;
  }
  if (first + 1 != argc) {
    cli_error(cmd, "unexpected argument \"%s\"", argv[first + 1]);
    fputs(usage, stderr);
    return -1;
  }
  return first;
}

static int cmd_keygen(int argc, char **argv) {
  opts o;
  char kid[NS_KEY_ID_LEN + 1], detail[512] = "", *pub = NULL;
  netstash_error err;
  int i = parse_opts("manifest keygen", argc, argv, &o);
  if (i == -2)
    return 0;
  if (i < 0 || (i = one_operand("manifest keygen", argc, argv, i)) < 0)
    return EXIT_USAGE;
  err = ns_sign_keygen(argv[i], kid, detail, sizeof(detail));
  if (err != NETSTASH_OK) {
    cli_error("manifest keygen", "%s: %s", netstash_strerror(err), *detail ? detail : argv[i]);
    return cli_exit_code(err);
  }
  if (asprintf(&pub, "%s.pub", argv[i]) < 0)
    return EXIT_INTERNAL;
  if (o.json)
    print_json(
        json_pack("{s:s, s:s, s:s}", "key_id", kid, "private_key", argv[i], "public_key", pub));
  else
    printf("%s\n", kid);
  free(pub);
  return 0;
}

/* Lints data; fills diags. */
static netstash_error lint_bytes(const uint8_t *data, size_t len, uint64_t installed,
                                 ns_manifest_diags *d, ns_manifest **out) {
  ns_manifest_check ck;
  ck.now_s = (int64_t)time(NULL);
  ck.installed_version = installed;
  ck.max_len = NS_MANIFEST_MAX_LEN;
  return ns_manifest_parse(ns_mem_default(), data, len, &ck, out, d);
}

static void print_diags(const char *cmd, const char *path, const ns_manifest_diags *d) {
  size_t k;
  for (k = 0; k < d->n; k++)
    fprintf(stderr, "%s: %s\n", path, d->d[k].msg);
  if (d->dropped)
    fprintf(stderr, "%s: ... and %zu more\n", path, d->dropped);
  (void)cmd;
}

static int cmd_lint(int argc, char **argv) {
  opts o;
  uint8_t *data = NULL;
  size_t len = 0, k;
  char detail[512] = "";
  ns_manifest_diags *d = calloc(1, sizeof(*d));
  ns_manifest *m = NULL;
  netstash_error err;
  int rc, i = parse_opts("manifest lint", argc, argv, &o);
  if (!d)
    return EXIT_INTERNAL;
  if (i == -2 || i < 0 || (i = one_operand("manifest lint", argc, argv, i)) < 0) {
    free(d);
    return i == -2 ? 0 : EXIT_USAGE;
  }
  err = cli_read_file(argv[i], NS_MANIFEST_MAX_LEN, &data, &len, detail, sizeof(detail));
  if (err == NETSTASH_OK || err == NETSTASH_E_TOO_LARGE)
    err = lint_bytes(data, len, o.installed, d, &m);
  else if (!o.json)
    cli_error("manifest lint", "%s", detail);
  rc = err == NETSTASH_OK ? 0 : manifest_exit(err);
  if (o.json) {
    json_t *v = json_array(), *obj;
    for (k = 0; k < d->n; k++)
      json_array_append_new(v,
                            json_pack("{s:s, s:s, s:s}", "path", d->d[k].path, "error",
                                      netstash_error_name(d->d[k].code), "message", d->d[k].msg));
    if (err != NETSTASH_OK && d->n == 0)
      json_array_append_new(v, json_pack("{s:s, s:s, s:s}", "path", "", "error",
                                         netstash_error_name(err), "message",
                                         *detail ? detail : netstash_strerror(err)));
    obj = json_pack("{s:s, s:b, s:o, s:o, s:I, s:I, s:o, s:I}", "manifest", argv[i], "ok",
                    err == NETSTASH_OK, "id", m ? json_string(m->id) : json_null(), "version",
                    m ? json_integer((json_int_t)m->version) : json_null(), "resources",
                    (json_int_t)(m ? m->n_resources : 0), "total_bytes",
                    (json_int_t)(m ? m->total_bytes : 0), "violations", v, "more",
                    (json_int_t)d->dropped);
    print_json(obj);
  } else if (err == NETSTASH_OK) {
    printf("%s: ok (%s version %llu, %zu resources, %llu bytes)\n", argv[i], m->id,
           (unsigned long long)m->version, m->n_resources, (unsigned long long)m->total_bytes);
  } else {
    print_diags("manifest lint", argv[i], d);
  }
  ns_manifest_del(m);
  free(data);
  free(d);
  return rc;
}

static int cmd_sign(int argc, char **argv) {
  opts o;
  uint8_t *data = NULL;
  size_t len = 0, sig_len = 0;
  char detail[512] = "", kid[NS_KEY_ID_LEN + 1] = "", *sig = NULL, *sigpath = NULL;
  ns_manifest_diags *d = calloc(1, sizeof(*d));
  ns_manifest *m = NULL;
  netstash_error err;
  int rc, i = parse_opts("manifest sign", argc, argv, &o);
  if (!d)
    return EXIT_INTERNAL;
  if (i == -2 || i < 0 || (i = one_operand("manifest sign", argc, argv, i)) < 0 || !o.key) {
    if (i >= 0 && !o.key) {
      cli_error("manifest sign", "--key KEYFILE is required");
      fputs(usage, stderr);
    }
    free(d);
    return i == -2 ? 0 : EXIT_USAGE;
  }
  if (asprintf(&sigpath, "%s.sig", argv[i]) < 0) {
    free(d);
    return EXIT_INTERNAL;
  }
  err = cli_read_file(argv[i], NS_MANIFEST_MAX_LEN, &data, &len, detail, sizeof(detail));
  if (err == NETSTASH_OK || err == NETSTASH_E_TOO_LARGE) {
    err = lint_bytes(data, len, 0, d, &m);
    if (err != NETSTASH_OK && d->n)
      snprintf(detail, sizeof(detail), "refusing to sign an invalid manifest: %s%s", d->d[0].msg,
               d->n > 1 ? " (netstash manifest lint lists all)" : "");
  }
  if (err == NETSTASH_OK)
    err = ns_sign_create(ns_mem_default(), o.key, data, len, &sig, &sig_len, kid, detail,
                         sizeof(detail));
  if (err == NETSTASH_OK)
    err = write_file(sigpath, sig, sig_len, detail, sizeof(detail));
  rc = err == NETSTASH_OK ? 0 : manifest_exit(err);
  if (o.json)
    print_json(json_pack("{s:s, s:s, s:s, s:b, s:o, s:s}", "manifest", argv[i], "signature",
                         sigpath, "key_id", kid, "ok", err == NETSTASH_OK, "error",
                         err == NETSTASH_OK ? json_null() : json_string(netstash_error_name(err)),
                         "message", *detail ? detail : netstash_strerror(err)));
  else if (err == NETSTASH_OK)
    printf("%s: signed by key %s\n", sigpath, kid);
  if (err != NETSTASH_OK)
    cli_error("manifest sign", "%s: %s", netstash_strerror(err), *detail ? detail : argv[i]);
  ns_free(ns_mem_default(), sig);
  ns_manifest_del(m);
  free(sigpath);
  free(data);
  free(d);
  return rc;
}

static int cmd_mverify(int argc, char **argv) {
  opts o;
  uint8_t *data = NULL, *sig = NULL;
  size_t len = 0, sig_len = 0;
  char detail[512] = "", kid[NS_KEY_ID_LEN + 1] = "", *sigpath = NULL;
  ns_manifest_diags *d = calloc(1, sizeof(*d));
  ns_manifest *m = NULL;
  netstash_error err;
  int rc, i = parse_opts("manifest verify", argc, argv, &o);
  if (!d)
    return EXIT_INTERNAL;
  if (i == -2 || i < 0 || (i = one_operand("manifest verify", argc, argv, i)) < 0 || !o.n_trust) {
    if (i >= 0 && !o.n_trust) {
      cli_error("manifest verify", "--trust PUBFILE is required (the pinned public key)");
      fputs(usage, stderr);
    }
    free(d);
    return i == -2 ? 0 : EXIT_USAGE;
  }
  if (o.sig)
    sigpath = strdup(o.sig);
  else if (asprintf(&sigpath, "%s.sig", argv[i]) < 0)
    sigpath = NULL;
  if (!sigpath) {
    free(d);
    return EXIT_INTERNAL;
  }
  err = cli_read_file(argv[i], NS_MANIFEST_MAX_LEN, &data, &len, detail, sizeof(detail));
  if (err == NETSTASH_OK) {
    err = cli_read_file(sigpath, NS_SIG_MAX_LEN, &sig, &sig_len, detail, sizeof(detail));
    if (err == NETSTASH_E_IO && access(sigpath, F_OK) != 0) {
      err = NETSTASH_E_SIGNATURE;
      snprintf(detail, sizeof(detail), "%s: no signature (unsigned manifest)", sigpath);
    } else if (err == NETSTASH_E_TOO_LARGE) {
      err = NETSTASH_E_SIGNATURE;
    }
  }
  if (err == NETSTASH_OK)
    err = ns_sign_verify(data, len, sig, sig_len, o.trust, (size_t)o.n_trust, kid, detail,
                         sizeof(detail));
  if (err == NETSTASH_OK) {
    err = lint_bytes(data, len, o.installed, d, &m);
    if (err != NETSTASH_OK && d->n)
      snprintf(detail, sizeof(detail), "signature good (key %s) but %s%s", kid, d->d[0].msg,
               d->n > 1 ? " (netstash manifest lint lists all)" : "");
  }
  rc = err == NETSTASH_OK ? 0 : manifest_exit(err);
  if (o.json)
    print_json(json_pack("{s:s, s:s, s:b, s:o, s:o, s:s}", "manifest", argv[i], "signature",
                         sigpath, "ok", err == NETSTASH_OK, "key_id",
                         *kid ? json_string(kid) : json_null(), "error",
                         err == NETSTASH_OK ? json_null() : json_string(netstash_error_name(err)),
                         "message", *detail ? detail : netstash_strerror(err)));
  else if (err == NETSTASH_OK)
    printf("%s: signature good (key %s), manifest %s version %llu valid\n", argv[i], kid, m->id,
           (unsigned long long)m->version);
  if (err != NETSTASH_OK)
    cli_error("manifest verify", "%s: %s", netstash_strerror(err), *detail ? detail : argv[i]);
  ns_manifest_del(m);
  free(sigpath);
  free(sig);
  free(data);
  free(d);
  return rc;
}

/* ------------------------------------------------------------ make, import */

static const char make_usage[] =
    "usage: netstash manifest make DIR --base URL --id ID --version N [options]\n"
    "\n"
    "Writes the preload manifest of every file under DIR: URL = --base + the\n"
    "file's path (an index.html stands for its directory: DIR/index.html is\n"
    "--base itself, the entry page), sha256 integrity, size, content type by\n"
    "extension. Dotfiles are skipped, symlinks followed only inside DIR, files\n"
    "taken in sorted order. The result passes `netstash manifest lint`.\n"
    "\n"
    "  --base URL          https URL that DIR is served at (scope of the manifest)\n"
    "  --id ID             manifest id (A-Z a-z 0-9 . _ -)\n"
    "  --version N         manifest version, greater than the one deployed\n"
    "  -o, --output FILE   write FILE (atomically) instead of stdout\n"
    "  --expires TIME      RFC 3339 expiry (2026-12-31T23:59:59Z), or\n"
    "  --ttl-days N        expiry N days from now (default 30)\n"
    "  --entry URL         an entry page (relative to --base; repeatable;\n"
    "                      default: --base, which needs DIR/index.html)\n"
    "  --priority GLOB=P   P is critical, high or low for files matching GLOB\n"
    "                      (repeatable, first match wins; * ? wildcards; a GLOB\n"
    "                      with no / matches file names). Default: entry pages\n"
    "                      critical, css/js/fonts high, the rest low\n"
    "  --ignore-param NAME query parameter every resource ignores (repeatable)\n"
    "  --header GLOB=NAME: VALUE\n"
    "                      a response header for files matching GLOB, e.g.\n"
    "                      '*.js=Cache-Control: max-age=31536000, immutable'\n"
    "                      (repeatable; per header name the first match wins).\n"
    "                      Every preloaded answer also carries an ETag derived\n"
    "                      from its integrity unless the manifest names one\n"
    "  --no-last-modified  no Last-Modified header from each file's mtime (by\n"
    "                      default every resource gets one, as a static file\n"
    "                      server would send, unless a --header sets it)\n"
    "  --max-bytes N       budgets.max_bytes (fails if the files are larger)\n"
    "  --fallback URL      fallback base URL\n"
    "\n"
    "Exit codes: 0 written, 2 usage or a bad option, 9 a file cannot be read or\n"
    "written, 14 the result would not be a valid manifest. See netstash-manifest(1).\n";

static const char import_usage[] =
    "usage: netstash manifest import --workbox FILE --dir DIR --base URL --id ID\n"
    "                                --version N [options]\n"
    "\n"
    "Converts a Workbox precache manifest (a JSON array of {url, revision} or\n"
    "{url, integrity} entries, getManifest's {manifestEntries} or a script with\n"
    "self.__WB_MANIFEST = [...]) into a netstash manifest. URLs are resolved\n"
    "against --base. Each body is read from --dir (the build output Workbox\n"
    "precached from; URL path relative to --base) for its size and content\n"
    "type; an entry's integrity is kept once the file matches it, entries with\n"
    "only a revision get the file's sha256.\n"
    "\n"
    "  --workbox FILE      the Workbox manifest (- for stdin)\n"
    "  --dir DIR           the build output (required: Workbox entries carry no\n"
    "                      sizes, and revision-only entries no hash)\n"
    "  --base URL          https URL the service worker's URLs are relative to\n"
    "  --id ID, --version N, -o FILE, --expires TIME, --ttl-days N, --entry URL,\n"
    "  --priority GLOB=P, --header GLOB=NAME: VALUE, --no-last-modified,\n"
    "  --max-bytes N,\n"
    "  --fallback URL      as for make\n"
    "  --scope URL         a scope prefix besides --base (repeatable)\n"
    "  --ignore-param NAME query parameter every resource ignores (repeatable;\n"
    "                      Workbox's ignoreURLParametersMatching, by name)\n"
    "\n"
    "Exit codes: 0 written, 2 usage or a bad option (also: no --dir), 9 a file\n"
    "cannot be read or written, 14 not a Workbox manifest or a result that would\n"
    "not lint, 15 a file in --dir does not match its entry's integrity.\n"
    "See netstash-manifest(1).\n";

#define MAKE_MAX_LIST 64

typedef struct make_cli {
  ns_make_opts o;
  const char *out;
  const char *workbox;
  const char *expires;
  long long ttl_days; /* -1: not given */
  ns_make_rule rules[MAKE_MAX_LIST];
  ns_make_header headers[MAKE_MAX_LIST];
  const char *ignore[MAKE_MAX_LIST];
  const char *entries[MAKE_MAX_LIST];
  const char *scopes[MAKE_MAX_LIST];
  char expires_buf[32];
} make_cli;

/* A decimal number 0..max; -1 when not one. */
static int parse_num(const char *cmd, const char *opt, const char *s, unsigned long long max,
                     unsigned long long *out) {
  char *end = NULL;
  errno = 0;
  *out = strtoull(s, &end, 10);
  if (errno || !end || *end || s[0] < '0' || s[0] > '9' || *out > max) {
    cli_error(cmd, "%s: not a number in 0..%llu: \"%s\"", opt, max, s);
    return -1;
  }
  return 0;
}

static int add_item(const char *cmd, const char *opt, const char **list, size_t *n, const char *v) {
  if (*n == MAKE_MAX_LIST) {
    cli_error(cmd, "at most %d %s options", MAKE_MAX_LIST, opt);
    return -1;
  }
  list[(*n)++] = v;
  return 0;
}

/* --header GLOB=NAME: VALUE (argv is ours to cut). */
static int parse_header_rule(const char *cmd, char *arg, make_cli *m) {
  static const char *const framing[] = {"content-length", "content-encoding",
                                        "transfer-encoding", "content-type"};
  char *eq = strchr(arg, '='), *colon, *value;
  size_t i;
  if (!eq || eq == arg || !(colon = strchr(eq + 1, ':')) || colon == eq + 1) {
    cli_error(cmd, "--header \"%s\": expected GLOB=NAME: VALUE (e.g. '*.js=Cache-Control: "
                   "max-age=31536000, immutable')", arg);
    return -1;
  }
  for (char *p = eq + 1; p < colon; p++)
    if (!strchr("!#$%&'*+.^_`|~-", *p) && !isalnum((unsigned char)*p)) {
      cli_error(cmd, "--header \"%s\": the header name is not an HTTP token", arg);
      return -1;
    }
  value = colon + 1;
  while (*value == ' ' || *value == '\t')
    value++;
  for (const char *p = value; *p; p++)
    if ((unsigned char)*p < 0x20 && *p != '\t') {
      cli_error(cmd, "--header \"%s\": control characters in the value", arg);
      return -1;
    }
  *eq = *colon = '\0';
  for (i = 0; i < sizeof(framing) / sizeof(framing[0]); i++)
    if (!strcasecmp(eq + 1, framing[i])) {
      cli_error(cmd, "--header: %s is set by netstash from the file itself", framing[i]);
      return -1;
    }
  if (m->o.n_headers == MAKE_MAX_LIST) {
    cli_error(cmd, "at most %d --header options", MAKE_MAX_LIST);
    return -1;
  }
  m->headers[m->o.n_headers].glob = arg;
  m->headers[m->o.n_headers].name = eq + 1;
  m->headers[m->o.n_headers++].value = value;
  return 0;
}

static void make_warn(const char *msg, void *user_data) {
  fprintf(stderr, "netstash: %s: warning: %s\n", (const char *)user_data, msg);
}

/* Parses make/import options; the index of the first operand, -1 (usage
 * error, printed) or -2 (--help printed). */
static int parse_make_opts(const char *cmd, int import, int argc, char **argv, make_cli *m) {
  static const struct option lo[] = {{"base", required_argument, NULL, 'b'},
                                     {"id", required_argument, NULL, 'I'},
                                     {"version", required_argument, NULL, 'V'},
                                     {"output", required_argument, NULL, 'o'},
                                     {"expires", required_argument, NULL, 'e'},
                                     {"ttl-days", required_argument, NULL, 'T'},
                                     {"entry", required_argument, NULL, 'E'},
                                     {"priority", required_argument, NULL, 'p'},
                                     {"ignore-param", required_argument, NULL, 'q'},
                                     {"header", required_argument, NULL, 'H'},
                                     {"no-last-modified", no_argument, NULL, 'L'},
                                     {"max-bytes", required_argument, NULL, 'm'},
                                     {"fallback", required_argument, NULL, 'f'},
                                     {"workbox", required_argument, NULL, 'w'},
                                     {"dir", required_argument, NULL, 'd'},
                                     {"scope", required_argument, NULL, 's'},
                                     {"help", no_argument, NULL, 'h'},
                                     {NULL, 0, NULL, 0}};
  const char *usage_text = import ? import_usage : make_usage;
  unsigned long long v;
  int c;
  memset(m, 0, sizeof(*m));
  m->ttl_days = -1;
  m->o.rules = m->rules;
  m->o.headers = m->headers;
  m->o.ignore = m->ignore;
  m->o.entries = m->entries;
  m->o.scopes = m->scopes;
  optind = 1;
  while ((c = getopt_long(argc, argv, "ho:", lo, NULL)) != -1) {
    if (!import && (c == 'w' || c == 'd' || c == 's')) {
      cli_error(cmd, "%s is an option of netstash manifest import",
                c == 'w'   ? "--workbox"
                : c == 'd' ? "--dir"
                           : "--scope");
      return -1;
    }
    switch (c) {
    case 'b':
      m->o.base = optarg;
      break;
    case 'I':
      m->o.id = optarg;
      break;
    case 'V':
      if (parse_num(cmd, "--version", optarg, (unsigned long long)INT64_MAX, &v) != 0)
        return -1;
      m->o.version = v; /* 0 is reported below */
      break;
    case 'o':
      m->out = optarg;
      break;
    case 'e':
      m->expires = optarg;
      break;
    case 'T':
      if (parse_num(cmd, "--ttl-days", optarg, 3650, &v) != 0)
        return -1;
      if (v == 0) {
        cli_error(cmd, "--ttl-days: must be at least 1");
        return -1;
      }
      m->ttl_days = (long long)v;
      break;
    case 'E':
      if (add_item(cmd, "--entry", m->entries, &m->o.n_entries, optarg) != 0)
        return -1;
      break;
    case 'p': {
      char *eq = strrchr(optarg, '=');
      ns_manifest_priority p;
      if (!eq || eq == optarg) {
        cli_error(cmd, "--priority \"%s\": expected GLOB=critical|high|low", optarg);
        return -1;
      }
      if (!strcmp(eq + 1, "critical"))
        p = NS_MANIFEST_PRIO_CRITICAL;
      else if (!strcmp(eq + 1, "high"))
        p = NS_MANIFEST_PRIO_HIGH;
      else if (!strcmp(eq + 1, "low"))
        p = NS_MANIFEST_PRIO_LOW;
      else {
        cli_error(cmd, "--priority \"%s\": the priority is critical, high or low", optarg);
        return -1;
      }
      if (m->o.n_rules == MAKE_MAX_LIST) {
        cli_error(cmd, "at most %d --priority options", MAKE_MAX_LIST);
        return -1;
      }
      *eq = '\0'; /* argv is ours to cut */
      m->rules[m->o.n_rules].glob = optarg;
      m->rules[m->o.n_rules++].priority = p;
      break;
    }
    case 'L':
      m->o.no_last_modified = 1;
      break;
    case 'H':
      if (parse_header_rule(cmd, optarg, m) != 0)
        return -1;
      break;
    case 'q':
      if (add_item(cmd, "--ignore-param", m->ignore, &m->o.n_ignore, optarg) != 0)
        return -1;
      break;
    case 'm':
      if (parse_num(cmd, "--max-bytes", optarg, (unsigned long long)INT64_MAX, &v) != 0)
        return -1;
      if (v == 0) {
        cli_error(cmd, "--max-bytes: must be at least 1");
        return -1;
      }
      m->o.max_bytes = v;
      break;
    case 'f':
      m->o.fallback = optarg;
      break;
    case 'w':
      m->workbox = optarg;
      break;
    case 'd':
      m->o.dir = optarg;
      break;
    case 's':
      if (add_item(cmd, "--scope", m->scopes, &m->o.n_scopes, optarg) != 0)
        return -1;
      break;
    case 'h':
      fputs(usage_text, stdout);
      return -2;
    default:
      fputs(usage_text, stderr);
      return -1;
    }
  }
  {
    const char *missing = !m->o.base              ? "--base URL"
                          : !m->o.id              ? "--id ID"
                          : !m->o.version         ? "--version N (at least 1)"
                          : import && !m->workbox ? "--workbox FILE"
                                                  : NULL;
    if (missing) {
      cli_error(cmd, "%s is required", missing);
      fputs(usage_text, stderr);
      return -1;
    }
  }
  if (m->expires && m->ttl_days >= 0) {
    cli_error(cmd, "--expires and --ttl-days exclude each other");
    return -1;
  }
  m->o.now_s = (int64_t)time(NULL);
  if (m->expires) {
    m->o.expires = m->expires;
  } else {
    time_t t = (time_t)(m->o.now_s + (m->ttl_days < 0 ? 30 : m->ttl_days) * 86400);
    struct tm tm;
    if (!gmtime_r(&t, &tm) ||
        !strftime(m->expires_buf, sizeof(m->expires_buf), "%Y-%m-%dT%H:%M:%SZ", &tm))
      return -1;
    m->o.expires = m->expires_buf;
  }
  m->o.warn = make_warn;
  m->o.user_data = (void *)cmd;
  return optind;
}

/* Writes the manifest text to m->out or stdout; prints a summary line when
 * it went to a file. */
static int emit_manifest(const char *cmd, const make_cli *m, const char *text, size_t len) {
  char detail[512] = "";
  netstash_error err;
  if (!m->out || !strcmp(m->out, "-")) {
    if (fwrite(text, 1, len, stdout) != len || fflush(stdout) != 0) {
      cli_error(cmd, "cannot write the manifest to standard output: %s", strerror(errno));
      return EXIT_IO;
    }
    return 0;
  }
  err = write_file(m->out, text, len, detail, sizeof(detail));
  if (err != NETSTASH_OK) {
    cli_error(cmd, "cannot write the manifest: %s", *detail ? detail : m->out);
    return cli_exit_code(err);
  }
  {
    ns_manifest_diags *d = calloc(1, sizeof(*d));
    ns_manifest *mf = NULL;
    if (d && lint_bytes((const uint8_t *)text, len, 0, d, &mf) == NETSTASH_OK)
      printf("%s: %s version %llu, %zu resources, %llu bytes\n", m->out, mf->id,
             (unsigned long long)mf->version, mf->n_resources, (unsigned long long)mf->total_bytes);
    ns_manifest_del(mf);
    free(d);
  }
  return 0;
}

static int cmd_make(int argc, char **argv) {
  const char *cmd = "manifest make";
  make_cli *m = calloc(1, sizeof(*m));
  char detail[1024] = "", *text = NULL;
  size_t len = 0;
  netstash_error err;
  int rc, i;
  if (!m)
    return EXIT_INTERNAL;
  i = parse_make_opts(cmd, 0, argc, argv, m);
  if (i == -2 || i < 0 || (i = one_operand(cmd, argc, argv, i)) < 0) {
    free(m);
    return i == -2 ? 0 : EXIT_USAGE;
  }
  err = ns_manifest_make_dir(ns_mem_default(), argv[i], &m->o, &text, &len, detail, sizeof(detail));
  if (err != NETSTASH_OK) {
    cli_error(cmd, "%s: %s", netstash_strerror(err), *detail ? detail : argv[i]);
    rc = manifest_exit(err);
  } else {
    rc = emit_manifest(cmd, m, text, len);
  }
  ns_free(ns_mem_default(), text);
  free(m);
  return rc;
}

static int cmd_import(int argc, char **argv) {
  const char *cmd = "manifest import";
  make_cli *m = calloc(1, sizeof(*m));
  char detail[1024] = "", *text = NULL;
  uint8_t *wb = NULL;
  size_t len = 0, wb_len = 0;
  netstash_error err;
  int rc, i;
  if (!m)
    return EXIT_INTERNAL;
  i = parse_make_opts(cmd, 1, argc, argv, m);
  if (i >= 0 && i < argc) {
    cli_error(cmd, "unexpected argument \"%s\" (the Workbox manifest is --workbox FILE)", argv[i]);
    fputs(import_usage, stderr);
    i = -1;
  }
  if (i < 0) {
    free(m);
    return i == -2 ? 0 : EXIT_USAGE;
  }
  err = cli_read_file(m->workbox, NS_MANIFEST_MAX_LEN * 4, &wb, &wb_len, detail, sizeof(detail));
  if (err != NETSTASH_OK) {
    cli_error(cmd, "%s", *detail ? detail : netstash_strerror(err));
    rc = cli_exit_code(err);
    goto done;
  }
  err = ns_manifest_import_workbox(ns_mem_default(), wb, wb_len, &m->o, &text, &len, detail,
                                   sizeof(detail));
  if (err != NETSTASH_OK) {
    if (err == NETSTASH_E_MANIFEST_INVALID && strncmp(detail, "the manifest would", 18) != 0)
      cli_error(cmd, "%s: %s", m->workbox, detail);
    else
      cli_error(cmd, "%s: %s", netstash_strerror(err), *detail ? detail : m->workbox);
    rc = manifest_exit(err);
    goto done;
  }
  rc = emit_manifest(cmd, m, text, len);
done:
  ns_free(ns_mem_default(), text);
  free(wb);
  free(m);
  return rc;
}

int cmd_manifest(int argc, char **argv) {
  if (argc < 2) {
    fputs(usage, stderr);
    return EXIT_USAGE;
  }
  if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
    fputs(usage, stdout);
    return 0;
  }
  if (!strcmp(argv[1], "keygen"))
    return cmd_keygen(argc - 1, argv + 1);
  if (!strcmp(argv[1], "sign"))
    return cmd_sign(argc - 1, argv + 1);
  if (!strcmp(argv[1], "verify"))
    return cmd_mverify(argc - 1, argv + 1);
  if (!strcmp(argv[1], "lint"))
    return cmd_lint(argc - 1, argv + 1);
  if (!strcmp(argv[1], "make"))
    return cmd_make(argc - 1, argv + 1);
  if (!strcmp(argv[1], "import"))
    return cmd_import(argc - 1, argv + 1);
  fprintf(stderr, "netstash: manifest: unknown subcommand \"%s\"\n\n%s", argv[1], usage);
  return EXIT_USAGE;
}
