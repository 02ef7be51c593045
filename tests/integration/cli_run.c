/*
 * cli_run.c — the netstash CLI as a child process (cli_run.h).
 */
#define _GNU_SOURCE 1
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli_run.h"
#include "harness.h"

static char cli[1024], errfile[1024];

int cli_run_setup(const char *name) {
  const char *b = getenv("NST_BUILDDIR");
  char file[64];
  setenv("XDG_DATA_HOME", nst_workdir(), 1);
  snprintf(cli, sizeof(cli), "%s/tools/netstash", b ? b : ".");
  if (access(cli, X_OK) != 0) {
    fprintf(stderr, "%s_test: %s not found (set NST_BUILDDIR)\n", name, cli);
    return -1;
  }
  snprintf(file, sizeof(file), "%s-stderr.txt", name);
  snprintf(errfile, sizeof(errfile), "%s", nst_path(file));
  return 0;
}

int cli_run(const char *args, char **out, char **err_out) {
  char cmd[8192];
  FILE *p;
  size_t cap = 1 << 16, len = 0, r;
  char *buf = malloc(cap);
  int status;
  snprintf(cmd, sizeof(cmd), "%s %s 2>%s", cli, args, errfile);
  p = popen(cmd, "r");
  assert_non_null(p);
  while ((r = fread(buf + len, 1, cap - len - 1, p)) > 0) {
    len += r;
    if (len + 1 == cap) {
      cap *= 2;
      buf = realloc(buf, cap);
    }
  }
  buf[len] = 0;
  status = pclose(p);
  *out = buf;
  if (err_out) {
    FILE *e = fopen(errfile, "r");
    char *eb = calloc(1, 65536);
    if (e) {
      size_t n = fread(eb, 1, 65535, e);
      eb[n] = 0;
      fclose(e);
    }
    *err_out = eb;
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

json_t *cli_run_json(const char *text) {
  json_error_t jerr;
  json_t *j = json_loads(text, 0, &jerr); /* rejects trailing garbage */
  if (!j)
    fail_msg("stdout is not exactly one JSON object: %s\n%s", jerr.text, text);
  assert_true(json_is_object(j));
  return j;
}

void cli_run_expect(const char *args, int code, const char *err_has, const char *json_error) {
  char *out, *err;
  int rc = cli_run(args, &out, &err);
  if (rc != code)
    fail_msg("netstash %s: exit %d, expected %d; stderr: %s", args, rc, code, err);
  if (err_has && !strstr(err, err_has))
    fail_msg("netstash %s: stderr lacks \"%s\": %s", args, err_has, err);
  if (json_error) {
    json_t *j = cli_run_json(out);
    assert_string_equal(json_string_value(json_object_get(j, "error")), json_error);
    assert_true(json_is_string(json_object_get(j, "message")));
    json_decref(j);
  }
  free(out);
  free(err);
}
