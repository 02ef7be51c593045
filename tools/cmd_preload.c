/*
 * netstash ls | show | rollback | gc | stats — the preload cache of a
 * profile (include/netstash/preload.h, "Administration"). A table or a few
 * aligned lines for people; --json for scripts: ls, show and stats print the
 * library's JSON as it is (netstash_preload_describe, _show, _stats),
 * rollback and gc print {"profile", "ok", ...}; every failure under --json
 * prints {"profile", "ok": false, "error", "message"}.
 */
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "cli.h"

/* ------------------------------------------------------------ shared */

/* A failure: "netstash: CMD: reason" (and a hint) on stderr; under --json
 * also the error object on stdout. Returns the exit code. */
static int fail(const char *cmd, int json, const char *profile, netstash_error err,
                const char *what) {
  const char *msg = what ? what : netstash_strerror(err);
  if (json) {
    json_t *o = cli_status_json(profile, err, msg);
    cli_print_json(o, 0);
    json_decref(o);
  }
  cli_error(cmd, "%s", msg);
  cli_print_hint(err);
  return cli_exit_code(err);
}

static uint64_t ju(const json_t *o, const char *k) {
  json_int_t v = json_integer_value(json_object_get(o, k));
  return v > 0 ? (uint64_t)v : 0;
}

static const char *js(const json_t *o, const char *k) {
  const char *s = json_string_value(json_object_get(o, k));
  return s ? s : "-";
}

/* One run of an administration command: its arguments, the context on the
 * profile's store, the library's JSON answer and that answer parsed. */
typedef struct admin {
  const char *cmd;
  cli_args a;
  netstash_ctx *ctx;
  char *text;
  json_t *j;
} admin;

/* Parses the arguments (cli_parse_args). Returns -1 to go on, else the
 * exit code; call admin_end in either case. */
static int admin_begin(admin *s, const char *cmd, const char *usage, int argc, char **argv,
                       int min_pos, int max_pos, cli_resources resources) {
  memset(s, 0, sizeof(*s));
  s->cmd = cmd;
  return cli_parse_args(cmd, usage, argc, argv, min_pos, max_pos, resources, &s->a);
}

/* Opens the profile's store, which must exist: -1 with s->ctx set, else the
 * exit code (the failure printed). */
static int admin_open(admin *s) {
  char msg[4200];
  netstash_error err;
  if (!cli_store_exists(s->a.profile)) {
    snprintf(msg, sizeof(msg), "no store in %s (nothing warmed there yet)", s->a.profile);
    return fail(s->cmd, s->a.json, s->a.profile, NETSTASH_E_NOT_FOUND, msg);
  }
  err = cli_profile_ctx(s->cmd, s->a.profile, &s->ctx);
  if (err != NETSTASH_OK) {
    if (s->a.json) { /* the reason is on stderr already */
      json_t *o = cli_status_json(s->a.profile, err, netstash_strerror(err));
      cli_print_json(o, 0);
      json_decref(o);
    }
    return cli_exit_code(err);
  }
  return -1;
}

/* After the library call that wrote s->text: a failure is reported (what,
 * or the error's text when NULL); under --json the text is printed as it
 * is; else it is parsed into s->j (unreadable: that failure). Returns -1
 * when the caller prints s->j for people, else the exit code. */
static int admin_answer(admin *s, netstash_error err, const char *what, const char *unreadable) {
  if (err != NETSTASH_OK)
    return fail(s->cmd, s->a.json, s->a.profile, err, what);
  if (s->a.json) {
    puts(s->text);
    return 0;
  }
  if (!(s->j = json_loads(s->text, 0, NULL)))
    return fail(s->cmd, 0, s->a.profile, NETSTASH_E_INTERNAL, unreadable);
  return -1;
}

/* Frees what the run holds; returns rc. */
static int admin_end(admin *s, int rc) {
  json_decref(s->j);
  netstash_free(s->ctx, s->text);
  netstash_ctx_del(s->ctx);
  cli_args_free(&s->a);
  return rc;
}

