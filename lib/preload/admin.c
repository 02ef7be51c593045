/*
 * admin.c — the preload cache for tools and operators
 * (include/netstash/preload.h, "Administration"): describe, show, rollback,
 * purge, verify, gc, stats.
 *
 * Reads take a snapshot through one reader; every change is one
 * ns_store_write transaction, and state changes go through
 * ns_pl_txn_put_state / ns_pl_txn_del_state so the serving index follows.
 * A read transaction is always ended before a write starts (store.h: map
 * growth waits for this process's readers). Results are JSON built with
 * jansson and handed out in memory of the context's allocator
 * (netstash_free).
 */
#include "ns_setup.h"

#include <stdio.h>
#include <time.h>

#include <jansson.h>

#include "core/buf.h"
#include "core/ctx.h"
#include "core/jsonout.h"
#include "core/headers.h"
#include "core/log.h"
#include "core/url.h"
#include "preload/install.h"

#define MOD "preload"
#define JSON_OUT_MAX ((size_t)256 << 20) /* a description, a verify report */
#define LIST_MAX ((size_t)64 << 20)      /* collected ids, keys, versions */
#define URL_MAX ((size_t)64 << 10)
#define GC_STEP 256

/* ------------------------------------------------------------ helpers */

static netstash_error need_store(netstash_ctx *ctx, const char *fn) {
  if (!ctx)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (!ctx->store) {
    NS_ERR(ctx, MOD,
           "%s: the context has no profile directory, so no preload store "
           "(netstash_options_set_profile_dir)",
           fn);
    return NETSTASH_E_ILLEGAL_STATE;
  }
  return NETSTASH_OK;
}

/* Manifest ids are 1..128 characters (manifest.c): a longer one names no
 * installed manifest (and would not fit a store key). */
static int id_fits(const char *id) {
  size_t n = strnlen(id, 129);
  return n >= 1 && n <= 128;
}

static int64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Sets o[k] = v (v consumed); *oom on any failure (a NULL v included). */
static void jset(json_t *o, const char *k, json_t *v, int *oom) {
  if (json_object_set_new(o, k, v) != 0)
    *oom = 1;
}

static void jappend(json_t *a, json_t *v, int *oom) {
  if (json_array_append_new(a, v) != 0)
    *oom = 1;
}

static json_t *ju64(uint64_t v) {
  return json_integer(v > (uint64_t)INT64_MAX ? INT64_MAX : (json_int_t)v);
}

/* RFC 3339 in UTC, seconds; null for 0 (none). */
static json_t *jtime(int64_t s) {
  struct tm tm;
  time_t t = (time_t)s;
  char buf[40];
  if (s == 0 || !gmtime_r(&t, &tm) || !strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm))
    return json_null();
  return json_string(buf);
}

static json_t *jhex(const uint8_t *d, size_t n) {
  static const char hx[] = "0123456789abcdef";
  char buf[2 * 64 + 1];
  size_t i;
  for (i = 0; i < n && i < 64; i++) {
    buf[2 * i] = hx[d[i] >> 4];
    buf[2 * i + 1] = hx[d[i] & 15];
  }
  buf[2 * i] = '\0';
  return json_string(buf);
}

static const char *prio_name(int p) {
  return p == NS_MANIFEST_PRIO_CRITICAL ? "critical" : p == NS_MANIFEST_PRIO_LOW ? "low" : "high";
}

/* Serialises o (consumed) into *out, allocated with the context's
 * allocator. oom: an earlier jset/jappend failed. */
static netstash_error hand_out(netstash_ctx *ctx, json_t *o, int oom, char **out) {
  netstash_error rv = !o || oom ? NETSTASH_E_NOMEM : ns_json_text(&ctx->mem, o, JSON_OUT_MAX, out);
  json_decref(o);
  return rv;
}

/* The serving state of a manifest, as listed by describe. */
static const char *state_name(const ns_pl_state *st, int64_t now_s) {
  if (st->flags & NS_PL_KILLED)
    return "killed";
  if (st->flags & NS_PL_NOT_TARGETED)
    return "not_targeted";
  if (st->flags & NS_PL_PINNED_MISSING)
    return "pinned_missing";
  if (!st->active)
    return "incomplete";
  if (st->expires_s && st->expires_s <= now_s)
    return "expired";
  return "active";
}

/* ------------------------------------------------------------ lists */

/* Strings, NUL-separated, in one buffer; walk with list_next. */
typedef struct strlist {
  ns_buf b;
  size_t last_at, last_len; /* the last one added (keys arrive sorted: dedupe) */
  netstash_error err;
} strlist;

static void strlist_init(strlist *l, const ns_mem *mem) {
  ns_buf_init(&l->b, mem, LIST_MAX);
  l->last_at = 0;
  l->last_len = (size_t)-1;
  l->err = NETSTASH_OK;
}

static int strlist_add(strlist *l, const void *s, size_t n) {
  if (l->last_len == n && memcmp(l->b.data + l->last_at, s, n) == 0)
    return 0;
  l->last_at = l->b.len;
  l->last_len = n;
  if ((l->err = ns_buf_append(&l->b, s, n)) != NETSTASH_OK ||
      (l->err = ns_buf_append(&l->b, "", 1)) != NETSTASH_OK)
    return 1;
  return 0;
}

static const char *strlist_next(const strlist *l, const char *prev) {
  const char *p = prev ? prev + strlen(prev) + 1 : (const char *)l->b.data;
  return p && p < (const char *)l->b.data + l->b.len ? p : NULL;
}

