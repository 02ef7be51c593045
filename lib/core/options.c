#include "ns_setup.h"

#include "core/ctx.h"

static void config_defaults(ns_config *c) {
  memset(c, 0, sizeof(*c));
  c->log_level = NETSTASH_LOG_WARN;
  c->tls_min = NETSTASH_TLS_1_3;
  c->dns_timeout_ms = 2000;
  c->dns_tries = 2;
  c->dns_cache_size = 1024;
  c->connect_timeout_ms = 10000;
  c->max_host_connections = 6;
  c->max_total_connections = 0;
  c->max_decoded_body = (uint64_t)256 << 20;
  c->hsts = 1;
  c->http3 = 1;
  c->h3_race_ms = 300;
  c->http_cache = 1;
  c->cache_partition = 1;
  c->cache_max_bytes = (uint64_t)256 << 20;
}

void ns_config_free(const ns_mem *m, ns_config *c) {
  ns_free(m, c->ca_file);
  ns_free(m, c->ca_dir);
  ns_free(m, c->dns_servers);
  ns_free(m, c->user_agent);
  ns_free(m, c->remote_socket);
  ns_free(m, c->profile_dir);
  ns_free(m, c->trusted_keys);
  ns_free(m, c->app_version);
  ns_free(m, c->kernel_version);
  ns_free(m, c->device_id);
  memset(c, 0, sizeof(*c));
}

netstash_error ns_config_copy(const ns_mem *m, ns_config *dst, const ns_config *src) {
  *dst = *src;
  dst->ca_file = dst->ca_dir = dst->dns_servers = dst->user_agent =
      dst->profile_dir = dst->trusted_keys = dst->app_version = dst->kernel_version =
          dst->device_id = dst->remote_socket = NULL;
  if ((src->ca_file && !(dst->ca_file = ns_strdup(m, src->ca_file))) ||
      (src->ca_dir && !(dst->ca_dir = ns_strdup(m, src->ca_dir))) ||
      (src->dns_servers && !(dst->dns_servers = ns_strdup(m, src->dns_servers))) ||
      (src->user_agent && !(dst->user_agent = ns_strdup(m, src->user_agent))) ||
      (src->profile_dir && !(dst->profile_dir = ns_strdup(m, src->profile_dir))) ||
      (src->trusted_keys && !(dst->trusted_keys = ns_strdup(m, src->trusted_keys))) ||
      (src->app_version && !(dst->app_version = ns_strdup(m, src->app_version))) ||
      (src->kernel_version && !(dst->kernel_version = ns_strdup(m, src->kernel_version))) ||
      (src->device_id && !(dst->device_id = ns_strdup(m, src->device_id))) ||
      (src->remote_socket && !(dst->remote_socket = ns_strdup(m, src->remote_socket)))) {
    ns_config_free(m, dst);
    return NETSTASH_E_NOMEM;
  }
  return NETSTASH_OK;
}

void ns_config_init_defaults(ns_config *c) { config_defaults(c); }

netstash_error netstash_options_new(netstash_options **out) {
  netstash_options *o;
  if (!out)
    return NETSTASH_E_INVALID_ARGUMENT;
  *out = NULL;
  o = ns_calloc(ns_mem_default(), 1, sizeof(*o));
  if (!o)
    return NETSTASH_E_NOMEM;
  o->mem = *ns_mem_default();
  config_defaults(&o->cfg);
  *out = o;
  return NETSTASH_OK;
}

void netstash_options_del(netstash_options *o) {
  if (!o)
    return;
  ns_config_free(ns_mem_default(), &o->cfg);
  ns_free(ns_mem_default(), o);
}

netstash_error netstash_options_set_allocator_versioned(netstash_options *o, int version,
                                                        const netstash_allocator *a) {
  if (!o || !a || version < NETSTASH_ALLOCATOR_V1)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (!a->malloc || !a->free || !a->calloc || !a->realloc)
    return NETSTASH_E_INVALID_ARGUMENT;
  /* V1 is the only layout so far; later versions convert here. */
  o->mem.user_data = a->user_data;
  o->mem.malloc = a->malloc;
  o->mem.free = a->free;
  o->mem.calloc = a->calloc;
  o->mem.realloc = a->realloc;
  return NETSTASH_OK;
}

