"""
Services and routes: which service a request goes to, and how it changes
on the way.

  - L{heimdall.routing.table}: the route table (an immutable value compiled
    from the config's routes: exact hosts in a dict, wildcards by suffix,
    prefixes by length), and L{heimdall.routing.table.Rewrite} (a route's
    path and header rewrites, applied by the proxy's exchange);
  - L{heimdall.routing.router}: L{heimdall.routing.router.Router}, the
    resource that looks requests up and hands them to a service's
    L{heimdall.proxy.resource.BalancerResource}, or answers itself
    (redirect, respond, 404);
  - L{heimdall.routing.services}: the running services (pool, strategy,
    upstream connections, health checks, resource), built from the config.

The config values are in L{heimdall.config.services} and
L{heimdall.config.routes}.
"""
