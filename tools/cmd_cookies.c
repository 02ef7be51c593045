/*
 * netstash cookies list|import|export|clear — the profile's cookie jars.
 * --json: list prints {"jar", "cookies": [{name, value, domain, path,
 * partition, expires_ms, secure, http_only, host_only, same_site}]}; the
 * others print {"jar", "ok", "count", "error", "message"}.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cli.h"

static const char usage[] =
    "usage: netstash cookies list   [--jar NAME] [--profile DIR] [--json]\n"
    "       netstash cookies import FILE [--jar NAME] [--profile DIR] [--json]\n"
    "       netstash cookies export [FILE] [--jar NAME] [--profile DIR]\n"
    "       netstash cookies clear  [--domain D] [--name N] [--jar NAME] [--profile DIR] [--json]\n"
    "\n"
    "The cookie jars of a profile (default jar: \"default\"). import and export use\n"
    "curl's Netscape cookies.txt format (\"-\" or no FILE: stdin/stdout). clear\n"
    "deletes the cookies of a domain (and its subdomains) and/or a name; all\n"
    "of them without --domain and --name.\n";

static const char *same_site_name(netstash_same_site s) {
  switch (s) {
  case NETSTASH_SAME_SITE_NONE:
    return "none";
  case NETSTASH_SAME_SITE_LAX:
    return "lax";
  case NETSTASH_SAME_SITE_STRICT:
    return "strict";
  case NETSTASH_SAME_SITE_UNSET:
    break;
  }
  return "unset";
}

typedef struct list_state {
  json_t *arr;
  int json;
} list_state;

static void on_cookie(const netstash_cookie *c, void *ud) {
  list_state *ls = ud;
  uint32_t fl = netstash_cookie_flags(c);
  if (ls->json) {
    const char *part = netstash_cookie_partition(c);
    json_array_append_new(
        ls->arr, json_pack("{s:s, s:s, s:s, s:s, s:o, s:I, s:b, s:b, s:b, s:s}", "name",
                           netstash_cookie_name(c), "value", netstash_cookie_value(c), "domain",
                           netstash_cookie_domain(c), "path", netstash_cookie_path(c),
                           "partition", part ? json_string(part) : json_null(), "expires_ms",
                           (json_int_t)netstash_cookie_expires_ms(c), "secure",
                           (fl & NETSTASH_COOKIE_SECURE) != 0, "http_only",
                           (fl & NETSTASH_COOKIE_HTTP_ONLY) != 0, "host_only",
                           (fl & NETSTASH_COOKIE_HOST_ONLY) != 0, "same_site",
                           same_site_name(netstash_cookie_same_site(c))));
  } else {
    printf("%s\t%s\t%s=%s%s%s\n", netstash_cookie_domain(c), netstash_cookie_path(c),
           netstash_cookie_name(c), netstash_cookie_value(c),
           (fl & NETSTASH_COOKIE_SECURE) ? "\tSecure" : "",
           (fl & NETSTASH_COOKIE_HTTP_ONLY) ? "\tHttpOnly" : "");
  }
}

int cmd_cookies(int argc, char **argv) {
  static const struct option opts[] = {{"jar", required_argument, NULL, 'j'},
                                       {"profile", required_argument, NULL, 'p'},
                                       {"domain", required_argument, NULL, 'd'},
                                       {"name", required_argument, NULL, 'n'},
                                       {"json", no_argument, NULL, 'J'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
  const char *jar = "default", *profile = NULL, *domain = NULL, *name = NULL, *sub, *file = NULL;
  char *def = NULL, detail[256];
  int json = 0, c, rc = EXIT_INTERNAL;
  netstash_options *o = NULL;
  netstash_ctx *ctx = NULL;
  netstash_error err = NETSTASH_OK;
  size_t count = 0;

  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    fputs(usage, argc < 2 ? stderr : stdout);
    return argc < 2 ? EXIT_USAGE : 0;
  }
  sub = argv[1];
  if (strcmp(sub, "list") && strcmp(sub, "import") && strcmp(sub, "export") &&
      strcmp(sub, "clear")) {
    cli_error("cookies", "unknown subcommand \"%s\"", sub);
    fputs(usage, stderr);
    return EXIT_USAGE;
  }
  optind = 2;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
    case 'j':
      jar = optarg;
      break;
    case 'p':
      profile = optarg;
      break;
    case 'd':
      domain = optarg;
      break;
    case 'n':
      name = optarg;
      break;
    case 'J':
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
  if (optind < argc)
    file = argv[optind++];
  if (optind < argc || (file && strcmp(sub, "import") && strcmp(sub, "export")) ||
      (!file && !strcmp(sub, "import"))) {
    cli_error("cookies", "%s: wrong arguments", sub);
    fputs(usage, stderr);
    return EXIT_USAGE;
  }
  if (!profile)
    profile = def = cli_default_profile();
  netstash_options_new(&o);
  netstash_options_set_profile_dir(o, profile);
  err = netstash_ctx_new(&ctx, o, detail, sizeof(detail));
  if (err != NETSTASH_OK) {
    cli_error("cookies", "cannot open the profile: %s: %s", netstash_strerror(err), detail);
    if (cli_hint(err))
      fprintf(stderr, "hint: %s\n", cli_hint(err));
    rc = cli_exit_code(err);
    goto done;
  }
  if (!strcmp(sub, "list")) {
    list_state ls = {json_array(), json};
    err = netstash_cookie_list(ctx, jar, on_cookie, &ls);
    if (json && err == NETSTASH_OK) {
      json_t *out = json_pack("{s:s, s:o}", "jar", jar, "cookies", ls.arr);
      json_dumpf(out, stdout, JSON_COMPACT | JSON_PRESERVE_ORDER);
      fputc('\n', stdout);
      json_decref(out);
    } else {
      json_decref(ls.arr);
    }
  } else if (!strcmp(sub, "import")) {
    size_t len = 0, skipped = 0;
    uint8_t *text = NULL;
    char why[300];
    if (cli_read_file(file, SIZE_MAX / 2, &text, &len, why, sizeof(why)) != NETSTASH_OK) {
      cli_error("cookies", "cannot read %s", why);
      rc = EXIT_IO;
      goto done;
    }
    err = netstash_cookie_import(ctx, jar, (const char *)text, len, &count, &skipped);
    free(text);
  } else if (!strcmp(sub, "export")) {
    char *text = NULL;
    size_t len = 0;
    err = netstash_cookie_export(ctx, jar, &text, &len);
    if (err == NETSTASH_OK) {
      FILE *fp = (!file || !strcmp(file, "-")) ? stdout : fopen(file, "wb");
      if (!fp || fwrite(text, 1, len, fp) != len || (fp != stdout && fclose(fp) != 0)) {
        cli_error("cookies", "cannot write \"%s\": %s", file ? file : "stdout", strerror(errno));
        netstash_free(ctx, text);
        rc = EXIT_IO;
        goto done;
      }
    }
    netstash_free(ctx, text);
  } else {
    err = netstash_cookie_delete(ctx, jar, domain, name, &count);
  }
  if (json && strcmp(sub, "list") && strcmp(sub, "export")) {
    json_t *out = json_pack("{s:s, s:b, s:I, s:o, s:s}", "jar", jar, "ok", err == NETSTASH_OK,
                            "count", (json_int_t)count, "error",
                            err == NETSTASH_OK ? json_null()
                                               : json_string(netstash_error_name(err)),
                            "message", netstash_strerror(err));
    json_dumpf(out, stdout, JSON_COMPACT | JSON_PRESERVE_ORDER);
    fputc('\n', stdout);
    json_decref(out);
  } else if (err == NETSTASH_OK && (!strcmp(sub, "import") || !strcmp(sub, "clear"))) {
    printf("%zu cookie%s %s\n", count, count == 1 ? "" : "s",
           !strcmp(sub, "import") ? "imported" : "deleted");
  }
  if (err != NETSTASH_OK)
    cli_error("cookies", "%s: %s", sub, netstash_strerror(err));
  rc = err == NETSTASH_OK ? 0 : cli_exit_code(err);
done:
  netstash_ctx_del(ctx);
  netstash_options_del(o);
  free(def);
  return rc;
}
