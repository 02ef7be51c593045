/*
 * make.h — building preload manifests for ops (`netstash manifest make` and
 * `netstash manifest import --workbox`). Internal; used by the CLI only.
 *
 * Both produce a manifest in the format of manifests/schema/manifest.schema.json
 * as pretty-printed JSON, and both run the manifest parser over their own
 * output before returning it: what they hand out always passes
 * `netstash manifest lint` (at o->now_s).
 *
 * Unlike the rest of lib/preload these functions do file I/O (they read
 * the build output to hash it); they still take the time as a parameter.
 */
#ifndef NS_PRELOAD_MAKE_H
#define NS_PRELOAD_MAKE_H

#include "ns_setup.h"

#include "core/buf.h"
#include "preload/manifest.h"

/* Directories deeper than this below DIR are not walked (an error). */
#define NS_MAKE_MAX_DEPTH 64

/* A --priority rule. glob: '*' matches any bytes (also '/'), '?' one byte,
 * everything else itself. A glob without '/' is matched against the file
 * name, one with '/' against the path relative to the root (DIR, or --base
 * for imported URLs), e.g. "*.png", "img/hero-*", "vendor/lib-*.js". */
typedef struct ns_make_rule {
  const char *glob;
  ns_manifest_priority priority;
} ns_make_rule;

/* A --header rule: files whose path matches glob (as for ns_make_rule) get
 * the response header name: value. For each header name the first matching
 * rule wins. */
typedef struct ns_make_header {
  const char *glob;
  const char *name;
  const char *value;
} ns_make_header;

/* Receives non-fatal notes ("skipped a symlink to outside DIR"). */
typedef void (*ns_make_warn_cb)(const char *msg, void *user_data);

typedef struct ns_make_opts {
  const char *base;          /* https URL the root maps to; '/' appended when missing */
  const char *id;            /* manifest id */
  uint64_t version;          /* >= 1 */
  const char *expires;       /* RFC 3339; must be later than now_s */
  int64_t now_s;             /* the clock the output is checked against */
  uint64_t max_bytes;        /* budgets.max_bytes, 0: no budget */
  const char *fallback;      /* NULL: none */
  const ns_make_rule *rules; /* first match wins, before the defaults */
  size_t n_rules;
  const ns_make_header *headers; /* response headers by glob */
  size_t n_headers;
  int no_last_modified; /* 0: each resource gets "last-modified" from its
                           file's mtime (unless a header rule sets one) */
  const char *const *ignore; /* query parameters ignored by every resource */
  size_t n_ignore;
  const char *const *entries; /* entry pages (resolved against base); none: base */
  size_t n_entries;
  const char *const *scopes; /* scope prefixes besides base */
  size_t n_scopes;
  const char *dir;      /* import: build output the entries are read from; NULL: none */
  ns_make_warn_cb warn; /* may be NULL */
  void *user_data;
} ns_make_opts;

/* Walks dir and writes the manifest of every file below it into *out
 * (NUL-terminated, *out_len bytes without the NUL; free with ns_free(mem,
 * ...)). Files are taken in byte order of their names, dotfiles and
 * dot-directories skipped, symlinks followed only while they stay inside
 * dir. A file's URL is base + its path, percent-encoded except unreserved
 * characters and '/'; an index.html is listed under its directory's URL
 * (base itself for the root one, the default entry page).
 * Errors: NETSTASH_E_INVALID_ARGUMENT (an option; detail names it),
 * NETSTASH_E_IO (detail: path and reason), NETSTASH_E_MANIFEST_INVALID /
 * NETSTASH_E_TOO_LARGE / NETSTASH_E_MANIFEST_EXPIRED (the result would not
 * lint; detail has the first violation), NETSTASH_E_NOMEM. */
netstash_error ns_manifest_make_dir(const ns_mem *mem, const char *dir, const ns_make_opts *o,
                                    char **out, size_t *out_len, char *detail, size_t detail_len);

/* Converts a Workbox precache manifest: a JSON array of {"url", "revision"}
 * / {"url", "integrity"} entries (or URL strings), an object with
 * "manifestEntries" (workbox-build getManifest), or a script assigning
 * self.__WB_MANIFEST = [...]. URLs are resolved against base, resources keep
 * the input's order. Every entry's body is read from o->dir (the URL path
 * relative to base; a directory URL reads its index.html) for its size and
 * content type; an entry's own integrity is kept once the file matches it,
 * the others get the file's sha256. Without o->dir: NETSTASH_E_INVALID_ARGUMENT
 * naming the entries that cannot be completed. Other errors as
 * ns_manifest_make_dir, plus NETSTASH_E_MANIFEST_INVALID for input that is
 * not a Workbox manifest. */
netstash_error ns_manifest_import_workbox(const ns_mem *mem, const uint8_t *wb, size_t wb_len,
                                          const ns_make_opts *o, char **out, size_t *out_len,
                                          char *detail, size_t detail_len);

/* ---- helpers (exposed for tests) */

/* The content type served for a file name, by extension (ASCII case
 * insensitive); "application/octet-stream" when unknown. */
const char *ns_make_content_type(const char *name);
/* 1 when s matches glob (see ns_make_rule). */
int ns_make_glob_match(const char *glob, const char *s);
/* Appends path percent-encoded: every byte but A-Z a-z 0-9 - . _ ~ and '/'
 * as %XX. */
netstash_error ns_make_pct_encode(ns_buf *out, const char *path, size_t len);

#endif /* NS_PRELOAD_MAKE_H */
