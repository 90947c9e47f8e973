"""
The data path, in the order a request travels: C{site} (the client-facing
channel, request and limits), C{body} (the streamed request body),
C{resource} (L{BalancerResource}), C{exchange} (one request's round trip,
retries and errors), C{headers} (what is forwarded), C{upstream} (pooled
backend connections and the response parser), C{retry_budget}.
"""
