/*
 * cli.h — shared bits of the netstash command line tool.
 */
#ifndef NETSTASH_CLI_H
#define NETSTASH_CLI_H

#include <netstash/netstash.h>
#include <stdio.h>

/* Exit codes (documented in netstash(1) and README.md). Stable. */
enum {
  EXIT_OK_ = 0,
  EXIT_INTERNAL = 1,
  EXIT_USAGE = 2,
  EXIT_BAD_URL = 3,
  EXIT_DNS = 4,
  EXIT_CONNECT = 5,
  EXIT_TLS = 6,
  EXIT_TIMEOUT = 7,
  EXIT_PROTOCOL = 8,
  EXIT_IO = 9,
  EXIT_TOO_LARGE = 10,
  EXIT_CANCELED = 11,
  EXIT_NOT_CACHED = 12,
  EXIT_STORE = 13,
  EXIT_MANIFEST = 14,
  EXIT_INTEGRITY = 15,  /* a body failed its integrity; critical resources missing */
  EXIT_NOT_APPLIED = 16 /* manifest not for this device (rollout) or deferred */
};

int cli_exit_code(netstash_error err);
/* Prints "netstash: CMD: reason" plus an optional hint line to stderr. */
void cli_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *cli_hint(netstash_error err);

netstash_error cli_read_file(const char *path, size_t max, uint8_t **out, size_t *len,
                             char *detail, size_t detail_len);

/* $XDG_DATA_HOME/netstash or ~/.local/share/netstash (malloc'd). */
char *cli_default_profile(void);

int cmd_get(int argc, char **argv);
int cmd_verify(int argc, char **argv);
int cmd_purge(int argc, char **argv);
int cmd_cookies(int argc, char **argv);
int cmd_manifest(int argc, char **argv);
int cmd_warm(int argc, char **argv);
int cmd_install(int argc, char **argv);
int cmd_pack(int argc, char **argv); /* cmd_bundle.c */
int cmd_load(int argc, char **argv);
/* cmd_preload.c */
int cmd_ls(int argc, char **argv);
int cmd_show(int argc, char **argv);
int cmd_rollback(int argc, char **argv);
int cmd_gc(int argc, char **argv);
int cmd_stats(int argc, char **argv);

/* Nonzero when profile holds a store (DIR/store/data.mdb). */
int cli_store_exists(const char *profile);
/* A context on profile (its store opened, created if absent); on failure
 * prints "netstash: CMD: cannot open the profile ..." and a hint. */
netstash_error cli_profile_ctx(const char *cmd, const char *profile, netstash_ctx **ctx);

#endif
