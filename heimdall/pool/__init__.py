"""
The backend pool: members, their state, leases and the eligibility predicate.
"""
