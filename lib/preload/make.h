/* make.h — placeholder. */
#ifndef NS_PRELOAD_MAKE_H
#define NS_PRELOAD_MAKE_H
#endif
