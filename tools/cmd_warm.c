/* cmd_warm.c — placeholder. */
typedef int cli_placeholder_warm_;