/* Iterator callback: the id of a manifests-db key TAG id [\0 ...] or a
 * preload-db key "R" id \0 .... */
static int id_cb(const uint8_t *key, size_t keylen, const ns_store_record *rec, void *ud) {
  const uint8_t *nul;
  size_t n;
  (void)rec;
  if (keylen < 2)
    return 0;
  nul = memchr(key + 1, 0, keylen - 1);
  n = nul ? (size_t)(nul - key - 1) : keylen - 1;
  return n ? strlist_add(ud, key + 1, n) : 0;
}

/* The ids of every "S" record (other_tags: also of "M" and "R" records, so
 * that leftovers of an id without a state are found too). */
static netstash_error list_ids(ns_store_reader *r, int other_tags, strlist *l) {
  netstash_error rv = ns_store_iterate(r, NS_STORE_MANIFESTS, "S", 1, id_cb, l);
  if (other_tags && rv == NETSTASH_OK && l->err == NETSTASH_OK)
    rv = ns_store_iterate(r, NS_STORE_MANIFESTS, "M", 1, id_cb, l);
  if (other_tags && rv == NETSTASH_OK && l->err == NETSTASH_OK)
    rv = ns_store_iterate(r, NS_STORE_PRELOAD, "R", 1, id_cb, l);
  return rv != NETSTASH_OK ? rv : l->err;
}

/* ------------------------------------------------------------ reading */

typedef struct rd {
  netstash_ctx *ctx;
  const ns_mem *mem;
  ns_store_reader *r;
  ns_buf k; /* key scratch */
  ns_buf u; /* URL scratch */
  int64_t now_s;
} rd;

static netstash_error rd_open(rd *a, netstash_ctx *ctx) {
  a->ctx = ctx;
  a->mem = &ctx->mem;
  a->now_s = wall_ms() / 1000;
  ns_buf_init(&a->k, a->mem, NS_STORE_KEY_MAX + 1);
  ns_buf_init(&a->u, a->mem, URL_MAX);
  return ns_store_reader_new(ctx->store, &a->r);
}

static void rd_close(rd *a) {
  ns_store_reader_del(a->r);
  ns_buf_free(&a->k);
  ns_buf_free(&a->u);
}

static netstash_error read_state(rd *a, const char *id, ns_pl_state *st) {
  ns_store_record rec;
  netstash_error rv = ns_pl_key_state(&a->k, id);
  if (rv == NETSTASH_OK)
    rv = ns_store_get(a->r, NS_STORE_MANIFESTS, a->k.data, a->k.len, &rec);
  if (rv == NETSTASH_OK)
    rv = ns_pl_state_decode(rec.value, rec.value_len, st);
  return rv;
}

/* The stored manifest of version v of id, parsed without expiry or version
 * checks. NETSTASH_E_NOT_FOUND, NETSTASH_E_STORE_CORRUPT (does not parse). */
static netstash_error read_manifest(rd *a, const char *id, uint64_t v, ns_manifest **m) {
  ns_manifest_check chk = {INT64_MIN, 0, 0};
  ns_store_record rec;
  netstash_error rv = ns_pl_key_version(&a->k, 'M', id, v);
  *m = NULL;
  if (rv == NETSTASH_OK)
    rv = ns_store_get(a->r, NS_STORE_MANIFESTS, a->k.data, a->k.len, &rec);
  if (rv == NETSTASH_OK) {
    rv = ns_manifest_parse(a->mem, rec.value, rec.value_len, &chk, m, NULL);
    if (rv != NETSTASH_OK && rv != NETSTASH_E_NOMEM) {
      NS_ERR(a->ctx, MOD, "the stored manifest of \"%s\" version %llu does not parse", id,
             (unsigned long long)v);
      rv = NETSTASH_E_STORE_CORRUPT;
    }
  }
  return rv;
}

/* The entry key of resource res of version v of id, into a->k. */
static netstash_error entry_key(rd *a, const char *id, uint64_t v,
                                const ns_manifest_resource *res) {
  netstash_error rv =
      ns_pl_strip_query(&a->u, res->url, strlen(res->url), res->query_ignore, res->n_query_ignore);
  return rv != NETSTASH_OK ? rv : ns_pl_key_entry(&a->k, id, v, ns_buf_str(&a->u), a->u.len);
}

/* The integrity string of resource i as written in the manifest. */
static const char *integrity_text(const ns_manifest *m, size_t i) {
  json_t *r = json_array_get(json_object_get((json_t *)m->root, "resources"), i);
  const char *s = json_string_value(json_object_get(r, "integrity"));
  return s ? s : "";
}

/* ------------------------------------------------------------ describe */

