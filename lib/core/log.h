#ifndef NS_CORE_LOG_H
#define NS_CORE_LOG_H

#include "core/ctx.h"

void ns_log(const netstash_ctx *ctx, netstash_log_level level, const char *module,
            const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#define ns_log_enabled(ctx, lvl) ((ctx)->cfg.log_cb && (lvl) <= (ctx)->cfg.log_level)
#define NS_LOG(ctx, lvl, mod, ...)                                             \
  do {                                                                         \
    if (ns_log_enabled(ctx, lvl))                                              \
      ns_log(ctx, lvl, mod, __VA_ARGS__);                                      \
  } while (0)
#define NS_ERR(ctx, mod, ...) NS_LOG(ctx, NETSTASH_LOG_ERROR, mod, __VA_ARGS__)
#define NS_WARN(ctx, mod, ...) NS_LOG(ctx, NETSTASH_LOG_WARN, mod, __VA_ARGS__)
#define NS_INFO(ctx, mod, ...) NS_LOG(ctx, NETSTASH_LOG_INFO, mod, __VA_ARGS__)
#define NS_DEBUG(ctx, mod, ...) NS_LOG(ctx, NETSTASH_LOG_DEBUG, mod, __VA_ARGS__)
#define NS_TRACE(ctx, mod, ...) NS_LOG(ctx, NETSTASH_LOG_TRACE, mod, __VA_ARGS__)

#endif
