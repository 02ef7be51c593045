/* jsonout.c — see jsonout.h. */
#include "ns_setup.h"

#include "core/buf.h"
#include "core/jsonout.h"

typedef struct dump_ctx {
  ns_buf *b;
  netstash_error err;
} dump_ctx;

static int dump_cb(const char *buffer, size_t size, void *data) {
  dump_ctx *d = data;
  if (d->err == NETSTASH_OK) /* sticky: jansson may call again after a -1 */
    d->err = ns_buf_append(d->b, buffer, size);
  return d->err == NETSTASH_OK ? 0 : -1;
}

netstash_error ns_json_text(const ns_mem *mem, const json_t *o, size_t max, char **out) {
  ns_buf b;
  dump_ctx d = {&b, NETSTASH_OK};
  netstash_error rv = NETSTASH_E_NOMEM;
  *out = NULL;
  ns_buf_init(&b, mem, max);
  /* some jansson paths ignore the callback's -1: check the sticky error */
  if (o && (json_dump_callback(o, dump_cb, &d, JSON_COMPACT | JSON_PRESERVE_ORDER) != 0 ||
            d.err != NETSTASH_OK)) {
    rv = d.err != NETSTASH_OK ? d.err : NETSTASH_E_NOMEM;
  } else if (o) {
    *out = (char *)ns_buf_steal(&b, NULL); /* never empty: at least "{}" */
    rv = *out ? NETSTASH_OK : NETSTASH_E_NOMEM;
  }
  ns_buf_free(&b);
  return rv;
}
