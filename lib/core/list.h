/*
 * list.h — intrusive doubly linked list (after libuv's queue / the Linux list).
 */
#ifndef NS_CORE_LIST_H
#define NS_CORE_LIST_H

#include <stddef.h>

typedef struct ns_list {
  struct ns_list *prev, *next;
} ns_list;

static inline void ns_list_init(ns_list *h) { h->prev = h->next = h; }
static inline int ns_list_empty(const ns_list *h) { return h->next == h; }
static inline void ns_list_insert_tail(ns_list *h, ns_list *n) {
  n->prev = h->prev;
  n->next = h;
  h->prev->next = n;
  h->prev = n;
}
static inline void ns_list_insert_head(ns_list *h, ns_list *n) {
  n->next = h->next;
  n->prev = h;
  h->next->prev = n;
  h->next = n;
}
static inline void ns_list_remove(ns_list *n) {
  n->prev->next = n->next;
  n->next->prev = n->prev;
  n->prev = n->next = n;
}
/* Moves every element of from to the tail of to; from ends empty. */
static inline void ns_list_splice_tail(ns_list *to, ns_list *from) {
  if (ns_list_empty(from))
    return;
  from->next->prev = to->prev;
  to->prev->next = from->next;
  from->prev->next = to;
  to->prev = from->prev;
  ns_list_init(from);
}
#define ns_list_entry(ptr, type, member) NS_CONTAINER_OF(ptr, type, member)
#define ns_list_foreach_safe(pos, tmp, head)                                   \
  for ((pos) = (head)->next, (tmp) = (pos)->next; (pos) != (head);             \
       (pos) = (tmp), (tmp) = (pos)->next)

#endif
