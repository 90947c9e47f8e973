"""
heimdall's process lifecycle: its signals and its graceful shutdown.
"""