static netstash_error describe_one(rd *a, const char *id, int resources, json_t **out) {
  ns_pl_state st;
  ns_manifest *m = NULL;
  json_t *o = NULL, *scope = NULL, *entries = NULL;
  uint64_t shown, present = 0, bytes = 0;
  int oom = 0;
  netstash_error rv = read_state(a, id, &st);
  *out = NULL;
  if (rv != NETSTASH_OK)
    return rv;
  /* the figures describe the active version, else the one being warmed */
  shown = st.active ? st.active : st.staged;
  if (shown && (rv = read_manifest(a, id, shown, &m)) != NETSTASH_OK) {
    if (rv != NETSTASH_E_NOT_FOUND)
      return rv;
    NS_WARN(a->ctx, MOD, "\"%s\": the manifest of version %llu is missing", id,
            (unsigned long long)shown);
    rv = NETSTASH_OK;
  }
  if (!(o = json_object()) || !(scope = json_array()) || (resources && !(entries = json_array()))) {
    rv = NETSTASH_E_NOMEM;
    goto done;
  }
  if (m) {
    for (size_t i = 0; i < m->n_scope; i++)
      jappend(scope, json_string(m->scope[i]), &oom);
  } else {
    size_t it = 0, len;
    const char *s;
    while (ns_pl_state_scope(&st, &it, &s, &len))
      jappend(scope, json_stringn(s, len), &oom);
  }
  for (size_t i = 0; m && i < m->n_resources && !oom; i++) {
    const ns_manifest_resource *res = &m->resources[i];
    ns_store_record rec;
    int has;
    if ((rv = entry_key(a, id, shown, res)) != NETSTASH_OK)
      goto done;
    rv = ns_store_get(a->r, NS_STORE_PRELOAD, a->k.data, a->k.len, &rec);
    if (rv != NETSTASH_OK && rv != NETSTASH_E_NOT_FOUND)
      goto done;
    has = rv == NETSTASH_OK && rec.has_body;
    rv = NETSTASH_OK;
    if (has) {
      present++;
      bytes += res->size;
    }
    if (entries) {
      json_t *e = json_object();
      if (!e) {
        oom = 1;
        break;
      }
      jset(e, "url", json_string(res->url), &oom);
      jset(e, "size", ju64(res->size), &oom);
      jset(e, "priority", json_string(prio_name(res->priority)), &oom);
      jset(e, "present", json_boolean(has), &oom);
      jset(e, "integrity", json_string(integrity_text(m, i)), &oom);
      jappend(entries, e, &oom);
    }
  }
  jset(o, "id", json_string(id), &oom);
  jset(o, "state", json_string(state_name(&st, a->now_s)), &oom);
  jset(o, "version", ju64(st.active), &oom);
  jset(o, "previous", ju64(st.previous), &oom);
  jset(o, "max_version", ju64(st.max_version), &oom);
  jset(o, "staged", ju64(st.staged), &oom);
  jset(o, "expires", jtime(st.active ? st.expires_s : m ? m->expires_s : 0), &oom);
  jset(o, "published", jtime(st.active ? st.published_ms / 1000 : 0), &oom);
  jset(o, "scope", scope, &oom);
  scope = NULL;
  jset(o, "key_id", json_string(st.active ? st.key_id : ""), &oom);
  jset(o, "resources", ju64(m ? m->n_resources : 0), &oom);
  jset(o, "resources_present", ju64(present), &oom);
  jset(o, "bytes", ju64(bytes), &oom);
  if (entries) {
    jset(o, "entries", entries, &oom);
    entries = NULL;
  }
  if (oom) {
    rv = NETSTASH_E_NOMEM;
    goto done;
  }
  *out = o;
  o = NULL;
done:
  json_decref(entries);
  json_decref(scope);
  json_decref(o);
  ns_manifest_del(m);
  return rv;
}

netstash_error netstash_preload_describe(netstash_ctx *ctx, const char *id, int resources,
                                         char **json) {
  rd a;
  strlist ids;
  json_t *root = NULL, *list = NULL, *one = NULL;
  int oom = 0, begun = 0;
  netstash_error rv;
  if (json)
    *json = NULL;
  if (!json)
    return NETSTASH_E_INVALID_ARGUMENT;
  if ((rv = need_store(ctx, "netstash_preload_describe")) != NETSTASH_OK)
    return rv;
  strlist_init(&ids, &ctx->mem);
  if ((rv = rd_open(&a, ctx)) != NETSTASH_OK)
    goto done;
  if ((rv = ns_store_read_begin(a.r)) != NETSTASH_OK)
    goto done;
  begun = 1;
  if (id) {
    if (!id_fits(id)) {
      rv = NETSTASH_E_NOT_FOUND;
      goto done;
    }
    if ((rv = describe_one(&a, id, resources, &root)) != NETSTASH_OK)
      goto done;
  } else {
    if ((rv = list_ids(a.r, 0, &ids)) != NETSTASH_OK)
      goto done;
    if (!(root = json_object()) || !(list = json_array())) {
      rv = NETSTASH_E_NOMEM;
      goto done;
    }
    for (const char *p = strlist_next(&ids, NULL); p; p = strlist_next(&ids, p)) {
      rv = describe_one(&a, p, resources, &one);
      if (rv == NETSTASH_E_NOT_FOUND)
        continue;
      if (rv != NETSTASH_OK)
        goto done;
      jappend(list, one, &oom);
    }
    rv = NETSTASH_OK;
    jset(root, "manifests", list, &oom);
    list = NULL;
  }
  ns_store_read_end(a.r);
  begun = 0;
  rv = hand_out(ctx, root, oom, json);
  root = NULL;
done:
  if (begun)
    ns_store_read_end(a.r);
  json_decref(list);
  json_decref(root);
  rd_close(&a);
  ns_buf_free(&ids.b);
  return rv;
}

/* ------------------------------------------------------------ show */

/* url normalised as the manifests normalise theirs (manifest.c): curl_url's
 * form with a canonical authority, no fragment. Manifests list https URLs
 * only: anything else is NETSTASH_E_NOT_FOUND. */
static netstash_error normalise(const ns_mem *mem, const char *url, ns_buf *out) {
  ns_url u;
  netstash_error rv = ns_url_parse(mem, url, &u, NULL, 0);
  if (rv != NETSTASH_OK)
    return rv == NETSTASH_E_NOMEM ? rv : NETSTASH_E_BAD_URL;
  if (strcmp(u.scheme, "https") != 0 || ns_url_canonical_authority(u.url) != 0) {
    rv = NETSTASH_E_NOT_FOUND;
  } else {
    u.url[strcspn(u.url, "#")] = '\0';
    ns_buf_reset(out);
    rv = ns_buf_append_str(out, u.url);
  }
  ns_url_free(mem, &u);
  return rv;
}

