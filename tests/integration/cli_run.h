/*
 * cli_run.h — the netstash CLI as a child process, for the integration
 * tests of its commands (cli_test, load_test): exit code, stdout and stderr.
 */
#ifndef NST_CLI_RUN_H
#define NST_CLI_RUN_H

#include <jansson.h>

/* Finds $NST_BUILDDIR/tools/netstash (else ./tools/netstash) and points
 * XDG_DATA_HOME at the test's work dir, so that the default profile (no
 * --profile) is never the user's. name ("cli", "load") names the test in
 * messages ("NAME_test: ...") and its stderr file (NAME-stderr.txt in the
 * work dir). Returns 0, or -1 with a reason on stderr. */
int cli_run_setup(const char *name);

/* Runs the CLI with args (a shell-quoted string); returns the exit code (-1
 * when it did not exit) and stdout (malloc'd, NUL-terminated) in *out.
 * stderr goes to *err_out (malloc'd) unless err_out is NULL. */
int cli_run(const char *args, char **out, char **err_out);

/* text (a command's stdout) as exactly one JSON object; fails the test
 * otherwise. */
json_t *cli_run_json(const char *text);

/* Runs the CLI with args and fails the test unless it exits with code and,
 * when not NULL, its stderr holds err_has and its stdout is a JSON object
 * whose "error" is json_error (with a "message" string). */
void cli_run_expect(const char *args, int code, const char *err_has, const char *json_error);

#endif
