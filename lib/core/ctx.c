#include "ns_setup.h"

#include <signal.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <ares.h>
#include <curl/curl.h>

#include "core/ctx.h"
#include "core/log.h"
#include "cache/httpcache.h"
#include "store/store.h"
#include "cookie/jar.h"
#include "dns/dns.h"
#include "transport/transport.h"

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static int global_rv;

static void global_init(void) {
  /* libcurl is built thread-safe here (curl -V: "threadsafe"); c-ares needs
   * no global state on Linux, but the call is kept for other platforms. */
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
    global_rv = -1;
  else if (ares_library_init(ARES_LIB_INIT_ALL) != ARES_SUCCESS)
    global_rv = -1;
}

uint64_t ns_now_us(void) { return uv_hrtime() / 1000; }

int ns_ctx_on_loop(const netstash_ctx *ctx) {
  uv_thread_t self = uv_thread_self();
  return atomic_load(&ctx->loop_running) &&
         uv_thread_equal(&self, &ctx->loop_tid);
}

static void run_queue(netstash_ctx *ctx);

/* Wakes the loop thread from another thread: one eventfd write per batch of
 * posts (wake_armed). Not uv_async_send: libuv 1.44's loop thread spins up to
 * 997 rounds on a handle whose sender is between its eventfd write and its
 * "done" mark, so on a busy or single CPU — the sender preempted by the very
 * thread it woke — each wake-up burned tens of microseconds (seen as 12 % of
 * netd's remote client in tools/bench/netd -c 1). Here the sender's only step
 * after the write is nothing. */
static void wake_loop(netstash_ctx *ctx) {
  static const uint64_t one = 1;
  ssize_t w;
  if (atomic_exchange(&ctx->wake_armed, 1))
    return; /* written and not yet read: that wake-up runs our task too */
  do
    w = write(ctx->wake_fd, &one, sizeof(one));
  while (w < 0 && errno == EINTR);
  /* EAGAIN: the counter is full, i.e. a wake-up is pending anyway */
}

static void on_kick(uv_idle_t *h) {
  uv_idle_stop(h);
  run_queue(h->data);
}

netstash_error ns_ctx_post(netstash_ctx *ctx, ns_task *task) {
  netstash_error rv = NETSTASH_OK;
  uv_mutex_lock(&ctx->qlock);
  if (ctx->stopping) {
    rv = NETSTASH_E_SHUTDOWN;
  } else if (!task->queued) {
    task->queued = 1;
    ns_list_insert_tail(&ctx->queue, &task->node);
  }
  uv_mutex_unlock(&ctx->qlock);
  if (rv == NETSTASH_OK) {
    /* from the loop thread (netd's fronts, callbacks starting the next
     * request) the queue runs in this loop turn's idle phase: no eventfd
     * write and read for a wake-up we would deliver to ourselves */
    if (ns_ctx_on_loop(ctx))
      uv_idle_start(&ctx->kick, on_kick);
    else
      wake_loop(ctx);
  }
  return rv;
}

void ns_ctx_unpost(netstash_ctx *ctx, ns_task *task) {
  uv_mutex_lock(&ctx->qlock);
  if (task->queued) {
    task->queued = 0;
    ns_list_remove(&task->node);
  }
  uv_mutex_unlock(&ctx->qlock);
}

static void run_queue(netstash_ctx *ctx) {
  ns_list batch;
  ns_list_init(&batch);
  uv_mutex_lock(&ctx->qlock);
  ns_list_splice_tail(&batch, &ctx->queue);
  /* Tasks run in posting order. A task stays "queued" until it is taken off
   * the batch (under the lock): posted again meanwhile from another thread,
   * it runs once, as posted; unposted, it does not run. (Marked unqueued
   * while still linked in the batch, a post from another thread in that
   * window — the HTTP cache writer's notify, say — would link the node into
   * the queue too and break both lists.) A task that frees the object
   * another task of this batch is embedded in must not happen: objects free
   * themselves only from their own last task (fetches keep a reference per
   * queued task). */
  while (!ns_list_empty(&batch)) {
    ns_task *t = ns_list_entry(batch.next, ns_task, node);
    ns_list_remove(&t->node);
    t->queued = 0;
    uv_mutex_unlock(&ctx->qlock);
    t->run(ctx, t);
    uv_mutex_lock(&ctx->qlock);
  }
  uv_mutex_unlock(&ctx->qlock);
}

void ns_ctx_run_posted(netstash_ctx *ctx) {
  int empty;
  if (!ns_ctx_on_loop(ctx))
    return;
  run_queue(ctx);
  /* the idle kick the posts started has nothing left to run: without this
   * the loop would turn once more with a zero poll timeout for an empty
   * queue (posts from other threads wake it through the eventfd) */
  uv_mutex_lock(&ctx->qlock);
  empty = ns_list_empty(&ctx->queue);
  uv_mutex_unlock(&ctx->qlock);
  if (empty)
    uv_idle_stop(&ctx->kick);
}

