/*
 * netstash ls | show | rollback | gc | stats — the preload cache of a
 * profile (include/netstash/preload.h, "Administration"). A table or a few
 * aligned lines for people; --json for scripts: ls, show and stats print the
 * library's JSON as it is (netstash_preload_describe, _show, _stats),
 * rollback and gc print {"profile", "ok", ...}; every failure under --json
 * prints {"profile", "ok": false, "error", "message"}.
 */
#define _GNU_SOURCE 1
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "cli.h"

/* ------------------------------------------------------------ shared */

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
    if (cli_hint(err))
      fprintf(stderr, "hint: %s\n", cli_hint(err));
  }
  return err;
}

static void print_json(json_t *o) {
  json_dumpf(o, stdout, JSON_COMPACT | JSON_PRESERVE_ORDER);
  fputc('\n', stdout);
}

/* A failure: "netstash: CMD: reason" (and a hint) on stderr; under --json
 * also the error object on stdout. Returns the exit code. */
static int fail(const char *cmd, int json, const char *profile, netstash_error err,
                const char *what) {
  const char *msg = what ? what : netstash_strerror(err);
  if (json) {
    json_t *o = json_pack("{s:s, s:b, s:s, s:s}", "profile", profile, "ok", 0, "error",
                          netstash_error_name(err), "message", msg);
    print_json(o);
    json_decref(o);
  }
  cli_error(cmd, "%s", msg);
  if (cli_hint(err))
    fprintf(stderr, "hint: %s\n", cli_hint(err));
  return cli_exit_code(err);
}