/* ------------------------------------------------------------ ls */

static void print_entries(const json_t *m) {
  const json_t *e;
  size_t i;
  char sz[32];
  printf("  %-8s  %-4s  %10s  %s\n", "PRIORITY", "HELD", "SIZE", "URL");
  json_array_foreach(json_object_get(m, "entries"), i, e) {
    printf("  %-8s  %-4s  %10s  %s\n", js(e, "priority"),
           json_is_true(json_object_get(e, "present")) ? "yes" : "no",
           cli_human_bytes(ju(e, "size"), sz, sizeof(sz)), js(e, "url"));
  }
}

static void print_manifest(const json_t *m, int resources) {
  const json_t *s;
  size_t i;
  char sz[32];
  printf("%s\n", js(m, "id"));
  printf("  state      %s\n", js(m, "state"));
  printf("  version    %llu (previous %llu, newest accepted %llu)\n",
         (unsigned long long)ju(m, "version"), (unsigned long long)ju(m, "previous"),
         (unsigned long long)ju(m, "max_version"));
  if (ju(m, "staged"))
    printf("  warming    version %llu\n", (unsigned long long)ju(m, "staged"));
  printf("  published  %s\n", js(m, "published"));
  printf("  expires    %s\n", js(m, "expires"));
  printf("  signed by  %s\n", *js(m, "key_id") ? js(m, "key_id") : "(unsigned)");
  json_array_foreach(json_object_get(m, "scope"), i, s) {
    printf("  %-9s  %s\n", i ? "" : "scope", json_string_value(s));
  }
  printf("  resources  %llu of %llu held, %s\n", (unsigned long long)ju(m, "resources_present"),
         (unsigned long long)ju(m, "resources"), cli_human_bytes(ju(m, "bytes"), sz, sizeof(sz)));
  if (resources)
    print_entries(m);
}

void cli_print_manifest_table(const json_t *list, int resources) {
  const json_t *m;
  size_t i;
  int w = 2;
  char sz[32], held[48];
  json_array_foreach(list, i, m) {
    int l = (int)strlen(js(m, "id"));
    if (l > w)
      w = l;
  }
  printf("%-*s  %-14s  %8s  %8s  %11s  %10s  %s\n", w, "ID", "STATE", "VERSION", "PREVIOUS",
         "RESOURCES", "SIZE", "EXPIRES");
  json_array_foreach(list, i, m) {
    snprintf(held, sizeof(held), "%llu/%llu", (unsigned long long)ju(m, "resources_present"),
             (unsigned long long)ju(m, "resources"));
    printf("%-*s  %-14s  %8llu  %8llu  %11s  %10s  %s\n", w, js(m, "id"), js(m, "state"),
           (unsigned long long)ju(m, "version"), (unsigned long long)ju(m, "previous"), held,
           cli_human_bytes(ju(m, "bytes"), sz, sizeof(sz)), js(m, "expires"));
  }
  if (!resources)
    return;
  json_array_foreach(list, i, m) {
    printf("\n%s:\n", js(m, "id"));
    print_entries(m);
  }
}

