"""IN PCI SCOPE, holds card data: tokens, token formats, FF1 and the token store.

`vault` is the only package that ever sees a PAN in clear. Everything here is hazmat in
pyca/cryptography's sense: a PAN is carried as `vault.pan.Pan`, never as a `str`, and
leaves only through `Pan.reveal()`.
"""
