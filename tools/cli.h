/*
 * cli.h — shared bits of the netstash command line tool (tools/cli.c).
 */
#ifndef NETSTASH_CLI_H
#define NETSTASH_CLI_H

#include <netstash/netstash.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

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
/* Prints "hint: ..." to stderr when err has a hint. */
void cli_print_hint(netstash_error err);

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
int cmd_cache(int argc, char **argv);
/* cmd_daemon.c: argv[0] is "--daemon" or "--daemon=SOCKET" */
int cmd_daemon(int argc, char **argv);

/* Nonzero when profile holds a store (DIR/store/data.mdb). */
int cli_store_exists(const char *profile);
/* A context on profile (its store opened, created if absent); on failure
 * prints "netstash: CMD: cannot open the profile ..." and a hint. */
netstash_error cli_profile_ctx(const char *cmd, const char *profile, netstash_ctx **ctx);
/* netstash_ctx_new on o; on failure prints "netstash: CMD: cannot start:
 * reason[: detail]" and a hint. */
netstash_error cli_ctx_new(const char *cmd, const netstash_options *o, netstash_ctx **ctx);

/* "512 B", "1.5 KiB", ... "2.0 TiB" into buf; returns buf. */
const char *cli_human_bytes(uint64_t b, char *buf, size_t n);
/* The table `netstash ls` prints for a "manifests" array of
 * netstash_preload_describe (cmd_preload.c); resources: also every entry. */
void cli_print_manifest_table(const json_t *list, int resources);

/* A decimal uint32 (the whole string): 0, or -1. */
int cli_parse_u32(const char *s, uint32_t *out);
/* "network", "cache", "revalidated", "preload" or "none" (the --json
 * "source" values). */
const char *cli_source_name(netstash_source s);

/* SIGINT and SIGTERM only set a flag, which cli_interrupted() returns: the
 * command cancels its transfers and reports. */
void cli_catch_signals(void);
int cli_interrupted(void);

/* The arguments of the profile commands (verify, purge, ls, show, rollback,
 * gc, stats): [--profile DIR] [--json] [--resources] and positional ones. */
#define CLI_ARGS_MAX_POS 2
typedef struct cli_args {
  const char *profile; /* --profile DIR, else the default profile */
  char *defprofile;    /* the default profile's storage (cli_args_free) */
  int json;
  int resources;
  const char *pos[CLI_ARGS_MAX_POS]; /* NULL past npos */
  int npos;
} cli_args;

/* What --resources is to a command: not an option (getopt's message), an
 * option of another command ("unknown option --resources"), or taken. */
typedef enum cli_resources {
  CLI_RESOURCES_NONE,
  CLI_RESOURCES_REFUSE,
  CLI_RESOURCES_ALLOW
} cli_resources;

/* Parses argv into a with min_pos..max_pos (at most CLI_ARGS_MAX_POS)
 * positional arguments. Returns -1 to go on, else the exit code (--help: 0,
 * usage error: 2, both printed). Call cli_args_free in either case. */
int cli_parse_args(const char *cmd, const char *usage, int argc, char **argv, int min_pos,
                   int max_pos, cli_resources resources, cli_args *a);
void cli_args_free(cli_args *a);

/* Prints o as one compact line on stdout, keys in insertion order, with
 * extra json_dumpf flags (JSON_REAL_PRECISION); o stays the caller's.
 * Returns json_dumpf's result. */
int cli_print_json(const json_t *o, size_t flags);
/* {"profile", "ok", "error": null or NETSTASH_E_..., "message"}: the --json
 * result of the profile commands (new reference). */
json_t *cli_status_json(const char *profile, netstash_error err, const char *message);

#endif
