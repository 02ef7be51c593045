#include "ns_setup.h"

const char *netstash_strerror(netstash_error err) {
  switch (err) {
#define X(name, num, text)                                                     \
  case NETSTASH_##name:                                                        \
    return text;
    NETSTASH_ERROR_MAP(X)
#undef X
  case NETSTASH_ERROR_MAX_:
    break;
  }
  return "unknown error code";
}

const char *netstash_error_name(netstash_error err) {
  switch (err) {
#define X(name, num, text)                                                     \
  case NETSTASH_##name:                                                        \
    return "NETSTASH_" #name;
    NETSTASH_ERROR_MAP(X)
#undef X
  case NETSTASH_ERROR_MAX_:
    break;
  }
  return "NETSTASH_E_UNKNOWN";
}

netstash_error ns_error_by_name(const char *name, size_t len, netstash_error dflt) {
#define X(nm, num, text)                                                                           \
  if (len == sizeof("NETSTASH_" #nm) - 1 && memcmp(name, "NETSTASH_" #nm, len) == 0)               \
    return NETSTASH_##nm;
  NETSTASH_ERROR_MAP(X)
#undef X
  return dflt;
}

int netstash_error_is_network(netstash_error err) {
  return (int)err >= 100 && (int)err < 200;
}

const char *netstash_version(uint32_t *version_num, uint32_t *features) {
  if (version_num)
    *version_num = NETSTASH_VERSION_NUM;
  if (features)
    *features = NETSTASH_FEATURE_HTTP2 | NETSTASH_FEATURE_BROTLI | NETSTASH_FEATURE_GZIP |
                NETSTASH_FEATURE_ASYNC_DNS | NETSTASH_FEATURE_HSTS | NETSTASH_FEATURE_HTTP3 |
                NETSTASH_FEATURE_ZSTD;
  return PACKAGE_VERSION;
}
