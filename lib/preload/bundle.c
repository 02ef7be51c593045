/* bundle.c — placeholder, filled in by the preload issue. */
#include "ns_setup.h"
typedef int ns_placeholder_bundle_;