int cmd_ls(int argc, char **argv) {
  static const char usage[] =
      "usage: netstash ls [ID] [--resources] [--profile DIR] [--json]\n"
      "\n"
      "Lists the preload manifests installed in the profile: state (active, expired,\n"
      "killed, not_targeted, pinned_missing, incomplete), active and previous\n"
      "version, resources held, size, expiry. With ID: that manifest in detail.\n"
      "--resources adds every resource (priority, held or not, size, URL).\n"
      "--json prints the object of netstash_preload_describe: {\"manifests\": [...]},\n"
      "or with ID that manifest's object. Exit 0; 9 when ID is not installed.\n";
  admin r;
  netstash_error err;
  char msg[512];
  int rc = admin_begin(&r, "ls", usage, argc, argv, 0, 1, CLI_RESOURCES_ALLOW);
  if (rc >= 0)
    goto done;
  if (!r.a.pos[0] && !cli_store_exists(r.a.profile)) {
    /* nothing warmed there yet: an empty list, and no store created for it */
    if (r.a.json)
      puts("{\"manifests\":[]}");
    else
      printf("no preload manifests in %s\n", r.a.profile);
    rc = 0;
    goto done;
  }
  if ((rc = admin_open(&r)) >= 0)
    goto done;
  err = netstash_preload_describe(r.ctx, r.a.pos[0], r.a.resources, &r.text);
  if (err == NETSTASH_E_NOT_FOUND)
    snprintf(msg, sizeof(msg), "no manifest \"%s\" in %s", r.a.pos[0], r.a.profile);
  if ((rc = admin_answer(&r, err, err == NETSTASH_E_NOT_FOUND ? msg : NULL,
                         "unreadable description")) >= 0)
    goto done;
  rc = 0;
  if (r.a.pos[0])
    print_manifest(r.j, r.a.resources);
  else if (json_array_size(json_object_get(r.j, "manifests")) == 0)
    printf("no preload manifests in %s\n", r.a.profile);
  else
    cli_print_manifest_table(json_object_get(r.j, "manifests"), r.a.resources);
done:
  return admin_end(&r, rc);
}

/* ------------------------------------------------------------ show */

int cmd_show(int argc, char **argv) {
  static const char usage[] =
      "usage: netstash show URL [--profile DIR] [--json]\n"
      "\n"
      "Which preload manifest answers URL with no network, and what it serves:\n"
      "manifest id and version, status, size, SHA-256 of the body, headers.\n"
      "--json prints the object of netstash_preload_show: {\"url\", \"id\",\n"
      "\"version\", \"size\", \"status\", \"priority\", \"headers\", \"sha256\"}.\n"
      "Exit 0; 9 when no active manifest serves URL; 3 for a malformed URL.\n";
  admin r;
  netstash_error err;
  char msg[512] = "";
  const char *name;
  json_t *v;
  int rc = admin_begin(&r, "show", usage, argc, argv, 1, 1, CLI_RESOURCES_REFUSE);
  if (rc >= 0 || (rc = admin_open(&r)) >= 0)
    goto done;
  err = netstash_preload_show(r.ctx, r.a.pos[0], &r.text);
  if (err == NETSTASH_E_NOT_FOUND)
    snprintf(msg, sizeof(msg), "%s: not served by any active preload manifest", r.a.pos[0]);
  else if (err != NETSTASH_OK)
    snprintf(msg, sizeof(msg), "%s: %s", r.a.pos[0], netstash_strerror(err));
  if ((rc = admin_answer(&r, err, msg, "unreadable answer")) >= 0)
    goto done;
  rc = 0;
  printf("%s\n", js(r.j, "url"));
  printf("  manifest  %s version %llu\n", js(r.j, "id"), (unsigned long long)ju(r.j, "version"));
  printf("  status    %llu, %llu bytes, priority %s\n", (unsigned long long)ju(r.j, "status"),
         (unsigned long long)ju(r.j, "size"), js(r.j, "priority"));
  printf("  sha256    %s\n", js(r.j, "sha256"));
  json_object_foreach(json_object_get(r.j, "headers"), name, v) {
    printf("  %s: %s\n", name, json_string_value(v));
  }
done:
  return admin_end(&r, rc);
}

/* ------------------------------------------------------------ rollback */