static void on_wake(uv_poll_t *h, int status, int events) {
  netstash_ctx *ctx = h->data;
  uint64_t v;
  int stopping;
  (void)status;
  (void)events;
  while (read(ctx->wake_fd, &v, sizeof(v)) < 0 && errno == EINTR)
    ;
  /* disarmed before the queue is taken: a post from now on writes again
   * (at worst one spurious wake-up), one from before is in the batch */
  atomic_store(&ctx->wake_armed, 0);
  run_queue(ctx);
  uv_mutex_lock(&ctx->qlock);
  stopping = ctx->stopping;
  uv_mutex_unlock(&ctx->qlock);
  if (stopping) {
    run_queue(ctx);
    ns_dns_shutdown(ctx->dns);
    ns_transport_shutdown(ctx->transport);
    uv_close((uv_handle_t *)&ctx->kick, NULL);
    uv_close((uv_handle_t *)&ctx->wake, NULL);
  }
}

static void loop_main(void *arg) {
  netstash_ctx *ctx = arg;
  sigset_t pipe_set;
  /* A write to a peer that went away (netd restarting, a proxy client
   * leaving) must be an EPIPE error on this thread, never a SIGPIPE that
   * kills the embedding process: the library owns this thread, so it blocks
   * the signal here instead of touching the process's disposition. */
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_set, NULL);
  ctx->loop_tid = uv_thread_self();
  atomic_store(&ctx->loop_running, 1);
  uv_run(&ctx->loop, UV_RUN_DEFAULT);
  atomic_store(&ctx->loop_running, 0);
}

static void set_detail(char *detail, size_t len, const char *msg) {
  if (detail && len)
    snprintf(detail, len, "%s", msg);
}

netstash_error netstash_ctx_new(netstash_ctx **out, const netstash_options *opts,
                                char *detail, size_t detail_len) {
  netstash_ctx *ctx = NULL;
  ns_config defaults;
  const ns_mem *mem = opts ? &opts->mem : ns_mem_default();
  netstash_error rv;
  int loop_ok = 0, async_ok = 0, kick_ok = 0, mutex_ok = 0, cookie_lock_ok = 0;

  if (!out)
    return NETSTASH_E_INVALID_ARGUMENT;
  *out = NULL;
  set_detail(detail, detail_len, "");
  pthread_once(&global_once, global_init);
  if (global_rv != 0) {
    set_detail(detail, detail_len, "libcurl or c-ares global initialisation failed");
    return NETSTASH_E_INTERNAL;
  }

  ctx = ns_calloc(mem, 1, sizeof(*ctx));
  if (!ctx)
    return NETSTASH_E_NOMEM;
  ctx->wake_fd = -1;
  ctx->mem = *mem;
  ns_config_init_defaults(&defaults);
  rv = ns_config_copy(&ctx->mem, &ctx->cfg, opts ? &opts->cfg : &defaults);
  if (rv != NETSTASH_OK)
    goto fail;

  rv = NETSTASH_E_INTERNAL;
  if (uv_loop_init(&ctx->loop) != 0) {
    set_detail(detail, detail_len, "uv_loop_init failed");
    goto fail;
  }
  loop_ok = 1;
  if (uv_mutex_init(&ctx->qlock) != 0)
    goto fail;
  mutex_ok = 1;
  ns_list_init(&ctx->queue);
  ctx->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (ctx->wake_fd < 0) {
    set_detail(detail, detail_len, "eventfd failed");
    goto fail;
  }
  if (uv_poll_init(&ctx->loop, &ctx->wake, ctx->wake_fd) != 0)
    goto fail;
  ctx->wake.data = ctx;
  async_ok = 1;
  if (uv_poll_start(&ctx->wake, UV_READABLE, on_wake) != 0)
    goto fail;
  if (uv_idle_init(&ctx->loop, &ctx->kick) != 0)
    goto fail;
  ctx->kick.data = ctx;
  kick_ok = 1;

  rv = ns_dns_new(ctx, &ctx->dns, detail, detail_len);
  if (rv != NETSTASH_OK)
    goto fail;
  rv = ns_transport_new(ctx, &ctx->transport, detail, detail_len);
  if (rv != NETSTASH_OK)
    goto fail;
  if (ctx->cfg.profile_dir) {
    ns_store_params sp;
    ns_store_params_init(&sp);
    sp.mem = &ctx->mem;
    sp.dir = ctx->cfg.profile_dir;
    sp.created_by = "netstash " PACKAGE_VERSION;
    sp.size_limit = ctx->cfg.cache_max_bytes;
    rv = ns_store_open(&sp, &ctx->store, detail, detail_len);
    if (rv != NETSTASH_OK)
      goto fail;
  }
  ns_list_init(&ctx->cookie_hooks);
  rv = ns_cookie_jars_new(&ctx->mem, ctx->store, &ctx->cookies);
  if (rv != NETSTASH_OK)
    goto fail;
  if (uv_mutex_init(&ctx->cookie_lock) != 0) {
    rv = NETSTASH_E_INTERNAL;
    goto fail;
  }
  cookie_lock_ok = 1;
  if (ctx->store && ctx->cfg.http_cache) {
    ns_hc_config hcc;
    memset(&hcc, 0, sizeof(hcc));
    hcc.store = ctx->store;
    hcc.partition = ctx->cfg.cache_partition;
    hcc.recompress = ctx->cfg.cache_recompress;
    rv = ns_httpcache_open(&ctx->mem, &hcc, &ctx->hc, detail, detail_len);
    if (rv != NETSTASH_OK)
      goto fail;
    /* responses stored during one loop turn commit together, on a writer
     * thread of the cache's own (transport.c hc_settle); without one, on
     * the loop thread */
    if (ns_httpcache_set_writer(ctx->hc, ns_transport_hc_notify, ctx) != NETSTASH_OK)
      ns_httpcache_set_deferred(ctx->hc, 1);
  }

  if (uv_thread_create(&ctx->thread, loop_main, ctx) != 0) {
    set_detail(detail, detail_len, "could not start the loop thread");
    rv = NETSTASH_E_INTERNAL;
    goto fail;
  }
  *out = ctx;
  return NETSTASH_OK;

fail:
  if (ctx->transport) {
    ns_transport_shutdown(ctx->transport);
  }
  if (ctx->dns)
    ns_dns_shutdown(ctx->dns);
  if (async_ok)
    uv_close((uv_handle_t *)&ctx->wake, NULL);
  if (kick_ok)
    uv_close((uv_handle_t *)&ctx->kick, NULL);
  if (loop_ok) {
    uv_run(&ctx->loop, UV_RUN_DEFAULT); /* run close callbacks */
    uv_loop_close(&ctx->loop);
  }
  if (ctx->wake_fd >= 0)
    close(ctx->wake_fd);
  ns_transport_del(ctx->transport);
  ns_dns_del(ctx->dns);
  ns_httpcache_close(ctx->hc);
  ns_cookie_jars_del(ctx->cookies);
  if (ctx->cookie_hooks.next)
    ns_cookie_hooks_free(ctx);
  ns_store_close(ctx->store);
  if (cookie_lock_ok)
    uv_mutex_destroy(&ctx->cookie_lock);
  if (mutex_ok)
    uv_mutex_destroy(&ctx->qlock);
  ns_config_free(&ctx->mem, &ctx->cfg);
  ns_free(mem, ctx);
  return rv;
}

