"""Running it: the CLI, the server and its workers, embedded servers, cluster jobs, secret rotation."""
