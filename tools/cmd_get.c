
typedef int ns_placeholder_t;
