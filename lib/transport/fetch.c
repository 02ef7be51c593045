#include "ns_setup.h"