netstash_error netstash_preload_show(netstash_ctx *ctx, const char *url, char **json) {
  rd a;
  ns_buf nurl;
  ns_pl_hit hit;
  ns_headers h;
  json_t *o = NULL, *hdrs = NULL;
  int oom = 0, begun = 0;
  netstash_error rv;
  if (json)
    *json = NULL;
  if (!json || !url)
    return NETSTASH_E_INVALID_ARGUMENT;
  if ((rv = need_store(ctx, "netstash_preload_show")) != NETSTASH_OK)
    return rv;
  ns_buf_init(&nurl, &ctx->mem, URL_MAX);
  ns_headers_init(&h, &ctx->mem);
  if ((rv = rd_open(&a, ctx)) != NETSTASH_OK)
    goto done;
  if ((rv = normalise(&ctx->mem, url, &nurl)) != NETSTASH_OK)
    goto done;
  if ((rv = ns_store_read_begin(a.r)) != NETSTASH_OK)
    goto done;
  begun = 1;
  rv = ns_pl_lookup(a.r, ns_buf_str(&nurl), nurl.len, a.now_s, &hit);
  if (rv != NETSTASH_OK)
    goto done;
  if (hit.entry.head_len &&
      (rv = ns_headers_decode(&h, hit.entry.head, hit.entry.head_len, NULL)) != NETSTASH_OK) {
    if (rv != NETSTASH_E_NOMEM)
      rv = NETSTASH_E_STORE_CORRUPT;
    goto done;
  }
  if (!(o = json_object()) || !(hdrs = json_object())) {
    rv = NETSTASH_E_NOMEM;
    goto done;
  }
  for (size_t i = 0; i < ns_headers_len(&h) && !oom; i++) {
    const ns_header_field *f = &h.f[i];
    json_t *prev = json_object_get(hdrs, f->name);
    if (prev) {
      /* RFC 9110 §5.3: repeated fields combine with ", " */
      ns_buf j;
      ns_buf_init(&j, &ctx->mem, NS_HEADERS_MAX_FIELD_LEN * 2);
      if (ns_buf_printf(&j, "%s, %s", json_string_value(prev), f->value) != NETSTASH_OK)
        oom = 1;
      else
        jset(hdrs, f->name, json_string(ns_buf_str(&j)), &oom);
      ns_buf_free(&j);
    } else {
      jset(hdrs, f->name, json_string(f->value), &oom);
    }
  }
  jset(o, "url", json_stringn(hit.entry.url, hit.entry.url_len), &oom);
  jset(o, "id", json_stringn(hit.id, hit.id_len), &oom);
  jset(o, "version", ju64(hit.version), &oom);
  jset(o, "size", ju64(hit.entry.size), &oom);
  jset(o, "status", json_integer(hit.entry.status), &oom);
  jset(o, "priority", json_string(prio_name(hit.entry.priority)), &oom);
  jset(o, "headers", hdrs, &oom);
  hdrs = NULL;
  jset(o, "sha256", jhex(hit.body.hash, NS_STORE_HASH_LEN), &oom);
  ns_store_read_end(a.r);
  begun = 0;
  rv = hand_out(ctx, o, oom, json);
  o = NULL;
done:
  if (begun)
    ns_store_read_end(a.r);
  json_decref(hdrs);
  json_decref(o);
  ns_headers_free(&h);
  rd_close(&a);
  ns_buf_free(&nurl);
  return rv;
}

/* ------------------------------------------------------------ rollback */

typedef struct rollback_job {
  const ns_mem *mem;
  const char *id;
  int64_t now_ms;
} rollback_job;

/* The signer's key id in a stored .sig (verified when it was installed);
 * "" for an unsigned version. */
static void sig_key_id(const uint8_t *sig, size_t len, char out[NS_KEY_ID_LEN + 1]) {
  json_t *j;
  const char *k;
  out[0] = '\0';
  if (!len || !(j = json_loadb((const char *)sig, len, 0, NULL)))
    return;
  k = json_string_value(json_object_get(j, "key_id"));
  if (k && strlen(k) == NS_KEY_ID_LEN)
    memcpy(out, k, NS_KEY_ID_LEN + 1);
  json_decref(j);
}

static netstash_error rollback_fn(ns_store_txn *t, void *ud) {
  rollback_job *j = ud;
  ns_pl_state st;
  ns_manifest *m = NULL;
  ns_store_record rec;
  ns_buf k;
  uint64_t v;
  netstash_error rv = ns_pl_txn_state(t, j->id, &st);
  if (rv != NETSTASH_OK)
    return rv;
  if (!st.previous)
    return NETSTASH_E_NOT_FOUND;
  v = st.previous;
  ns_buf_init(&k, j->mem, NS_STORE_KEY_MAX + 1);
  rv = ns_pl_txn_manifest(t, j->mem, j->id, v, &m);
  if (rv == NETSTASH_E_NOT_FOUND)
    rv = NETSTASH_E_STORE_CORRUPT; /* a previous version without its manifest */
  if (rv == NETSTASH_OK)
    rv = ns_pl_key_version(&k, 'G', j->id, v);
  if (rv == NETSTASH_OK) {
    if (ns_store_txn_get(t, NS_STORE_MANIFESTS, k.data, k.len, &rec) == NETSTASH_OK)
      sig_key_id(rec.value, rec.value_len, st.key_id);
    else
      st.key_id[0] = '\0';
    st.previous = st.active;
    st.active = v;
    st.published_ms = j->now_ms;
    rv = ns_pl_txn_put_state(t, j->mem, j->id, &st, m);
  }
  ns_manifest_del(m);
  ns_buf_free(&k);
  return rv;
}