int cmd_rollback(int argc, char **argv) {
  static const char usage[] =
      "usage: netstash rollback ID [--profile DIR] [--json]\n"
      "\n"
      "Makes the previous version of manifest ID active again; the active one\n"
      "becomes the previous, so a second rollback undoes the first. Warming the\n"
      "version rolled back does not re-activate it: publish a higher version.\n"
      "--json prints {\"profile\", \"ok\", \"id\", \"version\", \"previous\"}.\n"
      "Exit 0; 9 when ID is not installed or has no previous version.\n";
  admin r;
  netstash_error err;
  int rc = admin_begin(&r, "rollback", usage, argc, argv, 1, 1, CLI_RESOURCES_REFUSE);
  if (rc >= 0 || (rc = admin_open(&r)) >= 0)
    goto done;
  err = netstash_preload_rollback(r.ctx, r.a.pos[0]);
  if (err == NETSTASH_OK)
    err = netstash_preload_describe(r.ctx, r.a.pos[0], 0, &r.text);
  if (err == NETSTASH_OK && !(r.j = json_loads(r.text, 0, NULL)))
    err = NETSTASH_E_INTERNAL;
  if (err != NETSTASH_OK) {
    char msg[512];
    if (err == NETSTASH_E_NOT_FOUND)
      snprintf(msg, sizeof(msg), "\"%s\" is not installed or has no previous version", r.a.pos[0]);
    else
      snprintf(msg, sizeof(msg), "%s: %s", r.a.pos[0], netstash_strerror(err));
    rc = fail("rollback", r.a.json, r.a.profile, err, msg);
    goto done;
  }
  rc = 0;
  if (r.a.json) {
    json_t *o = json_pack("{s:s, s:b, s:s, s:I, s:I}", "profile", r.a.profile, "ok", 1, "id",
                          r.a.pos[0], "version", (json_int_t)ju(r.j, "version"), "previous",
                          (json_int_t)ju(r.j, "previous"));
    cli_print_json(o, 0);
    json_decref(o);
  } else {
    printf("%s: version %llu active (previous %llu)\n", r.a.pos[0],
           (unsigned long long)ju(r.j, "version"), (unsigned long long)ju(r.j, "previous"));
    if (strcmp(js(r.j, "state"), "active") != 0)
      printf("note: %s serves nothing: it is %s\n", r.a.pos[0], js(r.j, "state"));
  }
done:
  return admin_end(&r, rc);
}

/* ------------------------------------------------------------ gc */

int cmd_gc(int argc, char **argv) {
  static const char usage[] =
      "usage: netstash gc [--profile DIR] [--json]\n"
      "\n"
      "Deletes now the bodies no record references any more (left by purges,\n"
      "rollbacks, replaced versions, evictions), which the store otherwise\n"
      "collects bit by bit. Bodies stored in the last minute and not referenced\n"
      "yet (a warm in progress) are kept.\n"
      "--json prints {\"profile\", \"ok\", \"collected\"}. Exit 0; 9 when there is no\n"
      "store; 13 when the store is busy or damaged.\n";
  admin r;
  uint64_t n = 0;
  netstash_error err;
  int rc = admin_begin(&r, "gc", usage, argc, argv, 0, 0, CLI_RESOURCES_REFUSE);
  if (rc >= 0 || (rc = admin_open(&r)) >= 0)
    goto done;
  err = netstash_preload_gc(r.ctx, &n);
  if (err != NETSTASH_OK) {
    rc = fail("gc", r.a.json, r.a.profile, err, NULL);
    goto done;
  }
  rc = 0;
  if (r.a.json) {
    json_t *o =
        json_pack("{s:s, s:b, s:I}", "profile", r.a.profile, "ok", 1, "collected", (json_int_t)n);
    cli_print_json(o, 0);
    json_decref(o);
  } else {
    printf("%s: %llu bod%s collected\n", r.a.profile, (unsigned long long)n, n == 1 ? "y" : "ies");
  }
done:
  return admin_end(&r, rc);
}

/* ------------------------------------------------------------ stats */

