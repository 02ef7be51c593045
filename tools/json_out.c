
typedef int ns_placeholder2_t;