netstash_error netstash_options_set_log(netstash_options *o, netstash_log_cb cb,
                                        netstash_log_level level, void *ud) {
  if (!o || level < NETSTASH_LOG_ERROR || level > NETSTASH_LOG_TRACE)
    return NETSTASH_E_INVALID_ARGUMENT;
  o->cfg.log_cb = cb;
  o->cfg.log_level = level;
  o->cfg.log_ud = ud;
  return NETSTASH_OK;
}

static netstash_error set_str(char **slot, const char *v) {
  char *c = NULL;
  if (v && !(c = ns_strdup(ns_mem_default(), v)))
    return NETSTASH_E_NOMEM;
  ns_free(ns_mem_default(), *slot);
  *slot = c;
  return NETSTASH_OK;
}

netstash_error netstash_options_set_ca_file(netstash_options *o, const char *path) {
  if (!o)
    return NETSTASH_E_INVALID_ARGUMENT;
  return set_str(&o->cfg.ca_file, path);
}

netstash_error netstash_options_set_ca_dir(netstash_options *o, const char *path) {
  if (!o)
    return NETSTASH_E_INVALID_ARGUMENT;
  return set_str(&o->cfg.ca_dir, path);
}

netstash_error netstash_options_set_tls_min_version(netstash_options *o,
                                                    netstash_tls_version v) {
  if (!o || (v != NETSTASH_TLS_1_2 && v != NETSTASH_TLS_1_3))
    return NETSTASH_E_INVALID_ARGUMENT;
  o->cfg.tls_min = v;
  return NETSTASH_OK;
}

netstash_error netstash_options_set_dns_servers(netstash_options *o, const char *csv) {
  if (!o)
    return NETSTASH_E_INVALID_ARGUMENT;
  return set_str(&o->cfg.dns_servers, csv && *csv ? csv : NULL);
}

netstash_error netstash_options_set_dns_timeout_ms(netstash_options *o, uint32_t ms) {
  if (!o || ms == 0)
    return NETSTASH_E_INVALID_ARGUMENT;
  o->cfg.dns_timeout_ms = ms;
  return NETSTASH_OK;
}

netstash_error netstash_options_set_dns_tries(netstash_options *o, uint32_t tries) {
  if (!o || tries == 0 || tries > 16)
    return NETSTASH_E_INVALID_ARGUMENT;
  o->cfg.dns_tries = tries;
  return NETSTASH_OK;
}

netstash_error netstash_options_set_dns_cache_size(netstash_options *o, uint32_t n) {
  if (!o)
    return NETSTASH_E_INVALID_ARGUMENT;
  o->cfg.dns_cache_size = n;
  return NETSTASH_OK;
}

netstash_error netstash_options_set_connect_timeout_ms(netstash_options *o, uint32_t ms) {
  if (!o || ms == 0)
    return NETSTASH_E_INVALID_ARGUMENT;
  o->cfg.connect_timeout_ms = ms;
  return NETSTASH_OK;
}

netstash_error netstash_options_set_max_host_connections(netstash_options *o, uint32_t n) {
  if (!o || n == 0)
    return NETSTASH_E_INVALID_ARGUMENT;
  o->cfg.max_host_connections = n;
  return NETSTASH_OK;
}

netstash_error netstash_options_set_max_total_connections(netstash_options *o,
                                                          uint32_t n) {
  if (!o)
    return NETSTASH_E_INVALID_ARGUMENT;
  o->cfg.max_total_connections = n;
  return NETSTASH_OK;
}

netstash_error netstash_options_set_max_decoded_body(netstash_options *o,
                                                     uint64_t bytes) {
  if (!o || bytes == 0)
    return NETSTASH_E_INVALID_ARGUMENT;
  o->cfg.max_decoded_body = bytes;
  return NETSTASH_OK;
}

netstash_error netstash_options_set_hsts(netstash_options *o, int enable) {
  if (!o)
    return NETSTASH_E_INVALID_ARGUMENT;
  o->cfg.hsts = enable ? 1 : 0;
  return NETSTASH_OK;
}

