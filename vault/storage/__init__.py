"""IN PCI SCOPE, holds card data (encrypted): the token store on SQLite or PostgreSQL."""
