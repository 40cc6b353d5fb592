"""Built-in methods of this kind: one module each (see fedit.method_api)."""
