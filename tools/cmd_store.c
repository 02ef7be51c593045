/*
 * netstash verify / netstash purge — the profile store, for people and
 * scripts. --json prints one object: {"profile", "ok", "error", "message"},
 * plus "preload" (verify: {"checked", "bytes", "corrupt"}) and "id" (purge
 * ID).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cli.h"

/* Prints the result (and the error line on stderr); returns the exit code.
 * extra_key/extra (consumed, may be NULL) go into the JSON object. */
static int report(const char *name, const cli_args *a, netstash_error err, const char *detail,
                  const char *done_msg, const char *extra_key, json_t *extra) {
  if (a->json) {
    json_t *o = cli_status_json(a->profile, err, *detail ? detail : netstash_strerror(err));
    if (a->pos[0])
      json_object_set_new(o, "id", json_string(a->pos[0]));
    if (extra)
      json_object_set(o, extra_key, extra);
    cli_print_json(o, 0);
    json_decref(o);
  } else if (err == NETSTASH_OK) {
    printf("%s: %s\n", a->profile, done_msg);
  }
  json_decref(extra);
  if (err != NETSTASH_OK)
    cli_error(name, "%s: %s", netstash_strerror(err), *detail ? detail : a->profile);
  return err == NETSTASH_OK ? 0 : cli_exit_code(err);
}

int cmd_verify(int argc, char **argv) {
  static const char usage[] =
      "usage: netstash verify [--profile DIR] [--json]\n"
      "\n"
      "Walks the profile's store: every record's body exists, is complete and its\n"
      "SHA-256 matches; reference counts agree. Then re-hashes every preload body\n"
      "of every installed manifest version (active, previous, being warmed)\n"
      "against the manifest's integrity metadata: a body that does not match is\n"
      "listed and unlinked from its version, so it is never served (the next\n"
      "warm of that manifest fetches it again). Safe while others use the store.\n"
      "--json adds \"preload\": {\"checked\", \"bytes\", \"corrupt\": [{\"id\",\n"
      "\"version\", \"url\", \"reason\"}]}.\n"
      "Exit 0 when intact, 13 when the store is corrupt (then: netstash purge),\n"
      "15 when preload bodies did not match (now unlinked), 9 when there is no\n"
      "store.\n";
  cli_args a;
  netstash_ctx *ctx = NULL;
  char detail[512] = "", *text = NULL;
  json_t *pre = NULL;
  netstash_error err;
  int rc = cli_parse_args("verify", usage, argc, argv, 0, 0, CLI_RESOURCES_NONE, &a);
  if (rc >= 0)
    goto done;
  /* the store first, read-only: a damaged one is never opened for writing */
  err = netstash_store_verify(a.profile, detail, sizeof(detail));
  if (err != NETSTASH_OK) {
    rc = report("verify", &a, err, detail, NULL, NULL, NULL);
    goto done;
  }
  if ((err = cli_profile_ctx("verify", a.profile, &ctx)) != NETSTASH_OK) {
    rc = cli_exit_code(err);
    goto done;
  }
  err = netstash_preload_verify(ctx, &text);
  if (text && !(pre = json_loads(text, 0, NULL)))
    err = NETSTASH_E_INTERNAL;
  if (err == NETSTASH_E_INTEGRITY) {
    const json_t *c;
    size_t i, n = json_array_size(json_object_get(pre, "corrupt"));
    snprintf(detail, sizeof(detail),
             "%zu preload bod%s did not match %s manifest%s and %s unlinked; warm again to "
             "fetch %s",
             n, n == 1 ? "y" : "ies", n == 1 ? "its" : "their", n == 1 ? "" : "s",
             n == 1 ? "was" : "were", n == 1 ? "it" : "them");
    if (!a.json)
      json_array_foreach(json_object_get(pre, "corrupt"), i, c) {
        printf("corrupt: %s version %lld %s: %s\n", json_string_value(json_object_get(c, "id")),
               (long long)json_integer_value(json_object_get(c, "version")),
               json_string_value(json_object_get(c, "url")),
               json_string_value(json_object_get(c, "reason")));
      }
  } else if (err == NETSTASH_OK) {
    snprintf(detail, sizeof(detail), "store intact; %lld preload bodies re-hashed (%lld bytes)",
             (long long)json_integer_value(json_object_get(pre, "checked")),
             (long long)json_integer_value(json_object_get(pre, "bytes")));
  }
  rc = report("verify", &a, err, detail, detail, "preload", pre);
  pre = NULL;
done:
  json_decref(pre);
  netstash_free(ctx, text);
  netstash_ctx_del(ctx);
  cli_args_free(&a);
  return rc;
}

int cmd_purge(int argc, char **argv) {
  static const char usage[] =
      "usage: netstash purge [ID] [--profile DIR] [--json]\n"
      "\n"
      "Without ID: deletes the profile's store (its HTTP cache, preload cache and\n"
      "everything else it holds) without reading it: the remedy for a corrupt\n"
      "store. Refuses (exit 13) while a process writes to it.\n"
      "With ID: removes preload manifest ID (every version of it) and collects\n"
      "the bodies nothing else references; the rest of the store stays.\n"
      "Exit 9 when there is no store, or no manifest ID.\n";
  cli_args a;
  netstash_ctx *ctx = NULL;
  char detail[512] = "", done_msg[512];
  const char *id;
  netstash_error err;
  int rc = cli_parse_args("purge", usage, argc, argv, 0, 1, CLI_RESOURCES_NONE, &a);
  if (rc >= 0)
    goto done;
  if (!(id = a.pos[0])) {
    err = netstash_store_purge(a.profile, detail, sizeof(detail));
    rc = report("purge", &a, err, detail, "store deleted", NULL, NULL);
    goto done;
  }
  if (!cli_store_exists(a.profile)) {
    snprintf(detail, sizeof(detail), "no store in %s", a.profile);
    rc = report("purge", &a, NETSTASH_E_NOT_FOUND, detail, NULL, NULL, NULL);
    goto done;
  }
  if ((err = cli_profile_ctx("purge", a.profile, &ctx)) != NETSTASH_OK) {
    rc = cli_exit_code(err);
    goto done;
  }
  err = netstash_preload_purge(ctx, id);
  if (err == NETSTASH_E_NOT_FOUND)
    snprintf(detail, sizeof(detail), "no manifest \"%s\" in %s", id, a.profile);
  snprintf(done_msg, sizeof(done_msg), "manifest \"%s\" purged", id);
  rc = report("purge", &a, err, detail, done_msg, NULL, NULL);
done:
  netstash_ctx_del(ctx);
  cli_args_free(&a);
  return rc;
}