netstash_error netstash_preload_rollback(netstash_ctx *ctx, const char *id) {
  rollback_job j;
  netstash_error rv;
  if (!id)
    return NETSTASH_E_INVALID_ARGUMENT;
  if ((rv = need_store(ctx, "netstash_preload_rollback")) != NETSTASH_OK)
    return rv;
  if (!id_fits(id))
    return NETSTASH_E_NOT_FOUND;
  j.mem = &ctx->mem;
  j.id = id;
  j.now_ms = wall_ms();
  rv = ns_store_write(ctx->store, rollback_fn, &j);
  if (rv == NETSTASH_E_NOT_FOUND)
    NS_WARN(ctx, MOD, "rollback: \"%s\" is not installed or has no previous version", id);
  return rv;
}

/* ------------------------------------------------------------ gc */

static netstash_error gc_all(ns_store *s, uint64_t *collected) {
  ns_store_stats before, after;
  netstash_error rv = ns_store_get_stats(s, &before);
  int more = 1;
  /* bounded: every step examines GC_STEP queued bodies; work queued by
   * concurrent writers meanwhile is left for the next run */
  uint64_t steps = before.gc_queued / GC_STEP + 2;
  while (rv == NETSTASH_OK && more && steps--)
    rv = ns_store_gc_step(s, GC_STEP, &more);
  if (rv == NETSTASH_OK)
    rv = ns_store_get_stats(s, &after);
  if (rv == NETSTASH_OK && collected)
    *collected = before.bodies > after.bodies ? before.bodies - after.bodies : 0;
  return rv;
}

netstash_error netstash_preload_gc(netstash_ctx *ctx, uint64_t *collected) {
  netstash_error rv;
  if (collected)
    *collected = 0;
  if ((rv = need_store(ctx, "netstash_preload_gc")) != NETSTASH_OK)
    return rv;
  return gc_all(ctx->store, collected);
}

/* ------------------------------------------------------------ purge */

typedef struct purge_job {
  const ns_mem *mem;
  const char *id;
  ns_buf versions; /* u64 each (host order) */
  ns_buf keys;     /* u16 length + key each ("H" aliases) */
  netstash_error err;
} purge_job;

static int version_cb(const uint8_t *key, size_t keylen, const ns_store_record *rec, void *ud) {
  purge_job *j = ud;
  size_t at = 1 + strlen(j->id) + 1; /* TAG id \0 be64(V) */
  uint64_t v = 0;
  (void)rec;
  if (keylen < at + 8)
    return 0;
  for (size_t i = 0; i < 8; i++)
    v = (v << 8) | key[at + i];
  if (j->versions.len >= 8 && !memcmp(j->versions.data + j->versions.len - 8, &v, 8))
    return 0; /* the entries of one version are contiguous */
  return (j->err = ns_buf_append(&j->versions, &v, 8)) != NETSTASH_OK;
}

/* Every version of id: those of its state and any other with records left
 * (an interrupted warm, a crash between writes). */
static netstash_error purge_fn(ns_store_txn *t, void *ud) {
  purge_job *j = ud;
  ns_pl_state st;
  ns_buf pfx;
  int has_state;
  netstash_error rv;
  ns_buf_reset(&j->versions);
  j->err = NETSTASH_OK;
  ns_buf_init(&pfx, j->mem, NS_STORE_KEY_MAX + 1);
  rv = ns_pl_txn_state(t, j->id, &st);
  if (rv != NETSTASH_OK && rv != NETSTASH_E_NOT_FOUND)
    goto done;
  has_state = rv == NETSTASH_OK;
  rv = NETSTASH_OK;
  if (has_state) {
    uint64_t v[3] = {st.active, st.previous, st.staged};
    for (size_t i = 0; i < 3 && rv == NETSTASH_OK; i++)
      if (v[i])
        rv = ns_buf_append(&j->versions, &v[i], 8);
  }
  for (int tag = 0; tag < 2 && rv == NETSTASH_OK; tag++) {
    ns_buf_reset(&pfx);
    if ((rv = ns_buf_append(&pfx, tag ? "R" : "M", 1)) != NETSTASH_OK ||
        (rv = ns_buf_append(&pfx, j->id, strlen(j->id) + 1)) != NETSTASH_OK)
      break;
    rv = ns_store_txn_iterate(t, tag ? NS_STORE_PRELOAD : NS_STORE_MANIFESTS, pfx.data, pfx.len,
                              version_cb, j);
    if (rv == NETSTASH_OK)
      rv = j->err;
  }
  if (rv != NETSTASH_OK)
    goto done;
  if (!has_state && !j->versions.len) {
    rv = NETSTASH_E_NOT_FOUND;
    goto done;
  }
  for (size_t i = 0; i + 8 <= j->versions.len && rv == NETSTASH_OK; i += 8) {
    uint64_t v;
    memcpy(&v, j->versions.data + i, 8);
    rv = ns_pl_txn_drop_version(t, j->mem, j->id, v); /* a version dropped twice: no-op */
  }
  if (rv == NETSTASH_OK && has_state)
    rv = ns_pl_txn_del_state(t, j->mem, j->id);
done:
  ns_buf_free(&pfx);
  return rv;
}

