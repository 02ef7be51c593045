#include "ns_setup.h"

#include <stdarg.h>
#include <stdio.h>

#include "core/log.h"

void ns_log(const netstash_ctx *ctx, netstash_log_level level, const char *module,
            const char *fmt, ...) {
  char msg[512];
  va_list ap;
  if (!ns_log_enabled(ctx, level))
    return;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  ctx->cfg.log_cb(level, module, msg, ctx->cfg.log_ud);
}
