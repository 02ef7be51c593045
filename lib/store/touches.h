/*
 * touches.h — accesses to evictable records, noted by every process that
 * reads a store and written back by the next write transaction of any
 * process. Internal to lib/store.
 *
 * A store's LRU order moves only in write transactions, and readers do not
 * write: a kernel process reading netd's store directly used to keep its
 * hits in a ring of its own handle, applied only when that process wrote —
 * so netd's eviction took the entries only direct readers served for unused
 * ones. The notes now go to DIR/store/touches, a small file every handle of
 * the store maps (MAP_SHARED): a ring of fixed slots that producers fill
 * without a lock (an atomic index, a sequence number per slot written last,
 * a seqlock's rules) and that a writer empties under the store's write lock.
 *
 * Notes are hints: a note that is overwritten before a writer takes it
 * (more than the ring's slots between two writes), torn by a producer killed
 * half way, or damaged on disk is skipped or, at worst, moves the access
 * time of some other record; it never blocks a reader or fails a write.
 * Each handle notes a record at most once per granule (a small table of
 * recent notes), so a hot record costs one note per second per process.
 * When the file cannot be made (no space for its blocks, say), the ring is
 * private memory of the handle: hits are then written back by this
 * process's own writes only, as before.
 */
#ifndef NS_STORE_TOUCHES_H
#define NS_STORE_TOUCHES_H

#include "ns_setup.h"

#include "store/store.h"

typedef struct ns_touches ns_touches;

/* One note as a writer takes it. */
typedef struct ns_touch {
  uint64_t ms;
  uint16_t len;
  uint8_t db;
  uint8_t key[NS_STORE_KEY_MAX];
} ns_touch;

/* Maps (creating or repairing it as needed) store_dir/touches; NULL only
 * when memory is short. granule_ms: a handle notes a key at most once per
 * granule (0: every time). */
ns_touches *ns_touches_open(const ns_mem *mem, const char *store_dir, uint32_t granule_ms);
void ns_touches_close(ns_touches *t);
/* 1 when the ring is the shared file, 0 when it is private memory. */
int ns_touches_shared(const ns_touches *t);

/* Any thread, any process: notes an access (keylen <= NS_STORE_KEY_MAX;
 * longer keys are ignored). No allocation, no system call. */
void ns_touches_note(ns_touches *t, unsigned db, const void *key, size_t keylen, uint64_t now_ms);

/* A writer, under the store's write lock: takes up to max notes, oldest
 * first (those overwritten or torn are skipped); returns how many. */
size_t ns_touches_take(ns_touches *t, ns_touch *out, size_t max);

#endif /* NS_STORE_TOUCHES_H */