int cmd_stats(int argc, char **argv) {
  static const char usage[] =
      "usage: netstash stats [--profile DIR] [--json]\n"
      "\n"
      "Figures of the profile's preload cache (manifests, how many serve,\n"
      "resources and bytes they serve) and of its store (pages used, map size,\n"
      "bodies, bodies waiting for GC, records per database).\n"
      "--json prints the object of netstash_preload_stats: {\"manifests\", \"active\",\n"
      "\"resources\", \"bytes\", \"store\": {\"used_bytes\", \"limit_bytes\", \"evicted\",\n"
      "\"map_size\", \"bodies\", \"gc_queued\", \"records\": {\"http\", \"preload\",\n"
      "\"manifests\", \"cookies\"}}}.\n"
      "Exit 0; 9 when there is no store.\n";
  admin r;
  char s1[32], s2[32], s3[32];
  const json_t *st, *rec;
  netstash_error err;
  int rc = admin_begin(&r, "stats", usage, argc, argv, 0, 0, CLI_RESOURCES_REFUSE);
  if (rc >= 0 || (rc = admin_open(&r)) >= 0)
    goto done;
  err = netstash_preload_stats(r.ctx, &r.text);
  if ((rc = admin_answer(&r, err, NULL, "unreadable figures")) >= 0)
    goto done;
  rc = 0;
  st = json_object_get(r.j, "store");
  rec = json_object_get(st, "records");
  printf("preload  %llu manifest%s (%llu active), %llu resources, %s served\n",
         (unsigned long long)ju(r.j, "manifests"), ju(r.j, "manifests") == 1 ? "" : "s",
         (unsigned long long)ju(r.j, "active"), (unsigned long long)ju(r.j, "resources"),
         cli_human_bytes(ju(r.j, "bytes"), s1, sizeof(s1)));
  printf("store    %s used of a %s map, %llu bodies, %llu waiting for GC\n",
         cli_human_bytes(ju(st, "used_bytes"), s2, sizeof(s2)),
         cli_human_bytes(ju(st, "map_size"), s3, sizeof(s3)), (unsigned long long)ju(st, "bodies"),
         (unsigned long long)ju(st, "gc_queued"));
  printf("records  http %llu, preload %llu, manifests %llu, cookies %llu\n",
         (unsigned long long)ju(rec, "http"), (unsigned long long)ju(rec, "preload"),
         (unsigned long long)ju(rec, "manifests"), (unsigned long long)ju(rec, "cookies"));
done:
  return admin_end(&r, rc);
}

/* ------------------------------------------------------------ cache */

static int cache_ls(int argc, char **argv) {
  static const char usage[] =
      "usage: netstash cache ls [PREFIX] [--profile DIR] [--json]\n"
      "\n"
      "The profile's HTTP cache: one line per stored response (a URL stored under\n"
      "several Vary variants or top-level sites has several), with its status,\n"
      "whether a plain GET would be answered fresh now, its age and freshness\n"
      "lifetime, its size and the coding it is kept in; only URLs that start\n"
      "with PREFIX when given. Safe while netd or a browser uses the profile.\n"
      "--json prints the object of netstash_cache_list: {\"count\", \"entries\":\n"
      "[{\"url\", \"site\", \"status\", \"size\", \"coding\", \"stored\", \"age\",\n"
      "\"lifetime\", \"fresh\", \"decision\", \"last_used\", \"vary\", \"range\"}]}.\n"
      "Exit 0; 9 when there is no store.\n";
  admin r;
  const json_t *e;
  size_t i;
  netstash_error err;
  int rc = admin_begin(&r, "cache ls", usage, argc, argv, 0, 1, CLI_RESOURCES_REFUSE);
  if (rc >= 0 || (rc = admin_open(&r)) >= 0)
    goto done;
  err = netstash_cache_list(r.ctx, r.a.pos[0], &r.text);
  if ((rc = admin_answer(&r, err, NULL, "unreadable cache listing")) >= 0)
    goto done;
  rc = 0;
  printf("%-6s %-5s %9s %9s %10s %-8s %s\n", "STATUS", "FRESH", "AGE", "LIFETIME", "SIZE", "CODING",
         "URL");
  json_array_foreach(json_object_get(r.j, "entries"), i, e) {
    char sz[32], age[24], life[24];
    const char *site = js(e, "site"), *range = json_string_value(json_object_get(e, "range"));
    snprintf(age, sizeof(age), "%llds", (long long)json_integer_value(json_object_get(e, "age")));
    snprintf(life, sizeof(life), "%llds",
             (long long)json_integer_value(json_object_get(e, "lifetime")));
    printf("%-6lld %-5s %9s %9s %10s %-8s %s%s%s%s\n",
           (long long)json_integer_value(json_object_get(e, "status")),
           json_is_true(json_object_get(e, "fresh")) ? "yes" : "no", age, life,
           cli_human_bytes(ju(e, "size"), sz, sizeof(sz)), js(e, "coding"), js(e, "url"),
           range ? " (" : "", range ? range : "", range ? ")" : "");
    if (strcmp(site, "-") != 0) /* partitioned: the top-level site it is kept for */
      printf("%54s for %s\n", "", site);
  }
  printf("%llu stored response%s\n", (unsigned long long)ju(r.j, "count"),
         ju(r.j, "count") == 1 ? "" : "s");
done:
  return admin_end(&r, rc);
}

