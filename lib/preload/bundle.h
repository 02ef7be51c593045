/*
 * bundle.h — offline preload bundles (libarchive). Internal.
 *
 * A bundle carries one version of a preload manifest with every body it
 * needs, so an app can ship it and install it with no network
 * (netstash_warm_new with the bundle's path; `netstash install`). Written
 * by netstash_preload_pack (`netstash pack`) as a POSIX (pax) tar; the
 * reader also accepts tar.gz and zip. Entries, in this order:
 *
 *   manifest.json          the manifest bytes, exactly as signed (required,
 *                          first, at most NS_MANIFEST_MAX_LEN)
 *   manifest.json.sig      its detached signature (optional, second, at
 *                          most NS_SIG_MAX_LEN)
 *   bodies/<hex>           one per distinct body: the decoded bytes, named
 *                          by the 64 lowercase hex digits of their SHA-256
 *
 * A leading "./" on a name is ignored and a directory entry "bodies/" is
 * skipped, so `tar -cf B.tar manifest.json manifest.json.sig bodies` makes
 * a valid bundle. Everything else is refused: other names, absolute names
 * or names with a ".." component, links, devices, a second manifest.
 *
 * The reader trusts nothing in the archive: every body is hashed and
 * compared with its name before it is handed out, and sizes are capped
 * before anything is allocated. It does not check the manifest or its
 * signature: the warmer does, exactly as for a manifest fetched over the
 * network, and then matches bodies to resources by their SHA-256 (and the
 * resources' own integrity metadata).
 *
 * Memory: the reader's state and the bodies go through mem; libarchive
 * allocates with malloc. Thread rule: one bundle, one thread at a time.
 */
#ifndef NS_PRELOAD_BUNDLE_H
#define NS_PRELOAD_BUNDLE_H

#include "ns_setup.h"

#include "store/store.h"

#define NS_PL_BUNDLE_MANIFEST "manifest.json"
#define NS_PL_BUNDLE_SIG "manifest.json.sig"
#define NS_PL_BUNDLE_BODIES "bodies/"

/* 1 when path is an archive libarchive can read (tar, tar.gz, zip) — a
 * cheap sniff: opens it and reads the first entry header, nothing more.
 * 0 otherwise (a manifest file, unreadable, not an archive). */
int ns_pl_bundle_sniff(const char *path);
/* The same for bytes in memory. */
int ns_pl_bundle_sniff_mem(const uint8_t *data, size_t len);

typedef struct ns_pl_bundle ns_pl_bundle;

/* Opens the bundle at path and reads its first entries: manifest.json
 * (required, first) and manifest.json.sig (optional, second). On success
 * *out is a new bundle (ns_pl_bundle_close). Errors, with a one-line detail
 * saying what is wrong and what to do:
 *  - NETSTASH_E_IO: the file cannot be opened or read;
 *  - NETSTASH_E_MANIFEST_INVALID: not a tar or zip archive, damaged or
 *    truncated, manifest.json missing or not the first entry, an entry too
 *    large (manifest over NS_MANIFEST_MAX_LEN, signature over
 *    NS_SIG_MAX_LEN), an unsafe (absolute, "..") or unknown entry name, a
 *    non-regular entry;
 *  - NETSTASH_E_NOMEM, NETSTASH_E_INVALID_ARGUMENT. */
netstash_error ns_pl_bundle_open(const ns_mem *mem, const char *path, ns_pl_bundle **out,
                                 char *detail, size_t detail_len);
/* The same over len bytes at data, which must stay valid and unchanged
 * until ns_pl_bundle_close (they are not copied). An I/O error cannot
 * happen; a damaged archive is NETSTASH_E_MANIFEST_INVALID. */
netstash_error ns_pl_bundle_open_mem(const ns_mem *mem, const uint8_t *data, size_t len,
                                     ns_pl_bundle **out, char *detail, size_t detail_len);

/* The manifest bytes, valid until ns_pl_bundle_close. */
const uint8_t *ns_pl_bundle_manifest(const ns_pl_bundle *b, size_t *len);
/* The signature bytes, NULL (and *len 0) when the bundle has none. */
const uint8_t *ns_pl_bundle_sig(const ns_pl_bundle *b, size_t *len);

/* Reads the next body: an entry bodies/<64 lowercase hex digits>. The
 * reader checks the name's form and safety, refuses non-regular entries,
 * entries over max_body bytes (NETSTASH_E_TOO_LARGE, refused by the
 * declared size before anything is read when the archive declares it), and
 * checks that the SHA-256 of the data equals the name
 * (NETSTASH_E_INTEGRITY: the entry was damaged). hash receives the 32
 * bytes of the name, *data and *len the body, valid until the next call or
 * ns_pl_bundle_close (*data NULL on error). NETSTASH_E_NOT_FOUND at the
 * end (again on every later call).
 * NETSTASH_E_TOO_LARGE and NETSTASH_E_INTEGRITY concern that entry only
 * (hash names it): the next call reads the next entry. Every other error
 * stops the bundle (later calls return the same code and detail): other
 * entries, a damaged or truncated archive (NETSTASH_E_MANIFEST_INVALID),
 * a read failure (NETSTASH_E_IO), NETSTASH_E_NOMEM. */
netstash_error ns_pl_bundle_next_body(ns_pl_bundle *b, uint64_t max_body, uint8_t hash[32],
                                      const uint8_t **data, size_t *len, char *detail,
                                      size_t detail_len);
/* NULL accepted. */
void ns_pl_bundle_close(ns_pl_bundle *b);

/* What ns_pl_pack wrote. */
typedef struct ns_pl_pack_info {
  uint64_t version;        /* the active version packed */
  uint64_t bodies;         /* distinct bodies */
  uint64_t body_bytes;     /* their decoded bytes */
  uint64_t manifest_bytes;
  int signed_;             /* 1 when manifest.json.sig was written */
  uint64_t bytes;          /* size of the bundle file */
} ns_pl_pack_info;

/* The writer behind netstash_preload_pack: a pax tar of the active version
 * of id in store s (manifest.json, manifest.json.sig when the version was
 * signed, then bodies/<hex> in hash order, decoded, each re-hashed on the
 * way), read from one snapshot, written to path + ".tmp", fsynced, then
 * renamed over path (and the directory fsynced). Entry times are the
 * version's publication time, so packing the same version twice gives the
 * same bytes. info (may be NULL) is filled on success.
 * NETSTASH_E_NOT_FOUND (unknown id, or no active version: the detail says
 * which), NETSTASH_E_IO (the detail names the file and the reason),
 * NETSTASH_E_STORE_CORRUPT (the manifest or a body missing or damaged in
 * the store), other store errors, NETSTASH_E_NOMEM,
 * NETSTASH_E_INVALID_ARGUMENT. On error path is left as it was and the
 * temporary file is removed. */
netstash_error ns_pl_pack(ns_store *s, const ns_mem *mem, const char *id, const char *path,
                          ns_pl_pack_info *info, char *detail, size_t detail_len);

#endif /* NS_PRELOAD_BUNDLE_H */
