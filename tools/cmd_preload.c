/* cmd_preload.c — placeholder. */
typedef int cli_placeholder_preload_;
