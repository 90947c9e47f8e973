"""
The manager: the server API, spawning, supervision and the state file.
"""