static int cache_rm(int argc, char **argv) {
  static const char usage[] =
      "usage: netstash cache rm URL [--profile DIR] [--json]\n"
      "\n"
      "Removes every stored response for URL from the profile's HTTP cache: under\n"
      "each top-level site, each Vary variant (the next request for it goes to the\n"
      "network). The preload cache is not touched (netstash purge ID).\n"
      "--json prints {\"profile\", \"ok\", \"error\", \"message\", \"url\", \"removed\"}.\n"
      "Exit 0; 9 when nothing was stored for URL (or there is no store).\n";
  admin r;
  unsigned removed = 0;
  char msg[4300];
  netstash_error err;
  int rc = admin_begin(&r, "cache rm", usage, argc, argv, 1, 1, CLI_RESOURCES_REFUSE);
  if (rc >= 0 || (rc = admin_open(&r)) >= 0)
    goto done;
  err = netstash_cache_remove(r.ctx, r.a.pos[0], &removed);
  if (err == NETSTASH_E_NOT_FOUND)
    snprintf(msg, sizeof(msg), "nothing stored for %s in %s", r.a.pos[0], r.a.profile);
  else if (err == NETSTASH_OK)
    snprintf(msg, sizeof(msg), "%s: removed (%u partition%s)", r.a.pos[0], removed,
             removed == 1 ? "" : "s");
  else
    snprintf(msg, sizeof(msg), "%s", netstash_strerror(err));
  if (err != NETSTASH_OK && !r.a.json) {
    rc = fail(r.cmd, 0, r.a.profile, err, msg);
    goto done;
  }
  if (r.a.json) {
    json_t *o = cli_status_json(r.a.profile, err, msg);
    json_object_set_new(o, "url", json_string(r.a.pos[0]));
    json_object_set_new(o, "removed", json_integer(removed));
    cli_print_json(o, 0);
    json_decref(o);
    if (err != NETSTASH_OK)
      cli_error(r.cmd, "%s", msg);
    rc = err == NETSTASH_OK ? 0 : cli_exit_code(err);
    goto done;
  }
  printf("%s\n", msg);
  rc = 0;
done:
  return admin_end(&r, rc);
}

int cmd_cache(int argc, char **argv) {
  static const char usage[] =
      "usage: netstash cache ls [PREFIX] [--profile DIR] [--json]\n"
      "       netstash cache rm URL [--profile DIR] [--json]\n"
      "\n"
      "The profile's HTTP cache (RFC 9111 responses kept from fetches): list what\n"
      "is stored, remove a URL's responses. The whole store: netstash purge;\n"
      "the preload cache: netstash ls, netstash purge ID. See netstash-cache(1).\n";
  if (argc >= 2 && !strcmp(argv[1], "ls"))
    return cache_ls(argc - 1, argv + 1);
  if (argc >= 2 && !strcmp(argv[1], "rm"))
    return cache_rm(argc - 1, argv + 1);
  if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
    fputs(usage, stdout);
    return 0;
  }
  fprintf(stderr, "netstash cache: %s\n\n%s",
          argc >= 2 ? "unknown subcommand" : "a subcommand is needed", usage);
  return 2;
}
