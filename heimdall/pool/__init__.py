"""
The backend pool: C{values} (backends, states, outcomes, events and their
kinds), C{pool} (L{BackendPool}: members, their state, leases and the
eligibility predicate), C{context} (what a strategy may key on).
"""