netstash_error netstash_options_set_http3(netstash_options *o, int enable) {
  if (!o)
    return NETSTASH_E_INVALID_ARGUMENT;
  o->cfg.http3 = enable ? 1 : 0;
  return NETSTASH_OK;
}

netstash_error netstash_options_set_remote(netstash_options *o, const char *socket_path) {
  if (!o)
    return NETSTASH_E_INVALID_ARGUMENT;
  return set_str(&o->cfg.remote_socket, socket_path);
}

netstash_error netstash_options_set_h3_race_ms(netstash_options *o, uint32_t ms) {
  if (!o || ms == 0 || ms > 60000)
    return NETSTASH_E_INVALID_ARGUMENT;
  o->cfg.h3_race_ms = ms;
  return NETSTASH_OK;
}

netstash_error netstash_options_set_user_agent(netstash_options *o, const char *ua) {
  if (!o)
    return NETSTASH_E_INVALID_ARGUMENT;
  return set_str(&o->cfg.user_agent, ua);
}

netstash_error netstash_options_set_profile_dir(netstash_options *o, const char *dir) {
  if (!o)
    return NETSTASH_E_INVALID_ARGUMENT;
  return set_str(&o->cfg.profile_dir, dir);
}

netstash_error netstash_options_set_http_cache(netstash_options *o, int enable) {
  if (!o)
    return NETSTASH_E_INVALID_ARGUMENT;
  o->cfg.http_cache = enable ? 1 : 0;
  return NETSTASH_OK;
}

netstash_error netstash_options_set_cache_partitioning(netstash_options *o, int enable) {
  if (!o)
    return NETSTASH_E_INVALID_ARGUMENT;
  o->cfg.cache_partition = enable ? 1 : 0;
  return NETSTASH_OK;
}

netstash_error netstash_options_set_cache_recompress(netstash_options *o, int enable) {
  if (!o)
    return NETSTASH_E_INVALID_ARGUMENT;
  o->cfg.cache_recompress = enable ? 1 : 0;
  return NETSTASH_OK;
}

netstash_error netstash_options_set_cache_max_bytes(netstash_options *o, uint64_t bytes) {
  if (!o || bytes < (1u << 20))
    return NETSTASH_E_INVALID_ARGUMENT;
  o->cfg.cache_max_bytes = bytes;
  return NETSTASH_OK;
}

/* ---------------------------------------------------------------- preload */

netstash_error netstash_options_add_trusted_key(netstash_options *o, const char *pubfile) {
  const ns_mem *m = ns_mem_default();
  size_t old, add;
  char *n;
  if (!o || !pubfile || !*pubfile || strchr(pubfile, '\n'))
    return NETSTASH_E_INVALID_ARGUMENT;
  old = o->cfg.trusted_keys ? strlen(o->cfg.trusted_keys) : 0;
  add = strlen(pubfile);
  n = ns_realloc(m, o->cfg.trusted_keys, old + add + 2);
  if (!n)
    return NETSTASH_E_NOMEM;
  if (old)
    n[old++] = '\n';
  memcpy(n + old, pubfile, add + 1);
  o->cfg.trusted_keys = n;
  return NETSTASH_OK;
}

netstash_error netstash_options_set_allow_unsigned(netstash_options *o, int allow) {
  if (!o)
    return NETSTASH_E_INVALID_ARGUMENT;
  o->cfg.allow_unsigned = allow ? 1 : 0;
  return NETSTASH_OK;
}

netstash_error netstash_options_set_app_version(netstash_options *o, const char *v) {
  return o ? set_str(&o->cfg.app_version, v) : NETSTASH_E_INVALID_ARGUMENT;
}

netstash_error netstash_options_set_kernel_version(netstash_options *o, const char *v) {
  return o ? set_str(&o->cfg.kernel_version, v) : NETSTASH_E_INVALID_ARGUMENT;
}

netstash_error netstash_options_set_device_id(netstash_options *o, const char *id) {
  return o ? set_str(&o->cfg.device_id, id) : NETSTASH_E_INVALID_ARGUMENT;
}
