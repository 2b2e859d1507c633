"""The review report and the local review server."""
