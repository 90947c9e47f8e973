"""
Active health checks and passive outlier detection, writing to the pool.
"""
