"""The device page: an HTTP server with the page, a JSON API and a live event stream, behind one password."""
