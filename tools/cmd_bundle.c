/*
 * netstash pack ID -o FILE — an offline preload bundle of the active
 * version of a manifest (lib/preload/bundle.c; installed by `netstash
 * install FILE`).
 *
 * --json prints one object (fields only ever added):
 *   {"id", "profile", "bundle", "ok", "version", "bodies", "body_bytes",
 *    "bytes", "signed", "error", "message"}
 * version..signed are present when ok.
 */
#include "ns_setup.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cli.h"
#include "core/ctx.h"
#include "preload/bundle.h"

static const char usage[] =
    "usage: netstash pack ID -o FILE [--profile DIR] [--json]\n"
    "\n"
    "Writes the active version of preload manifest ID, with every body it needs,\n"
    "to FILE: an offline bundle (POSIX tar: manifest.json, manifest.json.sig,\n"
    "bodies/<sha256>) that an app ships and installs with no network\n"
    "(netstash install FILE). FILE is replaced atomically.\n"
    "\n"
    "  -o, --output FILE  the bundle to write (required)\n"
    "  --profile DIR      the profile to read (default $XDG_DATA_HOME/netstash)\n"
    "  --json             print one JSON object (see netstash-pack(1))\n"
    "\n"
    "Exit codes: 0 written, 2 usage, 9 no store, no manifest ID, no active\n"
    "version of it, or FILE cannot be written, 13 store unusable (corrupt,\n"
    "busy). See netstash-pack(1).\n";

static void print_json(json_t *o) {
  json_dumpf(o, stdout, JSON_COMPACT | JSON_PRESERVE_ORDER);
  fputc('\n', stdout);
  json_decref(o);
}

static const char *human_bytes(uint64_t b, char *buf, size_t n) {
  if (b < 1024)
    snprintf(buf, n, "%llu B", (unsigned long long)b);
  else if (b < (1u << 20))
    snprintf(buf, n, "%.1f KiB", (double)b / 1024);
  else
    snprintf(buf, n, "%.1f MiB", (double)b / (1 << 20));
  return buf;
}

/* Reports a failure (stderr, and the JSON object under --json). */
static int pack_fail(int json, const char *id, const char *profile, const char *bundle,
                     netstash_error err, const char *msg, const char *hint) {
  if (!msg || !*msg)
    msg = netstash_strerror(err);
  if (json)
    print_json(json_pack("{s:s, s:s, s:s, s:b, s:s, s:s}", "id", id, "profile", profile,
                         "bundle", bundle, "ok", 0, "error", netstash_error_name(err), "message",
                         msg));
  cli_error("pack", "%s", msg);
  if (!hint)
    hint = cli_hint(err);
  if (hint)
    fprintf(stderr, "hint: %s\n", hint);
  return cli_exit_code(err);
}

int cmd_pack(int argc, char **argv) {
  static const struct option opts[] = {{"output", required_argument, NULL, 'o'},
                                       {"profile", required_argument, NULL, 'p'},
                                       {"json", no_argument, NULL, 'j'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
  const char *profile = NULL, *out = NULL, *id;
  char *def = NULL, detail[512] = "", hintbuf[600], sz[32], bsz[32];
  netstash_ctx *ctx = NULL;
  ns_pl_pack_info info;
  netstash_error err;
  int json = 0, c, rc;

  optind = 1;
  while ((c = getopt_long(argc, argv, "ho:", opts, NULL)) != -1) {
    switch (c) {
    case 'o':
      out = optarg;
      break;
    case 'p':
      profile = optarg;
      break;
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
  if (optind >= argc) {
    cli_error("pack", "which manifest? give its id (netstash ls lists them)");
    fputs(usage, stderr);
    return EXIT_USAGE;
  }
  id = argv[optind];
  if (optind + 1 != argc) {
    cli_error("pack", "unexpected argument \"%s\"", argv[optind + 1]);
    fputs(usage, stderr);
    return EXIT_USAGE;
  }
  if (!out || !*out) {
    cli_error("pack", "where to? give the bundle's path with -o FILE");
    fputs(usage, stderr);
    return EXIT_USAGE;
  }
  if (!profile)
    profile = def = cli_default_profile();
  if (!profile) {
    rc = pack_fail(json, id, "", out, NETSTASH_E_NOMEM, NULL, NULL);
    goto done;
  }
  /* packing reads: never create an empty store */
  if (!cli_store_exists(profile)) {
    snprintf(detail, sizeof(detail), "no store in %s: nothing is installed there", profile);
    rc = pack_fail(json, id, profile, out, NETSTASH_E_NOT_FOUND, detail,
                   "give the profile the manifest was warmed into with --profile DIR");
    goto done;
  }
  if ((err = cli_profile_ctx("pack", profile, &ctx)) != NETSTASH_OK) {
    rc = cli_exit_code(err);
    if (json)
      print_json(json_pack("{s:s, s:s, s:s, s:b, s:s, s:s}", "id", id, "profile", profile,
                           "bundle", out, "ok", 0, "error", netstash_error_name(err), "message",
                           netstash_strerror(err)));
    goto done;
  }
  err = ns_pl_pack(ctx->store, &ctx->mem, id, out, &info, detail, sizeof(detail));
  if (err != NETSTASH_OK) {
    const char *hint = NULL;
    if (err == NETSTASH_E_NOT_FOUND) {
      snprintf(hintbuf, sizeof(hintbuf), "netstash ls --profile %s lists the installed manifests",
               profile);
      hint = hintbuf;
    }
    rc = pack_fail(json, id, profile, out, err, detail, hint);
    goto done;
  }
  rc = 0;
  if (json) {
    print_json(json_pack("{s:s, s:s, s:s, s:b, s:I, s:I, s:I, s:I, s:b, s:n, s:s}", "id", id,
                         "profile", profile, "bundle", out, "ok", 1, "version",
                         (json_int_t)info.version, "bodies", (json_int_t)info.bodies,
                         "body_bytes", (json_int_t)info.body_bytes, "bytes",
                         (json_int_t)info.bytes, "signed", info.signed_, "error", "message",
                         "bundle written"));
  } else {
    printf("%s: %s version %llu, %llu bodies (%s), %s, %s\n", out, id,
           (unsigned long long)info.version, (unsigned long long)info.bodies,
           human_bytes(info.body_bytes, bsz, sizeof(bsz)),
           info.signed_ ? "signed" : "unsigned", human_bytes(info.bytes, sz, sizeof(sz)));
  }
done:
  netstash_ctx_del(ctx);
  free(def);
  return rc;
}
