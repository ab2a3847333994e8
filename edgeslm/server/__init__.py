"""HTTP/1.1 over a Unix socket: listening, routes, schemas and the daemon's start-up."""
