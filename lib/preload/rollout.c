/*
 * rollout.c — evaluating a manifest's rollout rules on the device, offline:
 * version ranges, the stable percentage bucket (see install.h).
 *
 * Versions are dotted numbers of any length compared component by
 * component as numbers ("10" > "9", "4.2" == "4.2.0"); a missing component
 * counts as 0. Digits are compared as strings once leading zeros are gone,
 * so no component is too long to compare and nothing overflows. A version
 * with a component that is not a number ("4.2-beta", "4..2", "4.") satisfies
 * no comparator, and a range that does not parse matches nothing: a rollout
 * must never widen because its input is odd.
 */
#include "ns_setup.h"

#include <openssl/evp.h>

#include "core/buf.h"
#include "core/reader.h"
#include "preload/install.h"

/* Walks the dot-separated components of a version. */
typedef struct vwalk {
  ns_span s;
  size_t pos;
  int more; /* a component is still to come */
} vwalk;

static void vwalk_init(vwalk *w, ns_span s) {
  w->s = s;
  w->pos = 0;
  w->more = 1;
}

/* 1 and the next component's digits, 0 when the version has no more (*c is
 * then "0"), -1 when the component is not a number. */
static int vnext(vwalk *w, ns_span *c) {
  size_t start = w->pos;
  if (!w->more) {
    *c = ns_span_make("0", 1);
    return 0;
  }
  while (w->pos < w->s.len && ns_is_digit((unsigned char)w->s.p[w->pos]))
    w->pos++;
  if (w->pos == start)
    return -1; /* empty ("4..2", "4.", "") or not a digit */
  *c = ns_span_make(w->s.p + start, w->pos - start);
  if (w->pos == w->s.len)
    w->more = 0;
  else if (w->s.p[w->pos] == '.')
    w->pos++;
  else
    return -1; /* "2-beta", "2a" */
  return 1;
}

/* Compares two decimal digit strings as numbers. */
static int numcmp(ns_span a, ns_span b) {
  int c;
  while (a.len > 1 && a.p[0] == '0')
    a = ns_span_make(a.p + 1, a.len - 1);
  while (b.len > 1 && b.p[0] == '0')
    b = ns_span_make(b.p + 1, b.len - 1);
  if (a.len != b.len)
    return a.len < b.len ? -1 : 1;
  c = memcmp(a.p, b.p, a.len);
  return c < 0 ? -1 : c > 0;
}

/* *cmp = sign of (a - b). 0, or -1 when either is not a version. Every
 * component is checked, also past the first difference. */
static int vcmp(ns_span a, ns_span b, int *cmp) {
  vwalk wa, wb;
  *cmp = 0;
  vwalk_init(&wa, a);
  vwalk_init(&wb, b);
  for (;;) {
    ns_span ca, cb;
    int ra = vnext(&wa, &ca), rb = vnext(&wb, &cb);
    if (ra < 0 || rb < 0)
      return -1;
    if (ra == 0 && rb == 0)
      return 0;
    if (*cmp == 0)
      *cmp = numcmp(ca, cb);
  }
}

typedef enum vop { OP_EQ, OP_LT, OP_LE, OP_GT, OP_GE } vop;

int ns_rollout_version_in(const char *range, const char *version) {
  ns_reader r;
  ns_span v;
  int n = 0;
  if (!range || !version)
    return 0;
  v = ns_span_make(version, strlen(version));
  ns_reader_init(&r, range, strlen(range));
  for (;;) {
    vop op = OP_EQ;
    ns_span want;
    int cmp, ok;
    while (ns_reader_skip_char(&r, ' '))
      ;
    if (ns_reader_eof(&r))
      break;
    if (ns_reader_skip_char(&r, '>'))
      op = ns_reader_skip_char(&r, '=') ? OP_GE : OP_GT;
    else if (ns_reader_skip_char(&r, '<'))
      op = ns_reader_skip_char(&r, '=') ? OP_LE : OP_LT;
    else
      (void)ns_reader_skip_char(&r, '=');
    want.p = r.p + r.pos;
    while (!ns_reader_eof(&r) && ns_reader_peek(&r) != ' ')
      r.pos++;
    want.len = (size_t)(r.p + r.pos - want.p);
    if (vcmp(v, want, &cmp) != 0)
      return 0; /* malformed range or version: no match */
    switch (op) {
    case OP_LT:
      ok = cmp < 0;
      break;
    case OP_LE:
      ok = cmp <= 0;
      break;
    case OP_GT:
      ok = cmp > 0;
      break;
    case OP_GE:
      ok = cmp >= 0;
      break;
    default:
      ok = cmp == 0;
      break;
    }
    if (!ok)
      return 0;
    n++;
  }
  return n > 0; /* an empty range is malformed */
}

/* -1 when hashing fails (out of memory in OpenSSL): the caller treats the
 * device as outside any partial rollout. */
int ns_rollout_bucket(const char *device_id, const char *manifest_id) {
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  uint8_t d[EVP_MAX_MD_SIZE];
  unsigned int dlen = 0;
  int bucket = -1;
  if (!device_id)
    device_id = "";
  if (!manifest_id)
    manifest_id = "";
  if (md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1 &&
      EVP_DigestUpdate(md, device_id, strlen(device_id)) == 1 &&
      EVP_DigestUpdate(md, "\n", 1) == 1 &&
      EVP_DigestUpdate(md, manifest_id, strlen(manifest_id)) == 1 &&
      EVP_DigestFinal_ex(md, d, &dlen) == 1 && dlen == 32) {
    uint32_t v = (uint32_t)d[0] << 24 | (uint32_t)d[1] << 16 | (uint32_t)d[2] << 8 | d[3];
    bucket = (int)(v % 100u);
  }
  EVP_MD_CTX_free(md);
  return bucket;
}

/* The range rule named field ("app", "kernel") for version; 1 when it
 * holds. */
static int range_holds(const char *field, const char *range, const char *version, char *why,
                       size_t why_len) {
  if (!range || ns_rollout_version_in(range, version))
    return 1;
  if (version)
    ns_detailf(why, why_len, "rollout.%s_version \"%s\" excludes %s version %s", field, range,
               field, version);
  else
    ns_detailf(why, why_len,
               "rollout.%s_version \"%s\" excludes a device whose %s version is unknown", field,
               range, field);
  return 0;
}

int ns_rollout_applies(const ns_manifest_rollout *r, const char *manifest_id,
                       const ns_pl_device *dev, const char *device_id, char *why, size_t why_len) {
  int bucket;
  if (why && why_len)
    why[0] = '\0';
  if (!r)
    return 1;
  if (!device_id && dev)
    device_id = dev->device_id;
  if (!range_holds("app", r->app_version, dev ? dev->app_version : NULL, why, why_len) ||
      !range_holds("kernel", r->kernel_version, dev ? dev->kernel_version : NULL, why, why_len))
    return 0;
  if (r->percent >= 100)
    return 1;
  if (r->percent <= 0) {
    ns_detailf(why, why_len, "rollout.percent 0: no device is included");
    return 0;
  }
  if (!device_id) {
    ns_detailf(why, why_len, "rollout.percent %d: no device id to place the device", r->percent);
    return 0;
  }
  bucket = ns_rollout_bucket(device_id, manifest_id);
  if (bucket < 0) {
    ns_detailf(why, why_len, "rollout.percent %d: the device bucket could not be computed",
               r->percent);
    return 0;
  }
  if (bucket >= r->percent) {
    ns_detailf(why, why_len, "rollout.percent %d: device bucket %d", r->percent, bucket);
    return 0;
  }
  return 1;
}
