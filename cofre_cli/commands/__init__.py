"""The `cofre` command groups, one module per group; `cofre_cli.main` assembles them."""
