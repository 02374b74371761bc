"""The methods of making a vault, one package each; each registers itself with :mod:`conceptvault.registry`.

``kpop`` hides behind a prompt key (the method's paper), ``sealed`` makes the key the weight change itself,
``esd`` and ``uce`` erase (no keys) for comparison. A new method is a new package here that calls
:func:`conceptvault.registry.register_method` as it is imported; nothing outside its folder changes.
"""
