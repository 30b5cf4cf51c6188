"""Front doors: one per protocol. A door parses its wire format, calls a handler, and formats the answer."""
