/* bundle.h — placeholder. */
#ifndef NS_PRELOAD_BUNDLE_H
#define NS_PRELOAD_BUNDLE_H
#endif