void netstash_ctx_del(netstash_ctx *ctx) {
  ns_mem mem;
  if (!ctx)
    return;
  if (ns_ctx_on_loop(ctx))
    return; /* documented misuse; refusing beats deadlocking */
  uv_mutex_lock(&ctx->qlock);
  ctx->stopping = 1;
  uv_mutex_unlock(&ctx->qlock);
  atomic_store(&ctx->wake_armed, 0); /* this wake-up must be written */
  wake_loop(ctx);
  uv_thread_join(&ctx->thread);
  close(ctx->wake_fd);

  ns_transport_del(ctx->transport);
  ns_dns_del(ctx->dns);
  ns_httpcache_close(ctx->hc);
  ns_cookie_jars_del(ctx->cookies);
  ns_cookie_hooks_free(ctx);
  ns_store_close(ctx->store);
  uv_mutex_destroy(&ctx->cookie_lock);
  uv_loop_close(&ctx->loop);
  uv_mutex_destroy(&ctx->qlock);
  ns_config_free(&ctx->mem, &ctx->cfg);
  mem = ctx->mem;
  ns_free(&mem, ctx);
}

uint64_t netstash_ctx_stat(netstash_ctx *ctx, netstash_stat which) {
  if (!ctx || (unsigned)which >= NS_ARRAY_LEN(ctx->stats))
    return 0;
  return atomic_load_explicit(&ctx->stats[which], memory_order_relaxed);
}

netstash_error netstash_ctx_drain(netstash_ctx *ctx, uint32_t timeout_ms) {
  uint64_t deadline;
  if (!ctx)
    return NETSTASH_E_INVALID_ARGUMENT;
  if (ns_ctx_on_loop(ctx))
    return NETSTASH_E_WOULD_DEADLOCK;
  deadline = uv_hrtime() + (uint64_t)timeout_ms * 1000000u;
  while (netstash_ctx_stat(ctx, NETSTASH_STAT_FETCHES_ACTIVE) > 0) {
    if (timeout_ms && uv_hrtime() >= deadline)
      return NETSTASH_E_WAIT_TIMEOUT;
    uv_sleep(2);
  }
  return NETSTASH_OK;
}

void netstash_free(netstash_ctx *ctx, void *ptr) {
  if (ctx)
    ns_free(&ctx->mem, ptr);
}