static const char *human_bytes(uint64_t b, char *buf, size_t n) {
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

static uint64_t ju(const json_t *o, const char *k) {
  json_int_t v = json_integer_value(json_object_get(o, k));
  return v > 0 ? (uint64_t)v : 0;
}

static const char *js(const json_t *o, const char *k) {
  const char *s = json_string_value(json_object_get(o, k));
  return s ? s : "-";
}

typedef struct pl_args {
  const char *profile;
  char *defprofile;
  int json;
  int resources;
  const char *pos[2];
  int npos;
} pl_args;

/* Parses [--profile DIR] [--json] [--resources] and min..max positional
 * arguments. Returns -1 to go on, else the exit code (help, usage error). */
static int parse_args(const char *cmd, const char *usage, int argc, char **argv, int min_pos,
                      int max_pos, int allow_resources, pl_args *a) {
  static const struct option opts[] = {{"profile", required_argument, NULL, 'p'},
                                       {"json", no_argument, NULL, 'j'},
                                       {"resources", no_argument, NULL, 'r'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
  int c;
  memset(a, 0, sizeof(*a));
  optind = 1;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
    case 'p':
      a->profile = optarg;
      break;
    case 'j':
      a->json = 1;
      break;
    case 'r':
      if (!allow_resources) {
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

/* The context of a command that needs an existing store: exit code, or -1
 * with *ctx set. */
static int open_store(const char *cmd, const pl_args *a, netstash_ctx **ctx) {
  char msg[4200];
  netstash_error err;
  *ctx = NULL;
  if (!cli_store_exists(a->profile)) {
    snprintf(msg, sizeof(msg), "no store in %s (nothing warmed there yet)", a->profile);
    return fail(cmd, a->json, a->profile, NETSTASH_E_NOT_FOUND, msg);
  }
  err = cli_profile_ctx(cmd, a->profile, ctx);
  if (err != NETSTASH_OK) {
    if (a->json) {
      json_t *o = json_pack("{s:s, s:b, s:s, s:s}", "profile", a->profile, "ok", 0, "error",
                            netstash_error_name(err), "message", netstash_strerror(err));
      print_json(o);
      json_decref(o);
    }
    return cli_exit_code(err);
  }
  return -1;
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
           human_bytes(ju(e, "size"), sz, sizeof(sz)), js(e, "url"));
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
         (unsigned long long)ju(m, "resources"), human_bytes(ju(m, "bytes"), sz, sizeof(sz)));
  if (resources)
    print_entries(m);
}

static void print_table(const json_t *list, int resources) {
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
           human_bytes(ju(m, "bytes"), sz, sizeof(sz)), js(m, "expires"));
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
  pl_args a;
  netstash_ctx *ctx = NULL;
  char *text = NULL;
  json_t *j = NULL;
  netstash_error err;
  int rc = parse_args("ls", usage, argc, argv, 0, 1, 1, &a);
  if (rc >= 0)
    goto done;
  if (!a.pos[0] && !cli_store_exists(a.profile)) {
    /* nothing warmed there yet: an empty list, and no store created for it */
    if (a.json)
      puts("{\"manifests\":[]}");
    else
      printf("no preload manifests in %s\n", a.profile);
    rc = 0;
    goto done;
  }
  if ((rc = open_store("ls", &a, &ctx)) >= 0)
    goto done;
  err = netstash_preload_describe(ctx, a.pos[0], a.resources, &text);
  if (err != NETSTASH_OK) {
    char msg[512];
    if (err == NETSTASH_E_NOT_FOUND)
      snprintf(msg, sizeof(msg), "no manifest \"%s\" in %s", a.pos[0], a.profile);
    else
      snprintf(msg, sizeof(msg), "%s", netstash_strerror(err));
    rc = fail("ls", a.json, a.profile, err, msg);
    goto done;
  }
  rc = 0;
  if (a.json) {
    puts(text);
    goto done;
  }
  if (!(j = json_loads(text, 0, NULL))) {
    rc = fail("ls", 0, a.profile, NETSTASH_E_INTERNAL, "unreadable description");
    goto done;
  }
  if (a.pos[0])
    print_manifest(j, a.resources);
  else if (json_array_size(json_object_get(j, "manifests")) == 0)
    printf("no preload manifests in %s\n", a.profile);
  else
    print_table(json_object_get(j, "manifests"), a.resources);
done:
  json_decref(j);
  netstash_free(ctx, text);
  netstash_ctx_del(ctx);
  free(a.defprofile);
  return rc;
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
  pl_args a;
  netstash_ctx *ctx = NULL;
  char *text = NULL;
  json_t *j = NULL;
  netstash_error err;
  int rc = parse_args("show", usage, argc, argv, 1, 1, 0, &a);
  if (rc >= 0)
    goto done;
  if ((rc = open_store("show", &a, &ctx)) >= 0)
    goto done;
  err = netstash_preload_show(ctx, a.pos[0], &text);
  if (err != NETSTASH_OK) {
    char msg[512];
    if (err == NETSTASH_E_NOT_FOUND)
      snprintf(msg, sizeof(msg), "%s: not served by any active preload manifest", a.pos[0]);
    else
      snprintf(msg, sizeof(msg), "%s: %s", a.pos[0], netstash_strerror(err));
    rc = fail("show", a.json, a.profile, err, msg);
    goto done;
  }
  rc = 0;
  if (a.json) {
    puts(text);
  } else if ((j = json_loads(text, 0, NULL)) != NULL) {
    const char *name;
    json_t *v;
    printf("%s\n", js(j, "url"));
    printf("  manifest  %s version %llu\n", js(j, "id"), (unsigned long long)ju(j, "version"));
    printf("  status    %llu, %llu bytes, priority %s\n", (unsigned long long)ju(j, "status"),
           (unsigned long long)ju(j, "size"), js(j, "priority"));
    printf("  sha256    %s\n", js(j, "sha256"));
    json_object_foreach(json_object_get(j, "headers"), name, v) {
      printf("  %s: %s\n", name, json_string_value(v));
    }
  } else {
    rc = fail("show", 0, a.profile, NETSTASH_E_INTERNAL, "unreadable answer");
  }
done:
  json_decref(j);
  netstash_free(ctx, text);
  netstash_ctx_del(ctx);
  free(a.defprofile);
  return rc;
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
  pl_args a;
  netstash_ctx *ctx = NULL;
  char *text = NULL;
  json_t *j = NULL;
  netstash_error err;
  int rc = parse_args("rollback", usage, argc, argv, 1, 1, 0, &a);
  if (rc >= 0)
    goto done;
  if ((rc = open_store("rollback", &a, &ctx)) >= 0)
    goto done;
  err = netstash_preload_rollback(ctx, a.pos[0]);
  if (err == NETSTASH_OK)
    err = netstash_preload_describe(ctx, a.pos[0], 0, &text);
  if (err == NETSTASH_OK && !(j = json_loads(text, 0, NULL)))
    err = NETSTASH_E_INTERNAL;
  if (err != NETSTASH_OK) {
    char msg[512];
    if (err == NETSTASH_E_NOT_FOUND)
      snprintf(msg, sizeof(msg), "\"%s\" is not installed or has no previous version", a.pos[0]);
    else
      snprintf(msg, sizeof(msg), "%s: %s", a.pos[0], netstash_strerror(err));
    rc = fail("rollback", a.json, a.profile, err, msg);
    goto done;
  }
  rc = 0;
  if (a.json) {
    json_t *o = json_pack("{s:s, s:b, s:s, s:I, s:I}", "profile", a.profile, "ok", 1, "id",
                          a.pos[0], "version", (json_int_t)ju(j, "version"), "previous",
                          (json_int_t)ju(j, "previous"));
    print_json(o);
    json_decref(o);
  } else {
    printf("%s: version %llu active (previous %llu)\n", a.pos[0],
           (unsigned long long)ju(j, "version"), (unsigned long long)ju(j, "previous"));
    if (strcmp(js(j, "state"), "active") != 0)
      printf("note: %s serves nothing: it is %s\n", a.pos[0], js(j, "state"));
  }
done:
  json_decref(j);
  netstash_free(ctx, text);
  netstash_ctx_del(ctx);
  free(a.defprofile);
  return rc;
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
  pl_args a;
  netstash_ctx *ctx = NULL;
  uint64_t n = 0;
  netstash_error err;
  int rc = parse_args("gc", usage, argc, argv, 0, 0, 0, &a);
  if (rc >= 0)
    goto done;
  if ((rc = open_store("gc", &a, &ctx)) >= 0)
    goto done;
  err = netstash_preload_gc(ctx, &n);
  if (err != NETSTASH_OK) {
    rc = fail("gc", a.json, a.profile, err, NULL);
    goto done;
  }
  rc = 0;
  if (a.json) {
    json_t *o =
        json_pack("{s:s, s:b, s:I}", "profile", a.profile, "ok", 1, "collected", (json_int_t)n);
    print_json(o);
    json_decref(o);
  } else {
    printf("%s: %llu bod%s collected\n", a.profile, (unsigned long long)n, n == 1 ? "y" : "ies");
  }
done:
  netstash_ctx_del(ctx);
  free(a.defprofile);
  return rc;
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
      "\"resources\", \"bytes\", \"store\": {\"used_bytes\", \"map_size\", \"bodies\",\n"
      "\"gc_queued\", \"records\": {\"http\", \"preload\", \"manifests\", \"cookies\"}}}.\n"
      "Exit 0; 9 when there is no store.\n";
  pl_args a;
  netstash_ctx *ctx = NULL;
  char *text = NULL, s1[32], s2[32], s3[32];
  json_t *j = NULL, *st, *rec;
  netstash_error err;
  int rc = parse_args("stats", usage, argc, argv, 0, 0, 0, &a);
  if (rc >= 0)
    goto done;
  if ((rc = open_store("stats", &a, &ctx)) >= 0)
    goto done;
  err = netstash_preload_stats(ctx, &text);
  if (err != NETSTASH_OK) {
    rc = fail("stats", a.json, a.profile, err, NULL);
    goto done;
  }
  rc = 0;
  if (a.json) {
    puts(text);
    goto done;
  }
  if (!(j = json_loads(text, 0, NULL))) {
    rc = fail("stats", 0, a.profile, NETSTASH_E_INTERNAL, "unreadable figures");
    goto done;
  }
  st = json_object_get(j, "store");
  rec = json_object_get(st, "records");
  printf("preload  %llu manifest%s (%llu active), %llu resources, %s served\n",
         (unsigned long long)ju(j, "manifests"), ju(j, "manifests") == 1 ? "" : "s",
         (unsigned long long)ju(j, "active"), (unsigned long long)ju(j, "resources"),
         human_bytes(ju(j, "bytes"), s1, sizeof(s1)));
  printf("store    %s used of a %s map, %llu bodies, %llu waiting for GC\n",
         human_bytes(ju(st, "used_bytes"), s2, sizeof(s2)),
         human_bytes(ju(st, "map_size"), s3, sizeof(s3)), (unsigned long long)ju(st, "bodies"),
         (unsigned long long)ju(st, "gc_queued"));
  printf("records  http %llu, preload %llu, manifests %llu, cookies %llu\n",
         (unsigned long long)ju(rec, "http"), (unsigned long long)ju(rec, "preload"),
         (unsigned long long)ju(rec, "manifests"), (unsigned long long)ju(rec, "cookies"));
done:
  json_decref(j);
  netstash_free(ctx, text);
  netstash_ctx_del(ctx);
  free(a.defprofile);
  return rc;
}
