"""
The data path: the HTTP site and channel, the balancer resource, the upstream client.
"""