static int alias_cb(const uint8_t *key, size_t keylen, const ns_store_record *rec, void *ud) {
  purge_job *j = ud;
  uint8_t l[2] = {(uint8_t)keylen, (uint8_t)(keylen >> 8)};
  (void)rec;
  if ((j->err = ns_buf_append(&j->keys, l, 2)) != NETSTASH_OK ||
      (j->err = ns_buf_append(&j->keys, key, keylen)) != NETSTASH_OK)
    return 1;
  return 0;
}

/* With every manifest gone, the "H" digest aliases point at nothing useful. */
static netstash_error drop_aliases_fn(ns_store_txn *t, void *ud) {
  purge_job *j = ud;
  netstash_error rv;
  ns_buf_reset(&j->keys);
  j->err = NETSTASH_OK;
  rv = ns_store_txn_iterate(t, NS_STORE_MANIFESTS, "H", 1, alias_cb, j);
  if (rv == NETSTASH_OK)
    rv = j->err;
  for (size_t at = 0; rv == NETSTASH_OK && at + 2 <= j->keys.len;) {
    size_t kl = (size_t)j->keys.data[at] | ((size_t)j->keys.data[at + 1] << 8);
    rv = ns_store_txn_del(t, NS_STORE_MANIFESTS, j->keys.data + at + 2, kl);
    if (rv == NETSTASH_E_NOT_FOUND)
      rv = NETSTASH_OK;
    at += 2 + kl;
  }
  return rv;
}

netstash_error netstash_preload_purge(netstash_ctx *ctx, const char *id) {
  purge_job j;
  strlist ids;
  rd a;
  int opened = 0;
  netstash_error rv;
  if ((rv = need_store(ctx, "netstash_preload_purge")) != NETSTASH_OK)
    return rv;
  memset(&j, 0, sizeof(j));
  j.mem = &ctx->mem;
  ns_buf_init(&j.versions, j.mem, LIST_MAX);
  ns_buf_init(&j.keys, j.mem, LIST_MAX);
  strlist_init(&ids, &ctx->mem);
  if (id && !id_fits(id)) {
    rv = NETSTASH_E_NOT_FOUND;
  } else if (id) {
    j.id = id;
    rv = ns_store_write(ctx->store, purge_fn, &j);
    if (rv == NETSTASH_E_NOT_FOUND)
      NS_WARN(ctx, MOD, "purge: \"%s\" is not installed", id);
  } else {
    /* one transaction per manifest: each goes at once, none half */
    if ((rv = rd_open(&a, ctx)) != NETSTASH_OK)
      goto done;
    opened = 1;
    if ((rv = ns_store_read_begin(a.r)) != NETSTASH_OK)
      goto done;
    rv = list_ids(a.r, 1, &ids);
    ns_store_read_end(a.r);
    for (const char *p = strlist_next(&ids, NULL); p && rv == NETSTASH_OK;
         p = strlist_next(&ids, p)) {
      j.id = p;
      rv = ns_store_write(ctx->store, purge_fn, &j);
      if (rv == NETSTASH_E_NOT_FOUND) /* listed twice (state and records) */
        rv = NETSTASH_OK;
    }
    if (rv == NETSTASH_OK)
      rv = ns_store_write(ctx->store, drop_aliases_fn, &j);
  }
  if (rv == NETSTASH_OK) {
    /* the purge is done; what GC leaves now, later GC steps collect */
    netstash_error gc = gc_all(ctx->store, NULL);
    if (gc != NETSTASH_OK)
      NS_WARN(ctx, MOD, "purge: bodies not collected yet: %s", netstash_strerror(gc));
  }
done:
  if (opened)
    rd_close(&a);
  ns_buf_free(&ids.b);
  ns_buf_free(&j.versions);
  ns_buf_free(&j.keys);
  return rv;
}

/* ------------------------------------------------------------ verify */

typedef struct verify_job {
  rd *a;
  json_t *corrupt;
  ns_buf bad;    /* u16 length + entry key each: to unlink */
  uint8_t *body; /* decoded body scratch */
  size_t body_cap;
  uint64_t checked, bytes;
  int oom;
} verify_job;

static netstash_error report(verify_job *vj, const char *id, uint64_t v, const char *url,
                             const char *reason) {
  json_t *e = json_object();
  uint8_t l[2] = {(uint8_t)vj->a->k.len, (uint8_t)(vj->a->k.len >> 8)};
  netstash_error rv;
  if (!e)
    return NETSTASH_E_NOMEM;
  jset(e, "id", json_string(id), &vj->oom);
  jset(e, "version", ju64(v), &vj->oom);
  jset(e, "url", json_string(url), &vj->oom);
  jset(e, "reason", json_string(reason), &vj->oom);
  jappend(vj->corrupt, e, &vj->oom);
  NS_WARN(vj->a->ctx, MOD, "verify: \"%s\" version %llu: %s: %s (unlinked)", id,
          (unsigned long long)v, url, reason);
  if ((rv = ns_buf_append(&vj->bad, l, 2)) != NETSTASH_OK)
    return rv;
  rv = ns_buf_append(&vj->bad, vj->a->k.data, vj->a->k.len);
  return rv != NETSTASH_OK ? rv : vj->oom ? NETSTASH_E_NOMEM : NETSTASH_OK;
}

/* Re-hashes the held bodies of version v of id (a->k holds each entry's
 * key while it is examined). */
