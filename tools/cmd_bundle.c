/* cmd_bundle.c — placeholder. */
typedef int cli_placeholder_bundle_;
