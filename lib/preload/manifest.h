/*
 * manifest.h — preload manifests: parsing and validation. Internal.
 *
 * The format is described by manifests/schema/manifest.schema.json; this
 * parser is its reference implementation. Unknown fields are rejected
 * everywhere (a typo must not silently disable a rule). Every violation is
 * reported with the JSON path it concerns:
 *
 *   resources[17].integrity: unknown algorithm "md5"
 *
 * The parser does no I/O and does not read the clock: the caller passes now
 * and the installed version.
 */
#ifndef NS_PRELOAD_MANIFEST_H
#define NS_PRELOAD_MANIFEST_H

#include "ns_setup.h"

/* Largest manifest accepted, in bytes (NETSTASH_E_TOO_LARGE beyond). */
#define NS_MANIFEST_MAX_LEN ((size_t)8 << 20)
/* Violations kept per parse; later ones are counted, not stored. */
#define NS_MANIFEST_MAX_DIAGS 64

typedef enum ns_manifest_priority {
  NS_MANIFEST_PRIO_CRITICAL = 0,
  NS_MANIFEST_PRIO_HIGH = 1,
  NS_MANIFEST_PRIO_LOW = 2
} ns_manifest_priority;

typedef enum ns_sri_alg {
  NS_SRI_SHA256 = 32, /* value = digest length in bytes */
  NS_SRI_SHA384 = 48,
  NS_SRI_SHA512 = 64
} ns_sri_alg;

typedef struct ns_manifest_hash {
  ns_sri_alg alg;
  uint8_t digest[64]; /* alg bytes used */
} ns_manifest_hash;

typedef struct ns_manifest_header {
  const char *name; /* borrowed from the manifest */
  const char *value;
} ns_manifest_header;

typedef struct ns_manifest_resource {
  char *url;                /* normalised absolute https URL */
  ns_manifest_hash *hashes; /* the integrity metadata, >= 1 */
  size_t n_hashes;
  uint64_t size; /* bytes (decoded body) */
  const char *content_type;
  ns_manifest_header *headers;
  size_t n_headers;
  ns_manifest_priority priority; /* default high */
  const char **query_ignore;     /* NULL: query matched exactly */
  size_t n_query_ignore;
} ns_manifest_resource;

typedef struct ns_manifest_rollout {
  const char *app_version;    /* range (">=1.2 <2"), NULL: any */
  const char *kernel_version; /* range, NULL: any */
  int percent;                /* 0..100, default 100 */
  int kill_switch;            /* 1: serve nothing from this manifest */
  uint64_t pinned_version;    /* 0: none */
} ns_manifest_rollout;

typedef enum ns_manifest_network {
  NS_MANIFEST_NET_ANY = 0,
  NS_MANIFEST_NET_UNMETERED = 1
} ns_manifest_network;

typedef struct ns_manifest {
  const ns_mem *mem;
  void *root; /* json_t *, owns every borrowed string */
  const char *id;
  uint64_t version;
  char **scope; /* normalised https URL prefixes */
  size_t n_scope;
  char **entry_pages; /* normalised */
  size_t n_entry_pages;
  int64_t expires_s; /* seconds since the epoch */
  ns_manifest_resource *resources;
  size_t n_resources;
  uint64_t total_bytes; /* sum of resource sizes */
  uint64_t max_bytes;   /* budgets.max_bytes, 0: no budget */
  ns_manifest_network network;
  char *fallback; /* normalised base URL or NULL */
  ns_manifest_rollout rollout;
} ns_manifest;

/* One violation: code (NETSTASH_E_MANIFEST_INVALID, _EXPIRED, _DOWNGRADE,
 * NETSTASH_E_TOO_LARGE) and "path: reason". */
typedef struct ns_manifest_diag {
  netstash_error code;
  char path[128]; /* "resources[17].integrity", "" for the whole document */
  char msg[256];  /* "PATH: reason" */
} ns_manifest_diag;

typedef struct ns_manifest_diags {
  ns_manifest_diag d[NS_MANIFEST_MAX_DIAGS];
  size_t n;       /* stored */
  size_t dropped; /* past NS_MANIFEST_MAX_DIAGS */
} ns_manifest_diags;

typedef struct ns_manifest_check {
  int64_t now_s;              /* expiry is checked against this */
  uint64_t installed_version; /* 0: none installed; else version must exceed it */
  size_t max_len;             /* 0: NS_MANIFEST_MAX_LEN */
} ns_manifest_check;

/* Parses and validates the manifest bytes. On NETSTASH_OK *out is a new
 * manifest (free with ns_manifest_del). Otherwise *out is NULL, the code is
 * that of the first violation and diags (if not NULL) lists all of them:
 * NETSTASH_E_TOO_LARGE (manifest over max_len, or resources over
 * budgets.max_bytes), NETSTASH_E_MANIFEST_INVALID (syntax, types, unknown
 * fields, URLs, duplicates, integrity), NETSTASH_E_MANIFEST_EXPIRED,
 * NETSTASH_E_DOWNGRADE, NETSTASH_E_NOMEM, NETSTASH_E_INVALID_ARGUMENT. */
netstash_error ns_manifest_parse(const ns_mem *mem, const uint8_t *data, size_t len,
                                 const ns_manifest_check *check, ns_manifest **out,
                                 ns_manifest_diags *diags);
void ns_manifest_del(ns_manifest *m);

/* RFC 3339 date-time ("2026-12-31T23:59:59Z", "...+02:00", fractions
 * ignored) to seconds since the epoch. 0 on success, -1 otherwise. */
int ns_rfc3339_parse(const char *s, size_t len, int64_t *out_s);

#endif /* NS_PRELOAD_MANIFEST_H */