static netstash_error verify_version(verify_job *vj, const char *id, uint64_t v) {
  rd *a = vj->a;
  ns_manifest *m = NULL;
  char why[160];
  netstash_error rv = read_manifest(a, id, v, &m);
  if (rv == NETSTASH_E_NOT_FOUND) {
    NS_ERR(a->ctx, MOD, "verify: \"%s\": the manifest of version %llu is missing", id,
           (unsigned long long)v);
    return NETSTASH_E_STORE_CORRUPT;
  }
  for (size_t i = 0; rv == NETSTASH_OK && i < m->n_resources; i++) {
    const ns_manifest_resource *res = &m->resources[i];
    ns_store_record rec;
    ns_store_body b;
    ns_pl_entry en;
    size_t len = 0;
    if ((rv = entry_key(a, id, v, res)) != NETSTASH_OK)
      break;
    rv = ns_store_get_with_body(a->r, NS_STORE_PRELOAD, a->k.data, a->k.len, &rec, &b);
    if (rv == NETSTASH_E_NOT_FOUND &&
        ns_store_get(a->r, NS_STORE_PRELOAD, a->k.data, a->k.len, &rec) == NETSTASH_E_NOT_FOUND) {
      rv = NETSTASH_OK; /* not held: nothing to check */
      continue;
    }
    vj->checked++;
    if (rv != NETSTASH_OK) {
      snprintf(why, sizeof(why), "body unreadable: %s", netstash_strerror(rv));
      rv = report(vj, id, v, res->url, why);
      continue;
    }
    if (!rec.has_body) {
      rv = report(vj, id, v, res->url, "entry without a body");
      continue;
    }
    if (ns_pl_entry_decode(rec.value, rec.value_len, &en) != NETSTASH_OK) {
      rv = report(vj, id, v, res->url, "entry record malformed");
      continue;
    }
    if (b.decoded_size != res->size) {
      snprintf(why, sizeof(why), "body of %llu bytes, the manifest says %llu",
               (unsigned long long)b.decoded_size, (unsigned long long)res->size);
      rv = report(vj, id, v, res->url, why);
      continue;
    }
    if (b.decoded_size > SIZE_MAX / 2) {
      rv = report(vj, id, v, res->url, "body too large to check");
      continue;
    }
    if (vj->body_cap < b.decoded_size) {
      uint8_t *nb = ns_realloc(a->mem, vj->body, (size_t)b.decoded_size);
      if (!nb) {
        rv = NETSTASH_E_NOMEM;
        break;
      }
      vj->body = nb;
      vj->body_cap = (size_t)b.decoded_size;
    }
    rv = ns_store_body_copy(&b, a->mem, vj->body, vj->body_cap, &len);
    if (rv == NETSTASH_E_NOMEM)
      break;
    if (rv != NETSTASH_OK) {
      snprintf(why, sizeof(why), "body unreadable: %s", netstash_strerror(rv));
      rv = report(vj, id, v, res->url, why);
      continue;
    }
    vj->bytes += len;
    rv = ns_sri_check(res, vj->body, len, NULL);
    if (rv == NETSTASH_E_INTEGRITY)
      rv = report(vj, id, v, res->url, "does not match its integrity metadata");
  }
  ns_manifest_del(m);
  return rv;
}

static netstash_error unlink_fn(ns_store_txn *t, void *ud) {
  const ns_buf *bad = ud;
  netstash_error rv = NETSTASH_OK;
  for (size_t at = 0; rv == NETSTASH_OK && at + 2 <= bad->len;) {
    size_t kl = (size_t)bad->data[at] | ((size_t)bad->data[at + 1] << 8);
    rv = ns_store_txn_del(t, NS_STORE_PRELOAD, bad->data + at + 2, kl);
    if (rv == NETSTASH_E_NOT_FOUND)
      rv = NETSTASH_OK;
    at += 2 + kl;
  }
  return rv;
}

netstash_error netstash_preload_verify(netstash_ctx *ctx, char **json) {
  rd a;
  strlist ids;
  verify_job vj;
  json_t *o = NULL;
  char detail[256] = "", *text = NULL;
  int opened = 0;
  netstash_error rv;
  if (json)
    *json = NULL;
  if ((rv = need_store(ctx, "netstash_preload_verify")) != NETSTASH_OK)
    return rv;
  memset(&vj, 0, sizeof(vj));
  strlist_init(&ids, &ctx->mem);
  ns_buf_init(&vj.bad, &ctx->mem, LIST_MAX);
  rv = ns_store_verify(ctx->store, detail, sizeof(detail));
  if (rv != NETSTASH_OK) {
    NS_ERR(ctx, MOD, "verify: %s", *detail ? detail : netstash_strerror(rv));
    goto done;
  }
  if (!(vj.corrupt = json_array())) {
    rv = NETSTASH_E_NOMEM;
    goto done;
  }
  if ((rv = rd_open(&a, ctx)) != NETSTASH_OK)
    goto done;
  opened = 1;
  vj.a = &a;
  if ((rv = ns_store_read_begin(a.r)) != NETSTASH_OK)
    goto done;
  rv = list_ids(a.r, 0, &ids);
  ns_store_read_end(a.r);
  /* one snapshot per manifest: no read transaction lives for the whole walk */
  for (const char *p = strlist_next(&ids, NULL); p && rv == NETSTASH_OK;
       p = strlist_next(&ids, p)) {
    ns_pl_state st;
    if ((rv = ns_store_read_begin(a.r)) != NETSTASH_OK)
      break;
    rv = read_state(&a, p, &st);
    if (rv == NETSTASH_OK) {
      uint64_t v[3] = {st.active, st.previous, st.staged};
      for (size_t i = 0; i < 3 && rv == NETSTASH_OK; i++)
        if (v[i] && (i == 0 || v[i] != v[0]) && (i < 2 || v[i] != v[1]))
          rv = verify_version(&vj, p, v[i]);
    } else if (rv == NETSTASH_E_NOT_FOUND) {
      rv = NETSTASH_OK; /* purged meanwhile */
    }
    ns_store_read_end(a.r);
  }
  if (rv != NETSTASH_OK)
    goto done;
  /* the report first: once the entries are unlinked it must not be lost */
  if (json) {
    if (!(o = json_object())) {
      rv = NETSTASH_E_NOMEM;
      goto done;
    }
    jset(o, "checked", ju64(vj.checked), &vj.oom);
    jset(o, "bytes", ju64(vj.bytes), &vj.oom);
    jset(o, "corrupt", vj.corrupt, &vj.oom);
    vj.corrupt = NULL;
    if ((rv = hand_out(ctx, o, vj.oom, &text)) != NETSTASH_OK)
      goto done;
  }
  if (vj.bad.len && (rv = ns_store_write(ctx->store, unlink_fn, &vj.bad)) != NETSTASH_OK)
    goto done;
  if (json) {
    *json = text;
    text = NULL;
  }
  rv = vj.bad.len ? NETSTASH_E_INTEGRITY : NETSTASH_OK;
done:
  ns_free(&ctx->mem, text);
  if (opened)
    rd_close(&a);
  json_decref(vj.corrupt);
  ns_free(&ctx->mem, vj.body);
  ns_buf_free(&vj.bad);
  ns_buf_free(&ids.b);
  return rv;
}

