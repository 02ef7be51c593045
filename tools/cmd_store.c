/*
 * netstash verify / netstash purge — the profile store, for people and
 * scripts. --json prints one object: {"profile", "ok", "error", "message"}.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cli.h"

typedef netstash_error (*store_op)(const char *dir, char *detail, size_t len);

static int run_store_cmd(const char *name, const char *usage, store_op op, const char *done_msg,
                         int argc, char **argv) {
  static const struct option opts[] = {{"profile", required_argument, NULL, 'p'},
                                       {"json", no_argument, NULL, 'j'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
  const char *profile = NULL;
  char *def = NULL, detail[512] = "";
  int json = 0, c, rc;
  netstash_error err;
  optind = 1;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
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
  if (optind != argc) {
    cli_error(name, "unexpected argument \"%s\"", argv[optind]);
    fputs(usage, stderr);
    return EXIT_USAGE;
  }
  if (!profile)
    profile = def = cli_default_profile();
  err = op(profile, detail, sizeof(detail));
  rc = err == NETSTASH_OK ? 0 : cli_exit_code(err);
  if (json) {
    json_t *o = json_pack("{s:s, s:b, s:o, s:s}", "profile", profile, "ok", err == NETSTASH_OK,
                          "error",
                          err == NETSTASH_OK ? json_null() : json_string(netstash_error_name(err)),
                          "message", *detail ? detail : netstash_strerror(err));
    json_dumpf(o, stdout, JSON_COMPACT | JSON_PRESERVE_ORDER);
    fputc('\n', stdout);
    json_decref(o);
  } else if (err == NETSTASH_OK) {
    printf("%s: %s\n", profile, done_msg);
  }
  if (err != NETSTASH_OK)
    cli_error(name, "%s: %s", netstash_strerror(err), *detail ? detail : profile);
  free(def);
  return rc;
}

int cmd_verify(int argc, char **argv) {
  static const char usage[] =
      "usage: netstash verify [--profile DIR] [--json]\n"
      "\n"
      "Walks the profile's store: every record's body exists, is complete and its\n"
      "SHA-256 matches; reference counts agree. Read-only; safe while others use\n"
      "the store. Exit 0 when intact, 13 when corrupt (then: netstash purge),\n"
      "9 when there is no store.\n";
  return run_store_cmd("verify", usage, netstash_store_verify, "store intact", argc, argv);
}

int cmd_purge(int argc, char **argv) {
  static const char usage[] =
      "usage: netstash purge [--profile DIR] [--json]\n"
      "\n"
      "Deletes the profile's store (its HTTP cache and everything else it holds)\n"
      "without reading it: the remedy for a corrupt store. Refuses (exit 13)\n"
      "while a process writes to it. Exit 9 when there is no store.\n";
  return run_store_cmd("purge", usage, netstash_store_purge, "store deleted", argc, argv);
}
