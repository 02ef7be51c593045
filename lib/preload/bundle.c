/*
 * bundle.c — offline preload bundles: the reader (tar, tar.gz, zip through
 * libarchive) and the writer behind netstash_preload_pack. See bundle.h.
 */
#include "ns_setup.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>
#include <dlfcn.h>
#include <openssl/evp.h>
#include <pthread.h>

#include "core/buf.h"
#include "core/ctx.h"
#include "core/log.h"
#include "preload/bundle.h"
#include "preload/install.h"
#include "preload/manifest.h"
#include "preload/sign.h"

/* ------------------------------------------------------------ libarchive, loaded on first use
 *
 * libarchive drags libxml2, ICU (a 30 MB data file), libstdc++, lzma, lz4, bz2
 * and acl into every process that links it: measured, it doubled the dynamic
 * loader's time of every netstash process, bundles or not. Only bundle work
 * needs it, so it is loaded with dlopen the first time a bundle is touched;
 * without it, bundle calls fail with NETSTASH_E_UNSUPPORTED and say which
 * package to install. The pointers keep libarchive's own prototypes. */
#define NS_AR_FUNCS(X)                                                                             \
  X(archive_read_new) X(archive_read_free) X(archive_read_next_header) X(archive_read_data)        \
  X(archive_read_open_memory) X(archive_read_open_filename) X(archive_read_support_format_zip)      \
  X(archive_read_support_format_tar) X(archive_read_support_filter_gzip) X(archive_errno)          \
  X(archive_error_string) X(archive_format) X(archive_write_new) X(archive_write_free)            \
  X(archive_write_header) X(archive_write_data) X(archive_write_close)                            \
  X(archive_write_finish_entry) X(archive_write_open_fd) X(archive_write_set_format_pax_restricted) \
  X(archive_write_set_bytes_in_last_block) X(archive_entry_new) X(archive_entry_free)             \
  X(archive_entry_size) X(archive_entry_size_is_set) X(archive_entry_pathname)                    \
  X(archive_entry_filetype) X(archive_entry_symlink) X(archive_entry_hardlink)                    \
  X(archive_entry_set_size) X(archive_entry_set_perm) X(archive_entry_set_pathname)               \
  X(archive_entry_set_mtime) X(archive_entry_set_filetype)

static struct {
#define NS_AR_PTR(f) __typeof__(f) *f;
  NS_AR_FUNCS(NS_AR_PTR)
#undef NS_AR_PTR
} ns_ar;
static pthread_once_t ns_ar_once = PTHREAD_ONCE_INIT;
static int ns_ar_ok;
static char ns_ar_why[160];

