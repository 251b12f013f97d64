"""
Resource limits under attack (L{soak.attack}) and the real-time soak test
(L{soak.soak}) of a botd2 node.  See C{soak/README.rst}.
"""
