"""The roof of the house: the `cofre` command line, the wiring and the dev environment.

IN PCI SCOPE (wiring). This package builds the runtime from every other package
(database, HSM, vault, audit, API) and nothing of ours imports it; only the console
script, the tests and the bench do. The base every package may import is `cofre`
(errors, settings, redaction, database-error helpers); it imports nothing of ours.
"""
