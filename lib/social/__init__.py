"""The TCP social service: the client protocol, pure command semantics, the
durable store, the login and application servers and the link between them."""
