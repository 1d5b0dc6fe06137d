"""`python -m cofre_cli` runs the `cofre` command, as the console script does."""

from cofre_cli.main import main

main()
