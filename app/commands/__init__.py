"""One module per ``openatp`` sub-command; see :mod:`app.cli`."""
