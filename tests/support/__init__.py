"""Test servers that speak real wire protocols on loopback (Gerrit's REST API, ...)."""
