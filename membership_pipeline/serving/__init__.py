"""The membership read API over HTTP: published versions, served to services in any language."""
