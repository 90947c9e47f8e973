"""
The config file: frozen values, field parsers and the strict JSON reader.
"""
