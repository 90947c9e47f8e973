"""
The manager: backends added, changed and removed at runtime, local servers
spawned and supervised, every change kept in the state file.

  - L{servers}: L{servers.ServerManager}, the domain (raises the domain
    errors of L{heimdall.errors}, never HTTP);
  - L{api}: routes, OpenAPI, strict parsing, and the one mapping of domain
    errors to HTTP statuses; L{site}: the resource and site serving it;
    L{auth}: the token and the exposure check;
  - L{spawner}: child processes; L{supervisor}: restarts with backoff;
    L{readiness}: a spawned server's first health check; L{draining}:
    waiting for in-flight requests; L{statefile}: the state file.
"""