/* ------------------------------------------------------------ stats */

typedef struct count_job {
  uint64_t resources, bytes;
} count_job;

static int count_cb(const uint8_t *key, size_t keylen, const ns_store_record *rec, void *ud) {
  count_job *c = ud;
  ns_pl_entry e;
  (void)key;
  (void)keylen;
  if (rec->has_body && ns_pl_entry_decode(rec->value, rec->value_len, &e) == NETSTASH_OK) {
    c->resources++;
    c->bytes += e.size;
  }
  return 0;
}

netstash_error netstash_preload_stats(netstash_ctx *ctx, char **json) {
  rd a;
  strlist ids;
  count_job c = {0, 0};
  ns_store_stats ss;
  uint64_t manifests = 0, active = 0;
  json_t *o = NULL, *store = NULL, *recs = NULL;
  int oom = 0, opened = 0, begun = 0;
  netstash_error rv;
  if (json)
    *json = NULL;
  if (!json)
    return NETSTASH_E_INVALID_ARGUMENT;
  if ((rv = need_store(ctx, "netstash_preload_stats")) != NETSTASH_OK)
    return rv;
  strlist_init(&ids, &ctx->mem);
  if ((rv = rd_open(&a, ctx)) != NETSTASH_OK)
    goto done;
  opened = 1;
  if ((rv = ns_store_read_begin(a.r)) != NETSTASH_OK)
    goto done;
  begun = 1;
  if ((rv = list_ids(a.r, 0, &ids)) != NETSTASH_OK)
    goto done;
  for (const char *p = strlist_next(&ids, NULL); p; p = strlist_next(&ids, p)) {
    ns_pl_state st;
    if ((rv = read_state(&a, p, &st)) != NETSTASH_OK)
      goto done;
    manifests++;
    if (strcmp(state_name(&st, a.now_s), "active") != 0)
      continue;
    active++;
    if ((rv = ns_pl_key_entry_prefix(&a.k, p, st.active)) != NETSTASH_OK ||
        (rv = ns_store_iterate(a.r, NS_STORE_PRELOAD, a.k.data, a.k.len, count_cb, &c)) !=
            NETSTASH_OK)
      goto done;
  }
  ns_store_read_end(a.r);
  begun = 0;
  if ((rv = ns_store_get_stats(ctx->store, &ss)) != NETSTASH_OK)
    goto done;
  if (!(o = json_object()) || !(store = json_object()) || !(recs = json_object())) {
    rv = NETSTASH_E_NOMEM;
    goto done;
  }
  jset(o, "manifests", ju64(manifests), &oom);
  jset(o, "active", ju64(active), &oom);
  jset(o, "resources", ju64(c.resources), &oom);
  jset(o, "bytes", ju64(c.bytes), &oom);
  jset(recs, "http", ju64(ss.records[NS_STORE_HTTP]), &oom);
  jset(recs, "preload", ju64(ss.records[NS_STORE_PRELOAD]), &oom);
  jset(recs, "manifests", ju64(ss.records[NS_STORE_MANIFESTS]), &oom);
  jset(recs, "cookies", ju64(ss.records[NS_STORE_COOKIES]), &oom);
  jset(store, "used_bytes", ju64(ss.used_bytes), &oom);
  jset(store, "limit_bytes", ju64(ss.size_limit), &oom);
  jset(store, "evicted", ju64(ss.evicted), &oom);
  jset(store, "map_size", ju64(ss.map_size), &oom);
  jset(store, "bodies", ju64(ss.bodies), &oom);
  jset(store, "gc_queued", ju64(ss.gc_queued), &oom);
  jset(store, "records", recs, &oom);
  recs = NULL;
  jset(o, "store", store, &oom);
  store = NULL;
  rv = hand_out(ctx, o, oom, json);
  o = NULL;
done:
  if (begun)
    ns_store_read_end(a.r);
  if (opened)
    rd_close(&a);
  json_decref(recs);
  json_decref(store);
  json_decref(o);
  ns_buf_free(&ids.b);
  return rv;
}