static void ns_ar_load(void) {
  void *h = dlopen("libarchive.so.13", RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    snprintf(ns_ar_why, sizeof(ns_ar_why),
             "offline bundles need libarchive.so.13 (Debian package libarchive13): %s", dlerror());
    return;
  }
#define NS_AR_SYM(f)                                                                               \
  if (!(*(void **)&ns_ar.f = dlsym(h, #f))) {                                                      \
    snprintf(ns_ar_why, sizeof(ns_ar_why), "libarchive.so.13 lacks %s (too old?)", #f);           \
    return;                                                                                        \
  }
  NS_AR_FUNCS(NS_AR_SYM)
#undef NS_AR_SYM
  ns_ar_ok = 1;
}

/* 1 when libarchive is usable; else detail says why. */
static int ar_ready(char *detail, size_t dlen) {
  pthread_once(&ns_ar_once, ns_ar_load);
  if (!ns_ar_ok && detail && dlen)
    snprintf(detail, dlen, "%s", ns_ar_why);
  return ns_ar_ok;
}

#define NS_AR_REDIRECT(f) ns_ar.f
#define archive_read_new NS_AR_REDIRECT(archive_read_new)
#define archive_read_free NS_AR_REDIRECT(archive_read_free)
#define archive_read_next_header NS_AR_REDIRECT(archive_read_next_header)
#define archive_read_data NS_AR_REDIRECT(archive_read_data)
#define archive_read_open_memory NS_AR_REDIRECT(archive_read_open_memory)
#define archive_read_open_filename NS_AR_REDIRECT(archive_read_open_filename)
#define archive_read_support_format_zip NS_AR_REDIRECT(archive_read_support_format_zip)
#define archive_read_support_format_tar NS_AR_REDIRECT(archive_read_support_format_tar)
#define archive_read_support_filter_gzip NS_AR_REDIRECT(archive_read_support_filter_gzip)
#define archive_errno NS_AR_REDIRECT(archive_errno)
#define archive_error_string NS_AR_REDIRECT(archive_error_string)
#define archive_format NS_AR_REDIRECT(archive_format)
#define archive_write_new NS_AR_REDIRECT(archive_write_new)
#define archive_write_free NS_AR_REDIRECT(archive_write_free)
#define archive_write_header NS_AR_REDIRECT(archive_write_header)
#define archive_write_data NS_AR_REDIRECT(archive_write_data)
#define archive_write_close NS_AR_REDIRECT(archive_write_close)
#define archive_write_finish_entry NS_AR_REDIRECT(archive_write_finish_entry)
#define archive_write_open_fd NS_AR_REDIRECT(archive_write_open_fd)
#define archive_write_set_format_pax_restricted NS_AR_REDIRECT(archive_write_set_format_pax_restricted)
#define archive_write_set_bytes_in_last_block NS_AR_REDIRECT(archive_write_set_bytes_in_last_block)
#define archive_entry_new NS_AR_REDIRECT(archive_entry_new)
#define archive_entry_free NS_AR_REDIRECT(archive_entry_free)
#define archive_entry_size NS_AR_REDIRECT(archive_entry_size)
#define archive_entry_size_is_set NS_AR_REDIRECT(archive_entry_size_is_set)
#define archive_entry_pathname NS_AR_REDIRECT(archive_entry_pathname)
#define archive_entry_filetype NS_AR_REDIRECT(archive_entry_filetype)
#define archive_entry_symlink NS_AR_REDIRECT(archive_entry_symlink)
#define archive_entry_hardlink NS_AR_REDIRECT(archive_entry_hardlink)
#define archive_entry_set_size NS_AR_REDIRECT(archive_entry_set_size)
#define archive_entry_set_perm NS_AR_REDIRECT(archive_entry_set_perm)
#define archive_entry_set_pathname NS_AR_REDIRECT(archive_entry_set_pathname)
#define archive_entry_set_mtime NS_AR_REDIRECT(archive_entry_set_mtime)
#define archive_entry_set_filetype NS_AR_REDIRECT(archive_entry_set_filetype)

/* Libarchive's read block for files. */
#define BUNDLE_BLOCK 65536
/* "manifest.json missing or not first": how far the reader looks for it
 * before giving up (entries, and declared bytes skipped). */
#define SCAN_MAX_ENTRIES 64
#define SCAN_MAX_BYTES ((int64_t)32 << 20)
#define HEX_LEN 64

typedef enum entry_kind {
  KIND_MANIFEST,
  KIND_SIG,
  KIND_BODIES_DIR,
  KIND_BODY
} entry_kind;

struct ns_pl_bundle {
  const ns_mem *mem;
  struct archive *a;
  uint8_t *manifest;
  size_t manifest_len;
  uint8_t *sig; /* NULL: none */
  size_t sig_len;
  struct archive_entry *pending; /* read by open, not handled yet */
  uint8_t *body;
  size_t body_cap;
  uint64_t index;        /* 1-based number of the last entry header read */
  int bodies_dir;        /* the "bodies/" directory entry was seen */
  netstash_error sticky; /* NETSTASH_OK while readable */
  char sticky_detail[256];
};

/* ------------------------------------------------------------ helpers */

/* A name as it may be printed: printable ASCII, at most 80 bytes. */
static const char *show(char out[96], const char *name) {
  size_t i, o = 0;
  for (i = 0; name[i] && o < 80; i++)
    out[o++] = (name[i] >= 0x20 && name[i] < 0x7f) ? name[i] : '?';
  if (name[i] && o == 80) {
    memcpy(out + o, "...", 3);
    o += 3;
  }
  out[o] = 0;
  return out;
}

/* errno values that mean the file could not be read (the rest of
 * libarchive's failures are about the archive's content). */
static int is_io_errno(int e) {
  switch (e) {
  case EIO:
  case EACCES:
  case EPERM:
  case ENOENT:
  case ENOTDIR:
  case EISDIR:
  case ELOOP:
  case ENAMETOOLONG:
  case ENXIO:
  case ENODEV:
  case EBADF:
  case EMFILE:
  case ENFILE:
  case ESTALE:
    return 1;
  default:
    return 0;
  }
}

/* A failed libarchive call: NETSTASH_E_NOMEM, _IO or _MANIFEST_INVALID. */
static netstash_error archive_fail(ns_pl_bundle *b, const char *what, char *detail,
                                   size_t detail_len) {
  int e = archive_errno(b->a);
  const char *msg = archive_error_string(b->a);
  if (!msg)
    msg = "unknown error";
  if (e == ENOMEM)
    return NETSTASH_E_NOMEM;
  if (is_io_errno(e)) {
    ns_detailf(detail, detail_len, "%s: %s", what, msg);
    return NETSTASH_E_IO;
  }
  ns_detailf(detail, detail_len,
             "%s: the archive is damaged or truncated (%s): copy or re-create the bundle", what,
             msg);
  return NETSTASH_E_MANIFEST_INVALID;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  return -1; /* uppercase refused: one spelling per body */
}

static void to_hex(const uint8_t *h, char out[HEX_LEN + 1]) {
  static const char digits[] = "0123456789abcdef";
  size_t i;
  for (i = 0; i < 32; i++) {
    out[2 * i] = digits[h[i] >> 4];
    out[2 * i + 1] = digits[h[i] & 15];
  }
  out[HEX_LEN] = 0;
}

/* Nonzero when name has a ".." component. */
static int has_dotdot(const char *name) {
  const char *p = name;
  while (*p) {
    const char *end = strchr(p, '/');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    if (len == 2 && p[0] == '.' && p[1] == '.')
      return 1;
    if (!end)
      break;
    p = end + 1;
  }
  return 0;
}

/* Works out what entry e is. hash receives a body's name as bytes. */
static netstash_error classify(ns_pl_bundle *b, struct archive_entry *e, entry_kind *kind,
                               uint8_t hash[32], const char **shown, char namebuf[96],
                               char *detail, size_t detail_len) {
  const char *name = archive_entry_pathname(e);
  char plain[256];
  size_t i, n;
  *shown = "";
  if (!name || !*name) {
    ns_detailf(detail, detail_len, "entry %llu has no name: re-create the bundle",
               (unsigned long long)b->index);
    return NETSTASH_E_MANIFEST_INVALID;
  }
  *shown = show(namebuf, name);
  if (name[0] == '/' || strchr(name, '\\') ||
      (((name[0] | 0x20) >= 'a' && (name[0] | 0x20) <= 'z') && name[1] == ':') ||
      has_dotdot(name)) {
    ns_detailf(detail, detail_len,
               "entry %llu \"%s\": unsafe name (absolute or with \"..\"): the bundle is refused",
               (unsigned long long)b->index, *shown);
    return NETSTASH_E_MANIFEST_INVALID;
  }
  while (name[0] == '.' && name[1] == '/')
    name += 2;
  /* libarchive ends directory names with '/': compare without it (the
   * type is checked afterwards) */
  n = strlen(name);
  while (n > 0 && name[n - 1] == '/')
    n--;
  if (n >= sizeof(plain)) {
    ns_detailf(detail, detail_len, "entry %llu \"%s\": unknown entry (name too long)",
               (unsigned long long)b->index, *shown);
    return NETSTASH_E_MANIFEST_INVALID;
  }
  memcpy(plain, name, n);
  plain[n] = 0;
  name = plain;
  if (!strcmp(name, NS_PL_BUNDLE_MANIFEST)) {
    *kind = KIND_MANIFEST;
    return NETSTASH_OK;
  }
  if (!strcmp(name, NS_PL_BUNDLE_SIG)) {
    *kind = KIND_SIG;
    return NETSTASH_OK;
  }
  if (!strcmp(name, "bodies")) {
    *kind = KIND_BODIES_DIR;
    return NETSTASH_OK;
  }
  n = sizeof(NS_PL_BUNDLE_BODIES) - 1;
  if (!strncmp(name, NS_PL_BUNDLE_BODIES, n)) {
    const char *hex = name + n;
    int ok = strlen(hex) == HEX_LEN;
    for (i = 0; ok && i < 32; i++) {
      int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
      if (hi < 0 || lo < 0)
        ok = 0;
      else
        hash[i] = (uint8_t)(hi << 4 | lo);
    }
    if (!ok) {
      ns_detailf(detail, detail_len,
                 "entry %llu \"%s\": a body must be named bodies/ and the 64 lowercase hex "
                 "digits of its SHA-256",
                 (unsigned long long)b->index, *shown);
      return NETSTASH_E_MANIFEST_INVALID;
    }
    *kind = KIND_BODY;
    return NETSTASH_OK;
  }
  ns_detailf(detail, detail_len,
             "entry %llu \"%s\": unknown entry (a bundle holds manifest.json, "
             "manifest.json.sig and bodies/<sha256 hex>)",
             (unsigned long long)b->index, *shown);
  return NETSTASH_E_MANIFEST_INVALID;
}

/* A regular file (not a link, device, directory). */
static netstash_error check_regular(ns_pl_bundle *b, struct archive_entry *e, const char *shown,
                                    char *detail, size_t detail_len) {
  const char *what = NULL;
  if (archive_entry_hardlink(e)) /* its type is its target's, or unset */
    what = "a hard link";
  else if (archive_entry_symlink(e))
    what = "a symbolic link";
  else
    switch (archive_entry_filetype(e)) {
    case AE_IFREG:
      break;
    case AE_IFLNK:
      what = "a symbolic link";
      break;
    case AE_IFDIR:
      what = "a directory";
      break;
    case AE_IFCHR:
    case AE_IFBLK:
    case AE_IFIFO:
    case AE_IFSOCK:
      what = "a device, FIFO or socket";
      break;
    default:
      what = "of an unknown type";
      break;
    }
  if (what) {
    ns_detailf(detail, detail_len,
               "entry %llu \"%s\" is %s, not a regular file: the bundle is refused",
               (unsigned long long)b->index, shown, what);
    return NETSTASH_E_MANIFEST_INVALID;
  }
  return NETSTASH_OK;
}

/* Reads the current entry's data into *buf (grown through b->mem; *cap is
 * its size), at most max bytes: too_large (with a detail) beyond. */
static netstash_error read_entry(ns_pl_bundle *b, struct archive_entry *e, const char *shown,
                                 size_t max, netstash_error too_large, uint8_t **buf, size_t *cap,
                                 size_t *len, char *detail, size_t detail_len) {
  size_t n = 0;
  *len = 0;
  if (archive_entry_size_is_set(e)) {
    int64_t sz = archive_entry_size(e);
    if (sz < 0 || (uint64_t)sz > max) {
      ns_detailf(detail, detail_len, "entry \"%s\": %lld bytes, over the limit of %zu", shown,
                 (long long)sz, max);
      return too_large;
    }
    /* One byte more than announced: the read that returns 0 needs room. */
    if ((size_t)sz + 1 > *cap) {
      uint8_t *nb = ns_realloc(b->mem, *buf, (size_t)sz + 1);
      if (!nb)
        return NETSTASH_E_NOMEM;
      *buf = nb;
      *cap = (size_t)sz + 1;
    }
  }
  for (;;) {
    la_ssize_t got;
    if (n == *cap) {
      size_t ncap = *cap ? *cap * 2 : 16384;
      uint8_t *nb;
      if (n > max) {
        ns_detailf(detail, detail_len, "entry \"%s\": over the limit of %zu bytes", shown, max);
        return too_large;
      }
      if (ncap < *cap || ncap > max + 1)
        ncap = max + 1;
      if (!(nb = ns_realloc(b->mem, *buf, ncap)))
        return NETSTASH_E_NOMEM;
      *buf = nb;
      *cap = ncap;
    }
    got = archive_read_data(b->a, *buf + n, *cap - n);
    if (got < 0) {
      char what[140];
      snprintf(what, sizeof(what), "entry \"%s\"", shown);
      return archive_fail(b, what, detail, detail_len);
    }
    if (got == 0)
      break;
    n += (size_t)got;
  }
  if (n > max) {
    ns_detailf(detail, detail_len, "entry \"%s\": over the limit of %zu bytes", shown, max);
    return too_large;
  }
  *len = n;
  return NETSTASH_OK;
}

/* The next entry header. NETSTASH_E_NOT_FOUND at the end. */
static netstash_error next_header(ns_pl_bundle *b, struct archive_entry **e, char *detail,
                                  size_t detail_len) {
  int r = archive_read_next_header(b->a, e);
  if (r == ARCHIVE_EOF)
    return NETSTASH_E_NOT_FOUND;
  if (r != ARCHIVE_OK && r != ARCHIVE_WARN) {
    char what[64];
    snprintf(what, sizeof(what), "after entry %llu", (unsigned long long)b->index);
    return archive_fail(b, what, detail, detail_len);
  }
  b->index++;
  return NETSTASH_OK;
}

/* The first entry is not manifest.json: look a little further to say
 * whether it is missing or misplaced. */
static netstash_error manifest_not_first(ns_pl_bundle *b, const char *first, char *detail,
                                         size_t detail_len) {
  struct archive_entry *e;
  int64_t skipped = 0;
  char scratch[256], namebuf[96];
  unsigned long long found = 0;
  snprintf(namebuf, sizeof(namebuf), "%s", first);
  while (b->index < SCAN_MAX_ENTRIES && skipped <= SCAN_MAX_BYTES) {
    const char *name;
    if (next_header(b, &e, scratch, sizeof(scratch)) != NETSTASH_OK)
      break;
    name = archive_entry_pathname(e);
    if (name) {
      while (name[0] == '.' && name[1] == '/')
        name += 2;
      if (!strcmp(name, NS_PL_BUNDLE_MANIFEST)) {
        found = (unsigned long long)b->index;
        break;
      }
    }
    if (archive_entry_size_is_set(e))
      skipped += archive_entry_size(e);
  }
  if (found)
    ns_detailf(detail, detail_len,
               "manifest.json is entry %llu, it must be the first (found \"%s\" first): "
               "re-create the bundle with netstash pack",
               found, namebuf);
  else
    ns_detailf(detail, detail_len,
               "manifest.json missing: the first entry is \"%s\" (a bundle starts with "
               "manifest.json)",
               namebuf);
  return NETSTASH_E_MANIFEST_INVALID;
}

/* ------------------------------------------------------------ reader */

static struct archive *reader_new(void) {
  struct archive *a = archive_read_new();
  if (!a)
    return NULL;
  if (archive_read_support_format_tar(a) != ARCHIVE_OK ||
      archive_read_support_format_zip(a) != ARCHIVE_OK ||
      archive_read_support_filter_gzip(a) != ARCHIVE_OK) {
    archive_read_free(a);
    return NULL;
  }
  return a;
}

static int sniff(struct archive *a) {
  struct archive_entry *e;
  int r = archive_read_next_header(a, &e);
  /* An empty archive (only end blocks) is still an archive. */
  return r == ARCHIVE_OK || r == ARCHIVE_WARN || (r == ARCHIVE_EOF && archive_format(a) != 0);
}

int ns_pl_bundle_sniff(const char *path) {
  struct archive *a;
  int yes = 0;
  if (!path || !ar_ready(NULL, 0) || !(a = reader_new()))
    return 0;
  if (archive_read_open_filename(a, path, BUNDLE_BLOCK) == ARCHIVE_OK)
    yes = sniff(a);
  archive_read_free(a);
  return yes;
}

int ns_pl_bundle_sniff_mem(const uint8_t *data, size_t len) {
  struct archive *a;
  int yes = 0;
  if (!data || !ar_ready(NULL, 0) || !(a = reader_new()))
    return 0;
  if (archive_read_open_memory(a, data, len) == ARCHIVE_OK)
    yes = sniff(a);
  archive_read_free(a);
  return yes;
}

/* Opening the archive or reading its first header failed (libarchive
 * detects the format while opening). */
static netstash_error not_a_bundle(ns_pl_bundle *b, char *detail, size_t detail_len) {
  const char *msg = archive_error_string(b->a);
  if (archive_errno(b->a) == ENOMEM)
    return NETSTASH_E_NOMEM;
  if (is_io_errno(archive_errno(b->a))) {
    ns_detailf(detail, detail_len, "%s", msg ? msg : "read error");
    return NETSTASH_E_IO;
  }
  ns_detailf(detail, detail_len, "not a bundle: not a tar, tar.gz or zip archive, or damaged (%s)",
             msg ? msg : "unknown error");
  return NETSTASH_E_MANIFEST_INVALID;
}

/* Reads manifest.json and manifest.json.sig (b->a is open). */
static netstash_error read_head(ns_pl_bundle *b, char *detail, size_t detail_len) {
  struct archive_entry *e;
  entry_kind kind;
  uint8_t hash[32];
  const char *shown;
  char namebuf[96];
  size_t cap = 0;
  netstash_error rv;
  int r = archive_read_next_header(b->a, &e);

  if (r == ARCHIVE_EOF) {
    ns_detailf(detail, detail_len, "the archive is empty: manifest.json missing");
    return NETSTASH_E_MANIFEST_INVALID;
  }
  if (r != ARCHIVE_OK && r != ARCHIVE_WARN)
    return not_a_bundle(b, detail, detail_len);
  b->index = 1;
  if ((rv = classify(b, e, &kind, hash, &shown, namebuf, detail, detail_len)) != NETSTASH_OK)
    return rv;
  if (kind != KIND_MANIFEST)
    return manifest_not_first(b, shown, detail, detail_len);
  if ((rv = check_regular(b, e, shown, detail, detail_len)) != NETSTASH_OK ||
      (rv = read_entry(b, e, shown, NS_MANIFEST_MAX_LEN, NETSTASH_E_MANIFEST_INVALID,
                       &b->manifest, &cap, &b->manifest_len, detail, detail_len)) != NETSTASH_OK)
    return rv;

  rv = next_header(b, &e, detail, detail_len);
  if (rv == NETSTASH_E_NOT_FOUND) { /* a manifest and no body: readable */
    b->sticky = NETSTASH_E_NOT_FOUND;
    return NETSTASH_OK;
  }
  if (rv != NETSTASH_OK)
    return rv;
  /* Anything but the signature is left to ns_pl_bundle_next_body (with
   * its errors: a bad body name is a body's problem). */
  if (classify(b, e, &kind, hash, &shown, namebuf, NULL, 0) != NETSTASH_OK || kind != KIND_SIG) {
    b->pending = e;
    return NETSTASH_OK;
  }
  cap = 0;
  if ((rv = check_regular(b, e, shown, detail, detail_len)) != NETSTASH_OK ||
      (rv = read_entry(b, e, shown, NS_SIG_MAX_LEN, NETSTASH_E_MANIFEST_INVALID, &b->sig, &cap,
                       &b->sig_len, detail, detail_len)) != NETSTASH_OK)
    return rv;
  return NETSTASH_OK;
}

static netstash_error bundle_open(const ns_mem *mem, const char *path, const uint8_t *data,
                                  size_t len, ns_pl_bundle **out, char *detail,
                                  size_t detail_len) {
  ns_pl_bundle *b;
  netstash_error rv;
  if (detail && detail_len)
    detail[0] = 0;
  if (!out)
    return NETSTASH_E_INVALID_ARGUMENT;
  *out = NULL;
  if (!mem)
    mem = ns_mem_default();
  if (!(b = ns_calloc(mem, 1, sizeof(*b))))
    return NETSTASH_E_NOMEM;
  b->mem = mem;
  if (!(b->a = reader_new())) {
    rv = NETSTASH_E_NOMEM;
    goto done;
  }
  if ((path ? archive_read_open_filename(b->a, path, BUNDLE_BLOCK)
            : archive_read_open_memory(b->a, data, len)) != ARCHIVE_OK) {
    rv = not_a_bundle(b, detail, detail_len);
    goto done;
  }
  rv = read_head(b, detail, detail_len);
done:
  if (rv != NETSTASH_OK)
    ns_pl_bundle_close(b);
  else
    *out = b;
  return rv;
}

netstash_error ns_pl_bundle_open(const ns_mem *mem, const char *path, ns_pl_bundle **out,
                                 char *detail, size_t detail_len) {
  if (!path) {
    if (out)
      *out = NULL;
    return NETSTASH_E_INVALID_ARGUMENT;
  }
  if (!ar_ready(detail, detail_len)) {
    if (out)
      *out = NULL;
    return NETSTASH_E_UNSUPPORTED;
  }
  return bundle_open(mem, path, NULL, 0, out, detail, detail_len);
}

netstash_error ns_pl_bundle_open_mem(const ns_mem *mem, const uint8_t *data, size_t len,
                                     ns_pl_bundle **out, char *detail, size_t detail_len) {
  static const uint8_t empty[1] = {0};
  if (!ar_ready(detail, detail_len)) {
    if (out)
      *out = NULL;
    return NETSTASH_E_UNSUPPORTED;
  }
  return bundle_open(mem, NULL, data ? data : empty, data ? len : 0, out, detail, detail_len);
}

const uint8_t *ns_pl_bundle_manifest(const ns_pl_bundle *b, size_t *len) {
  *len = b->manifest_len;
  return b->manifest ? b->manifest : (const uint8_t *)"";
}

const uint8_t *ns_pl_bundle_sig(const ns_pl_bundle *b, size_t *len) {
  *len = b->sig ? b->sig_len : 0;
  return b->sig;
}

/* Stops the bundle for good: later calls return rv with the same detail. */
static netstash_error stop(ns_pl_bundle *b, netstash_error rv, const char *detail) {
  b->sticky = rv;
  snprintf(b->sticky_detail, sizeof(b->sticky_detail), "%s", detail ? detail : "");
  return rv;
}

netstash_error ns_pl_bundle_next_body(ns_pl_bundle *b, uint64_t max_body, uint8_t hash[32],
                                      const uint8_t **data, size_t *len, char *detail,
                                      size_t detail_len) {
  char local[256];
  char *d = detail && detail_len ? detail : local;
  size_t dl = detail && detail_len ? detail_len : sizeof(local);
  size_t max = max_body >= SIZE_MAX ? SIZE_MAX - 1 : (size_t)max_body;
  netstash_error rv;

  d[0] = 0;
  *data = NULL;
  *len = 0;
  if (b->sticky != NETSTASH_OK) {
    if (b->sticky != NETSTASH_E_NOT_FOUND)
      ns_detailf(d, dl, "%s", b->sticky_detail);
    return b->sticky;
  }
  for (;;) {
    struct archive_entry *e = b->pending;
    entry_kind kind;
    const char *shown;
    char namebuf[96], hex[HEX_LEN + 1];
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    size_t n = 0;

    b->pending = NULL;
    if (!e) {
      rv = next_header(b, &e, d, dl);
      if (rv == NETSTASH_E_NOT_FOUND) {
        b->sticky = rv;
        return rv;
      }
      if (rv != NETSTASH_OK)
        return stop(b, rv, d);
    }
    if ((rv = classify(b, e, &kind, hash, &shown, namebuf, d, dl)) != NETSTASH_OK)
      return stop(b, rv, d);
    switch (kind) {
    case KIND_BODIES_DIR:
      if (archive_entry_filetype(e) != AE_IFDIR) {
        ns_detailf(d, dl, "entry %llu \"%s\" must be a directory", (unsigned long long)b->index,
                   shown);
        return stop(b, NETSTASH_E_MANIFEST_INVALID, d);
      }
      if (b->bodies_dir) { /* once: no endless run of empty entries */
        ns_detailf(d, dl, "entry %llu: a second \"%s\" directory", (unsigned long long)b->index,
                   shown);
        return stop(b, NETSTASH_E_MANIFEST_INVALID, d);
      }
      b->bodies_dir = 1;
      continue;
    case KIND_MANIFEST:
      ns_detailf(d, dl, "entry %llu: a second manifest.json", (unsigned long long)b->index);
      return stop(b, NETSTASH_E_MANIFEST_INVALID, d);
    case KIND_SIG:
      ns_detailf(d, dl, "entry %llu: manifest.json.sig must directly follow manifest.json",
                 (unsigned long long)b->index);
      return stop(b, NETSTASH_E_MANIFEST_INVALID, d);
    case KIND_BODY:
      break;
    }
    if ((rv = check_regular(b, e, shown, d, dl)) != NETSTASH_OK)
      return stop(b, rv, d);
    rv = read_entry(b, e, shown, max, NETSTASH_E_TOO_LARGE, &b->body, &b->body_cap, &n, d, dl);
    if (rv == NETSTASH_E_TOO_LARGE)
      return rv; /* this entry only: the next call reads the next one */
    if (rv != NETSTASH_OK)
      return stop(b, rv, d);
    if (!EVP_Digest(b->body ? b->body : (const uint8_t *)"", n, md, &mdlen, EVP_sha256(), NULL) ||
        mdlen != 32)
      return stop(b, NETSTASH_E_INTERNAL, "SHA-256 failed");
    if (memcmp(md, hash, 32) != 0) {
      to_hex(md, hex);
      ns_detailf(d, dl,
                 "entry \"%s\": the content's SHA-256 is %s: the bundle is damaged (copy it "
                 "again or re-create it with netstash pack)",
                 shown, hex);
      return NETSTASH_E_INTEGRITY; /* this entry only */
    }
    *data = b->body ? b->body : (const uint8_t *)"";
    *len = n;
    return NETSTASH_OK;
  }
}

void ns_pl_bundle_close(ns_pl_bundle *b) {
  if (!b)
    return;
  if (b->a)
    archive_read_free(b->a);
  ns_free(b->mem, b->manifest);
  ns_free(b->mem, b->sig);
  ns_free(b->mem, b->body);
  ns_free(b->mem, b);
}

/* ------------------------------------------------------------ writer */

/* Distinct body hashes of one version, at most this many bytes of them. */
#define PACK_HASHES_MAX ((size_t)64 << 20)

typedef struct packer {
  const ns_mem *mem;
  const char *id;
  ns_store_reader *r;
  struct archive *a;
  int fd;
  char *tmp;      /* path + ".tmp" */
  int created;    /* tmp created by us: removed on failure */
  ns_buf hashes;  /* 32 bytes each */
  netstash_error iter_err;
  int64_t mtime_s;
  EVP_MD_CTX *md;
  uint64_t written; /* bytes of the current body */
  ns_pl_pack_info info;
  char *detail;
  size_t detail_len;
} packer;

static int collect_hash(const uint8_t *key, size_t keylen, const ns_store_record *rec, void *ud) {
  packer *pk = ud;
  (void)key;
  (void)keylen;
  if (!rec->has_body)
    return 0;
  pk->iter_err = ns_buf_append(&pk->hashes, rec->body_hash, NS_STORE_HASH_LEN);
  return pk->iter_err != NETSTASH_OK;
}

static int cmp_hash(const void *a, const void *b) { return memcmp(a, b, NS_STORE_HASH_LEN); }

/* A failed archive_write_* call. */
static netstash_error write_fail(packer *pk) {
  int e = archive_errno(pk->a);
  const char *msg = archive_error_string(pk->a);
  if (e == ENOMEM)
    return NETSTASH_E_NOMEM;
  ns_detailf(pk->detail, pk->detail_len, "%s: %s", pk->tmp,
             msg ? msg : e > 0 ? strerror(e) : "write failed");
  return NETSTASH_E_IO;
}

/* Writes one entry header. */
static netstash_error put_header(packer *pk, const char *name, uint64_t size) {
  struct archive_entry *e = archive_entry_new();
  netstash_error rv = NETSTASH_OK;
  if (!e)
    return NETSTASH_E_NOMEM;
  archive_entry_set_pathname(e, name);
  archive_entry_set_filetype(e, AE_IFREG);
  archive_entry_set_perm(e, 0644);
  archive_entry_set_size(e, (la_int64_t)size);
  archive_entry_set_mtime(e, pk->mtime_s, 0);
  if (archive_write_header(pk->a, e) != ARCHIVE_OK)
    rv = write_fail(pk);
  archive_entry_free(e);
  return rv;
}

static netstash_error put_data(packer *pk, const uint8_t *data, size_t len) {
  while (len > 0) {
    la_ssize_t n = archive_write_data(pk->a, data, len);
    if (n <= 0)
      return write_fail(pk);
    data += n;
    len -= (size_t)n;
  }
  return NETSTASH_OK;
}

static netstash_error put_file(packer *pk, const char *name, const uint8_t *data, size_t len) {
  netstash_error rv = put_header(pk, name, len);
  if (rv == NETSTASH_OK)
    rv = put_data(pk, data, len);
  if (rv == NETSTASH_OK && archive_write_finish_entry(pk->a) != ARCHIVE_OK)
    rv = write_fail(pk);
  return rv;
}

/* ns_store_body_decode sink: hash and write the decoded bytes. */
static netstash_error body_sink(const uint8_t *data, size_t len, void *ud) {
  packer *pk = ud;
  if (!EVP_DigestUpdate(pk->md, data, len))
    return NETSTASH_E_INTERNAL;
  pk->written += len;
  return put_data(pk, data, len);
}

/* bodies/<hex>: the decoded body, checked against its key on the way. */
static netstash_error put_body(packer *pk, const uint8_t *hash) {
  char name[sizeof(NS_PL_BUNDLE_BODIES) + HEX_LEN], hex[HEX_LEN + 1];
  uint8_t md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  ns_store_body body;
  netstash_error rv;

  to_hex(hash, hex);
  snprintf(name, sizeof(name), "%s%s", NS_PL_BUNDLE_BODIES, hex);
  rv = ns_store_body_get(pk->r, hash, &body);
  if (rv == NETSTASH_E_NOT_FOUND) {
    ns_detailf(pk->detail, pk->detail_len,
               "body %s of \"%s\" is missing from the store: run netstash verify", hex, pk->id);
    return NETSTASH_E_STORE_CORRUPT;
  }
  if (rv != NETSTASH_OK)
    return rv;
  if ((rv = put_header(pk, name, body.decoded_size)) != NETSTASH_OK)
    return rv;
  pk->written = 0;
  if (!EVP_DigestInit_ex(pk->md, EVP_sha256(), NULL))
    return NETSTASH_E_INTERNAL;
  rv = ns_store_body_decode(&body, pk->mem, body.decoded_size, body_sink, pk);
  if (rv == NETSTASH_E_IO || rv == NETSTASH_E_NOMEM || rv == NETSTASH_E_INTERNAL)
    return rv;
  if (rv == NETSTASH_OK && !EVP_DigestFinal_ex(pk->md, md, &mdlen))
    return NETSTASH_E_INTERNAL;
  if (rv != NETSTASH_OK || pk->written != body.decoded_size || mdlen != 32 ||
      memcmp(md, hash, 32) != 0) {
    ns_detailf(pk->detail, pk->detail_len,
               "body %s of \"%s\" is damaged in the store (%s): run netstash verify", hex, pk->id,
               rv != NETSTASH_OK ? netstash_strerror(rv) : "SHA-256 differs");
    return NETSTASH_E_STORE_CORRUPT;
  }
  if (archive_write_finish_entry(pk->a) != ARCHIVE_OK)
    return write_fail(pk);
  pk->info.bodies++;
  pk->info.body_bytes += body.decoded_size;
  return NETSTASH_OK;
}

/* Everything between opening the reader and closing the archive. */
static netstash_error pack_version(packer *pk, ns_pl_state *st) {
  ns_store_record mrec, grec;
  ns_buf k;
  size_t i, n;
  netstash_error rv;

  ns_buf_init(&k, pk->mem, NS_STORE_KEY_MAX + 1);
  if ((rv = ns_pl_key_state(&k, pk->id)) != NETSTASH_OK)
    goto done;
  rv = ns_store_get(pk->r, NS_STORE_MANIFESTS, k.data, k.len, &mrec);
  if (rv == NETSTASH_E_NOT_FOUND) {
    ns_detailf(pk->detail, pk->detail_len,
               "no preload manifest \"%s\" in this profile", pk->id);
    goto done;
  }
  if (rv != NETSTASH_OK || (rv = ns_pl_state_decode(mrec.value, mrec.value_len, st)) != NETSTASH_OK)
    goto done;
  if (st->active == 0) {
    rv = NETSTASH_E_NOT_FOUND;
    ns_detailf(pk->detail, pk->detail_len,
               "manifest \"%s\" has no active version (nothing published yet: warm it first)",
               pk->id);
    goto done;
  }
  pk->info.version = st->active;
  pk->mtime_s = st->published_ms > 0 ? st->published_ms / 1000 : 0;
  if ((rv = ns_pl_key_version(&k, 'M', pk->id, st->active)) != NETSTASH_OK)
    goto done;
  rv = ns_store_get(pk->r, NS_STORE_MANIFESTS, k.data, k.len, &mrec);
  if (rv == NETSTASH_E_NOT_FOUND) {
    rv = NETSTASH_E_STORE_CORRUPT;
    ns_detailf(pk->detail, pk->detail_len,
               "the manifest of \"%s\" version %llu is missing from the store: run netstash "
               "verify",
               pk->id, (unsigned long long)st->active);
  }
  if (rv != NETSTASH_OK || (rv = ns_pl_key_version(&k, 'G', pk->id, st->active)) != NETSTASH_OK)
    goto done;
  rv = ns_store_get(pk->r, NS_STORE_MANIFESTS, k.data, k.len, &grec);
  if (rv == NETSTASH_E_NOT_FOUND) {
    grec.value = NULL;
    grec.value_len = 0;
    rv = NETSTASH_OK;
  }
  if (rv != NETSTASH_OK)
    goto done;

  /* every body of the version, each once */
  if ((rv = ns_pl_key_entry_prefix(&k, pk->id, st->active)) != NETSTASH_OK)
    goto done;
  pk->iter_err = NETSTASH_OK;
  rv = ns_store_iterate(pk->r, NS_STORE_PRELOAD, k.data, k.len, collect_hash, pk);
  if (rv == NETSTASH_OK)
    rv = pk->iter_err;
  if (rv != NETSTASH_OK)
    goto done;
  n = pk->hashes.len / NS_STORE_HASH_LEN;
  if (n > 1)
    qsort(pk->hashes.data, n, NS_STORE_HASH_LEN, cmp_hash);

  if ((rv = put_file(pk, NS_PL_BUNDLE_MANIFEST, mrec.value, mrec.value_len)) != NETSTASH_OK)
    goto done;
  pk->info.manifest_bytes = mrec.value_len;
  if (grec.value_len > 0 &&
      (rv = put_file(pk, NS_PL_BUNDLE_SIG, grec.value, grec.value_len)) != NETSTASH_OK)
    goto done;
  pk->info.signed_ = grec.value_len > 0;
  for (i = 0; i < n; i++) {
    const uint8_t *h = pk->hashes.data + i * NS_STORE_HASH_LEN;
    if (i > 0 && !memcmp(h, h - NS_STORE_HASH_LEN, NS_STORE_HASH_LEN))
      continue;
    if ((rv = put_body(pk, h)) != NETSTASH_OK)
      goto done;
  }
  if (archive_write_close(pk->a) != ARCHIVE_OK)
    rv = write_fail(pk);
done:
  ns_buf_free(&k);
  return rv;
}

netstash_error ns_pl_pack(ns_store *s, const ns_mem *mem, const char *id, const char *path,
                          ns_pl_pack_info *info, char *detail, size_t detail_len) {
  packer pk;
  ns_pl_state st;
  size_t plen;
  struct stat sb;
  netstash_error rv;

  if (detail && detail_len)
    detail[0] = 0;
  if (info)
    memset(info, 0, sizeof(*info));
  if (!ar_ready(detail, detail_len))
    return NETSTASH_E_UNSUPPORTED;
  if (!s || !id || !*id || !path || !*path)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (!mem)
    mem = ns_mem_default();
  memset(&pk, 0, sizeof(pk));
  pk.mem = mem;
  pk.id = id;
  pk.fd = -1;
  pk.detail = detail;
  pk.detail_len = detail_len;
  ns_buf_init(&pk.hashes, mem, PACK_HASHES_MAX);
  plen = strlen(path);
  if (!(pk.tmp = ns_malloc(mem, plen + 5)) || !(pk.md = EVP_MD_CTX_new())) {
    rv = NETSTASH_E_NOMEM;
    goto done;
  }
  memcpy(pk.tmp, path, plen);
  memcpy(pk.tmp + plen, ".tmp", 5);
  if ((rv = ns_store_reader_new(s, &pk.r)) != NETSTASH_OK ||
      (rv = ns_store_read_begin(pk.r)) != NETSTASH_OK)
    goto done;
  pk.fd = open(pk.tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (pk.fd < 0) {
    ns_detailf(detail, detail_len, "cannot create %s: %s", pk.tmp, strerror(errno));
    rv = NETSTASH_E_IO;
    goto done;
  }
  pk.created = 1;
  if (!(pk.a = archive_write_new())) {
    rv = NETSTASH_E_NOMEM;
    goto done;
  }
  /* POSIX pax, extended headers only where ustar cannot say it; the last
   * block not padded to 10 KiB */
  if (archive_write_set_format_pax_restricted(pk.a) != ARCHIVE_OK ||
      archive_write_set_bytes_in_last_block(pk.a, 1) != ARCHIVE_OK ||
      archive_write_open_fd(pk.a, pk.fd) != ARCHIVE_OK) {
    rv = write_fail(&pk);
    goto done;
  }
  if ((rv = pack_version(&pk, &st)) != NETSTASH_OK)
    goto done;
  if (fsync(pk.fd) != 0 || fstat(pk.fd, &sb) != 0) {
    ns_detailf(detail, detail_len, "%s: %s", pk.tmp, strerror(errno));
    rv = NETSTASH_E_IO;
    goto done;
  }
  pk.info.bytes = (uint64_t)sb.st_size;
  if (close(pk.fd) != 0) {
    pk.fd = -1;
    ns_detailf(detail, detail_len, "%s: %s", pk.tmp, strerror(errno));
    rv = NETSTASH_E_IO;
    goto done;
  }
  pk.fd = -1;
  if (rename(pk.tmp, path) != 0) {
    ns_detailf(detail, detail_len, "cannot rename %s to %s: %s", pk.tmp, path, strerror(errno));
    rv = NETSTASH_E_IO;
    goto done;
  }
  /* the rename itself reaches the disk with the directory */
  {
    const char *slash = strrchr(path, '/');
    char *dir = slash ? ns_strndup(mem, path, slash == path ? 1 : (size_t)(slash - path)) : NULL;
    int dfd = open(dir ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      (void)fsync(dfd);
      close(dfd);
    }
    ns_free(mem, dir);
  }
  if (info)
    *info = pk.info;
done:
  if (pk.a)
    archive_write_free(pk.a); /* closes nothing: the fd is ours */
  if (pk.fd >= 0)
    close(pk.fd);
  if (rv != NETSTASH_OK && pk.created)
    unlink(pk.tmp);
  ns_store_reader_del(pk.r);
  EVP_MD_CTX_free(pk.md);
  ns_free(mem, pk.tmp);
  ns_buf_free(&pk.hashes);
  return rv;
}

netstash_error netstash_preload_pack(netstash_ctx *ctx, const char *id, const char *path) {
  char detail[512];
  netstash_error rv;
  if (!ctx || !id || !path)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (!ctx->store) {
    NS_ERR(ctx, "preload",
           "netstash_preload_pack: the context has no profile directory, so no preload store "
           "(netstash_options_set_profile_dir)");
    return NETSTASH_E_ILLEGAL_STATE;
  }
  rv = ns_pl_pack(ctx->store, &ctx->mem, id, path, NULL, detail, sizeof(detail));
  if (rv != NETSTASH_OK)
    NS_ERR(ctx, "preload", "pack %s to %s: %s: %s", id, path, netstash_strerror(rv), detail);
  return rv;
}
